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
    """Tasks finished per second per working unit, over the last ``window_seconds``."""

    def __init__(self, window_seconds: float) -> None:
        self.window_seconds = window_seconds
        #: (elapsed seconds, tasks finished, units working) at each look.
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, progress: Progress, working: int) -> None:
        finished = progress.done + progress.dead_lettered
        now = progress.elapsed_seconds
        if finished or self._samples:  # measured from the first task finished on
            self._samples.append((now, finished, working))
        while self._samples and self._samples[0][0] < now - self.window_seconds:
            self._samples.popleft()

    def rate(self) -> Optional[float]:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        done = last[1] - first[1]
        unit_seconds = sum((b[0] - a[0]) * a[2] for a, b in itertools.pairwise(self._samples))
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

    def __init__(
        self,
        most: int,
        tasks_per_unit: int,
        start_seconds: float,
        window_seconds: float = WINDOW_SECONDS[1],
    ) -> None:
        super().__init__()
        self.most = most
        self.tasks_per_unit = tasks_per_unit
        self.start_seconds = start_seconds
        self.meter = RateMeter(window_seconds)

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
        self.meter = RateMeter(self.window)
        self._last_growth = float("-inf")
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
            units = max(active, min(self.most, PROBE_UNITS))
        else:
            needed = self._needed(remaining, self.deadline_seconds - now, rate)
            self._needs.append((now, needed))
            while self._needs[0][0] < now - self.window / 2:
                self._needs.popleft()
            recent = max(n for _, n in self._needs)
            if needed > active:  # grow now: the deadline is at stake
                if now - self._last_growth < self.window / 4:
                    units = active  # the last growth is still starting
                else:
                    # The rate is per working unit (those still starting do not lower it),
                    # so the units needed are known at once, not found by doubling.
                    units = needed
                    self._last_growth = now
            elif recent <= 0.8 * active:
                units = recent  # fewer have done for a while: by a fifth or more
            else:
                units = active
        return self._record(now, max(1, min(self.most, units)))

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
