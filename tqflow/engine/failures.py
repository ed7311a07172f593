"""What happens to a message that did not succeed: retried after a backoff, or dead-lettered,
its error recorded either way. Never raises: nothing that goes wrong with one message stops a
worker.

- `Failures.retry`: the traceback is appended to ``<batch>/errors/<key>.json`` and the message
  is left to come back after `retry_delay`; the queue's redrive policy moves it to the
  dead-letter queue after ``max_receive_count`` receives (`tqflow.engine.retries`).
- `Failures.dead_letter`: into the dead-letter queue at once, with the reason. On a queue with
  no dead-letter queue (one python-task-queue made) the message is kept, whole, in its error
  record and removed, so that the queue drains; if the dead-letter queue cannot be reached,
  the message is retried instead.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any, Callable, Optional

from tqflow.engine.contracts import Lease, Queue, Storage
from tqflow.engine.layout import error_path
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
        """Append this attempt to the item's error record, with ``extra`` fields (``None``
        ones left out)."""
        path = error_path(message.batch, message.key)
        attempt = failed_attempt(
            attempt=lease.receive_count, error=exc, traceback=trace, worker=self.worker
        )
        if used is not None:
            attempt["resources"] = used.as_dict()
        try:
            try:
                record = self.storage.get_json(path)
            except CorruptFileError as corrupt:  # not the task's: start the record anew
                self.log.warning(
                    "%s; the error record of item %s starts anew", corrupt, message.key
                )
                record = None
            record = record or {
                "key": message.key,
                "batch": message.batch,
                "fn": message.fn,
                "kwargs": message.kwargs,
                "attempts": [],
            }
            record["attempts"].append(attempt)
            record.update({k: v for k, v in extra.items() if v is not None})
            self.storage.put_json(path, record)
        except Exception as write_exc:
            self.log.warning("could not record the error of item %s: %s", message.key, write_exc)


def _traceback(exc: BaseException) -> str:
    """A failure's traceback, formatted once for its error record and its batch's report."""
    return "".join(traceback.format_exception(exc))


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"
