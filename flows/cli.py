"""``tqflow``: run and inspect batches from the command line.

Every command works on the embedded setup by default (``--data ./tqflow-data``: a SQLite queue
file and a local folder); ``--queue-block`` / ``--storage-block`` name saved Prefect blocks
(``sqs-task-queue/prod``, ``cloud-files-storage/results``) to work on the cloud setup instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from blocks.errors import TqflowError

app = typer.Typer(
    name="tqflow",
    help="Run cloud task-queue batch jobs as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_app = typer.Typer(help="Look at and redrive dead-lettered messages.", no_args_is_help=True)
app.add_typer(dead_app, name="dead-letters")
blocks_app = typer.Typer(help="Credentials blocks: import secrets files, register types.", no_args_is_help=True)
app.add_typer(blocks_app, name="blocks")


def console() -> Console:
    """A console sized when it prints: rich reads ``COLUMNS`` when a Console is made, so one
    made at import keeps whatever width the importing process had."""
    return Console()

DataOption = typer.Option(Path("tqflow-data"), "--data", help="Folder of the embedded setup.")
BatchOption = typer.Option("demo", "--batch", "-b", help="Name of the batch.")
QueueOption = typer.Option(None, "--queue", help="Queue name (default: the batch name).")
QueueBlockOption = typer.Option(
    None, "--queue-block", help="Saved queue block, e.g. sqs-task-queue/prod."
)
StorageBlockOption = typer.Option(
    None, "--storage-block", help="Saved storage block, e.g. cloud-files-storage/results."
)


def _queue(data: Path, batch: str, queue: Optional[str], block: Optional[str]) -> Any:
    if block:
        return _load_block(block)
    from blocks.queues.local import LocalTaskQueue

    return LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name=queue or batch)


def _storage(data: Path, block: Optional[str]) -> Any:
    if block:
        return _load_block(block)
    from blocks.storage import CloudFilesStorage

    return CloudFilesStorage(cloudpath=f"file://{data}")


def _load_block(slug_and_name: str) -> Any:
    from prefect.blocks.core import Block

    import blocks  # noqa: F401  (registers tqflow's block types)
    from blocks.specs import load_block

    try:
        return load_block(slug_and_name, Block)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _fail(exc: Exception) -> None:
    console().print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


@app.command()
def demo(
    items: int = typer.Option(2_000, help="How many synthetic neurons to measure."),
    workers: int = typer.Option(2, help="Local worker processes."),
    nodes: int = typer.Option(2_000, help="Skeleton nodes per neuron (CPU cost per task)."),
    data: Path = DataOption,
    batch: str = BatchOption,
    overwrite: bool = typer.Option(False, help="Re-run items that already have an output."),
) -> None:
    """Run the embedded pipeline: queue -> local workers -> local storage -> analysis."""
    from blocks.queues.local import LocalTaskQueue
    from blocks.storage import CloudFilesStorage
    from flows.examples import demo_root_ids
    from flows.pipeline import pipeline

    data = data.resolve()
    root_ids = demo_root_ids(items)
    console().print(
        f"tqflow demo: {items:,} synthetic neurons, {workers} local workers, results in {data}"
    )
    summary = pipeline(
        fn="flows.examples:skeleton_stats",
        queue=LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name=batch),
        storage=CloudFilesStorage(cloudpath=f"file://{data}"),
        batch=batch,
        items=root_ids,
        kwargs={"n_nodes": nodes},
        workers=workers,
        overwrite=overwrite,
        idle_seconds=2.0,
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
def enqueue_command(
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
    batch: str = BatchOption,
    data: Path = DataOption,
    queue: Optional[str] = QueueOption,
    queue_block: Optional[str] = QueueBlockOption,
    storage_block: Optional[str] = StorageBlockOption,
    overwrite: bool = typer.Option(False, help="Queue items whose output exists too."),
) -> None:
    """Queue one task per item (items already done in the batch are skipped)."""
    from flows.enqueue import enqueue_items, read_items

    try:
        fixed = json.loads(kwargs)
        cave_query = None
        if cave_table is not None:
            from blocks.cave import CAVETableQuery

            cave_query = CAVETableQuery(
                table=cave_table, column=column or "pt_root_id", filter_equal=json.loads(cave_filter)
            )
        found = read_items(
            [_from_text(i) for i in items] if items else None,
            str(items_file) if items_file else None,
            column,
            items_from,
            cave_query,
            _load_block(cave_block) if cave_block else None,
        )
        result = enqueue_items(
            _queue(data, batch, queue, queue_block),
            _storage(data, storage_block),
            fn,
            found,
            batch,
            fixed,
            overwrite=overwrite,
        )
    except (TqflowError, json.JSONDecodeError) as exc:
        _fail(exc)
    console().print(
        f"queued {result.queued:,} tasks; {result.skipped_done:,} skipped as already done"
        + (f"; {result.duplicates:,} duplicate items dropped" if result.duplicates else "")
    )


def _from_text(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


@app.command()
def work(
    batch: str = BatchOption,
    data: Path = DataOption,
    queue: Optional[str] = QueueOption,
    queue_block: Optional[str] = QueueBlockOption,
    storage_block: Optional[str] = StorageBlockOption,
    idle_seconds: float = typer.Option(30.0, help="Stop after the queue is empty this long."),
    max_tasks: Optional[int] = typer.Option(None, help="Stop after this many tasks."),
    max_seconds: Optional[float] = typer.Option(None, help="Stop after this long."),
    overwrite: bool = typer.Option(False, help="Re-run items whose output exists."),
    import_module: Optional[List[str]] = typer.Option(
        None, "--import-module", help="Module to import first (task-queue RegisteredTasks)."
    ),
) -> None:
    """Run a worker in this process until the queue is drained (SIGTERM stops it cleanly)."""
    from flows.worker import Worker
    from flows.worker_process import log_to_stderr, stop_on_signals

    log_to_stderr()
    worker = Worker(
        _queue(data, batch, queue, queue_block),
        _storage(data, storage_block),
        default_batch=batch,
        idle_seconds=idle_seconds,
        max_tasks=max_tasks,
        max_seconds=max_seconds,
        overwrite=overwrite,
        import_modules=import_module or (),
    )
    with stop_on_signals(worker):
        stats = worker.run()
    console().print_json(json.dumps(stats.as_dict()))


@app.command()
def status(
    batch: str = BatchOption,
    data: Path = DataOption,
    queue: Optional[str] = QueueOption,
    queue_block: Optional[str] = QueueBlockOption,
    storage_block: Optional[str] = StorageBlockOption,
) -> None:
    """Show the queue (with its dead-letter queue) and the batch's outputs and errors."""
    from flows.outputs import outputs_prefix

    q = _queue(data, batch, queue, queue_block)
    storage = _storage(data, storage_block)
    counts = q.counts()
    outputs = sum(1 for p in storage.list(outputs_prefix(batch)) if p.endswith(".json"))
    errors = sum(1 for p in storage.list(f"{batch}/errors/") if p.endswith(".json"))
    table = Table(title=f"queue {q.queue_name} / batch {batch}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for label, value in [
        ("visible (waiting)", counts.visible),
        ("in flight (running)", counts.in_flight),
        ("delayed", counts.delayed),
        ("dead-lettered", counts.dead),
        ("outputs written", outputs),
        ("items with errors", errors),
    ]:
        table.add_row(label, f"{value:,}")
    console().print(table)
    console().print(f"outputs in {storage.url(outputs_prefix(batch))}")
    if counts.dead:
        console().print(
            f"[yellow]{counts.dead:,} dead-lettered[/yellow]: "
            f"`tqflow dead-letters list --batch {batch}` shows why"
        )


