"""The ``dead_letters`` flow: see why messages were dead-lettered, and send them back.

Redrive after fixing the cause (a bug in the task function, a missing package in the worker
image): redriven messages start again with their receive count at zero.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.queues import QueueParameter, TaskQueue
from blocks.slugs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.artifacts import artifact_key
from tqflow.engine.messages import check_batch
from tqflow.results.dead_letters import describe, in_batch


@flow(name="dead-letters")
def dead_letters(
    queue: QueueParameter,
    action: Literal["list", "redrive"] = "list",
    limit: Optional[int] = 100,
    batch: Optional[str] = None,
    storage: Union[CloudFilesStorage, str, None] = None,
) -> dict[str, Any]:
    """List dead-lettered messages with their reasons, or redrive them into the queue.

    Args:
        queue: The queue block whose dead-letter queue to look at (or a saved block's slug).
        action: ``list`` or ``redrive``.
        limit: At most this many messages (``None``: all, for redrive).
        batch: Only this batch's messages (a queue several batches share).
        storage: Storage of the batches: the list then shows each task's last error.
    """
    logger = get_run_logger()
    queue = load_block(queue, TaskQueue)
    storage = load_block(storage, CloudFilesStorage) if storage is not None else None
    select = in_batch(check_batch(batch)) if batch is not None else None
    if action == "redrive":
        moved = queue.redrive(limit, select=select)
        logger.info("redrove %d messages back into %s", moved, queue.queue_name)
        return {"redriven": moved}
    rows = [describe(d, storage) for d in queue.dead_letters(limit or 100, select=select)]
    total = queue.counts().dead
    if rows:
        create_table_artifact(
            key=artifact_key(batch or queue.queue_name, "dead-letters"),
            table=rows,
            description=f"{total} dead-lettered messages in {queue.queue_name} (first {len(rows)}"
            + (f" of batch {batch})" if batch else ")"),
        )
    logger.info("%d messages in the dead-letter queue of %s", total, queue.queue_name)
    return {"dead": total, "messages": rows}
