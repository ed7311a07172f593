"""The ``dead_letters`` flow: see why messages were dead-lettered, and send them back.

Redrive after fixing the cause (a bug in the task function, a missing package in the worker
image): redriven messages start again with their receive count at zero.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.queues import QueueParameter, TaskQueue
from blocks.slugs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.artifacts import artifact_key
from tqflow.engine.contracts import DeadLetter
from tqflow.engine.failures import read_error_record
from tqflow.engine.messages import TaskMessage, check_batch, decode
from tqflow.errors import MessageError


def describe(dead: DeadLetter, storage: Optional[CloudFilesStorage] = None) -> dict[str, Any]:
    """A dead letter as a table row: which batch and item, which function, how many receives,
    why it was dead-lettered, and (with ``storage``) the last error the task raised."""
    try:
        message: Optional[TaskMessage] = decode(dead.body)
    except MessageError:
        message = None
    item = {
        "batch": message.batch if message else None,
        "key": message.key if message else None,
        "fn": message.fn if message else None,
    }
    last_error = None
    if storage is not None and message is not None:
        last_error = _last_error(storage, message.batch, message.key)
    return {
        "message_id": dead.message_id,
        **item,
        "receives": dead.receive_count,
        "reason": dead.reason,
        "last_error": last_error,
        "body": dead.body if len(dead.body) <= 200 else dead.body[:200] + "...",
    }


def _last_error(storage: CloudFilesStorage, batch: str, key: str) -> Optional[str]:
    """The last line of the last failed attempt's error, from the item's error record."""
    try:
        record = read_error_record(storage, batch, key)
    except Exception:  # a missing or unreadable record only loses the detail
        return None
    attempts = (record or {}).get("attempts") or []
    if not attempts:
        return None
    error = str(attempts[-1].get("error") or "").strip()
    return error.splitlines()[-1][:300] if error else None


def in_batch(batch: str) -> Callable[[str], bool]:
    """A body filter: messages of ``batch`` (on a queue that several batches share)."""

    def select(body: str) -> bool:
        try:
            return decode(body).batch == batch
        except MessageError:
            return False

    return select


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
