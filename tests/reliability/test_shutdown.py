"""Reliability: stopping a worker as Kubernetes and a user at a terminal do: SIGTERM while it
waits in SQS's 20 s long poll, and a second signal when a task ignores the first."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.helpers import child_env, enqueue, runs, wait_until
from tqflow.engine import process as worker_process


@pytest.fixture
def idle_worker(queue_factory, storage):
    """A ``python -m tqflow.engine.process`` waiting in a 20 s long poll on an empty queue."""
    queue = queue_factory(wait_seconds=20)
    process = worker_process.spawn(
        queue, storage, {"idle_seconds": 600}, stderr=subprocess.PIPE, env=child_env()
    )
    wait_until(lambda: "draining" in process.stderr.readline(), timeout=120, every=0)
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.mark.parametrize("backend", ["sqs"])  # the local queue's receive polls in short sleeps
def test_sigterm_during_a_long_poll_stops_the_worker_at_once(idle_worker, figure):
    time.sleep(0.5)  # let it reach the receive (a signal before it stops it anyway)
    sent = time.monotonic()
    idle_worker.send_signal(signal.SIGTERM)
    assert idle_worker.wait(timeout=60) == 0
    seconds = time.monotonic() - sent
    # The poll began less than a second before the signal: waited out, it would end ~19 s later.
    # (A quiet machine exits in ~0.3 s; the bound leaves room for a busy one.)
    assert seconds < 12
    assert json.loads(idle_worker.stdout.read())["stop_reason"] == "stopped"
    figure(
        "12. SIGTERM during a 20 s long poll",
        trials=1,
        items=0,
        lost=0,
        duplicated=0,
        dead_lettered=0,
        recovery_seconds=None,
        notes=f"worker process exited 0 {seconds:.2f} s after SIGTERM (a waited-out poll: ~19 s)",
    )


def test_a_second_signal_stops_a_worker_whose_task_ignores_the_first(
    queue_factory, storage, forked_workers, tmp_path, figure
):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:refuses_to_stop", [1], log_dir=str(tmp_path))
    worker = forked_workers.start(queue, storage, idle_seconds=60)
    wait_until(lambda: runs(tmp_path, 1), timeout=120)
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: runs(tmp_path, 1, "interrupted"), timeout=60)
    assert worker.poll() is None  # the task swallowed the interrupt
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 128 + signal.SIGTERM
    seconds = time.monotonic() - sent
    figure(
        "12. Second signal: a task that swallows the first",
        trials=1,
        items=1,
        lost=0,
        duplicated=0,
        dead_lettered=0,
        recovery_seconds=None,
        notes=f"exit {128 + signal.SIGTERM} {seconds:.2f} s after the second SIGTERM; the item "
        "returns to the queue when its lease ends",
    )
