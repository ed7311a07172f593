"""Where items come from, and what enqueue skips."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tqflow.engine.layout import output_path
from tqflow.enqueue import ItemSource, done_outputs, enqueue_items
from tqflow.errors import BadArgumentsError, ItemSourceError, MessageTooLargeError


def test_text_file_gives_one_item_per_line_with_numbers_as_int(tmp_path):
    path = tmp_path / "roots.txt"
    path.write_text("# root ids\n864691135000000001\n\nabc\n")
    assert ItemSource(items_file=str(path)).read() == [864691135000000001, "abc"]


def test_csv_and_parquet_give_the_named_column(tmp_path):
    frame = pd.DataFrame({"root_id": [3, 1, 2], "note": ["a", "b", "c"]})
    frame.to_csv(tmp_path / "r.csv", index=False)
    frame.to_parquet(tmp_path / "r.parquet")
    assert ItemSource(items_file=str(tmp_path / "r.csv"), column="root_id").read() == [3, 1, 2]
    assert ItemSource(items_file=str(tmp_path / "r.parquet"), column="root_id").read() == [3, 1, 2]


def test_table_with_several_columns_needs_the_column_named(tmp_path):
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(ItemSourceError, match=r"columns \['a', 'b'\].*column="):
        ItemSource(items_file=str(tmp_path / "r.csv")).read()


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ItemSourceError, match="nothere.txt does not exist"):
        ItemSource(items_file=str(tmp_path / "nothere.txt")).read()


def test_items_from_an_importable_generator():
    assert ItemSource(items_from="tests.support.enqueue_sources:five_roots").read() == [
        10,
        11,
        12,
        13,
        14,
    ]


def test_two_explicit_sources_are_refused():
    with pytest.raises(ItemSourceError, match="one source of items, not several"):
        ItemSource(items=[1], items_file="roots.txt").read()


def test_no_source_at_all_is_refused():
    with pytest.raises(ItemSourceError, match="no items"):
        ItemSource().read()


def test_explicit_items_replace_the_default_generator():
    # a deployment's default items_from does not stand in the way of a run's own items
    assert ItemSource(items=[7], items_from="tests.support.enqueue_sources:five_roots").read() == [
        7
    ]


def test_items_with_outputs_are_skipped_and_duplicates_dropped(queue_factory, storage):
    queue = queue_factory()
    storage.put_json(output_path("b", "2"), {"result": 4})
    result = enqueue_items(queue, storage, "tests.tasks:square", [1, 2, 3, 3], "b")
    assert (result.queued, result.skipped_done, result.duplicates) == (2, 1, 1)
    assert queue.counts().visible == 2


def test_one_oversized_item_queues_nothing_and_names_the_item(queue_factory, storage):
    queue = queue_factory()
    items = ["small", "x" * (queue.max_message_bytes + 10)]
    with pytest.raises(MessageTooLargeError, match="item 'h-"):
        enqueue_items(queue, storage, "tests.tasks:square", items, "b")
    assert queue.counts().pending == 0


def test_kwargs_that_do_not_fit_queue_nothing(queue_factory, storage):
    queue = queue_factory()
    with pytest.raises(BadArgumentsError):
        enqueue_items(queue, storage, "tests.tasks:square", [1, 2], "b", kwargs={"nope": 1})
    assert queue.counts().pending == 0


@pytest.fixture
def http_requests(monkeypatch):
    """Counts the HTTP requests this process sends (urllib3, under google-cloud-storage and
    botocore); each still goes to its real server."""
    import urllib3.connectionpool

    sent: list[str] = []
    urlopen = urllib3.connectionpool.HTTPConnectionPool.urlopen

    def counted(self, method, url, *args, **kwargs):
        sent.append(f"{method} {url}")
        return urlopen(self, method, url, *args, **kwargs)

    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen", counted)
    return sent


def test_resume_check_of_a_big_batch_lists_outputs_instead_of_asking_per_item(
    s3_storage, http_requests
):
    keys = [str(i) for i in range(50)]
    for key in keys[::2]:
        s3_storage.put_json(output_path("big", key), {})
    done = {output_path("big", key) for key in keys[::2]}
    http_requests.clear()
    assert done_outputs(s3_storage, "big", keys, list_from=10) == done
    listed = len(http_requests)
    http_requests.clear()
    assert done_outputs(s3_storage, "big", keys, list_from=len(keys) + 1) == done
    asked = len(http_requests)
    assert listed <= 2 and asked >= len(keys), (listed, asked)  # a list, not a check per item


def _sent_order(queue) -> list[str]:
    keys = []
    while leases := queue.receive(max_messages=10):
        keys += [json.loads(lease.body)["key"] for lease in leases]
        queue.ack(leases)
    return keys


def test_items_into_a_bucket_are_sent_in_an_order_shuffled_by_the_batch_name(tmp_path, gcs_storage):
    # sorted root IDs would be written as outputs from the first key to the last: the pattern
    # GCS ramps worst; the order is the batch's own, the same on every run
    from blocks import LocalTaskQueue

    orders = []
    for name in ("one", "two"):
        queue = LocalTaskQueue(
            path=str(tmp_path / f"{name}.sqlite"), queue_name="q", wait_seconds=0
        )
        enqueue_items(queue, gcs_storage, "tests.tasks:square", range(200), "b", overwrite=True)
        orders.append(_sent_order(queue))
    assert orders[0] == orders[1]
    assert sorted(orders[0], key=int) == [str(i) for i in range(200)]
    assert orders[0] != [str(i) for i in range(200)]


def test_items_into_a_local_folder_are_sent_in_their_own_order(tmp_path, storage):
    # nothing to spread on a disk, and the local queue's dedup index takes keys in order
    # several times faster than shuffled (bench/scale.py's enqueue at 10^6)
    from blocks import LocalTaskQueue

    queue = LocalTaskQueue(path=str(tmp_path / "q.sqlite"), queue_name="q", wait_seconds=0)
    enqueue_items(queue, storage, "tests.tasks:square", range(200), "b")
    assert _sent_order(queue) == [str(i) for i in range(200)]
