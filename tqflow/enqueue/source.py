"""Where a batch's items come from (`ItemSource`): a list, a file, a generator or a CAVE table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tqflow.engine.calls import resolve
from tqflow.engine.contracts import BatchStorage, CAVETables
from tqflow.enqueue.items import (
    Items,
    ItemsFile,
    exact_column,
    from_values,
    read_file,
    read_items_file,
)
from tqflow.errors import ItemSourceError

#: An ``items`` parameter larger than this (as JSON) is said to belong in a file.
LARGE_ITEMS_PARAMETER_BYTES = 1_000_000


class CAVETableQuery(BaseModel):
    """Work items from a CAVE materialization table: the distinct values of one column of the
    rows that pass the filters (e.g. every root ID of one cell type)."""

    table: str = Field(
        description="Materialization table or view, e.g. aibs_metamodel_celltypes_v661."
    )
    column: str = Field(default="pt_root_id", description="Column holding the items.")
    filter_equal: dict[str, Any] = Field(
        default_factory=dict, description="Column -> value the rows must equal."
    )
    filter_in: dict[str, list[Any]] = Field(
        default_factory=dict, description="Column -> values the rows must be one of."
    )
    materialization_version: Optional[int] = Field(
        default=None, description="Version to query; empty: the CAVE block's."
    )


class ItemSource(BaseModel):
    """Where a batch's items come from: exactly one of ``items``, ``items_file`` (with
    ``column`` for .csv / .parquet) or ``cave_query``; ``items_from`` is the default source,
    used when none of those is given (so a deployment can name a default generator that a run
    replaces by passing items or a file). Checked when made, before anything is queued.

    Example:
        ```python
        from tqflow.enqueue import ItemSource

        items = ItemSource(items_file="roots.csv", column="root_id").read()
        ```
    """

    model_config = ConfigDict(extra="forbid")

    items: Optional[list[Any]] = Field(default=None, description="The items themselves.")
    items_file: Optional[str] = Field(
        default=None,
        description=(
            "Or a file of items: .txt (one per line), .csv / .tsv / .parquet (a column), "
            ".jsonl (a value, or with column an object, per line) or .json (an array); a "
            "local path, or a gs:// / s3:// URL read with the storage block's credentials "
            "(what a deployment's run on a cluster can reach)."
        ),
    )
    column: Optional[str] = Field(
        default=None,
        description="Column of the items file (.csv, .tsv, .parquet; key of .jsonl objects).",
    )
    items_from: Optional[str] = Field(
        default=None,
        description="Or an importable function returning the items, package.module:function.",
    )
    cave_query: Optional[CAVETableQuery] = Field(
        default=None, description="Or a CAVE materialization table query (needs a CAVE block)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ItemSource":
        given = [s for s in (self.items, self.items_file, self.cave_query) if s is not None]
        if len(given) > 1:
            raise ItemSourceError(
                "give one source of items, not several: items=[...], items_file=PATH or "
                "cave_query={table, column, ...}"
            )
        if not given and self.items_from is None:
            raise ItemSourceError(
                "no items: give items=[...], items_file=PATH, items_from="
                "'package.module:generator' or cave_query={table, column, ...}"
            )
        if self.column is not None and self.items_file is None:
            other = "cave_query.column" if self.cave_query is not None else "nothing"
            raise ItemSourceError(
                f"column={self.column!r} names a column of an items file, and no items_file is "
                f"given: leave it out (for a CAVE table, the column is {other})"
            )
        return self

    def read(
        self,
        cave: Optional[CAVETables] = None,
        storage: Optional[BatchStorage] = None,
    ) -> Items:
        """The items, read exactly (`tqflow.enqueue.items`); ``cave`` is needed for a ``cave_query``,
        ``storage`` (whose credentials read it) for an ``items_file`` at a gs:// / s3:// URL."""
        if self.items is not None:
            items = from_values(self.items, "items", lambda i: f"items[{i}]")
            size = len(json.dumps(self.items, default=str))
            if size > LARGE_ITEMS_PARAMETER_BYTES:
                items.notes.append(
                    f"items=[...] is {size / 1e6:.1f} MB of flow-run parameters "
                    f"({len(items):,} items): every run stores and sends them, and Prefect's "
                    "API refuses a request past its size limit; put them in a file and pass "
                    "items_file (a path, or a gs:// / s3:// URL for a deployment's run)"
                )
            return items
        if self.cave_query is not None:
            if cave is None:
                raise ItemSourceError(
                    f"items from CAVE table {self.cave_query.table!r} need a CAVE block: pass "
                    "cave=... (on the command line, --cave-block)"
                )
            column = cave.query_column(self.cave_query)
            items = exact_column(
                column.tolist(),
                f"CAVE table {self.cave_query.table!r} column {self.cave_query.column!r}",
            )
            return Items(
                dict.fromkeys(items), items.source, items.empty_lines
            )  # distinct, in order
        if self.items_file is None:
            assert self.items_from is not None  # checked when made
            source = f"items_from {self.items_from}"
            return from_values(
                _generated(self.items_from), source, lambda i: f"item {i + 1} of {source}"
            )
        if "://" in self.items_file or _URL_LIKE.match(self.items_file):
            return read_items_file(self._download(self.items_file, storage), self.column)
        return read_file(Path(self.items_file).expanduser(), self.column)

    @staticmethod
    def _download(url: str, storage: Optional[BatchStorage]) -> ItemsFile:
        _check_file_url(url)
        if storage is None:
            raise ItemSourceError(
                f"items file {url} is read with the storage block's credentials: pass storage=..."
            )
        content = storage.read_url(url)
        if content is None:
            raise ItemSourceError(f"items file {url} does not exist")
        return ItemsFile(url, content)


#: A path that starts like a cloud URL (``gs:/bucket/x``, ``s3:bucket``): meant as one.
_URL_LIKE = re.compile(r"^(gs|s3|file):", re.IGNORECASE)


def _check_file_url(url: str) -> None:
    """Raise `ItemSourceError` naming the fix unless ``url`` is ``gs://`` / ``s3://`` with a
    bucket and an object, or ``file://`` with a path."""
    match = _URL_LIKE.match(url)
    if match is None:
        raise ItemSourceError(
            f"items file {url!r}: tqflow reads items files at gs://, s3:// and file:// URLs, "
            "or local paths"
        )
    meant = match[1].lower()
    scheme, sep, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    form = (
        "file:///absolute/path/items.csv" if meant == "file" else f"{meant}://BUCKET/path/items.csv"
    )
    if scheme != meant or not sep:
        why = f"not a {meant}:// URL"
    elif meant == "file":
        if rest:
            return
        why = "it names no file"
    elif not bucket:
        why = "it names no bucket"
    elif not key or key.endswith("/"):
        why = "it names a bucket or a folder, not a file"
    else:
        return
    raise ItemSourceError(f"items file {url!r}: {why}; write {form}")


def _generated(items_from: str) -> Iterable[Any]:
    """The items a user's ``package.module:function`` returns, its own errors named."""
    function = resolve(items_from, "items_from function")
    try:
        yield from function()
    except Exception as exc:
        raise ItemSourceError(
            f"items_from {items_from} raised {type(exc).__name__}: {exc}; fix the function "
            "(tqflow --debug shows the traceback), or give the items another way"
        ) from exc
