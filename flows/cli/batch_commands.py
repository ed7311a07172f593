"""Commands on a batch: ``demo``, ``enqueue``, ``work``, ``status``, ``analyze``."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Iterator, List, Optional

import typer
from rich.table import Table

from flows.cli.app import app, console
from flows.cli.options import Target, load_block_option, target_options, worker_options
from tqflow.engine.options import WorkerOptions
from tqflow.engine.signals import stop_on_signals
from tqflow.errors import CLIInputError, EnqueueInterruptedError, QueueUnreachableError


def _json_object(option: str, text: str) -> dict[str, Any]:
    """The JSON object given to ``option``, or a `CLIInputError` naming the option."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CLIInputError(
            f"{option} is not JSON ({exc.msg}): give an object such as '{{\"lod\": 2}}'"
        ) from None
    if not isinstance(value, dict):
        raise CLIInputError(
            f"{option} must be a JSON object of names to values, not a {type(value).__name__}: "
            "e.g. '{\"lod\": 2}'"
        )
    return value


@app.command()
@target_options(queue=False, storage=False)
def demo(
    target: Target,
    items: int = typer.Option(2_000, min=1, help="How many synthetic neurons to measure."),
    workers: int = typer.Option(2, min=1, help="Local worker processes."),
    nodes: int = typer.Option(2_000, min=2, help="Skeleton nodes per neuron (CPU cost per task)."),
    overwrite: bool = typer.Option(False, help="Re-run items that already have an output."),
) -> None:
    """Run the embedded pipeline: queue -> local workers -> local storage -> analysis."""
    # A Ctrl-C, from here on, is the batch's stop: it interrupts whatever runs, and whatever
    # that code makes of the interruption (Prefect and pydantic wrap it in errors of their
    # own), the command ends with the sentence below.
    stopped = threading.Event()

    def request_stop() -> bool:
        stopped.set()
        return True

    at_once = "tqflow demo: second {signal}: stopping now; run the same command again to go on"
    stopped_sentence = (
        "\nstopped: the workers released the tasks they held. Run the same command again to "
        "finish the batch; nothing done is run again."
    )
    with stop_on_signals(request_stop, at_once=at_once), _ends_when(stopped, stopped_sentence):
        summary = _run_demo(target, items, workers, nodes, overwrite)
    analysis_summary = summary.get("analysis") or {}
    console().print(
        f"\n[bold]batch {target.batch}[/bold]: {summary['done']:,} tasks run, "
        f"{summary['skipped_done']:,} skipped as already done, "
        f"{summary['dead_lettered']:,} dead-lettered, in {summary['elapsed_seconds']:.1f}s"
    )
    console().print(f"outputs:  {summary['outputs']}", soft_wrap=True)
    if analysis_summary.get("results"):
        console().print(f"table:    {analysis_summary['results']}", soft_wrap=True)
    if analysis_summary.get("plot"):
        console().print(f"plot:     {analysis_summary['plot']}", soft_wrap=True)
    console().print(
        "Run it again to resume (nothing re-runs); `tqflow status` shows the queue; "
        "with `prefect server start` running, the runs and artifacts are in its UI."
    )


@contextlib.contextmanager
def _ends_when(stopped: threading.Event, sentence: str) -> Iterator[None]:
    """Once a stop was asked (``stopped``), whatever the interrupted block raises (a library
    may wrap the KeyboardInterrupt in an error of its own, or swallow it), the command ends
    with ``sentence`` on stderr and exit code 130."""
    try:
        yield
    except BaseException:
        if not stopped.is_set():
            raise
        console(stderr=True).print(sentence, soft_wrap=True)
        raise typer.Exit(130) from None


def _run_demo(target: Target, items: int, workers: int, nodes: int, overwrite: bool) -> Any:
    """The demo's pipeline run on this machine: its summary."""
    from blocks.queues.local import LocalTaskQueue
    from blocks.storage import CloudFilesStorage
    from flows.cli import prefect_api
    from flows.pipeline import pipeline
    from tqflow.examples import demo_root_ids

    data, batch = target.folder(writable=True).resolve(), target.batch
    prefect_api.prepare()
    root_ids = demo_root_ids(items)
    console().print(
        f"tqflow demo: {items:,} synthetic neurons, {workers} local workers, results in {data}",
        soft_wrap=True,
    )
    return pipeline(
        fn="tqflow.examples:skeleton_stats",
        queue=LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name=batch),
        storage=CloudFilesStorage(cloudpath=f"file://{data}"),
        batch=batch,
        items=root_ids,
        kwargs={"n_nodes": nodes},
        workers=workers,
        overwrite=overwrite,
        worker_options=WorkerOptions(idle_seconds=2.0),
    )


