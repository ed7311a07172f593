"""`CloudFilesStorage` on file:// (gs:// and s3:// join with the credentials issue)."""

from __future__ import annotations

import numpy as np
import pytest

from blocks import CloudFilesStorage
from tqflow.errors import CorruptFileError


def test_json_round_trips(storage):
    storage.put_json("b/outputs/1.json", {"a": [1, 2.5, None], "b": "x"})
    assert storage.get_json("b/outputs/1.json") == {"a": [1, 2.5, None], "b": "x"}


def test_missing_file_reads_as_none(storage):
    assert storage.get_json("b/outputs/nothing.json") is None
    assert not storage.exists("b/outputs/nothing.json")


def test_numpy_values_are_written_as_plain_json(storage):
    storage.put_json("n.json", {"mean": np.float32(1.5), "hist": np.arange(3)})
    assert storage.get_json("n.json") == {"mean": 1.5, "hist": [0, 1, 2]}


def test_unserialisable_value_is_refused_before_anything_is_written(storage):
    with pytest.raises(TypeError, match="object is not JSON-serialisable"):
        storage.put_json("bad.json", {"x": object()})
    assert not storage.exists("bad.json")


def test_overwrite_replaces_the_file_whole_and_leaves_no_temporary_files(storage, tmp_path):
    storage.put_json("b/outputs/1.json", {"v": "old" * 1000})
    storage.put_json("b/outputs/1.json", {"v": "new"})
    assert storage.get_json("b/outputs/1.json") == {"v": "new"}
    assert list(storage.list("b/")) == ["b/outputs/1.json"]


def test_exists_many_and_list_and_parallel_reads(storage):
    for i in range(5):
        storage.put_json(f"b/outputs/{i}.json", {"i": i})
    paths = [f"b/outputs/{i}.json" for i in range(7)]
    assert storage.exists_many(paths) == {p: i < 5 for i, p in enumerate(paths)}
    assert sorted(storage.list("b/outputs/")) == paths[:5]
    assert storage.get_json_many(paths) == {paths[i]: {"i": i} for i in range(5)}


def test_a_corrupt_file_is_named(storage):
    storage.put("b/outputs/bad.json", b"{not json")
    with pytest.raises(CorruptFileError, match=r"b/outputs/bad.json is not valid JSON"):
        storage.get_json("b/outputs/bad.json")


def test_reading_many_keeps_every_good_file_beside_a_corrupt_one(storage):
    storage.put_json("b/outputs/1.json", {"i": 1})
    storage.put("b/outputs/bad.json", b"{not json")
    found = storage.get_json_many(["b/outputs/1.json", "b/outputs/bad.json", "b/outputs/2.json"])
    assert found == {"b/outputs/1.json": {"i": 1}}
    assert list(found.corrupt) == ["b/outputs/bad.json"]


def test_relative_file_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert CloudFilesStorage(cloudpath="file://data").cloudpath == f"file://{tmp_path / 'data'}"


def test_cloudpath_without_protocol_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="gs://bucket/path"):
        CloudFilesStorage(cloudpath="/some/folder")
