"""The ``analysis`` flow: every output of a batch back into one table.

Streams ``<batch>/outputs/*.json`` into ``<batch>/analysis/results.parquet`` in chunks
(`tqflow.results_table`: one row per item, the result's fields plus ``task_seconds``,
``task_attempt``, ``task_worker``), then reads back only the numeric columns for the summary
statistics (a table artifact) and ``summary.png`` (a markdown artifact). Memory stays bounded
by a chunk and those columns, whatever the batch's size.
"""

from __future__ import annotations

import base64
import io
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Union

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.specs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.engine.messages import check_batch
from tqflow.engine.outputs import outputs_prefix
from tqflow.results_table import build_results_table, output_paths

#: Plots up to this size are embedded in the markdown artifact; larger ones are linked.
_EMBED_LIMIT_BYTES = 200_000


def artifact_key(batch: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{batch}-{what}".lower()).strip("-")


def summarise(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Count, mean, std, min, median and max of each numeric column."""
    numeric = frame.select_dtypes("number")
    if numeric.empty:
        return []
    stats = numeric.describe(percentiles=[0.5]).T.rename(columns={"50%": "median"})
    return [
        {"column": column, **{k: _round(v) for k, v in values.items()}}
        for column, values in stats.iterrows()
    ]


def _round(value: Any) -> Any:
    return round(float(value), 4) if pd.notna(value) else None


def plot(frame: pd.DataFrame, batch: str, items: int) -> bytes:
    """Histograms of up to six numeric result columns, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in frame.select_dtypes("number").columns if c != "task_attempt"][:6]
    n_cols = min(3, max(1, len(columns)))
    n_rows = max(1, -(-len(columns) // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 2.6 * n_rows), squeeze=False)
    for ax in axes.flat[len(columns) :]:
        ax.set_visible(False)
    for ax, column in zip(axes.flat, columns, strict=False):  # more axes than columns
        values = pd.to_numeric(frame[column], errors="coerce")
        values = values[values.abs() != float("inf")].dropna()  # outputs written before nulls
        ax.hist(values, bins=30, color="#2f6db5")
        ax.set_title(column, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"batch {batch}: {items:,} items", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class Analysis:
    """What `analyse` wrote: the table, the plot, and the summary statistics."""

    items: int
    table_path: str
    plot_path: str
    png: bytes
    summary: list[dict[str, Any]]


def analyse(storage: CloudFilesStorage, batch: str) -> Analysis | None:
    """Write ``<batch>/analysis/results.parquet`` and ``summary.png``; ``None`` when the batch
    has no outputs."""
    paths = output_paths(storage, batch)
    if not paths:
        return None
    table_path = f"{batch}/analysis/results.parquet"
    with tempfile.TemporaryDirectory(prefix="tqflow-analysis-") as folder:
        table = build_results_table(storage, paths, folder)
        with open(table.path, "rb") as f:
            storage.put(table_path, f.read())
        numeric = table.read_columns(table.numeric_columns).to_pandas()
    png = plot(numeric, batch, table.rows)
    plot_path = f"{batch}/analysis/summary.png"
    storage.put(plot_path, png, content_type="image/png")
    return Analysis(table.rows, table_path, plot_path, png, summarise(numeric))


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
    done = analyse(storage, batch)
    if done is None:
        logger.warning(
            "batch %s has no outputs under %s", batch, storage.url(outputs_prefix(batch))
        )
        return {"items": 0, "results": None}
    table_url, plot_url = storage.url(done.table_path), storage.url(done.plot_path)
    create_table_artifact(
        key=artifact_key(batch, "summary"),
        table=done.summary,
        description=f"Summary statistics of {done.items:,} results of batch {batch}",
    )
    image = (
        f"![summary](data:image/png;base64,{base64.b64encode(done.png).decode()})"
        if len(done.png) <= _EMBED_LIMIT_BYTES
        else f"[summary plot]({plot_url})"
    )
    create_markdown_artifact(
        key=artifact_key(batch, "analysis"),
        markdown=(
            f"# Batch {batch}\n\n{done.items:,} results in `{table_url}`\n\n"
            f"{image}\n\nPlot: `{plot_url}`\n"
        ),
        description=f"Analysis of batch {batch}",
    )
    logger.info("batch %s: %d results written to %s", batch, done.items, table_url)
    return {"items": done.items, "results": table_url, "plot": plot_url, "summary": done.summary}
