"""`CloudFolder`: a ``gs://`` or ``s3://`` folder, read and written with cloud-files.

cloud-files retries each request itself (up to 7 attempts, random exponential waits of 0.5 to
60 s): the one retry layer. Nothing here retries on top of it.

A listing is one request per 1,000 names, one page after another: Google gives 300 s for 10^6
objects (gcsfs#567). Given names it expects, `list` cuts the folder's names into ranges at
their quantiles and lists the ranges in parallel (GCS ``startOffset`` / ``endOffset``, S3
``StartAfter``): the ranges cover every name whatever the cuts, which only decide how evenly
the work is shared.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from prefect_aws import AwsCredentials

from tqflow.errors import CredentialsError

#: Names a listing returns a page (GCS and S3 return at most 1,000).
PAGE_SIZE = 1000
#: Requests in one GCS batch request (cloud-files' existence checks).
GCS_BATCH = 100


class CloudFolder:
    """The folder ``cloudpath`` through ``client``, the block's cached `CloudClient`."""

    def __init__(self, cloudpath: str, client: Callable[[], "CloudClient"], threads: int):
        self.cloudpath = cloudpath
        self._client = client
        self.threads = threads
        scheme, _, rest = cloudpath.partition("://")
        self.scheme = scheme
        self.bucket, _, folder = rest.partition("/")
        #: The folder's key prefix in its bucket: what a listing strips from each name.
        self.key_prefix = f"{folder}/" if folder else ""

    def cloudfiles(self) -> Any:
        return self._client().cloudfiles()

    def put(self, path: str, content: bytes, content_type: str) -> None:
        self.cloudfiles().put(path, content, content_type=content_type, compress=None)

    def get(self, path: str) -> bytes | None:
        return self.cloudfiles().get(path)

    def get_many(self, paths: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        found = self.cloudfiles().get(list(paths), return_dict=True)
        return ((path, content) for path, content in found.items() if content is not None)

    def exists(self, path: str) -> bool:
        return bool(self.cloudfiles().exists(path))

    def exists_many(self, paths: Iterable[str]) -> dict[str, bool]:
        paths = list(paths)
        if self.scheme == "gs" and len(paths) <= GCS_BATCH:
            # One batch request: cloud-files' thread pool would only add its polling (~100 ms
            # a call, against 14 ms for the request itself on a stand-in at 0 ms).
            return dict(self._client().cloudfiles(serial=True).exists(paths))
        return dict(self.cloudfiles().exists(paths))

    def delete(self, path: str) -> None:
        self.cloudfiles().delete(path)

    def list(self, prefix: str, split_at: Sequence[str] = ()) -> Iterator[str]:
        """Paths under ``prefix``; with ``split_at`` (sorted paths), the ranges between them
        listed at once, in order."""
        lister = self._client().range_lister(self) if split_at else None
        if lister is None:
            yield from self.cloudfiles().list(prefix)
            return
        bounds: list[Optional[str]] = [None, *split_at, None]
        ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
        with ThreadPoolExecutor(min(len(ranges), self.threads)) as pool:
            for names in pool.map(lambda r: list(lister(prefix, *r)), ranges):
                yield from names


class CloudClient:
    """A folder's clients in one process: cloud-files' (remade when refreshed AWS keys
    change) and the native one its listing of ranges uses."""

    def __init__(
        self,
        client_path: str,
        secrets: Callable[[], Any],
        aws: Optional["AwsSession"],
        threads: int,
    ) -> None:
        self.client_path, self.secrets, self.aws, self.threads = client_path, secrets, aws, threads
        self._cloudfiles: dict[bool, Any] = {}
        self._aws_keys: Any = None
        self._lister: Any = None

    def cloudfiles(self, serial: bool = False) -> Any:
        """cloud-files' client; ``serial``, one that runs a call's requests in this thread (for
        calls that are one request)."""
        from cloudfiles import CloudFiles

        if self.aws is not None:
            # Role, SSO and credential-process keys expire (~1 h); boto3 refreshes them as they
            # near it, and cloud-files, which holds a copy, gets a client with the new ones.
            keys = self.aws.keys()
            if keys != self._aws_keys:
                self._cloudfiles, self._aws_keys = {}, keys
        if serial not in self._cloudfiles:
            secrets = self.aws.secrets(self._aws_keys) if self.aws else self.secrets()
            self._cloudfiles[serial] = CloudFiles(
                self.client_path, secrets=secrets, num_threads=0 if serial else self.threads
            )
        return self._cloudfiles[serial]

    def range_lister(self, folder: CloudFolder) -> Optional[Callable[..., Iterator[str]]]:
        """``list(prefix, start, end)`` over the folder's native client; ``None`` where there
        is none (s3:// without an `AwsCredentials` block lists through cloud-files alone)."""
        if self._lister is None:
            if folder.scheme == "gs":
                self._lister = _gcs_lister(folder, self.secrets())
            elif folder.scheme == "s3" and self.aws is not None:
                self._lister = _s3_lister(folder, self.aws.credentials_block)
            else:
                self._lister = False
        return self._lister or None


def _gcs_lister(folder: CloudFolder, credentials: Any) -> Callable[..., Iterator[str]]:
    """Names in ``[start, end)`` under ``prefix``: GCS's start offset is inclusive, its end
    offset exclusive. Names outside are dropped here too, for a server that ignores the
    offsets (gcp-storage-emulator does)."""
    from cloudfiles.secrets import google_credentials
    from google.cloud import storage

    project, found = google_credentials(folder.bucket)
    key = folder.key_prefix
    buckets = threading.local()  # a client per thread: google-cloud-storage's are not shared

    def names(prefix: str, start: Optional[str], end: Optional[str]) -> Iterator[str]:
        if not hasattr(buckets, "bucket"):
            client = storage.Client(credentials=credentials or found, project=project)
            buckets.bucket = client.bucket(folder.bucket)
        blobs = buckets.bucket.list_blobs(
            prefix=key + prefix,
            start_offset=key + start if start else None,
            end_offset=key + end if end else None,
            page_size=PAGE_SIZE,
            fields="items(name),nextPageToken",
        )
        for blob in blobs:
            name = blob.name[len(key) :]
            if (start is None or name >= start) and (end is None or name < end):
                yield name

    return names


def _s3_lister(folder: CloudFolder, credentials: AwsCredentials) -> Callable[..., Iterator[str]]:
    """Names in ``(start, end]`` under ``prefix``: S3's ``StartAfter`` is exclusive, so its
    ranges close at the top (still a partition of every name)."""
    client = credentials.get_s3_client()
    key = folder.key_prefix

    def names(prefix: str, start: Optional[str], end: Optional[str]) -> Iterator[str]:
        request = {"Bucket": folder.bucket, "Prefix": key + prefix, "MaxKeys": PAGE_SIZE}
        if start:
            request["StartAfter"] = key + start
        for page in client.get_paginator("list_objects_v2").paginate(**request):
            for item in page.get("Contents", ()):
                name = item["Key"][len(key) :]
                if end is not None and name > end:
                    return
                yield name

    return names


def split_points(expected: Sequence[str], parts: int) -> list[str]:
    """``parts - 1`` names that cut ``expected`` (in any order) into parts of about equal
    size, sorted; estimated from an evenly strided sample of at most 10,000."""
    if parts < 2 or not expected:
        return []
    sample = sorted(expected[:: max(1, len(expected) // 10_000)])
    cuts = {sample[len(sample) * i // parts] for i in range(1, parts)}
    return sorted(cuts)


class AwsSession:
    """The block's AWS credentials as boto3 resolves them (keys, a profile, the environment),
    kept: refreshable ones (role, SSO, credential process) refresh themselves."""

    def __init__(self, credentials: AwsCredentials, cloudpath: str) -> None:
        session = credentials.get_boto3_session()
        self.credentials_block = credentials
        self.credentials = session.get_credentials()
        if self.credentials is None:
            raise CredentialsError(
                f"the AWS credentials for {cloudpath} hold no keys and boto3 finds none "
                "(profile, environment): fill in the AwsCredentials block's access key or profile"
            )
        self.region = session.region_name

    def keys(self) -> Any:
        """The current keys (refreshed first when they near their expiry)."""
        return self.credentials.get_frozen_credentials()

    def secrets(self, keys: Any) -> dict[str, str]:
        """cloud-files' form of ``keys``."""
        secrets = {"AWS_ACCESS_KEY_ID": keys.access_key, "AWS_SECRET_ACCESS_KEY": keys.secret_key}
        if keys.token:
            secrets["AWS_SESSION_TOKEN"] = keys.token
        if self.region:
            secrets["AWS_DEFAULT_REGION"] = self.region
        return secrets
