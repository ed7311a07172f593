"""The results table: a batch's outputs streamed into one Parquet file, chunk by chunk."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from blocks import CloudFilesStorage
from tests.support.helpers import write_outputs
from tqflow.engine.layout import output_path
from tqflow.results.table import build_results_table, output_paths


@pytest.fixture
def storage(tmp_path):
    return CloudFilesStorage(cloudpath=f"file://{tmp_path / 'data'}")


def build(storage, tmp_path, chunk_rows=2):
    return build_results_table(storage, output_paths(storage, "b"), str(tmp_path), chunk_rows)


def test_one_row_per_output_sorted_by_key(storage, tmp_path):
    write_outputs(storage, {k: {"n": i} for i, k in enumerate(["c", "a-b", "a", "b"])})
    table = pq.read_table(build(storage, tmp_path).path)
    assert table.column("key").to_pylist() == ["a", "a-b", "b", "c"]
    assert table.column("n").to_pylist() == [2, 1, 3, 0]
    assert table.column("task_seconds").to_pylist() == [0.5] * 4


def test_a_column_int_in_one_chunk_and_float_in_another_is_float(storage, tmp_path):
    write_outputs(storage, {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 2.5}, "d": {"x": None}})
    result = build(storage, tmp_path)
    assert str(result.schema.field("x").type) == "double"
    assert pq.read_table(result.path).column("x").to_pylist() == [1.0, 2.0, 2.5, None]
    assert "x" in result.numeric_columns


def test_a_column_first_seen_in_a_later_chunk_is_null_before_it(storage, tmp_path):
    write_outputs(storage, {"a": {"x": 1}, "b": {"x": 2}, "c": {"x": 3, "late": "yes"}})
    table = pq.read_table(build(storage, tmp_path).path)
    assert table.column("late").to_pylist() == [None, None, "yes"]


def test_a_column_of_mixed_kinds_is_kept_as_text(storage, tmp_path):
    write_outputs(
        storage, {"a": {"v": "soma"}, "b": {"v": 7}, "c": {"v": [1, 2]}, "d": {"v": "axon"}}
    )
    result = build(storage, tmp_path)
    assert pq.read_table(result.path).column("v").to_pylist() == ["soma", "7", "[1, 2]", "axon"]
    assert "v" not in result.numeric_columns


def test_a_result_that_is_not_a_dict_is_one_result_column(storage, tmp_path):
    write_outputs(storage, {"a": 1.5, "b": 2.5})
    table = pq.read_table(build(storage, tmp_path).path)
    assert table.column("result").to_pylist() == [1.5, 2.5]


def test_outputs_are_read_a_chunk_at_a_time(storage, tmp_path):
    write_outputs(storage, {f"k{i:02d}": {"i": i} for i in range(25)})
    reads: list[int] = []
    get_json_many = storage.get_json_many

    class Counting:
        def list(self, prefix=""):
            return storage.list(prefix)

        def get_json_many(self, paths):
            reads.append(len(paths))
            return get_json_many(paths)

    result = build_results_table(
        Counting(), output_paths(storage, "b"), str(tmp_path), chunk_rows=10
    )
    assert reads == [10, 10, 5]
    assert result.rows == 25
    assert pq.read_table(result.path).column("i").to_pylist() == list(range(25))


def test_a_missing_output_is_left_out_not_an_error(storage, tmp_path):
    write_outputs(storage, {"a": {"x": 1}, "b": {"x": 2}})
    paths = output_paths(storage, "b")
    (tmp_path / "data" / paths[0]).unlink()  # removed between the listing and the read
    result = build_results_table(storage, paths, str(tmp_path))
    assert pq.read_table(result.path).column("key").to_pylist() == ["b"]


def test_a_result_field_literally_named_result_key_leaves_result_key_to_the_results_key(
    storage, tmp_path
):
    write_outputs(storage, {"a": {"result.key": "literal", "key": "theirs"}})
    row = pq.read_table(build(storage, tmp_path).path).to_pylist()[0]
    assert (row["key"], row["result.key"], row["result.result.key"]) == ("a", "theirs", "literal")


def test_a_result_field_named_like_a_table_column_is_kept_beside_it(storage, tmp_path):
    write_outputs(storage, {"a": {"key": "theirs", "task_seconds": 99, "n": 1}})
    row = pq.read_table(build(storage, tmp_path).path).to_pylist()[0]
    assert (row["key"], row["result.key"]) == ("a", "theirs")
    assert (row["task_seconds"], row["result.task_seconds"]) == (0.5, 99)


def test_root_ids_stay_exact_in_a_column_that_is_float_in_another_chunk(storage, tmp_path):
    root = 864691135000000001
    write_outputs(storage, {"a": {"id": root}, "b": {"id": root + 2}, "c": {"id": 1.5}})
    result = build(storage, tmp_path)
    values = pq.read_table(result.path).column("id").to_pylist()
    assert values == [str(root), str(root + 2), "1.5"]


def test_nested_dicts_are_json_text_whatever_their_keys(storage, tmp_path):
    write_outputs(storage, {"a": {"soma": {"x": 1}}, "b": {"soma": {"y": [1, 2]}}})
    table = pq.read_table(build(storage, tmp_path, chunk_rows=10).path)
    assert table.column("soma").to_pylist() == ['{"x": 1}', '{"y": [1, 2]}']


def test_an_output_that_is_not_json_is_left_out_and_named(storage, tmp_path):
    write_outputs(storage, {"a": {"n": 1}, "c": {"n": 3}})
    storage.put(output_path("b", "b"), b'{"key": "b", "resu')
    storage.put_json(output_path("b", "d"), [1, 2])
    result = build(storage, tmp_path)
    assert pq.read_table(result.path).column("key").to_pylist() == ["a", "c"]
    assert result.left_out_count == 2
    assert "not valid JSON" in result.left_out[output_path("b", "b")]
    assert "not an output record" in result.left_out[output_path("b", "d")]
