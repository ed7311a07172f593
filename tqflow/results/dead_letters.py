"""Dead letters read back: each as a row naming its batch, item, function and last error."""

from __future__ import annotations

from typing import Any, Callable, Optional

from tqflow.engine.contracts import BatchFolder, DeadLetter
from tqflow.engine.failures import read_error_record
from tqflow.engine.messages import TaskMessage, decode
from tqflow.errors import MessageError


def describe(dead: DeadLetter, storage: Optional[BatchFolder] = None) -> dict[str, Any]:
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


def _last_error(storage: BatchFolder, batch: str, key: str) -> Optional[str]:
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
