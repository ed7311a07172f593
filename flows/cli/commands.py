"""``tqflow``: run and inspect batches from the command line.

Every command works on the embedded setup by default (``--data ./tqflow-data``: a SQLite queue
file and a local folder); ``--queue-block`` / ``--storage-block`` name saved Prefect blocks
(``sqs-task-queue/prod``, ``cloud-files-storage/results``) to work on the cloud setup instead.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from flows.cli.options import (
    DATA_OPTION,
    Target,
    data_folder,
    load_block,
    target_options,
    worker_options,
)
from tqflow.engine.messages import check_batch
from tqflow.engine.options import WorkerOptions
from tqflow.errors import CLIInputError, EnqueueInterruptedError, QueueUnreachableError, TqflowError


def console(stderr: bool = False) -> Console:
    """A console sized when it prints: rich reads ``COLUMNS`` when a Console is made, so one
    made at import keeps whatever width the importing process had."""
    return Console(stderr=stderr)


#: ``--debug`` / ``TQFLOW_DEBUG=1``: show tracebacks instead of one-sentence errors.
_debug = {"on": os.environ.get("TQFLOW_DEBUG", "") not in ("", "0", "false")}


def explain(exc: BaseException) -> Optional[str]:
    """One or two sentences for an error a user can fix, naming the input and the fix; None
    for a bug (the traceback is shown then)."""
    import httpx

    if isinstance(exc, TqflowError):
        return str(exc)
    if isinstance(exc, httpx.ConnectError) or isinstance(exc, httpx.ConnectTimeout):
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value() or "(none set)"
        return (
            f"cannot reach the Prefect API at {url}: start a server with `prefect server start` "
            "and set PREFECT_API_URL to its /api URL (e.g. http://127.0.0.1:4200/api)"
        )
    if isinstance(exc, sqlite3.DatabaseError):
        return (
            f"the local queue database cannot be read ({exc}): --data must be a folder whose "
            "queue.sqlite was written by tqflow; move a damaged file away to start afresh"
        )
    return None


F = TypeVar("F", bound=Callable[..., Any])


def errors_explained(command: F) -> F:
    """Run ``command``; an error a user can fix becomes one line on stderr and exit code 1
    (with ``--debug``, the traceback)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None or _debug["on"]:
                raise
            console(stderr=True).print(f"[red]error:[/red] {message}", soft_wrap=True)
            raise typer.Exit(1) from None

    return run  # type: ignore[return-value]


