"""Stopping a task that runs past its time limit.

The worker's lease-keeper thread watches the running task's deadline (`Worker.check_deadline`)
and, once it has passed, interrupts the thread that runs the task, one of two ways:

- **a signal** (``SIGALRM``) sent to the main thread, when the worker's process entry has
  installed the handler for it (`tqflow.engine.process.stop_on_signals`, the one place tqflow
  installs handlers). It interrupts sleeps, lock waits and socket reads too;
- **an asynchronous exception** (``PyThreadState_SetAsyncExc``) otherwise: it works in any
  thread, but only between Python bytecodes.

Either way Python raises `TaskTimeoutError` in the task at its next bytecode. Code blocked inside
a C extension (a long NumPy or C++ call) is stopped only when it returns to Python; a task that
does not stop within the grace the worker gives it is abandoned to its lease (the worker stops
extending it) and the worker's process entry exits so that its pod or process is replaced.
"""

from __future__ import annotations

import ctypes
import signal
import threading

from tqflow.errors import TaskTimeoutError


def raise_in_thread(thread_id: int) -> None:
    """Make `TaskTimeoutError` raise in thread ``thread_id`` at its next bytecode."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(TaskTimeoutError)
    )


def cancel_in_thread(thread_id: int) -> None:
    """Withdraw an exception `raise_in_thread` asked for that has not been raised yet."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


def signal_main_thread() -> None:
    """Send SIGALRM to the main thread, whose handler (installed by the process entry) raises
    `TaskTimeoutError` when the running task is past its deadline."""
    main = threading.main_thread().ident
    assert main is not None
    signal.pthread_kill(main, signal.SIGALRM)
