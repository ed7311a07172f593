"""The ``pipeline`` flow: enqueue -> fan-out -> monitor -> analysis.

With the default blocks it is the embedded pipeline: a local SQLite queue, a local folder, and
local worker processes. With an ``SQSTaskQueue``, a ``gs://`` storage block and
``mode="deployment"`` it is the GKE setup, unchanged.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from blocks.cave import CAVECredentials, CAVETableQuery
from blocks.queues import QueueParameter, TaskQueue
from blocks.specs import load_block
from blocks.storage import CloudFilesStorage
from flows.analysis import analysis, artifact_key
from flows.enqueue import ItemSource, enqueue
from tqflow.dashboard import Snapshot, Throughput, markdown
from tqflow.engine.messages import check_batch
from tqflow.engine.options import WorkerOptions
from tqflow.engine.reports import BatchTally, batch_tally, read_reports
from tqflow.errors import BadArgumentsError, DeadLettersError, WorkersLostError
from tqflow.fleet.endings import explain
from tqflow.fleet.fanout import DeploymentFleet, Fleet, LocalFleet
from tqflow.fleet.monitor import Progress, watch


def cli_flags(queue: TaskQueue, batch: str) -> str:
    """The ``tqflow`` options that reach ``queue`` and ``batch``, for hints."""
    from pathlib import Path

    from blocks.queues.local import LocalTaskQueue

    flags = [f"--batch {batch}"]
    name = getattr(queue, "_block_document_name", None)
    if name and not getattr(queue, "_is_anonymous", True):
        flags.append(f"--queue-block {queue.get_block_type_slug()}/{name}")
    else:
        flags.append(f"--queue {queue.queue_name}")
        if isinstance(queue, LocalTaskQueue):
            flags.append(f"--data {Path(queue.path).expanduser().resolve().parent}")
    return " ".join(flags)


#: Seconds between two updates of a running batch's dashboard artifact.
DASHBOARD_SECONDS = 5.0


class BatchDashboard:
    """The batch's dashboard artifact (key ``<batch>-dashboard``): made once, then updated in
    place at most every `DASHBOARD_SECONDS` while the batch drains, and once at its end. A
    failure to publish is logged and never stops the batch."""

    def __init__(
        self,
        batch: str,
        storage: CloudFilesStorage,
        fleet: Fleet,
        memory_limit_mib: Optional[int],
        logger: Any,
    ) -> None:
        self.batch, self.storage, self.fleet = batch, storage, fleet
        self.memory_limit_mib, self.logger = memory_limit_mib, logger
        self.throughput = Throughput()
        self.artifact_id: Any = None
        self.last = float("-inf")

    def update(self, progress: Progress) -> None:
        """While the batch drains: publish if `DASHBOARD_SECONDS` have passed."""
        self.throughput.add(progress.elapsed_seconds, progress.done)
        if time.monotonic() - self.last < DASHBOARD_SECONDS:
            return
        self.last = time.monotonic()
        self._publish(progress)

    def finish(self, progress: Progress, tally: BatchTally) -> None:
        """Once, at the end, with the batch's final tally (the monitor's last poll, which
        gave ``progress``, is already in the throughput)."""
        self._publish(progress, tally, finished=True)

    def _publish(
        self, progress: Progress, tally: Optional[BatchTally] = None, finished: bool = False
    ) -> None:
        try:
            if tally is None:
                tally = batch_tally(read_reports(self.storage, self.batch))
            self._write(progress, tally, finished)
        except Exception as exc:
            self.logger.warning("could not publish the dashboard of %s: %s", self.batch, exc)

    def _write(self, progress: Progress, tally: BatchTally, finished: bool) -> None:
        snapshot = Snapshot(
            batch=self.batch,
            total=progress.total,
            done=progress.done,
            in_flight=progress.in_flight,
            waiting=max(0, progress.pending - progress.in_flight),
            dead_lettered=progress.dead_lettered,
            elapsed_seconds=progress.elapsed_seconds,
            tasks_per_second=progress.tasks_per_second,
            eta_seconds=progress.eta_seconds,
            workers_running=progress.workers_running,
            workers_lost=self.fleet.lost,
            why_workers_died=explain(self.fleet.endings, self.batch, tally, self.memory_limit_mib),
            tally=tally,
            finished=finished,
        )
        text = markdown(snapshot, self.throughput.png(self.batch))
        if self.artifact_id is None:
            self.artifact_id = create_markdown_artifact(
                key=artifact_key(self.batch, "dashboard"),
                markdown=text,
                description=f"Batch {self.batch}: live dashboard",
            )
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            client.update_artifact(self.artifact_id, ArtifactUpdate(data=text))


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
    workers: int = 2,
    mode: Literal["local", "deployment"] = "local",
    worker_deployment: str = "worker/worker-gke",
    tasks_per_worker: int = 1_000,
    worker_options: Optional[WorkerOptions] = None,
    task_timeout_seconds: Optional[float] = None,
    overwrite: bool = False,
    analyze: bool = True,
    poll_seconds: float = 1.0,
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
        workers: Most workers to run at once.
        mode: ``local`` (worker processes here) or ``deployment`` (runs of
            ``worker_deployment``, e.g. on a GKE work pool).
        worker_deployment: ``flow-name/deployment-name`` of the worker deployment.
        tasks_per_worker: In deployment mode, one worker per this many queued tasks, up to
            ``workers``.
        worker_options: How each worker runs (`WorkerOptions`: idle time, prefetch, retry
            backoff, allowed modules). Left-out fields keep their defaults, but idle_seconds
            is 5: the enqueue has finished before workers start, so they need not wait for
            more. The batch and ``overwrite`` are the pipeline's own.
        task_timeout_seconds: Time limit per task: a task past it is stopped and retried,
            and dead-lettered after the queue's max receive count.
        overwrite: Re-run items whose output exists.
        analyze: Run the analysis flow at the end.
        poll_seconds: How often the monitor reads the queue's counts.
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
    if workers < 1 or tasks_per_worker < 1:
        raise BadArgumentsError(
            f"workers={workers}, tasks_per_worker={tasks_per_worker}: both must be at least 1"
        )
    options = WorkerOptions.of(
        {"idle_seconds": 5.0},
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
    fleet: Fleet
    if mode == "local":
        fleet = LocalFleet(queue, storage, options, cave)
        n_workers = min(workers, total)
    else:
        fleet = DeploymentFleet(queue, storage, options, worker_deployment, str(flow_run.id), cave)
        n_workers = min(workers, math.ceil(total / max(1, tasks_per_worker)))
    logger.info(
        "batch %s: %d tasks to run (%d skipped as done); starting %d %s workers",
        batch,
        total,
        queued["skipped_done"],
        n_workers,
        mode,
    )
    progress_id = create_progress_artifact(
        progress=0.0, key=artifact_key(batch, "progress"), description=f"Batch {batch}"
    )

    def why_workers_died(tally: BatchTally) -> list[str]:
        return explain(fleet.endings, batch, tally, options.memory_limit_mib)

    board = BatchDashboard(batch, storage, fleet, options.memory_limit_mib, logger)

    def report(progress: Progress) -> None:
        update_progress_artifact(
            progress_id, 100.0 * progress.fraction, description=progress.line()
        )
        board.update(progress)

    fleet.launch(n_workers)
    try:
        progress = watch(
            queue,
            fleet,
            total=total,
            dead_before=dead_before,
            workers=max(1, n_workers),
            log=logger,
            on_progress=report,
            poll_seconds=poll_seconds,
        )
    except WorkersLostError as exc:
        tally = batch_tally(read_reports(storage, batch))
        raise WorkersLostError(f"{exc}. {' '.join(why_workers_died(tally))}") from None
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
        "workers_launched": fleet.launched,
        "workers_lost": fleet.lost,
        "worker_endings": dict(fleet.endings),
        "why_workers_died": why,
        "outputs": storage.url(f"{batch}/outputs/"),
    }
    if analyze:
        summary["analysis"] = analysis(storage=storage, batch=batch)
    if progress.dead_lettered:
        flags = cli_flags(queue, batch)
        raise DeadLettersError(
            f"{progress.dead_lettered} of {total} items of batch {batch!r} ended in the "
            f"dead-letter queue of {queue.queue_name!r}. See why with "
            f"`tqflow dead-letters list {flags}` (tracebacks in "
            f"{storage.url(f'{batch}/errors/')}); after fixing the cause, send them back with "
            f"`tqflow dead-letters redrive {flags}` and run them with `tqflow work {flags}` "
            "or this pipeline again"
        )
    return summary
