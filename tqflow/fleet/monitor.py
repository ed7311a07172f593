"""Watch a batch drain: progress artifact, a log line now and then, relaunch lost workers.

Progress comes from the queue's counts, so it costs the same at 100 items as at 1,000,000:
``done = queued - pending - newly dead-lettered``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

from blocks.queues.base import TaskQueue
from tqflow.errors import WorkersLostError
from tqflow.fleet.fanout import Fleet


@dataclass
class Progress:
    total: int
    done: int
    pending: int
    in_flight: int
    dead_lettered: int
    workers_running: int
    elapsed_seconds: float
    tasks_per_second: float
    eta_seconds: Optional[float]

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else (self.done + self.dead_lettered) / self.total

    def line(self) -> str:
        eta = "-" if self.eta_seconds is None else f"{self.eta_seconds:,.0f}s"
        return (
            f"{self.done:,}/{self.total:,} done, {self.in_flight:,} in flight, "
            f"{self.dead_lettered:,} dead-lettered, {self.workers_running} workers, "
            f"{self.tasks_per_second:,.1f} tasks/s, ETA {eta}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def watch(
    queue: TaskQueue,
    fleet: Fleet,
    *,
    total: int,
    dead_before: int,
    workers: int,
    log: logging.Logger | logging.LoggerAdapter,
    on_progress: Any = None,
    poll_seconds: float = 1.0,
    log_seconds: float = 300.0,
    max_relaunches: Optional[int] = None,
) -> Progress:
    """Block until the queue is drained and every worker has exited; return the last progress.

    Calls ``on_progress(progress)`` on every poll. Logs a progress line at every tenth of the
    batch and at least every ``log_seconds``: a few dozen lines for a batch of any size or length.
    While messages remain, replaces every worker that is lost (crashed, killed, preempted) and
    starts workers again when none runs, at most ``max_relaunches`` (default: ``3 * workers``)
    launches in all.
    """
    max_relaunches = 3 * workers if max_relaunches is None else max_relaunches
    started = time.monotonic()
    next_log = started + log_seconds
    logged_tenths = 0
    relaunched = 0
    lost_seen = 0
    while True:
        running = fleet.running()
        counts = queue.counts()
        elapsed = time.monotonic() - started
        dead = counts.dead - dead_before
        done = max(0, total - counts.pending - dead)
        rate = done / elapsed if elapsed > 0 else 0.0
        remaining = max(0, total - done - dead)
        progress = Progress(
            total=total,
            done=done,
            pending=counts.pending,
            in_flight=counts.in_flight,
            dead_lettered=dead,
            workers_running=running,
            elapsed_seconds=round(elapsed, 3),
            tasks_per_second=round(rate, 3),
            eta_seconds=round(remaining / rate, 1) if rate > 0 and remaining else None,
        )
        if on_progress is not None:
            on_progress(progress)
        if counts.pending == 0 and running == 0:
            log.info("batch drained: %s", progress.line())
            return progress
        lost_now, lost_seen = fleet.lost - lost_seen, fleet.lost
        replace = 0
        if counts.pending > 0 and running == 0:
            replace = min(workers, counts.pending)
        elif counts.pending > 0 and lost_now > 0:  # crashed, killed, preempted
            replace = min(lost_now, workers - running, counts.pending)
        if replace > 0:
            if relaunched >= max_relaunches:
                raise WorkersLostError(
                    f"{counts.pending:,} messages remain but workers keep ending "
                    f"({fleet.lost} lost, {relaunched} relaunched); see the worker logs"
                )
            log.warning(
                "%d workers running, %d lost, %d messages left: launching %d",
                running,
                fleet.lost,
                counts.pending,
                replace,
            )
            fleet.launch(replace)
            relaunched += replace
        tenths = int(10 * progress.fraction)
        if time.monotonic() >= next_log or tenths > logged_tenths:
            log.info(progress.line())
            next_log = time.monotonic() + log_seconds
            logged_tenths = tenths
        time.sleep(poll_seconds)
