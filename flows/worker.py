"""The ``worker`` flow: one worker loop as a Prefect flow run (a pod on the GKE work pool).

It logs through the run logger and publishes its counters as a table artifact. It is also a
worker process entry, so it stops on SIGTERM the way ``tqflow.engine.process`` does.

Nothing in the loop waits on the Prefect API: logs go through Prefect's background log worker,
and the counters are published once at the end. An API outage mid-run costs no queue work; a
report that cannot be published is logged, and the run still returns its counters.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from blocks.cave import CAVECredentials
from blocks.queues.base import TaskQueue
from tqflow.errors import QueueUnreachableError
from blocks.specs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.engine.worker import Worker
from tqflow.engine.process import stop_on_signals


@flow(name="worker", log_prints=False)
def worker(
    queue: Union[TaskQueue, str],
    storage: Union[CloudFilesStorage, str],
    default_batch: str = "default",
    idle_seconds: float = 30.0,
    max_tasks: Optional[int] = None,
    max_seconds: Optional[float] = None,
    overwrite: bool = False,
    prefetch: Optional[int] = None,
    retry_base_seconds: float = 5.0,
    task_timeout_seconds: Optional[float] = None,
    allow: Optional[list[str]] = None,
    import_modules: Optional[list[str]] = None,
    cave: Union[CAVECredentials, str, None] = None,
    progress_seconds: float = 30.0,
) -> dict[str, Any]:
    """Drain ``queue`` into ``storage`` until it stays empty for ``idle_seconds``.

    Args:
        queue: The queue block to lease tasks from (or a saved block's slug).
        storage: Where outputs (``<batch>/outputs/<key>.json``) are written.
        default_batch: Batch for python-task-queue bodies, which name none.
        idle_seconds: Stop after the queue has been empty this long.
        max_tasks: Stop after this many tasks.
        max_seconds: Stop after this long.
        overwrite: Re-run items whose output exists instead of skipping them.
        prefetch: Messages leased per receive (default: sized from recent task durations).
        retry_base_seconds: First backoff before a failed task is retried.
        task_timeout_seconds: Stop a task after this long (a batch's own limit wins); it is
            retried, and dead-lettered after the queue's max receive count.
        allow: Modules whose functions may run besides those of batches enqueued through
            tqflow and the queue block's allowed_modules.
        import_modules: Modules to import first (python-task-queue RegisteredTask classes).
        cave: CAVE block for task functions that take a ``cave`` client.
        progress_seconds: How often the worker logs its counters and rate.
    """
    logger = get_run_logger()
    queue = load_block(queue, TaskQueue)
    storage = load_block(storage, CloudFilesStorage)
    cave = load_block(cave, CAVECredentials) if cave is not None else None
    loop = Worker(
        queue,
        storage,
        default_batch=default_batch,
        idle_seconds=idle_seconds,
        max_tasks=max_tasks,
        max_seconds=max_seconds,
        overwrite=overwrite,
        prefetch=prefetch,
        retry_base_seconds=retry_base_seconds,
        task_timeout_seconds=task_timeout_seconds,
        allow=allow or (),
        import_modules=import_modules or (),
        cave=cave,
        progress_seconds=progress_seconds,
        log=logger,
    )
    with stop_on_signals(loop):
        stats = loop.run().as_dict()
    if stats["stop_reason"] == "queue_unreachable":
        raise QueueUnreachableError(stats["error"])
    try:
        create_table_artifact(
            key="worker-stats",
            table=[{"counter": name, "value": value} for name, value in stats.items()],
            description=f"Worker {loop.name} on queue {queue.queue_name}",
        )
    except Exception as exc:  # the work is done and in storage; only the report is lost
        logger.warning("could not publish the worker-stats artifact (%s: %s)", type(exc).__name__, exc)
    return stats
