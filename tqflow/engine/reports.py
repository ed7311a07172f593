"""What each worker tells about each batch it works on: ``<batch>/workers/<report>~<n>.json``.

A worker keeps one tally per batch (tasks succeeded, skipped as already done, failed and
retried, dead-lettered; wall and CPU seconds; a histogram of the tasks' peak RSS, from which
``plan-resources --from-batch`` sizes pods without reading 10^6 output records; failures by
error type) and rewrites that batch's report every ``report_seconds`` while its tally
changes, and once more when it ends, with why it ended.
``tqflow status`` sums the reports: one listing of a few files per worker, where counting the
outputs would list one file per item (10^6 of them). A worker killed outright (SIGKILL, an
OOM kill) loses at most its last ``report_seconds`` of counts, and its report never says it
ended: that is how a lost worker shows.

The report's name is the worker's name (host and pid) plus a random suffix, so a pid reused
by a later worker never overwrites an earlier worker's report; each rewrite is a new version
with a name of its own (the last one deleted), so a reader never reads a name twice
(`read_reports` keeps what it read in the batch's digest).
"""

from __future__ import annotations

import logging
import math
import threading
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, TypeGuard

from tqflow.engine.contracts import BatchFolder, Storage
from tqflow.engine.layout import (
    report_name,
    report_path,
    report_version,
    reports_digest_path,
    reports_prefix,
)
from tqflow.engine.outputs import now_iso
from tqflow.engine.stats import Outcome
from tqflow.engine.task_resources import TaskResources

#: Keys kept per error type, and the length of its example traceback.
ERROR_KEYS = 5
EXAMPLE_CHARS = 2_000
#: Buckets per doubling of the peak-RSS histogram: a percentile read from it is at most
#: 2**(1/16) - 1 = 4.4% above the true value, never below.
BUCKETS_PER_DOUBLING = 16


@dataclass
class BatchTally:
    """One worker's counts for one batch, and what its tasks used."""

    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    dead_lettered: int = 0
    #: Wall and CPU seconds of the tasks that ran (succeeded or not).
    task_seconds: float = 0.0
    cpu_seconds: float = 0.0
    #: The highest peak RSS of the worker process during a task, and the RSS between tasks.
    peak_rss_max: int = 0
    idle_rss_max: int = 0
    #: Tasks by peak RSS: bucket ``b`` holds peaks up to ``2 ** ((b + 1) / 16)`` bytes.
    peak_rss_histogram: dict[str, int] = field(default_factory=dict)
    #: Failed attempts by error type: ``{"count", "keys"`` (the first few), ``"example"}``.
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def count(self, outcome: Outcome) -> None:
        if outcome is Outcome.SUCCEEDED:
            self.succeeded += 1
        elif outcome is Outcome.SKIPPED:
            self.skipped += 1
        elif outcome is Outcome.FAILED:
            self.failed += 1
        else:
            self.dead_lettered += 1

    def add(self, other: dict[str, Any]) -> None:
        """Add another tally, as a report holds it."""
        self.succeeded += other.get("succeeded") or 0
        self.skipped += other.get("skipped") or 0
        self.failed += other.get("failed") or 0
        self.dead_lettered += other.get("dead_lettered") or 0
        self.task_seconds += other.get("task_seconds") or 0
        self.cpu_seconds += other.get("cpu_seconds") or 0
        self.peak_rss_max = max(self.peak_rss_max, other.get("peak_rss_max") or 0)
        self.idle_rss_max = max(self.idle_rss_max, other.get("idle_rss_max") or 0)
        for bucket, count in (other.get("peak_rss_histogram") or {}).items():
            self.peak_rss_histogram[bucket] = self.peak_rss_histogram.get(bucket, 0) + count
        for kind, seen in (other.get("errors") or {}).items():
            group = self.errors.setdefault(kind, {"count": 0, "keys": [], "example": ""})
            group["count"] += seen.get("count", 0)
            group["keys"] = (group["keys"] + seen.get("keys", []))[:ERROR_KEYS]
            group["example"] = group["example"] or seen.get("example", "")

    def error(self, kind: str, key: str, example: str) -> None:
        """Count a failed attempt of ``key`` with an error of type ``kind``."""
        group = self.errors.setdefault(kind, {"count": 0, "keys": [], "example": example})
        group["count"] += 1
        if len(group["keys"]) < ERROR_KEYS and key not in group["keys"]:
            group["keys"].append(key)

    def measure(self, used: TaskResources) -> None:
        self.task_seconds += used.wall_seconds
        self.cpu_seconds += used.cpu_seconds
        if used.idle_rss_bytes:
            self.idle_rss_max = max(self.idle_rss_max, used.idle_rss_bytes)
        if used.peak_rss_bytes:
            self.peak_rss_max = max(self.peak_rss_max, used.peak_rss_bytes)
            bucket = str(int(math.log2(used.peak_rss_bytes) * BUCKETS_PER_DOUBLING))
            self.peak_rss_histogram[bucket] = self.peak_rss_histogram.get(bucket, 0) + 1

    @property
    def measured_tasks(self) -> int:
        return sum(self.peak_rss_histogram.values())

    def peak_rss_percentile(self, q: float) -> int | None:
        """The peak RSS that ``q`` (0-1) of the measured tasks stayed under, rounded up to
        the histogram's bucket; ``None`` before any task was measured."""
        total = self.measured_tasks
        if not total:
            return None
        seen = 0
        for bucket in sorted(self.peak_rss_histogram, key=int):
            seen += self.peak_rss_histogram[bucket]
            if seen >= q * total:
                upper = 2 ** ((int(bucket) + 1) / BUCKETS_PER_DOUBLING)
                return min(int(math.ceil(upper)), self.peak_rss_max)
        return self.peak_rss_max


