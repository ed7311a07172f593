"""The ``pipeline`` flow: enqueue -> fan-out -> monitor -> analysis.

With the default blocks it is the embedded pipeline: a local SQLite queue, a local folder, and
local worker processes. With an ``SQSTaskQueue``, a ``gs://`` storage block and
``mode="deployment"`` it is the GKE setup, unchanged: worker runs of a deployment, each with
``processes_per_run`` worker processes in its pod, watched with a constant number of requests
per poll whatever their number (`tqflow.fleet.deployment`). ``workers="auto"`` sizes the fleet
to finish within ``finish_within_seconds`` (`tqflow.fleet.sizing`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from blocks.cave import CAVECredentials, CAVETableQuery
from blocks.queues import QueueParameter, TaskQueue
from blocks.slugs import block_slug, load_block
from blocks.storage import CloudFilesStorage
from flows.analysis import analysis
from flows.cli.options import Target
from flows.enqueue import ItemSource, enqueue
from tqflow.artifacts import artifact_key
from tqflow.dashboard import BatchDashboard
from tqflow.engine.layout import errors_prefix, outputs_prefix
from tqflow.engine.messages import check_batch
from tqflow.engine.options import WorkerOptions
from tqflow.engine.reports import BatchTally, batch_tally, read_reports, report_seconds_for
from tqflow.errors import BadArgumentsError, BatchTimeLimitError, DeadLettersError, WorkersLostError
from tqflow.fleet.base import Fleet
from tqflow.fleet.deployment import DeploymentFleet
from tqflow.fleet.endings import why_ended
from tqflow.fleet.local import LocalFleet
from tqflow.fleet.monitor import Progress, watch
from tqflow.fleet.sizing import DeadlineSizer

#: The most worker processes ``workers="auto"`` runs without ``max_workers``: on this machine,
#: one per core; on a work pool, this many.
AUTO_MOST_DEPLOYMENT_WORKERS = 100
#: How often a deployment-mode pipeline looks at its queue and its runs, by default.
DEPLOYMENT_POLL_SECONDS = 10.0
#: Tasks of earlier runs' reports before their mean task time sizes an ``"auto"`` fleet.
PRIOR_TASKS = 10


@flow(name="pipeline")
def pipeline(
    fn: str,
    queue: QueueParameter,
    storage: Union[CloudFilesStorage, str],
    batch: str = "default",
    items: Optional[list[Any]] = None,
    items_file: Optional[str] = None,
    column: Optional[str] = None,
    items_from: Optional[str] = None,
    cave_query: Optional[CAVETableQuery] = None,
    cave: Union[CAVECredentials, str, None] = None,
    kwargs: Optional[dict[str, Any]] = None,
    workers: Union[int, Literal["auto"]] = 2,
    finish_within_seconds: Optional[float] = None,
    max_workers: Optional[int] = None,
    mode: Literal["local", "deployment"] = "local",
    worker_deployment: str = "worker/worker-gke",
    tasks_per_worker: int = 1_000,
    processes_per_run: int = 1,
    start_timeout_seconds: float = 900.0,
    time_limit_seconds: Optional[float] = None,
    worker_options: Optional[WorkerOptions] = None,
    task_timeout_seconds: Optional[float] = None,
    overwrite: bool = False,
    analyze: bool = True,
    poll_seconds: Optional[float] = None,
) -> dict[str, Any]:
    """Run one batch end to end and return its summary.

    Fails with `DeadLettersError` (after the analysis of the rest) when items ended in the
    dead-letter queue, naming how many and how to look at them.

    Args:
        fn: Task function, ``package.module:function``.
        queue: Queue block, or the slug of a saved one (``sqs-task-queue/prod``).
        storage: Storage block for the outputs, or its slug.
        batch: Name of the batch (its folder in storage).
        items, items_file, column, items_from, cave_query: Where the items come from (see
            ``enqueue``).
        cave: CAVE block: for ``cave_query``, and for task functions that take a ``cave``
            client (its token is checked before anything is queued).
        kwargs: Fixed keyword arguments for every task.
        workers: Most worker processes at once, or ``"auto"``: as few as finish the batch
            within ``finish_within_seconds``, measured as it runs (or from the batch's earlier
            runs), up to ``max_workers``.
        finish_within_seconds: With ``workers="auto"``: when the batch should be done.
        max_workers: With ``workers="auto"``: the most worker processes (default: this
            machine's cores in local mode, 100 in deployment mode).
        mode: ``local`` (worker processes here) or ``deployment`` (runs of
            ``worker_deployment``, e.g. on a GKE work pool).
        worker_deployment: ``flow-name/deployment-name`` of the worker deployment.
        tasks_per_worker: In deployment mode, one worker per this many queued tasks, up to
            ``workers``.
        processes_per_run: In deployment mode, worker processes in each worker run (pod):
            1,000 workers are 1,000 / this many runs (`tqflow plan-resources` proposes it).
        start_timeout_seconds: In deployment mode, a worker run not started this long after
            it was created (no node, quota, image pull) is cancelled and replaced.
        time_limit_seconds: Stop the batch (workers release what they hold) and fail if it
            is not done after this long.
        worker_options: How each worker runs (`WorkerOptions`: idle time, prefetch, retry
            backoff, allowed modules). Left-out fields keep their defaults, but idle_seconds
            is 5 (the enqueue has finished before workers start) and wait_for_in_flight is
            off (the pipeline starts workers again when retried tasks come back). The batch and
            ``overwrite`` are the pipeline's own.
        task_timeout_seconds: Time limit per task: a task past it is stopped and retried,
            and dead-lettered after the queue's max receive count.
        overwrite: Re-run items whose output exists.
        analyze: Run the analysis flow at the end.
        poll_seconds: How often the monitor reads the queue's counts and the fleet's runs
            (default 1 s in local mode; 10 s in deployment mode, a few requests a minute
            against Prefect Cloud's rate limits).
    """
    logger = get_run_logger()
    check_batch(batch)
    source = ItemSource(
        items=items,
        items_file=items_file,
        column=column,
        items_from=items_from,
        cave_query=cave_query,
    )
    processes = processes_per_run if mode == "deployment" else 1
    if poll_seconds is None:
        poll_seconds = DEPLOYMENT_POLL_SECONDS if mode == "deployment" else 1.0
    most = _most_workers(workers, finish_within_seconds, max_workers, mode)
    if tasks_per_worker < 1 or processes < 1:
        raise BadArgumentsError(
            f"tasks_per_worker={tasks_per_worker}, processes_per_run={processes_per_run}: both "
            "must be at least 1"
        )
    options = WorkerOptions.of(
        {
            "idle_seconds": 5.0,
            "wait_for_in_flight": False,
            "report_seconds": report_seconds_for(most),
        },
        **(worker_options.model_dump(exclude_unset=True) if worker_options else {}),
        default_batch=batch,
        overwrite=overwrite,
    )
    options.import_code()  # a retry rule or module that does not import fails here, once
    queue = load_block(queue, TaskQueue)
    storage = load_block(storage, CloudFilesStorage)
    cave = load_block(cave, CAVECredentials) if cave is not None else None
    if cave is not None:
        cave.get_client()  # a refused token fails here, not in every worker
    queue.ensure()
    dead_before = queue.counts().dead
    queued = enqueue(
        fn=fn,
        queue=queue,
        storage=storage,
        source=source,
        batch=batch,
        cave=cave,
        kwargs=kwargs,
        overwrite=overwrite,
        task_timeout_seconds=task_timeout_seconds,
    )
    # The batch's exact size is the enqueue's own count — what it sent and what earlier runs
    # had queued — not the queue's count, which on SQS lags up to a minute and includes other
    # batches: a stale zero would start no worker.
    total = queued["queued"] + queued["already_queued"]
    units = math.ceil(most / processes)  # the fleet's largest size, in runs (or processes)
    tasks_per_unit = tasks_per_worker * processes if mode == "deployment" else 1
    start = min(units, math.ceil(total / tasks_per_unit))
    sizer = None
    if workers == "auto":
        assert finish_within_seconds is not None  # checked by _most_workers
        sizer = DeadlineSizer(
            total, finish_within_seconds, units, processes, _mean_task_seconds(storage, batch)
        )
        start = min(start, sizer.initial())
    fleet = _fleet(
        mode, queue, storage, cave, options, worker_deployment, processes, start_timeout_seconds
    )
    logger.info(
        "batch %s: %d tasks to run (%d skipped as done); starting %d %s workers",
        batch,
        total,
        queued["skipped_done"],
        start * processes,
        mode,
    )
    progress_id = create_progress_artifact(
        progress=0.0, key=artifact_key(batch, "progress"), description=f"Batch {batch}"
    )

    def why_workers_died(tally: BatchTally) -> list[str]:
        return why_ended(fleet.endings, batch, tally, options.memory_limit_mib)

    board = BatchDashboard(
        batch,
        storage,
        why_workers_died,
        lambda: fleet.lost,
        logger,
        projected_finish=(lambda p: sizer.projected_finish(p, p.workers_running))
        if sizer
        else None,
    )

    def report(progress: Progress) -> None:
        update_progress_artifact(
            progress_id, 100.0 * progress.fraction, description=progress.line()
        )
        board.update(progress)

    fleet.launch(start)
    try:
        progress = watch(
            queue,
            fleet,
            total=total,
            dead_before=dead_before,
            workers=max(1, units),
            tasks_per_unit=tasks_per_unit,
            log=logger,
            on_progress=report,
            poll_seconds=poll_seconds,
            time_limit_seconds=time_limit_seconds,
            sizer=sizer,
        )
    except (WorkersLostError, BatchTimeLimitError) as exc:
        why = why_workers_died(batch_tally(read_reports(storage, batch)))
        raise type(exc)(f"{exc}. {' '.join(why)}".rstrip(". ") + ".") from None
    finally:
        fleet.stop()
    reports = read_reports(storage, batch)  # the workers' last reports
    if reports.warning():
        logger.warning(reports.warning())
    tally = batch_tally(reports)
    board.finish(progress, tally)
    why = why_workers_died(tally)
    for line in why:
        logger.warning("workers lost: %s", line)
    summary: dict[str, Any] = {
        "batch": batch,
        "queued": queued["queued"],
        "skipped_done": queued["skipped_done"],
        **{k: v for k, v in progress.as_dict().items() if k != "pending"},
        "workers_launched": fleet.launched * processes,
        "workers_lost": fleet.lost,
        "worker_endings": {f"{e.cause.value}: {e.detail}": n for e, n in fleet.endings.items()},
        "why_workers_died": why,
        "outputs": storage.url(outputs_prefix(batch)),
    }
    if sizer is not None:
        summary["fleet_size_over_time"] = sizer.history[:: max(1, len(sizer.history) // 200)]
    if analyze:
        summary["analysis"] = analysis(storage=storage, batch=batch)
    if progress.dead_lettered:
        flags = Target.of_queue(queue, batch).flags()
        raise DeadLettersError(
            f"{progress.dead_lettered} of {total} items of batch {batch!r} ended in the "
            f"dead-letter queue of {queue.queue_name!r}. See why with "
            f"`tqflow dead-letters list {flags}` (tracebacks in "
            f"{storage.url(errors_prefix(batch))}); after fixing the cause, send them back with "
            f"`tqflow dead-letters redrive {flags}` and run them with `tqflow work {flags}` "
            "or this pipeline again"
        )
    return summary


def _most_workers(
    workers: Union[int, str], finish_within: Optional[float], max_workers: Optional[int], mode: str
) -> int:
    """The most worker processes the batch may have at once."""
    if workers == "auto":
        if not finish_within or finish_within <= 0:
            raise BadArgumentsError(
                "workers='auto' sizes the fleet to a deadline: give finish_within_seconds, e.g. "
                "3600 to finish within an hour"
            )
        if max_workers is not None and max_workers < 1:
            raise BadArgumentsError(f"max_workers={max_workers}: give at least 1")
        default = (os.cpu_count() or 2) if mode == "local" else AUTO_MOST_DEPLOYMENT_WORKERS
        return max_workers or default
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise BadArgumentsError(
            f"workers={workers!r}: give a number of workers (at least 1), or 'auto' with "
            "finish_within_seconds"
        )
    return workers


def _mean_task_seconds(storage: CloudFilesStorage, batch: str) -> Optional[float]:
    """The batch's mean task time in its earlier runs' reports, if enough tasks ran."""
    tally = batch_tally(read_reports(storage, batch))
    if tally.measured_tasks < PRIOR_TASKS or tally.task_seconds <= 0:
        return None
    return tally.task_seconds / tally.measured_tasks


def _fleet(
    mode: str,
    queue: TaskQueue,
    storage: CloudFilesStorage,
    cave: Optional[CAVECredentials],
    options: WorkerOptions,
    worker_deployment: str,
    processes: int,
    start_timeout_seconds: float,
) -> Fleet:
    if mode == "local":
        return LocalFleet(queue, storage, options, cave)
    parameters: dict[str, Any] = {
        "queue": _slug(queue),
        "storage": _slug(storage),
        "options": options.model_dump(mode="json", exclude_unset=True),
    }
    if cave is not None:
        parameters["cave"] = _slug(cave)
    return DeploymentFleet(
        worker_deployment,
        parameters,
        run_key=str(flow_run.id),
        parent_flow_run_id=flow_run.id,
        processes=processes,
        start_timeout_seconds=start_timeout_seconds,
    )


def _slug(block: Any) -> str:
    """A saved block's slug: what the worker runs load when they start, so no credential
    travels as a flow-run parameter."""
    slug = block_slug(block)
    if slug is None:
        raise BadArgumentsError(
            f"{type(block).__name__} must be a saved block for deployment fan-out: "
            "save it (block.save('name')) and pass the loaded block or its slug"
        )
    return slug
