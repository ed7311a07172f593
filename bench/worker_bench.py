"""Scenarios 3b, 4 and 5: the worker's own cost against a hand-written lease/ack loop, its memory
over a long run, and how it scales from one process to two on a CPU-bound task."""

from __future__ import annotations

import json
import tempfile
import threading
import time

from bench.common import median_of, rss_mib
from bench.queue_bench import NOOP, tqflow_drain


def _filled_queue(folder: str, n: int, fn: str = NOOP, kwargs: dict | None = None):
    from blocks import LocalTaskQueue
    from tqflow.engine.batch_messages import task_messages

    queue = LocalTaskQueue(
        path=f"{folder}/q.sqlite", queue_name="bench", wait_seconds=0, allowed_modules=["bench"]
    )
    queue.ensure()
    queue.send(m.encode() for m in task_messages(fn, range(n), "b", kwargs))
    return queue


def worker_seconds(n: int) -> float:
    from blocks import CloudFilesStorage
    from tqflow.engine.options import WorkerOptions
    from tqflow.engine.worker import Worker

    with tempfile.TemporaryDirectory() as folder:
        queue = _filled_queue(folder, n)
        storage = CloudFilesStorage(cloudpath=f"file://{folder}/out")
        started = time.perf_counter()
        stats = Worker(queue, storage, WorkerOptions(idle_seconds=0)).run()
        seconds = time.perf_counter() - started
        assert stats.succeeded == n
        return seconds


def raw_loop_seconds(n: int) -> float:
    """The least a worker must do: lease 10, call the function, store each result, ack."""
    from bench.tasks import noop
    from blocks import CloudFilesStorage

    with tempfile.TemporaryDirectory() as folder:
        queue = _filled_queue(folder, n)
        storage = CloudFilesStorage(cloudpath=f"file://{folder}/out")
        started, done = time.perf_counter(), 0
        while leases := queue.receive(max_messages=10):
            for lease in leases:
                message = json.loads(lease.body)
                storage.put_json(
                    f"b/outputs/{message['key']}.json", {"result": noop(**message["kwargs"])}
                )
            queue.ack(leases)
            done += len(leases)
        assert done == n
        return time.perf_counter() - started


def worker_memory(n: int) -> dict[str, float]:
    """RSS of a worker over ``n`` no-op tasks: after the first 1,000 (warm), at the end, peak."""
    from blocks import CloudFilesStorage
    from tqflow.engine.options import WorkerOptions
    from tqflow.engine.worker import Worker

    with tempfile.TemporaryDirectory() as folder:
        queue = _filled_queue(folder, n)
        worker = Worker(
            queue,
            CloudFilesStorage(cloudpath=f"file://{folder}/out"),
            WorkerOptions(idle_seconds=0),
        )
        samples: list[tuple[int, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((worker.stats.processed, rss_mib()))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        worker.run()
        done.set()
        sampler.join()
        end = rss_mib()
        warm = next(rss for processed, rss in samples if processed >= 1_000)
        return {"start": warm, "end": end, "peak": max(rss for _, rss in samples + [(n, end)])}


def _spin_slice(items: list[int], iterations: int) -> float:
    from bench.tasks import spin

    started = time.perf_counter()
    for x in items:
        spin(x, iterations)
    return time.perf_counter() - started


def plain_processes_seconds(n: int, processes: int, iterations: int) -> float:
    """The machine's own limit: the same CPU-bound items split evenly over plain processes,
    no queue at all (each process's loop time, the slower one counted)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        slices = [list(range(n))[i::processes] for i in range(processes)]
        return max(pool.starmap(_spin_slice, [(s, iterations) for s in slices]))


def run(runs: int = 3, n: int = 20_000, n_memory: int = 20_000, n_cpu: int = 120) -> list[dict]:
    worker = median_of(runs, lambda: worker_seconds(n))
    raw = median_of(runs, lambda: raw_loop_seconds(n))
    memory = worker_memory(n_memory)
    growth = memory["end"] / memory["start"] - 1
    cpu = {"iterations": 400_000}
    one = median_of(runs, lambda: tqflow_drain(n_cpu, workers=1, fn="bench.tasks:spin", kwargs=cpu))
    two = median_of(runs, lambda: tqflow_drain(n_cpu, workers=2, fn="bench.tasks:spin", kwargs=cpu))
    plain_one = median_of(runs, lambda: plain_processes_seconds(n_cpu, 1, cpu["iterations"]))
    plain_two = median_of(runs, lambda: plain_processes_seconds(n_cpu, 2, cpu["iterations"]))
    return [
        {
            "measure": "tqflow worker (1 process): no-op tasks",
            "value": round(n / worker),
            "unit": "tasks/s",
        },
        {"measure": "raw lease/ack loop: no-op tasks", "value": round(n / raw), "unit": "tasks/s"},
        {
            "measure": "worker time vs raw loop",
            "value": round(worker / raw, 2),
            "unit": "x",
            "target": "<= 1.3x",
            "met": worker / raw <= 1.3,
        },
        {
            "measure": f"worker RSS over {n_memory:,} tasks (warm / end / peak)",
            "value": f"{memory['start']:.0f} / {memory['end']:.0f} / {memory['peak']:.0f}",
            "unit": "MiB",
        },
        {
            "measure": "worker RSS growth",
            "value": round(100 * growth, 1),
            "unit": "%",
            "target": "< 10%",
            "met": growth < 0.10,
        },
        {
            "measure": "2 workers vs 1 on a CPU-bound task",
            "value": round(one / two, 2),
            "unit": "x",
            "target": ">= 1.7x",
            "met": one / two >= 1.7,
        },
        {
            "measure": "2 plain processes vs 1, same task, no queue (the machine's limit)",
            "value": round(plain_one / plain_two, 2),
            "unit": "x",
        },
        {
            "measure": "tqflow's scaling as a share of the machine's",
            "value": round((one / two) / (plain_one / plain_two), 2),
            "unit": "x",
        },
    ]
