"""`analyze_batch`: every output of a batch back into one table, summarised and drawn.

Streams ``<batch>/outputs/*.json`` into ``<batch>/analysis/results.parquet`` in chunks
(`tqflow.results.table`: one row per item, the result's fields plus ``task_seconds``,
``task_attempt``, ``task_worker``), then summarises its numeric columns and draws
``summary.png`` (`tqflow.results.summary`). Memory stays bounded by a chunk and those columns,
whatever the batch's size. Valid outputs cannot fail it: what cannot be summarised or drawn,
and outputs that are not JSON, are left out and named in its notes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

from tqflow.engine.contracts import BatchStorage
from tqflow.engine.layout import analysis_plot_path, analysis_table_path
from tqflow.results.shard_index import ShardIndex
from tqflow.results.summary import summarise
from tqflow.results.table import build_results_table, output_paths


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


def analyze_batch(storage: BatchStorage, batch: str) -> Analysis | None:
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
            storage.put(table_path, f.read(), content_type="application/vnd.apache.parquet")
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
