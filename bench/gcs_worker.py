"""A worker on gs:// at a bucket's latency, before and after its outputs' existence was asked once
per receive: trivial tasks a second and GCS requests a task, side by side in one run.

fake-gcs-server behind the proxy (tests/support/http_proxy.py) that answers GCS's batch
endpoint as GCS does and delays every request by 0 or 30 ms; one worker in this process drains
N trivial tasks from a local queue into a new gs:// folder. "Before" is the same worker asking,
before each task, whether that task's output exists (`PerTaskCheck`, the check as it was): on
GCS one batch request per task, then the output's write, two round trips before each ack.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from typing import Any

TASKS, QUICK_TASKS = 400, 100
DELAYS = (0.0, 0.03)
BUCKET = "tqflow-bench-worker"


def _worker_class(kind: str) -> Any:
    from tqflow.engine.worker import Worker

    if kind == "after":
        return Worker

    class PerTaskCheck(Worker):
        """The worker before: no check with the receive; each task checks its own output."""

        def _outputs_done(self, leases: list) -> dict[str, bool]:
            return {}

    return PerTaskCheck


def drain(endpoint: str, proxy: Any, kind: str, n: int) -> dict[str, float]:
    import cloudfiles

    from blocks import CloudFilesStorage, LocalTaskQueue
    from tqflow.engine.options import WorkerOptions
    from tqflow.enqueue import enqueue_items

    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    # cloud-files pools its GCS clients per process: one made for an earlier proxy's port
    # would retry that closed port for minutes.
    cloudfiles.reset_connection_pools()
    storage = CloudFilesStorage(cloudpath=f"gs://{BUCKET}/{uuid.uuid4().hex[:8]}")
    with tempfile.TemporaryDirectory() as folder:
        queue = LocalTaskQueue(path=f"{folder}/q.sqlite", queue_name="bench", wait_seconds=0)
        enqueue_items(queue, storage, "bench.tasks:noop", range(n), "b", overwrite=True)
        proxy.reset()
        started = time.perf_counter()
        stats = _worker_class(kind)(queue, storage, WorkerOptions(idle_seconds=0)).run()
        seconds = time.perf_counter() - started
    assert stats.outcomes["succeeded"] == n, stats.as_dict()
    requests = sum(proxy.counts()["forwarded"].values())
    return {"tasks_per_second": n / seconds, "requests_per_task": requests / n}


def run(runs: int = 1, quick: bool = False) -> list[dict]:
    from tests.support.services import FakeGCS, http_proxy

    n = QUICK_TASKS if quick else TASKS
    found: dict[tuple[str, float], dict[str, float]] = {}
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        with FakeGCS(BUCKET) as gcs:
            for delay in DELAYS:
                with http_proxy(gcs.endpoint, delay_seconds=delay, gcs=gcs) as proxy:
                    for kind in ("before", "after"):
                        found[kind, delay] = drain(proxy.endpoint, proxy, kind, n)
                        print(f"{kind}, {delay * 1000:.0f} ms: {found[kind, delay]}", flush=True)
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
    rows = []
    for delay in DELAYS:
        before, after = found["before", delay], found["after", delay]
        ms = f"{delay * 1000:.0f} ms"
        rows += [
            {
                "measure": f"one worker, {n} trivial tasks on gs:// at {ms}: tasks/s before / "
                "after",
                "value": f"{before['tasks_per_second']:.1f} / {after['tasks_per_second']:.1f} "
                f"({after['tasks_per_second'] / before['tasks_per_second']:.2f}x)",
                "unit": "",
            },
            {
                "measure": f"  ... GCS requests a task at {ms}: before / after",
                "value": f"{before['requests_per_task']:.2f} / {after['requests_per_task']:.2f}",
                "unit": "",
            },
        ]
    return rows


if __name__ == "__main__":  # pragma: no cover - a manual run
    import sys

    from bench.run import table

    print(table([{"scenario": "gcs-worker", **r} for r in run(quick="--quick" in sys.argv)]))
