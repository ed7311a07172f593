"""Local workers are forked from a warm server process (`tqflow.fleet.warm_workers`): each must still be
the worker its fleet would have started with ``subprocess``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Any, Iterator

import pytest

from tests.support.helpers import (
    child_env,
    children_of,
    enqueue,
    wait_until,
    warm_server_importing,
)
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


@pytest.fixture
def fresh_server() -> Iterator[Any]:
    """A warm-worker server of the test's own, cold (its first request waits for the import),
    closed at the end (its workers stopped first)."""
    from tqflow.fleet.warm_workers import WarmWorkerServer

    server = WarmWorkerServer()
    yield server
    process = server._process
    if process is not None:
        for pid in children_of(process.pid) if process.poll() is None else []:
            os.kill(int(pid), signal.SIGKILL)
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=60)


def test_a_stop_signal_to_the_server_before_it_forks_starts_no_worker(
    queue_factory, storage, fresh_server, tmp_path
):
    """A Ctrl-C reaches the whole process group, the warm-worker server included: a request
    it has read and not yet served is refused, not forked into a worker nobody stops."""
    from tqflow.engine.process import worker_spec
    from tqflow.errors import WorkerNotStartedError

    spec = worker_spec(queue_factory(), storage, {"idle_seconds": 600})
    outcome: list[Any] = []

    def start() -> None:
        try:
            outcome.append(fresh_server.start(spec, str(tmp_path / "worker.out")))
        except Exception as exc:
            outcome.append(exc)

    starting = threading.Thread(target=start)
    starting.start()
    process = wait_until(lambda: fresh_server._process, timeout=60)
    wait_until(lambda: warm_server_importing(process.pid), timeout=120, every=0.005)
    os.kill(process.pid, signal.SIGINT)
    starting.join(timeout=300)
    assert isinstance(outcome[0], WorkerNotStartedError), outcome
    assert "SIGINT" in str(outcome[0])
    assert process.poll() is None and children_of(process.pid) == []


def test_a_start_interrupted_before_its_answer_stops_the_worker_the_answer_names(
    queue_factory, storage, fresh_server, tmp_path
):
    """A Ctrl-C to the fleet's process alone, while it waits for the server's answer: the
    worker forked for it is stopped as soon as its pid is known, not left to run the batch."""
    from tqflow.engine.process import worker_spec

    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", [1])
    spec = worker_spec(queue, storage, {"idle_seconds": 600})

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    def interrupt_once_the_server_imports() -> None:
        # the request is sent and the fleet waits for its answer (the one waiter on
        # `_ended`), which has not come: the cold server takes seconds to import the worker
        wait_until(
            lambda: fresh_server._ended._waiters and not fresh_server._answers,
            timeout=120,
            every=0.005,
        )
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    sent = threading.Thread(target=interrupt_once_the_server_imports)
    try:
        sent.start()
        with pytest.raises(KeyboardInterrupt):
            fresh_server.start(spec, str(tmp_path / "worker.out"))
    finally:
        sent.join(timeout=120)
        signal.signal(signal.SIGUSR1, previous)
    ended = wait_until(lambda: dict(fresh_server._returncodes), timeout=120)
    assert len(ended) == 1  # forked, then stopped: it ended by itself within its 600 s idle
    assert children_of(fresh_server._process.pid) == []
