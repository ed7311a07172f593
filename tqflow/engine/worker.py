"""The worker loop: lease a task, run it, write its output, then acknowledge it.

The contract (DESIGN.md, "Worker loop"):

- The output record is written *before* the message is acknowledged, so an acknowledged task
  always has its output; a crash in between only re-runs a task whose output exists, and the
  next worker skips it.
- An item whose output exists is skipped (and acknowledged) unless ``overwrite``.
- Leases are extended in the background while a task runs (`LeaseKeeper`).
- A task that raises gets its traceback appended to ``<batch>/errors/<key>.json`` and is retried
  by the queue (`tqflow.engine.retries`) until the dead-letter queue takes it.
- A message that cannot be decoded, imported or bound, or names a function outside the
  allowed modules, goes to the dead-letter queue at once; so does a task that raises
  `PermanentTaskError` or that ``retry_when`` says not to retry (`tqflow.engine.retries`).
- A task past ``task_timeout_seconds`` (or about to outlive the longest lease the queue allows)
  is interrupted (`tqflow.engine.time_limit`) and retried like any failure.
- Nothing that goes wrong with one message ends the loop: it ends in a retry or a dead letter,
  with its reason in the error record. Only a queue unreachable for longer than
  ``queue_unreachable_seconds`` stops the worker (``stop_reason`` ``queue_unreachable``).
- When ``stop`` is set (the process entry sets it on SIGTERM), no new lease is taken and every
  held lease is released at once.
- The loop ends when the queue stays empty for ``idle_seconds`` (two readings of its counts
  in a row say nothing is visible, in flight or delayed), or after ``max_tasks`` /
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
from typing import Any, Callable, Mapping

from tqflow.engine import time_limit
from tqflow.engine.allowed_modules import AllowedModules
from tqflow.engine.contracts import CAVESource, Lease, Queue, Storage
from tqflow.engine.lease_keeper import LeaseKeeper
from tqflow.engine.messages import TaskMessage, bind, decode, item_key, resolve
from tqflow.engine.options import WorkerOptions
from tqflow.engine.outputs import (
    error_path,
    failed_attempt,
    output_path,
    output_record,
    storable_result,
)
from tqflow.engine.reports import WorkerReports
from tqflow.engine.retries import RetryRule, retry_delay
from tqflow.engine.task_resources import ResourceMeter, TaskResources
from tqflow.errors import (
    BadArgumentsError,
    CorruptFileError,
    LeaseLostError,
    MessageError,
    NoDeadLetterQueueError,
    QueueUnreachableError,
    TaskTimeoutError,
)

logger = logging.getLogger("tqflow.worker")


#: Pause after an empty receive, doubled after each further one up to the last: an idle
#: worker without long polls sends ~1 receive a second, not ~20 (each billed on SQS).
_FIRST_EMPTY_PAUSE = 0.05
_LAST_EMPTY_PAUSE = 1.0
#: Readings of an empty queue, with an empty receive between them, before an idle worker
#: ends. SQS's counts are separate approximate attributes, not one snapshot: a worker that
#: trusted one zero ended on moto just as a failed task's retry turned visible, the retry
#: still pending (DESIGN.md facts).
_DRAINED_READINGS = 2


@dataclass
class WorkerStats:
    """What one worker did."""

    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    dead_lettered: int = 0
    timed_out: int = 0
    #: Why the loop ended: ``idle``, ``max_tasks``, ``max_seconds``, ``stopped`` or
    #: ``queue_unreachable``.
    stop_reason: str = ""
    #: What stopped the worker, when it was not a normal end.
    error: str = ""
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
            "timed_out": self.timed_out,
            "processed": self.processed,
            "stop_reason": self.stop_reason,
            "error": self.error,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "mean_task_seconds": (
                round(self.task_seconds_total / self.succeeded, 6) if self.succeeded else None
            ),
            "median_task_seconds": round(statistics.median(recent), 6) if recent else None,
            "p95_task_seconds": round(p95, 6) if p95 is not None else None,
        }


@dataclass
class _RunningTask:
    """The task the worker is running now, as the lease keeper's deadline check sees it."""

    lease: Lease
    key: str
    thread_id: int
    deadline: float
    #: What the task is told when it is stopped at its deadline.
    reason: str
    interrupted_at: float | None = None
    abandoned: bool = False


