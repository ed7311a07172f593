"""Items are read exactly: 18-digit root IDs with gaps, in every format, reach the task as the
very ints they are; empty cells are skipped and reported by line, never turned into numbers."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from blocks import LocalTaskQueue
from flows.cli import app
from tqflow.engine.messages import decode
from tqflow.enqueue import ItemSource, enqueue_items
from tqflow.enqueue.items import parse_item
from tqflow.errors import BadArgumentsError, ItemSourceError, UnknownFunctionError

#: Real-size root IDs (> 2**53): as float64 the first two are the same number, and the third
#: becomes ...768.
ROOTS = [864691135000000001, 864691135000000003, 864691135123456789]
assert float(ROOTS[0]) == float(ROOTS[1]) and int(float(ROOTS[2])) != ROOTS[2]


def test_text_file_keeps_root_ids_exact_and_reports_blank_lines(tmp_path):
    path = tmp_path / "roots.txt"
    path.write_text(f"# root ids\n{ROOTS[0]}\n\n{ROOTS[1]}\n{ROOTS[2]}\n\n")
    items = ItemSource(items_file=str(path)).read()
    assert items == ROOTS and all(type(i) is int for i in items)
    assert items.empty_lines == [3]
    assert "1 empty cells skipped (lines 3)" in items.report()


def test_csv_with_a_gap_keeps_every_root_id_exact(tmp_path):
    path = tmp_path / "roots.csv"
    path.write_text(f"root_id,note\n{ROOTS[0]},a\n,gap\n{ROOTS[1]},b\n{ROOTS[2]},c\n")
    items = ItemSource(items_file=str(path), column="root_id").read()
    assert items == ROOTS and all(type(i) is int for i in items)
    assert items.empty_lines == [3]


def test_csv_written_by_pandas_from_a_nullable_column_keeps_root_ids(tmp_path):
    frame = pd.DataFrame({"root_id": pd.array([ROOTS[0], None, ROOTS[1], ROOTS[2]], dtype="Int64")})
    frame.to_csv(tmp_path / "roots.csv", index=False)
    assert ItemSource(items_file=str(tmp_path / "roots.csv")).read() == ROOTS


@pytest.mark.parametrize("writer", ["arrow", "pandas"])
def test_parquet_int64_column_with_nulls_keeps_root_ids(tmp_path, writer):
    path = tmp_path / "roots.parquet"
    values = [ROOTS[0], None, ROOTS[1], ROOTS[2]]
    if writer == "arrow":
        pq.write_table(pa.table({"root_id": pa.array(values, pa.int64())}), path)
    else:
        pd.DataFrame({"root_id": pd.array(values, dtype="Int64")}).to_parquet(path)
    items = ItemSource(items_file=str(path), column="root_id").read()
    assert items == ROOTS and all(type(i) is int for i in items)
    assert items.empty_lines == [2]


def test_parquet_float_column_of_large_ids_is_refused_with_how_to_keep_them(tmp_path):
    path = tmp_path / "roots.parquet"
    pd.DataFrame({"root_id": [float(ROOTS[0]), float("nan")]}).to_parquet(path)
    with pytest.raises(ItemSourceError, match=r"root_id.*above 2\*\*53.*Int64"):
        ItemSource(items_file=str(path), column="root_id").read()


def test_parquet_float_column_of_small_integral_ids_gives_ints(tmp_path):
    path = tmp_path / "ids.parquet"
    pd.DataFrame({"id": [3.0, float("nan"), 1.0]}).to_parquet(path)
    assert ItemSource(items_file=str(path)).read() == [3, 1]


def test_parquet_string_column_is_parsed_as_text(tmp_path):
    path = tmp_path / "roots.parquet"
    pq.write_table(pa.table({"root_id": [str(ROOTS[0]), None, "007"]}), path)
    assert ItemSource(items_file=str(path)).read() == [ROOTS[0], "007"]


def test_generator_items_keep_numpy_int64_exact():
    import numpy as np

    assert ItemSource(items=list(np.array(ROOTS, dtype=np.int64))).read() == ROOTS


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", 42),
        (" 42 ", 42),
        ("-7", -7),
        ("007", "007"),
        ("1e3", 1000),
        ("3.0", 3),
        ("+5", "+5"),
        ("abc", "abc"),
        (str(ROOTS[2]), ROOTS[2]),
    ],
)
def test_text_is_an_int_when_it_writes_an_exact_integer(text, value):
    assert parse_item(text) == value and type(parse_item(text)) is type(value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("8.64691135e17", "already rounded"),
        ("864691135000000001.0", "already rounded"),
        ("1.5", "not a whole number"),
        ("864,691,135,000,000,001", "thousands separators"),
        ("864 691 135 000 000 001", "thousands separators"),
        ("", "is empty"),
        ("   ", "is empty"),
    ],
)
def test_text_that_writes_no_exact_item_is_refused_naming_it(text, problem):
    with pytest.raises(ItemSourceError, match=rf"--item #3.*{problem}"):
        parse_item(text, "--item #3")


def write(path, content: str | bytes):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


@pytest.mark.parametrize("suffix, header", [(".txt", ""), (".csv", "root_id\n")])
def test_a_byte_order_mark_is_not_part_of_the_first_item(tmp_path, suffix, header):
    path = write(tmp_path / f"roots{suffix}", f"\ufeff{header}{ROOTS[0]}\n{ROOTS[1]}\n")
    assert ItemSource(items_file=path).read() == ROOTS[:2]


def test_a_csv_without_a_header_line_is_refused_instead_of_losing_its_first_id(tmp_path):
    path = write(tmp_path / "roots.csv", f"{ROOTS[0]}\n{ROOTS[1]}\n")
    with pytest.raises(ItemSourceError, match=r"no header line.*would be dropped.*root_id"):
        ItemSource(items_file=path).read()


def test_a_latin1_file_is_named_as_not_utf8_with_the_fix(tmp_path):
    path = write(tmp_path / "names.txt", "caf\xe9\n".encode("latin-1"))
    with pytest.raises(ItemSourceError, match=r"not UTF-8 text \(byte 0xe9.*iconv"):
        ItemSource(items_file=path).read()


@pytest.mark.parametrize("name", ["roots.dat", "roots", "roots.xlsx"])
def test_a_file_of_an_unknown_format_is_refused_naming_the_formats(tmp_path, name):
    path = write(tmp_path / name, f"{ROOTS[0]}\n")
    with pytest.raises(ItemSourceError, match=r"not a format tqflow reads.*\.txt.*\.jsonl"):
        ItemSource(items_file=path).read()


def test_json_lines_give_the_key_named_by_column_exactly(tmp_path):
    lines = [json.dumps({"root_id": r, "note": "x"}) for r in ROOTS]
    path = write(tmp_path / "roots.jsonl", "\n".join(lines[:1] + [""] + lines[1:]) + "\n")
    items = ItemSource(items_file=path, column="root_id").read()
    assert items == ROOTS and all(type(i) is int for i in items)
    assert items.empty_lines == [2]


def test_json_lines_of_objects_without_column_ask_for_the_key(tmp_path):
    path = write(tmp_path / "roots.jsonl", json.dumps({"root_id": ROOTS[0]}) + "\n")
    with pytest.raises(ItemSourceError, match=r"line 1 is a JSON object.*--column.*root_id"):
        ItemSource(items_file=path).read()


def test_json_lines_of_values_and_a_json_array_are_items(tmp_path):
    lines = write(tmp_path / "roots.jsonl", "\n".join(map(str, ROOTS)) + "\n")
    array = write(tmp_path / "roots.json", json.dumps(ROOTS))
    assert ItemSource(items_file=lines).read() == ROOTS
    assert ItemSource(items_file=array).read() == ROOTS


def test_column_is_refused_where_it_has_no_meaning(tmp_path):
    path = write(tmp_path / "roots.txt", f"{ROOTS[0]}\n")
    with pytest.raises(ItemSourceError, match=r"column='root_id' has no meaning.*\.txt"):
        ItemSource(items_file=path, column="root_id").read()
    with pytest.raises(ItemSourceError, match=r"column='root_id'.*no items_file"):
        ItemSource(items=ROOTS, column="root_id")


def test_a_parquet_float_column_with_a_fraction_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "ids.parquet"
    pd.DataFrame({"id": [3.0, 1.5]}).to_parquet(path)
    with pytest.raises(ItemSourceError, match=r"column id row 2 \(1.5\) is not a whole number"):
        ItemSource(items_file=str(path)).read()


def test_na_markers_in_a_csv_are_empty_cells_not_items(tmp_path):
    path = write(tmp_path / "roots.csv", f"root_id\n{ROOTS[0]}\nNA\nnan\n{ROOTS[1]}\n")
    items = ItemSource(items_file=path).read()
    assert items == ROOTS[:2] and items.empty_lines == [3, 4]


@pytest.mark.parametrize(
    "items, problem",
    [
        ([ROOTS[0], float(ROOTS[1])], r"items\[1\].*already rounded"),
        ([1, 2.5], r"items\[1\] \(2.5\) is not a whole number"),
        ([1, None], r"items\[1\] is empty"),
        (["soma", ""], r"items\[1\] is empty"),
    ],
)
def test_a_list_item_that_is_not_exact_or_empty_is_refused_naming_its_index(items, problem):
    with pytest.raises(ItemSourceError, match=problem):
        ItemSource(items=items).read()


def test_whole_floats_in_a_list_become_ints_and_strings_stay_as_given():
    items = ItemSource(items=[3.0, "007", "42"]).read()
    assert items == [3, "007", "42"] and [type(i) for i in items] == [int, str, str]


def test_an_items_generator_that_raises_is_named(monkeypatch):
    with pytest.raises(ItemSourceError, match=r"items_from tests.tasks:broken_items raised"):
        ItemSource(items_from="tests.tasks:broken_items").read()


def test_enqueue_command_queues_exactly_the_root_ids_of_a_csv_with_gaps(tmp_path):
    path = tmp_path / "roots.csv"
    path.write_text(f"root_id\n{ROOTS[0]}\n\n{ROOTS[1]}\n \n{ROOTS[2]}\n")
    data = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        [
            "enqueue",
            "tests.tasks:identity",
            "--items-file",
            str(path),
            "--column",
            "root_id",
            "--batch",
            "roots",
            "--data",
            str(data),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "queued 3 tasks" in result.output
    assert "2 empty cells skipped (lines 3, 5)" in result.output
    queue = LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name="roots", wait_seconds=0)
    bodies = [lease.body for lease in queue.receive(max_messages=10)]
    assert sorted(decode(b).kwargs["value"] for b in bodies) == ROOTS
    assert sorted(decode(b).key for b in bodies) == sorted(map(str, ROOTS))


def test_an_empty_item_option_is_refused_and_queues_nothing(tmp_path):
    data = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        ["enqueue", "tests.tasks:identity", "--item", "1", "--item", "", "--data", str(data)],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 1
    assert "--item #2 is empty" in " ".join(result.output.split())
    assert not (data / "queue.sqlite").exists()


def test_kwargs_that_name_the_item_parameter_are_refused_naming_it(queue_factory, storage):
    queue = queue_factory()
    with pytest.raises(
        BadArgumentsError,
        match=r"kwargs set 'x', the parameter of tests.tasks:square that takes each item",
    ):
        enqueue_items(queue, storage, "tests.tasks:square", [1, 2], "b", kwargs={"x": 5})
    assert queue.counts().pending == 0


def test_item_and_kwargs_reach_the_task_unshifted(queue_factory, storage):
    queue = queue_factory()
    enqueue_items(queue, storage, "tests.tasks:power", [3], "b", kwargs={"exponent": 2})
    [lease] = queue.receive()
    assert json.loads(lease.body)["kwargs"] == {"base": 3, "exponent": 2}


def test_a_class_as_the_task_function_is_refused_before_anything_is_queued(queue_factory, storage):
    queue = queue_factory()
    with pytest.raises(UnknownFunctionError, match=r"tests.tasks:NotATask' is a class"):
        enqueue_items(queue, storage, "tests.tasks:NotATask", [1, 2], "b")
    assert queue.counts().pending == 0
