"""bench/ runs: every benchmark module imports, and the quick forms that take seconds here run
in the suite (the others, a minute or more each on 2 cores, run with `python -m bench.run
--quick`). A benchmark that no longer runs showed only when someone ran `make bench`."""

from __future__ import annotations

import importlib
import inspect

import pytest

from bench.run import SCENARIOS

MODULES = [
    *SCENARIOS.values(),
    "bench.common",
    "bench.tasks",
    "bench.profile_worker",
    "bench.reliability",
]
#: Quick forms of 5 to 35 s here: the simulated day, SQS on moto, the GCS stand-in, a worker.
SMOKED = ["fleet-day", "scale-cloud", "sqs", "worker"]


@pytest.mark.parametrize("module", MODULES)
def test_every_bench_module_imports(module):
    found = importlib.import_module(module)
    if module in SCENARIOS.values():
        assert callable(found.run)


@pytest.mark.parametrize("scenario", SMOKED)
def test_a_quick_benchmark_runs_and_reports_its_figures(scenario):
    module = importlib.import_module(SCENARIOS[scenario])
    options: dict = {"runs": 1}
    if "quick" in inspect.signature(module.run).parameters:
        options["quick"] = True
    rows = module.run(**options)
    assert rows
    for row in rows:
        assert row["measure"] and str(row["value"]), row
