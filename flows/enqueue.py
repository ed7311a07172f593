"""The ``enqueue`` flow: one task message per work item, into the queue (`tqflow.enqueue`).

Items come from a list, a file (``.txt`` one per line, ``.csv`` / ``.parquet`` with a column),
an importable generator (``package.module:function``), or a CAVE materialization table query.
Items whose output already exists in the batch are skipped, so re-running a batch resumes it.
Every message is built and checked (size, arguments) before the first is sent, so bad input
loses nothing.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from prefect import flow, get_run_logger

from blocks.cave import CAVECredentials
from blocks.queues import QueueParameter, TaskQueue
from blocks.slugs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.enqueue import ItemSource, enqueue_items


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