class _Commands(typer.Typer):
    """Every command runs through `errors_explained`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)
        return lambda command: register(errors_explained(command))


app = _Commands(
    name="tqflow",
    help="Run cloud task-queue batch jobs as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_app = _Commands(help="Look at and redrive dead-lettered messages.", no_args_is_help=True)
app.add_typer(dead_app, name="dead-letters")
blocks_app = _Commands(
    help="Credentials blocks: import secrets files, register types.", no_args_is_help=True
)
app.add_typer(blocks_app, name="blocks")


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", envvar="TQFLOW_DEBUG", help="Show the traceback of an error."
    ),
) -> None:
    _debug["on"] = debug


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
    from blocks.queues.local import LocalTaskQueue
    from blocks.storage import CloudFilesStorage
    from flows.pipeline import pipeline
    from tqflow.examples import demo_root_ids

    data, batch = target.folder().resolve(), target.batch
    root_ids = demo_root_ids(items)
    console().print(
        f"tqflow demo: {items:,} synthetic neurons, {workers} local workers, results in {data}"
    )
    summary = pipeline(
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
    analysis_summary = summary.get("analysis") or {}
    console().print(
        f"\n[bold]batch {batch}[/bold]: {summary['queued']:,} tasks run, "
        f"{summary['skipped_done']:,} skipped as already done, "
        f"{summary['dead_lettered']:,} dead-lettered, in {summary['elapsed_seconds']:.1f}s"
    )
    console().print(f"outputs:  {summary['outputs']}")
    if analysis_summary.get("results"):
        console().print(f"table:    {analysis_summary['results']}")
        console().print(f"plot:     {analysis_summary['plot']}")
    console().print(
        "Run it again to resume (nothing re-runs); `tqflow status` shows the queue; "
        "with `prefect server start` running, the runs and artifacts are in its UI."
    )


@app.command("enqueue")
@target_options()
def enqueue_command(
    target: Target,
    fn: str = typer.Argument(..., help="Task function, package.module:function."),
    items: Optional[List[str]] = typer.Option(None, "--item", help="An item (repeatable)."),
    items_file: Optional[Path] = typer.Option(None, help="File of items: .txt, .csv, .parquet."),
    column: Optional[str] = typer.Option(None, help="Column of the items file."),
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
    from flows.enqueue import ItemSource, enqueue_items
    from tqflow.items import parse_item

    fixed = _json_object("--kwargs", kwargs)
    cave_query = None
    if cave_table is not None:
        from blocks.cave import CAVETableQuery

        cave_query = CAVETableQuery(
            table=cave_table,
            column=column or "pt_root_id",
            filter_equal=_json_object("--cave-filter", cave_filter),
        )
    queue, storage = target.queue(), target.storage()
    found = ItemSource(
        items=[parse_item(i) for i in items] if items else None,
        items_file=str(items_file) if items_file else None,
        column=column,
        items_from=items_from,
        cave_query=cave_query,
    ).read(load_block(cave_block, CAVECredentials, "--cave-block") if cave_block else None)
    if found.report():
        console(stderr=True).print(f"[yellow]{found.report()}[/yellow]", soft_wrap=True)
    with _stop_on_signals() as stop:
        try:
            result = enqueue_items(
                queue,
                storage,
                fn,
                found,
                target.batch,
                fixed,
                overwrite=overwrite,
                requeue=requeue,
                stop=stop,
                step=step,
                task_timeout_seconds=task_timeout,
            )
        except EnqueueInterruptedError as exc:
            console(stderr=True).print(f"[yellow]{exc}[/yellow]", soft_wrap=True)
            raise typer.Exit(130) from None
    console().print(result.line())


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """While inside (a command's own entry), the first SIGINT / SIGTERM sets the yielded event,
    which the work checks between steps; a second one interrupts at once."""
    stop = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console(stderr=True).print(
            "stopping after the step in progress (again to stop at once)", soft_wrap=True
        )

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
    from tqflow.engine.process import log_to_stderr, stop_on_signals
    from tqflow.engine.worker import Worker

    queue = target.queue(must_exist=True)
    cave = load_block(cave_block, CAVECredentials, "--cave-block") if cave_block else None
    log_to_stderr()
    worker = Worker(queue, target.storage(), options, cave=cave, default_batch=target.batch)
    with stop_on_signals(worker):
        stats = worker.run()
    console().print_json(json.dumps(stats.as_dict()))
    if stats.stop_reason == "queue_unreachable":
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
    from tqflow.dashboard import failure_lines, resource_lines
    from tqflow.engine.outputs import outputs_prefix
    from tqflow.engine.reports import batch_tally, read_reports

    q, storage, batch = target.queue(must_exist=True), target.storage(), target.batch
    counts = q.counts()
    reports = read_reports(storage, batch)
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
    console().print(f"outputs in {storage.url(outputs_prefix(batch))}")
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
    from tqflow.engine.outputs import outputs_prefix

    batch = check_batch(target.batch)
    storage = target.storage()
    result = analysis(storage=storage, batch=batch)
    if not result["items"]:
        raise CLIInputError(
            f"batch {batch!r} has no outputs in {storage.url(outputs_prefix(batch))}: check "
            "the batch name (--batch) and the storage (--data / --storage-block), or run its "
            "tasks first (`tqflow work`)"
        )
    console().print(f"{result['items']:,} results -> {result['results']}")


@dead_app.command("list")
@target_options()
def dead_letters_list(
    target: Target,
    limit: int = typer.Option(20, min=1, help="Show at most this many."),
) -> None:
    """List the batch's dead-lettered messages: item, receives, why, and the task's last
    error. On a queue named with --queue / --queue-block, only --batch's messages."""
    from flows.dead_letters import describe, in_batch

    q, storage, batch = target.queue(must_exist=True), target.storage(), target.batch
    select = in_batch(batch) if target.names_queue else None
    dead = q.dead_letters(limit, select=select)
    total = q.counts().dead
    if not dead:
        console().print(f"no dead-lettered messages of batch {batch} in {q.queue_name}")
        return
    table = Table(
        title=f"{total:,} dead-lettered in {q.queue_name} (showing {len(dead)} of batch {batch})"
    )
    for column in ("batch", "key", "receives", "reason", "last error"):
        table.add_column(column, overflow="fold")
    for row in (describe(d, storage) for d in dead):
        table.add_row(
            str(row["batch"]),
            str(row["key"]),
            str(row["receives"]),
            row["reason"],
            row["last_error"] or "-",
        )
    console().print(table)
    flags = target.flags()
    console().print(
        f"tracebacks: {storage.url(f'{batch}/errors/')}<key>.json; after fixing the cause: "
        f"`tqflow dead-letters redrive {flags}`",
        soft_wrap=True,
    )


@dead_app.command("redrive")
@target_options(storage=False)
def dead_letters_redrive(
    target: Target,
    limit: Optional[int] = typer.Option(
        None, min=1, help="Redrive at most this many (default all)."
    ),
) -> None:
    """Move the batch's dead-lettered messages back into the queue, receive counts reset. On a
    queue named with --queue / --queue-block, only --batch's messages."""
    from flows.dead_letters import in_batch

    q = target.queue(must_exist=True)
    select = in_batch(target.batch) if target.names_queue else None
    moved = q.redrive(limit, select=select)
    console().print(
        f"redrove {moved:,} messages into {q.queue_name}; run them with "
        f"`tqflow work {target.flags()}`",
        soft_wrap=True,
    )


@blocks_app.command("import")
def blocks_import(
    folder: Path = typer.Option(
        Path("~/.cloudvolume/secrets"), "--folder", help="Secrets folder to read."
    ),
    name: str = typer.Option("default", "--name", help="Name of the blocks to save."),
    datastack: Optional[str] = typer.Option(
        None, "--datastack", help="CAVE datastack for the CAVE blocks, e.g. minnie65_public."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace blocks that exist."),
) -> None:
    """Save aws-secret.json, google-secret.json and *cave-secret.json as Prefect blocks."""
    from blocks.import_secrets import read_secrets_folder, save_blocks

    found = read_secrets_folder(folder, name, datastack)
    if not found:
        console().print(
            f"no aws-secret.json, google-secret.json or *cave-secret.json in {folder.expanduser()}"
        )
        raise typer.Exit(1)
    save_blocks(found, overwrite=overwrite)
    table = Table(title=f"saved {len(found)} blocks from {folder.expanduser()}")
    for column in ("block", "from", "for"):
        table.add_column(column)
    for item in found:
        table.add_row(item.slug, item.file.name, item.about)
    console().print(table)
    console().print("use them by name, e.g. CAVECredentials.load(...), or in the Prefect UI")


@blocks_app.command("save-local")
def blocks_save_local(
    data: Path = DATA_OPTION,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace blocks that exist."),
) -> None:
    """Save the embedded blocks the local deployments use: local-task-queue/tqflow and
    cloud-files-storage/tqflow-local, both in --data."""
    from blocks.queues.local import LocalTaskQueue
    from blocks.storage import CloudFilesStorage

    data = data_folder(data).resolve()
    saved = {
        "local-task-queue/tqflow": LocalTaskQueue(
            path=str(data / "queue.sqlite"), queue_name="tqflow"
        ),
        "cloud-files-storage/tqflow-local": CloudFilesStorage(cloudpath=f"file://{data}"),
    }
    for slug, block in saved.items():
        try:
            block.save(slug.split("/", 1)[1], overwrite=overwrite)
        except ValueError as exc:
            if "already in use" not in str(exc):
                raise
            raise CLIInputError(
                f"block {slug} exists already: pass --overwrite to replace it (it will point "
                f"at {data})"
            ) from None
        console().print(f"saved {slug} ({data})")


@blocks_app.command("register")
def blocks_register() -> None:
    """Register tqflow's block types with the Prefect API in use (PREFECT_API_URL)."""
    from blocks.import_secrets import register_block_types

    for slug in register_block_types():
        console().print(f"registered {slug}")


@app.command("plan-resources")
def plan_resources(
    machine_type: Optional[str] = typer.Option(
        None, "--machine-type", help="GCE machine type of the worker nodes, e.g. e2-highmem-4."
    ),
    cpus: Optional[int] = typer.Option(None, "--cpus", min=1, help="Or: vCPUs of the node."),
    memory_gib: Optional[float] = typer.Option(
        None, "--memory-gib", min=0.5, help="And its memory in GiB."
    ),
    pods_per_node: int = typer.Option(4, "--pods-per-node", min=1, help="Worker pods per node."),
    headroom: float = typer.Option(
        0.05, min=0.0, max=0.9, help="Fraction left free for cluster pods and spikes."
    ),
    from_batch: Optional[str] = typer.Option(
        None,
        "--from-batch",
        help="Size the pods from what this batch's tasks used (its worker reports); without "
        "--machine-type, choose the cheapest common machine type.",
    ),
    margin: float = typer.Option(
        0.2, min=0.0, max=4.0, help="With --from-batch: added to the measured memory and CPU."
    ),
    items: Optional[int] = typer.Option(
        None, "--items", min=1, help="With --from-batch: size of the next batch (default: as many)."
    ),
    within_hours: float = typer.Option(
        4.0, "--within-hours", min=0.01, help="With --from-batch: finish the next batch within."
    ),
    data: Path = DATA_OPTION,
    storage_block: Optional[str] = typer.Option(
        None, "--storage-block", help="With --from-batch: the storage block holding the batch."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the job variables as JSON."),
) -> None:
    """Requests and memory limit for worker pods that fit a GKE node (no CPU limit)."""
    from tqflow.gke.resources import Machine, plan

    if machine_type is not None:
        machine = Machine.from_type(machine_type)
    elif cpus is not None and memory_gib is not None:
        machine = Machine(cpus=cpus, memory_gib=memory_gib)
        machine_type = f"custom-{cpus}-{memory_gib:g}GiB"
    elif from_batch is None:
        raise typer.BadParameter("give --machine-type, or both --cpus and --memory-gib")
    else:
        machine = None
    if from_batch is not None:
        target = Target(batch=check_batch(from_batch), data=data, storage_block=storage_block)
        _plan_from_batch(
            target, machine_type, machine, margin, headroom, items, within_hours, as_json
        )
        return
    assert machine is not None
    resources = plan(machine, pods_per_node, headroom=headroom)
    variables = resources.as_job_variables()
    if as_json:
        print(json.dumps(variables))
        return
    console().print(
        f"node: {machine.cpus} vCPUs, {machine.memory_gib:g} GiB -> allocatable "
        f"{machine.allocatable_cpu_millicores}m CPU, {machine.allocatable_memory_mib:,} MiB"
    )
    for name, value in variables.items():
        console().print(f"{name}: {value}")
    console().print("cpu_limit: none (on purpose: a task may use idle cores)")
    flags = " ".join(f"-jv {name}={value}" for name, value in variables.items())
    console().print(f"use: prefect deploy --name worker-gke {flags}", soft_wrap=True)


def _plan_from_batch(
    target: Target,
    machine_type: Optional[str],
    machine: Any,
    margin: float,
    headroom: float,
    items: Optional[int],
    within_hours: float,
    as_json: bool,
) -> None:
    from tqflow.engine.reports import batch_tally, read_reports
    from tqflow.gke import right_size

    usage = right_size.BatchUsage.of(
        batch_tally(read_reports(target.storage(), target.batch)), target.batch
    )
    items = items or usage.tasks
    if machine_type is None:
        found = right_size.cheapest(usage, items, within_hours, margin, headroom)
    else:
        sized = right_size.size_pod(usage, machine_type, margin, headroom, machine=machine)
        found = right_size.plan_next_batch(sized, usage, items, within_hours)
    variables = found.pod.as_job_variables()
    if as_json:
        print(json.dumps(variables))
        return
    mib = 2**20
    console().print(
        f"batch {target.batch}: {usage.tasks:,} tasks measured; peak memory p99.9 "
        f"{usage.peak_rss_p999_bytes / mib:,.0f} MiB (max {usage.peak_rss_max_bytes / mib:,.0f}), "
        f"CPU {usage.cpu_per_wall:.2f} cores a task, {usage.mean_task_seconds:.2f} s a task",
        soft_wrap=True,
    )
    console().print(
        f"machine: {found.machine_type} ({found.machine.cpus} vCPUs, "
        f"{found.machine.memory_gib:g} GiB), {found.pods_per_node} worker pods per node; "
        f"memory p99.9 + {margin:.0%}, CPU mean + {margin:.0%}",
        soft_wrap=True,
    )
    for name, value in variables.items():
        console().print(f"{name}: {value}")
    console().print("cpu_limit: none (on purpose: a task may use idle cores)")
    cost = (
        f"${found.cost_on_demand:,.2f} on demand, ~${found.cost_spot:,.2f} on spot VMs "
        f"(us-central1 list prices of {right_size.PRICES_AS_OF}; spot ~"
        f"{right_size.SPOT_FRACTION:.0%} of on demand)"
        if found.cost_on_demand is not None
        else "no price for this machine family"
    )
    console().print(
        f"next batch of {found.items:,} items within {within_hours:g} h: {found.nodes} nodes, "
        f"{found.wall_hours:.2f} h, {cost}",
        soft_wrap=True,
    )
    flags = " ".join(f"-jv {name}={value}" for name, value in variables.items())
    console().print(f"use: prefect deploy --name worker-gke {flags}", soft_wrap=True)


@app.command("gke-job-template")
def gke_job_template() -> None:
    """Print the base job template for a GKE (kubernetes) work pool."""
    from tqflow.gke.job_template import base_job_template

    print(json.dumps(base_job_template(), indent=2, sort_keys=True))


def main() -> None:
    try:
        app()
    except TqflowError as exc:
        console().print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
