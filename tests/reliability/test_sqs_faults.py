"""Reliability: SQS refusing calls (throttling, 500, 503) and failing single entries of batch
calls (SendMessageBatch, ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibilityBatch) —
nothing lost, nothing duplicated at enqueue. The faults are injected into real HTTP calls to the
moto server (`tests.support.sqs_faults`)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from blocks.queues.sqs import SQSTaskQueue
from tests.reliability.conftest import scaled
from tests.support.helpers import enqueue, sqs_only
from tests.support.sqs_faults import SQSFaults
from tests.tasks import executions
from tqflow.engine.layout import outputs_prefix
from tqflow.engine.options import WorkerOptions
from tqflow.engine.worker import Worker
from tqflow.errors import QueueError

ITEMS = scaled(200, 1_000)


def drain(queue: SQSTaskQueue) -> list[str]:
    bodies = []
    while True:
        leases = queue.receive(max_messages=10, lease_seconds=60)
        if not leases:
            return bodies
        bodies.extend(lease.body for lease in leases)
        assert queue.ack(leases) == len(leases)


@sqs_only
def test_send_survives_failed_entries_and_refused_calls_without_loss_or_duplicates(queue_factory):
    queue = queue_factory()
    bodies = [f"m{i}" for i in range(200)]
    with SQSFaults(queue._client(), operations=("SendMessageBatch",)) as faults:
        assert queue.send(bodies) == 200
    assert faults.injected["failed SendMessageBatch entry"] > 0
    assert faults.injected["refused SendMessageBatch"] > 0
    assert Counter(drain(queue)) == Counter(bodies)


@sqs_only
def test_receive_and_ack_survive_failed_entries_and_refused_calls(queue_factory):
    queue = queue_factory()
    bodies = [f"m{i}" for i in range(120)]
    queue.send(bodies)
    with SQSFaults(queue._client(), operations=("ReceiveMessage", "DeleteMessageBatch")) as faults:
        received = drain(queue)
    assert faults.injected["failed DeleteMessageBatch entry"] > 0
    assert faults.injected["refused ReceiveMessage"] > 0
    assert Counter(received) == Counter(bodies)
    assert queue.counts().pending == 0


@sqs_only
def test_permanently_refused_entries_are_named_and_the_rest_are_sent(queue_factory):
    queue = queue_factory()
    bad = json.dumps({"fn": "m:f", "kwargs": {}, "key": "item-13", "batch": "b"})
    bodies = [f"m{i}" for i in range(25)] + [bad]
    with SQSFaults(
        queue._client(), fail_every=10**9, throttle_every=10**9, permanent_bodies=(bad,)
    ):
        with pytest.raises(QueueError, match="1 of 26 messages could not be sent.*item-13"):
            queue.send(bodies)
    assert sorted(drain(queue)) == sorted(bodies[:-1])


@sqs_only
def test_a_request_that_fails_after_botocore_retries_names_its_items(queue_factory):
    queue = queue_factory()
    url = queue._url(queue.queue_name)
    queue._client().delete_queue(QueueUrl=url)  # every send to it is refused from now on
    bodies = [
        json.dumps({"fn": "m:f", "kwargs": {}, "key": f"item-{i}", "batch": "b"}) for i in range(3)
    ]
    with pytest.raises(
        QueueError,
        match=r"3 of 3 messages could not be sent.*NonExistentQueue.*item-0, item-1, item-2",
    ):
        queue.send(bodies)


@sqs_only
def test_a_batch_enqueued_and_drained_under_faults_on_every_call_runs_each_item_once(
    queue_factory, storage, tmp_path, figure
):
    queue = queue_factory()
    log_dir = tmp_path / "executions"
    log_dir.mkdir()
    operations = (
        "SendMessageBatch",
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "GetQueueAttributes",
    )
    with SQSFaults(
        queue._client(), operations=operations, fail_every=4, throttle_every=5
    ) as faults:
        enqueue(queue, "tests.tasks:counted", range(ITEMS), log_dir=str(log_dir))
        # In this process, so the faults reach the worker's client too.
        stats = Worker(queue, storage, WorkerOptions(idle_seconds=0.5, ack_seconds=0.2)).run()

    outputs = [p for p in storage.list(outputs_prefix("b")) if p.endswith(".json")]
    ran = executions(str(log_dir))
    assert (
        faults.injected["HTTP 500"] and faults.injected["HTTP 503"] and faults.injected["HTTP 400"]
    )
    assert sum(n for what, n in faults.injected.items() if what.startswith("failed")) > 0
    assert len(outputs) == ITEMS and set(ran) == set(range(ITEMS))
    assert stats.succeeded == ITEMS and stats.failed == 0
    assert stats.skipped == 0  # a message sent twice would be skipped, its output existing
    assert max(ran.values()) == 1  # none enqueued twice, none run twice
    assert queue.counts().pending == 0
    figure(
        "6. SQS faults: throttling, 500, 503, failed batch entries",
        trials=1,
        items=ITEMS,
        lost=ITEMS - len(outputs),
        duplicated=sum(n - 1 for n in ran.values()),
        dead_lettered=queue.counts().dead,
        recovery_seconds=None,
        notes=", ".join(f"{n} {what}" for what, n in sorted(faults.injected.items())),
    )
