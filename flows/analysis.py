"""The ``analysis`` flow: every output of a batch back into one table.

Streams ``<batch>/outputs/*.json`` into ``<batch>/analysis/results.parquet`` in chunks
(`tqflow.results_table`: one row per item, the result's fields plus ``task_seconds``,
``task_attempt``, ``task_worker``), then summarises its numeric columns and draws
``summary.png`` (`tqflow.results_summary`), published as a table and a markdown artifact.
Memory stays bounded by a chunk and those columns, whatever the batch's size. Valid outputs
cannot fail it: what cannot be summarised or drawn, and outputs that are not JSON, are left
out and named in the artifact's notes.
"""

from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.slugs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.artifacts import artifact_key
from tqflow.engine.layout import analysis_plot_path, analysis_table_path, outputs_prefix
from tqflow.engine.messages import check_batch
from tqflow.results_summary import summarise
from tqflow.results_table import build_results_table, output_paths
from tqflow.shard_index import ShardIndex

#: Plots up to this size are embedded in the markdown artifact; larger ones are linked.
_EMBED_LIMIT_BYTES = 200_000


@dataclass
class Analysis:
    """What `analyze_batch` wrote: the table, the plot (when one could be drawn), the summary
    statistics, and notes on what was left out."""

    items: int
    table_path: str
    plot_path: Optional[str]
    png: Optional[bytes]
    summary: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def analyze_batch(storage: CloudFilesStorage, batch: str) -> Analysis | None:
    """Write ``<batch>/analysis/results.parquet`` and ``summary.png``; ``None`` when the batch
    has no outputs."""
    table_path = analysis_table_path(batch)
    notes = []
    with tempfile.TemporaryDirectory(prefix="tqflow-analysis-") as folder:
        shards = ShardIndex.build(storage, batch, folder)
        try:
            # The shards' keys tell where to cut the outputs' listing into parallel ranges.
            paths = output_paths(storage, batch, shards.keys())
            if not paths:
                return None
            table = build_results_table(storage, paths, folder, shards=shards)
        finally:
            shards.close()
        with open(table.path, "rb") as f:
            storage.put(table_path, f.read())
        summary = summarise(table, batch)
    if table.left_out_count:
        named = "; ".join(f"{storage.url(p)}: {why}" for p, why in table.left_out.items())
        more = table.left_out_count - len(table.left_out)
        notes.append(
            f"{table.left_out_count:,} outputs left out of the table, not written by tqflow's "
            f"worker or damaged since: {named}{f' and {more:,} more' if more > 0 else ''}. "
            "Delete them to run their tasks again (the pipeline, or `tqflow work`)"
        )
    renamed = [f.name for f in table.schema if f.name.startswith("result.")]
    if renamed:
        notes.append(
            f"result fields named like tqflow's own columns are kept as {', '.join(renamed)}"
        )
    plot_path = None
    if summary.png is not None:
        plot_path = analysis_plot_path(batch)
        storage.put(plot_path, summary.png, content_type="image/png")
    return Analysis(
        table.rows, table_path, plot_path, summary.png, summary.rows, notes + summary.notes
    )


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
