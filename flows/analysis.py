"""The ``analysis`` flow: every output of a batch back into one table.

Reads ``<batch>/outputs/*.json`` in parallel, builds a pandas DataFrame (one row per item: the
result's fields, plus ``task_seconds``, ``task_attempt``, ``task_worker``), writes
``<batch>/analysis/results.parquet`` and ``summary.png``, and publishes summary statistics as a
table artifact and the plot as a markdown artifact.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any, Union

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks.specs import load_block
from blocks.storage import CloudFilesStorage
from tqflow.engine.messages import check_batch
from tqflow.engine.outputs import outputs_prefix

#: Plots up to this size are embedded in the markdown artifact; larger ones are linked.
_EMBED_LIMIT_BYTES = 200_000


def artifact_key(batch: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{batch}-{what}".lower()).strip("-")


def load_results(storage: CloudFilesStorage, batch: str) -> pd.DataFrame:
    """One row per finished item of ``batch``, sorted by key."""
    paths = [p for p in storage.list(outputs_prefix(batch)) if p.endswith(".json")]
    rows = []
    for record in storage.get_json_many(paths).values():
        result = record.get("result")
        row: dict[str, Any] = {"key": record["key"]}
        row.update(result if isinstance(result, dict) else {"result": result})
        row.update(
            task_seconds=record.get("seconds"),
            task_attempt=record.get("attempt"),
            task_worker=record.get("worker"),
        )
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.sort_values("key", ignore_index=True) if rows else frame


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


def plot(frame: pd.DataFrame, batch: str) -> bytes:
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
    fig.suptitle(f"batch {batch}: {len(frame):,} items", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


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
    frame = load_results(storage, batch)
    if frame.empty:
        logger.warning(
            "batch %s has no outputs under %s", batch, storage.url(outputs_prefix(batch))
        )
        return {"items": 0, "results": None}
    table_path = f"{batch}/analysis/results.parquet"
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    storage.put(table_path, buffer.getvalue())
    summary = summarise(frame)
    create_table_artifact(
        key=artifact_key(batch, "summary"),
        table=summary,
        description=f"Summary statistics of {len(frame):,} results of batch {batch}",
    )
    png = plot(frame, batch)
    plot_path = f"{batch}/analysis/summary.png"
    storage.put(plot_path, png, content_type="image/png")
    image = (
        f"![summary](data:image/png;base64,{base64.b64encode(png).decode()})"
        if len(png) <= _EMBED_LIMIT_BYTES
        else f"[summary plot]({storage.url(plot_path)})"
    )
    create_markdown_artifact(
        key=artifact_key(batch, "analysis"),
        markdown=(
            f"# Batch {batch}\n\n{len(frame):,} results in `{storage.url(table_path)}`\n\n"
            f"{image}\n\nPlot: `{storage.url(plot_path)}`\n"
        ),
        description=f"Analysis of batch {batch}",
    )
    logger.info("batch %s: %d results written to %s", batch, len(frame), storage.url(table_path))
    return {
        "items": len(frame),
        "results": storage.url(table_path),
        "plot": storage.url(plot_path),
        "summary": summary,
    }
