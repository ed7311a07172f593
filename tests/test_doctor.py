"""``tqflow doctor`` on a real Prefect server with basic auth, SQS and S3 on moto: each check
passes on a setup that is ready, and fails, naming the fix, when its one thing is broken."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.support.cloud import sqs_credentials
from tests.support.helpers import child_env, prefect_settings
from tests.support.services import free_port, prefect_server

#: One worker runs the module, so its server (module fixture) starts once in the suite.
pytestmark = pytest.mark.xdist_group("doctor")
BIN = Path(sys.executable).parent
IMAGE = "us-west1-docker.pkg.dev/lab/tqflow/worker@sha256:" + "0" * 64


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A Prefect server with basic auth; yields what a user's profile holds for it."""
    password = secrets.token_hex(12)
    home = tmp_path_factory.mktemp("doctor-server")
    env = {**os.environ, "PREFECT_SERVER_API_AUTH_STRING": f"admin:{password}"}
    with prefect_server(home, env=env) as started:
        yield {
            "PREFECT_API_URL": started["PREFECT_API_URL"],
            "PREFECT_API_AUTH_STRING": f"admin:{password}",
        }


@pytest.fixture(scope="module")
def setup(server, moto_endpoint):
    """``make(...)``: a work pool of its own with a deployment naming a queue and a storage
    block, each ready unless told otherwise; returns the pool's name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    from blocks import CloudFilesStorage, SQSTaskQueue
    from tqflow.gke.job_template import base_job_template

    settings = {
        PREFECT_API_URL: server["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: server["PREFECT_API_AUTH_STRING"],
    }
    credentials = sqs_credentials(moto_endpoint)

    def make(
        *,
        image: str = IMAGE,
        worker: bool = True,
        storage: str = "ready",
        queue: str = "ready",
    ) -> str:
        name = f"doctor-{uuid.uuid4().hex[:8]}"
        with prefect_settings(settings):
            if storage == "missing":
                storage_slug = f"cloud-files-storage/{name}-never-saved"
            else:
                bucket = f"tqflow-{uuid.uuid4().hex[:10]}"
                if storage == "ready":
                    credentials.get_s3_client().create_bucket(Bucket=bucket)
                CloudFilesStorage(
                    cloudpath=f"s3://{bucket}/tqflow", aws_credentials=credentials
                ).save(name)
                storage_slug = f"cloud-files-storage/{name}"
            sqs = SQSTaskQueue(queue_name=name, aws_credentials=credentials)
            if queue == "ready":
                sqs.ensure()
            elif queue == "no-dead-letter-queue":
                credentials.get_client("sqs").create_queue(QueueName=name)
            sqs.save(name)
            with get_client(sync_client=True) as client:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name, type="kubernetes", base_job_template=base_job_template()
                    )
                )
                if worker:
                    client.send_worker_heartbeat(name, "prefect-worker-0")
                flow_id = client.create_flow_from_name("pipeline")
                client.create_deployment(
                    flow_id=flow_id,
                    name="pipeline-gke",
                    work_pool_name=name,
                    job_variables={"image": image},
                    parameters={"queue": f"sqs-task-queue/{name}", "storage": storage_slug},
                )
        return name

    return make


def doctor(server: dict[str, str], moto_endpoint: str, *args: str, **env: str) -> Any:
    """``tqflow doctor ARGS`` as a user runs it, with the profile ``server`` holds."""
    environment = {**child_env(), **server, "AWS_ENDPOINT_URL": moto_endpoint, **env}
    environment["COLUMNS"] = "300"
    result = subprocess.run(
        [str(BIN / "tqflow"), "doctor", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def test_a_ready_setup_passes_every_check(server, moto_endpoint, setup):
    pool = setup()
    result = doctor(server, moto_endpoint, "--work-pool", pool)
    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout
    for what in ("Prefect API", f"work pool {pool}", "deployment pipeline/pipeline-gke"):
        assert what in result.stdout
    assert "written, read back and deleted a probe file" in result.stdout
    assert "answers this key, with its dead-letter queue" in result.stdout


def test_an_api_that_does_not_answer_says_to_start_the_port_forward(server, moto_endpoint):
    down = f"http://127.0.0.1:{free_port()}/api"
    result = doctor(server, moto_endpoint, PREFECT_API_URL=down)
    assert result.returncode == 1
    assert f"FAIL  Prefect API {down}: does not answer" in result.stdout
    assert "port-forward" in result.stdout


def test_a_wrong_password_is_told_where_the_right_one_is(server, moto_endpoint):
    result = doctor(server, moto_endpoint, PREFECT_API_AUTH_STRING="admin:wrong")
    assert result.returncode == 1
    assert "refuses this profile's credentials (401)" in result.stdout
    assert "prefect-basic-auth" in result.stdout


def test_a_missing_work_pool_is_told_how_to_create_it(server, moto_endpoint):
    result = doctor(server, moto_endpoint, "--work-pool", "no-such-pool")
    assert result.returncode == 1
    assert "FAIL  work pool no-such-pool: does not exist" in result.stdout
    assert "prefect work-pool create no-such-pool" in result.stdout


def test_a_pool_no_worker_polls_is_told_to_install_the_worker(server, moto_endpoint, setup):
    pool = setup(worker=False)
    result = doctor(server, moto_endpoint, "--work-pool", pool)
    assert result.returncode == 1
    assert f"FAIL  work pool {pool}: no worker polls it" in result.stdout


def test_a_block_a_deployment_names_that_does_not_load_is_named(server, moto_endpoint, setup):
    pool = setup(storage="missing")
    result = doctor(server, moto_endpoint, "--work-pool", pool)
    assert result.returncode == 1
    assert f"cloud-files-storage/{pool}-never-saved does not load" in result.stdout
    assert "guide step 6" in result.stdout


def test_a_bucket_that_cannot_be_written_is_named(server, moto_endpoint, setup):
    pool = setup(storage="no-bucket")
    result = doctor(server, moto_endpoint, "--work-pool", pool)
    assert result.returncode == 1
    assert f"FAIL  storage cloud-files-storage/{pool}" in result.stdout
    assert "NoSuchBucket" in result.stdout or "does not exist" in result.stdout


def test_a_queue_without_its_dead_letter_queue_is_told_to_attach_one(server, moto_endpoint, setup):
    pool = setup(queue="no-dead-letter-queue")
    result = doctor(server, moto_endpoint, "--work-pool", pool)
    assert result.returncode == 1
    assert f"FAIL  queue sqs-task-queue/{pool}" in result.stdout
    assert (
        "has no dead-letter queue" in result.stdout and "attach_dead_letter_queue" in result.stdout
    )


def test_a_deployment_without_its_image_is_told_to_export_it_and_deploy_again(
    server, moto_endpoint, setup
):
    pool = setup(image="")
    result = doctor(server, moto_endpoint, "--work-pool", pool)
    assert result.returncode == 1
    assert "FAIL  deployment pipeline/pipeline-gke: has no worker image" in result.stdout
    assert "TQFLOW_IMAGE" in result.stdout
