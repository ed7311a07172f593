"""A set of workers draining one queue, as the monitor sees it: units launched, running and
ended, and how each lost worker ended.

A *unit* is what one launch starts: a local worker process (`LocalFleet`), or a deployment run
with ``processes`` worker processes in its pod (`DeploymentFleet`). A unit is *lost* when it
ends before the queue is drained for a reason other than finishing its work (idle,
``max_tasks``, ``max_seconds``) or being stopped by the fleet itself (shrinking, or the end of
the batch); the monitor replaces lost units while work remains.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Iterable

from tqflow.fleet.endings import Ending


class Fleet(ABC):
    #: Worker processes per unit.
    processes_per_unit: int = 1

    def __init__(self) -> None:
        #: Stats of every worker process that ended and reported them.
        self.finished: list[dict[str, Any]] = []
        #: How each lost worker process ended.
        self.endings: Counter[Ending] = Counter()
        #: Units launched, lost, and stopped by the fleet itself.
        self.launched = 0
        self.lost = 0
        self.stopped = 0

    @abstractmethod
    def launch(self, n: int) -> None:
        """Start ``n`` more units."""

    @abstractmethod
    def running(self) -> int:
        """How many units are still running (one look at each unit's state, or at the runs of
        the fleet at once); records the ends of those that ended."""

    @property
    @abstractmethod
    def stopping(self) -> int:
        """Units told to stop (`shrink`) that have not ended yet."""

    @abstractmethod
    def shrink(self, n: int) -> None:
        """Stop ``n`` running units (their leases are released); they are not lost."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every unit still running (their leases are released)."""

    def _record_end(
        self, stats: Iterable[dict[str, Any]], endings: Iterable[Ending], stopped_by_fleet: bool
    ) -> None:
        """A unit ended: its processes' ``stats``, and the ``endings`` of those that were lost."""
        self.finished.extend(stats)
        endings = list(endings)
        if stopped_by_fleet:
            self.stopped += 1
        elif endings:
            self.lost += 1
            self.endings.update(endings)
