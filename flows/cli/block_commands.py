"""``tqflow blocks``: credentials from a secrets folder, the embedded setup's blocks, and the
block types, saved to the Prefect API in use."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from flows.cli.app import blocks_app, console
from flows.cli.options import DATA_OPTION, data_folder
from tqflow.errors import CLIInputError


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
    skip: list[str] = typer.Option(
        [],
        "--skip",
        help="Leave this kind of file out: aws, google or cave (on GKE, --skip google: the pods "
        "have Workload Identity, so the Google key need not leave this machine).",
    ),
) -> None:
    """Save aws-secret.json, google-secret.json and *cave-secret.json as Prefect blocks."""
    from blocks.import_secrets import read_secrets_folder, save_blocks

    found = read_secrets_folder(folder, name, datastack, skip=skip)
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
    from prefect.blocks.core import Block

    from blocks.import_secrets import existing
    from blocks.queues.local import LocalTaskQueue
    from blocks.storage import CloudFilesStorage

    data = data_folder(data).resolve()
    named: list[tuple[str, Block]] = [
        ("tqflow", LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name="tqflow")),
        ("tqflow-local", CloudFilesStorage(cloudpath=f"file://{data}")),
    ]
    # Both or neither: a queue block saved beside an old storage block would point the local
    # deployments at two folders.
    taken = [] if overwrite else existing(named)
    if taken:
        raise CLIInputError(
            f"block(s) {', '.join(taken)} exist already; nothing was saved. Pass --overwrite "
            f"to replace both (they will point at {data})"
        )
    for name, block in named:
        block.save(name, overwrite=overwrite)
    for name, block in named:
        console().print(f"saved {block.get_block_type_slug()}/{name} ({data})", soft_wrap=True)


@blocks_app.command("register")
def blocks_register() -> None:
    """Register tqflow's block types with the Prefect API in use (PREFECT_API_URL)."""
    from blocks.import_secrets import register_block_types

    for slug in register_block_types():
        console().print(f"registered {slug}")
