"""A batch's outputs as one Parquet table, streamed in chunks so memory stays bounded.

One row per output record (``<batch>/outputs/<key>.json``), sorted by key: ``key``, the result's
fields (or one ``result`` column when the result is not a dict), then ``task_seconds``,
``task_attempt`` and ``task_worker``. Chunks of ``chunk_rows`` records are read in parallel
(`CloudFilesStorage.get_json_many`), turned into Arrow columns and written as parts to a local
folder; the parts are then joined into one file under one schema: a column missing from a
part is null there, a column that is int in one part and float in another is float, and one
whose values mix kinds (numbers and strings, say) is stored as JSON text. Peak memory is one
chunk plus the list of paths, whatever the batch's size.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tqflow.engine.contracts import StorageReader
from tqflow.engine.outputs import key_of_output, outputs_prefix

#: Output records read and converted at a time.
CHUNK_ROWS = 20_000


@dataclass
class ResultsTable:
    """The joined table, on local disk until the caller stores it."""

    path: str
    rows: int
    schema: pa.Schema

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


def output_paths(storage: StorageReader, batch: str) -> list[str]:
    """The batch's output records, sorted by item key."""
    paths = [p for p in storage.list(outputs_prefix(batch)) if p.endswith(".json")]
    paths.sort(key=key_of_output)
    return paths


def build_results_table(
    storage: StorageReader, paths: list[str], folder: str, chunk_rows: int = CHUNK_ROWS
) -> ResultsTable:
    """Write the records at ``paths`` into ``<folder>/results.parquet``."""
    parts_folder = tempfile.mkdtemp(prefix="parts-", dir=folder)
    parts: list[str] = []
    for number, chunk in enumerate(_chunks(paths, chunk_rows)):
        records = storage.get_json_many(chunk)
        table = _to_arrow(_row(records[p]) for p in chunk if p in records)
        part = os.path.join(parts_folder, f"{number:06d}.parquet")
        pq.write_table(table, part)
        parts.append(part)
    schema = _joined_schema([pq.read_schema(p) for p in parts])
    path = os.path.join(folder, "results.parquet")
    rows = 0
    with pq.ParquetWriter(path, schema) as writer:
        for part in parts:
            table = _conform(pq.read_table(part), schema)
            writer.write_table(table)
            rows += table.num_rows
            os.unlink(part)
    os.rmdir(parts_folder)
    return ResultsTable(path=path, rows=rows, schema=schema)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row(record: dict[str, Any]) -> dict[str, Any]:
    result = record.get("result")
    row: dict[str, Any] = {"key": record["key"]}
    row.update(result if isinstance(result, dict) else {"result": result})
    row.update(
        task_seconds=record.get("seconds"),
        task_attempt=record.get("attempt"),
        task_worker=record.get("worker"),
    )
    return row


def _to_arrow(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Rows to a table, column by column, so a column of mixed kinds becomes JSON text
    instead of failing the whole chunk."""
    rows = list(rows)
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    columns = {}
    for name in names:
        values = [row.get(name) for row in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            columns[name] = _as_json_text(values)
    return pa.table(columns)


def _as_json_text(values: list[Any]) -> pa.Array:
    return pa.array(
        [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values],
        type=pa.string(),
    )


def _joined_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One field per column name, in order of first appearance: the type all parts share,
    float64 for a mix of numbers, else JSON text."""
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
        elif all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in distinct):
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
