"""A queue out of reach: the worker waits while it cannot reach its queue (a network blip, an
SQS endpoint restarting), and stops once that has lasted ``queue_unreachable_seconds``."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from tqflow.engine.retries import retry_delay
from tqflow.errors import QueueUnreachableError

#: First and longest pause between two tries while the queue is out of reach.
FIRST_PAUSE_SECONDS = 0.5
LAST_PAUSE_SECONDS = 10.0


class QueueReach:
    """``reach(call, **kwargs)``: ``call(**kwargs)`` on the queue; while the queue cannot be
    reached, a pause and ``None``; `QueueUnreachableError` once that has lasted
    ``unreachable_seconds``."""

    def __init__(
        self,
        queue_name: str,
        unreachable_seconds: float,
        stop: threading.Event,
        log: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.queue_name = queue_name
        self.unreachable_seconds = unreachable_seconds
        self.stop = stop
        self.log = log
        self._since: float | None = None
        self._errors = 0

    def __call__(self, call: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            result = call(**kwargs)
        except Exception as exc:
            now = time.monotonic()
            if self._since is None:
                self._since = now
            self._errors += 1
            down = now - self._since
            if down >= self.unreachable_seconds:
                raise QueueUnreachableError(
                    f"queue {self.queue_name!r} unreachable for {down:.0f} s "
                    f"(queue_unreachable_seconds={self.unreachable_seconds:g}); last "
                    f"error: {type(exc).__name__}: {exc}"
                ) from exc
            self.log.warning(
                "queue %s unreachable for %.0f s (%s: %s); trying again",
                self.queue_name,
                down,
                type(exc).__name__,
                exc,
            )
            pause = retry_delay(
                self._errors, base_seconds=FIRST_PAUSE_SECONDS, max_seconds=LAST_PAUSE_SECONDS
            )
            self.stop.wait(pause)
            return None
        self._since, self._errors = None, 0
        return result
