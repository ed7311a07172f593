"""What the SQS backend promises beyond the shared contract, over real HTTP to a moto server."""

from __future__ import annotations

import json
import uuid
from functools import partial

import pytest

from blocks.queues.sqs import SQSTaskQueue
from tests.support.cloud import sqs_credentials
from tests.support.helpers import enqueue, run_worker, sqs_only, task_queue_bodies
from tests.support.sqs_faults import SQSFaults
from tqflow.engine.options import WorkerOptions
from tqflow.engine.specs import block_from_spec, block_spec
from tqflow.engine.worker import Worker
from tqflow.enqueue import enqueue_items
from tqflow.errors import QueueConfigError


@sqs_only
def test_a_300_kib_task_is_refused_at_enqueue_naming_the_item(queue_factory, storage):
    queue = queue_factory()
    with pytest.raises(Exception, match=r"item 'big-one'.*over the queue's limit"):
        enqueue_items(
            queue,
            storage,
            "tests.tasks:tracked",
            ["big-one"],
            "b",
            kwargs={"log_dir": "x" * 300 * 1024},
        )
    assert queue.counts().pending == 0


def test_existing_queue_without_a_dead_letter_queue_is_reported_then_attached(moto_endpoint):
    name = f"made-by-hand-{uuid.uuid4().hex[:8]}"
    bare = SQSTaskQueue(
        queue_name=name,
        aws_credentials=sqs_credentials(moto_endpoint),
        wait_seconds=0,
        allowed_modules=["tests"],
    )
    bare._client().create_queue(QueueName=name)
    with pytest.raises(
        QueueConfigError, match="without a dead-letter queue.*attach_dead_letter_queue"
    ):
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
        stats = Worker(queue, storage, WorkerOptions(idle_seconds=0.5)).run()
    assert stats.succeeded == n
    assert counted.requests["SendMessageBatch"] == n // 10
    assert counted.requests["DeleteMessageBatch"] <= n // 10 + 2
    # python-task-queue makes 1/10 + 1 receive + 1 delete = 2.1 requests per task.
    per_task = sum(counted.requests.values()) / n
    assert per_task < 0.5, dict(counted.requests)


@sqs_only
def test_an_idle_worker_without_long_polls_backs_off_its_receives(queue_factory, storage):
    queue = queue_factory(wait_seconds=0)
    with SQSFaults(queue._client(), fail_every=10**9, throttle_every=10**9) as counted:
        stats = Worker(queue, storage, WorkerOptions(idle_seconds=4)).run()
    assert stats.stop_reason == "idle"
    # 0.05, 0.1, 0.2, 0.4, 0.8, then 1 s apart: ~8 receives in 4 s, where a fixed 0.05 s
    # pause sent ~80.
    assert counted.requests["ReceiveMessage"] <= 12, dict(counted.requests)


@sqs_only
def test_python_task_queue_sqs_queue_drains_with_the_worker(
    queue_factory, storage, moto_endpoint, monkeypatch
):
    from taskqueue import TaskQueue

    import tests.tq_tasks as tq_tasks

    queue = queue_factory()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    tq = TaskQueue(
        f"sqs://{queue.queue_name}",
        region_name="us-east-1",
        endpoint_url=moto_endpoint,
        progress=False,
    )
    tq.insert([partial(tq_tasks.power, n, exponent=3) for n in range(8)])
    stats = run_worker(queue, storage, default_batch="legacy", import_modules=["tests.tq_tasks"])
    assert stats["succeeded"] == 8
    results = sorted(storage.get_json(p)["result"] for p in storage.list("legacy/outputs/"))
    assert results == [n**3 for n in range(8)]


