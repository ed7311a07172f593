"""The worker loop (DESIGN.md, "Worker loop"), run as real worker processes."""

from __future__ import annotations

import json
import time
from functools import partial

import pytest

from tests.support.helpers import enqueue, run_worker, runs, wait_until
from tqflow.engine.failures import read_error_record
from tqflow.engine.layout import output_path


def test_worker_writes_every_output_and_empties_the_queue(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", range(20))
    stats = run_worker(queue, storage)
    assert stats["succeeded"] == 20
    assert stats["stop_reason"] == "idle"
    record = storage.get_json(output_path("b", "7"))
    assert record["result"] == 49
    assert record["fn"] == "tests.tasks:square"
    assert record["kwargs"] == {"x": 7}
    assert record["attempt"] == 1
    assert queue.counts().pending == 0


def test_second_run_over_the_same_batch_skips_every_finished_item(queue_factory, storage, log_dir):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:tracked", range(10), log_dir=str(log_dir))
    run_worker(queue, storage)
    enqueue(queue, "tests.tasks:tracked", range(10), log_dir=str(log_dir))
    stats = run_worker(queue, storage)
    assert (stats["succeeded"], stats["skipped"]) == (0, 10)
    assert all(runs(log_dir, i) == 1 for i in range(10))


def test_overwrite_re_runs_finished_items(queue_factory, storage, log_dir):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:tracked", range(3), log_dir=str(log_dir))
    run_worker(queue, storage)
    enqueue(queue, "tests.tasks:tracked", range(3), log_dir=str(log_dir))
    stats = run_worker(queue, storage, overwrite=True)
    assert stats["succeeded"] == 3
    assert all(runs(log_dir, i) == 2 for i in range(3))


def test_unrunnable_messages_go_to_the_dead_letter_queue_at_once_and_the_worker_goes_on(
    queue_factory, storage
):
    queue = queue_factory(max_receive_count=5, allowed_modules=["tests", "no_such_package"])
    queue.send(
        [
            "this is not json",
            json.dumps({"fn": "no_such_package.tasks:f", "kwargs": {}, "key": "u", "batch": "b"}),
            json.dumps({"fn": "tests.tasks:square", "kwargs": {"y": 1}, "key": "w", "batch": "b"}),
        ]
    )
    enqueue(queue, "tests.tasks:square", [5])
    stats = run_worker(queue, storage)
    assert (stats["dead_lettered"], stats["succeeded"]) == (3, 1)
    reasons = sorted(d.reason for d in queue.dead_letters())
    assert all(d.receive_count == 1 for d in queue.dead_letters())
    assert any(r.startswith("UndecodableMessageError: the body is not JSON") for r in reasons)
    assert any("cannot import module 'no_such_package.tasks'" in r for r in reasons)
    assert any("do not fit tests.tasks:square(x)" in r for r in reasons)
    assert storage.get_json(output_path("b", "5"))["result"] == 25


def test_a_task_that_asks_for_what_its_worker_lacks_is_retried_not_dead_lettered_at_once(
    queue_factory, storage
):
    # The message is fine: a worker given a CAVE block runs it. Retried like any failure, it
    # reaches the dead-letter queue after max_receive_count receives, its reason recorded.
    queue = queue_factory(max_receive_count=2)
    enqueue(queue, "tests.tasks:needs_cave", [1])
    stats = run_worker(queue, storage, retry_base_seconds=0)
    assert (stats["failed"], stats["dead_lettered"]) == (2, 0)
    assert queue.counts().dead == 1
    errors = [a["error"] for a in read_error_record(storage, "b", "1")["attempts"]]
    assert errors and all(e.startswith("WorkerConfigError:") for e in errors)
    assert "no CAVE block" in errors[0]


def test_task_can_write_large_results_through_the_injected_storage(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:writes_extra", [4])
    run_worker(queue, storage)
    assert storage.get_json(output_path("b", "4"))["result"] == "extra/4.json"
    assert storage.get_json("extra/4.json") == {"values": [0, 1, 2, 3]}


def test_task_longer_than_its_lease_is_not_run_twice(
    queue_factory, storage, log_dir, forked_workers
):
    queue = queue_factory(lease_seconds=0.6)
    workers = [forked_workers.start(queue, storage, idle_seconds=60) for _ in range(2)]
    for worker in workers:  # both polling before the task is queued, whatever their start-up
        wait_until(lambda w=worker: "draining" in forked_workers.log(w), timeout=120)
    enqueue(queue, "tests.tasks:tracked", [1], log_dir=str(log_dir), seconds=3)
    wait_until(lambda: runs(log_dir, 1, "finished") == 1)
    time.sleep(1.5)  # the other worker would have had the message by now, were it visible
    for worker in workers:
        worker.terminate()
        assert forked_workers.wait(worker, timeout=60)["stop_reason"] == "stopped"
    assert (runs(log_dir, 1), runs(log_dir, 1, "finished")) == (1, 1)


def test_python_task_queue_bodies_drain_with_the_worker(queue_factory, storage, tmp_path):
    from taskqueue import TaskQueue

    import tests.tq_tasks as tq_tasks

    tq = TaskQueue(f"fq://{tmp_path / 'fq'}")
    tq.insert([partial(tq_tasks.power, n) for n in range(5)])
    queue = queue_factory()
    queue.send(p.read_text() for p in (tmp_path / "fq" / "queue").iterdir())
    stats = run_worker(queue, storage, default_batch="legacy", import_modules=["tests.tq_tasks"])
    assert stats["succeeded"] == 5
    results = sorted(storage.get_json(path)["result"] for path in storage.list("legacy/outputs/"))
    assert results == [0, 1, 4, 9, 16]


def test_max_tasks_stops_the_worker(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", range(10))
    stats = run_worker(queue, storage, max_tasks=4)
    assert (stats["succeeded"], stats["stop_reason"]) == (4, "max_tasks")
    assert queue.counts().visible == 6


def test_task_whose_output_cannot_be_written_is_never_acknowledged(queue_factory, tmp_path):
    from blocks import CloudFilesStorage

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("storage cannot create folders under a file")
    broken = CloudFilesStorage(cloudpath=f"file://{not_a_folder}")
    queue = queue_factory(max_receive_count=2)
    enqueue(queue, "tests.tasks:square", [3])
    # idle 2 s: the retry comes back after its delay, which a loaded moto can stretch past 0.2 s
    stats = run_worker(queue, broken, retry_base_seconds=0.05, idle_seconds=2)
    assert (stats["succeeded"], stats["failed"]) == (0, 2)
    (dead,) = queue.dead_letters()  # kept, not acknowledged: it can be redriven
    assert json.loads(dead.body)["key"] == "3"


def test_an_idle_worker_does_not_end_on_one_reading_of_an_empty_queue(
    tmp_path, storage, monkeypatch
):
    # SQS's counts are separate approximate attributes, not one snapshot: a reading taken as a
    # failed task's message turns visible can count it nowhere. The worker ends only when a
    # second reading, after another empty receive, agrees.
    from blocks import LocalTaskQueue
    from tqflow.engine.contracts import QueueCounts
    from tqflow.engine.options import WorkerOptions
    from tqflow.engine.worker import Worker

    readings: list[QueueCounts] = []
    exact = LocalTaskQueue.counts

    def first_reading_misses_a_message(self) -> QueueCounts:
        real = exact(self)
        readings.append(real)
        return QueueCounts(0, 0, 0, real.dead) if len(readings) == 1 else real

    monkeypatch.setattr(LocalTaskQueue, "counts", first_reading_misses_a_message)
    queue = LocalTaskQueue(
        path=str(tmp_path / "queue.sqlite"),
        queue_name="approximate",
        wait_seconds=0,
        max_receive_count=2,
        allowed_modules=["tests"],
    )
    queue.ensure()
    enqueue(queue, "tests.tasks:fails_on", [1, 2], bad=[2])

    stats = Worker(queue, storage, WorkerOptions(idle_seconds=0.05, retry_base_seconds=0.5)).run()

    assert readings[0].pending == 1  # item 2 waited for its retry while the reading missed it
    assert (stats.succeeded, stats.failed) == (1, 2)  # the retry ran, in this worker
    assert exact(queue).dead == 1


def test_a_corrupt_batch_record_dead_letters_at_once_and_a_new_enqueue_mends_it(
    queue_factory, storage
):
    from tqflow.enqueue import enqueue_items

    queue = queue_factory(allowed_modules=[], max_receive_count=5)  # the batch record decides
    enqueue_items(queue, storage, "tests.tasks:square", range(3), "b")
    storage.put("b/batch.json", b'{"functions": ["tests.ta')
    stats = run_worker(queue, storage)
    assert stats["dead_lettered"] == 3 and stats["failed"] == 0  # not 5 receives each
    dead = queue.dead_letters()
    assert {d.receive_count for d in dead} == {1}
    assert "b/batch.json is not valid JSON" in dead[0].reason
    assert "Run the batch's enqueue again" in dead[0].reason
    enqueue_items(queue, storage, "tests.tasks:square", range(3), "b")  # writes it anew
    assert queue.redrive() == 3
    assert run_worker(queue, storage)["succeeded"] == 3


def test_the_worker_log_writes_to_the_stderr_of_the_moment_not_the_one_it_was_made_with(capsys):
    # The handler is made once per process, by whichever run comes first; a redirect that has
    # ended since (a test's capture) must not keep the worker's lines.
    import contextlib
    import io
    import logging

    from tqflow.engine.process import log_to_stderr

    with contextlib.redirect_stderr(io.StringIO()):
        log_to_stderr()
    logging.getLogger("tqflow.worker").warning("a line after the redirect ended")
    assert "a line after the redirect ended" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fn", "raised"),
    [("tests.tasks:exits_on", "SystemExit(3)"), ("tests.tasks:raises_base_exception_on", "NotAn")],
)
def test_a_task_that_exits_or_raises_a_base_exception_fails_and_the_worker_drains_the_rest(
    queue_factory, storage, fn, raised
):
    queue = queue_factory(max_receive_count=2)
    enqueue(queue, fn, range(6), bad=[2])
    stats = run_worker(queue, storage, retry_base_seconds=0)
    assert stats["stop_reason"] == "idle"  # the worker ran to the end of the queue
    assert (stats["succeeded"], stats["failed"]) == (5, 2)  # item 2, once per receive
    record = read_error_record(storage, "b", "2")
    [first, second] = record["attempts"]
    assert "TaskExitError" in first["error"] and raised in first["error"]
    counts = queue.counts()
    assert (counts.pending, counts.dead) == (0, 1)  # dead-lettered after its two receives


def test_a_worker_runs_a_function_enqueued_into_its_batch_after_it_started(queue_factory, storage):
    import threading

    from tqflow.engine.options import WorkerOptions
    from tqflow.engine.worker import Worker
    from tqflow.enqueue import enqueue_items

    queue = queue_factory(allowed_modules=[])  # only the batch's own functions may run
    enqueue_items(queue, storage, "tests.tasks:square", [1, 2], "b")
    worker = Worker(queue, storage, WorkerOptions(idle_seconds=60))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        wait_until(lambda: storage.exists(output_path("b", "2")))  # it read the batch's record
        enqueue_items(queue, storage, "tests.tasks:power", [3], "b", kwargs={"exponent": 3})
        wait_until(lambda: storage.exists(output_path("b", "3")) or queue.counts().dead)
    finally:
        worker.request_stop()
        thread.join(timeout=60)
    assert queue.counts().dead == 0
    assert storage.get_json(output_path("b", "3"))["result"] == 27


def test_two_attempts_of_one_item_failing_at_the_same_instant_both_leave_their_record(
    queue_factory, storage
):
    import logging
    import threading

    from tqflow.engine.batch_messages import task_messages
    from tqflow.engine.contracts import Lease
    from tqflow.engine.failures import Failures
    from tqflow.engine.messages import decode

    class InStep:
        """The test's storage, the calls of two threads taken in step: both have read before
        either writes, as two workers failing the same item at once may."""

        def __init__(self, storage) -> None:
            self.storage, self.step = storage, threading.Barrier(2, timeout=5)

        def __getattr__(self, name):
            return getattr(self.storage, name)

        def _in_step(self) -> None:
            try:
                self.step.wait()
            except threading.BrokenBarrierError:
                pass

        def get_json(self, path):
            self._in_step()
            return self.storage.get_json(path)

        def put_json(self, path, value):
            self._in_step()
            return self.storage.put_json(path, value)

    [body] = [m.encode() for m in task_messages("tests.tasks:square", [7], "b")]
    message = decode(body)
    failures = Failures(
        queue_factory(),
        InStep(storage),
        None,
        lambda *_: None,
        logging.getLogger("t"),
        worker="w",
        default_batch="b",
        retry_base_seconds=0,
    )
    threads = [
        threading.Thread(
            target=failures.record,
            args=(message, Lease(f"m{n}", f"r{n}", body, n), ValueError(f"attempt {n}"), ""),
        )
        for n in (1, 2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = read_error_record(storage, "b", "7")
    assert sorted(a["error"] for a in record["attempts"]) == [
        "ValueError: attempt 1",
        "ValueError: attempt 2",
    ]


# SQS answers a delete with an ended lease's receipt handle as done (its API reference: the
# message "might not" be deleted; moto deletes it): the local queue is the one that can refuse.
@pytest.mark.parametrize("backend", ["local"])
def test_a_dead_letter_whose_lease_had_ended_is_not_reported_as_moved(queue_factory, storage):
    import logging

    from tqflow.engine.failures import Failures
    from tqflow.engine.messages import decode
    from tqflow.errors import PermanentTaskError

    queue = queue_factory(lease_seconds=0.5)
    enqueue(queue, "tests.tasks:square", [4])
    [mine] = queue.receive()
    time.sleep(0.6)  # the lease ends, and another worker receives the message
    [theirs] = wait_until(queue.receive, timeout=30)
    counted, lines = [], []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger(f"test-dead-letter-{id(lines)}")
    log.addHandler(Lines())
    failures = Failures(
        queue,
        storage,
        _NoKeeper(),
        lambda message, outcome, *_: counted.append(outcome.value),
        log,
        worker="w",
        default_batch="b",
        retry_base_seconds=0,
    )
    failures.dead_letter(mine, decode(mine.body), PermanentTaskError("no"))
    assert queue.counts().dead == 0 and counted == ["failed"]
    assert "could not be moved to the dead-letter queue" in lines[-1], lines
    queue.release(theirs)


class _NoKeeper:
    """A lease keeper with nothing to keep."""

    def drop(self, lease) -> None:
        pass
