"""Task messages: the JSON body that carries one task through the queue.

A tqflow message is::

    {"fn": "package.module:function", "kwargs": {...}, "key": "<item key>", "batch": "<batch>"}

``fn`` is resolved by importing its module, so a worker needs no registry imported first.
``key`` names the task's output (``<batch>/outputs/<key>.json``) and is what makes re-running a
batch skip finished items. ``batch`` names the folder in storage that holds a run's outputs.

Bodies written by python-task-queue are read too, so an existing queue drains with tqflow's
worker:

- ``@queueable`` functions: ``{"payload": [[module, name], args, kwargs, id], ...}``
- ``RegisteredTask`` subclasses: ``{"payload": {"class": "Name", ...kwargs}, ...}``

Their key is a hash of the call (function and arguments), their batch the worker's default.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from tqflow.errors import (
    BadArgumentsError,
    MessageTooLargeError,
    ParameterError,
    UndecodableMessageError,
    UnknownFunctionError,
)

#: Keys are used as file names in storage: these characters are kept as they are.
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,199}$")


#: One encoder for every body: `json.dumps` with options builds a new one per call.
_encode_json = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class TaskMessage:
    """One task: call ``fn`` with ``args`` / ``kwargs``; its output is named by ``batch`` and
    ``key``."""

    fn: str
    key: str
    batch: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: Positional arguments; only python-task-queue ``@queueable`` bodies carry them.
    args: tuple[Any, ...] = ()
    #: The batch's time limit per task (``"timeout"`` in the body); the worker's own when unset.
    task_timeout_seconds: float | None = None

    def encode(self, max_bytes: int | None = None) -> str:
        """The JSON body. Raises `MessageTooLargeError` naming the key when the body is over
        ``max_bytes`` (the queue backend's limit)."""
        body: dict[str, Any] = {
            "fn": self.fn,
            "kwargs": self.kwargs,
            "key": self.key,
            "batch": self.batch,
        }
        if self.args:
            body["args"] = list(self.args)
        if self.task_timeout_seconds:
            body["timeout"] = self.task_timeout_seconds
        try:
            # ASCII only: every body is valid in SQS's allowed character set, whatever the
            # kwargs hold (lone surrogates, control characters).
            text = _encode_json(body)
        except (TypeError, ValueError) as exc:
            raise BadArgumentsError(
                f"item {self.key!r}: the arguments of {self.fn} are not JSON-serialisable "
                f"({exc}); pass plain numbers, strings, lists and dicts"
            ) from None
        if max_bytes is not None:
            size = len(text.encode("utf-8"))
            if size > max_bytes:
                raise MessageTooLargeError(
                    f"item {self.key!r}: the message for {self.fn} is {size:,} bytes, over the "
                    f"queue's limit of {max_bytes:,}; put large inputs in storage and pass "
                    "their paths instead"
                )
        return text


def item_key(item: Any) -> str:
    """The deterministic key of a work item: its output's file name.

    An integer is its own key (a neuron's root ID stays readable: ``864691135000000001``), and
    so is a string that is safe as a file name and could not be mistaken for another item: not
    integer-like (``"1"`` is not the item ``1``) and not shaped like a hash key. Anything else
    (other strings, floats, booleans, lists, dicts) is named by a hash of its canonical JSON,
    which tells ``"1"``, ``1``, ``1.0`` and ``true`` apart.
    """
    if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
        return str(item)
    if (
        isinstance(item, str)
        and _SAFE_KEY.match(item)
        and not item.isdigit()
        and not item.startswith("h-")
    ):
        return item
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    return "h-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]


def check_key(key: str) -> str:
    """Return ``key`` if it can name a file in storage, else raise `BadArgumentsError`."""
    if not isinstance(key, str) or not _SAFE_KEY.match(key):
        raise BadArgumentsError(
            f"key {key!r} cannot name an output file: use letters, digits, '.', '_', '=' or "
            "'-' (at most 200, not starting with '.' or '-'), or let tqflow derive the key"
        )
    return key


def check_batch(batch: str) -> str:
    """Return ``batch`` if it can name the batch's folder in storage, else raise
    `ParameterError` saying what a batch name may hold. The one rule for every entry point:
    flows, CLI and worker."""
    if not isinstance(batch, str) or not _SAFE_KEY.match(batch):
        raise ParameterError(
            f"batch name {batch!r} cannot name a folder in storage: use letters, digits, '.', "
            "'_', '=' or '-' (at most 200, starting with a letter or digit), e.g. "
            "'synapse-profiles-v2'"
        )
    return batch


def decode(body: str | bytes, default_batch: str = "default") -> TaskMessage:
    """Read a message body written by tqflow or by python-task-queue.

    Raises `UndecodableMessageError` with the reason when the body is neither.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise UndecodableMessageError("the body is not UTF-8 text") from None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UndecodableMessageError(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UndecodableMessageError(
            f"the body is a JSON {type(data).__name__}, not an object with 'fn' or 'payload'"
        )
    if "fn" in data:
        return _decode_tqflow(data, default_batch)
    if "payload" in data or "class" in data:
        return _decode_task_queue(data.get("payload", data), default_batch)
    raise UndecodableMessageError(
        "the body has neither 'fn' (tqflow) nor 'payload' (python-task-queue); keys found: "
        + ", ".join(sorted(map(str, data))[:10])
    )


def _decode_tqflow(data: dict[str, Any], default_batch: str) -> TaskMessage:
    fn, kwargs, args = data["fn"], data.get("kwargs", {}), data.get("args", [])
    key, batch = data.get("key"), data.get("batch", default_batch)
    if not isinstance(fn, str) or ":" not in fn:
        raise UndecodableMessageError(f"'fn' must be 'package.module:function', got {fn!r}")
    if not isinstance(kwargs, dict):
        raise UndecodableMessageError(f"'kwargs' must be an object, got {type(kwargs).__name__}")
    if not isinstance(args, list):
        raise UndecodableMessageError(f"'args' must be a list, got {type(args).__name__}")
    timeout = data.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise UndecodableMessageError(
            f"'timeout' must be a positive number of seconds, got {timeout!r}"
        )
    if key is None:
        key = _call_key(fn, args, kwargs)
    try:
        check_key(key)
        check_batch(batch)
    except (BadArgumentsError, ParameterError) as exc:
        raise UndecodableMessageError(str(exc)) from None
    return TaskMessage(
        fn=fn, key=key, batch=batch, kwargs=kwargs, args=tuple(args), task_timeout_seconds=timeout
    )


def _decode_task_queue(payload: Any, default_batch: str) -> TaskMessage:
    if isinstance(payload, list):  # @queueable: [[module, name], args, kwargs, id]
        try:
            (module, name), args, kwargs = payload[0], payload[1], payload[2]
        except (TypeError, ValueError, IndexError):
            raise UndecodableMessageError(
                "python-task-queue payload is not [[module, name], args, kwargs, id]"
            ) from None
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise UndecodableMessageError("python-task-queue payload has malformed args/kwargs")
        fn = f"{module}:{name}"
    elif isinstance(payload, dict) and isinstance(payload.get("class"), str):  # RegisteredTask
        kwargs = {k: v for k, v in payload.items() if k != "class"}
        args, fn = [], _registered_task_fn(payload["class"])
    else:
        raise UndecodableMessageError(
            "python-task-queue payload is neither a @queueable list nor a RegisteredTask object"
        )
    return TaskMessage(
        fn=fn, key=_call_key(fn, args, kwargs), batch=default_batch, kwargs=kwargs, args=tuple(args)
    )


def _registered_task_fn(class_name: str) -> str:
    """``module:Class`` for a RegisteredTask class name.

    task-queue bodies carry the bare class name; the class is found in task-queue's registry,
    which holds every subclass whose module has been imported (the worker's ``import_modules``).
    A dotted name is taken as ``module.Class``.
    """
    if "." in class_name:
        module, _, name = class_name.rpartition(".")
        return f"{module}:{name}"
    from taskqueue.registered_task import REGISTRY

    cls = REGISTRY.get(class_name)
    if cls is None:
        raise UnknownFunctionError(
            f"RegisteredTask class {class_name!r} is not registered: give the worker the module "
            "that defines it (import_modules=['your.tasks'] / --import-module your.tasks)"
        )
    return f"{cls.__module__}:{cls.__qualname__}"


def _call_key(fn: str, args: Any, kwargs: Any) -> str:
    return item_key({"fn": fn, "args": args, "kwargs": kwargs})
