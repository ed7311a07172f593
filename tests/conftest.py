from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

# Offline machine: no analytics calls from any Prefect server the tests start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blocks import CloudFilesStorage, LocalTaskQueue  # noqa: E402
from blocks.queues.base import TaskQueue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

QUEUE_BACKENDS = ["local"]


def make_queue(backend: str, tmp_path: Path, **fields: Any) -> TaskQueue:
    if backend == "local":
        return LocalTaskQueue(path=str(tmp_path / "queue.sqlite"), **fields)
    raise ValueError(backend)


@pytest.fixture(params=QUEUE_BACKENDS)
def queue_factory(request, tmp_path):
    """Build a queue of the parametrised backend with the given fields, `ensure()`d."""

    def build(**fields: Any) -> TaskQueue:
        fields.setdefault("queue_name", "test")
        queue = make_queue(request.param, tmp_path, **fields)
        queue.ensure()
        return queue

    return build


@pytest.fixture
def storage(tmp_path) -> CloudFilesStorage:
    return CloudFilesStorage(cloudpath=f"file://{tmp_path / 'storage'}")


@pytest.fixture
def log_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen]]:
    """Worker processes started by a test; killed at its end if still running."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server (SQLite) for the whole session: it takes 10-20 s to start,
    and several starting at once time out."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
