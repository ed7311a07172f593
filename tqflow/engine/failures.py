"""What happens to a message that did not succeed: retried after a backoff, or dead-lettered,
its error recorded either way. Never raises: nothing that goes wrong with one message stops a
worker.

- `Failures.retry`: the attempt's traceback is written to ``<batch>/errors/<key>/`` (a file
  per attempt; `read_error_record` reads them as one) and the message is left to come back
  after `retry_delay`; the queue's redrive policy moves it to the
  dead-letter queue after ``max_receive_count`` receives (`tqflow.engine.retries`).
- `Failures.dead_letter`: into the dead-letter queue at once, with the reason. On a queue with
  no dead-letter queue (one python-task-queue made) the message is kept, whole, in its error
  record and removed, so that the queue drains; if the dead-letter queue cannot be reached,
  the message is retried instead.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from typing import Any, Callable, Optional

from tqflow.engine.contracts import BatchFolder, Lease, Queue, Storage
from tqflow.engine.layout import error_attempt_path, error_attempts_prefix, error_path
from tqflow.engine.lease_keeper import LeaseKeeper
from tqflow.engine.messages import TaskMessage, item_key
from tqflow.engine.outputs import failed_attempt
from tqflow.engine.retries import retry_delay
from tqflow.engine.stats import Outcome
from tqflow.engine.task_resources import TaskResources
from tqflow.errors import CorruptFileError, LeaseLostError, NoDeadLetterQueueError

#: ``count(message, outcome, used, error, traceback)``: the worker's tally of one ending.
Count = Callable[
    [Optional[TaskMessage], Outcome, Optional[TaskResources], Optional[BaseException], str], None
]


class Failures:
    """The failure path of one worker's loop."""

    def __init__(
        self,
        queue: Queue,
        storage: Storage,
        keeper: LeaseKeeper,
        count: Count,
        log: logging.Logger | logging.LoggerAdapter,
        *,
        worker: str,
        default_batch: str,
        retry_base_seconds: float,
    ) -> None:
        self.queue, self.storage, self.keeper = queue, storage, keeper
        self.count, self.log = count, log
        self.worker, self.default_batch = worker, default_batch
        self.retry_base_seconds = retry_base_seconds

    def unreadable(self, lease: Lease) -> TaskMessage:
        """A stand-in for a message that could not be read, named after its body."""
        return TaskMessage(fn="", key=item_key({"body": lease.body}), batch=self.default_batch)

    def retry(
        self, lease: Lease, message: TaskMessage, exc: Exception, used: TaskResources | None = None
    ) -> None:
        """Record the failure and leave the message to come back after a backoff."""
        trace = _traceback(exc)
        self.count(message, Outcome.FAILED, used, exc, trace)
        self.log.warning(
            "item %s failed (attempt %d of %d): %s: %s",
            message.key,
            lease.receive_count,
            self.queue.max_receive_count,
            type(exc).__name__,
            exc,
        )
        self.record(message, lease, exc, trace, used=used)
        delay = retry_delay(
            lease.receive_count,
            base_seconds=self.retry_base_seconds,
            max_seconds=self.queue.lease_seconds,
        )
        if lease.receive_count >= self.queue.max_receive_count:
            delay = 0  # the next receive moves it to the dead-letter queue: no need to wait
        try:
            self.keeper.retry_later(lease, delay)
        except LeaseLostError:
            pass  # another worker holds it already
        except Exception as retry_exc:  # it comes back when its lease ends instead
            self.log.warning("could not set the retry delay of item %s: %s", message.key, retry_exc)

    def dead_letter(
        self,
        lease: Lease,
        message: TaskMessage | None,
        exc: Exception,
        used: TaskResources | None = None,
    ) -> None:
        """Into the dead-letter queue at once (a message no retry can fix); ``message`` is
        None for a body that could not be read."""
        self.keeper.drop(lease)
        reason = f"{type(exc).__name__}: {exc}"
        trace = _traceback(exc)
        named = message or self.unreadable(lease)
        try:
            moved = self.queue.dead_letter(lease, reason)
        except NoDeadLetterQueueError as missing:
            self._keep_in_error_record(lease, message, exc, trace, used, missing)
            return
        except Exception as dlq_exc:
            # It stays in the queue and comes back; the redrive policy moves it after
            # max_receive_count receives. The reason is kept in its error record.
            self.count(message, Outcome.FAILED, used, exc, trace)
            self.log.warning(
                "could not dead-letter message %s (%s: %s); it is retried instead",
                lease.message_id,
                type(dlq_exc).__name__,
                dlq_exc,
            )
            self.record(
                named, lease, exc, trace, used=used, body=lease.body if message is None else None
            )
            return
        if moved:
            self.count(message, Outcome.DEAD_LETTERED, used, exc, trace)
            self.log.warning(
                "message %s moved to the dead-letter queue: %s", lease.message_id, _short(reason)
            )
        else:
            self.count(message, Outcome.FAILED, used, exc, trace)
            self.log.warning(
                "message %s could not be moved to the dead-letter queue: its lease had ended "
                "(it comes back, and is dead-lettered then): %s",
                lease.message_id,
                _short(reason),
            )
        if message is not None:  # an unreadable body stays, with its reason, in the DLQ only
            self.record(message, lease, exc, trace, used=used)

    def _keep_in_error_record(
        self,
        lease: Lease,
        message: TaskMessage | None,
        exc: Exception,
        trace: str,
        used: TaskResources | None,
        missing: NoDeadLetterQueueError,
    ) -> None:
        """A python-task-queue queue as it is: the message is kept, whole, in its error record,
        with the advice; then removed, so the queue drains instead of re-delivering it until
        its retention ends."""
        named = message or self.unreadable(lease)
        self.record(named, lease, exc, trace, used=used, body=lease.body, advice=str(missing))
        try:
            self.queue.ack([lease])
        except Exception as ack_exc:
            self.log.warning("could not remove message %s: %s", lease.message_id, ack_exc)
        self.count(message, Outcome.DEAD_LETTERED, used, exc, trace)
        self.log.warning(
            "message %s not runnable (%s: %s); kept in its error record: %s",
            lease.message_id,
            type(exc).__name__,
            _short(str(exc)),
            missing,
        )

    def record(
        self,
        message: TaskMessage,
        lease: Lease,
        exc: BaseException,
        trace: str,
        used: TaskResources | None = None,
        **extra: Any,
    ) -> None:
        """Write this attempt's error record, with ``extra`` fields (``None`` ones left out): a
        file of its own, so two attempts failing at once both leave theirs, each one write
        (`read_error_record` puts an item's attempts together)."""
        attempt = failed_attempt(
            attempt=lease.receive_count, error=exc, traceback=trace, worker=self.worker
        )
        if used is not None:
            attempt["resources"] = used.as_dict()
        record = {
            "key": message.key,
            "batch": message.batch,
            "fn": message.fn,
            "kwargs": message.kwargs,
            "attempt": attempt,
            **{k: v for k, v in extra.items() if v is not None},
        }
        writer = f"{self.worker}-{uuid.uuid4().hex[:6]}"
        path = error_attempt_path(message.batch, message.key, lease.receive_count, writer)
        try:
            self.storage.put_json(path, record)
        except Exception as write_exc:
            self.log.warning("could not record the error of item %s: %s", message.key, write_exc)