#: Report writes a second the whole fleet makes at most (`report_seconds_for`).
FLEET_REPORT_WRITES_PER_SECOND = 10.0
#: And how often a worker writes its report at least, in a small fleet.
REPORT_SECONDS = 10.0


def report_seconds_for(workers: int) -> float:
    """How often each of ``workers`` workers rewrites its report: every `REPORT_SECONDS`,
    slower as the fleet grows, so the fleet writes at most `FLEET_REPORT_WRITES_PER_SECOND`
    and a reader finds few changed since it last read (every 100 s at 1,000 workers)."""
    return max(REPORT_SECONDS, workers / FLEET_REPORT_WRITES_PER_SECOND)


class WorkerReports:
    """A worker's tallies, written by a background thread every ``report_seconds`` while
    they change (so a worker deep in a long task still reports), and once more by `close`.

    A worker of a fleet unit (``unit``) names it in its report's name and rewrites its
    ``heartbeat_batch``'s report every ``report_seconds`` whether it changed or not, from the
    start: a new version is its sign of life, which the pipeline reads from a listing alone
    (a unit whose reports stop is lost, even if its run never says it ended)."""

    def __init__(
        self,
        storage: Storage,
        worker: str,
        report_seconds: float,
        log: logging.Logger | logging.LoggerAdapter,
        *,
        unit: str | None = None,
        heartbeat_batch: str | None = None,
    ) -> None:
        self.storage = storage
        self.worker = worker
        self.report = report_name(f"{worker}-{uuid.uuid4().hex[:8]}", unit)
        self.heartbeat_batch = heartbeat_batch
        self.report_seconds = report_seconds
        self.log = log
        self.started_at = now_iso()
        self._tallies: dict[str, BatchTally] = {}
        self._changed: set[str] = set()
        #: Each batch's report's last version written, and its path.
        self._written: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if heartbeat_batch is not None:
            self._tallies[heartbeat_batch] = BatchTally()

    def count(
        self,
        batch: str,
        outcome: Outcome,
        used: TaskResources | None = None,
        error: tuple[str, str, str] | None = None,
    ) -> None:
        """Count one message's end; ``error`` is a failure's (type, key, traceback)."""
        with self._lock:
            tally = self._tallies.get(batch)
            if tally is None:
                tally = self._tallies[batch] = BatchTally()
            tally.count(outcome)
            if used is not None:
                tally.measure(used)
            if error is not None:
                kind, key, example = error
                tally.error(kind, key, example[-EXAMPLE_CHARS:])
            self._changed.add(batch)

    def start(self) -> None:
        if self.heartbeat_batch is not None:
            self._write(None)  # alive before its first task ends
        self._thread = threading.Thread(target=self._run, name="tqflow-reports", daemon=True)
        self._thread.start()

    def close(self, ended: str) -> None:
        """Stop the thread and write every batch's report, marked as the worker's last
        (``ended`` is the stop reason)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
        self._write(ended)

    def _run(self) -> None:
        while not self._closed.wait(self.report_seconds):
            self._write(None)

    def _write(self, ended: str | None) -> None:
        with self._lock:
            batches = list(self._tallies) if ended is not None else list(self._changed)
            if self.heartbeat_batch is not None and self.heartbeat_batch not in batches:
                batches.append(self.heartbeat_batch)
            self._changed.clear()
            records = [
                {
                    "worker": self.worker,
                    "report": self.report,
                    "batch": batch,
                    "started_at": self.started_at,
                    "updated_at": now_iso(),
                    "ended": ended,
                    **asdict(self._tallies[batch]),  # new dicts and lists: safe to write unlocked
                }
                for batch in batches
            ]
        for record in records:
            batch = record["batch"]
            version, before = self._written.get(batch, (0, ""))
            path = report_path(batch, self.report, version + 1)
            try:
                self.storage.put_json(path, record)
            except Exception as exc:  # a report is a summary: it never stops the work
                with self._lock:
                    self._changed.add(batch)  # written next time
                self.log.warning("could not write worker %s's report: %s", self.worker, exc)
                continue
            self._written[batch] = (version + 1, path)
            if before:  # readers take the latest version; an old one left behind costs a read
                try:
                    self.storage.delete(before)
                except Exception as exc:
                    self.log.debug("could not delete %s: %s", before, exc)


class Reports(list):
    """A batch's worker reports, and the paths of those that could not be read."""

    def __init__(self, reports: Iterable[dict[str, Any]] = (), unreadable: Iterable[str] = ()):
        super().__init__(reports)
        self.unreadable = list(unreadable)

    def warning(self) -> str:
        """One sentence naming the reports left out, or '' when none was."""
        if not self.unreadable:
            return ""
        shown = ", ".join(self.unreadable[:3])
        more = f" and {len(self.unreadable) - 3} more" if len(self.unreadable) > 3 else ""
        return (
            f"{len(self.unreadable)} worker report(s) not valid JSON or not of a worker "
            f"report's form, left out of the counts: "
            f"{shown}{more}. A report is only a summary (the outputs are the results): delete "
            "it, or leave it; its worker's counts are missing either way"
        )


