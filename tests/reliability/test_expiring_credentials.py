"""Reliability: a batch written to s3:// with AWS keys that expire while it runs, as role, SSO and
STS keys do after an hour. Here a profile's credential process issues keys five minutes from
expiry, inside boto3's refresh margin, so every use of the storage must take freshly issued ones."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from blocks import CloudFilesStorage
from tests.reliability.conftest import scaled
from tests.support.cloud import sqs_credentials
from tests.support.helpers import enqueue
from tqflow.engine.layout import outputs_prefix

ITEMS = scaled(12, 200)

ISSUE_KEYS = """\
import datetime, json, pathlib
issued = pathlib.Path({issued!r})
n = int(issued.read_text()) + 1 if issued.exists() else 1
issued.write_text(str(n))
expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
print(json.dumps({{"Version": 1, "AccessKeyId": f"AKIAISSUED{{n:06d}}", "SecretAccessKey": "secret",
                  "SessionToken": f"token-{{n}}", "Expiration": expires.isoformat()}}))
"""


@pytest.fixture
def expiring_storage(moto_endpoint, tmp_path, monkeypatch) -> tuple[CloudFilesStorage, Path]:
    """s3:// storage on moto through an AWS profile whose keys are always about to expire; and the
    file counting the keys issued."""
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    issued = tmp_path / "issued"
    script = tmp_path / "issue_keys.py"
    script.write_text(ISSUE_KEYS.format(issued=str(issued)))
    config = tmp_path / "aws-config"
    config.write_text(
        f"[profile expiring]\ncredential_process = {sys.executable} {script}\nregion = us-east-1\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))  # workers started from now on see it
    bucket = f"tqflow-{uuid.uuid4().hex[:10]}"
    sqs_credentials(moto_endpoint).get_s3_client().create_bucket(Bucket=bucket)
    storage = CloudFilesStorage(
        cloudpath=f"s3://{bucket}/outputs",
        aws_credentials=AwsCredentials(
            profile_name="expiring",
            aws_client_parameters=AwsClientParameters(endpoint_url=moto_endpoint),
        ),
    )
    return storage, issued


def test_a_batch_written_with_keys_that_expire_meanwhile_has_every_output(
    queue_factory, expiring_storage, forked_workers, figure
):
    storage, issued = expiring_storage
    queue = queue_factory()
    enqueue(queue, "tests.tasks:aws_key_in_use", range(ITEMS))
    stats = forked_workers.run(queue, storage, timeout=300)

    assert (stats["succeeded"], stats["failed"]) == (ITEMS, 0)
    names = [p for p in storage.list(outputs_prefix("b")) if p.endswith(".json")]
    assert len(names) == ITEMS  # every write went through, and each output reads back
    keys_in_use = {r["result"] for r in storage.get_json_many(names).values()}
    # Keys within the refresh margin are replaced at each use: each task saw the storage's
    # cloud-files client holding keys no other task saw.
    assert len(keys_in_use) == ITEMS and all(k.startswith("AKIAISSUED") for k in keys_in_use)
    keys_issued = int(issued.read_text())
    figure(
        "14. AWS keys that expire during the batch",
        trials=1,
        items=ITEMS,
        lost=0,
        duplicated=0,
        dead_lettered=queue.counts().dead,
        recovery_seconds=None,
        notes=f"keys always within boto3's refresh margin: {keys_issued} keys issued to one "
        "worker, each task's storage client held fresh ones; every output written and readable",
    )
