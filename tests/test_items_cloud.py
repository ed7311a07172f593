"""An items file in the cloud (``items_file="gs://..."`` / ``"s3://..."``), read with the storage
block's credentials on the real stand-ins, under the same exactness rules as a local file: what
a deployment's run on a cluster, which has no local copy, gives."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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


class _RefusingS3(BaseHTTPRequestHandler):
    """S3 on 127.0.0.1 that refuses every key, as S3 answers a key it does not know."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = (
            b'<?xml version="1.0"?><Error><Code>InvalidAccessKeyId</Code><Message>The AWS '
            b"Access Key Id you provided does not exist in our records.</Message></Error>"
        )
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def refusing_s3(tmp_path):
    """The environment of a user whose AWS keys S3 refuses (no secrets folder in HOME)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RefusingS3)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "AWS_ACCESS_KEY_ID": "AKIAREFUSED000000001",
        "AWS_SECRET_ACCESS_KEY": "made-up",
        "AWS_DEFAULT_REGION": "us-east-1",
        "COLUMNS": "300",
    }
    server.shutdown()


def enqueue_from(url: str, env: dict[str, str], data: Path) -> str:
    """``tqflow enqueue`` of an items file at ``url``, as a user runs it; its one-line error."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tqflow"), "enqueue", "tests.tasks:square",
         "--items-file", url, "--data", str(data)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in output, output
    assert not (data / "queue.sqlite").exists() or "queued" not in output  # nothing queued
    return " ".join(output.split())


def test_aws_keys_in_the_environment_without_a_session_token_are_one_sentence(
    refusing_s3, tmp_path
):
    message = enqueue_from("s3://lab-bucket/items.csv", refusing_s3, tmp_path / "data")
    assert "the AWS keys in this environment come without AWS_SESSION_TOKEN" in message
    assert "~/.cloudvolume/secrets/aws-secret.json" in message and "--storage-block" in message


def test_a_refused_key_is_named_as_the_credentials_with_where_they_came_from(refusing_s3, tmp_path):
    env = {**refusing_s3, "AWS_SESSION_TOKEN": "made-up"}
    message = enqueue_from("s3://lab-bucket/items.csv", env, tmp_path / "data")
    assert (
        "cannot read s3://lab-bucket/items.csv: its credentials were refused (InvalidAccessKeyId)"
        in message
    )
    assert (
        "cloud-files' own (~/.cloudvolume/secrets/aws-secret.json, else the environment)" in message
    )
    # said before the read, which the cloud library retries for a while: not silent
    reading = message.index("reading the items from s3://lab-bucket/items.csv")
    assert reading < message.index("cannot read")


def test_a_block_with_its_own_google_credentials_does_not_claim_default_ones(gcs_storage, capfd):
    bucket = f"tqflow-{uuid.uuid4().hex[:12]}"  # a bucket this process has not opened yet
    assert gcs_storage.read_url(f"gs://{bucket}/items.csv") is None  # no such file there
    printed = capfd.readouterr()
    assert "Using default Google credentials" not in printed.out + printed.err