class Worker:
    """Drains a queue into storage. ``run()`` returns `WorkerStats`.

    Example:
        ```python
        from blocks import CloudFilesStorage, LocalTaskQueue
        from tqflow.engine.worker import Worker

        stats = Worker(LocalTaskQueue(queue_name="demo"), CloudFilesStorage(), idle_seconds=5).run()
        ```
    """

    #: How long a task past its deadline gets to stop before it is abandoned to its lease.
    interrupt_grace_seconds: float = 30.0

    def __init__(
        self,
        queue: Queue,
        storage: Storage,
        options: WorkerOptions | None = None,
        *,
        cave: CAVESource | None = None,
        injectables: Mapping[str, Callable[[], Any]] | None = None,
        stop: threading.Event | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        **settings: Any,
    ) -> None:
        """``settings`` are `WorkerOptions` fields, over ``options``
        (``Worker(queue, storage, idle_seconds=5)``)."""
        self.queue = queue
        self.storage = storage
        self.options = WorkerOptions.of(options, **settings)
        self.retry_rule = RetryRule(self.options.retry_when)
        self.stop = stop or threading.Event()
        self.log = log or logger
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.stats = WorkerStats()
        self.meter = ResourceMeter()
        self.reports = WorkerReports(storage, self.name, self.options.report_seconds, self.log)
        self.cave = cave
        self._cave_client: Any = None
        self._injectables: dict[str, Callable[[], Any]] = {
            "storage": lambda: self.storage,
            "cave": self._get_cave_client,
            **(injectables or {}),
        }
        import_modules = self.options.import_modules
        # python-task-queue RegisteredTask classes register on import; the modules named to
        # be imported are allowed, as are the queue block's and the worker's own.
        self.allowed = AllowedModules(
            [*queue.allowed_modules, *self.options.allow, *import_modules], storage
        )
        self._buffer: deque[Lease] = deque()
        self._task: _RunningTask | None = None
        self._task_lock = threading.Lock()
        self._in_receive = False
        self._unreachable_since: float | None = None
        self._unreachable_errors = 0
        #: Set by the process entry when it handles SIGALRM: interrupt tasks by signal.
        self.interrupt_by_signal = False
        #: Called when a task would not stop within `interrupt_grace_seconds` of its deadline
        #: (the process entry exits, so that the process is replaced).
        self.on_stuck_task: Callable[[str], None] | None = None
        self.options.import_code()

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

    # -- control (the process entry calls these from its signal handlers) -------------------

    def request_stop(self) -> bool:
        """Stop taking leases and release held ones at once. Returns whether a task or a
        receive (an SQS long poll of up to 20 s) is running right now, so the caller can
        interrupt it."""
        self.stop.set()
        return self._task is not None or self._in_receive

    def timed_out_task(self) -> bool:
        """Whether the running task is past its deadline and was told to stop (the SIGALRM
        handler then raises `TaskTimeoutError` in it)."""
        task = self._task
        return task is not None and task.interrupted_at is not None

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        started = time.monotonic()
        next_progress = started + self.options.progress_seconds
        idle_since: float | None = None
        self.log.info(
            "worker %s draining %s into %s",
            self.name,
            self.queue.queue_name,
            self.storage.cloudpath,
        )
        keeper = LeaseKeeper(
            self.queue,
            self.queue.lease_seconds,
            self.stop,
            self.log,
            ack_seconds=self.options.ack_seconds,
            on_tick=self.check_deadline,
        )
        empty_polls = 0
        drained_readings = 0
        self.reports.start()
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
                        if empty_polls >= 2 and (
                            time.monotonic() - idle_since >= self.options.idle_seconds
                        ):
                            drained_readings = drained_readings + 1 if self._drained() else 0
                        if drained_readings >= _DRAINED_READINGS:
                            self.stats.stop_reason = "idle"
                            break
                        self.stop.wait(
                            retry_delay(
                                empty_polls,
                                base_seconds=_FIRST_EMPTY_PAUSE,
                                max_seconds=_LAST_EMPTY_PAUSE,
                            )
                        )
                        continue
                    idle_since, empty_polls, drained_readings = None, 0, 0
                    self._process(lease)
                    if time.monotonic() >= next_progress:
                        self._log_progress(started)
                        next_progress = time.monotonic() + self.options.progress_seconds
            except KeyboardInterrupt:
                if not self.stop.is_set():
                    raise
            except QueueUnreachableError as exc:
                self.stats.stop_reason = "queue_unreachable"
                self.stats.error = str(exc)
                self.log.error("worker %s stops: %s", self.name, exc)
            # Leases still buffered are released when the keeper exits.
        if self.stop.is_set():
            self.stats.stop_reason = "stopped"
        self.stats.elapsed_seconds = time.monotonic() - started
        self.reports.close(ended=self.stats.stop_reason)
        self.log.info(
            "worker %s finished (%s): %s", self.name, self.stats.stop_reason, self._summary()
        )
        return self.stats

    def _limit_reached(self, started: float) -> str:
        if self.options.max_tasks is not None and self.stats.processed >= self.options.max_tasks:
            return "max_tasks"
        if (
            self.options.max_seconds is not None
            and time.monotonic() - started >= self.options.max_seconds
        ):
            return "max_seconds"
        return ""

    def _next_lease(self) -> Lease | None:
        if not self._buffer:
            wanted = self._prefetch()
            if self.options.max_tasks is not None:
                wanted = max(1, min(wanted, self.options.max_tasks - self.stats.processed))
            self._in_receive = True
            try:
                leases = self._reach(self.queue.receive, max_messages=wanted)
            finally:
                self._in_receive = False
            if not leases:
                return None
            self._keeper.hold(leases)
            if self.stop.is_set():  # stopped during the receive: the keeper releases them
                return None
            self._buffer.extend(leases)
        return self._buffer.popleft()

    def _reach(self, call: Callable[..., Any], **kwargs: Any) -> Any:
        """``call(**kwargs)`` on the queue; while the queue cannot be reached, wait and return
        ``None``, and raise `QueueUnreachableError` once that has lasted
        ``queue_unreachable_seconds``."""
        try:
            result = call(**kwargs)
        except Exception as exc:
            now = time.monotonic()
            if self._unreachable_since is None:
                self._unreachable_since = now
            self._unreachable_errors += 1
            down = now - self._unreachable_since
            if down >= self.options.queue_unreachable_seconds:
                raise QueueUnreachableError(
                    f"queue {self.queue.queue_name!r} unreachable for {down:.0f} s "
                    f"(queue_unreachable_seconds={self.options.queue_unreachable_seconds:g}); last "
                    f"error: {type(exc).__name__}: {exc}"
                ) from exc
            self.log.warning(
                "queue %s unreachable for %.0f s (%s: %s); trying again",
                self.queue.queue_name,
                down,
                type(exc).__name__,
                exc,
            )
            self.stop.wait(min(10.0, 0.5 * 2 ** min(self._unreachable_errors, 5)))
            return None
        self._unreachable_since, self._unreachable_errors = None, 0
        return result

    def _prefetch(self) -> int:
        """Messages to lease per receive: enough to cover ``prefetch_seconds`` of work at the
        recent task duration, 1 to 10. Short tasks batch their receives (SQS bills per
        request); long tasks take one at a time, so no lease waits behind a long task while
        another worker is idle."""
        if self.options.prefetch is not None:
            return max(1, self.options.prefetch)
        recent = list(itertools.islice(reversed(self.stats.recent_task_seconds), 20))
        if not recent:
            return 1
        mean = sum(recent) / len(recent)
        return max(1, min(10, int(self.options.prefetch_seconds / max(mean, 1e-3))))

    def _drained(self) -> bool:
        """Empty means nothing visible, in flight (another worker's task may still fail and
        come back) or delayed. Called only after consecutive empty receives, and the loop
        ends only when `_DRAINED_READINGS` readings in a row say so."""
        self._keeper.flush_acks()  # our own finished tasks are not "in flight"
        counts = self._reach(self.queue.counts)
        return counts is not None and counts.pending == 0

    # -- one task -------------------------------------------------------------------------------

    def _process(self, lease: Lease) -> None:
        """Run one message to its end: acknowledged, retried or dead-lettered. Never raises
        for anything that concerns this message alone."""
        message: TaskMessage | None = None
        try:
            message = decode(lease.body, self.options.default_batch)
            self.allowed.check(message)
            func = resolve(message.fn)
            bound = bind(func, message, self._injectables)
        except MessageError as exc:
            self._dead_letter(lease, message, exc)
            return
        except Exception as exc:  # e.g. the CAVE client cannot be built now: may work later
            self._failed(lease, message or self._unreadable(lease), exc)
            return

        out = output_path(message.batch, message.key)
        task: _RunningTask | None = None
        used: TaskResources | None = None
        try:
            if not self.options.overwrite and self.storage.exists(out):
                self._ack(lease)
                self._count(message, "skipped")
                return
            start = self.meter.start()
            task = self._start_task(lease, message)
            try:
                result = func(*bound.args, **bound.kwargs)
            finally:
                self._end_task()
                used = self.meter.stop(start)
            record = output_record(
                message,
                storable_result(message, result),
                attempt=lease.receive_count,
                seconds=used.wall_seconds,
                worker=self.name,
                resources=used.as_dict(),
            )
            self.storage.put_json(out, record)
        except TaskTimeoutError:
            self._end_task()  # raised while the task was being ended: end it now
            self.stats.timed_out += 1
            reason = task.reason if task is not None else "timed out"
            self._failed(lease, message, TaskTimeoutError(reason), used)
            return
        except Exception as exc:
            if self.retry_rule.retries(lease.receive_count, exc):
                self._failed(lease, message, exc, used)
            else:
                self._dead_letter(lease, message, exc, used)
            return
        self._ack(lease)
        self._count(message, "succeeded", used)
        self.log.debug("item %s done in %.3fs", message.key, used.wall_seconds)

    def _ack(self, lease: Lease) -> None:
        self._keeper.ack(lease)

    # -- time limits ----------------------------------------------------------------------------

    def _start_task(self, lease: Lease, message: TaskMessage) -> _RunningTask:
        timeout = message.task_timeout_seconds or self.options.task_timeout_seconds
        now = time.monotonic()
        deadline, reason = float("inf"), ""
        if timeout:
            deadline = now + timeout
            reason = f"timed out after {timeout:g} s (task_timeout_seconds={timeout:g})"
        # The longest lease the backend allows (SQS: 12 h from receipt): a task still running
        # then would be received by a second worker while this one runs it.
        cap = self.queue.max_lease_seconds
        cap_deadline = lease.received_at + cap - min(60.0, cap / 10)
        if cap_deadline < deadline:
            deadline = cap_deadline
            reason = (
                f"stopped before the queue's longest lease ({cap:g} s from receipt) ran out, so "
                "that no second worker runs it meanwhile; split the task, or set "
                "task_timeout_seconds below that"
            )
        task = _RunningTask(lease, message.key, threading.get_ident(), deadline, reason)
        with self._task_lock:
            self._task = task
        return task

    def _end_task(self) -> None:
        with self._task_lock:
            task, self._task = self._task, None
            if (
                task is not None
                and task.interrupted_at is not None
                and not self.interrupt_by_signal
            ):
                time_limit.cancel_in_thread(task.thread_id)

    def check_deadline(self) -> None:
        """Called by the lease keeper's thread: interrupt the running task once it is past its
        deadline; abandon it to its lease if it does not stop within the grace."""
        now = time.monotonic()
        stuck = ""
        with self._task_lock:
            task = self._task
            if task is None or now < task.deadline:
                return
            if task.interrupted_at is None:
                task.interrupted_at = now
                self.log.warning("item %s %s: stopping it", task.key, task.reason)
                if self.interrupt_by_signal:
                    time_limit.signal_main_thread()
                else:
                    time_limit.raise_in_thread(task.thread_id)
            elif now - task.interrupted_at > self.interrupt_grace_seconds and not task.abandoned:
                task.abandoned = True
                self._keeper.drop(task.lease)
                stuck = (
                    f"item {task.key} {task.reason} but did not stop within "
                    f"{self.interrupt_grace_seconds:g} s (blocked in C code?); its lease is no "
                    "longer extended"
                )
        if stuck:
            self.log.error(stuck)
            if self.on_stuck_task is not None:
                self.on_stuck_task(stuck)

    # -- failures -------------------------------------------------------------------------------

    def _unreadable(self, lease: Lease) -> TaskMessage:
        """A stand-in for a message that could not be read, named after its body."""
        return TaskMessage(
            fn="", key=item_key({"body": lease.body}), batch=self.options.default_batch
        )

    def _failed(
        self,
        lease: Lease,
        message: TaskMessage,
        exc: Exception,
        used: TaskResources | None = None,
    ) -> None:
        """Record the failure and leave the message to come back after a backoff; the queue's
        redrive moves it to the dead-letter queue after ``max_receive_count`` receives."""
        trace = _traceback(exc)
        self._count(message, "failed", used, exc, trace)
        self.log.warning(
            "item %s failed (attempt %d of %d): %s: %s",
            message.key,
            lease.receive_count,
            self.queue.max_receive_count,
            type(exc).__name__,
            exc,
        )
        self._record_error(message, lease, exc, trace, used=used)
        delay = retry_delay(
            lease.receive_count,
            base_seconds=self.options.retry_base_seconds,
            max_seconds=self.queue.lease_seconds,
        )
        if lease.receive_count >= self.queue.max_receive_count:
            delay = 0  # the next receive moves it to the dead-letter queue: no need to wait
        try:
            self._keeper.retry_later(lease, delay)
        except LeaseLostError:
            pass  # another worker holds it already
        except Exception as retry_exc:  # it comes back when its lease ends instead
            self.log.warning("could not set the retry delay of item %s: %s", message.key, retry_exc)

    def _dead_letter(
        self,
        lease: Lease,
        message: TaskMessage | None,
        exc: Exception,
        used: TaskResources | None = None,
    ) -> None:
        self._keeper.drop(lease)
        reason = f"{type(exc).__name__}: {exc}"
        trace = _traceback(exc)
        try:
            moved = self.queue.dead_letter(lease, reason)
        except NoDeadLetterQueueError as missing:
            # A python-task-queue queue as it is: the message is kept, whole, in its error
            # record, with the advice; then removed, so the queue drains instead of
            # re-delivering it until its retention ends.
            self._record_error(
                message, lease, exc, trace, used=used, body=lease.body, advice=str(missing)
            )
            try:
                self.queue.ack([lease])
            except Exception as ack_exc:
                self.log.warning("could not remove message %s: %s", lease.message_id, ack_exc)
            self._count(message, "dead_lettered", used, exc, trace)
            self.log.warning(
                "message %s not runnable (%s); kept in its error record: %s",
                lease.message_id,
                reason,
                missing,
            )
            return
        except Exception as dlq_exc:
            # It stays in the queue and comes back; the redrive policy moves it after
            # max_receive_count receives. The reason is kept in its error record.
            self._count(message, "failed", used, exc, trace)
            self.log.warning(
                "could not dead-letter message %s (%s: %s); it is retried instead",
                lease.message_id,
                type(dlq_exc).__name__,
                dlq_exc,
            )
            self._record_error(
                message, lease, exc, trace, used=used, body=lease.body if message is None else None
            )
            return
        if moved:
            self._count(message, "dead_lettered", used, exc, trace)
        self.log.warning(
            "message %s moved to the dead-letter queue: %s", lease.message_id, _short(reason)
        )
        if message is not None:  # an unreadable body stays, with its reason, in the DLQ only
            self._record_error(message, lease, exc, trace, used=used)

    def _record_error(
        self,
        message: TaskMessage | None,
        lease: Lease,
        exc: BaseException,
        trace: str,
        used: TaskResources | None = None,
        **extra: Any,
    ) -> None:
        """Append this attempt to the item's error record (an unreadable message's record is
        named after its body), with ``extra`` fields (``None`` ones left out)."""
        if message is None:
            message = self._unreadable(lease)
        path = error_path(message.batch, message.key)
        attempt = failed_attempt(
            attempt=lease.receive_count,
            error=exc,
            traceback=trace,
            worker=self.name,
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

    # -- reporting ------------------------------------------------------------------------------

    def _count(
        self,
        message: TaskMessage | None,
        outcome: str,
        used: TaskResources | None = None,
        exc: BaseException | None = None,
        trace: str = "",
    ) -> None:
        """Count how a message ended, in the worker's stats and its batch's report (a failure
        with its error type and ``trace``, its traceback)."""
        if outcome == "succeeded":
            assert used is not None
            self.stats.record_success(used.wall_seconds)
        else:
            setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        batch = message.batch if message is not None else self.options.default_batch
        error = None
        if exc is not None:
            key = message.key if message is not None else "(unreadable body)"
            error = (type(exc).__name__, key, trace)
        self.reports.count(batch, outcome, used, error)

    def _summary(self) -> str:
        s = self.stats
        return (
            f"{s.succeeded} succeeded, {s.skipped} skipped (already done), {s.failed} failed, "
            f"{s.dead_lettered} dead-lettered"
        )

    def _log_progress(self, started: float) -> None:
        rate = self.stats.processed / max(1e-9, time.monotonic() - started)
        self.log.info("worker %s: %s; %.1f tasks/s", self.name, self._summary(), rate)


def _traceback(exc: BaseException) -> str:
    """A failure's traceback, formatted once for its error record and its batch's report."""
    return "".join(traceback.format_exception(exc))


def _short(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text):,} characters)"
