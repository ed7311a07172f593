"""The ``analysis`` flow: every output of a batch back into one table (`tqflow.results`).

Streams ``<batch>/outputs/*.json`` into ``<batch>/analysis/results.parquet`` in chunks
(`tqflow.results.table`: one row per item, the result's fields plus ``task_seconds``,
``task_attempt``, ``task_worker``), then summarises its numeric columns and draws
``summary.png`` (`tqflow.results.summary`), published as a table and a markdown artifact.
Memory stays bounded by a chunk and those columns, whatever the batch's size. Valid outputs
cannot fail it: what cannot be summarised or drawn, and outputs that are not JSON, are left
out and named in the artifact's notes.
"""

from __future__ import annotations

import base64
from typing import Any, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.slugs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.artifacts import artifact_key
from tqflow.engine.layout import outputs_prefix
from tqflow.engine.messages import check_batch
from tqflow.results.analyze import analyze_batch

#: Plots up to this size are embedded in the markdown artifact; larger ones are linked.
_EMBED_LIMIT_BYTES = 200_000


@flow(name="analysis")
def analysis(storage: Union[CloudFilesStorage, str], batch: str) -> dict[str, Any]:
    """Collect every output of ``batch`` into ``<batch>/analysis/results.parquet``.

    Args:
        storage: Storage block holding the batch (or a saved block's slug).
        batch: Name of the batch.
    """
    logger = get_run_logger()
    check_batch(batch)
    storage = load_block(storage, CloudFilesStorage)
    done = analyze_batch(storage, batch)
    if done is None:
        logger.warning(
            "batch %s has no outputs under %s", batch, storage.url(outputs_prefix(batch))
        )
        return {"items": 0, "results": None}
    table_url = storage.url(done.table_path)
    plot_url = storage.url(done.plot_path) if done.plot_path else None
    for note in done.notes:
        logger.warning("batch %s: %s", batch, note)
    if done.summary:
        create_table_artifact(
            key=artifact_key(batch, "summary"),
            table=done.summary,
            description=f"Summary statistics of {done.items:,} results of batch {batch}",
        )
    if done.png is None:
        image = "No plot: no column of measurements varies (see the notes)."
    elif len(done.png) <= _EMBED_LIMIT_BYTES:
        image = f"![summary](data:image/png;base64,{base64.b64encode(done.png).decode()})"
    else:
        image = f"[summary plot]({plot_url})"
    notes = "".join(f"- {note}\n" for note in done.notes)
    create_markdown_artifact(
        key=artifact_key(batch, "analysis"),
        markdown=(
            f"# Batch {batch}\n\n{done.items:,} results in `{table_url}`\n\n{image}\n\n"
            + (f"Plot: `{plot_url}`\n" if plot_url else "")
            + (f"\n## Notes\n\n{notes}" if notes else "")
        ),
        description=f"Analysis of batch {batch}",
    )
    logger.info("batch %s: %d results written to %s", batch, done.items, table_url)
    return {
        "items": done.items,
        "results": table_url,
        "plot": plot_url,
        "summary": done.summary,
        "notes": done.notes,
    }