@app.command()
def analyze(
    batch: str = BatchOption,
    data: Path = DataOption,
    storage_block: Optional[str] = StorageBlockOption,
) -> None:
    """Collect the batch's outputs into <batch>/analysis/results.parquet."""
    from flows.analysis import analysis

    result = analysis(storage=_storage(data, storage_block), batch=batch)
    console().print(f"{result['items']:,} results -> {result['results']}")


@dead_app.command("list")
def dead_letters_list(
    batch: str = BatchOption,
    data: Path = DataOption,
    queue: Optional[str] = QueueOption,
    queue_block: Optional[str] = QueueBlockOption,
    limit: int = typer.Option(20, help="Show at most this many."),
) -> None:
    """List dead-lettered messages with the reason each was dead-lettered."""
    from flows.dead_letters import describe

    q = _queue(data, batch, queue, queue_block)
    dead = q.dead_letters(limit)
    total = q.counts().dead
    if not dead:
        console().print(f"the dead-letter queue of {q.queue_name} is empty")
        return
    table = Table(title=f"{total:,} dead-lettered in {q.queue_name} (showing {len(dead)})")
    for column in ("key", "fn", "receives", "reason"):
        table.add_column(column, overflow="fold")
    for row in map(describe, dead):
        table.add_row(str(row["key"]), str(row["fn"]), str(row["receives"]), row["reason"])
    console().print(table)
    console().print(
        f"tracebacks: <storage>/{batch}/errors/<key>.json; after fixing the cause: "
        f"`tqflow dead-letters redrive --batch {batch}`"
    )


