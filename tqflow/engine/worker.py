"""The worker loop: lease a task, run it, write its output, then acknowledge it.

The contract (DESIGN.md, "Worker loop"):

- The output record is written *before* the message is acknowledged, so an acknowledged task
  always has its output; a crash in between only re-runs a task whose output exists, and the
  next worker skips it.
- The output record is also kept for the batch's next shard (`tqflow.engine.shards`: up to
  1,000 records a file, written when full, when the queue is found empty, and at the end),
  which is what the analysis reads; the output stays the truth.
- An item whose output exists is skipped (and acknowledged) unless ``overwrite``.
- Leases are extended in the background while a task runs (`LeaseKeeper`).
- A task that raises is retried by the queue — whatever it raises: ``sys.exit()`` and other
  `BaseException`s of a task are its failures (`TaskExitError`), never the worker's end — and a
  message no retry can fix is dead-lettered at once (`tqflow.engine.failures`, by the rule of `tqflow.engine.retries`).
- A task past its deadline is interrupted (`tqflow.engine.time_limit`, a strategy chosen when
  the worker is made) and retried like any failure.
- Nothing that goes wrong with one message ends the loop. Only a queue unreachable for longer
  than ``queue_unreachable_seconds`` stops the worker (`StopReason.QUEUE_UNREACHABLE`).
- When ``stop`` is set (the process entry sets it on SIGTERM), no new lease is taken and every
  held lease is released at once.
- The loop ends when the queue stays empty for ``idle_seconds`` (two readings of its counts in
  a row: nothing visible, and with ``wait_for_in_flight`` nothing in flight or delayed either),
  after ``max_tasks`` / ``max_seconds``, or between two tasks when its fleet unit is told to
  drain (`tqflow.engine.drain`).

Logs: every message's failure goes to ``log`` (the process's stderr: a pod's own log); the
``progress_log`` (a worker flow run's log, in the Prefect API) gets the start, a line every
``progress_seconds`` with the counters and the failures since the last line by error type, and
the end, however many tasks fail.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, Optional

from tqflow.engine.allowed_modules import AllowedModules
from tqflow.engine.calls import bind, resolve
from tqflow.engine.contracts import CAVESource, Lease, Queue, Storage
from tqflow.engine.drain import DrainNotice
from tqflow.engine.failures import Failures
from tqflow.engine.layout import output_path
from tqflow.engine.lease_keeper import LeaseKeeper
from tqflow.engine.messages import TaskMessage, decode
from tqflow.engine.options import WorkerOptions
from tqflow.engine.outputs import encoded_output, output_record
from tqflow.engine.reports import WorkerReports
from tqflow.engine.retries import RetryRule, retry_delay
from tqflow.engine.shards import ShardWriter
from tqflow.engine.stats import Outcome, StopReason, WorkerStats
from tqflow.engine.task_resources import ResourceMeter, TaskResources
from tqflow.engine.time_limit import AsyncExceptionTimeLimit, TimeLimit, deadline
from tqflow.engine.unreachable import QueueReach
from tqflow.errors import (
    MessageError,
    QueueUnreachableError,
    TaskExitError,
    TaskTimeoutError,
    WorkerConfigError,
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


class Worker:
    """Drains a queue into storage. ``run()`` returns `WorkerStats`.

    Example:
        ```python
        from blocks import CloudFilesStorage, LocalTaskQueue
        from tqflow.engine.options import WorkerOptions
        from tqflow.engine.worker import Worker

        queue = LocalTaskQueue(queue_name="demo")
        stats = Worker(queue, CloudFilesStorage(), WorkerOptions(idle_seconds=5)).run()
        ```
    """

    def __init__(
        self,
        queue: Queue,
        storage: Storage,
        options: WorkerOptions | None = None,
        *,
        cave: CAVESource | None = None,
        stop: threading.Event | None = None,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        progress_log: logging.Logger | logging.LoggerAdapter | None = None,
        time_limit: TimeLimit | None = None,
    ) -> None:
        """``time_limit``: how a task past its deadline is stopped (default: by an
        asynchronous exception; the process entry gives a `SignalTimeLimit`)."""
        self.queue = queue
        self.storage = storage
        self.options = options or WorkerOptions()
        self.options.import_code()
        self.retry_rule = RetryRule(self.options.retry_when)
        self.stop = stop or threading.Event()
        self.log = log or logger
        self.progress_log = progress_log or self.log
        self.time_limit = time_limit or AsyncExceptionTimeLimit(self.log)
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.stats = WorkerStats()
        self.meter = ResourceMeter()
        unit, batch = self.options.unit, self.options.default_batch
        self.reports = WorkerReports(
            storage,
            self.name,
            self.options.report_seconds,
            self.log,
            unit=unit,
            heartbeat_batch=batch if unit is not None else None,
        )
        self.drain = (
            DrainNotice(storage, batch, unit, self.options.report_seconds, self.log)
            if unit is not None
            else None
        )
        self.shards = ShardWriter(storage, self.name, self.log)
        self.cave = cave
        self._cave_client: Any = None
        # python-task-queue RegisteredTask classes register on import; the modules named to
        # be imported are allowed, as are the queue block's and the worker's own.
        self.allowed = AllowedModules(
            [*queue.allowed_modules, *self.options.allow, *self.options.import_modules], storage
        )
        self._buffer: deque[Lease] = deque()
        #: Each buffered lease's message, decoded when it was received, and whether its output
        #: existed then (asked once for the whole receive), by receipt (`_read_receive`).
        self._received: dict[str, tuple[TaskMessage, Optional[bool]]] = {}
        self._busy = False  # a task or a receive is running: a stop interrupts it
        self._reach = QueueReach(
            queue.queue_name, self.options.queue_unreachable_seconds, self.stop, self.log
        )
        self._failures_since_progress: Counter[str] = Counter()

    def _injected(self) -> dict[str, Callable[[], Any]]:
        return {"storage": lambda: self.storage, "cave": self._cave_client_of_block}

    def _cave_client_of_block(self) -> Any:
        """The worker's one CAVEclient, built from its CAVE block on first use."""
        if self._cave_client is None:
            if self.cave is None:
                raise WorkerConfigError(
                    "the task function takes a `cave` client but this worker has no CAVE "
                    "block; pass one to the pipeline or worker (cave=CAVECredentials.load(...))"
                )
            self._cave_client = self.cave.get_client()
        return self._cave_client

    def request_stop(self) -> bool:
        """Stop taking leases and release held ones at once (the process entry calls it from
        its signal handler). Returns whether a task or a receive (an SQS long poll of up to
        20 s) is running right now, so the caller can interrupt it."""
        self.stop.set()
        return self._busy

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> WorkerStats:
        started = time.monotonic()
        next_progress = started + self.options.progress_seconds
        self.progress_log.info(
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
        )
        failures = Failures(
            self.queue,
            self.storage,
            keeper,
            self._count,
            self.log,
            worker=self.name,
            default_batch=self.options.default_batch,
            retry_base_seconds=self.options.retry_base_seconds,
        )
        idle_since: float | None = None
        empty_polls = drained_readings = 0
        self.reports.start()
        self.time_limit.start()
        with keeper:
            try:
                while not self.stop.is_set():
                    reason = self._limit_reached(started)
                    if reason is not None:
                        self.stats.stop_reason = reason
                        break
                    lease = self._next_lease(keeper)
                    if lease is None:
                        if idle_since is None:
                            self.shards.flush()  # the analysis may run while the queue is empty
                        idle_since = idle_since or time.monotonic()
                        empty_polls += 1
                        if empty_polls >= 2 and (
                            time.monotonic() - idle_since >= self.options.idle_seconds
                        ):
                            drained_readings = drained_readings + 1 if self._drained(keeper) else 0
                        if drained_readings >= _DRAINED_READINGS:
                            self.stats.stop_reason = StopReason.IDLE
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
                    self._process(lease, keeper, failures)
                    if time.monotonic() >= next_progress:
                        self._log_progress(started)
                        next_progress = time.monotonic() + self.options.progress_seconds
            except KeyboardInterrupt:
                if not self.stop.is_set():
                    raise
            except QueueUnreachableError as exc:
                self.stats.stop_reason = StopReason.QUEUE_UNREACHABLE
                self.stats.error = str(exc)
                self.progress_log.error("worker %s stops: %s", self.name, exc)
            finally:
                self.time_limit.close()
            # Leases still buffered are released when the keeper exits.
        self.shards.flush()
        if self.stop.is_set():
            self.stats.stop_reason = StopReason.STOPPED
        self.stats.elapsed_seconds = time.monotonic() - started
        assert self.stats.stop_reason is not None
        self.reports.close(ended=self.stats.stop_reason.value)
        self._log_progress(started, ended=self.stats.stop_reason)
        return self.stats

    def _limit_reached(self, started: float) -> StopReason | None:
        if self.drain is not None and self.drain.requested():
            return StopReason.DRAINED
        if self.options.max_tasks is not None and self.stats.processed >= self.options.max_tasks:
            return StopReason.MAX_TASKS
        if (
            self.options.max_seconds is not None
            and time.monotonic() - started >= self.options.max_seconds
        ):
            return StopReason.MAX_SECONDS
        return None

    def _next_lease(self, keeper: LeaseKeeper) -> Lease | None:
        if not self._buffer:
            wanted = self._prefetch()
            if self.options.max_tasks is not None:
                wanted = max(1, min(wanted, self.options.max_tasks - self.stats.processed))
            self._busy = True
            try:
                leases = self._reach(self.queue.receive, max_messages=wanted)
            finally:
                self._busy = False
            if not leases:
                return None
            keeper.hold(leases)
            if self.stop.is_set():  # stopped during the receive: the keeper releases them
                return None
            self._buffer.extend(leases)
            self._received = self._read_receive(leases)
        return self._buffer.popleft()

    def _read_receive(self, leases: list[Lease]) -> dict[str, tuple[TaskMessage, Optional[bool]]]:
        """Each lease's message, decoded once, and whether its output exists, asked for all of
        a receive at once: one request for ten prefetched messages, not one before each task
        (on GCS, its batch endpoint; a trivial task paid two round trips before its ack).
        Only a hint: a body that does not decode is left to its task's own steps, which say
        what is wrong, and an output not answered for is checked before its task runs."""
        messages: dict[str, TaskMessage] = {}
        for lease in leases:
            try:
                messages[lease.receipt] = decode(lease.body, self.options.default_batch)
            except Exception:
                continue
        found: dict[str, bool] = {}
        if messages and not self.options.overwrite:
            try:
                found = self.storage.exists_many(
                    [output_path(m.batch, m.key) for m in messages.values()]
                )
            except Exception as exc:
                self.log.debug("could not check the outputs of a receive at once: %s", exc)
        return {
            receipt: (message, found.get(output_path(message.batch, message.key)))
            for receipt, message in messages.items()
        }

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

    def _drained(self, keeper: LeaseKeeper) -> bool:
        """Nothing left for this worker: nothing visible and, with ``wait_for_in_flight``,
        nothing in flight (another worker's task may still fail and come back) or delayed.
        Called only after consecutive empty receives, and the loop ends only when
        `_DRAINED_READINGS` readings in a row say so."""
        keeper.flush_acks()  # our own finished tasks are not "in flight"
        counts = self._reach(self.queue.counts)
        if counts is None:
            return False
        return (counts.pending if self.options.wait_for_in_flight else counts.visible) == 0

    # -- one message: read, check, run, store, acknowledge ------------------------------------------

    def _process(self, lease: Lease, keeper: LeaseKeeper, failures: Failures) -> None:
        """Run one message to its end: acknowledged, retried or dead-lettered. Never raises
        for anything that concerns this message alone."""
        received: tuple[TaskMessage | None, bool | None] = (None, None)
        message, done = self._received.pop(lease.receipt, received)
        try:
            if message is None:
                message = decode(lease.body, self.options.default_batch)
            self.allowed.check(message)
            func = resolve(message.fn)
            bound = bind(
                func, message.args, message.kwargs, self._injected(), key=message.key, fn=message.fn
            )
        except MessageError as exc:
            failures.dead_letter(lease, message, exc)
            return
        except BaseException as exc:  # e.g. the CAVE client cannot be built now: may work later
            failure = self._failure(exc)
            failures.retry(lease, message or failures.unreadable(lease), failure)
            return
        out = output_path(message.batch, message.key)
        used: TaskResources | None = None
        reason = "timed out"
        try:
            if done is None and not self.options.overwrite:
                done = self.storage.exists(out)
            if done:
                keeper.ack(lease)
                self._count(message, Outcome.SKIPPED)
                return
            at, reason = deadline(
                lease.received_at,
                message.task_timeout_seconds or self.options.task_timeout_seconds,
                self.queue.max_lease_seconds,
            )
            start = self.meter.start()
            self._busy = True
            try:
                with self.time_limit.running(message.key, at, reason, lambda: keeper.drop(lease)):
                    result = func(*bound.args, **bound.kwargs)
            finally:
                self._busy = False
                used = self.meter.stop(start)
            record, content = encoded_output(
                message,
                output_record(
                    message,
                    result,
                    attempt=lease.receive_count,
                    seconds=used.wall_seconds,
                    worker=self.name,
                    resources=used.as_dict(),
                ),
            )
            self.storage.put(out, content, "application/json")
            self.shards.add(message.batch, record)
        except TaskTimeoutError:
            self.time_limit.disarm()  # raised while the task was being ended: end it now
            self.stats.timed_out += 1
            failures.retry(lease, message, TaskTimeoutError(reason), used)
            return
        except BaseException as exc:
            failure = self._failure(exc)
            if self.retry_rule.retries(lease.receive_count, failure):
                failures.retry(lease, message, failure, used)
            else:
                failures.dead_letter(lease, message, failure, used)
            return
        keeper.ack(lease)
        self._count(message, Outcome.SUCCEEDED, used)
        self.log.debug("item %s done in %.3fs", message.key, used.wall_seconds)

    def _failure(self, exc: BaseException) -> Exception:
        """What a task (its import, its call) raised, as a failure of that message: an
        `Exception` as it is; a `SystemExit`, `KeyboardInterrupt` or other `BaseException` the
        task raised itself (``sys.exit()`` in a task, python-task-queue's errors) as a
        `TaskExitError` carrying it, so it is recorded, retried and dead-lettered like any
        failure. Only the worker's own stop (its signal handler's `KeyboardInterrupt`, with
        ``stop`` set) passes through, to end the loop."""
        if isinstance(exc, Exception):
            return exc
        if isinstance(exc, KeyboardInterrupt) and self.stop.is_set():
            raise exc
        failure = TaskExitError(
            f"the task raised {type(exc).__name__}({', '.join(map(repr, exc.args))}), which "
            "would have ended the worker: a task ends by returning a result or raising an "
            "Exception (sys.exit() in a task is taken as a failure)"
        )
        failure.__cause__ = exc
        return failure.with_traceback(exc.__traceback__)

    # -- reporting ------------------------------------------------------------------------------

    def _count(
        self,
        message: TaskMessage | None,
        outcome: Outcome,
        used: TaskResources | None = None,
        exc: BaseException | None = None,
        trace: str = "",
    ) -> None:
        """Count how a message ended, in the worker's stats and its batch's report (a failure
        with its error type and ``trace``, its traceback)."""
        self.stats.count(outcome, used.wall_seconds if used is not None else None)
        batch = message.batch if message is not None else self.options.default_batch
        error = None
        if exc is not None:
            self._failures_since_progress[type(exc).__name__] += 1
            key = message.key if message is not None else "(unreadable body)"
            error = (type(exc).__name__, key, trace)
        self.reports.count(batch, outcome, used, error)

    def _log_progress(self, started: float, ended: Optional[StopReason] = None) -> None:
        """One line for the progress log: the counters, the rate, and the failures since the
        last line by error type (each one is in the worker's own log and the error records)."""
        rate = self.stats.processed / max(1e-9, time.monotonic() - started)
        failures = ", ".join(f"{kind} {n:,}" for kind, n in self._failures_since_progress.items())
        self._failures_since_progress.clear()
        since = f"; failures since the last line: {failures}" if failures else ""
        if ended is None:
            line, args = "worker %s: %s; %.1f tasks/s%s", (self.name, self.stats.summary(), rate)
            self.progress_log.info(line, *args, since)
            return
        self.progress_log.info(
            "worker %s finished (%s): %s%s", self.name, ended.value, self.stats.summary(), since
        )
