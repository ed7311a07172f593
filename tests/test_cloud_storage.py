"""`CloudFilesStorage` on gs:// (gcp-storage-emulator, and fake-gcs-server where a listing's
offsets matter) and s3:// (moto server), with the credentials of prefect-gcp and prefect-aws
blocks."""

from __future__ import annotations

import io
import uuid
from urllib.parse import quote

import httpx
import pandas as pd
import pytest

from blocks import CloudFilesStorage
from flows.analysis import analysis
from tests.support.cloud import GCS_BUCKET, service_account_info, sqs_credentials
from tests.support.helpers import enqueue, run_worker
from tqflow.errors import StorageError


def test_json_round_trips_on_every_protocol(any_storage):
    any_storage.put_json("b/outputs/1.json", {"a": [1, 2.5, None], "b": "µm"})
    assert any_storage.get_json("b/outputs/1.json") == {"a": [1, 2.5, None], "b": "µm"}
    assert any_storage.get_json("b/outputs/missing.json") is None


def test_listing_and_parallel_reads_on_every_protocol(any_storage):
    for i in range(5):
        any_storage.put_json(f"b/outputs/{i}.json", {"i": i})
    paths = [f"b/outputs/{i}.json" for i in range(7)]
    assert sorted(any_storage.list("b/outputs/")) == paths[:5]
    assert any_storage.get_json_many(paths) == {paths[i]: {"i": i} for i in range(5)}


@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_a_listing_cut_into_parallel_ranges_lists_every_name_once(protocol, request):
    storage = request.getfixturevalue({"gs": "fake_gcs_storage", "s3": "s3_storage"}[protocol])
    names = [f"b/outputs/{i:03d}.json" for i in range(100)]
    for name in names:
        storage.put_json(name, {})
    # 40,000 expected names, so the listing is cut in four ranges; each cut falls on a name
    # that exists (the expected names are 80 of them, repeated), the hardest place for a
    # range's bound. Names outside the expected ones are listed too.
    expected = names[10:90] * 500
    listed = list(storage.list("b/outputs/", expected=expected))
    assert sorted(listed) == names


def test_the_listing_stand_in_lists_what_fake_gcs_server_lists(fake_gcs, monkeypatch):
    # bench/cloud_latency.py lists through the proxy's index (a bucket's pace, where
    # fake-gcs-server's own listing slows with the bucket): it must answer what the server
    # does, also after writes and deletes through the proxy.
    from tests.support.services import http_proxy

    # A bucket of its own: cloud-files keeps one client per bucket, made for the endpoint of
    # its time, and this one's is the proxy's.
    bucket = f"tqflow-listing-{uuid.uuid4().hex[:8]}"
    bucket_url = f"{fake_gcs.endpoint}/storage/v1/b"
    httpx.post(bucket_url, params={"project": "t"}, json={"name": bucket}).raise_for_status()
    names = [f"b/outputs/{i:04d}.json" for i in range(2_500)]  # three pages
    with http_proxy(fake_gcs.endpoint, gcs=fake_gcs, list_seconds_per_name=0) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        storage = CloudFilesStorage(cloudpath=f"gs://{bucket}/f", num_threads=3)
        storage._client().cloudfiles().puts([(name, b"{}") for name in names], compress=None)
        assert sorted(storage.list("b/")) == names  # the index made
        storage.put_json("b/reports/w.json", {})
        # (cloud-files deletes on GCS through the batch API, which fake-gcs-server lacks)
        gone = quote(f"f/{names[7]}", safe="")
        httpx.delete(f"{proxy.endpoint}/storage/v1/b/{bucket}/o/{gone}").raise_for_status()
        listed = sorted(storage.list("b/"))
        ranged = sorted(storage.list("b/outputs/", expected=names * 8))
        indexed = proxy.counts()["forwarded"][f"GET /storage/v1/b/{bucket}/o"]
    served, token = [], ""
    while True:  # fake-gcs-server's own listing
        page = httpx.get(f"{bucket_url}/{bucket}/o", params={"prefix": "f/b/", "pageToken": token})
        served += [item["name"].removeprefix("f/") for item in page.json().get("items", [])]
        token = page.json().get("nextPageToken")
        if not token:
            break
    assert listed == sorted(served) == sorted([*names[:7], *names[8:], "b/reports/w.json"])
    assert ranged == listed[:-1]
    assert indexed >= 4  # the pages came through the proxy


def test_a_corrupt_file_costs_only_itself_on_every_protocol(any_storage):
    any_storage.put_json("b/outputs/1.json", {"i": 1})
    any_storage.put("b/outputs/2.json", b"{truncated")
    found = any_storage.get_json_many(["b/outputs/1.json", "b/outputs/2.json"])
    assert found == {"b/outputs/1.json": {"i": 1}} and list(found.corrupt) == ["b/outputs/2.json"]


def test_exists_on_s3(s3_storage):
    # (gcp-storage-emulator has no batch API, through which cloud-files checks existence.)
    s3_storage.put_json("b/outputs/1.json", {})
    assert s3_storage.exists_many(["b/outputs/1.json", "b/outputs/2.json"]) == {
        "b/outputs/1.json": True,
        "b/outputs/2.json": False,
    }


