"""Reliability: a message that names code the worker must not run (``os:system``) on a queue whose
workers hold the lab's AWS, GCS and CAVE credentials."""

from __future__ import annotations

import json

from tests.support.helpers import enqueue


def test_a_message_naming_os_system_is_dead_lettered_not_run(
    queue_factory, storage, forked_workers, tmp_path, figure
):
    queue = queue_factory(allowed_modules=[])
    marker = tmp_path / "pwned"
    enqueue(queue, "tests.tasks:square", range(5))  # no batch record: allowed only by --allow
    queue.send(
        [
            json.dumps(
                {
                    "fn": "os:system",
                    "kwargs": {"command": f"touch {marker}"},
                    "key": "x",
                    "batch": "b",
                }
            )
        ]
    )
    stats = forked_workers.run(queue, storage, allow=["tests.tasks"])
    assert (stats["succeeded"], stats["dead_lettered"]) == (5, 1)
    assert not marker.exists()
    [dead] = queue.dead_letters()
    assert dead.receive_count == 1
    assert dead.reason.startswith("TaskNotAllowedError: os:system is not an allowed task function")
    figure(
        "13. A body naming os:system",
        trials=1,
        items=6,
        lost=0,
        duplicated=0,
        dead_lettered=1,
        recovery_seconds=None,
        notes="dead-lettered at its first receive with TaskNotAllowedError; the command never ran; "
        "the 5 allowed tasks (--allow tests.tasks) done",
    )
