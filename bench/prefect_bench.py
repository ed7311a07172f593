"""Scenario 3: the embedded pipeline against a Prefect flow that ``task.map``s the same no-op
items, on one real Prefect server (``prefect server start``).

Fixed costs (flow start, worker processes) hide the per-item cost in one batch, so the per-item
cost is the slope between two batch sizes. ``task.map`` grows faster than linearly here (one
task run, several API calls and events per item), so its sizes are smaller.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, task

from bench.common import median_of, prefect_server, timed


@task
def noop_task(x: int) -> int:
    return x


@flow(name="bench-task-map")
def mapped(n: int) -> int:
    futures = noop_task.map(range(n))
    return len([future.result() for future in futures])


def task_map_seconds(n: int, recorded: list[int]) -> float:
    from prefect.client.orchestration import get_client

    state = None

    def run() -> None:
        nonlocal state
        state = mapped(n, return_state=True)

    seconds = timed(run)
    assert state.result() == n
    with get_client(sync_client=True) as client:
        # The REST API counts task runs; the Python client has no method of its own for it.
        flow_run = {"id": {"any_": [str(state.state_details.flow_run_id)]}}
        recorded.append(
            client.request("POST", "/task_runs/count", json={"flow_runs": flow_run}).json()
        )
    return seconds


def pipeline_seconds(n: int) -> float:
    from blocks import CloudFilesStorage, LocalTaskQueue
    from flows.pipeline import pipeline

    with tempfile.TemporaryDirectory() as folder:
        summary = {}

        def run() -> None:
            summary.update(
                pipeline(
                    fn="bench.tasks:noop",
                    queue=LocalTaskQueue(
                        path=f"{folder}/q.sqlite", queue_name="bench", wait_seconds=0
                    ),
                    storage=CloudFilesStorage(cloudpath=f"file://{folder}"),
                    batch="bench",
                    items=list(range(n)),
                    workers=2,
                    worker_options={"idle_seconds": 0.5},
                    poll_seconds=0.5,
                    analyze=False,
                )
            )

        seconds = timed(run)
        assert summary["done"] == n, summary
        return seconds


def run(
    runs: int = 3,
    small: int = 2_000,
    large: int = 20_000,
    map_small: int = 1_000,
    map_large: int = 2_000,
) -> list[dict]:
    with tempfile.TemporaryDirectory() as home, prefect_server(Path(home)):
        tq_small = median_of(runs, lambda: pipeline_seconds(small))
        tq_large = median_of(runs, lambda: pipeline_seconds(large))
        recorded_small: list[int] = []
        recorded_large: list[int] = []
        map_small_s = median_of(runs, lambda: task_map_seconds(map_small, recorded_small))
        map_large_s = median_of(runs, lambda: task_map_seconds(map_large, recorded_large))
    tq_slope = (tq_large - tq_small) / (large - small)
    map_slope = (map_large_s - map_small_s) / (map_large - map_small)
    return [
        {
            "measure": f"tqflow pipeline, {small:,} / {large:,} no-op items",
            "value": f"{tq_small:.1f} / {tq_large:.1f}",
            "unit": "s",
        },
        {
            "measure": f"Prefect task.map flow, {map_small:,} / {map_large:,} items",
            "value": f"{map_small_s:.1f} / {map_large_s:.1f}",
            "unit": "s",
        },
        {
            "measure": "task runs the server recorded (task.map)",
            "value": f"{min(recorded_small)}-{max(recorded_small)} of {map_small:,}; {min(recorded_large)}-{max(recorded_large)} of {map_large:,}",
            "unit": "",
        },
        {"measure": "per-item cost: tqflow", "value": round(tq_slope * 1e3, 3), "unit": "ms/item"},
        {
            "measure": "per-item cost: task.map",
            "value": round(map_slope * 1e3, 2),
            "unit": "ms/item",
        },
        {
            "measure": "per-item cost, task.map vs tqflow",
            "value": round(map_slope / tq_slope),
            "unit": "x",
            "target": ">= 20x",
            "met": map_slope / tq_slope >= 20,
        },
        {
            "measure": f"wall time at {small:,} items, task.map vs tqflow",
            "value": round(
                _at(small, map_small, map_large, map_small_s, map_large_s) / tq_small, 1
            ),
            "unit": "x",
        },
        # task.map at 10,000 items would take many minutes (it grows faster than linearly), so
        # its time there is extrapolated along its measured slope: a lower bound.
        {
            "measure": "wall time at 10,000 items, task.map (lower bound) vs tqflow",
            "value": round(
                _at(10_000, map_small, map_large, map_small_s, map_large_s)
                / _at(10_000, small, large, tq_small, tq_large),
                1,
            ),
            "unit": "x",
            "target": ">= 10x",
            "met": _at(10_000, map_small, map_large, map_small_s, map_large_s)
            / _at(10_000, small, large, tq_small, tq_large)
            >= 10,
        },
    ]


def _at(n: int, n1: int, n2: int, t1: float, t2: float) -> float:
    """The time at ``n`` items: measured if ``n`` is one of the two sizes, else on the line
    through both."""
    return {n1: t1, n2: t2}.get(n, t1 + (t2 - t1) * (n - n1) / (n2 - n1))
