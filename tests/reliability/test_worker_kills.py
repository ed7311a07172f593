"""Reliability: workers killed without warning (SIGKILL: OOM killer, node failure) and
preempted with notice (SIGTERM: spot preemption, pod eviction)."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.reliability.conftest import scaled
from tests.support.helpers import enqueue, runs, wait_until
from tests.tasks import executions
from tqflow.engine.layout import output_path, outputs_prefix

KILLS = 20
#: Enough work that every victim is killed mid-batch: each runs at most ~0.3 s of 20 ms tasks
#: (fewer on moto, where a receive takes tens of milliseconds).
ITEMS = {"local": scaled(400, 2_000), "sqs": scaled(150, 1_000)}


@pytest.mark.timeout(scaled(300, 900))
def test_twenty_sigkills_at_random_points_leave_every_output_once_and_none_truncated(
    queue_factory, backend, storage, forked_workers, tmp_path, figure
):
    items = ITEMS[backend]
    # Each kill costs the messages its worker held one receive: keep max_receive_count above
    # the kills, so what is measured is loss, not the redrive policy.
    queue = queue_factory(lease_seconds=1, max_receive_count=KILLS + 5)
    log_dir = tmp_path / "executions"
    log_dir.mkdir()
    enqueue(queue, "tests.tasks:counted", range(items), log_dir=str(log_dir), seconds=0.02)
    seed = random.randrange(2**32)
    rng = random.Random(seed)

    for _ in range(KILLS):
        victim = forked_workers.start(queue, storage, idle_seconds=60)
        # A random point of its work: mid-task, mid-write, mid-acknowledgement or mid-receive.
        wait_until(lambda v=victim: (log_dir / f"{v.pid}.log").exists() or v.poll() is not None)
        time.sleep(rng.uniform(0, 0.3))
        os.kill(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL, f"worker ended before its kill (seed {seed})"
    last_kill = time.monotonic()
    # The last worker does most of the batch: on moto, at stress size, beside the many-writers
    # scenario, that took over two minutes once.
    stats = forked_workers.run(queue, storage, idle_seconds=0.5, timeout=scaled(120, 600))
    recovery_seconds = time.monotonic() - last_kill

    names = [p for p in storage.list(outputs_prefix("b")) if p.endswith(".json")]
    records = storage.get_json_many(names)
    assert not records.corrupt, f"truncated outputs: {records.corrupt} (seed {seed})"
    assert sorted(names) == sorted(output_path("b", str(i)) for i in range(items)), f"seed {seed}"
    assert all(r["result"] == int(r["key"]) ** 2 for r in records.values())
    counts = queue.counts()
    assert (counts.pending, counts.dead) == (0, 0), f"{counts} (seed {seed})"
    ran = executions(str(log_dir))
    figure(
        "1. SIGKILL mid-task at random points",
        trials=KILLS,
        items=items,
        lost=items - len(names),
        duplicated=0,
        dead_lettered=counts.dead,
        recovery_seconds=round(recovery_seconds, 1),
        notes=f"{sum(n - 1 for n in ran.values())} executions re-run after a kill "
        f"(at least once); last worker finished {stats['succeeded']}; seed {seed}",
    )


def test_sigterm_mid_task_releases_the_lease_within_a_second_and_another_worker_finishes_it(
    queue_factory, storage, forked_workers, tmp_path, figure
):
    lease_seconds = 300
    queue = queue_factory(lease_seconds=lease_seconds)
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    enqueue(queue, "tests.tasks:tracked", [1], log_dir=str(log_dir), seconds=2)
    victim = forked_workers.start(queue, storage, idle_seconds=60)
    wait_until(lambda: runs(log_dir, 1) == 1)

    signalled = time.monotonic()
    os.kill(victim.pid, signal.SIGTERM)
    wait_until(lambda: queue.counts().visible == 1, timeout=10, every=0.01)
    released_after = time.monotonic() - signalled
    stopped = forked_workers.wait(victim, timeout=30)  # exit code 0 checked here
    forked_workers.run(queue, storage, idle_seconds=0.2)
    completed_after = time.monotonic() - signalled

    assert released_after < 1.0
    assert stopped["stop_reason"] == "stopped"
    assert completed_after < lease_seconds / 10
    assert (runs(log_dir, 1), runs(log_dir, 1, "finished")) == (2, 1)
    assert storage.get_json(output_path("b", "1"))["attempt"] == 2
    figure(
        "2. SIGTERM (spot preemption) mid-task",
        trials=1,
        items=1,
        lost=0,
        duplicated=0,
        dead_lettered=queue.counts().dead,
        recovery_seconds=round(completed_after, 2),
        notes=f"lease released {released_after * 1000:.0f} ms after SIGTERM; "
        f"done by another worker {completed_after:.1f} s after, lease was {lease_seconds} s",
    )
