"""The worker under a long batch's trouble: hung tasks, failures outside the task, huge errors,
shutdown in a long poll, task code it must not run, and the lease keeper's races.

Worker processes are real (`tests.forked_workers`: the process entry, its signal handlers);
the time-limit tests run one worker in the test's own thread too, where no handler is
installed and the limit is enforced by an asynchronous exception instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from blocks import CloudFilesStorage, LocalTaskQueue
from blocks.errors import LeaseLostError
from flows import worker_process
from flows.enqueue import enqueue_items
from flows.lease_keeper import LeaseKeeper
from flows.outputs import error_path, output_path
from flows.worker import Worker
from tests.helpers import both_backends, child_env, enqueue, run_worker, runs, sqs_only, wait_until


@pytest.fixture
def backend() -> str:
    """The worker's rules are the same on every backend: the local queue, unless a test is
    marked for SQS too (where SQS's own limits or long poll are the point)."""
    return "local"


def _error_record(storage: CloudFilesStorage, key: str, batch: str = "b") -> dict:
    return storage.get_json(error_path(batch, key))


# -- 1. time limits -------------------------------------------------------------------------------


@both_backends
def test_a_hung_task_is_stopped_at_its_time_limit_retried_then_dead_lettered(queue_factory, storage):
    queue = queue_factory(max_receive_count=2)
    enqueue_items(
        queue, storage, "tests.tasks:sleeps_on", range(4), "b", {"slow": [2]},
        task_timeout_seconds=2,
    )
    stats = run_worker(queue, storage, retry_base_seconds=0.1, idle_seconds=1)
    assert (stats["succeeded"], stats["timed_out"], stats["stop_reason"]) == (3, 2, "idle")
    assert [d.receive_count for d in queue.dead_letters()] == [2]
    attempts = _error_record(storage, "2")["attempts"]
    assert len(attempts) == 2
    assert all("timed out after 2 s" in a["error"] for a in attempts)


def test_the_worker_time_limit_applies_when_the_batch_sets_none(queue_factory, storage):
    queue = queue_factory(max_receive_count=1)
    enqueue(queue, "tests.tasks:sleeps_on", range(3), slow=[1])
    stats = run_worker(queue, storage, task_timeout_seconds=1.5, idle_seconds=1)
    assert (stats["succeeded"], stats["timed_out"]) == (2, 1)
    assert "timed out after 1.5 s" in _error_record(storage, "1")["attempts"][0]["error"]


def test_a_task_looping_in_python_is_stopped_in_a_worker_without_signal_handlers(tmp_path, storage):
    queue = LocalTaskQueue(
        path=str(tmp_path / "q.sqlite"), wait_seconds=0, max_receive_count=1,
        allowed_modules=["tests"],
    )
    queue.ensure()
    enqueue(queue, "tests.tasks:spins_on", range(3), slow=[0])
    worker = Worker(queue, storage, idle_seconds=0.5, task_timeout_seconds=1)
    stats = worker.run()  # in the test's thread: interrupted by an asynchronous exception
    assert (stats.succeeded, stats.timed_out, queue.counts().dead) == (2, 1, 1)


def test_a_task_is_stopped_before_the_queue_longest_lease_runs_out(tmp_path, storage, monkeypatch):
    # SQS refuses a visibility timeout past 12 hours from the receive; the local queue keeps the
    # same rule. Here the cap is 4 s, so the task is stopped at about 3.6 s.
    monkeypatch.setattr(LocalTaskQueue, "max_lease_seconds", 4.0)
    queue = LocalTaskQueue(
        path=str(tmp_path / "q.sqlite"), wait_seconds=0, max_receive_count=1, lease_seconds=2,
        allowed_modules=["tests"],
    )
    queue.ensure()
    enqueue(queue, "tests.tasks:spins_on", [7], slow=[7])
    stats = Worker(queue, storage, idle_seconds=0.5).run()
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
    worker = Worker(queue, storage, idle_seconds=0.5, retry_base_seconds=0.1, cave=cave)
    stats = worker.run()
    assert (stats.succeeded, stats.failed, stats.stop_reason) == (2, 4, "idle")
    assert queue.counts().dead == 2
    assert "t0ken" not in json.dumps(_error_record(storage, "1"))


def test_outputs_that_cannot_be_written_fail_at_once_naming_the_path(queue_factory, tmp_path):
    queue = queue_factory(max_receive_count=2)
    (tmp_path / "a-file").write_text("not a folder")
    broken = CloudFilesStorage(cloudpath=f"file://{tmp_path / 'a-file' / 'outputs'}")
    enqueue(queue, "tests.tasks:square", range(3))
    stats = Worker(queue, broken, idle_seconds=0.5, retry_base_seconds=0.1).run()
    assert (stats.failed, stats.stop_reason, queue.counts().dead) == (6, "idle", 3)


def test_a_storage_error_that_no_retry_fixes_is_raised_on_the_first_attempt(tmp_path):
    from blocks.errors import StorageError

    (tmp_path / "a-file").write_text("not a folder")
    broken = CloudFilesStorage(cloudpath=f"file://{tmp_path / 'a-file' / 'outputs'}")
    with pytest.raises(StorageError) as raised:
        broken.put_json("b/outputs/1.json", {"x": 1})
    assert "a part of the path is a file" in str(raised.value)
    assert "attempts" not in str(raised.value)


@both_backends
def test_a_300_kib_failure_reason_is_cut_to_fit_and_kept_whole_in_the_error_record(
    queue_factory, storage
):
    queue = queue_factory(max_receive_count=3)
    enqueue(queue, "tests.tasks:huge_permanent_error", [1], size=300 * 1024)
    enqueue(queue, "tests.tasks:square", [2])
    stats = run_worker(queue, storage)
    assert (stats["dead_lettered"], stats["succeeded"]) == (1, 1)
    [dead] = queue.dead_letters()
    assert dead.reason.startswith("PermanentTaskError: zzz")
    assert len(dead.reason) < 300 * 1024
    assert len(_error_record(storage, "1")["attempts"][0]["error"]) > 300 * 1024


def test_a_queue_unreachable_past_the_bound_stops_the_worker_with_exit_code_3(storage):
    from blocks import SQSTaskQueue
    from tests.conftest import sqs_credentials
    from tests.services import free_port

    # Nothing listens on the endpoint; one attempt per request, so the bound is what is tested.
    queue = SQSTaskQueue(
        queue_name="nowhere", aws_credentials=sqs_credentials(f"http://127.0.0.1:{free_port()}"),
        wait_seconds=0, max_attempts=1,
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


# -- 5. shutdown ----------------------------------------------------------------------------------


@pytest.fixture
def idle_worker(queue_factory, storage):
    """A ``python -m flows.worker_process`` waiting in a 20 s long poll on an empty queue."""
    queue = queue_factory(wait_seconds=20)
    process = worker_process.spawn(
        queue, storage, {"idle_seconds": 600}, stderr=subprocess.PIPE, env=child_env()
    )
    wait_until(lambda: "draining" in process.stderr.readline(), timeout=120, every=0)
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()


@sqs_only  # the local queue's receive polls in short sleeps
def test_sigterm_during_a_long_poll_stops_the_worker_at_once(idle_worker):
    time.sleep(0.5)  # let it reach the receive (a signal before it stops it anyway)
    sent = time.monotonic()
    idle_worker.send_signal(signal.SIGTERM)
    assert idle_worker.wait(timeout=60) == 0
    # The poll began less than a second before the signal: waited out, it would end ~19 s later.
    # (A quiet machine exits in ~0.3 s; the bound leaves room for a busy one.)
    assert time.monotonic() - sent < 12
    assert json.loads(idle_worker.stdout.read())["stop_reason"] == "stopped"


def test_a_second_signal_stops_a_worker_whose_task_ignores_the_first(queue_factory, storage, tmp_path):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:refuses_to_stop", [1], log_dir=str(tmp_path))
    process = worker_process.spawn(queue, storage, {"idle_seconds": 60}, env=child_env())
    wait_until(lambda: runs(tmp_path, 1), timeout=120)
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: runs(tmp_path, 1, "interrupted"), timeout=60)
    assert process.poll() is None  # the task swallowed the interrupt
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    process.communicate()


# -- 7. allowed task modules ----------------------------------------------------------------------


@both_backends
def test_a_message_naming_os_system_is_dead_lettered_not_run(queue_factory, storage, tmp_path):
    queue = queue_factory(allowed_modules=[])
    marker = tmp_path / "pwned"
    queue.send([json.dumps({"fn": "os:system", "kwargs": {"command": f"touch {marker}"}, "key": "x", "batch": "b"})])
    stats = run_worker(queue, storage)
    assert stats["dead_lettered"] == 1 and not marker.exists()
    [dead] = queue.dead_letters()
    assert dead.reason.startswith("TaskNotAllowedError: os:system is not an allowed task function")


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
    assert [l.body for l in gated_queue.receive()] == ["body"]
