"""bench/ runs: every benchmark module imports, and the quick forms that take seconds here run
in the suite (the others, a minute or more each on 2 cores, run with `python -m bench.run
--quick`). A benchmark that no longer runs showed only when someone ran `make bench`."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

from bench.run import SCENARIOS
from tests.support.helpers import REPO, child_env

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
    """In a process of its own, as `python -m bench.run` runs it (a benchmark may set the
    environment its other side needs, as python-task-queue's AWS keys), without writing
    bench/results.json."""
    code = (
        "import inspect, json, sys\n"
        f"import {SCENARIOS[scenario]} as bench\n"
        "options = {'runs': 1}\n"
        "if 'quick' in inspect.signature(bench.run).parameters:\n"
        "    options['quick'] = True\n"
        "print('ROWS ' + json.dumps(bench.run(**options), default=str))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("ROWS ")]
    rows = json.loads(line.removeprefix("ROWS "))
    assert rows
    for row in rows:
        assert row["measure"] and str(row["value"]), row
