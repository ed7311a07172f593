"""What the reliability scenarios share: sizes, figures, and worker processes to kill.

Sizes: ``make test`` runs each scenario at a size that keeps the suite short;
``TQFLOW_STRESS=1`` runs the longer versions (``make reliability`` does, and writes the
figures into ``bench/RELIABILITY.md``).

Figures: each scenario calls ``figure(...)`` with what it measured (trials, items, lost,
duplicated, dead-lettered, recovery time). They are appended as JSON lines to the file named by
``TQFLOW_RELIABILITY_FIGURES`` when it is set, and go nowhere otherwise.

Worker processes come from the ``forked_workers`` fixture (`tests.support.forked_workers`): real
processes, forked warm, so that killing 20 of them costs seconds.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import pytest

STRESS = os.environ.get("TQFLOW_STRESS") == "1"
FIGURES = os.environ.get("TQFLOW_RELIABILITY_FIGURES")


def scaled(default: Any, stress: Any) -> Any:
    """``stress`` under ``TQFLOW_STRESS=1``, else ``default``."""
    return stress if STRESS else default


@pytest.fixture
def figure(request) -> Callable[..., None]:
    """Record this scenario's figures (see the module docstring)."""

    def record(scenario: str, **values: Any) -> None:
        if not FIGURES:
            return
        backend = (
            request.node.callspec.params.get("backend", "")
            if hasattr(request.node, "callspec")
            else ""
        )
        row = {"scenario": scenario, "backend": backend, "stress": STRESS, **values}
        with open(FIGURES, "a") as f:
            f.write(json.dumps(row) + "\n")

    return record
