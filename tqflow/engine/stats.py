"""What one worker did: how each message ended (`Outcome`), why the worker stopped
(`StopReason`), and its counters (`WorkerStats`)."""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(str, Enum):
    """How one message ended for this worker."""

    SUCCEEDED = "succeeded"
    #: Its output existed already: acknowledged without running it.
    SKIPPED = "skipped"
    #: It raised, and is retried by the queue.
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class StopReason(str, Enum):
    """Why a worker's loop ended."""

    #: Nothing left for it (``idle_seconds`` of an empty queue).
    IDLE = "idle"
    MAX_TASKS = "max_tasks"
    MAX_SECONDS = "max_seconds"
    #: Told to stop: SIGTERM (spot preemption, eviction), SIGINT.
    STOPPED = "stopped"
    #: Its fleet shrank and named its unit: it finished its task and took no more
    #: (`tqflow.engine.drain`).
    DRAINED = "drained"
    #: The queue could not be reached for ``queue_unreachable_seconds``.
    QUEUE_UNREACHABLE = "queue_unreachable"

    @property
    def finished_its_work(self) -> bool:
        """Whether the worker ended for a reason of its own, not because it was stopped or
        could not go on."""
        return self in (
            StopReason.IDLE,
            StopReason.MAX_TASKS,
            StopReason.MAX_SECONDS,
            StopReason.DRAINED,
        )


@dataclass
class WorkerStats:
    """What one worker did."""

    outcomes: Counter[Outcome] = field(default_factory=Counter)
    timed_out: int = 0
    stop_reason: StopReason | None = None
    #: What stopped the worker, when it was not a normal end.
    error: str = ""
    elapsed_seconds: float = 0.0
    task_seconds_total: float = 0.0
    #: Durations of recent successful tasks, for the percentiles (bounded, so memory is flat).
    recent_task_seconds: deque = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def processed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def succeeded(self) -> int:
        return self.outcomes[Outcome.SUCCEEDED]

    @property
    def skipped(self) -> int:
        return self.outcomes[Outcome.SKIPPED]

    @property
    def failed(self) -> int:
        return self.outcomes[Outcome.FAILED]

    @property
    def dead_lettered(self) -> int:
        return self.outcomes[Outcome.DEAD_LETTERED]

    def count(self, outcome: Outcome, task_seconds: float | None = None) -> None:
        self.outcomes[outcome] += 1
        if outcome is Outcome.SUCCEEDED and task_seconds is not None:
            self.task_seconds_total += task_seconds
            self.recent_task_seconds.append(task_seconds)

    def summary(self) -> str:
        o = self.outcomes
        return (
            f"{o[Outcome.SUCCEEDED]:,} succeeded, {o[Outcome.SKIPPED]:,} skipped (already done), "
            f"{o[Outcome.FAILED]:,} failed, {o[Outcome.DEAD_LETTERED]:,} dead-lettered"
        )

    def as_dict(self) -> dict[str, Any]:
        recent = sorted(self.recent_task_seconds)
        p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))] if recent else None
        succeeded = self.succeeded
        return {
            **{outcome.value: self.outcomes[outcome] for outcome in Outcome},
            "timed_out": self.timed_out,
            "processed": self.processed,
            "stop_reason": self.stop_reason.value if self.stop_reason else "",
            "error": self.error,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "mean_task_seconds": (
                round(self.task_seconds_total / succeeded, 6) if succeeded else None
            ),
            "median_task_seconds": round(statistics.median(recent), 6) if recent else None,
            "p95_task_seconds": round(p95, 6) if p95 is not None else None,
        }
