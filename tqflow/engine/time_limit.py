"""Stopping a task that runs past its time limit: a strategy chosen once, per worker.

A `TimeLimit` is armed around each task (`TimeLimit.running`) with the task's deadline, and a
timer thread of its own interrupts the thread that runs the task once the deadline has
passed, one of two ways:

- `SignalTimeLimit`: ``SIGALRM`` to the main thread, whose handler the worker's process entry
  installs (`tqflow.engine.process`, the one place tqflow installs handlers) and which calls
  `TimeLimit.on_alarm`. It interrupts sleeps, lock waits and socket reads too;
- `AsyncExceptionTimeLimit`: an asynchronous exception (``PyThreadState_SetAsyncExc``): it
  works in any thread, but only between Python bytecodes.

Either way Python raises `TaskTimeoutError` in the task. Code blocked inside a C extension (a
long NumPy or C++ call) stops only when it returns to Python; a task that does not stop within
``grace_seconds`` is abandoned (``on_abandon``: its lease is no longer extended) and
``on_stuck`` is told, which the process entry answers by exiting, so that the process is
replaced.

`deadline` is the one rule for when a task must stop: its time limit, and never past the
longest lease the queue allows from its receive (SQS: 12 h), after which a second worker
would receive it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from tqflow.errors import TaskTimeoutError


def deadline(
    received_at: float,
    timeout_seconds: Optional[float],
    max_lease_seconds: float,
    now: Optional[float] = None,
) -> tuple[float, str]:
    """When a task received at ``received_at`` (`time.monotonic`) must stop, and the reason
    it is told then; ``(inf, "")`` when it may run on."""
    now = time.monotonic() if now is None else now
    at, reason = float("inf"), ""
    if timeout_seconds:
        at = now + timeout_seconds
        reason = f"timed out after {timeout_seconds:g} s (task_timeout_seconds={timeout_seconds:g})"
    cap = received_at + max_lease_seconds - min(60.0, max_lease_seconds / 10)
    if cap < at:
        at = cap
        reason = (
            f"stopped before the queue's longest lease ({max_lease_seconds:g} s from receipt) "
            "ran out, so that no second worker runs it meanwhile; split the task, or set "
            "task_timeout_seconds below that"
        )
    return at, reason


@dataclass
class _Task:
    key: str
    thread_id: int
    deadline: float
    reason: str
    on_abandon: Callable[[], None]
    interrupted_at: Optional[float] = None
    abandoned: bool = False
    #: Set first thing when the task ends: an alarm that arrives later is not for it.
    finished: bool = False


class TimeLimit(ABC):
    """Interrupts the running task at its deadline, from a timer thread of its own. One per
    worker: `start` it before the worker's first task and `close` it after its last."""

    #: How long a task past its deadline gets to stop before it is abandoned to its lease.
    grace_seconds: float = 30.0

    def __init__(
        self,
        log: logging.Logger | logging.LoggerAdapter | None = None,
        on_stuck: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.log = log or logging.getLogger("tqflow.worker")
        self.on_stuck = on_stuck
        self._task: Optional[_Task] = None
        self._changed = threading.Condition()
        self._closed = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="tqflow-time-limit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()

    @contextlib.contextmanager
    def running(
        self, key: str, at: float, reason: str, on_abandon: Callable[[], None]
    ) -> Iterator[None]:
        """Arm the limit for the task item ``key`` the calling thread runs inside: past ``at``
        (`time.monotonic`) it is told ``reason`` as a `TaskTimeoutError`."""
        task = _Task(key, threading.get_ident(), at, reason, on_abandon)
        with self._changed:
            self._task = task
            self._changed.notify_all()
        try:
            yield
        finally:
            self.disarm()

    def disarm(self) -> None:
        """End the armed task's limit; idempotent. `running` calls it as the task ends; the
        worker calls it again when the interruption landed while the task was ending (a
        `TaskTimeoutError` can be raised at any bytecode, this method's own included)."""
        task = self._task
        if task is None:
            return
        task.finished = True
        with self._changed:
            if self._task is task:
                self._task = None
                if task.interrupted_at is not None:
                    self._withdraw(task.thread_id)  # an interruption not raised yet
                self._changed.notify_all()

    def timed_out(self) -> bool:
        """Whether the running task is past its deadline and being stopped."""
        task = self._task
        return task is not None and task.interrupted_at is not None and not task.finished

    def on_alarm(self) -> None:
        """What the process entry's SIGALRM handler calls: stop the task if it is past its
        deadline (an alarm from anything else is ignored)."""
        if self.timed_out():
            raise TaskTimeoutError

    def _watch(self) -> None:
        with self._changed:
            while not self._closed:
                task = self._task
                if task is None or task.abandoned:
                    self._changed.wait()
                    continue
                now = time.monotonic()
                if task.interrupted_at is None:
                    if now < task.deadline:
                        self._changed.wait(min(task.deadline - now, 3600.0))
                        continue
                    task.interrupted_at = now
                    self.log.warning("item %s %s: stopping it", task.key, task.reason)
                    self._interrupt(task.thread_id)
                    continue
                left = task.interrupted_at + self.grace_seconds - now
                if left > 0:
                    self._changed.wait(left)
                    continue
                task.abandoned = True
                self._abandon(task)

    def _abandon(self, task: _Task) -> None:
        stuck = (
            f"item {task.key} {task.reason} but did not stop within {self.grace_seconds:g} s "
            "(blocked in C code?); its lease is no longer extended"
        )
        task.on_abandon()
        self.log.error(stuck)
        if self.on_stuck is not None:
            self.on_stuck(stuck)

    @abstractmethod
    def _interrupt(self, thread_id: int) -> None:
        """Make `TaskTimeoutError` raise in the thread that runs the task."""

    @abstractmethod
    def _withdraw(self, thread_id: int) -> None:
        """Withdraw an interruption the task ended before it was raised."""


class AsyncExceptionTimeLimit(TimeLimit):
    """Raises `TaskTimeoutError` in the task's thread between two bytecodes: works in any
    thread and needs no signal handler."""

    def _interrupt(self, thread_id: int) -> None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(thread_id), ctypes.py_object(TaskTimeoutError)
        )

    def _withdraw(self, thread_id: int) -> None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class SignalTimeLimit(TimeLimit):
    """Sends SIGALRM to the main thread, whose handler (installed by the process entry) calls
    `on_alarm`: interrupts sleeps, lock waits and socket reads too. Tasks run in the main
    thread."""

    def _interrupt(self, thread_id: int) -> None:
        main = threading.main_thread().ident
        assert main is not None
        signal.pthread_kill(main, signal.SIGALRM)

    def _withdraw(self, thread_id: int) -> None:
        pass  # an alarm that comes after its task ended finds it `finished` and does nothing
