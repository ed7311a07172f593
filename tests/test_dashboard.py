"""The batch dashboard's text, from the controller's progress."""

from __future__ import annotations

from tqflow.fleet.dashboard import Snapshot, markdown
from tqflow.fleet.progress import Progress


def progress(**fields) -> Progress:
    base = dict(
        total=1_000,
        done=400,
        pending=600,
        visible=500,
        in_flight=100,
        dead_lettered=0,
        workers_running=20,
        elapsed_seconds=3_600.0,
        tasks_per_second=0.11,
        eta_seconds=5_400.0,
    )
    return Progress(**{**base, **fields})


def test_the_dashboard_says_how_many_workers_wait_for_capacity_and_why():
    text = markdown(
        Snapshot(
            batch="b",
            progress=progress(
                workers_starting=5,
                workers_waiting=5,
                waiting_reason="Unschedulable.InsufficientResources",
            ),
        )
    )
    assert "## Workers: 20 running, 5 starting, 0 lost" in text
    assert "20 of 25 scheduled: 5 have waited past the start timeout " in text
    assert "(Unschedulable.InsufficientResources)" in text


def test_the_dashboard_says_when_its_figures_are_the_last_known_ones():
    assert "last known figures" not in markdown(Snapshot(batch="b", progress=progress()))
    stale = markdown(Snapshot(batch="b", progress=progress(stale=True)))
    assert "not answering: last known figures" in stale
