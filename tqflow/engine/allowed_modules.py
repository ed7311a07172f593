"""Which task functions a worker runs.

A worker pod holds the batch's AWS, GCS and CAVE credentials, and a task message names the
function to call: a worker that ran any named callable would run ``{"fn": "os:system", ...}``
for whoever can send to the queue. So a worker runs a function only when

- its module is under one of the allowed prefixes: the queue block's ``allowed_modules``, the
  worker's ``allow`` (CLI ``--allow``), python-task-queue's ``import_modules``, and tqflow's own
  examples; or
- it is the function of a batch enqueued through tqflow: enqueue writes the batch's functions
  to ``<batch>/batch.json`` in storage before it sends a message (`record_batch_function`).

Any other message is dead-lettered at once with the reason (`TaskNotAllowedError`).
"""

from __future__ import annotations

import threading
from typing import Iterable

from tqflow.engine.contracts import Storage
from tqflow.engine.messages import TaskMessage
from tqflow.errors import TaskNotAllowedError

#: Always allowed: tqflow's example tasks.
BUILT_IN = ("tqflow.examples",)


def batch_record_path(batch: str) -> str:
    return f"{batch}/batch.json"


def record_batch_function(storage: Storage, batch: str, fn: str) -> None:
    """Note in storage that ``batch`` runs ``fn``, so that workers run it."""
    path = batch_record_path(batch)
    record = storage.get_json(path) or {"functions": []}
    if fn not in record["functions"]:
        record["functions"].append(fn)
        storage.put_json(path, record)


def module_allowed(fn: str, prefixes: Iterable[str]) -> bool:
    """Whether ``fn``'s module is one of ``prefixes`` or inside one (``mylab`` allows
    ``mylab.tasks:f``, not ``mylabx:f``)."""
    module = fn.partition(":")[0]
    return any(module == p or module.startswith(p + ".") for p in prefixes)


class AllowedModules:
    """The rule above, for one worker; batch records are read once per batch."""

    def __init__(self, prefixes: Iterable[str], storage: Storage) -> None:
        self.prefixes = tuple(p.strip() for p in (*BUILT_IN, *prefixes) if p.strip())
        self.storage = storage
        self._batches: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def check(self, message: TaskMessage) -> None:
        """Raise `TaskNotAllowedError` unless the worker may run ``message.fn``."""
        if module_allowed(message.fn, self.prefixes) or message.fn in self._batch(message.batch):
            return
        raise TaskNotAllowedError(
            f"{message.fn} is not an allowed task function: batch {message.batch!r} was not "
            "enqueued with it through tqflow, and its module is not in the allowed modules "
            f"({', '.join(self.prefixes)}). If it is yours, add its module to the queue "
            "block's allowed_modules or pass --allow MODULE to the worker"
        )

    def _batch(self, batch: str) -> frozenset[str]:
        with self._lock:
            known = self._batches.get(batch)
        if known is None:
            record = self.storage.get_json(batch_record_path(batch)) or {}
            known = frozenset(record.get("functions", ()))
            if known:  # a batch enqueued later than this check is read again next time
                with self._lock:
                    self._batches[batch] = known
        return known
