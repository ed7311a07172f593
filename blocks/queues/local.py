"""`LocalTaskQueue`: the SQS contract on one SQLite file, for machines with no cloud.

Many processes may send, receive and acknowledge at once: every state change is one
``BEGIN IMMEDIATE`` transaction, so a message is leased by exactly one receiver at a time. The
file itself (schema, WAL, durability) is `blocks.queues.sqlite_file`'s.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

from prefect.filesystems import LocalFileSystem
from pydantic import Field

from blocks.clients import PerProcessClients
from blocks.queues.base import SQS_DOCUMENTATION_URL, TaskQueue
from blocks.queues.sqlite_file import open_queue_file
from tqflow.engine.chunks import chunks
from tqflow.engine.contracts import DeadLetter, Lease, QueueCounts
from tqflow.errors import LeaseLostError, QueueConfigError, QueueError

#: Rows per insert transaction: large enough for speed, small enough that receivers are not
#: locked out for long while a big batch is sent.
_SEND_CHUNK = 5_000

#: Connections are per process and per thread; sqlite3 connections must not cross either.
_connections: PerProcessClients[sqlite3.Connection] = PerProcessClients()


class LocalTaskQueue(TaskQueue):
    """A task queue with SQS semantics in a local SQLite file.

    The embedded default: what ``tqflow demo`` uses, and what tests and laptops run on.

    Example:
        ```python
        from blocks import LocalTaskQueue

        queue = LocalTaskQueue(path="tqflow-data/queue.sqlite", queue_name="demo")
        queue.ensure()
        queue.send(['{"fn": "tqflow.examples:skeleton_stats", "kwargs": {"root_id": 1}, '
                    '"key": "1", "batch": "demo"}'])
        [lease] = queue.receive(max_messages=1)
        queue.ack([lease])
        ```

        Load a saved block:
        ```python
        from blocks import LocalTaskQueue

        queue = LocalTaskQueue.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "Local Task Queue"
    #: Dedup ids are honoured: a body whose id is live here or in the dead letters is not sent.
    deduplicates = True
    _description = "A task queue with SQS semantics in a local SQLite file: the embedded default."
    _logo_url = LocalFileSystem._logo_url  # Prefect's: it is a file on this machine
    # Its semantics are SQS's: leases are visibility timeouts, redrive moves to the DLQ.
    _documentation_url = SQS_DOCUMENTATION_URL

    path: str = Field(
        default="tqflow-data/queue.sqlite",
        description="SQLite file that holds the queue; created with its folder if missing.",
    )
    poll_seconds: float = Field(
        default=0.05,
        gt=0,
        description="While a receive waits for messages, how often it looks again.",
    )

    # -- connection -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        path = str(Path(self.path).expanduser().resolve())
        return _connections.get(path, lambda: open_queue_file(path))

    def _write(self) -> "_Transaction":
        return _Transaction(self._connection())

    # -- contract -------------------------------------------------------------------------

    def _folder_flag(self) -> str:
        """``--data`` unless the queue's file is the command line's default one."""
        folder = Path(self.path).expanduser().resolve().parent
        if folder == Path("tqflow-data").resolve():
            return ""
        return f" --data {folder}"

    def exists(self) -> bool:
        if not Path(self.path).expanduser().is_file():
            return False
        row = (
            self._connection()
            .execute("SELECT 1 FROM queues WHERE name = ?", (self.queue_name,))
            .fetchone()
        )
        return row is not None

    def ensure(self) -> None:
        with self._write() as db:
            row = db.execute(
                "SELECT max_receive_count FROM queues WHERE name = ?", (self.queue_name,)
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO queues (name, max_receive_count, created_at) VALUES (?, ?, ?)",
                    (self.queue_name, self.max_receive_count, time.time()),
                )
            elif row[0] != self.max_receive_count:
                raise QueueConfigError(
                    f"queue {self.queue_name!r} in {self.path} exists with max_receive_count="
                    f"{row[0]}, not {self.max_receive_count}; use max_receive_count={row[0]} "
                    "or another queue_name"
                )

    def send(
        self,
        bodies: Iterable[str],
        delay_seconds: float = 0,
        dedup_ids: Sequence[str] | None = None,
    ) -> int:
        bodies = list(bodies)
        self.check_sizes(bodies)
        ids: list[str | None] = list(dedup_ids) if dedup_ids is not None else [None] * len(bodies)
        if len(ids) != len(bodies):
            raise ValueError(f"{len(ids)} dedup_ids for {len(bodies)} bodies")
        rows = list(zip(bodies, ids, strict=True))
        sent = 0
        for chunk in chunks(rows, _SEND_CHUNK):
            now = time.time()
            visible_at = now + delay_seconds
            with self._write() as db:
                before = db.total_changes
                dead = self._dead_ids(db, [i for _, i in chunk if i is not None])
                if dead:  # a live message beside its own dead letter would be a second one
                    chunk = [(b, i) for b, i in chunk if i not in dead]
                db.executemany(
                    "INSERT OR IGNORE INTO messages (queue, body, visible_at, sent_at, dedup_id)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(self.queue_name, body, visible_at, now, i) for body, i in chunk],
                )
                sent += db.total_changes - before
        return sent

    def _dead_ids(self, db: sqlite3.Connection, dedup_ids: list[str]) -> set[str]:
        """Which of ``dedup_ids`` wait in the dead-letter queue: one indexed query per 500."""
        dead: set[str] = set()
        for some in chunks(dedup_ids, 500):  # under SQLite's 999 bound parameters
            marks = ",".join("?" * len(some))
            dead.update(
                row[0]
                for row in db.execute(
                    f"SELECT dedup_id FROM dead_letters WHERE queue = ? AND dedup_id IN ({marks})",
                    (self.queue_name, *some),
                )
            )
        return dead

    def _receive(self, max_messages: int, lease_seconds: float, wait_seconds: float) -> list[Lease]:
        deadline = time.monotonic() + wait_seconds
        while True:
            leases = self._receive_once(max_messages, lease_seconds)
            if leases or time.monotonic() >= deadline:
                return leases
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _receive_once(self, max_messages: int, lease_seconds: float) -> list[Lease]:
        leases: list[Lease] = []
        with self._write() as db:
            while len(leases) < max_messages:
                now = time.time()
                rows = db.execute(
                    "SELECT id, body, receive_count FROM messages"
                    " WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, id LIMIT ?",
                    (self.queue_name, now, max_messages - len(leases)),
                ).fetchall()
                if not rows:
                    break
                for message_id, body, count in rows:
                    if count >= self.max_receive_count:
                        # The redrive policy, applied on receive as SQS does: a message already
                        # received max_receive_count times goes to the dead-letter queue.
                        self._move_to_dead(
                            db,
                            message_id,
                            f"received {count} times without being acknowledged "
                            f"(max_receive_count={self.max_receive_count})",
                        )
                        continue
                    receipt = os.urandom(8).hex()
                    db.execute(
                        "UPDATE messages SET visible_at = ?, receive_count = ?, receipt = ?"
                        " WHERE id = ?",
                        (now + lease_seconds, count + 1, receipt, message_id),
                    )
                    leases.append(Lease(str(message_id), receipt, body, count + 1))
        return leases

    def extend(self, lease: Lease, seconds: float) -> None:
        with self._write() as db:
            changed = db.execute(
                "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
                (time.time() + seconds, int(lease.message_id), lease.receipt),
            ).rowcount
        if not changed:
            raise LeaseLostError(
                f"message {lease.message_id} is no longer leased by this receiver "
                "(acknowledged, dead-lettered, or received again after the lease ended)"
            )

    def release(self, lease: Lease) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE messages SET visible_at = ? WHERE id = ? AND receipt = ?",
                (time.time(), int(lease.message_id), lease.receipt),
            )

    def ack(self, leases: Sequence[Lease]) -> int:
        if not leases:
            return 0
        with self._write() as db:
            before = db.total_changes
            db.executemany(
                "DELETE FROM messages WHERE id = ? AND receipt = ?",
                [(int(lease.message_id), lease.receipt) for lease in leases],
            )
            return db.total_changes - before

    def dead_letter(self, lease: Lease, reason: str) -> bool:
        with self._write() as db:
            owned = db.execute(
                "SELECT 1 FROM messages WHERE id = ? AND receipt = ?",
                (int(lease.message_id), lease.receipt),
            ).fetchone()
            if owned:
                self._move_to_dead(db, int(lease.message_id), self.fit_reason(reason, lease.body))
        return bool(owned)

    def counts(self) -> QueueCounts:
        db = self._connection()
        visible, in_flight, delayed = db.execute(
            "SELECT"
            " COALESCE(SUM(visible_at <= :now), 0),"
            " COALESCE(SUM(visible_at > :now AND receive_count > 0), 0),"
            " COALESCE(SUM(visible_at > :now AND receive_count = 0), 0)"
            " FROM messages WHERE queue = :queue",
            {"now": time.time(), "queue": self.queue_name},
        ).fetchone()
        (dead,) = db.execute(
            "SELECT COUNT(*) FROM dead_letters WHERE queue = ?", (self.queue_name,)
        ).fetchone()
        return QueueCounts(visible=visible, in_flight=in_flight, delayed=delayed, dead=dead)

    def dead_letters(
        self, limit: int = 100, select: Optional[Callable[[str], bool]] = None
    ) -> list[DeadLetter]:
        found = []
        for message_id, body, reason, count in self._dead_rows(self._connection()):
            if select is None or select(body):
                found.append(DeadLetter(str(message_id), body, reason, count))
                if len(found) >= limit:
                    break
        return found

    def _dead_rows(self, db: sqlite3.Connection, page: int = 1_000) -> Iterator[tuple]:
        """This queue's dead letters in order, a page at a time (the table may be large)."""
        last = -1
        while True:
            rows = db.execute(
                "SELECT id, body, reason, receive_count FROM dead_letters"
                " WHERE queue = ? AND id > ? ORDER BY id LIMIT ?",
                (self.queue_name, last, page),
            ).fetchall()
            yield from rows
            if len(rows) < page:
                return
            last = rows[-1][0]

    def redrive(
        self, limit: int | None = None, select: Optional[Callable[[str], bool]] = None
    ) -> int:
        with self._write() as db:
            ids: list[str] = []
            for message_id, body, _, _ in self._dead_rows(db):
                if limit is not None and len(ids) >= limit:
                    break
                if select is None or select(body):
                    ids.append(message_id)
            now = time.time()
            db.executemany(
                "INSERT OR IGNORE INTO messages"
                " (id, queue, body, visible_at, receive_count, sent_at, dedup_id)"
                " SELECT id, queue, body, ?, 0, sent_at, dedup_id FROM dead_letters WHERE id = ?",
                [(now, i) for i in ids],
            )
            db.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    def purge(self, dead_letters: bool = False) -> None:
        with self._write() as db:
            db.execute("DELETE FROM messages WHERE queue = ?", (self.queue_name,))
            if dead_letters:
                db.execute("DELETE FROM dead_letters WHERE queue = ?", (self.queue_name,))

    @staticmethod
    def _move_to_dead(db: sqlite3.Connection, message_id: int, reason: str) -> None:
        db.execute(
            "INSERT INTO dead_letters"
            " (id, queue, body, reason, receive_count, sent_at, dead_at, dedup_id)"
            " SELECT id, queue, body, ?, receive_count, sent_at, ?, dedup_id"
            " FROM messages WHERE id = ?",
            (reason, time.time(), message_id),
        )
        db.execute("DELETE FROM messages WHERE id = ?", (message_id,))


class _Transaction:
    """``with`` block around one ``BEGIN IMMEDIATE`` transaction: the write lock is taken at
    the start, so two receivers never pick the same rows."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise QueueError(f"cannot lock the local queue database: {exc}") from exc
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
