"""`enqueue_items`: one message per item that is neither done nor already queued.

Every message is built and checked (size, arguments) before the first is sent, so bad input
loses nothing; items whose output exists in the batch are skipped, so re-running a batch
resumes it.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

from tqflow.engine.allowed_modules import record_batch_function
from tqflow.engine.batch_messages import task_messages
from tqflow.engine.contracts import BatchStorage, EnqueueTarget
from tqflow.engine.layout import output_path, outputs_prefix
from tqflow.enqueue.sent_record import SentRecord
from tqflow.errors import EnqueueInterruptedError, ParameterError

#: Items from which the resume check lists the batch's outputs instead of checking each.
LIST_OUTPUTS_FROM = 1_000

#: Messages sent per step. On a queue that cannot deduplicate (SQS) the record of what was
#: sent is written after each step: an enqueue killed outright re-sends at most one step.
SEND_STEP = 1_000


@dataclass(frozen=True)
class EnqueueResult:
    #: Messages sent now.
    queued: int
    #: Items whose output exists: done in an earlier run.
    skipped_done: int
    #: Items given more than once.
    duplicates: int
    #: Items queued by an earlier run of this enqueue and not done yet (still in the queue, in
    #: flight, or dead-lettered): not sent again.
    already_queued: int = 0
    #: Empty cells skipped in the items file.
    empty_cells: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def line(self) -> str:
        parts = [f"queued {self.queued:,} tasks", f"{self.skipped_done:,} skipped as already done"]
        if self.already_queued:
            parts.append(f"{self.already_queued:,} already queued by an earlier run")
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate items dropped")
        if self.empty_cells:
            parts.append(f"{self.empty_cells:,} empty cells skipped")
        return "; ".join(parts)


def done_outputs(
    storage: BatchStorage, batch: str, keys: list[str], list_from: int = LIST_OUTPUTS_FROM
) -> set[str]:
    """The output paths of ``keys`` that exist: items done in an earlier run.

    From ``list_from`` items on, the batch's outputs are listed (GCS and S3 answer a list with
    up to 1,000 keys; S3 checks one key per request, GCS 100 per batch request) instead of
    checked one by one: in parallel ranges cut at the keys' quantiles, for a large batch."""
    paths = [output_path(batch, key) for key in keys]
    if len(paths) < list_from:
        return {path for path, exists in storage.exists_many(paths).items() if exists}
    listed = set(storage.list(outputs_prefix(batch), expected=paths))
    return {path for path in paths if path in listed}


def enqueue_items(
    queue: EnqueueTarget,
    storage: BatchStorage,
    fn: str,
    items: Iterable[Any],
    batch: str,
    *,
    kwargs: Optional[dict[str, Any]] = None,
    item_param: Optional[str] = None,
    overwrite: bool = False,
    requeue: bool = False,
    stop: Optional[threading.Event] = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    step: int = SEND_STEP,
    task_timeout_seconds: Optional[float] = None,
) -> EnqueueResult:
    """Queue ``fn(item, **kwargs)`` for every item of ``batch`` that is neither done nor
    already queued.

    Idempotent: run again, after it finished or after it was stopped at any point, it leaves
    one live message per item that is not done. The local queue enforces it itself (dedup ids);
    for SQS a `SentRecord` in storage says what was sent. ``requeue`` sends again the items
    queued earlier and not done (e.g. after the queue was purged; the local queue does so by
    itself, as it knows what it holds). ``stop``, when set, ends the
    enqueue between two steps with `EnqueueInterruptedError`. ``step``: messages sent between two
    records of what was sent; on SQS a kill re-sends at most one step.
    ``task_timeout_seconds``: the batch's time limit per task, carried by each message.

    The batch's function is noted in storage first (`record_batch_function`): workers run
    only functions of batches enqueued this way, or of allowed modules.
    """
    log = log or logging.getLogger("tqflow.enqueue")
    empty_cells = len(getattr(items, "empty_lines", ()))
    if task_timeout_seconds is not None and not task_timeout_seconds > 0:
        raise ParameterError(
            f"task_timeout_seconds must be a positive number of seconds, not {task_timeout_seconds!r}"
        )
    # Every body is built and checked before the first is sent: bad input loses nothing. Only
    # (key, body) pairs are kept, not the messages: ~250 bytes an item (1M items: ~250 MB).
    bodies: list[tuple[str, str]] = []
    duplicates, seen = 0, set()
    for message in task_messages(fn, items, batch, kwargs, item_param, task_timeout_seconds):
        if message.key in seen:
            duplicates += 1
            continue
        seen.add(message.key)
        bodies.append((message.key, message.encode(max_bytes=queue.max_message_bytes)))
    seen_any = bool(seen)
    del seen
    storage.check()
    skipped = 0
    if not overwrite and bodies:
        done = done_outputs(storage, batch, [key for key, _ in bodies])
        if done:
            todo = [(k, b) for k, b in bodies if output_path(batch, k) not in done]
            skipped, bodies = len(bodies) - len(todo), todo
    record = None if queue.deduplicates else SentRecord(storage, batch, queue.queue_name)
    already = 0
    if record is not None and not requeue and bodies:
        sent_before = record.keys()
        if sent_before:
            todo = [(k, b) for k, b in bodies if k not in sent_before]
            already, bodies = len(bodies) - len(todo), todo
    # Into a bucket, sent in an order shuffled by the batch's name (the same on every re-run):
    # workers then write outputs all over the key range instead of from the first key to the
    # last, the sequential pattern that GCS's request-rate guide says ramps worst (a bucket
    # starts near 1,000 writes a second and splits its key ranges as load spreads over them).
    # The output names stay the item keys: the layout users read, and resume relies on, does
    # not change. Into a local folder the order costs nothing, and a shuffled one costs the
    # local queue's dedup index a page written per message: 1M items took 3.5x as long.
    if not storage.is_local:
        random.Random(f"tqflow:{batch}").shuffle(bodies)
    queue.ensure()
    if seen_any:
        replaced = record_batch_function(storage, batch, fn)
        if replaced:
            log.warning("batch %s: %s", batch, replaced)
    queued = 0

    def result() -> EnqueueResult:
        return EnqueueResult(queued, skipped, duplicates, already, empty_cells)

    for start in range(0, len(bodies), step):
        if stop is not None and stop.is_set():
            raise EnqueueInterruptedError(result(), len(bodies) - start, batch)
        chunk = bodies[start : start + step]
        sent = queue.send(
            [body for _, body in chunk], dedup_ids=[f"{batch}/{key}" for key, _ in chunk]
        )
        queued += sent
        already += len(chunk) - sent
        if record is not None:
            record.add([key for key, _ in chunk])
    log.info("batch %s on %s: %s", batch, queue.queue_name, result().line())
    return result()