def read_error_record(storage: BatchFolder, batch: str, key: str) -> dict[str, Any] | None:
    """Every failed attempt of ``key`` in ``batch``, in the order they failed, as one record:
    ``{"key", "batch", "fn", "kwargs", "attempts": [...]}`` and the latest of the other fields;
    the attempts of a record written before per-attempt files first. ``None`` if it never
    failed. A file that cannot be read is left out."""
    found = storage.get_json_many(list(storage.list(error_attempts_prefix(batch, key))))
    records = sorted(
        (r for r in found.values() if isinstance(r, dict) and isinstance(r.get("attempt"), dict)),
        key=lambda r: (r["attempt"].get("attempt") or 0, str(r["attempt"].get("failed_at"))),
    )
    try:
        earlier = storage.get_json(error_path(batch, key))
    except CorruptFileError:
        earlier = None
    if not records and not isinstance(earlier, dict):
        return None
    merged: dict[str, Any] = {"key": key, "batch": batch, "attempts": []}
    if isinstance(earlier, dict):
        merged.update({k: v for k, v in earlier.items() if k != "attempts"})
        merged["attempts"] += [a for a in earlier.get("attempts") or [] if isinstance(a, dict)]
    for record in records:
        merged.update({k: v for k, v in record.items() if k != "attempt"})
        merged["attempts"].append(record["attempt"])
    return merged


def _traceback(exc: BaseException) -> str:
    """A failure's traceback, formatted once for its error record and its batch's report."""
    return "".join(traceback.format_exception(exc))


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"
