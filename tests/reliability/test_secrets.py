"""A batch run with known secret values: none of them may appear anywhere a user or another
service can read — logs, artifacts, flow-run parameters, error files, dead-letter reasons."""

from __future__ import annotations

import json
import re
import secrets

import pytest
import responses
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import FlowRunSort
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
from prefect_gcp import GcpCredentials

from blocks import CAVECredentials, CloudFilesStorage
from blocks.queues.sqs import SQSTaskQueue
from flows.pipeline import pipeline
from tests.support.cave_service import DATASTACK, SERVER, cave_registrations
from tests.support.cloud import GCS_BUCKET, service_account_info
from tqflow.errors import DeadLettersError


def test_a_batch_leaks_no_secret_into_logs_artifacts_parameters_or_errors(
    moto_endpoint, gcs_emulator, prefect_api, capfd, figure
):
    aws_secret = f"aws-secret-{secrets.token_hex(12)}"
    gcp_info = service_account_info()
    cave_token = f"cave-token-{secrets.token_hex(12)}"
    queue = SQSTaskQueue(
        queue_name=f"secrets-{secrets.token_hex(4)}",
        aws_credentials=AwsCredentials(
            aws_access_key_id="testing-key-id",
            aws_secret_access_key=aws_secret,
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint),
        ),
        max_receive_count=2,
        wait_seconds=0,
    )
    storage = CloudFilesStorage(
        cloudpath=f"gs://{GCS_BUCKET}/{secrets.token_hex(5)}",
        gcp_credentials=GcpCredentials(service_account_info=gcp_info),
    )
    cave = CAVECredentials(token=cave_token, server_address=SERVER, datastack_name=DATASTACK)
    batch = f"secret-batch-{secrets.token_hex(3)}"

    with responses.RequestsMock(assert_all_requests_are_fired=False) as cave_service:
        cave_service.add_passthru(re.compile(r"http://127\.0\.0\.1:\d+"))  # emulator, Prefect
        for registration in cave_registrations():
            cave_service.add(registration)
        with pytest.raises(DeadLettersError) as failure:
            pipeline(
                fn="tests.tasks:fails_on",
                queue=queue,
                storage=storage,
                cave=cave,
                batch=batch,
                items=[1, 2, 3, 4],
                kwargs={"bad": [3]},
                worker_options={"retry_base_seconds": 0.05, "idle_seconds": 0.5},
                poll_seconds=0.2,
            )

    assert storage.get_json(f"{batch}/outputs/4.json")["result"] == 16  # the batch ran
    seen = {"exception": str(failure.value), "console": "".join(capfd.readouterr())}
    errors = [p for p in storage.list(f"{batch}/errors/")]
    assert errors, "the failing item wrote no error file"
    seen["error files"] = json.dumps(storage.get_json_many(errors))
    seen["dead letters"] = json.dumps([d.__dict__ for d in queue.dead_letters()], default=str)
    with get_client(sync_client=True) as client:
        # The newest runs, and the logs of this batch's own: the session's server also holds
        # other tests' runs, whose logs could crowd this batch's out of a page.
        runs = client.read_flow_runs(limit=200, sort=FlowRunSort.START_TIME_DESC)
        seen["flow-run parameters"] = json.dumps([r.parameters for r in runs], default=str)
        ours = [r.id for r in runs if batch in json.dumps(r.parameters, default=str)]
        seen["logs"] = "\n".join(
            log.message
            for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ours)), limit=200
            )
        )
        seen["artifacts"] = json.dumps(
            [[a.data, a.description] for a in client.read_artifacts(limit=200)], default=str
        )
    assert batch in seen["logs"] and batch in seen["flow-run parameters"]

    known = {
        "AWS secret key": aws_secret,
        "GCP private key": gcp_info["private_key"].splitlines()[1],
        "CAVE token": cave_token,
    }
    for where, text in seen.items():
        for what, secret in known.items():
            assert secret not in text, f"the {what} appears in the {where}"
    figure(
        "9. Secrets of a batch (AWS key, GCP private key, CAVE token)",
        trials=1,
        items=4,
        lost=0,
        duplicated=0,
        dead_lettered=len(queue.dead_letters()),
        recovery_seconds=None,
        notes=f"searched {len(seen)} places ({', '.join(seen)}): no secret found",
    )
