"""The ``enqueue`` flow: one task message per work item, into the queue.

Items come from a list, a file (``.txt`` one per line, ``.csv`` / ``.parquet`` with a column),
an importable generator (``package.module:function``), or a CAVE materialization table query. Items whose output already exists in
the batch are skipped, so re-running a batch resumes it. Every message is built and checked
(size, arguments) before the first is sent, so bad input loses nothing.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from prefect import flow, get_run_logger

from blocks.cave import CAVECredentials, CAVETableQuery
from blocks.errors import TqflowError
from blocks.queues.base import TaskQueue
from blocks.specs import load_block
from blocks.storage import CloudFilesStorage
from flows.messages import resolve, task_messages
from flows.outputs import output_path


class ItemSourceError(TqflowError):
    """The work items cannot be read from the given source."""


@dataclass(frozen=True)
class EnqueueResult:
    queued: int
    skipped_done: int
    duplicates: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def read_items(
    items: Optional[Iterable[Any]] = None,
    items_file: Optional[str] = None,
    column: Optional[str] = None,
    items_from: Optional[str] = None,
    cave_query: Optional[CAVETableQuery] = None,
    cave: Optional[CAVECredentials] = None,
) -> list[Any]:
    """Read work items from exactly one source. Integer-looking text becomes ``int``."""
    given = [s for s in (items, items_file, items_from, cave_query) if s is not None]
    if len(given) != 1:
        raise ItemSourceError(
            "give exactly one source of items: items=[...], items_file=PATH, "
            "items_from='package.module:generator' or cave_query={table, column, ...}"
        )
    if items is not None:
        return list(items)
    if cave_query is not None:
        if cave is None:
            raise ItemSourceError(
                f"items from CAVE table {cave_query.table!r} need a CAVE block: pass cave=..."
            )
        return cave.query_items(cave_query)
    if items_from is not None:
        return list(resolve(items_from)())
    return _read_file(Path(items_file).expanduser(), column)


def _read_file(path: Path, column: Optional[str]) -> list[Any]:
    if not path.is_file():
        raise ItemSourceError(f"items file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        if column is None:
            if len(frame.columns) != 1:
                raise ItemSourceError(
                    f"{path} has columns {list(frame.columns)}: name the one holding the items "
                    "(column=... / --column)"
                )
            column = frame.columns[0]
        if column not in frame.columns:
            raise ItemSourceError(f"{path} has no column {column!r}; it has {list(frame.columns)}")
        return [_plain(v) for v in frame[column].dropna().tolist()]
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [_from_text(line) for line in lines if line and not line.startswith("#")]


def _from_text(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value.item() if hasattr(value, "item") else value


def enqueue_items(
    queue: TaskQueue,
    storage: CloudFilesStorage,
    fn: str,
    items: Iterable[Any],
    batch: str,
    kwargs: Optional[dict[str, Any]] = None,
    item_param: Optional[str] = None,
    overwrite: bool = False,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> EnqueueResult:
    """Queue ``fn(item, **kwargs)`` for every item not done yet in ``batch``."""
    log = log or logging.getLogger("tqflow.enqueue")
    messages, duplicates, seen = [], 0, set()
    for message in task_messages(fn, items, batch, kwargs, item_param):
        if message.key in seen:
            duplicates += 1
            continue
        seen.add(message.key)
        messages.append(message)
    storage.check()
    skipped = 0
    if not overwrite and messages:
        done = storage.exists_many(output_path(batch, m.key) for m in messages)
        todo = [m for m in messages if not done[output_path(batch, m.key)]]
        skipped = len(messages) - len(todo)
        messages = todo
    bodies = [m.encode(max_bytes=queue.max_message_bytes) for m in messages]
    queue.ensure()
    queued = queue.send(bodies)
    result = EnqueueResult(queued=queued, skipped_done=skipped, duplicates=duplicates)
    log.info(
        "batch %s: queued %d tasks of %s on %s; %d skipped as already done%s",
        batch,
        queued,
        fn,
        queue.queue_name,
        skipped,
        f"; {duplicates} duplicate items dropped" if duplicates else "",
    )
    return result


@flow(name="enqueue")
def enqueue(
    fn: str,
    queue: Union[TaskQueue, str],
    storage: Union[CloudFilesStorage, str],
    batch: str = "default",
    items: Optional[list[Any]] = None,
    items_file: Optional[str] = None,
    column: Optional[str] = None,
    items_from: Optional[str] = None,
    cave_query: Optional[CAVETableQuery] = None,
    cave: Union[CAVECredentials, str, None] = None,
    kwargs: Optional[dict[str, Any]] = None,
    item_param: Optional[str] = None,
    overwrite: bool = False,
) -> dict[str, int]:
    """Queue one task per item: ``fn(<item_param>=item, **kwargs)``.

    Args:
        fn: Task function, ``package.module:function``; it must be importable here and in
            the workers.
        queue: Queue block to send to (or a saved block's slug).
        storage: Storage block holding the batch's outputs (to skip finished items).
        batch: Name of the batch: the folder of its outputs.
        items: The items themselves.
        items_file: Or a file of items: .txt (one per line), .csv or .parquet.
        column: Column of the .csv / .parquet file holding the items.
        items_from: Or an importable function returning the items.
        cave_query: Or a CAVE materialization table query (needs ``cave``).
        cave: CAVE block for ``cave_query``.
        kwargs: Fixed keyword arguments for every task.
        item_param: Parameter that takes the item (default: the function's first).
        overwrite: Queue items whose output exists too.
    """
    queue = load_block(queue, TaskQueue)
    storage = load_block(storage, CloudFilesStorage)
    cave = load_block(cave, CAVECredentials) if cave is not None else None
    found = read_items(items, items_file, column, items_from, cave_query, cave)
    result = enqueue_items(
        queue, storage, fn, found, batch, kwargs, item_param, overwrite, log=get_run_logger()
    )
    return result.as_dict()
