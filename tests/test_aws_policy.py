"""The IAM policy the guide gives the SQS key (`deployments/aws/sqs-policy.json`) allows exactly
the SQS actions tqflow's queue calls, on its queue and dead-letter queue only."""

from __future__ import annotations

import json
import re

import botocore.session
from botocore import xform_name

from blocks import SQSTaskQueue
from tests.support.helpers import REPO

POLICY = REPO / "deployments" / "aws" / "sqs-policy.json"
#: A batch request is allowed by its single-message action (SQS's IAM reference).
BATCH_OF = {
    "SendMessageBatch": "SendMessage",
    "DeleteMessageBatch": "DeleteMessage",
    "ChangeMessageVisibilityBatch": "ChangeMessageVisibility",
}


def sqs_operations_called() -> set[str]:
    """The SQS operations the queue's code names (``client.receive_message(``, or a batch
    operation passed by name), by their API names."""
    source = "\n".join(p.read_text() for p in (REPO / "blocks" / "queues").glob("sqs*.py"))
    names = botocore.session.get_session().get_service_model("sqs").operation_names
    return {
        name
        for name in names
        if re.search(rf"\.{xform_name(name)}\(|[\"']{xform_name(name)}[\"']", source)
    }


def statement() -> dict:
    [only] = json.loads(POLICY.read_text())["Statement"]
    return only


def test_the_policy_allows_every_sqs_action_the_queue_calls_and_no_other():
    needed = {f"sqs:{BATCH_OF.get(name, name)}" for name in sqs_operations_called()}
    assert "sqs:ReceiveMessage" in needed and "sqs:StartMessageMoveTask" in needed
    assert statement()["Effect"] == "Allow"
    assert set(statement()["Action"]) == needed


def test_the_policy_names_only_the_queue_and_its_dead_letter_queue():
    queue = SQSTaskQueue(queue_name="QUEUE")
    assert statement()["Resource"] == [
        f"arn:aws:sqs:REGION:ACCOUNT_ID:{queue.queue_name}",
        f"arn:aws:sqs:REGION:ACCOUNT_ID:{queue.dlq_name}",
    ]
