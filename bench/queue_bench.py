"""Scenario 1: the local queue against python-task-queue's FileQueue (``fq://``) and against a
raw SQLite loop: inserting tasks, and draining them with two worker processes (no-op task).

The FileQueue drain runs the core of ``TaskQueue.poll`` (lease, execute, delete) without its
backoff sleeps, which only favours it. Drain times are each worker's own loop time (the slower
of the two), so process start-up (Python, Prefect, task-queue imports) is left out on both sides.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from functools import partial

from bench.common import child_env, median_of, timed

NOOP = "bench.tasks:noop"


def tqflow_insert(n: int) -> float:
    from blocks import LocalTaskQueue
    from tqflow.engine.batch_messages import task_messages

    with tempfile.TemporaryDirectory() as folder:
        queue = LocalTaskQueue(
            path=f"{folder}/q.sqlite", queue_name="bench", allowed_modules=["bench"]
        )
        queue.ensure()
        return timed(lambda: queue.send(m.encode() for m in task_messages(NOOP, range(n), "b")))


def filequeue_insert(n: int) -> float:
    from taskqueue import TaskQueue

    from bench.tasks import noop_tq

    with tempfile.TemporaryDirectory() as folder:
        queue = TaskQueue(f"fq://{folder}/q", progress=False)
        return timed(lambda: queue.insert([partial(noop_tq, i) for i in range(n)], parallel=1))


def raw_sqlite_insert(n: int) -> float:
    """The limit: one transaction, one executemany, bodies as compact as tqflow's."""
    with tempfile.TemporaryDirectory() as folder:
        db = sqlite3.connect(f"{folder}/raw.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(
            "CREATE TABLE m (id INTEGER PRIMARY KEY, body TEXT, visible_at REAL, receives INTEGER)"
        )

        def insert() -> None:
            rows = (
                (json.dumps({"fn": NOOP, "kwargs": {"x": i}, "key": str(i), "batch": "b"}), 0.0, 0)
                for i in range(n)
            )
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO m (body, visible_at, receives) VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")

        seconds = timed(insert)
        db.close()
        return seconds


def tqflow_drain(n: int, workers: int = 2, fn: str = NOOP, kwargs: dict | None = None) -> float:
    """Seconds until ``workers`` worker processes have run ``n`` tasks (their loop time)."""
    from blocks import CloudFilesStorage, LocalTaskQueue
    from tqflow.engine import process as worker_process
    from tqflow.engine.batch_messages import task_messages

    with tempfile.TemporaryDirectory() as folder:
        queue = LocalTaskQueue(
            path=f"{folder}/q.sqlite", queue_name="bench", allowed_modules=["bench"]
        )
        queue.ensure()
        queue.send(m.encode() for m in task_messages(fn, range(n), "b", kwargs))
        storage = CloudFilesStorage(cloudpath=f"file://{folder}/out")
        processes = [
            worker_process.spawn(queue, storage, {"idle_seconds": 0}, env=child_env())
            for _ in range(workers)
        ]
        stats = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in processes]
        assert sum(s["succeeded"] for s in stats) == n, stats
        return max(s["elapsed_seconds"] for s in stats)


def filequeue_drain(n: int, workers: int = 2) -> float:
    from taskqueue import TaskQueue

    from bench.tasks import noop_tq

    with tempfile.TemporaryDirectory() as folder:
        path = f"fq://{folder}/q"
        TaskQueue(path, progress=False).insert([partial(noop_tq, i) for i in range(n)], parallel=1)
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.queue_bench", "drain-fq", path],
                stdout=subprocess.PIPE,
                text=True,
                env=child_env(),
            )
            for _ in range(workers)
        ]
        results = [json.loads(p.communicate()[0]) for p in processes]
        assert sum(r["executed"] for r in results) == n, results
        return max(r["seconds"] for r in results)


def _drain_filequeue(path: str) -> None:
    from taskqueue import QueueEmptyError, TaskQueue

    import bench.tasks  # noqa: F401  (registers the queueable)

    queue = TaskQueue(path, progress=False)
    executed, started = 0, time.perf_counter()
    while True:
        try:
            task = queue.lease(seconds=600)
        except QueueEmptyError:
            break
        task.execute()
        queue.delete(task)
        executed += 1
    print(json.dumps({"executed": executed, "seconds": time.perf_counter() - started}))


def run(
    runs: int = 3, n: int = 100_000, n_filequeue: int = 20_000, n_drain: int = 20_000
) -> list[dict]:
    """Rates in tasks/s (medians of ``runs``). FileQueue gets fewer tasks: it writes one file
    per task, and 100,000 take it minutes; its rate does not depend on the count."""
    rates = {
        "tqflow local queue: insert": n / median_of(runs, lambda: tqflow_insert(n)),
        "raw SQLite: insert": n / median_of(runs, lambda: raw_sqlite_insert(n)),
        "task-queue FileQueue: insert": n_filequeue
        / median_of(runs, lambda: filequeue_insert(n_filequeue)),
        "tqflow local queue: drain, 2 workers": n_drain
        / median_of(runs, lambda: tqflow_drain(n_drain)),
        "task-queue FileQueue: drain, 2 workers": n_drain
        / median_of(runs, lambda: filequeue_drain(n_drain)),
    }
    return [
        {"measure": name, "value": round(rate), "unit": "tasks/s"} for name, rate in rates.items()
    ] + [
        _ratio(
            "local insert vs FileQueue",
            rates["tqflow local queue: insert"],
            rates["task-queue FileQueue: insert"],
            30,
        ),
        _ratio(
            "local drain vs FileQueue",
            rates["tqflow local queue: drain, 2 workers"],
            rates["task-queue FileQueue: drain, 2 workers"],
            10,
        ),
        _ratio(
            "local insert vs raw SQLite",
            rates["tqflow local queue: insert"],
            rates["raw SQLite: insert"],
            0.5,
        ),
    ]


def _ratio(name: str, ours: float, theirs: float, target: float) -> dict:
    ratio = ours / theirs
    return {
        "measure": name,
        "value": round(ratio, 2),
        "unit": "x",
        "target": f">= {target}x",
        "met": ratio >= target,
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["drain-fq"]:
        _drain_filequeue(sys.argv[2])
