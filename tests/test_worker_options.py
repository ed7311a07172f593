"""`WorkerOptions` is the one list of a worker's options: every way of starting a worker takes
it whole, so a field added there reaches the loop, the flow, the process spec and the CLI."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError
from typer.testing import CliRunner

from flows.cli import app
from flows.worker import worker
from tests.support.helpers import enqueue, run_worker
from tqflow.engine.options import WorkerOptions


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def test_tqflow_work_has_a_flag_for_every_worker_option_a_single_worker_uses():
    out = cli("work", "--help").output
    missing = [
        name
        for name in WorkerOptions.model_fields
        if name not in ("default_batch", "memory_limit_mib", "unit")
        and "--" + name.replace("_", "-") not in out
    ]
    assert not missing, f"no tqflow work flag for {missing}"
    assert "--memory-limit-mib" not in out  # a fleet enforces it: nothing would, here
    assert "--unit" not in out  # a fleet names its units: one worker in a terminal is none


def test_the_worker_flow_takes_the_options_model():
    schema = parameter_schema(worker).model_dump()
    assert set(schema["definitions"]["WorkerOptions"]["properties"]) == set(
        WorkerOptions.model_fields
    )


def test_a_worker_process_obeys_the_options_of_its_spec(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", range(5))
    stats = run_worker(queue, storage, max_tasks=2, prefetch=1)
    assert (stats["succeeded"], stats["stop_reason"]) == (2, "max_tasks")
    assert queue.counts().pending == 3


def test_a_misspelt_option_is_refused_by_name():
    with pytest.raises(ValidationError, match="idle_secnds"):
        WorkerOptions(idle_secnds=1)


def test_an_out_of_range_cli_option_names_its_flag(tmp_path):
    result = cli("work", "--data", str(tmp_path), "--max-tasks", "0")
    assert result.exit_code == 1
    assert "--max-tasks" in result.output and "greater than or equal to 1" in result.output
