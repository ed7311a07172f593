"""The ``pipeline`` flow: enqueue -> fan-out -> analysis.

With the default blocks it is the embedded pipeline: a local SQLite queue, a local folder, and
local worker processes. With an ``SQSTaskQueue``, a ``gs://`` storage block and
``mode="deployment"`` it is the GKE setup, unchanged: worker runs of a deployment, each with
``processes_per_run`` worker processes in its pod (`tqflow.fleet.deployment`). The fan-out is
the batch controller's (`tqflow.fleet.controller`): this flow checks its parameters, builds
everything a worker needs before the first message is sent, and turns the controller's typed
outcome into its state.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from blocks.cave import CAVECredentials
from blocks.queues import QueueParameter, TaskQueue
from blocks.slugs import block_slug, load_block
from blocks.storage import CloudFilesStorage
from flows.analysis import analysis
from flows.enqueue import enqueue
from tqflow.artifacts import artifact_key
from tqflow.engine.drain import DrainBoard
from tqflow.engine.layout import errors_prefix, outputs_prefix
from tqflow.engine.messages import check_batch
from tqflow.engine.options import WorkerOptions
from tqflow.engine.reports import batch_tally, read_reports, report_seconds_for
from tqflow.enqueue import CAVETableQuery, ItemSource
from tqflow.errors import (
    BatchTimeLimitError,
    DeadLettersError,
    ParameterError,
    WorkersCannotStartError,
    WorkersLostError,
)
from tqflow.fleet.api_budget import BudgetSetting
from tqflow.fleet.base import Fleet
from tqflow.fleet.controller import BatchController, BatchOutcome, Ended, PipelineStart
from tqflow.fleet.dashboard import BatchDashboard
from tqflow.fleet.deployment import DeploymentFleet, batch_tag
from tqflow.fleet.local import LocalFleet
from tqflow.fleet.plan import FanOutPlan
from tqflow.fleet.progress import Progress

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
    api_budget: BudgetSetting = None,
    launch_concurrency: Optional[int] = None,
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
            it was launched is waiting for capacity (no node, the project's quota): the fleet
            goes on with what started and launches no more; if none started, or the image
            cannot be pulled, the batch stops, saying why.
        time_limit_seconds: Stop the batch (workers release what they hold) and fail if it
            is not done this long after the pipeline started.
        worker_options: How each worker runs (`WorkerOptions`: idle time, prefetch, retry
            backoff, allowed modules). Left-out fields keep their defaults, but idle_seconds
            is 5 (the enqueue has finished before workers start) and wait_for_in_flight is
            off (the pipeline starts workers again when retried tasks come back). The batch and
            ``overwrite`` are the pipeline's own.
        task_timeout_seconds: Time limit per task: a task past it is stopped and retried,
            and dead-lettered after the queue's max receive count.
        overwrite: Re-run items whose output exists.
        analyze: Run the analysis flow at the end.
        poll_seconds: How often the controller reads the queue's counts and the fleet's
            runs (default 1 s in local mode; 10 s in deployment mode, a few requests a minute
            against Prefect Cloud's rate limits).
        api_budget: Prefect API requests a minute the batch's launches may spend, its worker
            runs' own calls included: a Prefect Cloud plan (``hobby``, ``starter``, ``team``,
            ``pro``) or a number; none on a self-hosted server.
        launch_concurrency: In deployment mode, worker runs created at once (default: 8 on
            Prefect Cloud, 1 on a self-hosted server, whose SQLite takes one write at a time; a
            server on PostgreSQL takes more).
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
    plan = FanOutPlan.of(
        workers=workers,
        finish_within_seconds=finish_within_seconds,
        max_workers=max_workers,
        mode=mode,
        tasks_per_worker=tasks_per_worker,
        processes_per_run=processes_per_run,
        start_timeout_seconds=start_timeout_seconds,
        time_limit_seconds=time_limit_seconds,
        poll_seconds=poll_seconds,
        api_budget=api_budget,
        launch_concurrency=launch_concurrency,
    )
    options = WorkerOptions.of(
        {
            "idle_seconds": 5.0,
            "wait_for_in_flight": False,
            "report_seconds": report_seconds_for(plan.most_workers),
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
    # Everything a worker needs, built and checked before the first message is sent.
    fleet = _fleet(plan, queue, storage, cave, options, batch, worker_deployment)
    queue.ensure()
    run_key = str(flow_run.id)
    start = PipelineStart.of(storage, batch, run_key, queue.counts().dead, time.time())
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
    logger.info(
        "batch %s: %d tasks to run (%d skipped as done), at most %d %s workers",
        batch,
        total,
        queued["skipped_done"],
        plan.most_workers,
        mode,
    )
    board = BatchDashboard(batch, storage, logger, options.memory_limit_mib)
    progress_id = create_progress_artifact(
        progress=0.0, key=artifact_key(batch, "progress"), description=f"Batch {batch}"
    )

    def report(progress: Progress, fleet: Fleet) -> None:
        update_progress_artifact(
            progress_id, 100.0 * progress.fraction, description=progress.line()
        )
        board.update(progress, fleet)

    outcome = BatchController(
        queue,
        fleet,
        plan.sizer(total, _mean_task_seconds(storage, batch) if plan.deadline_seconds else None),
        plan.settings(options.report_seconds, options.idle_seconds),
        batch=batch,
        total=total,
        start=start,
        reports=storage,
        log=logger,
        on_progress=report,
    ).run()
    reports = read_reports(storage, batch)  # the workers' last reports
    if reports.warning():
        logger.warning(reports.warning())
    tally = batch_tally(reports)
    board.finish(outcome.progress, fleet, tally)
    why = board.why_workers_died(fleet, tally)
    for line in why:
        logger.warning("workers lost: %s", line)
    _fail_unless_drained(outcome, why, plan.time_limit_seconds)
    summary: dict[str, Any] = {
        "batch": batch,
        "queued": queued["queued"],
        "skipped_done": queued["skipped_done"],
        **{k: v for k, v in outcome.progress.as_dict().items() if k != "pending"},
        "workers_launched": outcome.launched * plan.processes,
        "workers_adopted": outcome.adopted * plan.processes,
        "workers_lost": outcome.lost,
        "worker_endings": {f"{e.cause.value}: {e.detail}": n for e, n in outcome.endings.items()},
        "why_workers_died": why,
        "outputs": storage.url(outputs_prefix(batch)),
    }
    if plan.deadline_seconds is not None:
        summary["fleet_size_over_time"] = outcome.sizes[:: max(1, len(outcome.sizes) // 200)]
    if analyze:
        summary["analysis"] = analysis(storage=storage, batch=batch)
    dead = outcome.progress.dead_lettered
    if dead:
        flags = queue.command_flags(batch)
        raise DeadLettersError(
            f"{dead} of {total} items of batch {batch!r} ended in the dead-letter queue of "
            f"{queue.queue_name!r}. See why with `tqflow dead-letters list {flags}` "
            f"(tracebacks in {storage.url(errors_prefix(batch))}); after fixing the cause, send "
            f"them back with `tqflow dead-letters redrive {flags}` and run them with "
            f"`tqflow work {flags}` or this pipeline again"
        )
    return summary


def _fail_unless_drained(
    outcome: BatchOutcome, why: list[str], time_limit_seconds: Optional[float]
) -> None:
    """The flow's failure for a batch that ended otherwise than drained."""
    line = outcome.progress.line()
    died = f" {' '.join(why)}".rstrip(". ") + "." if why else ""
    if outcome.ended is Ended.TIME_LIMIT:
        raise BatchTimeLimitError(
            f"the batch passed its time limit of {time_limit_seconds or 0:,.0f} s with "
            f"{outcome.progress.pending:,} tasks not done ({line}); its workers are stopped and "
            "release what they hold. Run it again to go on (nothing done is run again), or "
            f"give it more time or workers.{died}"
        )
    if outcome.ended is Ended.WORKERS_LOST:
        raise WorkersLostError(
            f"{outcome.progress.pending:,} messages remain but workers keep ending "
            f"({outcome.lost} lost, {outcome.lost_charged} of them not preempted); see the "
            f"worker logs.{died}"
        )
    if outcome.ended is Ended.CANNOT_START:
        raise WorkersCannotStartError(
            f"no worker could start ({outcome.reason or 'no reason given by the cluster'}): "
            "for an image that cannot be pulled, check the deployment's image and the nodes' "
            "access to its registry; for runs no worker picked up, start a worker of the work "
            "pool; for capacity, the project's quota and the node pool's size "
            "(`kubectl get events -n tqflow`). The queued tasks wait: run the pipeline again "
            "once it is fixed"
        )


