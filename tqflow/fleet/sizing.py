"""A fleet sized to a deadline: `DeadlineSizer` (``workers="auto"`` with ``finish_within``).

It wants the fewest units that finish the batch by its deadline, from what the batch's tasks
take: their measured throughput per unit over a window of a tenth of the deadline (from the
first task done: before that, units are still starting), or before any is measured the mean
task time of earlier runs' worker reports, else a probe of `PROBE_UNITS` units. It aims `AIM`
of the time left, so that start-up and noise land before the deadline, not after. It grows as
soon as the rate says the deadline would be missed, at most doubling per quarter window (new
units start before they add to the rate), and shrinks, by a fifth at least so that it does not
flap, when fewer would have done for half a window: at the tail above all.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Optional

from tqflow.fleet.monitor import Progress

#: Units the fleet starts with when nothing says how long a task takes.
PROBE_UNITS = 2
#: The share of the time left the sizer plans to use.
AIM = 0.85
#: Tasks done in the window before the measured rate is trusted.
MEASURED_TASKS = 5
#: The throughput is measured over a tenth of the deadline, between these bounds (seconds).
WINDOW_SECONDS = (15.0, 600.0)


class DeadlineSizer:
    """The fleet's size for a batch of ``total`` tasks to finish within ``deadline_seconds``
    of the start, between 1 and ``most`` units of ``processes`` worker processes each;
    ``mean_task_seconds`` from earlier runs, if known."""

    def __init__(
        self,
        total: int,
        deadline_seconds: float,
        most: int,
        processes: int = 1,
        mean_task_seconds: Optional[float] = None,
    ) -> None:
        self.total = total
        self.deadline_seconds = deadline_seconds
        self.most = most
        self.processes = processes
        self.mean_task_seconds = mean_task_seconds
        self.window = min(max(deadline_seconds / 10, WINDOW_SECONDS[0]), WINDOW_SECONDS[1])
        self._last_growth = float("-inf")
        #: (elapsed seconds, tasks done, units running) at each look.
        self._samples: deque[tuple[float, int, int]] = deque()
        #: (elapsed seconds, units needed) over the last `SHRINK_AFTER_SECONDS`.
        self._needs: deque[tuple[float, int]] = deque()
        #: What the sizer wanted at each look, for the bench's plot: (elapsed, units).
        self.history: list[tuple[float, int]] = []

    def initial(self) -> int:
        """Units to start with."""
        rate = self._prior_rate()
        if rate is None:
            return min(self.most, PROBE_UNITS)
        return self._needed(self.total, self.deadline_seconds, rate)

    def wanted(self, progress: Progress, running: int) -> int:
        now = progress.elapsed_seconds
        finished = progress.done + progress.dead_lettered
        if finished or self._samples:  # measured from the first task done on
            self._samples.append((now, finished, running))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        remaining = max(0, self.total - progress.done - progress.dead_lettered)
        rate = self._measured_rate() or self._prior_rate()
        if rate is None:
            units = max(running, min(self.most, PROBE_UNITS))
        else:
            needed = self._needed(remaining, self.deadline_seconds - now, rate)
            self._needs.append((now, needed))
            while self._needs[0][0] < now - self.window / 2:
                self._needs.popleft()
            recent = max(n for _, n in self._needs)
            if needed > running:  # grow now: the deadline is at stake
                units = needed
                if now - self._last_growth < self.window / 4:
                    units = min(units, running)  # the last growth's units are still starting
                else:
                    units = min(units, max(2 * running, PROBE_UNITS))
                    self._last_growth = now
            elif recent <= 0.8 * running:
                units = recent  # shrink when fewer have done for a while, by a fifth or more
            else:
                units = running
        units = max(1, min(self.most, units))
        self.history.append((now, units))
        return units

    def projected_finish(self, progress: Progress, running: int) -> Optional[float]:
        """Seconds from the start when the batch will be done at the measured rate."""
        rate = self._measured_rate()
        remaining = max(0, self.total - progress.done - progress.dead_lettered)
        if not rate or not running:
            return None
        return progress.elapsed_seconds + remaining / (rate * running)

    def _needed(self, remaining: int, time_left: float, rate_per_unit: float) -> int:
        if remaining <= 0:
            return 1
        planned = max(1.0, AIM * time_left)
        return max(1, math.ceil(remaining / (rate_per_unit * planned)))

    def _prior_rate(self) -> Optional[float]:
        if not self.mean_task_seconds:
            return None
        return self.processes / self.mean_task_seconds

    def _measured_rate(self) -> Optional[float]:
        """Tasks per second per unit over the window: tasks done / unit-seconds."""
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        done = last[1] - first[1]
        unit_seconds = sum((b[0] - a[0]) * a[2] for a, b in itertools.pairwise(self._samples))
        if done < MEASURED_TASKS or unit_seconds <= 0:
            return None
        return done / unit_seconds
