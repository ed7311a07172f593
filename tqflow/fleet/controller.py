"""The batch controller: the one owner of a batch's fan-out, level-triggered.

Each look it *observes* (the queue's counts, the fleet's units, the units' signs of life),
asks its sizer for the *desired* number of active units (`tqflow.fleet.sizing`), and
*reconciles* the fleet to it: launches, within the API budget (`tqflow.fleet.api_budget`), or
shrinks, when several looks in a row agree. Nothing it does depends on remembering what it did:
a retried or re-run pipeline starts a controller that adopts the batch's live units and goes on.

What it never does:

- **act on what it does not know**: a look that fails (the Prefect API down, a 429, the
  queue out of reach) is "unknown": the last known figures stand, the next look waits longer,
  and no unit is launched, shrunk or declared lost on its account;
- **cancel working units for a fault of its own or a service's**: it stops the fleet only when
  the batch ends on purpose (`Ended`); on anything else that ends it (its pod's SIGTERM, an
  error) it *detaches*, and the runs go on working for the next controller of the batch;
- **take waiting for capacity for loss**: units that wait for a node are counted active (the
  fleet sizes itself to the capacity it got) and never replaced by identical ones; only a
  reason no wait cures (an image that cannot be pulled), or no unit started within the start
  timeout, ends the batch (`Ended.CANNOT_START`).

The batch ends when its queue has nothing pending (nothing visible, in flight or delayed) at
two looks in a row: once its units have left, or after ``end_grace_seconds`` even if a run
never reports its end.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Optional, TypeVar

from tqflow.engine.contracts import QueueCounts, Storage, StorageReader
from tqflow.engine.layout import pipeline_run_path
from tqflow.fleet.api_budget import ApiBudget
from tqflow.fleet.base import Fleet, FleetView
from tqflow.fleet.clock import Clock, SystemClock
from tqflow.fleet.endings import Cause, Ending
from tqflow.fleet.liveness import Liveness
from tqflow.fleet.progress import Progress, progress_of
from tqflow.fleet.sizing import Sizer

T = TypeVar("T")

#: Looks in a row whose recommendation is below the fleet before it shrinks.
SHRINK_AFTER_LOOKS = 3
#: The longest wait between looks while they fail.
MOST_BACKOFF_SECONDS = 60.0


class Ended(str, Enum):
    """Why a batch's controller ended it."""

    #: Nothing pending at two looks in a row: every task done or dead-lettered.
    DRAINED = "drained"
    #: Past the batch's ``time_limit_seconds``.
    TIME_LIMIT = "time_limit"
    #: More units lost to causes of the batch's own than ``max_relaunches``.
    WORKERS_LOST = "workers_lost"
    #: No unit can start: a reason no wait cures, or none started within the start timeout.
    CANNOT_START = "cannot_start"


@dataclass
class FanOut:
    """How a batch's controller runs its fleet (sizes in units)."""

    #: The fleet's largest size.
    most: int
    poll_seconds: float = 1.0
    #: A progress line at least this often (and at every tenth of the batch).
    log_seconds: float = 300.0
    time_limit_seconds: Optional[float] = None
    #: Lost units, of causes the batch is to blame for, before it ends (default 3 x ``most``).
    max_relaunches: Optional[int] = None
    #: A running unit that writes no report this long is lost (`tqflow.fleet.liveness`).
    silent_seconds: float = 600.0
    #: How long units may take to leave once the queue is drained, before they are stopped.
    end_grace_seconds: float = 60.0
    #: Requests a minute the batch's launches may spend (`tqflow.fleet.api_budget`).
    api_requests_per_minute: Optional[int] = None


