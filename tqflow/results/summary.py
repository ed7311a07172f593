"""What the analysis shows of a results table: summary statistics and histograms.

It reads back only the table's numeric columns and never fails the analysis: a column it
cannot summarise or draw is left out with a note saying why, and so is the whole plot.

- **Identifiers** are not measurements: an integer column holding values a float cannot hold
  exactly (18-digit root IDs, as a result that carries its item has) is named in a note and
  left out of the statistics and the plot.
- **Constant** columns are summarised but not drawn (one bar says nothing the table does not).
- Up to `PLOT_COLUMNS` columns are drawn, each on its own; one that fails is noted, not fatal.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tqflow.results.table import EXACT_FLOAT_LIMIT, ResultsTable, widest

#: Histograms drawn at most; ``task_attempt`` (small integers) is never one of them.
PLOT_COLUMNS = 6
_NOT_PLOTTED = ("task_attempt",)


@dataclass
class Summary:
    """Statistics per measured column, the plot (PNG, or None), and what was left out."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    png: Optional[bytes] = None
    notes: list[str] = field(default_factory=list)


def summarise(table: ResultsTable, batch: str) -> Summary:
    summary = Summary()
    try:
        columns = table.read_columns(table.numeric_columns)
    except Exception as exc:  # the table itself is written: only its summary is lost
        summary.notes.append(f"no summary: the numeric columns could not be read ({_why(exc)})")
        return summary
    measured: dict[str, np.ndarray] = {}
    for name in columns.column_names:
        column = columns.column(name)
        if _identifiers(column):
            summary.notes.append(
                f"{name}: integers as large as root IDs, taken as identifiers: not summarised"
            )
            continue
        try:
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            values = values[np.isfinite(values)]  # nulls are NaN here
            summary.rows.append({"column": name, **_statistics(values)})
        except Exception as exc:
            summary.notes.append(f"{name}: not summarised ({_why(exc)})")
            continue
        measured[name] = values
    summary.png = _plot(measured, batch, table.rows, summary.notes)
    return summary


def _identifiers(column: pa.ChunkedArray) -> bool:
    if not pa.types.is_integer(column.type) or column.null_count == len(column):
        return False
    return widest(column) >= EXACT_FLOAT_LIMIT


def _statistics(values: np.ndarray) -> dict[str, Optional[float]]:
    """Count, mean, std (sample), min, median and max, rounded to 4 places."""
    n = len(values)
    if not n:
        return {"count": 0, "mean": None, "std": None, "min": None, "median": None, "max": None}
    return {
        "count": n,
        "mean": _round(values.mean()),
        "std": _round(values.std(ddof=1)) if n > 1 else None,
        "min": _round(values.min()),
        "median": _round(np.median(values)),
        "max": _round(values.max()),
    }


def _round(value: Any) -> Optional[float]:
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def _plot(
    measured: dict[str, np.ndarray], batch: str, items: int, notes: list[str]
) -> Optional[bytes]:
    """Histograms of up to `PLOT_COLUMNS` varying columns, as PNG; None when there is nothing
    to draw or drawing fails (with a note)."""
    drawn: list[str] = []
    for name, values in measured.items():
        if name in _NOT_PLOTTED:
            continue
        if not len(values):
            notes.append(f"{name}: no values, not plotted")
        elif values.min() == values.max():
            notes.append(f"{name}: {values[0]:g} in every row, not plotted")
        elif len(drawn) < PLOT_COLUMNS:
            drawn.append(name)
    if not drawn:
        return None
    try:
        return _histograms({name: measured[name] for name in drawn}, batch, items, notes)
    except Exception as exc:
        notes.append(f"no plot: {_why(exc)}")
        return None


def _histograms(
    columns: dict[str, np.ndarray], batch: str, items: int, notes: list[str]
) -> Optional[bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = min(3, len(columns))
    n_rows = -(-len(columns) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 2.6 * n_rows), squeeze=False)
    try:
        drawn = 0
        for ax, (name, values) in zip(axes.flat, columns.items(), strict=False):
            try:
                ax.hist(values, bins=30, color="#2f6db5")
            except Exception as exc:  # e.g. a range too narrow for 30 float bins
                ax.clear()
                ax.set_visible(False)
                notes.append(f"{name}: not plotted ({_why(exc)})")
                continue
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
            drawn += 1
        for ax in axes.flat[len(columns) :]:
            ax.set_visible(False)
        if not drawn:
            return None
        fig.suptitle(f"batch {batch}: {items:,} items", fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        return buffer.getvalue()
    finally:
        plt.close(fig)


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