def _batches_like(storage: Any, batch: str) -> str:
    """ ", did you mean ...?" for batches of a local folder named like ``batch``; else ''."""
    import difflib
    from pathlib import Path

    if not storage.is_local:
        return ""  # a bucket's batches would take a listing of every output to find
    folder = Path(storage.cloudpath[len("file://") :])
    names = [p.parent.name for p in folder.glob("*/batch.json")]
    close = difflib.get_close_matches(batch, names, n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


@app.command("enqueue")
@target_options()
def enqueue_command(
    target: Target,
    fn: str = typer.Argument(..., help="Task function, package.module:function."),
    items: Optional[List[str]] = typer.Option(None, "--item", help="An item (repeatable)."),
    items_file: Optional[str] = typer.Option(
        None,
        help="File of items: .txt, .csv, .tsv, .parquet, .jsonl or .json; a path, or a gs:// "
        "or s3:// URL (read with the storage block's credentials).",
    ),
    column: Optional[str] = typer.Option(
        None, help="Column of the items file (key of .jsonl objects; of --cave-table)."
    ),
    items_from: Optional[str] = typer.Option(None, help="package.module:function returning items."),
    cave_table: Optional[str] = typer.Option(
        None, help="Or a CAVE materialization table: its --column (default pt_root_id) values."
    ),
    cave_filter: str = typer.Option("{}", help="CAVE rows to keep, as JSON {column: value}."),
    cave_block: Optional[str] = typer.Option(
        None, help="CAVE block for --cave-table, e.g. cave-credentials/lab."
    ),
    kwargs: str = typer.Option("{}", help="Fixed keyword arguments, as JSON."),
    overwrite: bool = typer.Option(False, help="Queue items whose output exists too."),
    requeue: bool = typer.Option(
        False, help="Queue again items an earlier run queued that are not done (after a purge)."
    ),
    step: int = typer.Option(
        1_000,
        min=10,
        help="Messages sent between two records of what was sent: on SQS, a "
        "killed enqueue re-sends at most this many when run again.",
    ),
    task_timeout: Optional[float] = typer.Option(
        None,
        min=0.001,
        help="The batch's time limit per task, in seconds: a task past it is "
        "stopped, retried, and dead-lettered after the queue's max receive count.",
    ),
) -> None:
    """Queue one task per item. Items already done, or already queued by an earlier run, are
    skipped: run it again after Ctrl-C and it queues the rest."""
    from blocks.cave import CAVECredentials
    from tqflow.enqueue import ItemSource, enqueue_items
    from tqflow.enqueue.items import parse_item

    fixed = _json_object("--kwargs", kwargs)
    cave_query = None
    if cave_table is not None and cave_block is None:
        raise CLIInputError(
            f"--cave-table {cave_table} is read with a CAVE block's token: add --cave-block "
            "(a saved CAVECredentials block, e.g. --cave-block cave-credentials/lab)"
        )
    if cave_table is not None:
        from tqflow.enqueue import CAVETableQuery

        cave_query = CAVETableQuery(
            table=cave_table,
            column=column or "pt_root_id",
            filter_equal=_json_object("--cave-filter", cave_filter),
        )
    target.check_writable()
    queue, storage = target.queue(), target.storage()
    stop, reading = threading.Event(), threading.Event()

    def request_stop() -> bool:
        stop.set()
        if reading.is_set():
            return True  # interrupt the read: nothing has been sent
        console(stderr=True).print(
            "stopping after the step in progress (again to stop at once)", soft_wrap=True
        )
        return False  # the enqueue stops itself between steps: nothing to interrupt

    at_once = "tqflow enqueue: second {signal}: stopping now; run the same enqueue again to go on"
    with stop_on_signals(request_stop, at_once=at_once):
        reading.set()
        if items_file and "://" in items_file and not items_file.startswith("file://"):
            # a cloud read that the cloud library retries for a while when refused: not silent
            console(stderr=True).print(f"reading the items from {items_file} ...", soft_wrap=True)
        stopped_reading = (
            "[yellow]stopped while reading the items: nothing was queued; run the same command "
            "again[/yellow]"
        )
        # however the reader takes the interruption (pandas reports a damaged file)
        with _ends_when(stop, stopped_reading):
            found = ItemSource(
                items=[parse_item(i, f"--item #{n}") for n, i in enumerate(items, 1)]
                if items
                else None,
                items_file=items_file,
                column=column if cave_table is None else None,
                items_from=items_from,
                cave_query=cave_query,
            ).read(
                load_block_option(cave_block, CAVECredentials, "--cave-block")
                if cave_block
                else None,
                storage,
            )
        reading.clear()
        if found.report():
            console(stderr=True).print(f"[yellow]{found.report()}[/yellow]", soft_wrap=True)
        try:
            result = enqueue_items(
                queue,
                storage,
                fn,
                found,
                target.batch,
                kwargs=fixed,
                overwrite=overwrite,
                requeue=requeue,
                stop=stop,
                step=step,
                task_timeout_seconds=task_timeout,
            )
        except EnqueueInterruptedError as exc:
            console(stderr=True).print(f"[yellow]{exc}[/yellow]", soft_wrap=True)
            raise typer.Exit(130) from None
    console().print(result.line(), soft_wrap=True)


@app.command()
@target_options()
@worker_options(idle_seconds=5.0)
def work(
    target: Target,
    options: WorkerOptions,
    cave_block: Optional[str] = typer.Option(
        None, help="CAVE block for tasks that take a `cave` client, e.g. cave-credentials/lab."
    ),
) -> None:
    """Run a worker in this process until the queue is drained (SIGTERM stops it cleanly).
    Workers on a cluster wait longer for an enqueue still sending: --idle-seconds 30."""
    from blocks.cave import CAVECredentials
    from tqflow.engine.process import log_to_stderr, run_worker
    from tqflow.engine.stats import StopReason

    target.check_writable()
    queue = target.queue(must_exist=True)
    cave = load_block_option(cave_block, CAVECredentials, "--cave-block") if cave_block else None
    options = WorkerOptions.of(options, default_batch=target.batch)
    stats = run_worker(queue, target.storage(), options, cave=cave, log=log_to_stderr())
    console().print_json(json.dumps(stats.as_dict()))
    if stats.stop_reason is StopReason.QUEUE_UNREACHABLE:
        raise QueueUnreachableError(stats.error)


@app.command()
@target_options()
def status(
    target: Target,
    list_outputs: bool = typer.Option(
        False,
        "--list-outputs",
        help="Count the output files themselves (one listing request per 1,000 items) "
        "instead of summing the workers' reports.",
    ),
) -> None:
    """Show the queue (with its dead-letter queue) and what the batch's workers did."""
    from tqflow.engine.layout import batch_record_path, outputs_prefix
    from tqflow.engine.reports import batch_tally, read_reports
    from tqflow.fleet.dashboard import failure_lines, resource_lines

    q, storage, batch = target.queue(must_exist=True), target.storage(), target.batch
    counts = q.counts()
    reports = read_reports(storage, batch)
    if not reports and not storage.exists(batch_record_path(batch)):
        # The queue's counts are the queue's, whatever batch is named: say that this one has
        # left nothing here, rather than show a mistyped name another batch's counts.
        console(stderr=True).print(
            f"warning: no batch {batch!r} in {storage.cloudpath} (nothing enqueued or run under "
            f"that name){_batches_like(storage, batch)}; the counts below are of queue "
            f"{q.queue_name!r}, every batch on it",
            soft_wrap=True,
            markup=False,
        )
    if reports.warning():
        console(stderr=True).print(f"warning: {reports.warning()}", soft_wrap=True, markup=False)
    tally = batch_tally(reports)
    rows = [
        ("visible (waiting)", counts.visible),
        ("in flight (running)", counts.in_flight),
        ("delayed", counts.delayed),
        ("dead-lettered", counts.dead),
    ]
    if list_outputs or not reports:  # batches run before workers reported: count the files
        outputs = sum(1 for p in storage.list(outputs_prefix(batch)) if p.endswith(".json"))
        rows.append(("outputs (listed)", outputs))
    if reports:
        rows += [
            ("tasks done", tally.succeeded),
            ("skipped, already done", tally.skipped),
            ("failed attempts", tally.failed),
            (
                f"workers reporting (ended: {sum(1 for r in reports if r.get('ended'))})",
                len(reports),
            ),
        ]
    table = Table(title=f"queue {q.queue_name} / batch {batch}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in rows:
        table.add_row(label, f"{value:,}")
    console().print(table)
    for title, lines in (
        ("failures by error type", failure_lines(tally)),
        ("what the tasks used", resource_lines(tally)),
    ):
        if lines:
            console().print(f"[bold]{title}[/bold]")
            for line in lines:
                console().print(line, soft_wrap=True, markup=False)
    console().print(f"outputs in {storage.url(outputs_prefix(batch))}", soft_wrap=True)
    if counts.dead:
        console().print(
            f"[yellow]{counts.dead:,} dead-lettered[/yellow]: "
            f"`tqflow dead-letters list {target.flags()}` "
            "shows why",
            soft_wrap=True,
        )


@app.command()
@target_options(queue=False)
def analyze(target: Target) -> None:
    """Collect the batch's outputs into <batch>/analysis/results.parquet."""
    from flows.analysis import analysis
    from flows.cli import prefect_api
    from tqflow.engine.layout import outputs_prefix

    target.check_writable_storage()
    batch, storage = target.batch, target.storage()
    prefect_api.prepare()
    result = analysis(storage=storage, batch=batch)
    if not result["items"]:
        raise CLIInputError(
            f"batch {batch!r} has no outputs in {storage.url(outputs_prefix(batch))}: check "
            "the batch name (--batch) and the storage (--data / --storage-block), or run its "
            "tasks first (`tqflow work`)"
        )
    console().print(f"{result['items']:,} results -> {result['results']}", soft_wrap=True)