@dataclass
class BatchOutcome:
    """How a batch's fan-out ended: a typed result, which the pipeline turns into its state
    and the CLI into its hint."""

    ended: Ended
    progress: Progress
    #: Units launched by this controller, adopted from an earlier one, lost (of which the
    #: batch is to blame for ``lost_charged``), and how each lost worker process ended.
    launched: int
    adopted: int
    lost: int
    lost_charged: int
    endings: Counter[Ending]
    #: For `Ended.CANNOT_START`: what the cluster says.
    reason: str = ""
    #: Looks that failed (the figures were unknown then).
    unknown_looks: int = 0
    #: The sizer's recommendations over time: (seconds from the start, units).
    sizes: list[tuple[float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class PipelineStart:
    """When a pipeline run first started, and the dead letters its queue held then: kept in
    storage, so a retried run counts its time limit, its deadline and its dead letters from
    the first attempt (a retry that read the queue again would count the first attempt's dead
    letters as done)."""

    started_at: float
    dead_before: int

    @classmethod
    def of(
        cls, storage: Storage, batch: str, run_key: str, dead_now: int, now: float
    ) -> "PipelineStart":
        path = pipeline_run_path(batch, run_key)
        try:
            kept = storage.get_json(path)
            if isinstance(kept, dict):
                return cls(float(kept["started_at"]), int(kept["dead_before"]))
        except Exception:  # unreadable or damaged: this attempt starts the count anew
            pass
        start = cls(now, dead_now)
        try:
            storage.put_json(path, {"started_at": now, "dead_before": dead_now})
        except Exception:  # only a retry would miss it
            pass
        return start


class BatchController:
    """Runs ``fleet`` for one batch of ``total`` tasks on ``queue`` until it ends.

    ``reports``: where the workers' reports are (their signs of life); ``on_progress``: called
    with each look's progress (the dashboard, the progress artifact), never failing the batch.
    """

    def __init__(
        self,
        queue: Any,
        fleet: Fleet,
        sizer: Sizer,
        settings: FanOut,
        *,
        batch: str,
        total: int,
        start: PipelineStart,
        reports: Optional[StorageReader],
        log: logging.Logger | logging.LoggerAdapter,
        on_progress: Optional[Callable[[Progress, Fleet], None]] = None,
        clock: Optional[Clock] = None,
    ) -> None:
        self.queue, self.fleet, self.sizer, self.settings = queue, fleet, sizer, settings
        self.batch, self.total, self.start = batch, total, start
        self.log, self.on_progress = log, on_progress
        self.clock: Clock = clock or SystemClock()
        self.liveness = (
            Liveness(reports, batch, settings.silent_seconds) if reports is not None else None
        )
        self.budget = ApiBudget(settings.api_requests_per_minute, self.clock.monotonic())
        self.max_relaunches = (
            3 * settings.most if settings.max_relaunches is None else settings.max_relaunches
        )
        self.unknown_looks = 0
        self._failing: dict[str, float] = {}  # what fails to answer, since when
        self._counts: Optional[QueueCounts] = None
        self._view = FleetView()
        self._first: Optional[tuple[float, int]] = None  # (when, done) at the first look
        self._ever_running = False
        self._below: deque[int] = deque(maxlen=SHRINK_AFTER_LOOKS)
        self._drained_looks = 0
        self._drained_at: Optional[float] = None
        self._logged_tenths = 0
        self._next_log = 0.0
        self._told_waiting = ""
        self._suspected = False

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> BatchOutcome:
        """Until the batch ends; then stop what is left of the fleet. Anything else that ends
        it (an error, the pipeline's SIGTERM) detaches the fleet instead, and is raised."""
        try:
            self._try("the Prefect API (adopting the batch's runs)", self._adopt)
            while True:
                ended = self._look()
                if ended is not None:
                    break
                self.clock.sleep(self._pause())
        except BaseException:
            self.fleet.detach()
            raise
        self.fleet.stop()
        return self._outcome(*ended)

    def _adopt(self) -> None:
        adopted = self.fleet.adopt()
        if adopted:
            self.log.info(
                "batch %s: %d workers of an earlier run of the pipeline are still at work: "
                "adopted, not launched again",
                self.batch,
                adopted * self.fleet.processes_per_unit,
            )

    def _look(self) -> Optional[tuple[Ended, str]]:
        """One look: observe, decide, reconcile. The batch's end, or ``None``."""
        now = self.clock.monotonic()
        counts = self._try("the queue", self.queue.counts)
        view = self._try("the Prefect API", self.fleet.observe)
        self.budget.look(now)
        known = counts is not None and view is not None
        self.unknown_looks += not known
        if counts is not None:
            self._counts = counts
        if view is not None:
            self._view = view
        if self._counts is None:  # nothing known yet
            return self._time_limit(self.clock.time() - self.start.started_at)
        progress = self._progress(self._counts, self._view, stale=not known)
        if known:
            self._find_silent(self._view, now)
            progress.workers_wanted = self.sizer.wanted(
                progress, self._view.running, self._view.active
            )
            progress.projected_finish_seconds = self.sizer.projected_finish(
                progress, self._view.running
            )
            progress.deadline_seconds = self.sizer.deadline_seconds
        self._report(progress)
        if not known:
            return self._time_limit(progress.elapsed_seconds)
        self._ever_running = self._ever_running or self._view.running + self._view.stopping > 0
        ended = self._end(self._counts, self._view, progress, now)
        if ended is None:
            assert progress.workers_wanted is not None
            self._reconcile(progress.workers_wanted, self._view, progress.visible, now)
        return ended

    def _progress(self, counts: QueueCounts, view: FleetView, stale: bool) -> Progress:
        now = self.clock.monotonic()
        elapsed = self.clock.time() - self.start.started_at
        progress = progress_of(counts, self.total, self.start.dead_before, elapsed)
        finished = progress.done + progress.dead_lettered
        if self._first is None:
            self._first = (now, finished)
        seconds = now - self._first[0]
        progress.measured((finished - self._first[1]) / seconds if seconds > 0 else 0.0)
        progress.workers_running = view.running
        progress.workers_starting = view.starting
        progress.workers_waiting = view.waiting
        progress.waiting_reason = view.waiting_reason
        progress.stale = stale
        return progress

    def _end(
        self, counts: QueueCounts, view: FleetView, progress: Progress, now: float
    ) -> Optional[tuple[Ended, str]]:
        if counts.pending == 0:
            self._drained_looks += 1
            self._drained_at = self._drained_at if self._drained_at is not None else now
        else:
            self._drained_looks, self._drained_at = 0, None
        if self._drained_looks >= 2:
            assert self._drained_at is not None
            if view.live == 0 or now - self._drained_at >= self.settings.end_grace_seconds:
                return Ended.DRAINED, ""
            return None  # the units leave by themselves: nothing visible is left
        limit = self._time_limit(progress.elapsed_seconds)
        if limit is not None:
            return limit
        if view.cannot_start and not view.running:
            return Ended.CANNOT_START, view.cannot_start
        if not self._ever_running and view.active and view.waiting == view.starting == view.active:
            return Ended.CANNOT_START, view.waiting_reason  # none started within the timeout
        if self.fleet.lost_charged > self.max_relaunches:
            return Ended.WORKERS_LOST, ""
        return None

    def _time_limit(self, elapsed: float) -> Optional[tuple[Ended, str]]:
        limit = self.settings.time_limit_seconds
        if limit is not None and elapsed > limit:
            return Ended.TIME_LIMIT, ""
        return None

    def _find_silent(self, view: FleetView, now: float) -> None:
        if self.liveness is None or not view.running_units:
            return
        silent = self._try("the workers' reports", self.liveness.silent, view.running_units, now)
        if self.liveness.suspect and not self._suspected:  # said once, until it passes
            self.log.warning(
                "%d of %d running workers have written no report for %.0f s: more likely the "
                "storage their reports go to than the workers; none is declared lost",
                self.liveness.suspect,
                len(view.running_units),
                self.settings.silent_seconds,
            )
        self._suspected = bool(self.liveness.suspect)
        if silent:
            self.log.warning(
                "%d workers wrote no report for %.0f s though their runs have not ended: "
                "declared lost, stopped and replaced (%s)",
                len(silent),
                self.settings.silent_seconds,
                ", ".join(silent[:5]),
            )
            minutes = f"no report for {self.settings.silent_seconds / 60:.0f} min"
            self._try(
                "the Prefect API (stopping silent runs)",
                self.fleet.declare_lost,
                silent,
                Ending(Cause.SILENT, minutes),
            )

    def _reconcile(self, wanted: int, view: FleetView, visible: int, now: float) -> None:
        self._say_waiting(view)
        if wanted > view.active:
            self._below.clear()
            if view.waiting:  # more would wait too: the fleet is the capacity it got
                return
            if not visible:  # a new unit would find nothing to do, and leave
                return
            n = self.budget.launches(wanted - view.active, now)
            if n:
                self.log.info(
                    "%d workers running, %d starting, %d lost: launching %d",
                    view.running * self.fleet.processes_per_unit,
                    view.starting * self.fleet.processes_per_unit,
                    self.fleet.lost,
                    n * self.fleet.processes_per_unit,
                )
                self._try("the Prefect API (launching)", self.fleet.launch, n)
        elif wanted < view.active and self.sizer.shrinks:
            self._below.append(wanted)
            if len(self._below) == SHRINK_AFTER_LOOKS:
                keep = max(self._below)
                self.log.info(
                    "the batch will finish in time with %d workers: stopping %d",
                    keep * self.fleet.processes_per_unit,
                    (view.active - keep) * self.fleet.processes_per_unit,
                )
                self._try("the Prefect API (shrinking)", self.fleet.shrink, view.active - keep)
                self._below.clear()
        else:
            self._below.clear()

    def _say_waiting(self, view: FleetView) -> None:
        if view.waiting and view.waiting_reason != self._told_waiting:
            self._told_waiting = view.waiting_reason
            self.log.warning(
                "%d of %d workers have waited past the start timeout (%s): waiting for "
                "them, launching no more",
                view.waiting * self.fleet.processes_per_unit,
                view.active * self.fleet.processes_per_unit,
                view.waiting_reason,
            )

    # -- what could fail ------------------------------------------------------------------------

    def _try(self, what: str, call: Callable[..., T], *args: Any) -> Optional[T]:
        """``call(*args)``, or ``None`` (unknown) if it raises; says when ``what`` stops and
        starts answering again."""
        try:
            result = call(*args)
        except Exception as exc:
            if what not in self._failing:
                self._failing[what] = self.clock.monotonic()
                self.log.warning(
                    "cannot reach %s (%s: %s); the workers go on, and so does the batch: "
                    "trying again",
                    what,
                    type(exc).__name__,
                    str(exc)[:300],
                )
            return None
        since = self._failing.pop(what, None)
        if since is not None:
            self.log.info("%s answers again after %.0f s", what, self.clock.monotonic() - since)
        return result

    def _pause(self) -> float:
        if not self._failing:
            return self.settings.poll_seconds
        failing_for = self.clock.monotonic() - min(self._failing.values())
        return min(MOST_BACKOFF_SECONDS, max(self.settings.poll_seconds, failing_for / 4))

    def _report(self, progress: Progress) -> None:
        if self.on_progress is not None:
            try:
                self.on_progress(progress, self.fleet)
            except Exception as exc:  # a picture of the batch never stops it
                self.log.warning("could not report the batch's progress: %s", exc)
        tenths = int(10 * progress.fraction)
        now = self.clock.monotonic()
        if now >= self._next_log or tenths > self._logged_tenths:
            self.log.info(progress.line())
            self._next_log = now + self.settings.log_seconds
            self._logged_tenths = tenths

    def _outcome(self, ended: Ended, reason: str) -> BatchOutcome:
        assert self._counts is not None or ended is Ended.TIME_LIMIT
        counts = self._counts or QueueCounts(0, 0, 0, self.start.dead_before)
        progress = self._progress(counts, self._view, stale=False)
        if ended is Ended.DRAINED:
            self.log.info("batch drained: %s", progress.line())
        return BatchOutcome(
            ended=ended,
            progress=progress,
            launched=self.fleet.launched,
            adopted=self.fleet.adopted,
            lost=self.fleet.lost,
            lost_charged=self.fleet.lost_charged,
            endings=Counter(self.fleet.endings),
            reason=reason,
            unknown_looks=self.unknown_looks,
            sizes=list(self.sizer.history),
        )
