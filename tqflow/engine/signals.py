"""The one place tqflow handles SIGTERM and SIGINT: `stop_on_signals`, which every entry point
that stops on them installs (the worker's process entry, the ``worker`` flow around its
processes, ``tqflow enqueue``, ``tqflow demo``). Library code installs no handler; the one
other handler is the warm-worker server's (`tqflow.fleet.warm_workers`), which only notes a
stop so that it forks nothing more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any, Callable, Iterator

from tqflow.engine.time_limit import SignalTimeLimit


@contextlib.contextmanager
def stop_on_signals(
    request_stop: Callable[[], bool],
    time_limit: SignalTimeLimit | None = None,
    *,
    at_once: str = (
        "tqflow worker: second {signal}: exiting now; messages still held return to the queue "
        "when their leases end"
    ),
) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT call ``request_stop`` (`Worker.request_stop`: no new
    lease is taken, held leases are released at once), and when it returns True, a running task
    or long-poll receive is interrupted the way Ctrl-C interrupts code. A second request exits at once (whatever is held returns to the queue
    when its lease ends). SIGALRM goes to ``time_limit`` (`tqflow.engine.time_limit`), which
    stops a task past its deadline.

    ``at_once`` is what a second request writes to stderr (``{signal}``: its name) before the
    process exits with 128 + the signal.

    One Ctrl-C is one request, though it arrives twice: a local fleet's workers share the
    terminal's process group, so they get its SIGINT, and then the fleet's SIGTERM as it stops
    them. So the second request is the same signal again (Ctrl-C twice, SIGTERM twice); the
    other kind of the two, the first time it comes, is part of the first request.

    Installs handlers only in the main thread (Python allows no other) and restores the
    previous ones on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: set[int] = set()

    def handle(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum in received:
            sys.stderr.write(at_once.format(signal=name) + "\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        first = not received
        received.add(signum)
        if not first:
            return  # SIGINT then SIGTERM, or the other way round: one request to stop
        if request_stop():
            raise KeyboardInterrupt(f"stopped by signal {name}")

    def alarm(signum: int, frame: Any) -> None:
        if time_limit is not None:
            time_limit.on_alarm()

    handlers = {signal.SIGTERM: handle, signal.SIGINT: handle, signal.SIGALRM: alarm}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
