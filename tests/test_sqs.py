"""What the SQS backend promises beyond the shared contract, over real HTTP to a moto server."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from functools import partial

import pytest

from blocks.errors import QueueConfigError, QueueError
from blocks.queues.sqs import SQSTaskQueue
from blocks.specs import block_from_spec, block_spec
from flows.enqueue import enqueue_items
from flows.worker import Worker
from tests.conftest import sqs_credentials
from tests.helpers import enqueue, run_worker
from tests.sqs_faults import SQSFaults

#: Runs a test that builds its queue with `queue_factory` on the SQS backend only.
sqs_only = pytest.mark.parametrize("backend", ["sqs"], indirect=True)


def drain(queue: SQSTaskQueue) -> list[str]:
    bodies = []
    while True:
        leases = queue.receive(max_messages=10, lease_seconds=60)
        if not leases:
            return bodies
        bodies.extend(lease.body for lease in leases)
        assert queue.ack(leases) == len(leases)


@sqs_only
def test_send_survives_failed_entries_and_throttling_without_loss_or_duplicates(queue_factory):
    queue = queue_factory()
    bodies = [f"m{i}" for i in range(200)]
    with SQSFaults(queue._client(), operations=("SendMessageBatch",)) as faults:
        assert queue.send(bodies) == 200
    assert faults.injected["failed SendMessageBatch entry"] > 0
    assert faults.injected["throttled SendMessageBatch"] > 0
    assert Counter(drain(queue)) == Counter(bodies)


@sqs_only
def test_receive_and_ack_survive_failed_entries_and_throttling(queue_factory):
    queue = queue_factory()
    bodies = [f"m{i}" for i in range(120)]
    queue.send(bodies)
    with SQSFaults(queue._client(), operations=("ReceiveMessage", "DeleteMessageBatch")) as faults:
        received = drain(queue)
    assert faults.injected["failed DeleteMessageBatch entry"] > 0
    assert faults.injected["throttled ReceiveMessage"] > 0
    assert Counter(received) == Counter(bodies)
    assert queue.counts().pending == 0


@sqs_only
def test_permanently_refused_entries_are_named_and_the_rest_are_sent(queue_factory):
    queue = queue_factory()
    bad = json.dumps({"fn": "m:f", "kwargs": {}, "key": "item-13", "batch": "b"})
    bodies = [f"m{i}" for i in range(25)] + [bad]
    with SQSFaults(queue._client(), fail_every=10**9, throttle_every=10**9, permanent_bodies=(bad,)):
        with pytest.raises(QueueError, match="1 of 26 messages could not be sent.*item-13"):
            queue.send(bodies)
    assert sorted(drain(queue)) == sorted(bodies[:-1])


@sqs_only
def test_a_300_kib_task_is_refused_at_enqueue_naming_the_item(queue_factory, storage):
    queue = queue_factory()
    with pytest.raises(Exception, match=r"item 'big-one'.*over the queue's limit"):
        enqueue_items(
            queue, storage, "tests.tasks:tracked", ["big-one"], "b",
            {"log_dir": "x" * 300 * 1024},
        )
    assert queue.counts().pending == 0


def test_existing_queue_without_a_dead_letter_queue_is_reported_then_attached(moto_endpoint):
    name = f"made-by-hand-{uuid.uuid4().hex[:8]}"
    bare = SQSTaskQueue(queue_name=name, aws_credentials=sqs_credentials(moto_endpoint), wait_seconds=0)
    bare._client().create_queue(QueueName=name)
    with pytest.raises(QueueConfigError, match="without a dead-letter queue.*attach_dead_letter_queue"):
        bare.ensure()
    bare.attach_dead_letter_queue()
    bare.ensure()
    bare.send(["x"])
    for _ in range(bare.max_receive_count):
        (lease,) = bare.receive(lease_seconds=30)
        bare.release(lease)
    assert bare.receive() == []
    assert bare.counts().dead == 1


@sqs_only
def test_block_spec_carries_the_secret_to_a_child_process(queue_factory):
    queue = queue_factory()
    copy = block_from_spec(json.loads(json.dumps(block_spec(queue))))
    secret = copy.aws_credentials.aws_secret_access_key.get_secret_value()
    assert secret == "testing-secret-key"
    assert "testing-secret-key" not in repr(queue) and "testing-secret-key" not in str(queue)


@sqs_only
def test_enqueue_and_drain_take_few_requests_per_task(queue_factory, storage):
    queue = queue_factory(wait_seconds=1)
    n = 200
    with SQSFaults(queue._client(), fail_every=10**9, throttle_every=10**9) as counted:
        enqueue(queue, "tests.tasks:square", range(n))
        stats = Worker(queue, storage, idle_seconds=0.5).run()
    assert stats.succeeded == n
    assert counted.requests["SendMessageBatch"] == n // 10
    assert counted.requests["DeleteMessageBatch"] <= n // 10 + 2
    # python-task-queue makes 1/10 + 1 receive + 1 delete = 2.1 requests per task.
    per_task = sum(counted.requests.values()) / n
    assert per_task < 0.5, dict(counted.requests)


@sqs_only
def test_python_task_queue_sqs_queue_drains_with_the_worker(queue_factory, storage, moto_endpoint, monkeypatch):
    from taskqueue import TaskQueue

    import tests.tq_tasks as tq_tasks

    queue = queue_factory()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    tq = TaskQueue(
        f"sqs://{queue.queue_name}", region_name="us-east-1", endpoint_url=moto_endpoint, progress=False
    )
    tq.insert([partial(tq_tasks.power, n, exponent=3) for n in range(8)])
    stats = run_worker(queue, storage, default_batch="legacy", import_modules=["tests.tq_tasks"])
    assert stats["succeeded"] == 8
    results = sorted(storage.get_json(p)["result"] for p in storage.list("legacy/outputs/"))
    assert results == [n**3 for n in range(8)]
