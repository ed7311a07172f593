"""A set of workers draining one queue for one batch, as its controller sees it: units
launched, adopted, running and ended, and how each lost one ended.

A *unit* is what one launch starts: a local worker process (`LocalFleet`), or a deployment run
with ``processes`` worker processes in its pod (`DeploymentFleet`). Each has an id, which its
workers carry (`WorkerOptions.unit`): their reports name it, and the controller reads a unit's
signs of life and tells it to drain by it.

A unit is *lost* when it ends for a reason other than finishing its work (idle, ``max_tasks``,
``max_seconds``, drained) or being stopped by the fleet itself (shrinking, the end of the
batch), or when the controller finds it silent. Lost units are replaced while their work is
worth a start; those the batch itself is to blame for (anything but a preemption: spot capacity
taken back is the price of the discount) count against the controller's ``max_relaunches``.

Only the controller acts on a fleet, and every method but `stop` and `detach` may raise when
the service behind it fails: the controller treats that as "unknown" and tries again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from tqflow.fleet.clock import Clock, SystemClock
from tqflow.fleet.endings import Cause, Ending


@dataclass(frozen=True)
class FleetView:
    """The fleet at one look, in units. A unit is in one of `starting`, `running` or
    `stopping`."""

    #: Launched (or adopted) and not started yet, nor told to stop.
    starting: int = 0
    #: Started, and not told to stop.
    running: int = 0
    #: Told to stop or drain, and not ended yet.
    stopping: int = 0
    #: Of `starting`: those past the fleet's start timeout, waiting for capacity.
    waiting: int = 0
    #: What the cluster says of the waiting ones (a pod event's diagnosis, a run's state).
    waiting_reason: str = ""
    #: Why no unit can start, when the reason is one that waiting does not cure (an image
    #: that cannot be pulled): the controller ends the batch with it.
    cannot_start: str = ""
    #: The ids of the `running` units, whose signs of life the controller reads.
    running_units: frozenset[str] = field(default_factory=frozenset)

    @property
    def active(self) -> int:
        """Units at work or on their way to it: what the fleet's size is compared with."""
        return self.starting + self.running

    @property
    def live(self) -> int:
        """Units not ended."""
        return self.active + self.stopping


class Fleet(ABC):
    #: Worker processes per unit.
    processes_per_unit: int = 1

    def __init__(self, clock: Optional[Clock] = None) -> None:
        self.clock: Clock = clock or SystemClock()
        #: Stats of every worker process that ended and reported them.
        self.finished: list[dict[str, Any]] = []
        #: How each lost worker process ended.
        self.endings: Counter[Ending] = Counter()
        #: Units launched, taken over from an earlier controller of the batch, lost, lost by
        #: a cause the batch is to blame for, and stopped by the fleet itself.
        self.launched = 0
        self.adopted = 0
        self.lost = 0
        self.lost_charged = 0
        self.stopped = 0

    def adopt(self) -> int:
        """Take over the batch's units still live from an earlier controller (a retried or
        re-run pipeline): one fleet per batch. Returns how many were adopted."""
        return 0

    @abstractmethod
    def launch(self, n: int) -> None:
        """Start ``n`` more units. If it raises part-way, the units started so far are
        counted, and none is started twice when the controller launches again."""

    @abstractmethod
    def observe(self) -> FleetView:
        """One look at every unit; records the ends of those that ended."""

    @abstractmethod
    def shrink(self, n: int) -> int:
        """Stop ``n`` active units, those not started yet first (cancelled), then running ones,
        which drain: they finish their task and take no more. They are not lost. Returns how
        many were told to stop."""

    @abstractmethod
    def declare_lost(self, units: Iterable[str], ending: Ending) -> None:
        """The controller found ``units`` silent: stop what is left of them and count them lost
        with ``ending``."""

    @abstractmethod
    def stop(self) -> None:
        """The batch ended on purpose (drained, its time limit, workers that keep dying): stop
        every unit still live; their workers release their leases. Never raises."""

    def detach(self) -> None:
        """The controller goes away without ending the batch (its pipeline was evicted, or a
        fault of its own): units that outlive it keep working, and the next controller of the
        batch adopts them. Never raises."""
        return None

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
            if any(e.cause is not Cause.PREEMPTED for e in endings):
                self.lost_charged += 1
            self.endings.update(endings)
