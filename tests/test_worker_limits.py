"""The worker's rules for a long batch's trouble, one case each: time limits, failures outside
the task, the queue unreachable, retry rules, allowed modules, the lease keeper's races. The
scenarios that mix them into batches (hung tasks, bad messages, shutdown, ``os:system``, expiring
keys) are in tests/reliability/.

Worker processes are real (`tests.support.forked_workers`: the process entry, its signal handlers);
some time-limit tests run one worker in the test's own thread, where no handler is installed
and the limit is enforced by an asynchronous exception instead.
"""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from blocks import CloudFilesStorage, LocalTaskQueue
from tests.support.helpers import child_env, enqueue, run_worker
from tqflow.engine import process as worker_process
from tqflow.engine.failures import read_error_record
from tqflow.engine.lease_keeper import LeaseKeeper
from tqflow.engine.options import WorkerOptions
from tqflow.engine.worker import Worker
from tqflow.enqueue import enqueue_items


@pytest.fixture
def backend() -> str:
    """The worker's rules are the same on every backend: the local queue, unless a test is
    marked for SQS too (where SQS's own limits or long poll are the point)."""
    return "local"


def _error_record(storage: CloudFilesStorage, key: str, batch: str = "b") -> dict:
    return read_error_record(storage, batch, key)


# -- 1. time limits -------------------------------------------------------------------------------


# The hung task among good ones, on both backends: tests/reliability/test_time_limits.py.


def test_the_worker_time_limit_applies_when_the_batch_sets_none(queue_factory, storage):
    queue = queue_factory(max_receive_count=1)
    enqueue(queue, "tests.tasks:sleeps_on", range(3), slow=[1])
    stats = run_worker(queue, storage, task_timeout_seconds=1.5, idle_seconds=1)
    assert (stats["succeeded"], stats["timed_out"]) == (2, 1)
    assert "timed out after 1.5 s" in _error_record(storage, "1")["attempts"][0]["error"]


def test_a_task_looping_in_python_is_stopped_in_a_worker_without_signal_handlers(tmp_path, storage):
    queue = LocalTaskQueue(
        path=str(tmp_path / "q.sqlite"),
        wait_seconds=0,
        max_receive_count=1,
        allowed_modules=["tests"],
    )
    queue.ensure()
    enqueue(queue, "tests.tasks:spins_on", range(3), slow=[0])
    worker = Worker(queue, storage, WorkerOptions(idle_seconds=0.5, task_timeout_seconds=1))
    stats = worker.run()  # in the test's thread: interrupted by an asynchronous exception
    assert (stats.succeeded, stats.timed_out, queue.counts().dead) == (2, 1, 1)


def test_a_task_is_stopped_before_the_queue_longest_lease_runs_out(tmp_path, storage, monkeypatch):
    # SQS refuses a visibility timeout past 12 hours from the receive; the local queue keeps the
    # same rule. Here the cap is 4 s, so the task is stopped at about 3.6 s.
    monkeypatch.setattr(LocalTaskQueue, "max_lease_seconds", 4.0)
    queue = LocalTaskQueue(
        path=str(tmp_path / "q.sqlite"),
        wait_seconds=0,
        max_receive_count=1,
        lease_seconds=2,
        allowed_modules=["tests"],
    )
    queue.ensure()
    enqueue(queue, "tests.tasks:spins_on", [7], slow=[7])
    stats = Worker(queue, storage, WorkerOptions(idle_seconds=0.5)).run()
    assert stats.timed_out == 1
    error = _error_record(storage, "7")["attempts"][0]["error"]
    assert "longest lease (4 s from receipt)" in error


# -- 2. one message never ends the loop -----------------------------------------------------------


def test_a_cave_client_that_cannot_be_built_fails_its_tasks_not_the_worker(queue_factory, storage):
    from blocks import CAVECredentials

    queue = queue_factory(max_receive_count=2)
    enqueue(queue, "tests.tasks:needs_cave", [1, 2])
    enqueue(queue, "tests.tasks:square", [3, 4])
    # Nothing listens there: building the client fails on every attempt.
    cave = CAVECredentials(
        datastack_name="minnie65_public", server_address="http://127.0.0.1:9", token="t0ken"
    )
    worker = Worker(
        queue, storage, WorkerOptions(idle_seconds=0.5, retry_base_seconds=0.1), cave=cave
    )
    stats = worker.run()
    assert (stats.succeeded, stats.failed, stats.stop_reason) == (2, 4, "idle")
    assert queue.counts().dead == 2
    assert "t0ken" not in json.dumps(_error_record(storage, "1"))


def test_outputs_that_cannot_be_written_fail_at_once_naming_the_path(queue_factory, tmp_path):
    queue = queue_factory(max_receive_count=2)
    (tmp_path / "a-file").write_text("not a folder")
    broken = CloudFilesStorage(cloudpath=f"file://{tmp_path / 'a-file' / 'outputs'}")
    enqueue(queue, "tests.tasks:square", range(3))
    stats = Worker(queue, broken, WorkerOptions(idle_seconds=0.5, retry_base_seconds=0.1)).run()
    assert (stats.failed, stats.stop_reason, queue.counts().dead) == (6, "idle", 3)


def test_a_storage_error_that_no_retry_fixes_is_raised_on_the_first_attempt(tmp_path):
    from tqflow.errors import StorageError

    (tmp_path / "a-file").write_text("not a folder")
    broken = CloudFilesStorage(cloudpath=f"file://{tmp_path / 'a-file' / 'outputs'}")
    with pytest.raises(StorageError) as raised:
        broken.put_json("b/outputs/1.json", {"x": 1})
    assert "a part of the path is a file" in str(raised.value)
    assert "attempts" not in str(raised.value)


