"""A batch's progress at one look of its controller: what the dashboard, the progress artifact
and the log line show.

Progress comes from the queue's counts, so it costs the same at 100 items as at 1,000,000:
``done = total - pending - newly dead-lettered``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from tqflow.engine.contracts import QueueCounts


@dataclass
class Progress:
    total: int
    done: int
    pending: int
    visible: int
    in_flight: int
    dead_lettered: int
    #: Units at work (started, not stopping), on their way (launched, not started), and of
    #: those the ones waiting for capacity past the start timeout, with the cluster's reason.
    workers_running: int
    elapsed_seconds: float
    tasks_per_second: float
    eta_seconds: Optional[float]
    workers_starting: int = 0
    workers_waiting: int = 0
    waiting_reason: str = ""
    #: The size the sizer wants (units); with a deadline, the deadline and the finish the
    #: measured rate projects (seconds from the pipeline's start).
    workers_wanted: Optional[int] = None
    deadline_seconds: Optional[float] = None
    projected_finish_seconds: Optional[float] = None
    #: True while the last look at the queue or the fleet failed: the figures are the last
    #: known ones.
    stale: bool = False

    @property
    def fraction(self) -> float:
        return 1.0 if self.total == 0 else (self.done + self.dead_lettered) / self.total

    @property
    def waiting(self) -> int:
        """Tasks neither done, dead-lettered nor in flight."""
        return max(0, self.pending - self.in_flight)

    def measured(self, rate: float) -> None:
        """Set the rate (tasks a second) and the finish it projects."""
        remaining = max(0, self.total - self.done - self.dead_lettered)
        self.tasks_per_second = round(rate, 3)
        self.eta_seconds = round(remaining / rate, 1) if rate > 0 and remaining else None

    def line(self) -> str:
        eta = "-" if self.eta_seconds is None else f"{self.eta_seconds:,.0f}s"
        wanted = "" if self.workers_wanted is None else f" (wanted {self.workers_wanted})"
        starting = f", {self.workers_starting} starting" if self.workers_starting else ""
        waiting = (
            f" ({self.workers_waiting} waiting: {self.waiting_reason})"
            if self.workers_waiting
            else ""
        )
        return (
            f"{self.done:,}/{self.total:,} done, {self.in_flight:,} in flight, "
            f"{self.dead_lettered:,} dead-lettered, {self.workers_running} workers{wanted}"
            f"{starting}{waiting}, {self.tasks_per_second:,.1f} tasks/s, ETA {eta}"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def progress_of(counts: QueueCounts, total: int, dead_before: int, elapsed: float) -> Progress:
    """The batch's progress from its queue's counts, ``elapsed`` seconds after the pipeline
    started; its rate is the controller's to measure (`Progress.measured`)."""
    dead = max(0, counts.dead - dead_before)
    done = max(0, total - counts.pending - dead)
    return Progress(
        total=total,
        done=done,
        pending=counts.pending,
        visible=counts.visible,
        in_flight=counts.in_flight,
        dead_lettered=dead,
        workers_running=0,
        elapsed_seconds=round(elapsed, 3),
        tasks_per_second=0.0,
        eta_seconds=None,
    )
