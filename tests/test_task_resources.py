"""What each task used (`tqflow.engine.task_resources`), measured by real worker processes."""

from __future__ import annotations

import time

from tests.support.helpers import enqueue, run_worker
from tqflow.engine.failures import read_error_record
from tqflow.engine.layout import output_path
from tqflow.engine.reports import batch_tally, read_reports
from tqflow.engine.task_resources import _Sampler

MiB = 2**20


def increment_mib(resources: dict) -> float:
    return (resources["peak_rss_bytes"] - resources["idle_rss_bytes"]) / MiB


def test_each_output_records_the_peak_memory_of_its_task(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:allocates", [1], mib=100)
    enqueue(queue, "tests.tasks:allocates", [2], mib=400)
    run_worker(queue, storage, prefetch=1)
    small = storage.get_json(output_path("b", "1"))["resources"]
    large = storage.get_json(output_path("b", "2"))["resources"]
    assert 85 <= increment_mib(small) <= 115, small
    assert 340 <= increment_mib(large) <= 460, large


def test_cpu_seconds_count_the_tasks_cpu_and_not_its_waiting(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:allocates", [1], mib=1, cpu_seconds=0.5)
    enqueue(queue, "tests.tasks:sleeps_on", [2], slow=[2], seconds=0.5)
    run_worker(queue, storage, prefetch=1)
    busy = storage.get_json(output_path("b", "1"))["resources"]
    idle = storage.get_json(output_path("b", "2"))["resources"]
    assert busy["cpu_seconds"] >= 0.45 and busy["wall_seconds"] >= busy["cpu_seconds"] * 0.9
    assert idle["wall_seconds"] >= 0.5 and idle["cpu_seconds"] < 0.2


def test_a_failed_attempt_records_what_it_used(queue_factory, storage):
    queue = queue_factory(max_receive_count=1)
    enqueue(queue, "tests.tasks:allocates_then_fails", [7], mib=200, cpu_seconds=0.4)
    run_worker(queue, storage)
    (attempt,) = read_error_record(storage, "b", "7")["attempts"]
    resources = attempt["resources"]
    assert 170 <= increment_mib(resources) <= 230, resources
    assert resources["cpu_seconds"] >= 0.35, resources
    assert resources["wall_seconds"] >= resources["cpu_seconds"] * 0.9, resources


def test_the_worker_report_gives_the_batch_peak_memory_percentiles(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:allocates", range(4), mib=50)
    enqueue(queue, "tests.tasks:allocates", [9], mib=300)
    run_worker(queue, storage, prefetch=1)
    tally = batch_tally(read_reports(storage, "b"))
    peak = storage.get_json(output_path("b", "9"))["resources"]["peak_rss_bytes"]
    assert tally.measured_tasks == 5
    assert tally.peak_rss_max == peak
    assert tally.peak_rss_percentile(0.999) == peak  # the largest task, not past its peak
    assert tally.peak_rss_percentile(0.5) < peak - 200 * MiB  # half of them are small


def test_the_sampling_fallback_sees_a_task_that_holds_memory():
    import psutil

    sampler = _Sampler(psutil.Process())
    before = sampler.rss()
    sampler.arm(before)
    block = bytearray(200 * MiB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.2)
    del block
    peak = sampler.disarm()
    assert 170 <= (peak - before) / MiB <= 230