# A 300 KiB failure text among other bad messages, both backends:
# tests/reliability/test_bad_messages.py.


def test_a_queue_unreachable_past_the_bound_stops_the_worker_with_exit_code_3(storage):
    from blocks import SQSTaskQueue
    from tests.support.cloud import sqs_credentials
    from tests.support.services import free_port

    # Nothing listens on the endpoint; one attempt per request, so the bound is what is tested.
    queue = SQSTaskQueue(
        queue_name="nowhere",
        aws_credentials=sqs_credentials(f"http://127.0.0.1:{free_port()}"),
        wait_seconds=0,
        max_attempts=1,
    )
    process = worker_process.spawn(
        queue, storage, {"queue_unreachable_seconds": 2}, stderr=subprocess.PIPE, env=child_env()
    )
    out, err = process.communicate(timeout=300)
    assert process.returncode == worker_process.EXIT_QUEUE_UNREACHABLE, err[-2000:]
    stats = json.loads(out)
    assert stats["stop_reason"] == "queue_unreachable"
    assert "queue 'nowhere' unreachable for" in stats["error"]


# -- 3. permanent errors --------------------------------------------------------------------------


def test_retry_when_decides_which_failures_are_retried(queue_factory, storage):
    queue = queue_factory(max_receive_count=3)
    enqueue(queue, "tests.tasks:type_error_on", range(3), bad=[1])
    stats = run_worker(queue, storage, retry_when="tests.tasks:retry_only_value_errors")
    assert (stats["succeeded"], stats["failed"], stats["dead_lettered"]) == (2, 0, 1)
    [dead] = queue.dead_letters()
    assert dead.receive_count == 1 and "TypeError: item 1 has the wrong type" in dead.reason


# -- 5. shutdown: tests/reliability/test_shutdown.py ---------------------------------------------


# -- 7. allowed task modules ----------------------------------------------------------------------


# `os:system` in a body, both backends: tests/reliability/test_task_code_not_allowed.py.


def test_a_batch_enqueued_through_tqflow_runs_without_allowed_modules(queue_factory, storage):
    queue = queue_factory(allowed_modules=[])
    enqueue_items(queue, storage, "tests.tasks:square", range(3), "b")
    assert run_worker(queue, storage)["succeeded"] == 3


def test_allow_lets_a_worker_run_a_module_no_batch_named(queue_factory, storage):
    queue = queue_factory(allowed_modules=[])
    enqueue(queue, "tests.tasks:square", range(3))
    assert run_worker(queue, storage, allow=["tests.tasks"])["succeeded"] == 3


# -- 9. lease-keeper races ------------------------------------------------------------------------


class _GatedQueue(LocalTaskQueue):
    """A local queue whose ``ack`` / ``extend_many`` wait for a gate once entered, so a test can
    act while one of them is in flight."""

    _block_type_slug = "gated-test-queue"  # never replaces LocalTaskQueue in the registry

    def model_post_init(self, context) -> None:
        super().model_post_init(context)
        object.__setattr__(self, "entered", threading.Event())
        object.__setattr__(self, "gate", threading.Event())
        object.__setattr__(self, "released", [])
        object.__setattr__(self, "gated", set())

    def _wait_at_gate(self, operation: str) -> None:
        if operation in self.gated:
            self.entered.set()
            assert self.gate.wait(60)

    def ack(self, leases):
        self._wait_at_gate("ack")
        return super().ack(leases)

    def extend_many(self, leases, seconds):
        self._wait_at_gate("extend_many")
        return super().extend_many(leases, seconds)

    def release(self, lease):
        self.released.append(lease.message_id)
        super().release(lease)


@pytest.fixture
def gated_queue(tmp_path):
    queue = _GatedQueue(path=str(tmp_path / "q.sqlite"), queue_name="gated", wait_seconds=0)
    queue.ensure()
    queue.send(["body"])
    return queue


def _keeper(queue, stop=None) -> LeaseKeeper:
    import logging

    return LeaseKeeper(queue, 300, stop or threading.Event(), logging.getLogger("test"))


def test_stopping_does_not_release_a_lease_whose_acknowledgement_is_in_flight(gated_queue):
    [lease] = gated_queue.receive(lease_seconds=300)
    keeper = _keeper(gated_queue)
    keeper.hold([lease])
    keeper.ack(lease)
    gated_queue.gated.add("ack")
    acking = threading.Thread(target=keeper.flush_acks)
    acking.start()
    assert gated_queue.entered.wait(60)
    keeper._release_all()  # what a SIGTERM does meanwhile
    gated_queue.gate.set()
    acking.join(60)
    assert gated_queue.released == []
    assert gated_queue.counts().pending == 0


def test_an_extension_in_flight_does_not_undo_a_retry_delay(gated_queue):
    [lease] = gated_queue.receive(lease_seconds=300)
    keeper = _keeper(gated_queue)
    keeper.hold([lease])
    gated_queue.gated.add("extend_many")
    extending = threading.Thread(target=keeper._extend_all)
    extending.start()
    assert gated_queue.entered.wait(60)
    retrying = threading.Thread(target=keeper.retry_later, args=(lease, 0))
    retrying.start()
    retrying.join(2)  # it waits for the extension (with the fix) or sets the delay at once
    gated_queue.gate.set()
    extending.join(60)
    retrying.join(60)
    # The retry delay (0 s) was set last: the message is visible again at once.
    assert [lease.body for lease in gated_queue.receive()] == ["body"]