def test_a_python_task_queue_queue_without_dead_letter_queue_drains_and_keeps_what_cannot_run(
    moto_endpoint, storage, tmp_path
):
    # A queue as python-task-queue makes it: no dead-letter queue, bodies in its own format.
    from tests.tq_tasks import power

    name = f"tq-made-{uuid.uuid4().hex[:8]}"
    queue = SQSTaskQueue(
        queue_name=name,
        aws_credentials=sqs_credentials(moto_endpoint),
        wait_seconds=0,
        allowed_modules=["tests", "gone"],
    )
    queue._client().create_queue(QueueName=name)
    (good,) = task_queue_bodies(tmp_path, [partial(power, 3)])
    gone = json.dumps({"payload": [["gone.module", "f"], [1], {}, "2"], "id": "2"})
    queue.send([good, gone])

    stats = run_worker(queue, storage, idle_seconds=0.5)  # ends at idle: no crash, no hang

    assert (stats["succeeded"], stats["dead_lettered"]) == (1, 1)
    assert queue.counts().pending == 0 and queue.counts().dead == 0
    [record_path] = [p for p in storage.list("default/errors/")]
    record = storage.get_json(record_path)
    assert json.loads(record["body"]) == json.loads(gone)  # the message itself, kept
    assert "attach_dead_letter_queue()" in record["advice"]
    assert "cannot import module 'gone.module'" in record["attempt"]["error"]


def _calls_of(queue) -> list[str]:
    """The SQS operations ``queue``'s client sends from now on, in order."""
    calls: list[str] = []
    queue._client().meta.events.register(
        "before-call.sqs.*", lambda model, **_: calls.append(model.name)
    )
    return calls


@sqs_only
def test_a_whole_dead_letter_queue_goes_back_in_one_message_move_task(queue_factory):
    queue = queue_factory(max_receive_count=1)
    bodies = [f"body-{i}" for i in range(230)]
    queue.send(bodies)
    while leases := queue.receive(max_messages=10):
        for lease in leases:
            queue.dead_letter(lease, "a bug, since fixed")
    assert queue.counts().dead == 230
    calls = _calls_of(queue)

    assert queue.redrive() == 230

    assert calls.count("StartMessageMoveTask") == 1
    assert "ReceiveMessage" not in calls and "SendMessageBatch" not in calls
    back = []
    while leases := queue.receive(max_messages=10):
        back += leases
        queue.ack(leases)
    assert sorted(lease.body for lease in back) == sorted(bodies)  # each once
    assert {lease.receive_count for lease in back} == {1}
    assert queue.counts().dead == 0


@sqs_only
def test_a_batchs_dead_letters_are_still_moved_one_by_one(queue_factory):
    # SQS's move takes a whole queue; picking a batch's messages needs their bodies
    queue = queue_factory(max_receive_count=1)
    queue.send(["a", "b"])
    for lease in queue.receive(max_messages=2):
        queue.dead_letter(lease, "bug")
    calls = _calls_of(queue)
    assert queue.redrive(select=lambda body: body == "a") == 1
    assert "StartMessageMoveTask" not in calls
    assert [d.body for d in queue.dead_letters()] == ["b"]


def test_an_sqs_endpoint_without_message_move_tasks_gets_its_dead_letters_moved_one_by_one():
    # moto as shipped lacks StartMessageMoveTask (a 500): redrive falls back, nothing lost
    from tests.support.services import moto_server

    with moto_server(as_shipped=True) as endpoint:
        queue = SQSTaskQueue(
            queue_name="shipped",
            aws_credentials=sqs_credentials(endpoint),
            max_receive_count=1,
            max_attempts=1,  # botocore would retry moto's 500 seven times first, ~40 s
        )
        queue.ensure()
        queue.send(["a", "b", "c"])
        for lease in queue.receive(max_messages=3):
            queue.dead_letter(lease, "bug")
        calls = _calls_of(queue)
        assert queue.redrive() == 3
        assert "StartMessageMoveTask" in calls and "SendMessageBatch" in calls
        back = queue.receive(max_messages=10)
        assert sorted(lease.body for lease in back) == ["a", "b", "c"]
        assert queue.counts().dead == 0
