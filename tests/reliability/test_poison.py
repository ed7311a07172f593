"""Reliability: a task that always raises (a poison task) among good ones."""

from __future__ import annotations

from tests.support.helpers import enqueue
from tqflow.engine.failures import read_error_record
from tqflow.engine.layout import output_path


def test_poison_task_is_dead_lettered_after_exactly_max_receive_count_with_every_traceback(
    queue_factory, storage, forked_workers, figure
):
    queue = queue_factory(max_receive_count=3, lease_seconds=5)
    enqueue(queue, "tests.tasks:fails_on", range(20), bad=[13])
    stats = forked_workers.run(queue, storage, retry_base_seconds=0.05, idle_seconds=0.3)

    assert (stats["failed"], stats["succeeded"]) == (3, 19)
    (dead,) = queue.dead_letters()
    assert "max_receive_count=3" in dead.reason
    assert dead.receive_count == 3
    errors = read_error_record(storage, "b", "13")
    assert [a["attempt"] for a in errors["attempts"]] == [1, 2, 3]
    assert all("ValueError: item 13 is bad" in a["traceback"] for a in errors["attempts"])
    assert not storage.exists(output_path("b", "13"))
    assert all(storage.exists(output_path("b", str(i))) for i in range(20) if i != 13)
    figure(
        "3. Poison task among good ones",
        trials=1,
        items=20,
        lost=0,
        duplicated=0,
        dead_lettered=queue.counts().dead,
        recovery_seconds=None,
        notes="dead-lettered after exactly 3 receives (max_receive_count=3), 3 tracebacks kept; "
        "the 19 others done",
    )
