"""A batch's outputs as one Parquet table, streamed in chunks so memory stays bounded.

One row per output record (``<batch>/outputs/<key>.json``), sorted by key: ``key``, the result's
fields (or one ``result`` column when the result is not a dict), then ``task_seconds``,
``task_attempt`` and ``task_worker``. A result field named like one of those (`OWN_COLUMNS`) is
kept as ``result.<name>`` beside it, so a result never replaces the key that joins it to its item.

Chunks of ``chunk_rows`` records are taken from the batch's shards where they hold them
(`tqflow.results.shard_index`: a thousand records a request) and read in parallel from the outputs
otherwise (`CloudFilesStorage.get_json_many`), turned into Arrow columns and written as parts to a local folder; the parts are then joined
into one file under one schema: a column missing from a part is null there; a column that is
int in one part and float in another is float, unless its integers are too large for a float
to hold exactly (root IDs), when it is JSON text; a column whose values mix kinds (numbers and
strings, say), and every column of dicts (their keys may differ from row to row), is JSON
text. An output that is not JSON is left out and named (`ResultsTable.left_out`). Peak memory
is one chunk plus the list of paths, whatever the batch's size.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tqflow.engine.chunks import chunks
from tqflow.engine.contracts import JSONFiles, StorageReader
from tqflow.engine.layout import OutputPaths, key_of_output, outputs_prefix
from tqflow.results.shard_index import ShardIndex

#: Output records read and converted at a time.
CHUNK_ROWS = 20_000
#: tqflow's own columns, beside the result's fields.
OWN_COLUMNS = ("key", "task_seconds", "task_attempt", "task_worker")
#: Outputs left out that are named one by one; more are counted.
LEFT_OUT_NAMED = 20
#: Integers from this size on lose digits in a float64 (18-digit root IDs do).
EXACT_FLOAT_LIMIT = 2**53


@dataclass
class ResultsTable:
    """The joined table, on local disk until the caller stores it."""

    path: str
    rows: int
    schema: pa.Schema
    #: Outputs left out, ``{path: why}`` (the first `LEFT_OUT_NAMED`), and how many in all.
    left_out: dict[str, str] = field(default_factory=dict)
    left_out_count: int = 0

    @property
    def numeric_columns(self) -> list[str]:
        """Columns of int or float values (bools excluded), in table order."""
        return [
            f.name
            for f in self.schema
            if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
        ]

    def read_columns(self, columns: list[str]) -> pa.Table:
        return pq.read_table(self.path, columns=columns)


def output_paths(storage: StorageReader, batch: str, keys: Sequence[str] = ()) -> list[str]:
    """The batch's output records, sorted by item key. ``keys``: items expected to have one
    (e.g. those the shards hold), which let a bucket's listing run in parallel ranges."""
    listed = storage.list(outputs_prefix(batch), expected=OutputPaths(batch, keys))
    paths = [p for p in listed if p.endswith(".json")]
    paths.sort(key=key_of_output)
    return paths


def build_results_table(
    storage: StorageReader,
    paths: list[str],
    folder: str,
    chunk_rows: int = CHUNK_ROWS,
    shards: ShardIndex | None = None,
) -> ResultsTable:
    """Write the records at ``paths`` into ``<folder>/results.parquet``, each from ``shards``
    when they hold its key, else from its output."""
    parts_folder = tempfile.mkdtemp(prefix="parts-", dir=folder)
    parts: list[str] = []
    wide: set[str] = set()
    left_out: dict[str, str] = {}
    left_out_count = 0
    for number, chunk in enumerate(chunks(paths, chunk_rows)):
        records = _records(storage, chunk, shards)
        bad = {path: f"not valid JSON ({why})" for path, why in records.corrupt.items()}
        rows = []
        for path in chunk:
            record = records.get(path)
            if isinstance(record, dict):
                rows.append(_row(record, path))
            elif path in records:
                bad[path] = "not an output record (a JSON object with a result)"
        left_out_count += len(bad)
        for path in sorted(bad)[: max(0, LEFT_OUT_NAMED - len(left_out))]:
            left_out[path] = bad[path]
        table, wide_here = _to_arrow(rows)
        wide |= wide_here
        part = os.path.join(parts_folder, f"{number:06d}.parquet")
        pq.write_table(table, part)
        parts.append(part)
    schema = _joined_schema([pq.read_schema(p) for p in parts], wide)
    path = os.path.join(folder, "results.parquet")
    rows_written = 0
    with pq.ParquetWriter(path, schema) as writer:
        for part in parts:
            table = _conform(pq.read_table(part), schema)
            writer.write_table(table)
            rows_written += table.num_rows
            os.unlink(part)
    os.rmdir(parts_folder)
    return ResultsTable(path, rows_written, schema, left_out, left_out_count)


