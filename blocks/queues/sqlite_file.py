"""The local queue's SQLite file: its schema, and opening it safely from many processes.

One file can hold several named queues. SQLite in WAL mode lets readers run beside the single
writer; durability is WAL with ``synchronous=NORMAL``: a crashed process loses nothing it
committed, a power cut may lose the last transactions, which at-least-once delivery then re-runs
or re-sends. Files made before deduplication existed get its columns when opened.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from tqflow.errors import QueueError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    max_receive_count INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    sent_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    reason TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    sent_at REAL NOT NULL,
    dead_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_queue ON dead_letters (queue, id);
"""

#: Deduplication: a message sent with a dedup id is not sent again while a message with that id
#: is live in the queue or in its dead-letter queue. Added to files made before it existed.
_DEDUP_SCHEMA = """
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_dedup_id ON messages (queue, dedup_id)
    WHERE dedup_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS dead_letters_by_dedup_id ON dead_letters (queue, dedup_id)
    WHERE dedup_id IS NOT NULL;
"""

#: Seconds `open_queue_file` keeps trying to set up a queue file another process is setting up too.
OPEN_SECONDS = 60.0


def open_queue_file(path: str) -> sqlite3.Connection:
    """Open (creating if missing) the queue database at ``path``. A file that is not one, or
    a folder that cannot hold it, is a `QueueError` naming the path and the fix."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QueueError(
            f"cannot make the folder of the local queue {path} ({exc.strerror}): give a folder "
            "that can be created and written"
        ) from None
    deadline = time.monotonic() + OPEN_SECONDS
    while True:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            _add_dedup_ids(conn)
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            # Two processes setting up a new file at once: while it is still in rollback-journal
            # mode, SQLite answers one of them "locked" at once, without waiting (a lock upgrade
            # that would deadlock). The set-up is idempotent: try again.
            if "locked" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            folder = Path(path).parent
            if not os.access(folder, os.W_OK | os.X_OK):
                raise QueueError(
                    f"cannot open the local queue {path}: its folder {folder} is read-only, and "
                    "SQLite (WAL mode) writes beside the file even to read it: copy the folder "
                    f"somewhere you can write (cp -r {folder} ~/tqflow-data-copy) and use the "
                    "copy (--data)"
                ) from None
            # disk full, or locked for good: not the file's fault
            raise QueueError(f"cannot open the local queue {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise QueueError(
                f"{path} is not a tqflow queue database ({exc}): move it away (a new queue is then "
                "made there) or point the queue at another path"
            ) from None


def _add_dedup_ids(conn: sqlite3.Connection) -> None:
    """Give both tables their ``dedup_id`` column (files made before it have none)."""
    for table in ("messages", "dead_letters"):
        columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "dedup_id" not in columns:
            try:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN dedup_id TEXT")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise
    conn.executescript(_DEDUP_SCHEMA)
