"""``tqflow dead-letters list`` and ``redrive``: what failed for good, why, and running it
again once the cause is fixed."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table

from flows.cli.app import console, dead_app
from flows.cli.options import Target, target_options
from tqflow.engine.layout import errors_prefix


@dead_app.command("list")
@target_options()
def dead_letters_list(
    target: Target,
    limit: int = typer.Option(20, min=1, help="Show at most this many."),
) -> None:
    """List the batch's dead-lettered messages: item, receives, why, and the task's last
    error. On a queue named with --queue / --queue-block, only --batch's messages."""
    from tqflow.results.dead_letters import describe, in_batch

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
        f"tracebacks: {storage.url(errors_prefix(batch))}<key>/; after fixing the cause: "
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
    from tqflow.results.dead_letters import in_batch

    q = target.queue(must_exist=True)
    select = in_batch(target.batch) if target.names_queue else None
    moved = q.redrive(limit, select=select)
    console().print(
        f"redrove {moved:,} messages into {q.queue_name}; run them with "
        f"`tqflow work {target.flags()}`",
        soft_wrap=True,
    )
