"""`WorkerOptions` is the one list of a worker's options: every way of starting a worker takes
it whole, so a field added there reaches the loop, the flow, the process spec and the CLI."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError
from typer.testing import CliRunner

from blocks import CloudFilesStorage, LocalTaskQueue
from flows.cli import app
from flows.worker import worker
from tqflow.engine.options import WorkerOptions
from tqflow.engine.process import worker_spec
from tqflow.engine.worker import Worker


def cli(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "400"})


def test_tqflow_work_has_a_flag_for_every_worker_option_a_single_worker_uses():
    out = cli("work", "--help").output
    missing = [
        name
        for name in WorkerOptions.model_fields
        if name not in ("default_batch", "memory_limit_mib")
        and "--" + name.replace("_", "-") not in out
    ]
    assert not missing, f"no tqflow work flag for {missing}"
    assert "--memory-limit-mib" not in out  # a fleet enforces it: nothing would, here


def test_the_worker_flow_takes_the_options_model_with_its_descriptions():
    schema = parameter_schema(worker).model_dump()
    definition = schema["definitions"]["WorkerOptions"]["properties"]
    assert set(definition) == set(WorkerOptions.model_fields)
    assert definition["idle_seconds"]["description"] == (
        WorkerOptions.model_fields["idle_seconds"].description
    )


def test_a_worker_process_spec_carries_the_options_given(tmp_path):
    queue = LocalTaskQueue(path=str(tmp_path / "q.sqlite"))
    storage = CloudFilesStorage(cloudpath=f"file://{tmp_path}")
    spec = worker_spec(queue, storage, WorkerOptions(prefetch=3, allow=["mylab"]))
    assert WorkerOptions.of(spec["options"]) == WorkerOptions(prefetch=3, allow=["mylab"])


def test_a_misspelt_option_is_refused_by_name(tmp_path):
    queue = LocalTaskQueue(path=str(tmp_path / "q.sqlite"))
    storage = CloudFilesStorage(cloudpath=f"file://{tmp_path}")
    with pytest.raises(ValidationError, match="idle_secnds"):
        Worker(queue, storage, idle_secnds=1)


def test_an_out_of_range_cli_option_names_its_flag(tmp_path):
    result = cli("work", "--data", str(tmp_path), "--max-tasks", "0")
    assert result.exit_code == 1
    assert "--max-tasks" in result.output and "greater than or equal to 1" in result.output
