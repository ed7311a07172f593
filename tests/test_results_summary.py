"""The analysis's summary and plot: whatever valid results hold, they are drawn or left out
with a note, never a failure."""

from __future__ import annotations

import pytest

from blocks import CloudFilesStorage
from tests.support.helpers import write_outputs
from tqflow.results.summary import summarise
from tqflow.results.table import build_results_table, output_paths

ROOT = 864691135000000000


@pytest.fixture
def storage(tmp_path):
    return CloudFilesStorage(cloudpath=f"file://{tmp_path / 'data'}")


def summary_of(storage, tmp_path, results):
    write_outputs(storage, results)
    table = build_results_table(storage, output_paths(storage, "b"), str(tmp_path))
    return summarise(table, "b")


def test_root_ids_in_a_result_are_noted_as_identifiers_and_the_rest_is_drawn(storage, tmp_path):
    # 2,000 IDs 1 apart: float64 steps by 128 there, so 30 bins of them cannot be drawn.
    results = {str(ROOT + i): {"root_id": ROOT + i, "length": i % 13} for i in range(2000)}
    summary = summary_of(storage, tmp_path, results)
    assert [row["column"] for row in summary.rows] == ["length", "task_seconds", "task_attempt"]
    assert summary.png is not None and summary.png.startswith(b"\x89PNG")
    assert any(n.startswith("root_id: integers as large as root IDs") for n in summary.notes)


def test_a_constant_column_is_summarised_but_not_drawn(storage, tmp_path):
    summary = summary_of(storage, tmp_path, {str(i): {"n": 4, "x": i} for i in range(10)})
    assert {row["column"]: row["mean"] for row in summary.rows}["n"] == 4
    assert "n: 4 in every row, not plotted" in summary.notes
    assert summary.png is not None


def test_a_column_of_huge_constant_floats_is_noted_not_fatal(storage, tmp_path):
    # Not identifiers (floats), and no 30 bins fit their range: drawing them alone would fail.
    results = {str(i): {"big": 8.6e17 + (i % 2) * 128} for i in range(10)}
    summary = summary_of(storage, tmp_path, results)
    assert any(n.startswith("big: not plotted (ValueError") for n in summary.notes)


def test_results_without_numbers_have_a_note_and_no_plot(storage, tmp_path):
    summary = summary_of(storage, tmp_path, {"a": {"cell_type": "basket"}, "b": "text"})
    assert summary.png is None
    assert "task_seconds: 0.5 in every row, not plotted" in summary.notes
