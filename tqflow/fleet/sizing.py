"""How many units a batch wants at work, each look: computed from time, not counts.

A *sizer* recommends; the controller (`tqflow.fleet.controller`) reconciles the fleet to it.
Both sizers measure the same thing (`RateMeter`): the tasks a working unit finishes a second,
over a window, counting only units that have started and are not stopping (a pod still
pulling its image does no work and must not lower the rate).

- `FixedSizer` (``workers=N``): up to N units while the work that is visible is worth a
  unit's start: visible tasks x the measured seconds a unit takes per task, against the time a
  unit takes to start. A lost unit is replaced while that holds, to the last minutes of a
  batch; before anything is measured, one unit per ``tasks_per_unit`` visible tasks. It never
  shrinks: units leave by themselves when nothing is visible.
- `DeadlineSizer` (``workers="auto"`` with ``finish_within_seconds``): the fewest units that
  finish by the deadline, counted from the pipeline's start, at the measured rate (or the mean
  task time of the batch's earlier runs, else a probe of `PROBE_UNITS`). It aims `AIM` of the
  time left, grows at once when the deadline is at stake (at most doubling per quarter window:
  new units start before they add to the rate), and recommends fewer, by a fifth or more, when
  fewer have sufficed for half a window; the controller shrinks only when several looks in a
  row agree.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from typing import Optional, Protocol

from tqflow.fleet.progress import Progress

#: Units the fleet starts with when nothing says how long a task takes.
PROBE_UNITS = 2
#: The share of the time left the deadline sizer plans to use.
AIM = 0.92
#: Tasks done in the window before the measured rate is trusted.
MEASURED_TASKS = 5
#: The rate is measured over this window (seconds): a deadline's tenth, between the bounds.
WINDOW_SECONDS = (15.0, 600.0)
#: Points of a sizer's history kept for the summary's plot; older ones are thinned.
HISTORY_POINTS = 2_000


class Sizer(Protocol):
    #: Whether the controller may shrink the fleet to what it recommends.
    shrinks: bool

    @property
    def deadline_seconds(self) -> Optional[float]:
        """The batch's deadline (seconds from the pipeline's start), for a sizer that has one."""
        ...

    #: Recommendations (elapsed seconds, units), thinned to `HISTORY_POINTS`.
    history: list[tuple[float, int]]

    def wanted(self, progress: Progress, working: int, active: int) -> int:
        """Units wanted at work or starting now; ``working``: units started and not stopping,
        ``active``: those and the units still starting."""
        ...

    def projected_finish(self, progress: Progress, working: int) -> Optional[float]:
        """Seconds from the start when the batch will be done at the measured rate."""
        ...


class RateMeter:
    """Tasks finished per second per working unit, over the last ``window_seconds``.

    A unit that has just started finishes its first task only a task's time later: counted
    as working at once, a fleet that had just grown would look slow and be grown again. So
    the tasks finished now are set against the units that were working a task's time ago
    (each of ``processes`` worker processes takes ``processes / rate`` seconds a task)."""

    def __init__(self, window_seconds: float, processes: int = 1) -> None:
        self.window_seconds = window_seconds
        self.processes = processes
        #: (elapsed seconds, tasks finished, units working) at each look, over the window and
        #: as far back again as a task takes.
        self._samples: deque[tuple[float, int, int]] = deque()
        self._task_seconds: Optional[float] = None

    def add(self, progress: Progress, working: int) -> None:
        finished = progress.done + progress.dead_lettered
        now = progress.elapsed_seconds
        if finished or self._samples:  # measured from the first task finished on
            self._samples.append((now, finished, working))
        keep = self.window_seconds + (self._task_seconds or 0.0)
        while self._samples and self._samples[0][0] < now - keep:
            self._samples.popleft()

    def rate(self) -> Optional[float]:
        """The rate ``r`` at which the tasks finished match the units working ``processes / r``
        seconds before: a longer lag counts fewer units and gives a higher rate, so there is
        one such rate, between the rate without a lag and the rate with the longest one;
        found by bisection."""
        low = self._rate(lag=0.0)
        if not low:
            return low
        high = self._rate(lag=self.processes / low) or low
        for _ in range(30):
            if high - low <= 1e-3 * low:
                break
            middle = (low + high) / 2
            if (self._rate(lag=self.processes / middle) or middle) > middle:
                low = middle
            else:
                high = middle
        self._task_seconds = self.processes / low
        return low

    def _rate(self, lag: float) -> Optional[float]:
        samples = list(self._samples)
        if len(samples) < 2:
            return None
        now = samples[-1][0]
        window = [s for s in samples if s[0] >= now - self.window_seconds]
        if len(window) < 2:
            return None
        done = window[-1][1] - window[0][1]
        times = [s[0] for s in samples]
        unit_seconds = 0.0
        for a, b in itertools.pairwise(window):
            working = a[2]
            if lag:  # those working a task ago, and still working
                earlier = bisect.bisect_right(times, a[0] - lag) - 1
                working = min(working, samples[max(0, earlier)][2])
            unit_seconds += (b[0] - a[0]) * working
        if done < MEASURED_TASKS or unit_seconds <= 0:
            return None
        return done / unit_seconds


class _History:
    def __init__(self) -> None:
        self.history: list[tuple[float, int]] = []

    def _record(self, elapsed: float, units: int) -> int:
        self.history.append((elapsed, units))
        if len(self.history) > HISTORY_POINTS:
            self.history = self.history[::2]
        return units


class FixedSizer(_History):
    """Up to ``most`` units while the visible work is worth a start of ``start_seconds``."""

    shrinks = False
    deadline_seconds: Optional[float] = None

    def __init__(
        self,
        most: int,
        tasks_per_unit: int,
        start_seconds: float,
        processes: int = 1,
        window_seconds: float = WINDOW_SECONDS[1],
    ) -> None:
        super().__init__()
        self.most = most
        self.tasks_per_unit = tasks_per_unit
        self.start_seconds = start_seconds
        self.meter = RateMeter(window_seconds, processes)

    def wanted(self, progress: Progress, working: int, active: int) -> int:
        self.meter.add(progress, working)
        if progress.visible <= 0:
            units = 0
        else:
            rate = self.meter.rate()
            if rate is None:
                units = math.ceil(progress.visible / self.tasks_per_unit)
            else:  # unit-seconds of visible work, a start's worth a unit
                units = math.ceil(progress.visible / rate / max(1.0, self.start_seconds))
            units = max(1, min(self.most, units))
        return self._record(progress.elapsed_seconds, units)

    def projected_finish(self, progress: Progress, working: int) -> Optional[float]:
        return _projected(self.meter.rate(), progress, working)


class DeadlineSizer(_History):
    """The fleet's size for a batch of ``total`` tasks to finish within ``deadline_seconds``
    of the pipeline's start, between 1 and ``most`` units of ``processes`` worker processes
    each; ``mean_task_seconds`` from earlier runs, if known."""

    shrinks = True

    def __init__(
        self,
        total: int,
        deadline_seconds: float,
        most: int,
        processes: int = 1,
        mean_task_seconds: Optional[float] = None,
    ) -> None:
        super().__init__()
        self.total = total
        self.deadline_seconds = deadline_seconds
        self.most = most
        self.processes = processes
        self.mean_task_seconds = mean_task_seconds
        self.window = min(max(deadline_seconds / 10, WINDOW_SECONDS[0]), WINDOW_SECONDS[1])
        self.meter = RateMeter(self.window, processes)
        self._last_growth = float("-inf")
        #: What the last growth asked for.
        self._target = 0
        #: (elapsed seconds, units needed) over the last half window.
        self._needs: deque[tuple[float, int]] = deque()

    def initial(self) -> int:
        """Units to start with."""
        rate = self._prior_rate()
        if rate is None:
            return min(self.most, PROBE_UNITS)
        return self._needed(self.total, self.deadline_seconds, rate)

    def wanted(self, progress: Progress, working: int, active: int) -> int:
        now = progress.elapsed_seconds
        self.meter.add(progress, working)
        remaining = max(0, self.total - progress.done - progress.dead_lettered)
        rate = self.meter.rate() or self._prior_rate()
        if rate is None:
            self._target = max(self._target, active, min(self.most, PROBE_UNITS))
        else:
            needed = self._needed(remaining, self.deadline_seconds - now, rate)
            self._needs.append((now, needed))
            while self._needs[0][0] < now - self.window / 2:
                self._needs.popleft()
            recent = max(n for _, n in self._needs)
            # The size decided last, which the fleet may still be launching toward (launches
            # are paced to the API budget, and pods take minutes to start).
            size = self._target or active
            if needed > size and now - self._last_growth >= self.window / 4:
                # Grow now: the deadline is at stake. The rate is per working unit (those
                # still starting do not lower it), so the units needed are known at once.
                self._target, self._last_growth = needed, now
            elif recent <= 0.8 * size and now - self._last_growth >= self.window:
                # Fewer have done for half a window, measured on the fleet the last growth
                # made: smaller by a fifth or more.
                self._target = recent
        return self._record(now, max(1, min(self.most, self._target)))

    def projected_finish(self, progress: Progress, working: int) -> Optional[float]:
        return _projected(self.meter.rate(), progress, working)

    def _needed(self, remaining: int, time_left: float, rate_per_unit: float) -> int:
        if remaining <= 0:
            return 1
        planned = max(1.0, AIM * time_left)
        return max(1, math.ceil(remaining / (rate_per_unit * planned)))

    def _prior_rate(self) -> Optional[float]:
        if not self.mean_task_seconds:
            return None
        return self.processes / self.mean_task_seconds


def _projected(rate: Optional[float], progress: Progress, working: int) -> Optional[float]:
    remaining = max(0, progress.total - progress.done - progress.dead_lettered)
    if not rate or not working:
        return None
    return progress.elapsed_seconds + remaining / (rate * working)
