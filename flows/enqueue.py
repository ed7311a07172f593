"""The ``enqueue`` flow: one task message per work item, into the queue.

Items come from a list, a file (``.txt`` one per line, ``.csv`` / ``.parquet`` with a column),
an importable generator (``package.module:function``), or a CAVE materialization table query. Items whose output already exists in
the batch are skipped, so re-running a batch resumes it. Every message is built and checked
(size, arguments) before the first is sent, so bad input loses nothing.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, model_validator

from blocks.cave import CAVECredentials, CAVETableQuery
from blocks.queues import QueueParameter, TaskQueue
from blocks.slugs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.engine.allowed_modules import record_batch_function
from tqflow.engine.batch_messages import task_messages
from tqflow.engine.calls import resolve
from tqflow.engine.layout import enqueued_prefix, output_path, outputs_prefix
from tqflow.errors import (
    EnqueueInterruptedError,
    ItemSourceError,
    ParameterError,
)
from tqflow.items import Items, ItemsFile, exact_column, from_values, read_file, read_items_file

#: Items from which the resume check lists the batch's outputs instead of checking each.
LIST_OUTPUTS_FROM = 1_000

#: Messages sent per step. On a queue that cannot deduplicate (SQS) the record of what was
#: sent is written after each step: an enqueue killed outright re-sends at most one step.
SEND_STEP = 1_000


@dataclass(frozen=True)
class EnqueueResult:
    #: Messages sent now.
    queued: int
    #: Items whose output exists: done in an earlier run.
    skipped_done: int
    #: Items given more than once.
    duplicates: int
    #: Items queued by an earlier run of this enqueue and not done yet (still in the queue, in
    #: flight, or dead-lettered): not sent again.
    already_queued: int = 0
    #: Empty cells skipped in the items file.
    empty_cells: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def line(self) -> str:
        parts = [f"queued {self.queued:,} tasks", f"{self.skipped_done:,} skipped as already done"]
        if self.already_queued:
            parts.append(f"{self.already_queued:,} already queued by an earlier run")
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate items dropped")
        if self.empty_cells:
            parts.append(f"{self.empty_cells:,} empty cells skipped")
        return "; ".join(parts)


#: An ``items`` parameter larger than this (as JSON) is said to belong in a file.
LARGE_ITEMS_PARAMETER_BYTES = 1_000_000


class SentRecord:
    """What an enqueue sent to a queue that cannot deduplicate, kept in the batch's storage
    folder (``<batch>/enqueued/<queue>/<step>.json``, ``{"keys": [...]}``), so that a re-run,
    after the enqueue finished or was interrupted, sends only what is missing. The steps are
    read in parallel (a thousand of them at 10^6 items); ``.txt`` steps, one key per line, are
    what earlier versions wrote, and are read too."""

    def __init__(self, storage: CloudFilesStorage, batch: str, queue_name: str):
        self.storage = storage
        self.prefix = enqueued_prefix(batch, queue_name)

    def keys(self) -> set[str]:
        paths = list(self.storage.list(self.prefix))
        keys: set[str] = set()
        steps = self.storage.get_json_many(p for p in paths if p.endswith(".json"))
        for path, step in steps.items():
            if not isinstance(step, dict) or not isinstance(step.get("keys"), list):
                steps.corrupt[path] = "not a record of sent keys"
                continue
            keys.update(map(str, step["keys"]))
        if steps.corrupt:
            # A damaged step forgets what it recorded: those items may be sent again, and
            # the worker skips any whose output exists. Nothing is lost either way.
            logging.getLogger("tqflow.enqueue").warning(
                "%s record(s) of sent items unreadable, their items may be sent again: %s",
                len(steps.corrupt),
                ", ".join(sorted(steps.corrupt)[:3]),
            )
        for path in (p for p in paths if p.endswith(".txt")):
            keys.update((self.storage.get(path) or b"").decode("utf-8").split())
        return keys

    def add(self, keys: list[str]) -> None:
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.json"
        self.storage.put_json(self.prefix + name, {"keys": keys})


class ItemSource(BaseModel):
    """Where a batch's items come from: exactly one of ``items``, ``items_file`` (with
    ``column`` for .csv / .parquet) or ``cave_query``; ``items_from`` is the default source,
    used when none of those is given (so a deployment can name a default generator that a run
    replaces by passing items or a file). Checked when made, before anything is queued.

    Example:
        ```python
        from flows.enqueue import ItemSource

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
        cave: Optional[CAVECredentials] = None,
        storage: Optional[CloudFilesStorage] = None,
    ) -> Items:
        """The items, read exactly (`tqflow.items`); ``cave`` is needed for a ``cave_query``,
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
                    "cave=..."
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
        if "://" in self.items_file:
            return read_items_file(self._download(self.items_file, storage), self.column)
        return read_file(Path(self.items_file).expanduser(), self.column)

    @staticmethod
    def _download(url: str, storage: Optional[CloudFilesStorage]) -> ItemsFile:
        reader = storage or CloudFilesStorage(cloudpath="file:///")
        content = reader.read_url(url)
        if content is None:
            raise ItemSourceError(f"items file {url} does not exist")
        return ItemsFile(url, content)


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


def done_outputs(
    storage: CloudFilesStorage, batch: str, keys: list[str], list_from: int = LIST_OUTPUTS_FROM
) -> set[str]:
    """The output paths of ``keys`` that exist: items done in an earlier run.

    From ``list_from`` items on, the batch's outputs are listed (GCS and S3 answer a list with
    up to 1,000 keys; S3 checks one key per request, GCS 100 per batch request) instead of
    checked one by one: in parallel ranges cut at the keys' quantiles, for a large batch."""
    paths = [output_path(batch, key) for key in keys]
    if len(paths) < list_from:
        return {path for path, exists in storage.exists_many(paths).items() if exists}
    listed = set(storage.list(outputs_prefix(batch), expected=paths))
    return {path for path in paths if path in listed}


def enqueue_items(
    queue: TaskQueue,
    storage: CloudFilesStorage,
    fn: str,
    items: Iterable[Any],
    batch: str,
    *,
    kwargs: Optional[dict[str, Any]] = None,
    item_param: Optional[str] = None,
    overwrite: bool = False,
    requeue: bool = False,
    stop: Optional[threading.Event] = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    step: int = SEND_STEP,
    task_timeout_seconds: Optional[float] = None,
) -> EnqueueResult:
    """Queue ``fn(item, **kwargs)`` for every item of ``batch`` that is neither done nor
    already queued.

    Idempotent: run again, after it finished or after it was stopped at any point, it leaves
    one live message per item that is not done. The local queue enforces it itself (dedup ids);
    for SQS a `SentRecord` in storage says what was sent. ``requeue`` sends again the items
    queued earlier and not done (e.g. after the queue was purged; the local queue does so by
    itself, as it knows what it holds). ``stop``, when set, ends the
    enqueue between two steps with `EnqueueInterruptedError`. ``step``: messages sent between two
    records of what was sent; on SQS a kill re-sends at most one step.
    ``task_timeout_seconds``: the batch's time limit per task, carried by each message.

    The batch's function is noted in storage first (`record_batch_function`): workers run
    only functions of batches enqueued this way, or of allowed modules.
    """
    log = log or logging.getLogger("tqflow.enqueue")
    empty_cells = len(getattr(items, "empty_lines", ()))
    if task_timeout_seconds is not None and not task_timeout_seconds > 0:
        raise ParameterError(
            f"task_timeout_seconds must be a positive number of seconds, not {task_timeout_seconds!r}"
        )
    # Every body is built and checked before the first is sent: bad input loses nothing. Only
    # (key, body) pairs are kept, not the messages: ~250 bytes an item (1M items: ~250 MB).
    bodies: list[tuple[str, str]] = []
    duplicates, seen = 0, set()
    for message in task_messages(fn, items, batch, kwargs, item_param, task_timeout_seconds):
        if message.key in seen:
            duplicates += 1
            continue
        seen.add(message.key)
        bodies.append((message.key, message.encode(max_bytes=queue.max_message_bytes)))
    seen_any = bool(seen)
    del seen
    storage.check()
    skipped = 0
    if not overwrite and bodies:
        done = done_outputs(storage, batch, [key for key, _ in bodies])
        if done:
            todo = [(k, b) for k, b in bodies if output_path(batch, k) not in done]
            skipped, bodies = len(bodies) - len(todo), todo
    record = None if queue.deduplicates else SentRecord(storage, batch, queue.queue_name)
    already = 0
    if record is not None and not requeue and bodies:
        sent_before = record.keys()
        if sent_before:
            todo = [(k, b) for k, b in bodies if k not in sent_before]
            already, bodies = len(bodies) - len(todo), todo
    # Into a bucket, sent in an order shuffled by the batch's name (the same on every re-run):
    # workers then write outputs all over the key range instead of from the first key to the
    # last, the sequential pattern that GCS's request-rate guide says ramps worst (a bucket
    # starts near 1,000 writes a second and splits its key ranges as load spreads over them).
    # The output names stay the item keys: the layout users read, and resume relies on, does
    # not change. Into a local folder the order costs nothing, and a shuffled one costs the
    # local queue's dedup index a page written per message: 1M items took 3.5x as long.
    if not storage.is_local:
        random.Random(f"tqflow:{batch}").shuffle(bodies)
    queue.ensure()
    if seen_any:
        replaced = record_batch_function(storage, batch, fn)
        if replaced:
            log.warning("batch %s: %s", batch, replaced)
    queued = 0

    def result() -> EnqueueResult:
        return EnqueueResult(queued, skipped, duplicates, already, empty_cells)

    for start in range(0, len(bodies), step):
        if stop is not None and stop.is_set():
            raise EnqueueInterruptedError(result(), len(bodies) - start, batch)
        chunk = bodies[start : start + step]
        sent = queue.send(
            [body for _, body in chunk], dedup_ids=[f"{batch}/{key}" for key, _ in chunk]
        )
        queued += sent
        already += len(chunk) - sent
        if record is not None:
            record.add([key for key, _ in chunk])
    log.info("batch %s on %s: %s", batch, queue.queue_name, result().line())
    return result()


@flow(name="enqueue")
def enqueue(
    fn: str,
    queue: QueueParameter,
    storage: Union[CloudFilesStorage, str],
    source: ItemSource,
    batch: str = "default",
    cave: Union[CAVECredentials, str, None] = None,
    kwargs: Optional[dict[str, Any]] = None,
    item_param: Optional[str] = None,
    overwrite: bool = False,
    requeue: bool = False,
    task_timeout_seconds: Optional[float] = None,
) -> dict[str, int]:
    """Queue one task per item: ``fn(<item_param>=item, **kwargs)``.

    Args:
        fn: Task function, ``package.module:function``; it must be importable here and in
            the workers.
        queue: Queue block to send to (or a saved block's slug).
        storage: Storage block holding the batch's outputs (to skip finished items).
        source: Where the items come from (`ItemSource`).
        batch: Name of the batch: the folder of its outputs.
        cave: CAVE block for a ``cave_query`` source.
        kwargs: Fixed keyword arguments for every task.
        item_param: Parameter that takes the item (default: the function's first).
        overwrite: Queue items whose output exists too.
        requeue: Queue again the items an earlier run queued that are not done (after the
            queue was purged); without it a re-run sends only what was never sent.
        task_timeout_seconds: Time limit per task: a task past it is stopped and retried,
            and dead-lettered after the queue's max receive count (default: the worker's).
    """
    queue = load_block(queue, TaskQueue)
    storage = load_block(storage, CloudFilesStorage)
    cave = load_block(cave, CAVECredentials) if cave is not None else None
    logger = get_run_logger()
    found = source.read(cave, storage)
    if found.report():
        logger.warning(found.report())
    result = enqueue_items(
        queue,
        storage,
        fn,
        found,
        batch,
        kwargs=kwargs,
        item_param=item_param,
        overwrite=overwrite,
        requeue=requeue,
        log=logger,
        task_timeout_seconds=task_timeout_seconds,
    )
    return result.as_dict()
