"""The Queue contract every tqflow queue backend keeps (the engine's `Queue`, as a block).

The semantics are Amazon SQS's, with a dead-letter queue attached by a redrive policy:

- **At least once.** A received message is hidden for its lease (SQS: visibility timeout); if
  it is not acknowledged before the lease ends, it becomes visible again and is received anew.
  While a lease holds, no other receiver gets the message.
- **Receive count.** Each receive counts. A message received ``max_receive_count`` times and
  still not acknowledged moves to the dead-letter queue on its next receive, exactly as an SQS
  redrive policy does.
- A lease can be extended (long tasks), released at once (shutdown), acknowledged (done) or
  dead-lettered at once with a reason (a body no retry can fix).

``tests/test_queue_contract.py`` is the executable form of this contract and runs against every
backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Iterable, Sequence

from prefect.blocks.core import Block
from pydantic import Field

from blocks.slugs import block_slug, referable_by
from tqflow.engine.contracts import DeadLetter, Lease, QueueCounts
from tqflow.errors import LeaseLostError, MessageTooLargeError

#: Where the semantics every queue backend keeps are documented (the local queue's too).
SQS_DOCUMENTATION_URL = (
    "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/welcome.html"
)


class TaskQueue(Block, ABC):
    """Base of tqflow's queue blocks; see the module docstring for the contract."""

    model_config = referable_by("queue_name")

    #: Largest message body the backend accepts, in bytes (SQS: 256 KiB).
    max_message_bytes: ClassVar[int] = 262_144
    #: Whether `send` honours ``dedup_ids``: a body whose id is live in the queue (or in its
    #: dead-letter queue) is not sent again. SQS standard queues cannot; enqueue then keeps its
    #: own record of what was sent (`tqflow.enqueue.sent_record`).
    deduplicates: ClassVar[bool] = False
    #: Longest a lease can last from its receive, extensions included (SQS: 12 hours). The
    #: local queue keeps SQS's rule, so a batch tried locally meets it as it would on SQS.
    max_lease_seconds: ClassVar[float] = 43_200.0

    queue_name: str = Field(
        default="tqflow",
        description="Name of the queue. Its dead-letter queue is derived from it.",
    )
    max_receive_count: int = Field(
        default=5,
        ge=1,
        description=(
            "Receives after which a message that was never acknowledged moves to the "
            "dead-letter queue (the redrive policy's maxReceiveCount)."
        ),
    )
    lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description=(
            "How long a received message stays hidden from other receivers (the visibility "
            "timeout). Workers extend it while a task runs, so it bounds how soon a crashed "
            "worker's task is retried, not how long a task may take."
        ),
    )

    allowed_modules: list[str] = Field(
        default_factory=list,
        description=(
            "Modules (prefixes, e.g. 'mylab.tasks') whose functions workers may run besides "
            "the functions of batches enqueued through tqflow. Workers hold your credentials: "
            "any other function named in a message is dead-lettered, not run."
        ),
    )

    wait_seconds: float = Field(
        default=1.0,
        ge=0,
        description=(
            "How long a receive that finds no message waits for one (long polling). Longer "
            "waits mean fewer requests on an idle queue."
        ),
    )

    @abstractmethod
    def exists(self) -> bool:
        """Whether the queue has been created (by `ensure`); creates nothing."""

    @abstractmethod
    def ensure(self) -> None:
        """Create the queue and its dead-letter queue if missing; idempotent.

        Raises `QueueConfigError` if the queue exists with a different redrive policy.
        """

    @abstractmethod
    def send(
        self,
        bodies: Iterable[str],
        delay_seconds: float = 0,
        dedup_ids: Sequence[str] | None = None,
    ) -> int:
        """Send message bodies; return how many were sent.

        Every body is checked against `max_message_bytes` before any is sent. ``dedup_ids``
        (one per body) are honoured where `deduplicates` is true and ignored elsewhere.
        """

    def receive(
        self,
        max_messages: int = 1,
        lease_seconds: float | None = None,
        wait_seconds: float | None = None,
    ) -> list[Lease]:
        """Lease up to ``max_messages`` visible messages for ``lease_seconds`` (default: the
        block's). Waits up to ``wait_seconds`` (default: the block's) for one to arrive."""
        return self._receive(
            max_messages,
            self.lease_seconds if lease_seconds is None else lease_seconds,
            self.wait_seconds if wait_seconds is None else wait_seconds,
        )

    @abstractmethod
    def _receive(self, max_messages: int, lease_seconds: float, wait_seconds: float) -> list[Lease]:
        """`receive`, with its defaults resolved."""

    @abstractmethod
    def extend(self, lease: Lease, seconds: float) -> None:
        """Keep ``lease`` hidden for ``seconds`` from now. Raises `LeaseLostError` if the
        lease is no longer ours."""

    def extend_many(self, leases: Sequence[Lease], seconds: float) -> list[Lease]:
        """Extend several leases; return those no longer ours. Backends that bill per
        request batch this."""
        lost = []
        for lease in leases:
            try:
                self.extend(lease, seconds)
            except LeaseLostError:
                lost.append(lease)
        return lost

    @abstractmethod
    def release(self, lease: Lease) -> None:
        """Make the message visible again at once (its receive still counts)."""

    @abstractmethod
    def ack(self, leases: Sequence[Lease]) -> int:
        """Delete acknowledged messages; return how many were deleted. Never raises for a
        lease that is no longer ours: the local queue skips it (its message belongs to
        whoever received it since); SQS may still delete the message, as it accepts any
        receipt handle the message had. Both are safe because a worker acknowledges only
        after the task's output is written."""

    @abstractmethod
    def dead_letter(self, lease: Lease, reason: str) -> bool:
        """Move the message to the dead-letter queue at once, keeping ``reason``. True when it
        left the queue; False when it did not: on the local queue, when the lease was no longer
        this holder's (it ended, and the message may be another worker's now), and nothing
        moved; on SQS, when the message could not be deleted after its copy reached the
        dead-letter queue. A delete with an earlier receive's receipt handle succeeds on SQS
        but "might not" delete (its API reference): with a lease that ended, True may leave
        the message to come back and be dead-lettered again, a second copy.
        `NoDeadLetterQueueError` when there is no dead-letter queue."""

    @abstractmethod
    def counts(self) -> QueueCounts:
        """Messages by state, dead-letter queue included."""

    @abstractmethod
    def dead_letters(
        self, limit: int = 100, select: Callable[[str], bool] | None = None
    ) -> list[DeadLetter]:
        """Look at up to ``limit`` dead-lettered messages without consuming them; with
        ``select``, only those whose body it accepts (e.g. one batch's on a shared queue)."""

    @abstractmethod
    def redrive(self, limit: int | None = None, select: Callable[[str], bool] | None = None) -> int:
        """Move up to ``limit`` (default all) dead-lettered messages back to the queue, with
        their receive count reset; with ``select``, only those whose body it accepts. Returns
        how many moved."""

    @abstractmethod
    def purge(self, dead_letters: bool = False) -> None:
        """Delete every message in the queue (and in the dead-letter queue if asked)."""

    #: Longest dead-letter reason kept with the message; the whole text is in the item's
    #: error record.
    max_reason_chars: ClassVar[int] = 10_000

    def command_flags(self, batch: str) -> str:
        """The ``tqflow`` command-line options that reach ``batch`` on this queue again, for
        the hints a flow's error gives: its saved block, else its name."""
        slug = block_slug(self)
        if slug is not None:
            return f"--batch {batch} --queue-block {slug}"
        return f"--batch {batch} --queue {self.queue_name}{self._folder_flag()}"

    def _folder_flag(self) -> str:
        return ""

    def fit_reason(self, reason: str, body: str) -> str:
        """``reason`` cut to at most `max_reason_chars` and to fit beside ``body`` in one
        message of `max_message_bytes` (SQS counts message attributes in its 256 KiB); ``""``
        when there is no room at all."""
        overhead = 200  # attribute names and types, the receive count
        room = self.max_message_bytes - len(body.encode("utf-8")) - overhead
        limit = min(self.max_reason_chars, room)
        encoded = reason.encode("utf-8")
        if len(encoded) <= limit:
            return reason
        note = " ... (cut; the whole text is in the item's error record)"
        if limit <= len(note):
            return ""
        return encoded[: limit - len(note)].decode("utf-8", "ignore") + note

    def check_sizes(self, bodies: Sequence[str]) -> None:
        """Raise `MessageTooLargeError` naming the first body over `max_message_bytes`."""
        for index, body in enumerate(bodies):
            size = len(body.encode("utf-8"))
            if size > self.max_message_bytes:
                raise MessageTooLargeError(
                    f"message #{index} ({body[:80]!r}...) is {size:,} bytes, over the limit of "
                    f"{self.max_message_bytes:,} for {type(self).__name__}; nothing was sent. "
                    "Put large inputs in storage and pass their paths."
                )
