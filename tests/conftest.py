from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, settings

# Hypothesis times its own generation (the too_slow health check, 1 s) and each example (a
# 200 ms deadline): on CI's shared 2 cores, beside the suite's servers, a generation of 8
# examples took over a second and failed a test of message encoding. Those clocks say how busy
# the machine is, not how tqflow behaves, so the suite turns them off.
settings.register_profile(
    "tqflow-suite", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("tqflow-suite")

# Offline machine: no analytics calls from any Prefect server the tests start.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from blocks import CloudFilesStorage, LocalTaskQueue  # noqa: E402
from blocks.queues.base import TaskQueue  # noqa: E402
from tests.support.cloud import GCS_BUCKET, service_account_info, sqs_credentials  # noqa: E402
from tests.support.helpers import REPO  # noqa: E402
from tests.support.readme import RECIPE_HEADING, readme_block  # noqa: E402
from tests.support.services import (  # noqa: E402,F401
    FakeGCS,
    StorageEmulator,
    free_port,
    moto_server,
    start,
    stop_process,
    wait_for_port,
)

QUEUE_BACKENDS = ["local", "sqs"]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on 127.0.0.1: SQS over real HTTP, stopped with its process group."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(params=QUEUE_BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def queue_factory(request, backend, tmp_path):
    """Build a queue of the parametrised backend with the given fields, `ensure()`d. Every
    call in one test names the same queue; each test gets its own. Workers on it run the
    test task modules (`allowed_modules`), as a lab's queue block names its own."""
    name = f"test-{uuid.uuid4().hex[:10]}"

    def build(**fields: Any) -> TaskQueue:
        fields.setdefault("queue_name", name)
        fields.setdefault("wait_seconds", 0)
        fields.setdefault("allowed_modules", ["tests"])
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


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """gcp-storage-emulator on 127.0.0.1 with one bucket; google-cloud-storage (and so
    cloud-files) talks to it through ``STORAGE_EMULATOR_HOST``, which child processes inherit."""
    emulator = StorageEmulator(GCS_BUCKET)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        emulator.start()
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
        yield emulator.endpoint
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        emulator.stop()


@pytest.fixture
def gcs_storage(gcs_emulator) -> CloudFilesStorage:
    """A gs:// folder of its own in the emulator's bucket, with GcpCredentials attached."""
    from prefect_gcp import GcpCredentials

    return CloudFilesStorage(
        cloudpath=f"gs://{GCS_BUCKET}/{uuid.uuid4().hex[:10]}",
        gcp_credentials=GcpCredentials(service_account_info=service_account_info()),
    )


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGCS]:
    """fake-gcs-server on 127.0.0.1 with one bucket: the GCS stand-in that honours a listing's
    ``startOffset`` / ``endOffset`` (gcp-storage-emulator ignores them)."""
    with FakeGCS("tqflow-fake-gcs") as gcs:
        yield gcs


@contextlib.contextmanager
def _gcs_clients_for(endpoint: str, monkeypatch) -> Iterator[None]:
    """This test's gs:// clients talk to ``endpoint``: cloud-files keeps one pool of GCS clients
    per bucket for the process, each made with the ``STORAGE_EMULATOR_HOST`` of its first use,
    so the pools are emptied before and after (fake-gcs-server's bucket is reached both directly
    and through `gcs_stand_in`)."""
    import cloudfiles

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    cloudfiles.reset_connection_pools()
    yield
    cloudfiles.reset_connection_pools()


@pytest.fixture
def fake_gcs_storage(fake_gcs, monkeypatch) -> Iterator[CloudFilesStorage]:
    """A gs:// folder of its own on fake-gcs-server, which this test's clients talk to."""
    with _gcs_clients_for(fake_gcs.endpoint, monkeypatch):
        yield CloudFilesStorage(cloudpath=f"gs://{fake_gcs.bucket}/{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def gcs_stand_in(fake_gcs) -> Iterator[Any]:
    """fake-gcs-server behind the proxy that serves GCS's batch endpoint: a stand-in that
    answers every request cloud-files sends as GCS does (fake-gcs-server alone has no batch
    endpoint, through which cloud-files checks one object or many, and deletes)."""
    from tests.support.services import http_proxy

    with http_proxy(fake_gcs.endpoint, gcs=fake_gcs, list_seconds_per_name=0.0) as proxy:
        yield proxy


@pytest.fixture
def gcs_bucket_storage(fake_gcs, gcs_stand_in, monkeypatch) -> Iterator[CloudFilesStorage]:
    """A gs:// folder of its own on `gcs_stand_in`, which this test's clients talk to."""
    with _gcs_clients_for(gcs_stand_in.endpoint, monkeypatch):
        yield CloudFilesStorage(cloudpath=f"gs://{fake_gcs.bucket}/{uuid.uuid4().hex[:10]}")


@pytest.fixture
def s3_storage(moto_endpoint) -> CloudFilesStorage:
    """An s3:// folder in a new bucket on the moto server."""
    credentials = sqs_credentials(moto_endpoint)
    bucket = f"tqflow-{uuid.uuid4().hex[:10]}"
    credentials.get_s3_client().create_bucket(Bucket=bucket)
    return CloudFilesStorage(cloudpath=f"s3://{bucket}/outputs", aws_credentials=credentials)


@pytest.fixture(params=["file", "gs", "s3"])
def any_storage(request) -> CloudFilesStorage:
    """Storage of each protocol, each on its real stand-in."""
    return request.getfixturevalue(
        {"file": "storage", "gs": "gcs_storage", "s3": "s3_storage"}[request.param]
    )


@pytest.fixture
def log_dir(tmp_path) -> Path:
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def forked_workers(tmp_path) -> Iterator[Any]:
    """Worker processes forked warm (`tests.support.forked_workers`); killed at the test's end if
    still running."""
    from tests.support.forked_workers import ForkedWorkers

    workers = ForkedWorkers(tmp_path)
    yield workers
    workers.stop_all()


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server (SQLite) for the whole session: it takes 10-20 s to start,
    and several starting at once time out."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


# -- the README's process-pool recipe: one Prefect server, process worker and deployments ---------


@pytest.fixture(scope="session")
def recipe(tmp_path_factory) -> Iterator[dict[str, str]]:
    """The README's process-pool recipe, run by bash in the repository; yields the environment
    that points at its server, with the recipe's output. One per session: the deployments tests
    and the browser test share its server and process worker (both in the "deployments" xdist
    group, so on one test process). Its server and worker (background
    jobs of the script, in its process group) are stopped at the end."""
    home = tmp_path_factory.mktemp("prefect-home")
    data = tmp_path_factory.mktemp("tqflow-data")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            # the scheduler looks for due schedules every 2 s instead of every 60 s
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "TQFLOW_DATA": str(data),
            "PYTHONPATH": str(REPO),  # flow runs import tests.tasks
            "PWD": str(REPO),  # prefect.yaml's local pull step: this checkout
        }
    )
    log_path = home / "recipe.log"
    with open(log_path, "w") as log:
        script = start(
            ["bash", "-euo", "pipefail", "-c", readme_block(RECIPE_HEADING)],
            env=env,
            cwd=REPO,
            log=log,
        )
        try:
            code = script.wait(timeout=900)
            yield {
                **env,
                "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                "RECIPE_EXIT": str(code),
                "RECIPE_LOG": str(log_path),
                "WORKER_LOG": str(REPO / "prefect-worker.log"),
            }
        finally:
            # The server waits on its open connections after SIGTERM (20 s here, every run);
            # nothing is read from it after the tests, so it gets 5 s before SIGKILL.
            stop_process(script, grace_seconds=5)
