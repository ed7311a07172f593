"""The retry rule, in one place.

A task that raises is retried by the queue itself: the worker leaves the message unacknowledged
and shortens its lease to a backoff delay, so the message becomes visible again after that delay
(SQS: ChangeMessageVisibility). Each receive counts; after ``max_receive_count`` receives the
queue's redrive policy moves the message to the dead-letter queue. Nothing else retries a task.

Not retried — dead-lettered at once, with the reason:

- a message no retry can fix (undecodable body, unimportable or not-allowed function,
  arguments that do not bind): `MessageError`;
- a task that raises `PermanentTaskError` (a result that is not JSON is one);
- a failure the worker's ``retry_when(receive_count, exception)`` says not to retry, as
  dramatiq's ``Retries`` middleware takes it, named by its path (``"mylab.tasks:should_retry"``:
  it travels with the worker's options to worker processes and pods).

A task that times out is retried like any failure (`tqflow.engine.time_limit`).
"""

from __future__ import annotations

from typing import Callable, Optional

from tqflow.errors import MessageError, PermanentTaskError

RetryWhen = Callable[[int, Exception], bool]


class RetryRule:
    """Whether a failed task is retried. ``retry_when`` is the ``package.module:function`` path
    of a `RetryWhen`."""

    def __init__(self, retry_when: Optional[str] = None) -> None:
        from tqflow.engine.calls import resolve

        self.retry_when: Optional[RetryWhen] = (
            resolve(retry_when, "retry_when rule") if retry_when else None
        )

    def retries(self, receive_count: int, exc: Exception) -> bool:
        if isinstance(exc, (MessageError, PermanentTaskError)):
            return False
        if self.retry_when is not None:
            try:
                return bool(self.retry_when(receive_count, exc))
            except Exception:  # a broken rule must not cost the item: retry it
                return True
        return True


def retry_delay(receive_count: int, *, base_seconds: float, max_seconds: float) -> float:
    """Seconds until a failed task is visible again: ``base * 2**(n-1)``, at most
    ``max_seconds`` (the lease), where ``n`` is how many times it has been received. The worker
    pauses by the same rule after its ``n``-th empty receive in a row."""
    return min(max_seconds, base_seconds * 2 ** max(0, receive_count - 1))
