"""Worker reports (``<batch>/workers/``): what each worker did for each batch, summed by status."""

from __future__ import annotations

from tests.support.helpers import enqueue, run_worker, wait_until
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


# -- versions and the digest: a reader reads only what changed ----------------------------------


class CountingReads:
    """A batch folder that counts the files read through ``get_json_many``."""

    def __init__(self, storage) -> None:
        self.storage = storage
        self.read: list[str] = []

    def __getattr__(self, name):
        return getattr(self.storage, name)

    def get_json_many(self, paths):
        paths = list(paths)
        self.read += paths
        return self.storage.get_json_many(paths)


def _write_reports(storage, workers: int, batch: str = "b"):
    import logging

    from tqflow.engine.reports import WorkerReports
    from tqflow.engine.stats import Outcome

    reports = []
    for n in range(workers):
        report = WorkerReports(storage, f"w{n}", 60, logging.getLogger("test"))
        report.count(batch, Outcome.SUCCEEDED)
        report._write(None)
        reports.append(report)
    return reports


def test_a_second_read_reads_only_the_reports_that_changed_since(storage):
    from tqflow.engine.stats import Outcome

    reports = _write_reports(storage, 20)
    counting = CountingReads(storage)
    assert batch_tally(read_reports(counting, "b")).succeeded == 20
    assert len(counting.read) == 20
    for report in reports[:3]:
        report.count("b", Outcome.SUCCEEDED)
        report._write(None)
    counting.read.clear()
    assert batch_tally(read_reports(counting, "b")).succeeded == 23
    assert len(counting.read) == 3  # the other 17 came from the digest


def test_a_rewritten_report_replaces_its_last_version(storage):
    from tqflow.engine.layout import reports_prefix
    from tqflow.engine.stats import Outcome

    [report] = _write_reports(storage, 1)
    report.count("b", Outcome.SKIPPED)
    report._write("idle")
    [path] = list(storage.list(reports_prefix("b")))
    assert path.endswith("~00000002.json")
    [read] = read_reports(storage, "b")
    assert (read["succeeded"], read["skipped"], read["ended"]) == (1, 1, "idle")


def test_of_two_versions_left_by_a_killed_worker_the_later_counts(storage):
    from tqflow.engine.layout import report_path

    storage.put_json(report_path("b", "w-1", 1), {"report": "w-1", "succeeded": 1})
    storage.put_json(report_path("b", "w-1", 2), {"report": "w-1", "succeeded": 5})
    assert batch_tally(read_reports(storage, "b")).succeeded == 5


def test_a_damaged_digest_costs_only_reads(storage):
    from tqflow.engine.layout import reports_digest_path

    _write_reports(storage, 4)
    storage.put(reports_digest_path("b"), b'{"reports": {"b/workers/')
    assert batch_tally(read_reports(storage, "b")).succeeded == 4


def test_report_writes_slow_down_as_the_fleet_grows():
    from tqflow.engine.reports import report_seconds_for

    assert report_seconds_for(4) == report_seconds_for(100) == 10
    assert report_seconds_for(1_000) == 100  # 10 writes a second, fleet-wide
