"""Pass blocks to a worker process without their secrets showing.

A *spec* is ``{"type": "module:Class", "data": {...}}``, secrets included, so it travels only
on a pipe (a child's stdin), never in argv, the environment, a log or a flow-run parameter.
Any pydantic model round-trips; tqflow's Prefect blocks are the ones that travel.
"""

from __future__ import annotations

import importlib
from typing import Any


def block_spec(block: Any) -> dict[str, Any]:
    """``block`` (a pydantic model: a Prefect block) as a spec."""
    cls = type(block)
    return {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "data": block.model_dump(mode="json", context={"include_secrets": True}),
    }


def block_from_spec(spec: dict[str, Any]) -> Any:
    module, _, name = spec["type"].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls.model_validate(spec["data"])
