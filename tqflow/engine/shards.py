"""Output records written again, many to a file: what lets the analysis of 10^6 outputs in a
bucket 30 ms away read a thousand files instead of a million.

Each worker keeps the records it has stored (``<batch>/outputs/<key>.json``, written first and
still the source of truth: for resume, for `status`, for what exists) and writes them, per
batch, as one shard of up to `RECORDS_PER_SHARD` at a time: ``<batch>/shards/<writer>-<n>.json``,
``{"records": [...]}``. A shard is written when it is full, when the worker finds the queue
empty, and when it stops. A worker killed before its shard is written loses nothing: those
outputs are in no shard, and the analysis reads them one by one (`tqflow.results.shard_index`). A key
in two shards (a task run again after its lease ran out) is one row: the record that finished
last, which is the one its output holds.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from tqflow.engine.contracts import Storage
from tqflow.engine.layout import shard_path

#: Records per shard: one write per this many outputs, and one read in the analysis.
RECORDS_PER_SHARD = 1_000


class ShardWriter:
    """The output records a worker has stored, written as shards of its batches."""

    def __init__(
        self,
        storage: Storage,
        worker: str,
        log: logging.Logger | logging.LoggerAdapter,
        records_per_shard: int = RECORDS_PER_SHARD,
    ) -> None:
        self.storage = storage
        #: Unique to this run of the worker: two runs never write the same shard.
        self.writer = f"{worker}-{uuid.uuid4().hex[:8]}"
        self.log = log
        self.records_per_shard = records_per_shard
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._written = 0

    def add(self, batch: str, record: dict[str, Any]) -> None:
        """Keep ``record`` (already stored as its output) for the batch's next shard."""
        pending = self._pending.setdefault(batch, [])
        pending.append(record)
        if len(pending) >= self.records_per_shard:
            self._write(batch)

    def flush(self) -> None:
        """Write every batch's pending records now."""
        for batch in list(self._pending):
            if self._pending[batch]:
                self._write(batch)

    def _write(self, batch: str) -> None:
        records = self._pending.pop(batch)
        path = shard_path(batch, self.writer, self._written)
        try:
            self.storage.put_json(path, {"records": records})
            self._written += 1
        except Exception as exc:  # a shard only saves reads: its outputs are stored already
            self.log.warning(
                "could not write shard %s (%s records; the analysis reads their outputs one "
                "by one instead): %s",
                path,
                len(records),
                exc,
            )
