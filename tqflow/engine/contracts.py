"""What the engine needs from a queue, a storage and a CAVE source, and nothing more.

The engine runs inside a worker pod and never imports Prefect: it works on any object with
these methods. tqflow's blocks (`blocks.queues.TaskQueue`, `blocks.CloudFilesStorage`,
`blocks.CAVECredentials`) are the implementations; the queue's semantics (Amazon SQS's, with a
dead-letter queue attached by a redrive policy) are written in `blocks.queues.base`, and
``tests/test_queue_contract.py`` holds every backend to them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Protocol, Sequence


@dataclass(frozen=True)
class Lease:
    """A received message, hidden from other receivers until the lease ends."""

    message_id: str
    #: Proves the lease is ours; a new receive of the same message gets a new one.
    receipt: str
    body: str
    #: How many times the message has been received, this receive included.
    receive_count: int
    #: When it was received (`time.monotonic`): a lease cannot be extended past
    #: `Queue.max_lease_seconds` from then.
    received_at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class DeadLetter:
    """A message in the dead-letter queue, with why it is there."""

    message_id: str
    body: str
    reason: str
    receive_count: int


@dataclass(frozen=True)
class QueueCounts:
    """Messages by state. SQS reports these approximately; the local queue exactly."""

    #: Ready to be received.
    visible: int
    #: Received, lease not yet ended.
    in_flight: int
    #: Sent with a delay that has not passed.
    delayed: int
    #: In the dead-letter queue.
    dead: int

    @property
    def pending(self) -> int:
        """Messages not yet acknowledged nor dead-lettered."""
        return self.visible + self.in_flight + self.delayed


class Queue(Protocol):
    """A queue as a worker uses it (`blocks.queues.TaskQueue` documents each method)."""

    queue_name: str
    lease_seconds: float
    max_receive_count: int
    max_lease_seconds: float
    allowed_modules: list[str]

    def receive(self, max_messages: int = 1) -> list[Lease]: ...

    def extend(self, lease: Lease, seconds: float) -> None: ...

    def extend_many(self, leases: Sequence[Lease], seconds: float) -> list[Lease]: ...

    def release(self, lease: Lease) -> None: ...

    def ack(self, leases: Sequence[Lease]) -> int: ...

    def dead_letter(self, lease: Lease, reason: str) -> bool: ...

    def counts(self) -> QueueCounts: ...


class Storage(Protocol):
    """A batch's folder as a worker uses it (`blocks.CloudFilesStorage`)."""

    cloudpath: str

    def exists(self, path: str) -> bool: ...

    def exists_many(self, paths: Iterable[str]) -> dict[str, bool]:
        """``{path: exists}`` for many paths at once (one request per 100 on GCS)."""
        ...

    def get_json(self, path: str) -> Any: ...

    def put_json(self, path: str, value: Any) -> None: ...

    def put(self, path: str, content: bytes, content_type: str) -> None:
        """Write ``content`` as it is (the worker encodes its output records itself, once)."""
        ...

    def delete(self, path: str) -> None: ...


class JSONFiles(dict):
    """Files read at once: ``{path: value}`` for each that exists and is JSON; ``corrupt``
    holds the others that exist, ``{path: what is wrong}``, so one bad file costs only
    itself."""

    def __init__(self, found: Any = (), corrupt: dict[str, str] | None = None) -> None:
        super().__init__(found)
        self.corrupt: dict[str, str] = corrupt or {}


class StorageReader(Protocol):
    """A batch's folder as the analysis reads it: listed, then read in parallel."""

    def list(self, prefix: str = "", *, expected: Sequence[str] = ()) -> Iterator[str]:
        """Paths under ``prefix``; ``expected`` (paths the caller expects there) only lets
        the listing run in parallel ranges."""
        ...

    def get_json_many(self, paths: Iterable[str]) -> JSONFiles: ...


class CAVESource(Protocol):
    """Where a worker gets its one CAVE client (`blocks.CAVECredentials`)."""

    def get_client(self) -> Any: ...


class BatchFolder(StorageReader, Storage, Protocol):
    """A batch's folder read and written by one reader: the worker reports and their digest."""


class BatchStorage(BatchFolder, Protocol):
    """A batch's folder as an enqueue and an analysis use it (`blocks.CloudFilesStorage`):
    checked before a batch starts, read at full addresses, and its files read back."""

    @property
    def is_local(self) -> bool:
        """Whether the folder is on this machine's disk (``file://``)."""
        ...

    def check(self) -> None:
        """Raise `StorageError`, naming the fix, if the folder cannot be used."""
        ...

    def url(self, path: str) -> str: ...

    def get(self, path: str) -> bytes | None: ...

    def read_url(self, url: str) -> bytes | None:
        """A file anywhere else (e.g. an items file), read with this folder's credentials."""
        ...


class EnqueueTarget(Protocol):
    """A queue as an enqueue sends to it (`blocks.queues.TaskQueue`)."""

    queue_name: str
    #: Whether the queue drops a message whose dedup id it holds (the local queue; not SQS).
    deduplicates: bool
    max_message_bytes: int

    def ensure(self) -> None:
        """Create the queue (and its dead-letter queue) if it does not exist."""
        ...

    def send(self, bodies: Iterable[str], dedup_ids: Sequence[str] | None = None) -> int:
        """Send ``bodies``; the number sent (a deduplicating queue drops ids it holds)."""
        ...


class CAVETables(Protocol):
    """Where an enqueue reads a CAVE table's column (`blocks.CAVECredentials`)."""

    def query_column(self, query: Any) -> Any:
        """The column of the rows the query (`tqflow.enqueue.CAVETableQuery`) selects."""
        ...
