"""Scenario 2: the SQS backend against python-task-queue's SQS client, on one moto server.

Each side enqueues N no-op tasks and drains them with one in-process worker; every SQS API call
either side makes is counted (SQS bills per request, so requests per task is what a batch costs,
and it carries over to real SQS). moto slows as its queue grows, so throughput here is a floor
for both sides, not the cloud's speed.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
import uuid
from collections import Counter
from functools import partial
from typing import Iterator

from bench.common import moto_server
from tests.support.cloud import sqs_credentials


@contextlib.contextmanager
def counting_sqs_requests() -> Iterator[Counter]:
    """Count every SQS API call made in this process, by operation."""
    from botocore.client import BaseClient

    counted: Counter = Counter()
    original = BaseClient._make_api_call

    def counting(self, operation_name, api_params):
        if self.meta.service_model.service_name == "sqs":
            counted[operation_name] += 1
        return original(self, operation_name, api_params)

    BaseClient._make_api_call = counting
    try:
        yield counted
    finally:
        BaseClient._make_api_call = original


def tqflow_sqs(endpoint: str, n: int) -> dict:
    from blocks import CloudFilesStorage
    from blocks.queues.sqs import SQSTaskQueue
    from tqflow.engine.options import WorkerOptions
    from tqflow.engine.worker import Worker
    from tqflow.enqueue import enqueue_items

    queue = SQSTaskQueue(
        queue_name=f"bench-{uuid.uuid4().hex[:8]}",
        aws_credentials=sqs_credentials(endpoint),
        wait_seconds=1,
    )
    queue.ensure()
    with tempfile.TemporaryDirectory() as folder, counting_sqs_requests() as counted:
        storage = CloudFilesStorage(cloudpath=f"file://{folder}")
        started = time.perf_counter()
        enqueue_items(queue, storage, "bench.tasks:noop", range(n), "b")
        enqueued = time.perf_counter()
        stats = Worker(queue, storage, WorkerOptions(idle_seconds=0)).run()
        drained = time.perf_counter()
    assert stats.succeeded == n, stats.as_dict()
    return {
        "requests": sum(counted.values()),
        "by_operation": dict(counted),
        "enqueue_seconds": enqueued - started,
        "drain_seconds": drained - enqueued,
    }


def taskqueue_sqs(endpoint: str, n: int) -> dict:
    import os

    from taskqueue import TaskQueue

    from bench.tasks import noop_tq

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    name = f"bench-tq-{uuid.uuid4().hex[:8]}"
    sqs_credentials(endpoint).get_client("sqs").create_queue(QueueName=name)
    queue = TaskQueue(
        f"sqs://{name}", region_name="us-east-1", endpoint_url=endpoint, progress=False
    )
    with counting_sqs_requests() as counted:
        started = time.perf_counter()
        queue.insert([partial(noop_tq, i) for i in range(n)], parallel=1)
        enqueued = time.perf_counter()
        queue.poll(
            lease_seconds=60,
            stop_fn=lambda executed: executed >= n,
            min_backoff_window=0.1,
            max_backoff_window=0.5,
        )
        drained = time.perf_counter()
    return {
        "requests": sum(counted.values()),
        "by_operation": dict(counted),
        "enqueue_seconds": enqueued - started,
        "drain_seconds": drained - enqueued,
    }


def run(runs: int = 3, n: int = 500) -> list[dict]:
    import statistics

    ours, theirs = [], []
    with moto_server() as endpoint:
        for _ in range(runs):
            ours.append(tqflow_sqs(endpoint, n))
            theirs.append(taskqueue_sqs(endpoint, n))

    def median(results: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in results)

    per_task = median(ours, "requests") / n
    per_task_tq = median(theirs, "requests") / n
    rate = n / (median(ours, "enqueue_seconds") + median(ours, "drain_seconds"))
    rate_tq = n / (median(theirs, "enqueue_seconds") + median(theirs, "drain_seconds"))
    return [
        {
            "measure": f"tqflow SQS: requests per task ({n:,} tasks)",
            "value": round(per_task, 3),
            "unit": "req/task",
            "detail": ours[-1]["by_operation"],
        },
        {
            "measure": f"task-queue SQS: requests per task ({n:,} tasks)",
            "value": round(per_task_tq, 3),
            "unit": "req/task",
            "detail": theirs[-1]["by_operation"],
        },
        {
            "measure": "SQS requests per task vs task-queue",
            "value": round(per_task / per_task_tq, 3),
            "unit": "x",
            "target": "<= 0.25x",
            "met": per_task / per_task_tq <= 0.25,
        },
        {"measure": "tqflow SQS: enqueue + drain on moto", "value": round(rate), "unit": "tasks/s"},
        {
            "measure": "task-queue SQS: enqueue + drain on moto",
            "value": round(rate_tq),
            "unit": "tasks/s",
        },
        {
            "measure": "SQS throughput vs task-queue",
            "value": round(rate / rate_tq, 2),
            "unit": "x",
            "target": ">= 1x",
            "met": rate >= rate_tq,
        },
    ]
