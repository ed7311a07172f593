"""`CloudFilesStorage`: where task outputs live, through cloud-files.

One block names a folder (``gs://bucket/path``, ``s3://bucket/path`` or ``file:///path``) and
offers what workers and the analysis need: JSON in and out, existence checks, listing, and
parallel reads. Paths given to its methods are relative to that folder.

Credentials come from prefect-gcp's `GcpCredentials` (gs://) and prefect-aws's `AwsCredentials`
(s3://) and are handed to cloud-files in memory (``secrets=``), never written to disk. Without
them cloud-files looks for its own (``~/.cloudvolume/secrets``, application default credentials).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem
from prefect.utilities.asyncutils import run_sync_in_worker_thread
from prefect_aws import AwsCredentials
from prefect_gcp import GcpCredentials
from pydantic import BaseModel, Field, field_validator, model_validator

from blocks.slugs import referable_by
from tqflow.engine.contracts import JSONFiles
from tqflow.engine.retries import retry_delay
from tqflow.errors import CorruptFileError, CredentialsError, StorageError

_clients = threading.local()
#: Local folders known to exist, so a write does not try to make its folder every time.
_made_folders: set[str] = set()


def _fingerprint(value: Any) -> Any:
    """Everything a model holds, nested models and secret values included, as plain data."""
    if isinstance(value, BaseModel):
        return (
            type(value).__qualname__,
            tuple((name, _fingerprint(getattr(value, name))) for name in type(value).model_fields),
        )
    if hasattr(value, "get_secret_value"):
        return _fingerprint(value.get_secret_value())
    if isinstance(value, dict):
        return tuple(sorted((str(k), _fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(v) for v in value)
    return value


class CloudFilesStorage(WritableFileSystem):
    """A folder in cloud storage (or on disk) that holds a batch's task outputs.

    Example:
        ```python
        from blocks import CloudFilesStorage

        storage = CloudFilesStorage(cloudpath="file://tqflow-data")
        storage.put_json("demo/outputs/42.json", {"cable_length": 1234.5})
        storage.get_json("demo/outputs/42.json")
        ```

        A bucket with the credentials of saved blocks:
        ```python
        from prefect_gcp import GcpCredentials
        from blocks import CloudFilesStorage

        storage = CloudFilesStorage(
            cloudpath="gs://my-lab-bucket/tqflow",
            gcp_credentials=GcpCredentials.load("my-lab"),
        )
        storage.save("my-lab-outputs")
        ```

        Load a saved block:
        ```python
        from blocks import CloudFilesStorage

        storage = CloudFilesStorage.load("BLOCK_NAME")
        ```
    """

    model_config = referable_by("cloudpath")

    _block_type_name = "Cloud Files Storage"
    _description = (
        "A folder on GCS, S3 or disk, read and written with cloud-files: a batch's outputs."
    )
    _logo_url = GcpCredentials._logo_url  # prefect-gcp's: gs:// is the usual home
    _documentation_url = "https://github.com/seung-lab/cloud-files#readme"

    cloudpath: str = Field(
        default="file://tqflow-data",
        description=(
            "Folder that holds the outputs: gs://bucket/path, s3://bucket/path or "
            "file://path (a relative file:// path is made absolute when the block is created)."
        ),
    )
    num_threads: int = Field(
        default=20, ge=1, description="Threads cloud-files uses for parallel reads."
    )
    write_retries: int = Field(
        default=6,
        ge=0,
        description=(
            "Retries of a failing write, with backoff 0.5, 1, 2, 4, ... s: the default rides out "
            "about half a minute of storage outage instead of failing the task."
        ),
    )

    gcp_credentials: Optional[GcpCredentials] = Field(
        default=None,
        description=(
            "Credentials for a gs:// folder. Empty: cloud-files' own lookup "
            "(google-secret.json, application default credentials, workload identity)."
        ),
    )
    aws_credentials: Optional[AwsCredentials] = Field(
        default=None,
        description=(
            "Credentials for an s3:// folder; their endpoint URL (client parameters) points "
            "cloud-files at an S3-compatible server. Empty: cloud-files' own lookup."
        ),
    )

    @field_validator("cloudpath")
    @classmethod
    def _normalise(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                f"cloudpath {value!r} has no protocol: write gs://bucket/path, "
                "s3://bucket/path or file://path"
            )
        if value.startswith("file://"):
            return "file://" + str(Path(value[len("file://") :]).expanduser().resolve())
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials_match_protocol(self) -> "CloudFilesStorage":
        if self.gcp_credentials is not None and not self.cloudpath.startswith("gs://"):
            raise ValueError(
                f"gcp_credentials are for gs:// folders but cloudpath is {self.cloudpath!r}"
            )
        if self.aws_credentials is not None and not self.cloudpath.startswith("s3://"):
            raise ValueError(
                f"aws_credentials are for s3:// folders but cloudpath is {self.cloudpath!r}"
            )
        return self

    @property
    def is_local(self) -> bool:
        """Whether the folder is on this machine's disk (``file://``)."""
        return self.cloudpath.startswith("file://")

    def _local_path(self, path: str) -> str:
        return os.path.join(self.cloudpath[len("file://") :], path)

    def _secrets(self) -> Any:
        """Credentials handed to cloud-files; ``None`` lets cloud-files find its own."""
        if self.gcp_credentials is not None:
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                # google-cloud-storage itself goes anonymous for the emulator; real credentials
                # would try to fetch a token from Google first.
                from google.auth.credentials import AnonymousCredentials

                return AnonymousCredentials()
            try:
                return self.gcp_credentials.get_credentials_from_service_account()
            except Exception as exc:
                raise CredentialsError(
                    f"the GCP credentials for {self.cloudpath} cannot be used "
                    f"({type(exc).__name__}): check the GcpCredentials block's service account"
                ) from None
        if self.aws_credentials is not None:
            session = _AwsSession(self.aws_credentials, self.cloudpath)
            return session.secrets(session.keys())
        return None

    def _client_path(self) -> str:
        """The path cloud-files is given: an S3-compatible endpoint goes inside it
        (``s3://http://host:port/bucket/...``), the one form cloud-files accepts."""
        if self.aws_credentials is not None:
            endpoint = self.aws_credentials.aws_client_parameters.endpoint_url
            if endpoint:
                return f"s3://{endpoint.rstrip('/')}/{self.cloudpath[len('s3://') :]}"
        return self.cloudpath

    def _cloudfiles(self) -> Any:
        from cloudfiles import CloudFiles

        cache = getattr(_clients, "by_block", None)
        if cache is None or getattr(_clients, "pid", None) != os.getpid():
            cache = _clients.by_block = {}
            _clients.pid = os.getpid()
        key = self._cache_key()
        entry = cache.get(key)
        if entry is None:
            aws = (
                _AwsSession(self.aws_credentials, self.cloudpath) if self.aws_credentials else None
            )
            entry = cache[key] = _Client(aws=aws)
        if entry.aws is not None:
            # Role, SSO and credential-process keys expire (~1 h); boto3 refreshes them as they
            # near it, and cloud-files, which holds a copy, gets a client with the new ones.
            keys = entry.aws.keys()
            if keys != entry.aws_keys:
                entry.cloudfiles, entry.aws_keys = None, keys
        if entry.cloudfiles is None:
            secrets = entry.aws.secrets(entry.aws_keys) if entry.aws else self._secrets()
            entry.cloudfiles = CloudFiles(
                self._client_path(), secrets=secrets, num_threads=self.num_threads
            )
        return entry.cloudfiles

    def _cache_key(self) -> str:
        # Two blocks on one folder with different credentials must not share a client; the
        # digest keeps the secrets themselves out of the key. Not `model_dump`: a Prefect
        # block's dump builds its JSON schema to find secret fields, ~130 ms of CPU on every
        # storage call.
        return hashlib.sha256(repr(_fingerprint(self)).encode()).hexdigest()

    def check(self) -> None:
        """Raise `StorageError` now, naming the bucket and the fix, if the folder's bucket does
        not exist or the credentials are refused: a batch should fail before it queues
        100,000 tasks, not in every worker (cloud-files would retry each write for ~15 s)."""
        bucket = self.cloudpath.split("://", 1)[1].split("/", 1)[0]
        try:
            if self.is_local:
                Path(self.cloudpath[len("file://") :]).mkdir(parents=True, exist_ok=True)
                return
            if self.cloudpath.startswith("s3://"):
                from botocore.exceptions import ClientError

                client = (self.aws_credentials or AwsCredentials()).get_s3_client()
                try:
                    client.head_bucket(Bucket=bucket)
                except ClientError as exc:
                    status = exc.response.get("Error", {}).get("Code")
                    code = {"404": "NoSuchBucket", "403": "AccessDenied"}.get(status, status)
                    exc.response["Error"]["Code"] = code
                    raise
            elif self.cloudpath.startswith("gs://"):
                from google.api_core.exceptions import NotFound
                from google.cloud import storage

                client = storage.Client(credentials=self._secrets())
                if not client.bucket(bucket).exists():
                    raise NotFound(bucket)
        except CredentialsError:
            raise
        except Exception as exc:
            hint = _permanent_failure(exc, self.cloudpath)
            raise StorageError(
                f"cannot use {self.cloudpath}: " + (hint or f"{type(exc).__name__}: {exc}")
            ) from exc

    def url(self, path: str) -> str:
        """The full address of ``path``."""
        return f"{self.cloudpath}/{path}"

    # -- writing ----------------------------------------------------------------------------

    def put(
        self, path: str, content: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Write ``content`` to ``path``, replacing it. A reader sees the old or the new
        content, never a part; transient failures are retried for about half a minute."""
        pauses = [
            retry_delay(i + 1, base_seconds=0.5, max_seconds=60) for i in range(self.write_retries)
        ]
        for attempt, pause in enumerate((*pauses, None)):
            try:
                if self.is_local:
                    self._put_local(path, content)
                else:
                    self._cloudfiles().put(path, content, content_type=content_type, compress=None)
                return
            except CredentialsError:
                raise
            except Exception as exc:
                hint = _permanent_failure(exc, self.cloudpath)
                if hint is not None:
                    raise StorageError(f"cannot write {self.url(path)}: {hint}") from exc
                if pause is None:
                    raise StorageError(
                        f"cannot write {self.url(path)} after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                time.sleep(pause)

    def _put_local(self, path: str, content: bytes) -> None:
        # cloud-files opens local files with 'wb' and writes in place, so a worker killed
        # mid-write would leave an empty or truncated output that later runs take as done.
        # Write a temporary file beside it and rename it into place instead. The temporary
        # name is unique per process and thread, so no two writers share one.
        target = self._local_path(path)
        folder, name = os.path.split(target)
        if folder not in _made_folders:
            os.makedirs(folder, exist_ok=True)
            _made_folders.add(folder)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, target)
        except FileNotFoundError:
            _made_folders.discard(folder)  # removed since: make it again on the next try
            raise
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def put_json(self, path: str, obj: Any) -> None:
        """Write ``obj`` as JSON to ``path``. NumPy numbers and arrays are written as plain
        numbers and lists; anything else that is not JSON raises `TypeError`."""
        content = json.dumps(obj, default=_json_default, allow_nan=True).encode("utf-8")
        self.put(path, content, content_type="application/json")

    # -- reading ----------------------------------------------------------------------------

    def get(self, path: str) -> bytes | None:
        """The content of ``path``, or ``None`` if it does not exist."""
        if self.is_local:  # tqflow writes local files uncompressed: read them directly
            return _read_local(self.cloudpath, path)
        try:
            return self._cloudfiles().get(path)
        except Exception as exc:
            raise StorageError(
                f"cannot read {self.url(path)}: {type(exc).__name__}: {exc}"
            ) from exc

    def read_url(self, url: str) -> bytes | None:
        """The content of a file anywhere else (``gs://``, ``s3://`` or ``file://`` URL), e.g.
        a batch's items file; ``None`` if it does not exist. A URL of this block's protocol is
        read with its credentials (and S3 endpoint); another protocol with cloud-files' own."""
        scheme, sep, rest = url.partition("://")
        folder, slash, name = url.rpartition("/")
        if scheme not in ("gs", "s3", "file") or not sep or not slash or not rest or not name:
            raise StorageError(
                f"{url!r} is not a file URL tqflow reads: give gs://bucket/path/file, "
                "s3://bucket/path/file or file:///path/file"
            )
        if scheme == self.cloudpath.partition("://")[0]:
            there = self.model_copy(update={"cloudpath": folder})
        else:
            there = CloudFilesStorage(cloudpath=folder)
        return there.get(name)

    def get_json(self, path: str) -> Any:
        """The JSON at ``path``, or ``None`` if it does not exist. `CorruptFileError` if it
        is not JSON."""
        content = self.get(path)
        return None if content is None else _loads(self.url(path), content)

    def get_json_many(self, paths: Iterable[str]) -> JSONFiles:
        """Read many JSON files in parallel: ``{path: value}``, missing ones left out, and
        those that are not JSON in its ``corrupt``."""
        if self.is_local:
            return self._get_json_many_local(list(paths))
        try:
            found = self._cloudfiles().get(list(paths), return_dict=True)
        except Exception as exc:
            raise StorageError(
                f"cannot read from {self.cloudpath}: {type(exc).__name__}: {exc}"
            ) from exc
        return _parsed((path, content) for path, content in found.items() if content is not None)

    def _get_json_many_local(self, paths: list[str]) -> JSONFiles:
        # Plain reads, one after another: cloud-files' local path costs ~7x as much per small
        # file (most of an analysis of 10^6 outputs), and reading in threads was 2-4x slower
        # still on the 2-core machine of bench/scale.py (the threads contend for the GIL and
        # the folder's lookups more than they overlap reads from the page cache).
        contents = ((path, _read_local(self.cloudpath, path)) for path in paths)
        return _parsed((path, content) for path, content in contents if content is not None)

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        if self.is_local:
            return os.path.isfile(self._local_path(path))
        try:
            return bool(self._cloudfiles().exists(path))
        except Exception as exc:
            raise StorageError(
                f"cannot check {self.url(path)}: {type(exc).__name__}: {exc}"
            ) from exc

    def exists_many(self, paths: Iterable[str]) -> dict[str, bool]:
        """Check many paths in parallel: ``{path: exists}``."""
        paths = list(paths)
        if self.is_local:
            return {path: self.exists(path) for path in paths}
        try:
            return dict(self._cloudfiles().exists(paths))
        except Exception as exc:
            raise StorageError(
                f"cannot check files in {self.cloudpath}: {type(exc).__name__}: {exc}"
            ) from exc

    def delete(self, path: str) -> None:
        """Remove ``path``; one that does not exist is no error."""
        if self.is_local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._local_path(path))
            return
        try:
            self._cloudfiles().delete(path)
        except Exception as exc:
            raise StorageError(
                f"cannot delete {self.url(path)}: {type(exc).__name__}: {exc}"
            ) from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Paths under ``prefix``, relative to the folder."""
        if self.is_local:
            yield from self._list_local(prefix)
            return
        try:
            yield from self._cloudfiles().list(prefix)
        except Exception as exc:
            raise StorageError(
                f"cannot list {self.url(prefix)}: {type(exc).__name__}: {exc}"
            ) from exc

    def _list_local(self, prefix: str) -> Iterator[str]:
        # os.walk, not cloud-files' local listing: 1.1 µs a file against 5.6 (10^6 outputs).
        # Files being written (".<name>.<pid>.<thread>.tmp") are not listed.
        root = self.cloudpath[len("file://") :]
        folder = os.path.dirname(prefix)
        for here, _, names in os.walk(os.path.join(root, folder)):
            relative = os.path.relpath(here, root)
            relative = "" if relative == "." else relative + "/"
            for name in names:
                path = relative + name
                if path.startswith(prefix) and not (name.startswith(".") and name.endswith(".tmp")):
                    yield path

    # -- Prefect's file-system interface: result storage ------------------------------------

    async def aread_path(self, path: str) -> bytes:
        """The content of ``path``, for Prefect's result store; `FileNotFoundError` if it is
        missing."""
        return await run_sync_in_worker_thread(self._read_path, path)

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        """The content of ``path``, for Prefect's result store; `FileNotFoundError` if it is
        missing. Lets the block serve as ``result_storage`` of a flow or task."""
        return self._read_path(path)

    def _read_path(self, path: str) -> bytes:
        content = self.get(path)
        if content is None:
            raise FileNotFoundError(f"{self.url(path)} does not exist")
        return content

    async def awrite_path(self, path: str, content: bytes) -> str:
        """Write ``content`` to ``path`` for Prefect's result store; returns ``path``."""
        await run_sync_in_worker_thread(self.put, path, content)
        return path

    @async_dispatch(awrite_path)
    def write_path(self, path: str, content: bytes) -> str:
        """Write ``content`` to ``path`` for Prefect's result store; returns ``path``."""
        self.put(path, content)
        return path


#: Errors a retry cannot fix, by the code S3 or GCS gives them, with what to do instead.
_PERMANENT = {
    "NoSuchBucket": "the bucket does not exist: create it, or fix the block's cloudpath",
    "NotFound": "the bucket does not exist: create it, or fix the block's cloudpath",
    "AccessDenied": "access denied: give these credentials write access to the bucket",
    "Forbidden": "access denied: give these credentials write access to the bucket",
    "InvalidAccessKeyId": "the access key is not valid: check the AwsCredentials block",
    "SignatureDoesNotMatch": "the secret key is wrong: check the AwsCredentials block",
    "Unauthorized": "the credentials were refused: check the GcpCredentials block",
}


#: Local-disk errors a retry cannot fix, with what to do instead.
_PERMANENT_OS = {
    errno.EACCES: "permission denied: make the folder writable for this user, or use another",
    errno.EPERM: "operation not permitted: make the folder writable, or use another",
    errno.EROFS: "the file system is read-only: use a writable folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the cloudpath",
    errno.EISDIR: "the path is a folder, not a file: remove the folder or fix the cloudpath",
    errno.ENOSPC: "the disk is full: free space, or use another folder",
    errno.EDQUOT: "the disk quota is exceeded: free space, or use another folder",
}


def _permanent_failure(exc: Exception, cloudpath: str) -> Optional[str]:
    """What to do about ``exc`` if retrying cannot help, else ``None``."""
    if isinstance(exc, OSError) and exc.errno in _PERMANENT_OS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{os.strerror(exc.errno)}{where}: {_PERMANENT_OS[exc.errno]}"
    code = getattr(exc, "response", {}) or {}
    code = code.get("Error", {}).get("Code") if isinstance(code, dict) else None
    code = code or type(exc).__name__  # google.api_core names its exceptions by status
    hint = _PERMANENT.get(code)
    if hint is None:
        return None
    bucket = cloudpath.split("://", 1)[1].split("/", 1)[0]
    return f"{code} for bucket {bucket!r}: {hint}"


class _AwsSession:
    """The block's AWS credentials as boto3 resolves them (keys, a profile, the environment),
    kept: refreshable ones (role, SSO, credential process) refresh themselves."""

    def __init__(self, credentials: AwsCredentials, cloudpath: str) -> None:
        session = credentials.get_boto3_session()
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


@dataclass
class _Client:
    """A cached cloud-files client, and for s3:// the AWS keys it was built with."""

    aws: Optional[_AwsSession] = None
    aws_keys: Any = None
    cloudfiles: Any = None


def _read_local(cloudpath: str, path: str) -> bytes | None:
    """The content of ``path`` in the ``file://`` folder ``cloudpath``; ``None`` if missing.
    A plain function, no block attribute read: `get_json_many` calls it per file."""
    try:
        with open(os.path.join(cloudpath[len("file://") :], path), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {cloudpath}/{path}: {type(exc).__name__}: {exc}") from exc


def _loads(url: str, content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:
        raise CorruptFileError(url, str(exc)) from None


def _parsed(contents: Iterable[tuple[str, bytes]]) -> JSONFiles:
    files = JSONFiles()
    for path, content in contents:
        try:
            files[path] = json.loads(content)
        except ValueError as exc:
            files.corrupt[path] = str(exc)
    return files


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
