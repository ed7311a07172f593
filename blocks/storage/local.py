"""`LocalFolder`: a ``file://`` folder on this machine's disk, read and written directly.

Not through cloud-files: its local path writes in place (a worker killed mid-write would leave
a truncated output that later runs take as done), and costs ~7x as much per small file read and
5x per file listed, most of an analysis of 10^6 outputs. No retries: a local disk's errors do
not pass (the block names the permanent ones and their fix).
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterable, Iterator, Sequence

#: Folders known to exist, so a write does not try to make its folder every time.
_made_folders: set[str] = set()


class LocalFolder:
    """Files under ``root``, by paths relative to it."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, path: str) -> str:
        return os.path.join(self.root, path)

    def put(self, path: str, content: bytes, content_type: str) -> None:
        # A temporary file beside the target, renamed into place: a reader sees the old or the
        # new content, never a part. Its name is unique per process and thread.
        target = self._path(path)
        folder, name = os.path.split(target)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        if folder not in _made_folders:
            os.makedirs(folder, exist_ok=True)
            _made_folders.add(folder)
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except FileNotFoundError:  # the folder was removed since it was made: make it again
                _made_folders.discard(folder)
                os.makedirs(folder, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def get(self, path: str) -> bytes | None:
        try:
            with open(self._path(path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def get_many(self, paths: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        # One after another: reading in threads was 2-4x slower on the 2-core machine of
        # bench/scale.py (the threads contend for the GIL and the folder's lookups more than
        # they overlap reads from the page cache).
        for path in paths:
            content = self.get(path)
            if content is not None:
                yield path, content

    def exists(self, path: str) -> bool:
        return os.path.isfile(self._path(path))

    def exists_many(self, paths: Iterable[str]) -> dict[str, bool]:
        return {path: self.exists(path) for path in paths}

    def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(path))

    def list(self, prefix: str, split_at: Sequence[str] = ()) -> Iterator[str]:
        # os.walk: 1.1 µs a file against cloud-files' 5.6 (10^6 outputs); a disk needs no
        # ranges listed in parallel. Files being written (".<name>.<pid>.<thread>.tmp") are
        # not listed.
        for here, _, names in os.walk(os.path.join(self.root, os.path.dirname(prefix))):
            relative = os.path.relpath(here, self.root)
            relative = "" if relative == "." else relative + "/"
            for name in names:
                path = relative + name
                if path.startswith(prefix) and not (name.startswith(".") and name.endswith(".tmp")):
                    yield path
