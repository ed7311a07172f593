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
from tqflow.engine.layout import batch_record_path
from tqflow.engine.messages import TaskMessage
from tqflow.errors import CorruptFileError, TaskNotAllowedError

#: Always allowed: tqflow's example tasks.
BUILT_IN = ("tqflow.examples",)


def record_batch_function(storage: Storage, batch: str, fn: str) -> str:
    """Note in storage that ``batch`` runs ``fn``, so that workers run it. A record that is
    not JSON is written anew (it is what makes the batch's workers refuse its messages);
    returns a sentence saying so, else ''."""
    path = batch_record_path(batch)
    replaced = ""
    try:
        record = storage.get_json(path)
    except CorruptFileError as exc:
        record, replaced = None, f"{exc}: written anew with {fn}"
    if not isinstance(record, dict) or not isinstance(record.get("functions"), list):
        record = {"functions": []}
    if fn not in record["functions"]:
        record["functions"].append(fn)
        storage.put_json(path, record)
    return replaced


def module_allowed(fn: str, prefixes: Iterable[str]) -> bool:
    """Whether ``fn``'s module is one of ``prefixes`` or inside one (``mylab`` allows
    ``mylab.tasks:f``, not ``mylabx:f``)."""
    module = fn.partition(":")[0]
    return any(module == p or module.startswith(p + ".") for p in prefixes)


class AllowedModules:
    """The rule above, for one worker; a batch's record is read when the batch is first met,
    and again when it does not name a message's function."""

    def __init__(self, prefixes: Iterable[str], storage: Storage) -> None:
        self.prefixes = tuple(p.strip() for p in (*BUILT_IN, *prefixes) if p.strip())
        self.storage = storage
        self._batches: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def check(self, message: TaskMessage) -> None:
        """Raise `TaskNotAllowedError` unless the worker may run ``message.fn``. A function
        the batch's record did not name when it was read is looked for in the record once
        more before it is refused: a function enqueued into the batch since then is allowed."""
        if module_allowed(message.fn, self.prefixes) or message.fn in self._batch(message.batch):
            return
        if message.fn in self._batch(message.batch, again=True):
            return
        raise TaskNotAllowedError(
            f"{message.fn} is not an allowed task function: batch {message.batch!r} was not "
            "enqueued with it through tqflow, and its module is not in the allowed modules "
            f"({', '.join(self.prefixes)}). If it is yours, add its module to the queue "
            "block's allowed_modules or pass --allow MODULE to the worker"
        )

    def _batch(self, batch: str, again: bool = False) -> frozenset[str]:
        with self._lock:
            known = None if again else self._batches.get(batch)
        if known is None:
            try:
                record = self.storage.get_json(batch_record_path(batch)) or {}
            except CorruptFileError as exc:
                raise TaskNotAllowedError(
                    f"the task functions of batch {batch!r} cannot be read: {exc}. Run the "
                    "batch's enqueue again (it writes the file anew), then send its dead "
                    "letters back with `tqflow dead-letters redrive`"
                ) from None
            functions = record.get("functions") if isinstance(record, dict) else None
            known = frozenset(functions if isinstance(functions, list) else ())
            if known:  # a batch enqueued later than this check is read again next time
                with self._lock:
                    self._batches[batch] = known
        return known