def _records(storage: StorageReader, paths: Sequence[str], shards: ShardIndex | None) -> JSONFiles:
    """The records at ``paths``: the shards' where they have the key, the rest read."""
    held = shards.records([key_of_output(p) for p in paths]) if shards is not None else {}
    unheld = [p for p in paths if key_of_output(p) not in held]
    records = storage.get_json_many(unheld) if unheld else JSONFiles()
    records.update((p, held[key_of_output(p)]) for p in paths if key_of_output(p) in held)
    return records


def _row(record: dict[str, Any], path: str) -> dict[str, Any]:
    result = record.get("result")
    row: dict[str, Any] = {"key": record.get("key") or key_of_output(path)}
    fields = result if isinstance(result, dict) else {"result": result}
    # The result's fields named like tqflow's columns first: its `key` is `result.key`, whatever
    # order the fields come in, and a field literally named `result.key` moves on instead.
    ordered = sorted(fields.items(), key=lambda field: str(field[0]) not in OWN_COLUMNS)
    for name, value in ordered:
        name = str(name)
        while name in OWN_COLUMNS or name in row:
            name = f"result.{name}"  # the result's `key` beside tqflow's, never over it
        row[name] = value
    row.update(
        task_seconds=record.get("seconds"),
        task_attempt=record.get("attempt"),
        task_worker=record.get("worker"),
    )
    return row


def _to_arrow(rows: Iterable[dict[str, Any]]) -> tuple[pa.Table, set[str]]:
    """Rows to a table, column by column, so a column of mixed kinds becomes JSON text
    instead of failing the whole chunk; and the integer columns holding values a float
    cannot (root IDs)."""
    rows = list(rows)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns, wide = {}, set()
    for name in names:
        values = [row.get(name) for row in rows]
        if any(isinstance(v, dict) for v in values):
            columns[name] = _as_json_text(values)
            continue
        try:
            column = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            column = _as_json_text(values)
        if pa.types.is_integer(column.type) and widest(column) >= EXACT_FLOAT_LIMIT:
            wide.add(name)
        columns[name] = column
    return pa.table(columns) if columns else pa.table({"key": pa.array([], pa.string())}), wide


def widest(column: pa.Array | pa.ChunkedArray) -> int:
    """The largest magnitude in an integer column (0 when it holds only nulls)."""
    low, high = pc.min_max(column).values()
    return max(abs(low.as_py() or 0), abs(high.as_py() or 0))


def _as_json_text(values: list[Any]) -> pa.Array:
    return pa.array(
        [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values],
        type=pa.string(),
    )


def _joined_schema(schemas: list[pa.Schema], wide: set[str]) -> pa.Schema:
    """One field per column name, in order of first appearance: the type all parts share,
    float64 for a mix of ints and floats (JSON text when the ints are in ``wide``: a float
    would round them), else JSON text."""
    kinds: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for f in schema:
            if not pa.types.is_null(f.type):
                kinds.setdefault(f.name, []).append(f.type)
            else:
                kinds.setdefault(f.name, [])
    fields = []
    for name, types in kinds.items():
        distinct = set(types)
        if not distinct:
            kind = pa.null()
        elif len(distinct) == 1:
            kind = types[0]
        elif name not in wide and all(
            pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct
        ):
            kind = pa.float64()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        column = table.column(f.name)
        if column.type == f.type:
            columns.append(column)
        elif pa.types.is_string(f.type) and not pa.types.is_string(column.type):
            columns.append(_as_json_text(column.to_pylist()))
        else:
            columns.append(column.cast(f.type))
    return pa.Table.from_arrays(columns, schema=schema)
