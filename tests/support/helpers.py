"""Helpers the tests share: queueing items, running worker processes, counting runs."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from blocks.queues.base import TaskQueue
from tqflow.engine.batch_messages import task_messages

REPO = Path(__file__).resolve().parents[2]

#: Runs a test that builds its queue with `queue_factory` on the SQS backend only. Direct
#: parametrisation, so it also overrides a module's own ``backend`` fixture.
sqs_only = pytest.mark.parametrize("backend", ["sqs"])
#: Runs it on both backends, in a module whose ``backend`` fixture picks one by default.
both_backends = pytest.mark.parametrize("backend", ["local", "sqs"])


def task_queue_bodies(folder: Path, tasks: list) -> list[str]:
    """The bodies python-task-queue itself writes for ``tasks`` (its file queue in ``folder``
    keeps them as files holding the exact message body)."""
    from taskqueue import TaskQueue as PythonTaskQueue

    PythonTaskQueue(f"fq://{folder / 'fq'}").insert(tasks)
    return [p.read_text() for p in sorted((folder / "fq" / "queue").iterdir())]


def write_outputs(storage, results: dict[str, object], batch: str = "b") -> None:
    """One worker output per key of ``results``, as a worker writes it."""
    from tqflow.engine.layout import output_path

    for key, result in results.items():
        storage.put_json(
            output_path(batch, key),
            {"key": key, "result": result, "seconds": 0.5, "attempt": 1, "worker": "w"},
        )


def enqueue(queue: TaskQueue, fn: str, items, batch: str = "b", **kwargs: Any) -> int:
    return queue.send(m.encode() for m in task_messages(fn, items, batch, kwargs))


def run_worker(queue, storage, timeout: float = 120, **options: Any) -> dict[str, Any]:
    """Run one worker process (forked warm, `tests.support.forked_workers`) to its end; return its
    stats."""
    from tests.support.forked_workers import ForkedWorkers

    options.setdefault("idle_seconds", 0.2)
    with tempfile.TemporaryDirectory() as folder:
        return ForkedWorkers(Path(folder)).run(queue, storage, timeout, **options)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def runs(log_dir: Path, item: int, what: str = "started") -> int:
    path = log_dir / f"{item}.{what}"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, every: float = 0.02) -> Any:
    """Poll ``condition`` until it is true; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)


@contextlib.contextmanager
def prefect_settings(updates: dict[Any, Any]) -> Iterator[None]:
    """Prefect's ``temporary_settings`` for a test that talks to a server of its own (or with
    other credentials). Prefect's events and API-log workers are per process and keep the API
    of the moment they started: one started in here would send every later event of this test
    process to this server, long stopped by then (each try ~7 s, so a later test's event waited
    behind dozens). They are drained on the way in and out, so each starts anew where it is."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import temporary_settings

    def drain() -> None:
        # In a thread of its own: with an event loop running here (Playwright's sync API runs
        # one), drain_all returns a coroutine instead of draining.
        for worker in (EventsWorker, APILogWorker):
            thread = threading.Thread(target=worker.drain_all, kwargs={"timeout": 60})
            thread.start()
            thread.join()

    drain()
    with temporary_settings(updates=updates):
        try:
            yield
        finally:
            drain()


def children_of(pid: int) -> list[str]:
    """The pids of a process's children (Linux's /proc)."""
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


def warm_server_importing(server_pid: int) -> bool:
    """A warm-worker server (`tqflow.fleet.warm_workers`) is importing the worker: pydantic's
    compiled core is loaded (its signal handling, set before that import, is in place) and it
    has forked no worker yet, the seconds before its first fork."""
    try:
        importing = "_pydantic_core" in Path(f"/proc/{server_pid}/maps").read_text()
        return importing and not children_of(server_pid)
    except OSError:  # ended meanwhile
        return False
