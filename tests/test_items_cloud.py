"""An items file in the cloud (``items_file="gs://..."`` / ``"s3://..."``), read with the storage
block's credentials on the real stand-ins, under the same exactness rules as a local file: what
a deployment's run on a cluster, which has no local copy, gives."""

from __future__ import annotations

import uuid

import pytest

from flows.pipeline import pipeline
from tests.support.cloud import GCS_BUCKET
from tqflow.engine.layout import output_path
from tqflow.enqueue import ItemSource
from tqflow.errors import ItemSourceError

ROOT_IDS = [864691135000000000 + 7 * i for i in range(100_000)]


def upload(storage, name: str, content: bytes) -> str:
    """``content`` as ``name`` beside the storage block's folder; its URL."""
    storage.put(f"inputs/{name}", content)
    return storage.url(f"inputs/{name}")


@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_a_hundred_thousand_item_csv_in_the_cloud_is_read_exactly(protocol, request):
    storage = request.getfixturevalue({"gs": "gcs_storage", "s3": "s3_storage"}[protocol])
    csv = "root_id\n" + "\n".join(map(str, ROOT_IDS)) + "\n"
    url = upload(storage, "roots.csv", csv.encode())
    assert url.startswith(f"{protocol}://")
    items = ItemSource(items_file=url, column="root_id").read(storage=storage)
    assert list(items) == ROOT_IDS  # 18-digit IDs, none rounded, order kept


def test_a_cloud_items_file_breaking_a_rule_is_named_by_its_url(gcs_storage):
    url = upload(gcs_storage, "roots.txt", b"864691135000000001\n8.64691135e17\n")
    with pytest.raises(ItemSourceError, match=rf"{url} line 2"):
        ItemSource(items_file=url).read(storage=gcs_storage)


def test_a_missing_cloud_items_file_is_named(gcs_storage):
    url = f"gs://{GCS_BUCKET}/nowhere-{uuid.uuid4().hex[:6]}/roots.csv"
    with pytest.raises(ItemSourceError, match=f"items file {url} does not exist"):
        ItemSource(items_file=url).read(storage=gcs_storage)


def test_a_pipeline_run_reads_its_items_from_a_gs_file(gcs_storage, tmp_path, prefect_api):
    from blocks import LocalTaskQueue

    url = upload(gcs_storage, "items.jsonl", b"".join(b"%d\n" % i for i in range(12)))
    queue = LocalTaskQueue(
        path=str(tmp_path / "q.sqlite"), queue_name="q", wait_seconds=0, allowed_modules=["tests"]
    )
    summary = pipeline(
        fn="tests.tasks:square",
        queue=queue,
        storage=gcs_storage,
        batch="from-gs",
        items_file=url,
        workers=1,
        worker_options={"idle_seconds": 0.5},
        poll_seconds=0.2,
    )
    assert (summary["queued"], summary["done"]) == (12, 12)
    for i in range(12):
        assert gcs_storage.get_json(output_path("from-gs", str(i)))["result"] == i * i


def test_a_parameter_list_of_a_megabyte_and_more_says_to_use_a_file():
    big = ItemSource(items=ROOT_IDS).read()  # 100,000 18-digit IDs: ~2 MB of JSON
    assert list(big) == ROOT_IDS
    assert "put them in a file and pass items_file" in big.report()
    assert ItemSource(items=ROOT_IDS[:1000]).read().report() == ""
