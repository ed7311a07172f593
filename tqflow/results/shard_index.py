"""The output records a batch's shards hold (`tqflow.engine.shards`), by key, in a SQLite file
on local disk: what the analysis reads instead of one request per output.

The outputs' listing stays the truth for which items are done: a shard's record counts only
for a key whose output exists, and a key no shard holds (its worker was killed before writing
its shard, or the batch ran before shards existed) is read from its output. A key in several
shards is the record that finished last. Shards are read `SHARDS_AT_ONCE` at a time in
parallel; memory holds that many shards, whatever the batch's size.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from tqflow.engine.chunks import chunks
from tqflow.engine.contracts import StorageReader
from tqflow.engine.layout import shards_prefix

#: Shards read at a time (each up to `tqflow.engine.shards.RECORDS_PER_SHARD` records).
SHARDS_AT_ONCE = 100
#: Keys looked up per query: SQLite allows 999 parameters a statement before 3.32 and 32,766
#: since; 900 fits either.
KEYS_PER_QUERY = 900


class ShardIndex:
    """``records(keys)``: the shards' record of each key that has one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db = sqlite3.connect(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records "
            "(key TEXT PRIMARY KEY, finished_at TEXT, record TEXT) WITHOUT ROWID"
        )
        #: Shards that could not be read (not JSON, or not a shard): their outputs are read.
        self.unreadable: list[str] = []
        self.shards = 0

    @classmethod
    def build(cls, storage: StorageReader, batch: str, folder: str) -> "ShardIndex":
        """Read every shard of ``batch`` into ``<folder>/shards.sqlite``."""
        index = cls(os.path.join(folder, "shards.sqlite"))
        paths = [p for p in storage.list(shards_prefix(batch)) if p.endswith(".json")]
        for start in range(0, len(paths), SHARDS_AT_ONCE):
            found = storage.get_json_many(paths[start : start + SHARDS_AT_ONCE])
            index.unreadable += list(found.corrupt)
            for path, shard in found.items():
                records = shard.get("records") if isinstance(shard, dict) else None
                if not isinstance(records, list):
                    index.unreadable.append(path)
                    continue
                index._add(records)
                index.shards += 1
        index._db.commit()
        return index

    def _add(self, records: list[Any]) -> None:
        rows = [
            (r["key"], str(r.get("finished_at") or ""), json.dumps(r))
            for r in records
            if isinstance(r, dict) and isinstance(r.get("key"), str)
        ]
        self._db.executemany(
            "INSERT INTO records VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
            "finished_at = excluded.finished_at, record = excluded.record "
            "WHERE excluded.finished_at > records.finished_at",
            rows,
        )

    def records(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for group in chunks(keys, KEYS_PER_QUERY):
            marks = ",".join("?" * len(group))
            query = f"SELECT key, record FROM records WHERE key IN ({marks})"
            for key, record in self._db.execute(query, group):
                found[key] = json.loads(record)
        return found

    def keys(self) -> list[str]:
        """Every key a shard holds, sorted."""
        return [key for (key,) in self._db.execute("SELECT key FROM records ORDER BY key")]

    def close(self) -> None:
        self._db.close()
