"""Reliability: tasks that hang (a call that never returns) among good ones, stopped at the
batch's time limit."""

from __future__ import annotations

import time

from tests.reliability.conftest import scaled
from tqflow.engine.failures import read_error_record
from tqflow.engine.layout import output_path
from tqflow.enqueue import enqueue_items

ITEMS = scaled(6, 60)
HUNG = scaled([2], [3, 17, 41])


def test_a_hung_task_is_stopped_at_its_time_limit_retried_then_dead_lettered(
    queue_factory, storage, forked_workers, figure
):
    queue = queue_factory(max_receive_count=2)
    enqueue_items(
        queue,
        storage,
        "tests.tasks:sleeps_on",
        range(ITEMS),
        "b",
        kwargs={"slow": HUNG},
        task_timeout_seconds=2,
    )
    started = time.monotonic()
    stats = forked_workers.run(queue, storage, retry_base_seconds=0.1, idle_seconds=1, timeout=300)
    seconds = time.monotonic() - started

    good = ITEMS - len(HUNG)
    assert (stats["succeeded"], stats["timed_out"], stats["stop_reason"]) == (
        good,
        2 * len(HUNG),
        "idle",
    )
    assert sorted(d.receive_count for d in queue.dead_letters()) == [2] * len(HUNG)
    for key in HUNG:
        attempts = read_error_record(storage, "b", str(key))["attempts"]
        assert len(attempts) == 2 and all("timed out after 2 s" in a["error"] for a in attempts)
    assert all(storage.exists(output_path("b", str(i))) for i in range(ITEMS) if i not in HUNG)
    figure(
        "10. Hung tasks, time limit 2 s",
        trials=1,
        items=ITEMS,
        lost=0,
        duplicated=0,
        dead_lettered=queue.counts().dead,
        recovery_seconds=None,
        notes=f"{len(HUNG)} of {ITEMS} tasks sleep 1 h: each stopped at 2 s twice "
        f"(max_receive_count=2), then dead-lettered; the {good} others done; one worker drained "
        f"it all in {seconds:.1f} s",
    )
