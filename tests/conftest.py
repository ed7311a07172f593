from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

# Offline machine: no analytics calls from any Prefect server the tests start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blocks import CloudFilesStorage, LocalTaskQueue  # noqa: E402
from blocks.queues.base import TaskQueue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

QUEUE_BACKENDS = ["local", "sqs"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1: SQS over real HTTP, stopped by its PID at the end."""
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def sqs_credentials(endpoint: str):
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    return AwsCredentials(
        aws_access_key_id="testing-key-id",
        aws_secret_access_key="testing-secret-key",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint),
    )


@pytest.fixture(params=QUEUE_BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def queue_factory(request, backend, tmp_path):
    """Build a queue of the parametrised backend with the given fields, `ensure()`d. Every
    call in one test names the same queue; each test gets its own."""
    name = f"test-{uuid.uuid4().hex[:10]}"

    def build(**fields: Any) -> TaskQueue:
        fields.setdefault("queue_name", name)
        fields.setdefault("wait_seconds", 0)
        if backend == "local":
            queue = LocalTaskQueue(path=str(tmp_path / "queue.sqlite"), **fields)
        else:
            from blocks.queues.sqs import SQSTaskQueue

            endpoint = request.getfixturevalue("moto_endpoint")
            queue = SQSTaskQueue(aws_credentials=sqs_credentials(endpoint), **fields)
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