def read_reports(storage: BatchFolder, batch: str) -> Reports:
    """Every worker report of ``batch`` that can be read (its latest version); the others are
    named in the result's ``unreadable``, never fatal.

    A report's every version has a name of its own, so a name read once never needs reading
    again: the reports last read are kept in the batch's digest, and only the names it lacks
    are read (at 1,000 workers in a bucket 30 ms away, reading all took seconds). The digest is
    a cache: any reader may write it, and a missing or damaged one only costs reads."""
    digest = _digest(storage, batch)
    latest = _latest(storage.list(reports_prefix(batch)))
    found = storage.get_json_many([p for p in latest if p not in digest])
    if any(p not in digest and p not in found and p not in found.corrupt for p in latest):
        # a version listed, then replaced by a newer one before it was read: list again
        latest = _latest(storage.list(reports_prefix(batch)))
        newer = storage.get_json_many([p for p in latest if p not in digest and p not in found])
        found.update(newer)
        found.corrupt.update(newer.corrupt)
    reports = {p: digest[p] if p in digest else found.get(p) for p in latest}
    unreadable = [*found.corrupt, *(p for p, r in found.items() if not well_formed(r))]
    kept: dict[str, dict[str, Any]] = {p: r for p, r in reports.items() if well_formed(r)}
    if set(kept) != set(digest):
        try:
            storage.put_json(reports_digest_path(batch), {"reports": kept})
        except Exception:  # a cache: the next reader reads a little more
            pass
    return Reports(kept.values(), unreadable)


#: A report's fields that readers add up, and the types they must have.
_NUMBERS = ("succeeded", "skipped", "failed", "dead_lettered", "task_seconds", "cpu_seconds",
            "peak_rss_max", "idle_rss_max")  # fmt: skip


def well_formed(report: Any) -> TypeGuard[dict[str, Any]]:
    """Whether ``report`` is a worker report a reader can add up: an object whose counts are
    numbers, its histogram counts by bucket, its errors groups of counts and keys. Anything
    else (written by hand, or by another program) is left out as unreadable, not a crash."""

    def number(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    if not isinstance(report, dict) or not all(number(report.get(k)) for k in _NUMBERS):
        return False
    histogram, errors = report.get("peak_rss_histogram") or {}, report.get("errors") or {}
    if not isinstance(histogram, dict) or not isinstance(errors, dict):
        return False
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in histogram.values()):
        return False
    if not all(_int_key(bucket) for bucket in histogram):
        return False
    return all(
        isinstance(group, dict)
        and number(group.get("count"))
        and isinstance(group.get("keys", []), list)
        and isinstance(group.get("example", ""), str)
        for group in errors.values()
    )


def _int_key(bucket: Any) -> bool:
    try:
        int(bucket)
    except (TypeError, ValueError):
        return False
    return True


def _latest(paths: Iterable[str]) -> list[str]:
    """The latest version of each report among ``paths``."""
    best: dict[str, tuple[int, str]] = {}
    for path in paths:
        if not path.endswith(".json"):
            continue
        report, version = report_version(path)
        if report not in best or version > best[report][0]:
            best[report] = (version, path)
    return sorted(path for _, path in best.values())


def _digest(storage: BatchFolder, batch: str) -> dict[str, dict[str, Any]]:
    try:
        digest = storage.get_json(reports_digest_path(batch))
    except Exception:  # damaged, or unreadable now: read the reports themselves
        return {}
    reports = digest.get("reports") if isinstance(digest, dict) else None
    return {p: r for p, r in (reports or {}).items() if isinstance(r, dict)}


def batch_tally(reports: Iterable[dict[str, Any]]) -> BatchTally:
    """The sum of the reports' counts."""
    total = BatchTally()
    for report in reports:
        total.add(report)
    return total