def _mean_task_seconds(storage: CloudFilesStorage, batch: str) -> Optional[float]:
    """The batch's mean task time in its earlier runs' reports, if enough tasks ran."""
    tally = batch_tally(read_reports(storage, batch))
    if tally.measured_tasks < PRIOR_TASKS or tally.task_seconds <= 0:
        return None
    return tally.task_seconds / tally.measured_tasks


def _fleet(
    plan: FanOutPlan,
    queue: TaskQueue,
    storage: CloudFilesStorage,
    cave: Optional[CAVECredentials],
    options: WorkerOptions,
    batch: str,
    worker_deployment: str,
) -> Fleet:
    board = DrainBoard(storage, batch)
    if plan.mode == "local":
        return LocalFleet(queue, storage, options, cave, drain_board=board)
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
        batch_tag=batch_tag(queue.queue_name, batch),
        parent_flow_run_id=flow_run.id,
        processes=plan.processes,
        start_timeout_seconds=plan.start_timeout_seconds,
        launch_concurrency=plan.launch_concurrency,
        drain_board=board,
    )


def _slug(block: Any) -> str:
    """A saved block's slug: what the worker runs load when they start, so no credential
    travels as a flow-run parameter."""
    slug = block_slug(block)
    if slug is None:
        raise ParameterError(
            f"{type(block).__name__} must be a saved block for deployment fan-out: "
            "save it (block.save('name')) and pass the loaded block or its slug"
        )
    return slug
