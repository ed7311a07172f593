"""A simulated day of a batch at a thousand workers: tqflow's real batch controller, deployment
fleet, sizers, liveness and API budget, against a stand-in Prefect API and GKE cluster on a
simulated clock (tests/support/sim_cluster.py, sim_prefect.py, fleet_day.py). Side by side in
one run where there is a before: the replacement rule by counts (units for the visible tasks,
the rule before the controller) against the controller's rule by time.

Scenarios (250 runs of 4 worker processes, 10^6 tasks of about a minute, polls every 10 s,
pods starting in 60-120 s, Prefect Cloud's Team plan of 2,500 requests a minute):

- **preemption**: 5% of the pods preempted an hour; finished against the ideal (no losses);
- **API outage**: the Prefect API out for 5 minutes at hour 5: working runs cancelled, tasks
  lost;
- **eviction**: the pipeline's pod evicted at hour 5, retried 2 minutes later (and a re-run
  as a new pipeline run): runs cancelled, runs launched by the second controller;
- **quota**: a project quota of 200 pods for a fleet of 250: the end, lost runs, churn;
- **deadline**: ``workers="auto"``, 55,000 tasks within an hour (about 230 runs fill it),
  from a cold start: the finish against the deadline, the peak against the filling size;
- **API budget**: the peak requests a minute, the pods' own calls counted, against the plan,
  with launches paced to it and not.

``--quick``: the same scenarios at 20,000 tasks on 25 runs (seconds each).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from tests.support.fleet_day import Day, run_day
from tests.support.sim_cluster import Scenario

FULL = Scenario(tasks=1_000_000, processes=4, report_seconds=100, api_limit=2_500)
QUICK = Scenario(tasks=20_000, processes=4, report_seconds=25, api_limit=2_500)


def _sizes(quick: bool) -> tuple[Scenario, int, int]:
    """The batch, its fleet's size in workers, and tasks per worker (the count rule's)."""
    if quick:
        return QUICK, 100, 200
    return FULL, 1_000, 1_000


def _row(measure: str, value: str, target: str = "", met: bool | None = None) -> dict:
    row: dict = {"measure": measure, "value": value, "unit": ""}
    if target:
        row.update(target=target, met=met)
    return row


def _hours(day: Day) -> str:
    return f"{(day.finished_seconds or math.nan) / 3600:,.1f} h"


def run(runs: int = 1, quick: bool = False) -> list[dict]:
    batch, workers, per_worker = _sizes(quick)
    runs_in_fleet = workers // batch.processes
    rows: list[dict] = []

    def day(scenario: Scenario = batch, **options) -> Day:
        options.setdefault("workers", workers)
        options.setdefault("tasks_per_worker", per_worker)
        options.setdefault("api_budget", "team")
        started = time.perf_counter()
        found = run_day(scenario, **options)
        print(f"  {time.perf_counter() - started:.0f} s: {found.figures()}", flush=True)
        return found

    preempting = replace(batch, preemptions_per_pod_hour=0.05)
    before = day(preempting, count_rule=True)
    now = day(preempting)
    rows += [
        _row(
            f"5%/pod-hour preemption, {runs_in_fleet} runs x 4: finished, count rule (before) / "
            f"time rule (tqflow); ideal {now.ideal_seconds / 3600:,.1f} h",
            f"{_hours(before)} / {_hours(now)}",
        ),
        _row(
            "  ... against the ideal: before / tqflow",
            f"{before.slowdown:.2f}x / {now.slowdown:.2f}x",
            "tqflow <= 1.15x",
            now.slowdown <= 1.15,
        ),
        _row(
            "  ... runs lost / replacements: before / tqflow",
            f"{before.outcomes[-1].lost} / {before.launched[0] - runs_in_fleet}; "
            f"{now.outcomes[-1].lost} / {now.launched[0] - runs_in_fleet}",
        ),
    ]
    outage_at = 5 * 3600.0 if not quick else 3600.0
    outage = day(replace(batch, api_outage=(outage_at, outage_at + 300)))
    rows.append(
        _row(
            "a 5-minute Prefect API outage: working runs cancelled, tasks lost",
            f"{outage.world.cancelled_working()}, {batch.tasks - outage.world.tasks_done()}",
            "0, 0",
            outage.world.cancelled_working() == 0 and outage.world.tasks_done() == batch.tasks,
        )
    )
    for rerun, how in ((False, "retried"), (True, "run again as a new run")):
        evicted = day(replace(batch, evict_at=outage_at), rerun=rerun)
        extra = evicted.launched[-1] if len(evicted.launched) == 2 else math.nan
        rows.append(
            _row(
                f"the pipeline evicted, {how} 2 min later: working runs cancelled, runs "
                "launched by the second pipeline, tasks run twice",
                f"{evicted.world.cancelled_working()}, {extra}, "
                f"{sum(1 for n in evicted.world.queue.done if n > 1)}",
                "0, 0, 0",
                evicted.world.cancelled_working() == 0 and extra == 0,
            )
        )
    quota = int(0.8 * runs_in_fleet)
    reasons: set[str] = set()
    capped = day(
        replace(batch, quota_pods=quota),
        on_progress=lambda progress, fleet: reasons.add(progress.waiting_reason),
    )
    [capped_end] = capped.outcomes
    rows.append(
        _row(
            f"a quota of {quota} pods for {runs_in_fleet} runs: how it ended, runs lost, "
            "runs launched; the reason the dashboard gave",
            f"{capped_end.ended.value}, {capped_end.lost}, {capped.launched[0]}; "
            f"{', '.join(sorted(r for r in reasons if r)) or 'none'}",
            f"drained, 0, {runs_in_fleet}",
            capped_end.ended.value == "drained"
            and capped_end.lost == 0
            and capped.launched[0] == runs_in_fleet,
        )
    )
    rows += _deadline(batch, quick, day)
    unpaced = day(batch, api_budget=None)
    rows.append(
        _row(
            "peak Prefect API requests a minute, the pods' own calls counted, on the Team "
            "plan (2,500): launches not paced / paced to the plan; calls refused",
            f"{unpaced.world.peak_per_minute():,} / {now.world.peak_per_minute():,}; "
            f"{unpaced.world.refused} / {now.world.refused}",
            "paced <= 2,500, none refused",
            now.world.peak_per_minute() <= 2_500 and now.world.refused == 0,
        )
    )
    return rows


def _deadline(batch: Scenario, quick: bool, day) -> list[dict]:
    fill_runs = 15 if quick else 230
    tasks = fill_runs * batch.processes * 60
    found = day(
        replace(batch, tasks=tasks),
        workers="auto",
        finish_within_seconds=3_600,
        max_workers=2 * fill_runs * batch.processes,
    )
    filling = sum(found.world.queue.durations) / batch.processes / 3_600
    finished = (found.finished_seconds or math.inf) / 3_600
    return [
        _row(
            f"workers='auto', {tasks:,} tasks within 1 h from a cold start: finished / the "
            "deadline",
            f"{finished:.2f}x",
            "0.85x-1.15x",
            0.85 <= finished <= 1.15,
        ),
        _row(
            f"  ... peak runs / the runs that fill the hour ({filling:.0f}); least running "
            "after the start",
            f"{found.world.peak_active / filling:.2f}x; {found.world.min_running_after_start}",
            "<= 1.3x; > 0",
            found.world.peak_active <= 1.3 * filling
            and (found.world.min_running_after_start or 0) > 0,
        ),
    ]


if __name__ == "__main__":  # pragma: no cover - a manual run
    import sys

    from bench.run import table

    print(table([{"scenario": "fleet-day", **r} for r in run(quick="--quick" in sys.argv)]))
