"""Output records in shards (`tqflow.engine.shards`), and an analysis that reads them first
(`tqflow.results.shard_index`): every item exactly once, whatever happened between a worker's outputs
and its shard."""

from __future__ import annotations

import json
import logging
import os
import signal

import pyarrow.parquet as pq

from tests.support.helpers import enqueue, run_worker, wait_until
from tqflow.engine.layout import (
    analysis_table_path,
    output_path,
    outputs_prefix,
    shard_path,
    shards_prefix,
)
from tqflow.engine.shards import ShardWriter
from tqflow.results.analyze import analyze_batch

ITEMS = 40


def shard_records(storage, batch: str = "b") -> list[dict]:
    paths = [p for p in storage.list(shards_prefix(batch)) if p.endswith(".json")]
    return [r for shard in storage.get_json_many(paths).values() for r in shard["records"]]


def analysed_rows(storage, batch: str = "b") -> dict[str, dict]:
    analyze_batch(storage, batch)
    local = storage.cloudpath.removeprefix("file://")
    table = pq.read_table(os.path.join(local, analysis_table_path(batch))).to_pylist()
    keys = [row["key"] for row in table]
    assert len(keys) == len(set(keys)), "a key in more than one row"
    return {row["key"]: row for row in table}


def test_a_worker_writes_every_output_record_to_a_shard_when_it_finds_the_queue_empty(
    queue_factory, storage
):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", range(ITEMS))
    run_worker(queue, storage)
    records = shard_records(storage)
    assert sorted(r["key"] for r in records) == sorted(str(i) for i in range(ITEMS))
    for record in records:
        assert record == storage.get_json(output_path("b", record["key"]))


def test_a_worker_killed_between_its_outputs_and_its_shard_loses_nothing_and_counts_nothing_twice(
    queue_factory, storage, forked_workers, tmp_path
):
    queue = queue_factory(lease_seconds=2)
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    enqueue(queue, "tests.tasks:counted", range(ITEMS), log_dir=str(log_dir), seconds=0.05)
    victim = forked_workers.start(queue, storage, idle_seconds=60)
    # outputs written, its shard not yet (1,000 records, or an empty queue, would write it)
    wait_until(lambda: len(list(storage.list(outputs_prefix("b")))) >= 10, timeout=120)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(30) == -signal.SIGKILL
    assert len(list(storage.list(outputs_prefix("b")))) < ITEMS and not shard_records(storage)

    run_worker(queue, storage, idle_seconds=0.5)

    assert len(shard_records(storage)) < ITEMS  # the victim's outputs are in no shard
    rows = analysed_rows(storage)
    assert sorted(rows) == sorted(str(i) for i in range(ITEMS))
    assert all(row["result"] == int(key) ** 2 for key, row in rows.items())


def test_a_key_in_two_shards_is_the_record_that_finished_last(storage):
    old = {"key": "7", "result": 1, "finished_at": "2026-01-01T00:00:00.000+00:00"}
    new = {"key": "7", "result": 2, "finished_at": "2026-01-01T00:00:05.000+00:00"}
    storage.put_json(output_path("b", "7"), new)
    writer = ShardWriter(storage, "w", logging.getLogger("test"), records_per_shard=1)
    writer.add("b", new)  # the later record in the earlier shard: order of shards is no guide
    writer.add("b", old)
    assert analysed_rows(storage)["7"]["result"] == 2


def test_a_shards_record_counts_only_while_its_output_exists(storage):
    storage.put_json(output_path("b", "1"), {"key": "1", "result": 1})
    writer = ShardWriter(storage, "w", logging.getLogger("test"))
    writer.add("b", {"key": "1", "result": 1})
    writer.add("b", {"key": "2", "result": 4})  # its output deleted since (to run it again)
    writer.flush()
    assert sorted(analysed_rows(storage)) == ["1"]


def test_a_damaged_shard_costs_only_reads_its_outputs_are_read_instead(storage):
    for key in ("1", "2"):
        storage.put_json(output_path("b", key), {"key": key, "result": int(key) * 10})
    storage.put(shard_path("b", "w", 0), b'{"records": [{"key": "1", "res')
    storage.put(shard_path("b", "w", 1), json.dumps({"records": "not a list"}).encode())
    rows = analysed_rows(storage)
    assert {key: row["result"] for key, row in rows.items()} == {"1": 10, "2": 20}


def test_the_analysis_takes_a_sharded_record_from_its_shard_not_its_output(storage):
    # what makes it fast: a key a shard holds costs no read of its own
    storage.put_json(output_path("b", "1"), {"key": "1", "result": "from the output"})
    writer = ShardWriter(storage, "w", logging.getLogger("test"))
    writer.add("b", {"key": "1", "result": "from the shard"})
    writer.flush()
    assert analysed_rows(storage)["1"]["result"] == "from the shard"
