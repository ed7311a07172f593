"""Queueing a batch: its items read exactly (`items`, `source`), one message per item sent
once (`send`), and for SQS the record of what was sent (`sent_record`). No Prefect here: the
``enqueue`` flow and ``tqflow enqueue`` are thin callers of `ItemSource.read` and
`enqueue_items`."""

from tqflow.enqueue.send import EnqueueResult, done_outputs, enqueue_items
from tqflow.enqueue.source import CAVETableQuery, ItemSource

__all__ = ["CAVETableQuery", "EnqueueResult", "ItemSource", "done_outputs", "enqueue_items"]
