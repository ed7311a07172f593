"""`LeaseKeeper`: a background thread that keeps a worker's leases alive, and gives them up.

While a worker holds leases (the task running, and any prefetched), the keeper extends them
every third of the lease, so a task may run far longer than ``lease_seconds`` without another
worker receiving it. When the worker is told to stop (SIGTERM on spot preemption), the keeper
releases every held lease at once, so other workers pick the messages up without waiting for
the leases to run out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

from blocks.errors import LeaseLostError
from blocks.queues.base import Lease, TaskQueue

#: How often the keeper looks at the stop event: bounds how long a release takes.
_TICK_SECONDS = 0.05


class LeaseKeeper:
    """Extends held leases while they are held; releases them all when ``stop`` is set."""

    def __init__(
        self,
        queue: TaskQueue,
        lease_seconds: float,
        stop: threading.Event,
        logger: logging.Logger | logging.LoggerAdapter,
    ) -> None:
        self.queue = queue
        self.lease_seconds = lease_seconds
        self.stop = stop
        self.logger = logger
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tqflow-lease-keeper", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the thread and release whatever is still held."""
        self._closed.set()
        self._thread.join()
        self._release_all()

    def hold(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            for lease in leases:
                self._held[lease.message_id] = lease

    def drop(self, lease: Lease) -> None:
        """Stop keeping ``lease`` (acknowledged, dead-lettered or left to lapse)."""
        with self._lock:
            self._held.pop(lease.message_id, None)

    def _run(self) -> None:
        interval = self.lease_seconds / 3
        next_extension = time.monotonic() + interval
        while not self._closed.is_set():
            if self.stop.is_set():
                self._release_all()
                self._closed.wait(_TICK_SECONDS)
                continue
            if time.monotonic() >= next_extension:
                self._extend_all()
                next_extension = time.monotonic() + interval
            self._closed.wait(_TICK_SECONDS)

    def _extend_all(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            try:
                self.queue.extend(lease, self.lease_seconds)
            except LeaseLostError:
                self.drop(lease)
            except Exception as exc:  # the queue may be briefly unreachable: try next time
                self.logger.warning("could not extend lease of message %s: %s", lease.message_id, exc)

    def _release_all(self) -> None:
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for lease in held:
            try:
                self.queue.release(lease)
            except Exception as exc:
                self.logger.warning(
                    "could not release message %s (it returns when its lease ends): %s",
                    lease.message_id,
                    exc,
                )
