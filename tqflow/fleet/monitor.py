"""Watch a batch drain: progress, a log line now and then, and the fleet's size.

Progress comes from the queue's counts, so it costs the same at 100 items as at 1,000,000:
``done = queued - pending - newly dead-lettered``.

The fleet's size, each poll (`watch`):

- **workers for visible work**: while messages are visible, at least one unit per
  ``tasks_per_unit`` of them runs, up to the fleet's size. Workers leave when nothing is
  visible (their ``wait_for_in_flight`` is off), even while others hold messages: no pod idles
  behind one slow or retried item. When a retried message turns visible again, a unit is
  launched for it.
- **lost units are replaced** while messages remain, at most ``max_relaunches`` times in all
  (`WorkersLostError` after that: something kills every worker);
- a **sizer** (`tqflow.fleet.sizing`), when given, sets the fleet's size from the measured
  rate and a deadline: the fleet grows to it and shrinks to it (`Fleet.shrink`);
- past ``time_limit_seconds`` the batch stops (`BatchTimeLimitError`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Protocol

from tqflow.engine.contracts import QueueCounts
from tqflow.errors import BatchTimeLimitError, WorkersLostError
from tqflow.fleet.base import Fleet


@dataclass
class Progress:
    total: int
    done: int
    pending: int
    visible: int
    in_flight: int
    dead_lettered: int
    workers_running: int
    elapsed_seconds: float
    tasks_per_second: float
    eta_seconds: Optional[float]
    #: With a sizer: the fleet's size it wants (units), and its deadline (seconds from start).
    workers_wanted: Optional[int] = None
    deadline_seconds: Optional[float] = None

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else (self.done + self.dead_lettered) / self.total

    def line(self) -> str:
        eta = "-" if self.eta_seconds is None else f"{self.eta_seconds:,.0f}s"
        wanted = "" if self.workers_wanted is None else f" (wanted {self.workers_wanted})"
        return (
            f"{self.done:,}/{self.total:,} done, {self.in_flight:,} in flight, "
            f"{self.dead_lettered:,} dead-lettered, {self.workers_running} workers{wanted}, "
            f"{self.tasks_per_second:,.1f} tasks/s, ETA {eta}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Counted(Protocol):
    """What the monitor needs of a queue: its counts."""

    queue_name: str

    def counts(self) -> QueueCounts: ...


class Sizer(Protocol):
    """Sets the fleet's size (in units) from the batch's progress."""

    deadline_seconds: float

    def wanted(self, progress: Progress, running: int) -> int: ...


def watch(
    queue: Counted,
    fleet: Fleet,
    *,
    total: int,
    dead_before: int,
    workers: int,
    log: logging.Logger | logging.LoggerAdapter,
    tasks_per_unit: int = 1,
    on_progress: Optional[Callable[[Progress], None]] = None,
    poll_seconds: float = 1.0,
    log_seconds: float = 300.0,
    max_relaunches: Optional[int] = None,
    time_limit_seconds: Optional[float] = None,
    sizer: Optional[Sizer] = None,
) -> Progress:
    """Block until the queue is drained and every unit has ended; return the last progress.

    ``workers``: the fleet's largest size, in units. Calls ``on_progress(progress)`` on every
    poll; logs a progress line at every tenth of the batch and at least every ``log_seconds``.
    """
    max_relaunches = 3 * workers if max_relaunches is None else max_relaunches
    started = time.monotonic()
    next_log = started + log_seconds
    logged_tenths = 0
    replaced = 0  # lost units replaced
    lost_seen = 0
    while True:
        running = fleet.running()
        counts = queue.counts()
        progress = _progress(counts, total, dead_before, running, time.monotonic() - started)
        wanted = workers
        if sizer is not None:
            wanted = max(1, min(workers, sizer.wanted(progress, running)))
            progress.workers_wanted, progress.deadline_seconds = wanted, sizer.deadline_seconds
        if on_progress is not None:
            on_progress(progress)
        if counts.pending == 0 and running == 0:
            log.info("batch drained: %s", progress.line())
            return progress
        if time_limit_seconds is not None and progress.elapsed_seconds > time_limit_seconds:
            raise BatchTimeLimitError(
                f"the batch passed its time limit of {time_limit_seconds:,.0f} s with "
                f"{counts.pending:,} tasks not done ({progress.line()}); its workers are "
                "stopped and release what they hold. Run it again to go on (nothing done is "
                "run again), or give it more time or workers"
            )
        lost_now, lost_seen = fleet.lost - lost_seen, fleet.lost
        # Units for the visible work, up to the fleet's size; in-flight and delayed messages
        # are held by running workers, or come back visible.
        for_visible = min(wanted, math.ceil(counts.visible / tasks_per_unit))
        launch = max(0, for_visible - running)
        if launch and lost_now:
            replacing = min(launch, lost_now)
            if replaced + replacing > max_relaunches:
                raise WorkersLostError(
                    f"{counts.pending:,} messages remain but workers keep ending "
                    f"({fleet.lost} lost, {replaced} replaced); see the worker logs"
                )
            replaced += replacing
        if launch:
            log.info(
                "%d workers running, %d lost, %d messages visible: launching %d",
                running,
                fleet.lost,
                counts.visible,
                launch,
            )
            fleet.launch(launch)
        elif sizer is not None and running > wanted:
            log.info(
                "the batch will finish in time with %d workers: stopping %d",
                wanted,
                running - wanted,
            )
            fleet.shrink(running - wanted)
        tenths = int(10 * progress.fraction)
        if time.monotonic() >= next_log or tenths > logged_tenths:
            log.info(progress.line())
            next_log = time.monotonic() + log_seconds
            logged_tenths = tenths
        time.sleep(poll_seconds)


def _progress(
    counts: QueueCounts, total: int, dead_before: int, running: int, elapsed: float
) -> Progress:
    dead = counts.dead - dead_before
    done = max(0, total - counts.pending - dead)
    rate = done / elapsed if elapsed > 0 else 0.0
    remaining = max(0, total - done - dead)
    return Progress(
        total=total,
        done=done,
        pending=counts.pending,
        visible=counts.visible,
        in_flight=counts.in_flight,
        dead_lettered=dead,
        workers_running=running,
        elapsed_seconds=round(elapsed, 3),
        tasks_per_second=round(rate, 3),
        eta_seconds=round(remaining / rate, 1) if rate > 0 and remaining else None,
    )
