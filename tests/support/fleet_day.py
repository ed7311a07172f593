"""A day of a batch on a simulated cluster, driven by tqflow's real controller: the pipeline's
own plan (`FanOutPlan`), `BatchController`, `DeploymentFleet`, sizers, liveness, drain board
and API budget, against `tests.support.sim_cluster` and `tests.support.sim_prefect`. The suite
runs it small (tests/test_fleet_day.py), bench/fleet_day.py at a thousand pods.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from tests.support.sim_cluster import Evicted, Scenario, World
from tests.support.sim_prefect import SimPrefectClient
from tqflow.engine.drain import DrainBoard
from tqflow.fleet.controller import BatchController, BatchOutcome, PipelineStart
from tqflow.fleet.deployment import DeploymentFleet, batch_tag
from tqflow.fleet.plan import FanOutPlan
from tqflow.fleet.progress import Progress

BATCH = "sim"
#: The controllers' log (outside tqflow's own loggers, whose handlers a worker may set).
LOGGER = "fleet_day"


class CountSizer:
    """The rule before the controller, kept to measure against: units for the visible tasks,
    ``ceil(visible / tasks_per_unit)`` up to the fleet's size, whatever they cost in time."""

    shrinks = False
    deadline_seconds: Optional[float] = None

    def __init__(self, most: int, tasks_per_unit: int) -> None:
        self.most, self.tasks_per_unit = most, tasks_per_unit
        self.history: list[tuple[float, int]] = []

    def wanted(self, progress: Progress, working: int, active: int) -> int:
        return min(self.most, math.ceil(progress.visible / self.tasks_per_unit))

    def projected_finish(self, progress: Progress, working: int) -> Optional[float]:
        return None


@dataclass
class Day:
    """What happened: the controllers' outcomes and the world's own figures."""

    world: World
    outcomes: list[BatchOutcome]
    #: Units each controller launched (the second is the restarted pipeline's).
    launched: list[int]
    ideal_seconds: float

    @property
    def finished_seconds(self) -> Optional[float]:
        return self.world.finished_at

    @property
    def slowdown(self) -> float:
        return (self.world.finished_at or math.inf) / self.ideal_seconds

    def figures(self) -> dict[str, Any]:
        w = self.world
        return {
            "ended": [o.ended.value for o in self.outcomes],
            "finished_h": round((w.finished_at or math.nan) / 3600, 2),
            "ideal_h": round(self.ideal_seconds / 3600, 2),
            "slowdown": round(self.slowdown, 3),
            "tasks_done": w.tasks_done(),
            "tasks_done_twice": sum(1 for n in w.queue.done if n > 1),
            "launched": self.launched,
            "adopted": [o.adopted for o in self.outcomes],
            "lost": self.outcomes[-1].lost,
            "cancelled_while_working": w.cancelled_working(),
            "peak_active_runs": w.peak_active,
            "least_running_runs": w.min_running_after_start,
            "peak_api_per_minute": w.peak_per_minute(),
            "api_refused": w.refused,
        }


def run_day(
    scenario: Scenario,
    *,
    workers: Union[int, str],
    finish_within_seconds: Optional[float] = None,
    max_workers: Optional[int] = None,
    tasks_per_worker: int = 1_000,
    api_budget: Union[int, str, None] = None,
    count_rule: bool = False,
    restart_after_seconds: float = 120.0,
    rerun: bool = False,
    log: Optional[logging.Logger] = None,
    on_progress: Optional[Callable[[Progress, Any], None]] = None,
) -> Day:
    """One batch through the world; an eviction restarts the pipeline after
    ``restart_after_seconds`` as a retry of the same run (or, with ``rerun``, a new run)."""
    world = World(scenario, BATCH)
    log = log or logging.getLogger(LOGGER)
    plan = FanOutPlan.of(
        workers=workers,
        finish_within_seconds=finish_within_seconds,
        max_workers=max_workers,
        mode="deployment",
        tasks_per_worker=tasks_per_worker,
        processes_per_run=scenario.processes,
        start_timeout_seconds=900.0,
        time_limit_seconds=None,
        poll_seconds=None,
        api_budget=api_budget,
    )

    def controller(run_key: str) -> tuple[BatchController, DeploymentFleet]:
        fleet = DeploymentFleet(
            "worker/sim",
            {"queue": "sqs-task-queue/sim", "storage": "cloud-files-storage/sim"},
            run_key,
            batch_tag=batch_tag(world.queue.queue_name, BATCH),
            processes=scenario.processes,
            start_timeout_seconds=plan.start_timeout_seconds,
            drain_board=DrainBoard(world.storage, BATCH),
            clock=world.clock,
            client=lambda: SimPrefectClient(world),
        )
        start = PipelineStart.of(world.storage, BATCH, run_key, 0, world.clock.time())
        sizer: Any = (
            CountSizer(plan.units, plan.tasks_per_unit)
            if count_rule
            else plan.sizer(scenario.tasks, None)
        )
        settings = plan.settings(scenario.report_seconds, scenario.idle_seconds)
        control = BatchController(
            world.queue,
            fleet,
            sizer,
            settings,
            batch=BATCH,
            total=scenario.tasks,
            start=start,
            reports=world.storage,
            log=log,
            on_progress=on_progress,
            clock=world.clock,
        )
        return control, fleet

    outcomes, launched = [], []
    first, fleet = controller("pipeline-1")
    try:
        outcomes.append(first.run())
        launched.append(fleet.launched)
    except Evicted:
        launched.append(fleet.launched)
        world.advance(restart_after_seconds)
        second, fleet = controller("pipeline-2" if rerun else "pipeline-1")
        outcomes.append(second.run())
        launched.append(fleet.launched)
    units = plan.units if finish_within_seconds is None else math.inf
    work = sum(world.queue.durations)
    ideal = (
        work / (units * scenario.processes)
        if units != math.inf
        else float(finish_within_seconds or 0)
    )
    return Day(world, outcomes, launched, ideal)
