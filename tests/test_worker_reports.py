"""Worker reports (``<batch>/workers/``): what each worker did for each batch, summed by status."""

from __future__ import annotations

from tests.helpers import enqueue, run_worker, wait_until
from tqflow.engine.reports import batch_tally, read_reports


def test_a_worker_reports_each_batch_it_worked_on_and_why_it_ended(queue_factory, storage):
    queue = queue_factory(max_receive_count=2)
    enqueue(queue, "tests.tasks:square", range(5), batch="first")
    enqueue(queue, "tests.tasks:square", range(3), batch="second")
    enqueue(queue, "tests.tasks:always_fails", [9], batch="second")
    run_worker(queue, storage, retry_base_seconds=0.05)
    (first,) = read_reports(storage, "first")
    assert (first["succeeded"], first["failed"], first["ended"]) == (5, 0, "idle")
    (second,) = read_reports(storage, "second")
    assert (second["succeeded"], second["failed"], second["ended"]) == (3, 2, "idle")
    assert second["report"] == first["report"]  # one worker, one report name


def test_each_worker_run_writes_its_own_report_and_status_sums_them(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", range(4))
    run_worker(queue, storage)
    enqueue(queue, "tests.tasks:square", range(6))  # 0-3 are done: skipped
    run_worker(queue, storage)
    reports = read_reports(storage, "b")
    assert len({r["report"] for r in reports}) == 2
    tally = batch_tally(reports)
    assert (tally.succeeded, tally.skipped) == (6, 4)


def test_a_killed_worker_keeps_its_last_report_which_never_says_it_ended(
    queue_factory, storage, forked_workers
):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", range(3))
    enqueue(queue, "tests.tasks:sleeps_on", [99], slow=[99])  # hangs: the worker never ends
    worker = forked_workers.start(queue, storage, report_seconds=0.1, prefetch=1)
    reports = wait_until(
        lambda: [r for r in read_reports(storage, "b") if r["succeeded"] == 3], timeout=120
    )
    worker.kill()
    worker.wait(60)
    assert reports[0]["ended"] is None
    assert read_reports(storage, "b")[0]["ended"] is None
