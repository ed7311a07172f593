"""The batch controller through a simulated day on a GKE-like cluster, run small: tqflow's real
controller, deployment fleet, sizers, liveness and API budget against a stand-in Prefect API and
cluster (tests/support/sim_cluster.py, sim_prefect.py) on a simulated clock. The same scenarios
at a thousand pods are bench/fleet_day.py.

The batch, unless a test says otherwise: 20,000 tasks of about a minute on 25 runs of 4 worker
processes, polled every 10 s; ideally 3.5 hours.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from tests.support.fleet_day import LOGGER, run_day
from tests.support.sim_cluster import Scenario
from tqflow.fleet.controller import Ended
from tqflow.fleet.endings import Cause

BATCH = Scenario(tasks=20_000, processes=4, report_seconds=25)
WORKERS = 100  # 25 runs of 4
#: One run per 200 visible tasks before anything is measured: 25 at the start.
TASKS_PER_WORKER = 200


def day(scenario: Scenario = BATCH, **options):
    options.setdefault("workers", WORKERS)
    options.setdefault("tasks_per_worker", TASKS_PER_WORKER)
    return run_day(scenario, **options)


def test_an_api_outage_of_five_minutes_cancels_no_working_run_and_loses_no_task(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        found = day(replace(BATCH, api_outage=(3_600.0, 3_900.0)))
    [outcome] = found.outcomes
    assert outcome.ended is Ended.DRAINED
    assert outcome.unknown_looks > 0  # the outage was met, as "unknown"
    assert "answers again after" in caplog.text
    assert found.world.cancelled_working() == 0
    assert found.world.tasks_done() == BATCH.tasks
    assert found.launched == [25]  # nothing launched twice for what it could not see


def test_an_evicted_pipeline_leaves_its_runs_at_work_and_its_retry_adopts_them():
    found = day(replace(BATCH, evict_at=3_600.0))
    [retried] = found.outcomes  # the first controller ended with the eviction
    assert found.world.cancelled_working() == 0
    assert (found.launched, retried.adopted) == ([25, 0], 25)
    assert retried.ended is Ended.DRAINED
    assert found.world.tasks_done() == BATCH.tasks
    assert sum(1 for n in found.world.queue.done if n > 1) == 0


def test_a_new_pipeline_run_of_the_batch_adopts_its_fleet_instead_of_launching_a_second():
    found = day(replace(BATCH, evict_at=3_600.0), rerun=True)
    assert found.launched == [25, 0]
    assert found.outcomes[-1].adopted == 25
    assert found.world.peak_active == 25


def test_preempted_runs_are_replaced_while_their_work_is_worth_a_pod_start():
    """10% of the pods preempted an hour: each lost run is replaced to the last minutes, and
    the batch ends near its ideal time (the count rule before replaced almost none)."""
    found = day(replace(BATCH, preemptions_per_pod_hour=0.10))
    assert found.world.preempted >= 5
    assert found.launched[0] >= 25 + found.world.preempted - 3
    assert found.slowdown <= 1.15, found.figures()
    before = day(replace(BATCH, preemptions_per_pod_hour=0.10), count_rule=True)
    assert before.slowdown > found.slowdown  # the measurement can tell the two rules apart


def test_a_fleet_sized_to_a_deadline_meets_it_and_never_drops_to_zero():
    """3,600 tasks of about a minute within an hour, from a cold start (no earlier run says how
    long a task takes): ~15.6 runs of 4 would fill the hour exactly."""
    found = day(replace(BATCH, tasks=3_600), workers="auto", finish_within_seconds=3_600)
    finished = found.finished_seconds
    assert finished is not None and 0.85 * 3_600 <= finished <= 1.15 * 3_600, found.figures()
    filling = sum(found.world.queue.durations) / BATCH.processes / 3_600
    assert found.world.peak_active <= 1.3 * filling, found.figures()
    assert found.world.min_running_after_start, found.figures()
    assert found.world.cancelled_working() == 0  # shrinking drains, it does not cancel
    assert found.world.forced == 0  # no state forced over the server's rules


def test_a_run_left_running_after_its_pod_vanished_is_declared_silent_and_replaced():
    found = day(replace(BATCH, preemptions_per_pod_hour=0.10, vanish_share=1.0))
    [outcome] = found.outcomes
    assert found.world.vanished >= 3
    assert outcome.ended is Ended.DRAINED  # though those runs never end
    silent = sum(n for e, n in outcome.endings.items() if e.cause is Cause.SILENT)
    assert silent == found.world.vanished
    assert found.world.tasks_done() == BATCH.tasks
    assert found.slowdown <= 1.2, found.figures()


def test_a_quota_below_the_fleet_is_waited_for_not_churned(caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = day(replace(BATCH, quota_pods=15))
    [outcome] = found.outcomes
    assert outcome.ended is Ended.DRAINED and outcome.lost == 0
    assert found.launched == [25]  # no waiting run was replaced by an identical one
    assert "Unschedulable.InsufficientResources" in caplog.text


def test_an_image_that_cannot_be_pulled_stops_the_batch_saying_so():
    found = day(replace(BATCH, image_pull_error=True))
    [outcome] = found.outcomes
    assert (outcome.ended, outcome.reason) == (Ended.CANNOT_START, "ImagePullError")
    assert found.world.now < 3_600  # within the start timeout's look, not a day of waiting
    assert found.launched == [25]  # none replaced by another that would fail the same way


@pytest.mark.parametrize("budget", [None, "hobby"])
def test_a_launch_paced_to_a_plan_stays_within_its_requests_a_minute(budget):
    """60 runs on Prefect Cloud's Hobby plan (625 requests a minute): launched at once, their
    pods' own calls pass the limit and the API refuses calls; paced, none is refused."""
    scenario = replace(BATCH, tasks=24_000, api_limit=625)
    found = day(scenario, workers=240, tasks_per_worker=100, api_budget=budget)
    if budget is None:
        assert found.world.refused > 0
    else:
        assert found.world.refused == 0 and found.world.peak_per_minute() <= 625
        assert found.world.tasks_done() == scenario.tasks


def test_a_node_upgrade_that_ends_most_runs_at_once_counts_each_lost_run_once():
    """250 runs preempted in one minute: more ended runs than a page holds, pages that shift
    between requests, and a server clock two hours behind the pipeline's."""
    scenario = replace(BATCH, upgrade_at=600.0, shifting_pages=True, server_skew_seconds=-7_200)
    found = day(scenario, workers=1_000, tasks_per_worker=20)  # 250 runs
    [outcome] = found.outcomes
    assert found.world.preempted >= 200
    assert outcome.lost == found.world.preempted
    assert outcome.ended is Ended.DRAINED and found.world.tasks_done() == BATCH.tasks
