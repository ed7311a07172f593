"""The ``worker`` flow: worker loops as one Prefect flow run (a pod on the GKE work pool).

With ``processes=1`` the loop runs in the run's own process; with more, that many worker
processes are forked warm in the pod and kept while work is visible
(`tqflow.fleet.processes`). The run is a worker process entry either way: SIGTERM (spot
preemption) stops its workers, which release their leases.

Its logs scale with time, not with tasks: each message's failure goes to the pod's own log
(stderr) and to the item's error record; the run log gets the start, one line per
``progress_seconds`` per worker process with the failures since the last line by error type,
and the end. Its counters are published once, at the end, as the ``worker-stats`` table
artifact, one row per worker process (how a lost one ended included), which the pipeline's
fleet reads. Nothing in the loop waits on the Prefect API: an API outage costs no queue work.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from blocks.cave import CAVECredentials
from blocks.queues import QueueParameter, TaskQueue
from blocks.slugs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.engine.options import WorkerOptions
from tqflow.engine.process import log_to_stderr, run_worker
from tqflow.engine.signals import stop_on_signals
from tqflow.engine.stats import Outcome, StopReason
from tqflow.errors import ParameterError, QueueUnreachableError
from tqflow.fleet.deployment import FLEET_TAG_PREFIX
from tqflow.fleet.processes import run_processes

#: Counters summed over a run's processes.
_SUMMED = (*(o.value for o in Outcome), "timed_out", "processed")


@flow(name="worker", log_prints=False)
def worker(
    queue: QueueParameter,
    storage: Union[CloudFilesStorage, str],
    options: Optional[WorkerOptions] = None,
    cave: Union[CAVECredentials, str, None] = None,
    processes: int = 1,
) -> dict[str, Any]:
    """Drain ``queue`` into ``storage`` until nothing is left for its workers.

    Args:
        queue: The queue block to lease tasks from (or a saved block's slug).
        storage: Where outputs (``<batch>/outputs/<key>.json``) are written.
        options: How each worker runs (`WorkerOptions`: idle and task time limits, prefetch,
            retries, allowed modules); each field has its default when left out.
        cave: CAVE block for task functions that take a ``cave`` client.
        processes: Worker processes in this run (its pod), forked warm; size the pod for them
            (`tqflow plan-resources`).
    """
    logger = get_run_logger()
    if processes < 1:
        raise ParameterError(f"processes={processes}: a worker run needs at least 1")
    queue = load_block(queue, TaskQueue)
    storage = load_block(storage, CloudFilesStorage)
    cave = load_block(cave, CAVECredentials) if cave is not None else None
    options = options or WorkerOptions()
    if options.unit is None and _fleet_unit() is not None:
        options = WorkerOptions.of(options, unit=_fleet_unit())
    if processes == 1:
        stats = run_worker(
            queue, storage, options, cave=cave, log=log_to_stderr(), progress_log=logger
        )
        rows = [{**stats.as_dict(), "ending": "", "ending_detail": ""}]
    else:
        options.import_code()  # fails here once, not in every process
        stop = threading.Event()

        def request_stop() -> bool:
            stop.set()
            return False  # the processes stop themselves: nothing to interrupt here

        logger.info("starting %d worker processes on %s", processes, queue.queue_name)
        with stop_on_signals(request_stop):
            rows = run_processes(
                queue, storage, options, processes, cave=cave, stop=stop, log=logger
            )
    rows = [{"process": number, **row} for number, row in enumerate(rows, start=1)]
    if any(r.get("stop_reason") == StopReason.QUEUE_UNREACHABLE for r in rows):
        raise QueueUnreachableError(
            next(r.get("error") or "" for r in rows if r.get("stop_reason") == "queue_unreachable")
        )
    try:
        create_table_artifact(
            key="worker-stats",
            table=rows,
            description=f"{len(rows)} worker process(es) on queue {queue.queue_name}",
        )
    except Exception as exc:  # the work is done and in storage; only the report is lost
        logger.warning(
            "could not publish the worker-stats artifact (%s: %s)", type(exc).__name__, exc
        )
    return {**{name: sum(r.get(name) or 0 for r in rows) for name in _SUMMED}, "processes": rows}


def _fleet_unit() -> Optional[str]:
    """This run's id when a pipeline's fleet launched it (its tag says so): its workers are
    that unit (their reports name it, and the pipeline drains them by it)."""
    tags = flow_run.tags or []
    if flow_run.id and any(str(tag).startswith(FLEET_TAG_PREFIX) for tag in tags):
        return str(flow_run.id)
    return None
