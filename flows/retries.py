"""The retry rule, in one place.

A task that raises is retried by the queue itself: the worker leaves the message unacknowledged
and shortens its lease to a backoff delay, so the message becomes visible again after that delay
(SQS: ChangeMessageVisibility). Each receive counts; after ``max_receive_count`` receives the
queue's redrive policy moves the message to the dead-letter queue. Nothing else retries a task.

A message that no retry can fix (undecodable body, unimportable function, arguments that do not
bind) is dead-lettered at once instead.
"""

from __future__ import annotations


def retry_delay(receive_count: int, *, base_seconds: float, max_seconds: float) -> float:
    """Seconds until a failed task is visible again: ``base * 2**(n-1)``, at most
    ``max_seconds`` (the lease), where ``n`` is how many times it has been received."""
    return min(max_seconds, base_seconds * 2 ** max(0, receive_count - 1))
