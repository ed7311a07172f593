"""`CloudFilesStorage`: where task outputs live, through cloud-files.

One block names a folder (``gs://bucket/path``, ``s3://bucket/path`` or ``file:///path``) and
offers what workers and the analysis need: JSON in and out, existence checks, listing, and
parallel reads. Paths given to its methods are relative to that folder.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from prefect.blocks.core import Block
from pydantic import Field, field_validator

from blocks.errors import StorageError


_clients = threading.local()


class CloudFilesStorage(Block):
    """A folder in cloud storage (or on disk) that holds a batch's task outputs.

    Example:
        ```python
        from blocks import CloudFilesStorage

        storage = CloudFilesStorage(cloudpath="file://tqflow-data")
        storage.put_json("demo/outputs/42.json", {"cable_length": 1234.5})
        storage.get_json("demo/outputs/42.json")
        ```
    """

    _block_type_name = "Cloud Files Storage"

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

    @property
    def is_local(self) -> bool:
        """Whether the folder is on this machine's disk (``file://``)."""
        return self.cloudpath.startswith("file://")

    def _secrets(self) -> Any:
        """Credentials handed to cloud-files; ``None`` lets cloud-files find its own."""
        return None

    def _cloudfiles(self) -> Any:
        from cloudfiles import CloudFiles

        cache = getattr(_clients, "by_path", None)
        if cache is None or getattr(_clients, "pid", None) != os.getpid():
            cache = _clients.by_path = {}
            _clients.pid = os.getpid()
        client = cache.get(self.cloudpath)
        if client is None:
            client = cache[self.cloudpath] = CloudFiles(
                self.cloudpath, secrets=self._secrets(), num_threads=self.num_threads
            )
        return client

    def url(self, path: str) -> str:
        """The full address of ``path``."""
        return f"{self.cloudpath}/{path}"

    # -- writing ----------------------------------------------------------------------------

    def put(self, path: str, content: bytes, content_type: str = "application/octet-stream") -> None:
        """Write ``content`` to ``path``, replacing it. A reader sees the old or the new
        content, never a part; transient failures are retried for about half a minute."""
        pauses = [0.5 * 2**i for i in range(self.write_retries)]
        for attempt, pause in enumerate((*pauses, None)):
            try:
                if self.is_local:
                    self._put_local(path, content)
                else:
                    self._cloudfiles().put(
                        path, content, content_type=content_type, compress=None
                    )
                return
            except Exception as exc:
                if pause is None:
                    raise StorageError(
                        f"cannot write {self.url(path)} after {attempt + 1} attempts: "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
                time.sleep(pause)

    def _put_local(self, path: str, content: bytes) -> None:
        # cloud-files opens local files with 'wb' and writes in place, so a worker killed
        # mid-write would leave an empty or truncated output that later runs take as done.
        # Write a temporary file beside it and rename it into place instead.
        target = Path(self.cloudpath[len("file://") :]) / path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_json(self, path: str, obj: Any) -> None:
        """Write ``obj`` as JSON to ``path``. NumPy numbers and arrays are written as plain
        numbers and lists; anything else that is not JSON raises `TypeError`."""
        content = json.dumps(obj, default=_json_default, allow_nan=True).encode("utf-8")
        self.put(path, content, content_type="application/json")

    # -- reading ----------------------------------------------------------------------------

    def get(self, path: str) -> bytes | None:
        """The content of ``path``, or ``None`` if it does not exist."""
        try:
            return self._cloudfiles().get(path)
        except Exception as exc:
            raise StorageError(f"cannot read {self.url(path)}: {type(exc).__name__}: {exc}") from exc

    def get_json(self, path: str) -> Any:
        """The JSON at ``path``, or ``None`` if it does not exist."""
        content = self.get(path)
        return None if content is None else _loads(self.url(path), content)

    def get_json_many(self, paths: Iterable[str]) -> dict[str, Any]:
        """Read many JSON files in parallel: ``{path: value}``, missing ones left out."""
        try:
            found = self._cloudfiles().get(list(paths), return_dict=True)
        except Exception as exc:
            raise StorageError(f"cannot read from {self.cloudpath}: {type(exc).__name__}: {exc}") from exc
        return {
            path: _loads(self.url(path), content)
            for path, content in found.items()
            if content is not None
        }

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        if self.is_local:
            return (Path(self.cloudpath[len("file://") :]) / path).is_file()
        try:
            return bool(self._cloudfiles().exists(path))
        except Exception as exc:
            raise StorageError(f"cannot check {self.url(path)}: {type(exc).__name__}: {exc}") from exc

    def exists_many(self, paths: Iterable[str]) -> dict[str, bool]:
        """Check many paths in parallel: ``{path: exists}``."""
        paths = list(paths)
        if self.is_local:
            return {path: self.exists(path) for path in paths}
        try:
            return dict(self._cloudfiles().exists(paths))
        except Exception as exc:
            raise StorageError(f"cannot check files in {self.cloudpath}: {type(exc).__name__}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        """Paths under ``prefix``, relative to the folder."""
        try:
            yield from self._cloudfiles().list(prefix)
        except Exception as exc:
            raise StorageError(f"cannot list {self.url(prefix)}: {type(exc).__name__}: {exc}") from exc


def _loads(url: str, content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError as exc:
        raise StorageError(f"{url} is not valid JSON ({exc}); delete it to re-run its task") from None


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # NumPy arrays and scalars
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")
