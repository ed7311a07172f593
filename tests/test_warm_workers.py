"""Local workers are forked from a warm server process (`tqflow.fleet.warm_workers`): each must still be
the worker its fleet would have started with ``subprocess``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.support.helpers import child_env, enqueue
from tqflow.engine.layout import output_path


@pytest.fixture
def backend() -> str:
    return "local"


def test_a_forked_worker_has_the_environment_and_folder_of_its_fleet_at_its_start(
    queue_factory, storage, forked_workers, tmp_path, monkeypatch
):
    queue = queue_factory()
    forked_workers.run(queue, storage)  # the server runs, with this process's environment of now
    monkeypatch.setenv("TQFLOW_TEST_MARK", "set after the server started")
    monkeypatch.chdir(tmp_path)
    enqueue(queue, "tests.tasks:environment", [1], name="TQFLOW_TEST_MARK")
    forked_workers.run(queue, storage)
    result = storage.get_json(output_path("b", "1"))["result"]
    assert result == {"value": "set after the server started", "cwd": str(tmp_path)}


def test_a_script_without_a_main_guard_runs_its_local_pipeline_once(prefect_api, tmp_path):
    from prefect.settings import PREFECT_API_URL

    ran = tmp_path / "script-ran"
    script = tmp_path / "run_batch.py"
    script.write_text(
        textwrap.dedent(f"""
        from blocks import CloudFilesStorage, LocalTaskQueue
        from flows.pipeline import pipeline

        with open({str(ran)!r}, "a") as f:
            f.write("ran\\n")
        summary = pipeline(
            queue=LocalTaskQueue(path={str(tmp_path / "queue.sqlite")!r}, queue_name="guardless",
                                 allowed_modules=["tests"]),
            storage=CloudFilesStorage(cloudpath={"file://" + str(tmp_path / "data")!r}),
            fn="tests.tasks:square", batch="guardless", items=list(range(6)), workers=2,
            worker_options={{"idle_seconds": 0.5}}, poll_seconds=0.2, analyze=False,
        )
        print("done", summary["done"])
    """)
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**child_env(), "PREFECT_API_URL": PREFECT_API_URL.value()},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "done 6" in result.stdout
    assert ran.read_text() == "ran\n"  # not once more in each worker


def test_a_worker_whose_server_died_is_seen_to_end_and_the_next_start_brings_a_new_server(
    queue_factory, storage, forked_workers
):
    from tqflow.fleet.warm_workers import EXIT_STATUS_LOST, warm_worker_server

    queue = queue_factory()
    orphan = forked_workers.start(queue, storage, idle_seconds=600)
    server = warm_worker_server()._process
    server.kill()  # as when its process group is killed
    server.wait()
    assert orphan.poll() is None  # still running: nobody reports it, but it is alive
    orphan.kill()
    assert orphan.wait(timeout=30) == EXIT_STATUS_LOST  # its end is seen, not waited on for ever
    assert forked_workers.run(queue, storage)["stop_reason"] == "idle"  # a new server