@dead_app.command("redrive")
def dead_letters_redrive(
    batch: str = BatchOption,
    data: Path = DataOption,
    queue: Optional[str] = QueueOption,
    queue_block: Optional[str] = QueueBlockOption,
    limit: Optional[int] = typer.Option(None, help="Redrive at most this many (default all)."),
) -> None:
    """Move dead-lettered messages back into the queue, receive counts reset."""
    q = _queue(data, batch, queue, queue_block)
    moved = q.redrive(limit)
    console().print(f"redrove {moved:,} messages into {q.queue_name}; run `tqflow work` to run them")


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
    data: Path = DataOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace blocks that exist."),
) -> None:
    """Save the embedded blocks the local deployments use: local-task-queue/tqflow and
    cloud-files-storage/tqflow-local, both in --data."""
    from blocks.queues.local import LocalTaskQueue
    from blocks.storage import CloudFilesStorage

    data = data.resolve()
    saved = {
        "local-task-queue/tqflow": LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name="tqflow"),
        "cloud-files-storage/tqflow-local": CloudFilesStorage(cloudpath=f"file://{data}"),
    }
    for slug, block in saved.items():
        block.save(slug.split("/", 1)[1], overwrite=overwrite)
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
    cpus: Optional[int] = typer.Option(None, "--cpus", help="Or: vCPUs of the node."),
    memory_gib: Optional[float] = typer.Option(None, "--memory-gib", help="And its memory in GiB."),
    pods_per_node: int = typer.Option(4, "--pods-per-node", help="Worker pods per node."),
    headroom: float = typer.Option(0.05, help="Fraction left free for cluster pods and spikes."),
    as_json: bool = typer.Option(False, "--json", help="Print the job variables as JSON."),
) -> None:
    """Requests and memory limit for worker pods that fit a GKE node (no CPU limit)."""
    from flows.resources import Machine, plan

    if machine_type is not None:
        machine = Machine.from_type(machine_type)
    elif cpus is not None and memory_gib is not None:
        machine = Machine(cpus=cpus, memory_gib=memory_gib)
    else:
        raise typer.BadParameter("give --machine-type, or both --cpus and --memory-gib")
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


@app.command("gke-job-template")
def gke_job_template() -> None:
    """Print the base job template for a GKE (kubernetes) work pool."""
    from flows.job_template import base_job_template

    print(json.dumps(base_job_template(), indent=2, sort_keys=True))


def main() -> None:
    try:
        app()
    except TqflowError as exc:
        console().print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
