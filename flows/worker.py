"""The worker loop: lease a task, run it, write its output, then acknowledge it.

The contract (DESIGN.md, "Worker loop"):

- The output record is written *before* the message is acknowledged, so an acknowledged task
  always has its output; a crash in between only re-runs a task whose output exists, and the
  next worker skips it.
- An item whose output exists is skipped (and acknowledged) unless ``overwrite``.
- Leases are extended in the background while a task runs (`LeaseKeeper`).
- A task that raises gets its traceback appended to ``<batch>/errors/<key>.json`` and is retried
  by the queue (`flows.retries`) until the dead-letter queue takes it.
- A message that cannot be decoded, imported or bound goes to the dead-letter queue at once.
- When ``stop`` is set (the process entry sets it on SIGTERM), no new lease is taken and every
  held lease is released at once.
- The loop ends when the queue stays empty for ``idle_seconds``, or after ``max_tasks`` /
  ``max_seconds``.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import statistics
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from blocks.cave import CAVECredentials
from blocks.errors import (
    BadArgumentsError,
    LeaseLostError,
    MessageError,
    NoDeadLetterQueueError,
    PermanentTaskError,
)
from blocks.queues.base import Lease, TaskQueue
from blocks.storage import CloudFilesStorage
from flows.lease_keeper import LeaseKeeper
from flows.messages import TaskMessage, bind, check_batch, decode, item_key, resolve
from flows.outputs import (
    error_path,
    failed_attempt,
    output_path,
    output_record,
    storable_result,
)
from flows.retries import retry_delay

logger = logging.getLogger("tqflow.worker")


@dataclass
class WorkerStats:
    """What one worker did."""

    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    dead_lettered: int = 0
    #: Why the loop ended: ``idle``, ``max_tasks``, ``max_seconds`` or ``stopped``.
    stop_reason: str = ""
    elapsed_seconds: float = 0.0
    task_seconds_total: float = 0.0
    #: Durations of recent successful tasks, for the percentiles (bounded, so memory is flat).
    recent_task_seconds: deque = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def processed(self) -> int:
        return self.succeeded + self.skipped + self.failed + self.dead_lettered

    def record_success(self, seconds: float) -> None:
        self.succeeded += 1
        self.task_seconds_total += seconds
        self.recent_task_seconds.append(seconds)

    def as_dict(self) -> dict[str, Any]:
        recent = sorted(self.recent_task_seconds)
        p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))] if recent else None
        return {
            "succeeded": self.succeeded,
            "skipped": self.skipped,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "processed": self.processed,
            "stop_reason": self.stop_reason,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "mean_task_seconds": (
                round(self.task_seconds_total / self.succeeded, 6) if self.succeeded else None
            ),
            "median_task_seconds": round(statistics.median(recent), 6) if recent else None,
            "p95_task_seconds": round(p95, 6) if p95 is not None else None,
        }


class Worker:
    """Drains a queue into storage. ``run()`` returns `WorkerStats`.

    Example:
        ```python
        from blocks import CloudFilesStorage, LocalTaskQueue
        from flows.worker import Worker

        stats = Worker(LocalTaskQueue(queue_name="demo"), CloudFilesStorage(), idle_seconds=5).run()
        ```
    """

    def __init__(
        self,
        queue: TaskQueue,
        storage: CloudFilesStorage,
        *,
        default_batch: str = "default",
        idle_seconds: float = 30.0,
        max_tasks: int | None = None,
        max_seconds: float | None = None,
        overwrite: bool = False,
        prefetch: int | None = None,
        prefetch_seconds: float = 2.0,
        ack_seconds: float = 1.0,
        retry_base_seconds: float = 5.0,
        import_modules: Iterable[str] = (),
        cave: CAVECredentials | None = None,
        injectables: Mapping[str, Callable[[], Any]] | None = None,
        progress_seconds: float = 30.0,
        stop: threading.Event | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
    ) -> None:
        self.queue = queue
        self.storage = storage
        self.default_batch = check_batch(default_batch)
        self.idle_seconds = idle_seconds
        self.max_tasks = max_tasks
        self.max_seconds = max_seconds
        self.overwrite = overwrite
        self.prefetch = prefetch
        self.prefetch_seconds = prefetch_seconds
        self.ack_seconds = ack_seconds
        self.retry_base_seconds = retry_base_seconds
        self.progress_seconds = progress_seconds
        self.stop = stop or threading.Event()
        self.log = log or logger
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.stats = WorkerStats()
        self.cave = cave
        self._cave_client: Any = None
        self._injectables: dict[str, Callable[[], Any]] = {
            "storage": lambda: self.storage,
            "cave": self._get_cave_client,
            **(injectables or {}),
        }
        self._buffer: deque[Lease] = deque()
        self._in_task = False
        for module in import_modules:  # task-queue RegisteredTask classes register on import
            __import__(module)

    def _get_cave_client(self) -> Any:
        """The worker's one CAVEclient, built from its CAVE block on first use."""
        if self._cave_client is None:
            if self.cave is None:
                raise BadArgumentsError(
                    "the task function takes a `cave` client but this worker has no CAVE "
                    "block; pass one to the pipeline or worker (cave=CAVECredentials.load(...))"
                )
            self._cave_client = self.cave.get_client()
        return self._cave_client

    # -- control (the process entry calls this from its signal handler) ---------------------

    def request_stop(self) -> bool:
        """Stop taking leases and release held ones at once. Returns whether a task is running
        right now, so the caller can interrupt it."""
        self.stop.set()
        return self._in_task

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        started = time.monotonic()
        next_progress = started + self.progress_seconds
        idle_since: float | None = None
        self.log.info(
            "worker %s draining %s into %s", self.name, self.queue.queue_name, self.storage.cloudpath
        )
        keeper = LeaseKeeper(
            self.queue, self.queue.lease_seconds, self.stop, self.log, ack_seconds=self.ack_seconds
        )
        empty_polls = 0
        with keeper:
            self._keeper = keeper
            try:
                while not self.stop.is_set():
                    reason = self._limit_reached(started)
                    if reason:
                        self.stats.stop_reason = reason
                        break
                    lease = self._next_lease()
                    if lease is None:
                        idle_since = idle_since or time.monotonic()
                        empty_polls += 1
                        if (
                            empty_polls >= 2
                            and time.monotonic() - idle_since >= self.idle_seconds
                            and self._drained()
                        ):
                            self.stats.stop_reason = "idle"
                            break
                        continue
                    idle_since, empty_polls = None, 0
                    self._process(lease)
                    if time.monotonic() >= next_progress:
                        self._log_progress(started)
                        next_progress = time.monotonic() + self.progress_seconds
            except KeyboardInterrupt:
                if not self.stop.is_set():
                    raise
            # Leases still buffered are released when the keeper exits.
        if self.stop.is_set():
            self.stats.stop_reason = "stopped"
        self.stats.elapsed_seconds = time.monotonic() - started
        self.log.info("worker %s finished (%s): %s", self.name, self.stats.stop_reason, self._summary())
        return self.stats

    def _limit_reached(self, started: float) -> str:
        if self.max_tasks is not None and self.stats.processed >= self.max_tasks:
            return "max_tasks"
        if self.max_seconds is not None and time.monotonic() - started >= self.max_seconds:
            return "max_seconds"
        return ""

    def _next_lease(self) -> Lease | None:
        if not self._buffer:
            wanted = self._prefetch()
            if self.max_tasks is not None:
                wanted = max(1, min(wanted, self.max_tasks - self.stats.processed))
            leases = self.queue.receive(max_messages=wanted)
            if not leases:
                self.stop.wait(0.05)
                return None
            self._keeper.hold(leases)
            if self.stop.is_set():  # stopped during the receive: the keeper releases them
                return None
            self._buffer.extend(leases)
        return self._buffer.popleft()

    def _prefetch(self) -> int:
        """Messages to lease per receive: enough to cover ``prefetch_seconds`` of work at the
        recent task duration, 1 to 10. Short tasks batch their receives (SQS bills per
        request); long tasks take one at a time, so no lease waits behind a long task while
        another worker is idle."""
        if self.prefetch is not None:
            return max(1, self.prefetch)
        recent = list(itertools.islice(reversed(self.stats.recent_task_seconds), 20))
        if not recent:
            return 1
        mean = sum(recent) / len(recent)
        return max(1, min(10, int(self.prefetch_seconds / max(mean, 1e-3))))

    def _drained(self) -> bool:
        """Empty means nothing visible, in flight (another worker's task may still fail and
        come back) or delayed. Called only after consecutive empty receives, so one
        approximate count of SQS's is never trusted alone."""
        self._keeper.flush_acks()  # our own finished tasks are not "in flight"
        return self.queue.counts().pending == 0

    # -- one task -------------------------------------------------------------------------------

    def _process(self, lease: Lease) -> None:
        message: TaskMessage | None = None
        try:
            message = decode(lease.body, self.default_batch)
            func = resolve(message.fn)
            bound = bind(func, message, self._injectables)
        except MessageError as exc:
            self._dead_letter(lease, message, exc)
            return

        out = output_path(message.batch, message.key)
        try:
            if not self.overwrite and self.storage.exists(out):
                self._ack(lease)
                self.stats.skipped += 1
                return
            started = time.perf_counter()
            self._in_task = True
            try:
                result = func(*bound.args, **bound.kwargs)
            finally:
                self._in_task = False
            seconds = time.perf_counter() - started
            record = output_record(
                message,
                storable_result(message, result),
                attempt=lease.receive_count,
                seconds=seconds,
                worker=self.name,
            )
            self.storage.put_json(out, record)
        except PermanentTaskError as exc:  # retrying cannot help
            self._dead_letter(lease, message, exc)
            return
        except Exception as exc:
            self._failed(lease, message, exc)
            return
        self._ack(lease)
        self.stats.record_success(seconds)
        self.log.debug("item %s done in %.3fs", message.key, seconds)

    def _ack(self, lease: Lease) -> None:
        self._keeper.ack(lease)

    def _failed(self, lease: Lease, message: TaskMessage, exc: Exception) -> None:
        self._keeper.drop(lease)
        self.stats.failed += 1
        attempts_left = self.queue.max_receive_count - lease.receive_count
        self.log.warning(
            "item %s failed (attempt %d of %d): %s: %s",
            message.key,
            lease.receive_count,
            self.queue.max_receive_count,
            type(exc).__name__,
            exc,
        )
        self._record_error(message, lease, exc)
        delay = retry_delay(
            lease.receive_count,
            base_seconds=self.retry_base_seconds,
            max_seconds=self.queue.lease_seconds,
        )
        if attempts_left <= 0:
            delay = 0  # the next receive moves it to the dead-letter queue: no need to wait
        try:
            self.queue.extend(lease, delay)
        except LeaseLostError:
            pass  # another worker holds it already

    def _dead_letter(
        self, lease: Lease, message: TaskMessage | None, exc: MessageError | PermanentTaskError
    ) -> None:
        self._keeper.drop(lease)
        reason = f"{type(exc).__name__}: {exc}"
        try:
            moved = self.queue.dead_letter(lease, reason)
        except NoDeadLetterQueueError as missing:
            # A python-task-queue queue as it is: the message is kept, whole, in its error
            # record, with the advice; then removed, so the queue drains instead of
            # re-delivering it until its retention ends.
            self._record_error(message, lease, exc, body=lease.body, advice=str(missing))
            self.queue.ack([lease])
            self.stats.dead_lettered += 1
            self.log.warning(
                "message %s not runnable (%s); kept in its error record: %s",
                lease.message_id, reason, missing,
            )
            return
        if moved:
            self.stats.dead_lettered += 1
        self.log.warning("message %s moved to the dead-letter queue: %s", lease.message_id, reason)
        if message is not None:  # an unreadable body stays, with its reason, in the DLQ only
            self._record_error(message, lease, exc)

    def _record_error(
        self,
        message: TaskMessage | None,
        lease: Lease,
        exc: BaseException,
        **extra: Any,
    ) -> None:
        """Append this attempt to the item's error record (an unreadable message's record is
        named after its body), with ``extra`` fields."""
        if message is None:
            message = TaskMessage(
                fn="", key=item_key({"body": lease.body}), batch=self.default_batch
            )
        path = error_path(message.batch, message.key)
        attempt = failed_attempt(
            attempt=lease.receive_count,
            error=exc,
            traceback="".join(traceback.format_exception(exc)),
            worker=self.name,
        )
        try:
            record = self.storage.get_json(path) or {
                "key": message.key,
                "batch": message.batch,
                "fn": message.fn,
                "kwargs": message.kwargs,
                "attempts": [],
            }
            record["attempts"].append(attempt)
            record.update(extra)
            self.storage.put_json(path, record)
        except Exception as write_exc:
            self.log.warning("could not record the error of item %s: %s", message.key, write_exc)

    # -- reporting ------------------------------------------------------------------------------

    def _summary(self) -> str:
        s = self.stats
        return (
            f"{s.succeeded} succeeded, {s.skipped} skipped (already done), {s.failed} failed, "
            f"{s.dead_lettered} dead-lettered"
        )

    def _log_progress(self, started: float) -> None:
        rate = self.stats.processed / max(1e-9, time.monotonic() - started)
        self.log.info("worker %s: %s; %.1f tasks/s", self.name, self._summary(), rate)




