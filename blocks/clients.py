"""Clients kept per process and thread, by a hashable key: the one cache the blocks share.

A block is a description (a folder, a queue file, credentials); the client it talks through
(a cloud-files client, an SQLite connection) is made once and reused. Neither kind may cross a
fork (a worker process inherits its parent's memory) nor, for SQLite, a thread, so each process
and thread has its own. The key says which block a client serves: `block_fingerprint` for a
block with credentials, so two blocks on one folder with different keys never share one.
(prefect-aws caches its boto3 clients the same way, by its hashable credentials.)
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Callable, Generic, Hashable, TypeVar

from pydantic import BaseModel

Client = TypeVar("Client")


class PerProcessClients(Generic[Client]):
    """Clients by key, made by ``make`` on first use in each process and thread.

    Example:
        ```python
        connections: PerProcessClients[sqlite3.Connection] = PerProcessClients()
        conn = connections.get(path, lambda: sqlite3.connect(path))
        ```
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, key: Hashable, make: Callable[[], Client]) -> Client:
        """The client for ``key`` in this process and thread, made now if there is none."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # a forked child: its parent's are not its
            local.by_key, local.pid = {}, os.getpid()
        client = local.by_key.get(key)
        if client is None:
            client = local.by_key[key] = make()
        return client


def block_fingerprint(block: BaseModel) -> str:
    """A digest of everything ``block`` holds, nested blocks and secret values included: equal
    for equal blocks, different when any credential differs, and no secret in it.

    Not ``model_dump``: a Prefect block's dump builds its JSON schema to find its secret fields,
    ~130 ms of CPU, and this runs on every storage call."""
    return hashlib.sha256(repr(_plain(block)).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return (type(value).__qualname__, tuple((n, _plain(getattr(value, n))) for n in fields))
    if hasattr(value, "get_secret_value"):
        return _plain(value.get_secret_value())
    if isinstance(value, dict):
        return tuple(sorted((str(k), _plain(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    return value
