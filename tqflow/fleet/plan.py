"""A pipeline's fan-out parameters, checked once and turned into what its controller runs on:
the fleet's largest size in units, the sizer, and the controller's settings.

Every parameter is checked here, before anything is queued, and a bad one is named with the
fix (`ParameterError`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal, Optional, Union

from tqflow.errors import ParameterError
from tqflow.fleet.api_budget import BudgetSetting, requests_per_minute
from tqflow.fleet.controller import FanOut
from tqflow.fleet.sizing import DeadlineSizer, FixedSizer, Sizer

#: The most worker processes ``workers="auto"`` runs without ``max_workers``: on this machine,
#: one per core; on a work pool, this many.
AUTO_MOST_DEPLOYMENT_WORKERS = 100
#: How often a deployment-mode pipeline looks at its queue and its runs, by default.
DEPLOYMENT_POLL_SECONDS = 10.0
#: What a unit takes to start, before it works: a local worker forked warm, a pod (a node
#: scale-up and an image pull take minutes; a node that is there, tens of seconds).
START_SECONDS = {"local": 2.0, "deployment": 120.0}
#: A running unit that writes no report for this many of its report intervals (and at least
#: `SILENT_MIN_SECONDS`) is lost.
SILENT_REPORTS = 6
SILENT_MIN_SECONDS = 300.0
#: After the queue is drained, what units get to leave by themselves beyond their idle time.
END_GRACE_SECONDS = {"local": 10.0, "deployment": 60.0}


@dataclass(frozen=True)
class FanOutPlan:
    mode: Literal["local", "deployment"]
    #: Worker processes per unit, the most worker processes, and the most units.
    processes: int
    most_workers: int
    units: int
    tasks_per_unit: int
    poll_seconds: float
    deadline_seconds: Optional[float]
    start_timeout_seconds: float
    time_limit_seconds: Optional[float]
    api_requests_per_minute: Optional[int]
    launch_concurrency: Optional[int] = None

    @classmethod
    def of(
        cls,
        *,
        workers: Union[int, str],
        finish_within_seconds: Optional[float],
        max_workers: Optional[int],
        mode: str,
        tasks_per_worker: int,
        processes_per_run: int,
        start_timeout_seconds: float,
        time_limit_seconds: Optional[float],
        poll_seconds: Optional[float],
        api_budget: BudgetSetting,
        launch_concurrency: Optional[int] = None,
    ) -> "FanOutPlan":
        if mode not in ("local", "deployment"):
            raise ParameterError(f"mode={mode!r}: give 'local' or 'deployment'")
        for name, value in (
            ("tasks_per_worker", tasks_per_worker),
            ("processes_per_run", processes_per_run),
            ("launch_concurrency", 1 if launch_concurrency is None else launch_concurrency),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name}={value!r}: give a whole number, at least 1")
        for name, seconds in (
            ("start_timeout_seconds", start_timeout_seconds),
            ("time_limit_seconds", time_limit_seconds),
            ("poll_seconds", poll_seconds),
        ):
            _check_seconds(name, seconds)
        processes = processes_per_run if mode == "deployment" else 1
        most = _most_workers(workers, finish_within_seconds, max_workers, mode)
        if poll_seconds is None:
            poll_seconds = DEPLOYMENT_POLL_SECONDS if mode == "deployment" else 1.0
        return cls(
            mode=mode,  # type: ignore[arg-type]  # checked above
            processes=processes,
            most_workers=most,
            units=max(1, math.ceil(most / processes)),
            tasks_per_unit=tasks_per_worker * processes if mode == "deployment" else 1,
            poll_seconds=poll_seconds,
            deadline_seconds=finish_within_seconds if workers == "auto" else None,
            start_timeout_seconds=start_timeout_seconds,
            time_limit_seconds=time_limit_seconds,
            api_requests_per_minute=requests_per_minute(api_budget),
            launch_concurrency=launch_concurrency,
        )

    def sizer(self, total: int, mean_task_seconds: Optional[float]) -> Sizer:
        """The sizer of a batch of ``total`` tasks (``mean_task_seconds``: its earlier runs')."""
        if self.deadline_seconds is not None:
            return DeadlineSizer(
                total, self.deadline_seconds, self.units, self.processes, mean_task_seconds
            )
        return FixedSizer(self.units, self.tasks_per_unit, START_SECONDS[self.mode], self.processes)

    def settings(self, report_seconds: float, idle_seconds: float) -> FanOut:
        """The controller's settings, for workers that report every ``report_seconds`` and
        leave after ``idle_seconds`` of nothing visible."""
        return FanOut(
            most=self.units,
            poll_seconds=self.poll_seconds,
            time_limit_seconds=self.time_limit_seconds,
            silent_seconds=max(SILENT_MIN_SECONDS, SILENT_REPORTS * report_seconds),
            end_grace_seconds=2 * idle_seconds + END_GRACE_SECONDS[self.mode],
            api_requests_per_minute=self.api_requests_per_minute,
        )


def _check_seconds(name: str, seconds: Optional[float]) -> None:
    if seconds is None:
        return
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ParameterError(f"{name}={seconds!r}: give a number of seconds")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ParameterError(
            f"{name}={seconds!r}: give a positive, finite number of seconds, or leave it out"
        )


def _most_workers(
    workers: Union[int, str], finish_within: Optional[float], max_workers: Optional[int], mode: str
) -> int:
    """The most worker processes the batch may have at once."""
    if workers == "auto":
        if finish_within is None:
            raise ParameterError(
                "workers='auto' sizes the fleet to a deadline: give finish_within_seconds, e.g. "
                "3600 to finish within an hour"
            )
        _check_seconds("finish_within_seconds", finish_within)
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ParameterError(f"max_workers={max_workers!r}: give at least 1")
        default = (os.cpu_count() or 2) if mode == "local" else AUTO_MOST_DEPLOYMENT_WORKERS
        return max_workers or default
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ParameterError(
            f"workers={workers!r}: give a number of workers (at least 1), or 'auto' with "
            "finish_within_seconds"
        )
    if finish_within is not None:
        raise ParameterError(
            f"finish_within_seconds={finish_within!r} sizes the fleet only with workers='auto'; "
            f"with workers={workers} it would be ignored: give workers='auto' (and max_workers), "
            "or time_limit_seconds to stop the batch after that long"
        )
    if max_workers is not None:
        raise ParameterError(
            f"max_workers={max_workers!r} bounds workers='auto'; with workers={workers} the "
            "fleet has that many: leave max_workers out"
        )
    return workers
