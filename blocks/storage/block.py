"""`CloudFilesStorage`: the block naming a folder where a batch's files live.

One block names a folder (``gs://bucket/path``, ``s3://bucket/path`` or ``file:///path``) and
offers what workers and the analysis need: JSON in and out, existence checks, listing, and
parallel reads. Paths given to its methods are relative to that folder. Behind it, one of two
backends chosen by the protocol: `LocalFolder` (the disk, directly) or `CloudFolder`
(cloud-files, whose retries are the only ones).

Credentials come from prefect-gcp's `GcpCredentials` (gs://) and prefect-aws's `AwsCredentials`
(s3://) and are handed to cloud-files in memory (``secrets=``), never written to disk. Without
them cloud-files looks for its own (``~/.cloudvolume/secrets``, application default credentials).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import WritableFileSystem
from prefect.utilities.asyncutils import run_sync_in_worker_thread
from prefect_aws import AwsCredentials
from prefect_gcp import GcpCredentials
from pydantic import Field, field_validator, model_validator

from blocks.clients import PerProcessClients, block_fingerprint
from blocks.slugs import referable_by
from blocks.storage.cloud import PAGE_SIZE, AwsSession, CloudClient, CloudFolder, split_points
from blocks.storage.failures import permanent_failure
from blocks.storage.local import LocalFolder
from tqflow.engine.contracts import JSONFiles
from tqflow.engine.outputs import json_default
from tqflow.errors import CorruptFileError, CredentialsError, StorageError, TqflowError

_clients: PerProcessClients[CloudClient] = PerProcessClients()

#: A listing is cut into ranges listed in parallel from this many expected names a range on.
NAMES_PER_RANGE = 10 * PAGE_SIZE


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
        default=20,
        ge=1,
        description="Threads for parallel reads, and ranges a large listing is cut into.",
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

    def _folder(self) -> LocalFolder | CloudFolder:
        """The backend: the disk for ``file://``, cloud-files for the rest."""
        if self.is_local:
            return LocalFolder(self.cloudpath[len("file://") :])
        return CloudFolder(self.cloudpath, self._client, self.num_threads)

    def _client(self) -> CloudClient:
        """This process's clients for the folder: one per block (credentials included)."""
        return _clients.get(block_fingerprint(self), self._new_client)

    def _new_client(self) -> CloudClient:
        if self.gcp_credentials is not None and self.cloudpath.startswith("gs://"):
            _no_default_credentials_banner(self.cloudpath[len("gs://") :].partition("/")[0])
        aws = AwsSession(self.aws_credentials, self.cloudpath) if self.aws_credentials else None
        return CloudClient(self._client_path(), self._secrets, aws, self.num_threads)

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
            session = AwsSession(self.aws_credentials, self.cloudpath)
            return session.secrets(session.keys())
        if self.cloudpath.startswith("s3://"):
            _check_aws_environment(self.cloudpath)
        return None

    def _credentials_source(self) -> str:
        """Where the credentials this block reaches its cloud with come from, for errors."""
        if self.gcp_credentials is not None or self.aws_credentials is not None:
            return "this storage block's credentials"
        secrets_file = _SECRETS_FILE.get(self.cloudpath.partition("://")[0], "its secrets file")
        return (
            f"cloud-files' own ({secrets_file}, else the environment), or a storage block "
            "with credentials of its own (--storage-block)"
        )

    @contextlib.contextmanager
    def _failing(self, what: str) -> Iterator[None]:
        """Any failure but tqflow's own as a `StorageError` that starts with ``what``; one that
        refused this block's credentials (not the object) says so, and where they came from."""
        try:
            yield
        except TqflowError:
            raise
        except Exception as exc:
            refused = _refusal(exc)
            if refused is not None:
                raise StorageError(
                    f"{what}: its credentials were refused ({refused}); they are "
                    f"{self._credentials_source()}: give credentials that may use it"
                ) from exc
            raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def _client_path(self) -> str:
        """The path cloud-files is given: an S3-compatible endpoint goes inside it
        (``s3://http://host:port/bucket/...``), the one form cloud-files accepts."""
        if self.aws_credentials is not None:
            endpoint = self.aws_credentials.aws_client_parameters.endpoint_url
            if endpoint:
                return f"s3://{endpoint.rstrip('/')}/{self.cloudpath[len('s3://') :]}"
        return self.cloudpath

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
            hint = permanent_failure(exc, self.cloudpath)
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
        content, never a part. cloud-files retries a failing write (7 attempts, ~30 s of
        backoff); an error no retry fixes (no bucket, access denied, a full disk) says so."""
        try:
            self._folder().put(path, content, content_type)
        except CredentialsError:
            raise
        except Exception as exc:
            why = permanent_failure(exc, self.cloudpath) or f"{type(exc).__name__}: {exc}"
            raise StorageError(f"cannot write {self.url(path)}: {why}") from exc

    def put_json(self, path: str, obj: Any) -> None:
        """Write ``obj`` as JSON to ``path``. NumPy numbers and arrays are written as plain
        numbers and lists; anything else that is not JSON raises `TypeError`."""
        content = json.dumps(obj, default=json_default, allow_nan=True).encode("utf-8")
        self.put(path, content, content_type="application/json")

    # -- reading ----------------------------------------------------------------------------

    def get(self, path: str) -> bytes | None:
        """The content of ``path``, or ``None`` if it does not exist."""
        with self._failing(f"cannot read {self.url(path)}"):
            return self._folder().get(path)

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
        if content is None:
            return None
        try:
            return json.loads(content)
        except ValueError as exc:
            raise CorruptFileError(self.url(path), str(exc)) from None

    def get_json_many(self, paths: Iterable[str]) -> JSONFiles:
        """Read many JSON files in parallel: ``{path: value}``, missing ones left out, and
        those that are not JSON in its ``corrupt``."""
        files = JSONFiles()
        with self._failing(f"cannot read from {self.cloudpath}"):
            for path, content in self._folder().get_many(paths):
                try:
                    files[path] = json.loads(content)
                except ValueError as exc:
                    files.corrupt[path] = str(exc)
        return files

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        with self._failing(f"cannot check {self.url(path)}"):
            return self._folder().exists(path)

    def exists_many(self, paths: Iterable[str]) -> dict[str, bool]:
        """Check many paths in parallel: ``{path: exists}``."""
        with self._failing(f"cannot check files in {self.cloudpath}"):
            return self._folder().exists_many(paths)

    def delete(self, path: str) -> None:
        """Remove ``path``; one that does not exist is no error."""
        with self._failing(f"cannot delete {self.url(path)}"):
            self._folder().delete(path)

    def list(self, prefix: str = "", *, expected: Sequence[str] = ()) -> Iterator[str]:
        """Paths under ``prefix``, relative to the folder.

        ``expected``: paths the caller expects there (any of them, in any order, present or
        not). From `NAMES_PER_RANGE` of them on, a bucket's listing is cut at their quantiles
        into ranges listed in parallel (up to ``num_threads``); every path is listed whatever
        they are."""
        parts = min(self.num_threads, len(expected) // NAMES_PER_RANGE)
        with self._failing(f"cannot list {self.url(prefix)}"):
            yield from self._folder().list(prefix, split_points(expected, parts))

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


#: Where cloud-files looks for the keys of a URL tqflow reads with cloud-files' own credentials.
_SECRETS_FILE = {
    "s3": "~/.cloudvolume/secrets/aws-secret.json",
    "gs": "~/.cloudvolume/secrets/google-secret.json",
}
#: S3 error codes that mean the key, not the object.
_REFUSED_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}


def _no_default_credentials_banner(bucket: str) -> None:
    """cloud-files looks up default Google credentials for every bucket it opens, even one read
    with credentials of its own (a block's), and prints "Using default Google credentials" when
    there is no secrets file. Where there is none, tell its cache what the lookup would find
    (no credentials, the default project): the same answer, without the untrue banner."""
    from cloudfiles import secrets

    if not os.path.exists(secrets.secretpath("google-secret.json")):
        secrets.GOOGLE_CREDENTIALS_CACHE.setdefault(bucket, (secrets.PROJECT_NAME, None))


def _check_aws_environment(cloudpath: str) -> None:
    """cloud-files reads AWS keys from the environment only with ``AWS_SESSION_TOKEN`` too
    (a ``KeyError`` otherwise, and a half-made connection pool that prints a traceback at
    exit): say so before it tries."""
    from cloudfiles.secrets import aws_credentials

    try:
        aws_credentials(cloudpath.partition("://")[2].partition("/")[0])
    except KeyError as exc:
        raise StorageError(
            f"cannot reach {cloudpath}: the AWS keys in this environment come without "
            f"{exc.args[0]}, which cloud-files then requires: put the key in "
            f"{_SECRETS_FILE['s3']}, export {exc.args[0]} too, or use a storage block with "
            "credentials of its own (--storage-block)"
        ) from None


def _refusal(exc: Optional[BaseException]) -> Optional[str]:
    """Why a cloud refused a request for its credentials (not for the object), or None."""
    code = getattr(exc, "response", None)
    if isinstance(code, dict):  # botocore's ClientError
        error, meta = code.get("Error", {}), code.get("ResponseMetadata", {})
        if error.get("Code") in _REFUSED_CODES or meta.get("HTTPStatusCode") in (401, 403):
            return str(error.get("Code") or meta.get("HTTPStatusCode"))
        return None
    if type(exc).__name__ in (
        "Unauthorized",
        "Forbidden",
        "DefaultCredentialsError",
        "RefreshError",
    ):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None
