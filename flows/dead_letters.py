"""The ``dead_letters`` flow: see why messages were dead-lettered, and send them back.

Redrive after fixing the cause (a bug in the task function, a missing package in the worker
image): redriven messages start again with their receive count at zero.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.errors import MessageError
from blocks.queues.base import DeadLetter, TaskQueue
from blocks.specs import load_block
from flows.analysis import artifact_key
from flows.messages import decode


def describe(dead: DeadLetter) -> dict[str, Any]:
    """A dead letter as a table row: which item, which function, why."""
    try:
        message = decode(dead.body)
        item = {"batch": message.batch, "key": message.key, "fn": message.fn}
    except MessageError:
        item = {"batch": None, "key": None, "fn": None}
    return {
        "message_id": dead.message_id,
        **item,
        "receives": dead.receive_count,
        "reason": dead.reason,
        "body": dead.body if len(dead.body) <= 200 else dead.body[:200] + "...",
    }


@flow(name="dead-letters")
def dead_letters(
    queue: Union[TaskQueue, str],
    action: Literal["list", "redrive"] = "list",
    limit: Optional[int] = 100,
) -> dict[str, Any]:
    """List dead-lettered messages with their reasons, or redrive them into the queue.

    Args:
        queue: The queue block whose dead-letter queue to look at (or a saved block's slug).
        action: ``list`` or ``redrive``.
        limit: At most this many messages (``None``: all, for redrive).
    """
    logger = get_run_logger()
    queue = load_block(queue, TaskQueue)
    if action == "redrive":
        moved = queue.redrive(limit)
        logger.info("redrove %d messages back into %s", moved, queue.queue_name)
        return {"redriven": moved}
    rows = [describe(d) for d in queue.dead_letters(limit or 100)]
    total = queue.counts().dead
    if rows:
        create_table_artifact(
            key=artifact_key(queue.queue_name, "dead-letters"),
            table=rows,
            description=f"{total} dead-lettered messages in {queue.queue_name} (first {len(rows)})",
        )
    logger.info("%d messages in the dead-letter queue of %s", total, queue.queue_name)
    return {"dead": total, "messages": rows}