@pytest.mark.parametrize("protocol", ["gs", "s3"])
def test_worker_and_analysis_run_over_cloud_storage(protocol, request, tmp_path, prefect_api):
    storage = request.getfixturevalue({"gs": "gcs_storage", "s3": "s3_storage"}[protocol])
    from blocks import LocalTaskQueue

    queue = LocalTaskQueue(
        path=str(tmp_path / "q.sqlite"),
        queue_name="cloud",
        wait_seconds=0,
        allowed_modules=["tests"],
    )
    queue.ensure()
    enqueue(queue, "tests.tasks:square", range(20), batch="cloud")

    stats = run_worker(queue, storage)  # a separate process: the blocks travel on its stdin

    assert stats["succeeded"] == 20
    summary = analysis(storage=storage, batch="cloud")
    assert summary["items"] == 20
    table = pd.read_parquet(io.BytesIO(storage.get("cloud/analysis/results.parquet")))
    assert sorted(table["result"]) == sorted(x * x for x in range(20))
    assert summary["results"].startswith(f"{protocol}://")


def test_check_names_a_missing_s3_bucket_and_the_fix(moto_endpoint):
    storage = CloudFilesStorage(
        cloudpath="s3://no-such-bucket-here/outputs", aws_credentials=sqs_credentials(moto_endpoint)
    )
    with pytest.raises(
        StorageError, match=r"NoSuchBucket for bucket 'no-such-bucket-here'.*create it"
    ):
        storage.check()


def test_check_names_a_missing_gcs_bucket_and_the_fix(gcs_emulator):
    from prefect_gcp import GcpCredentials

    storage = CloudFilesStorage(
        cloudpath="gs://no-such-bucket-here/outputs",
        gcp_credentials=GcpCredentials(service_account_info=service_account_info()),
    )
    with pytest.raises(StorageError, match=r"NotFound for bucket 'no-such-bucket-here'.*create it"):
        storage.check()


def test_check_passes_for_existing_buckets(any_storage):
    any_storage.check()


def test_gcp_service_account_becomes_cloud_files_credentials_in_memory(monkeypatch):
    from google.oauth2 import service_account
    from prefect_gcp import GcpCredentials

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    info = service_account_info()
    storage = CloudFilesStorage(
        cloudpath=f"gs://{GCS_BUCKET}/x",
        gcp_credentials=GcpCredentials(service_account_info=info),
    )
    credentials = storage._secrets()
    assert isinstance(credentials, service_account.Credentials)
    assert credentials.service_account_email == info["client_email"]


def test_s3_endpoint_goes_inside_the_cloud_files_path_and_keys_into_secrets():
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    storage = CloudFilesStorage(
        cloudpath="s3://bucket/folder",
        aws_credentials=AwsCredentials(
            aws_access_key_id="id",
            aws_secret_access_key="secret",
            aws_session_token="session",
            region_name="us-west-1",
            aws_client_parameters=AwsClientParameters(endpoint_url="http://127.0.0.1:9000/"),
        ),
    )
    assert storage._client_path() == "s3://http://127.0.0.1:9000/bucket/folder"
    assert storage._secrets() == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "session",
        "AWS_DEFAULT_REGION": "us-west-1",
    }
    assert storage.url("b/x.json") == "s3://bucket/folder/b/x.json"


def test_blocks_with_different_secrets_on_one_folder_never_share_a_client():
    from prefect_gcp import GcpCredentials

    account = service_account_info()

    def gcs(**changes) -> CloudFilesStorage:
        info = {**account, **changes}
        return CloudFilesStorage(
            cloudpath=f"gs://{GCS_BUCKET}/x",
            gcp_credentials=GcpCredentials(service_account_info=info),
        )

    first = gcs()._client()
    assert gcs()._client() is first  # equal blocks: one client per process
    assert gcs(private_key_id="another-key")._client() is not first  # a secret inside a secret


def test_credentials_for_another_protocol_are_refused():
    from prefect_aws import AwsCredentials

    with pytest.raises(ValueError, match="aws_credentials are for s3:// folders"):
        CloudFilesStorage(cloudpath="gs://bucket/x", aws_credentials=AwsCredentials())


@pytest.mark.parametrize("protocol", ["file", "gs"])
def test_the_storage_serves_as_prefect_result_storage(protocol, request, prefect_api):
    from prefect import flow, task
    from prefect.results import ResultStore

    storage = request.getfixturevalue({"file": "storage", "gs": "gcs_storage"}[protocol])
    storage.save(f"results-{protocol}", overwrite=True)  # Prefect takes saved blocks only

    @task(
        persist_result=True,
        result_storage=f"cloud-files-storage/results-{protocol}",
        result_storage_key="results/square-{parameters[x]}",
    )
    def square(x: int) -> int:
        return x * x

    @flow
    def squares() -> int:
        return square(7)

    assert squares() == 49
    assert "results/square-7" in set(storage.list("results/"))
    assert ResultStore(result_storage=storage).read("results/square-7").result == 49
    with pytest.raises(FileNotFoundError, match="results/missing does not exist"):
        storage.read_path("results/missing")
