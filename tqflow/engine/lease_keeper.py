"""`LeaseKeeper`: a background thread that looks after a worker's leases.

- **Extends** every held lease (the running task and any prefetched) each third of the lease,
  in one batch, so a task may run far longer than ``lease_seconds`` without another worker
  receiving it — but never past the queue's ``max_lease_seconds`` from the receive (SQS refuses
  that); the worker's time limit stops a task before then (`tqflow.engine.time_limit`).
- **Sets retry delays** (`retry_later`) under the same lock as its extensions, so an extension
  in flight never restores a full lease over a retry delay just set.
- **Acknowledges** finished tasks in batches (up to 10, or after ``ack_seconds``): SQS bills
  per request. A finished task waits at most that long; if the worker dies first, the task comes
  back and the next worker skips it, since its output exists.
- **Releases** every held lease at once when the worker is told to stop (SIGTERM on spot
  preemption), after flushing acknowledgements, so other workers pick the messages up without
  waiting for the leases to run out.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

from tqflow.engine.contracts import Lease, Queue

#: How often the keeper wakes: bounds how long a release on stop takes.
_TICK_SECONDS = 0.05
_ACK_BATCH = 10


class LeaseKeeper:
    """Use as a context manager around the worker loop; exiting flushes acknowledgements and
    releases whatever is still held."""

    def __init__(
        self,
        queue: Queue,
        lease_seconds: float,
        stop: threading.Event,
        logger: logging.Logger | logging.LoggerAdapter,
        ack_seconds: float = 1.0,
    ) -> None:
        self.queue = queue
        self.lease_seconds = lease_seconds
        self.stop = stop
        self.logger = logger
        self.ack_seconds = ack_seconds
        self._held: dict[str, Lease] = {}
        self._acks: list[Lease] = []
        #: Acknowledgements sent and not yet answered.
        self._acking: set[str] = set()
        self._oldest_ack = 0.0
        self._lock = threading.Lock()
        #: Held while the visibility of held leases is changed (extension, retry delay).
        self._visibility_lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tqflow-lease-keeper", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self._thread.join()
        self.flush_acks()
        self._release_all()

    def hold(self, leases: Iterable[Lease]) -> None:
        with self._lock:
            for lease in leases:
                self._held[lease.message_id] = lease

    def drop(self, lease: Lease) -> None:
        """Stop looking after ``lease`` (dead-lettered, or left to lapse for a retry)."""
        with self._lock:
            self._held.pop(lease.message_id, None)

    def retry_later(self, lease: Lease, seconds: float) -> None:
        """Stop looking after ``lease`` and make its message visible again in ``seconds`` (a
        failed task's backoff). Raises `LeaseLostError` if the lease is no longer ours."""
        with self._visibility_lock:
            self.drop(lease)
            self.queue.extend(lease, seconds)

    def ack(self, lease: Lease) -> None:
        """Acknowledge ``lease`` with the next batch; it stays extended until then."""
        with self._lock:
            if not self._acks:
                self._oldest_ack = time.monotonic()
            self._acks.append(lease)
            full = len(self._acks) >= _ACK_BATCH
        if full:
            self.flush_acks()

    def flush_acks(self) -> None:
        with self._lock:
            acks, self._acks = self._acks, []
            self._acking.update(lease.message_id for lease in acks)
        if not acks:
            return
        try:
            self.queue.ack(acks)
        except Exception as exc:
            # The messages return when their leases end; their outputs exist, so the next
            # worker skips them.
            self.logger.warning("could not acknowledge %d finished messages: %s", len(acks), exc)
        with self._lock:
            for lease in acks:
                self._held.pop(lease.message_id, None)
                self._acking.discard(lease.message_id)

    def _run(self) -> None:
        interval = self.lease_seconds / 3
        next_extension = time.monotonic() + interval
        while not self._closed.is_set():
            if self.stop.is_set():
                self.flush_acks()
                self._release_all()
            else:
                with self._lock:
                    due = (
                        bool(self._acks) and time.monotonic() - self._oldest_ack >= self.ack_seconds
                    )
                if due:
                    self.flush_acks()
                if time.monotonic() >= next_extension:
                    self._extend_all()
                    next_extension = time.monotonic() + interval
            self._closed.wait(_TICK_SECONDS)

    def _extend_all(self) -> None:
        with self._visibility_lock:
            with self._lock:
                held = list(self._held.values())
            if not held:
                return
            now = time.monotonic()
            full, lost = [], []
            try:
                for lease in held:
                    # Never past the queue's longest lease from the receive (SQS refuses it).
                    left = self.queue.max_lease_seconds - (now - lease.received_at)
                    if left >= self.lease_seconds:
                        full.append(lease)
                    elif left > 1:
                        lost += self.queue.extend_many([lease], left - 1)
                if full:
                    lost += self.queue.extend_many(full, self.lease_seconds)
            except Exception as exc:  # the queue may be briefly unreachable: try next time
                self.logger.warning("could not extend %d leases: %s", len(held), exc)
                return
            for lease in lost:
                self.drop(lease)

    def _release_all(self) -> None:
        with self._lock:
            acked = {lease.message_id for lease in self._acks} | self._acking
            held = [lease for key, lease in self._held.items() if key not in acked]
            self._held = {key: lease for key, lease in self._held.items() if key in acked}
        for lease in held:
            try:
                self.queue.release(lease)
            except Exception as exc:
                self.logger.warning(
                    "could not release message %s (it returns when its lease ends): %s",
                    lease.message_id,
                    exc,
                )
