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
from blocks.queues import QueueParameter, TaskQueue
from blocks.specs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.engine.options import WorkerOptions
from tqflow.engine.process import stop_on_signals
from tqflow.engine.worker import Worker
from tqflow.errors import QueueUnreachableError


@flow(name="worker", log_prints=False)
def worker(
    queue: QueueParameter,
    storage: Union[CloudFilesStorage, str],
    options: Optional[WorkerOptions] = None,
    cave: Union[CAVECredentials, str, None] = None,
) -> dict[str, Any]:
    """Drain ``queue`` into ``storage`` until it stays empty for ``options.idle_seconds``.

    Args:
        queue: The queue block to lease tasks from (or a saved block's slug).
        storage: Where outputs (``<batch>/outputs/<key>.json``) are written.
        options: How the worker runs (`WorkerOptions`: idle and task time limits, prefetch,
            retries, allowed modules); each field has its default when left out.
        cave: CAVE block for task functions that take a ``cave`` client.
    """
    logger = get_run_logger()
    queue = load_block(queue, TaskQueue)
    storage = load_block(storage, CloudFilesStorage)
    cave = load_block(cave, CAVECredentials) if cave is not None else None
    loop = Worker(queue, storage, options, cave=cave, log=logger)
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
        logger.warning(
            "could not publish the worker-stats artifact (%s: %s)", type(exc).__name__, exc
        )
    return stats
