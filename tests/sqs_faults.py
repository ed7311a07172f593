"""Fault injection for SQS calls through botocore's event hooks.

Requests still go over HTTP to the moto server; the hooks only take entries out of a batch
request before it is sent (and report them as ``Failed``, as SQS does for a partial failure) or
answer a call with a throttling error instead of sending it. So what the injected faults claim
is always true: a "failed" entry really was not sent.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any


class _RefusedResponse:
    headers: dict[str, str] = {}
    content = b""
    text = ""

    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


#: What a refused call answers, in turn.
_REFUSALS = [
    (400, "ThrottlingException", "Rate exceeded"),
    (500, "InternalError", "We encountered an internal error"),
    (503, "ServiceUnavailable", "The service is unavailable"),
]


class SQSFaults:
    """Fail each batch entry once (every ``fail_every``-th), refuse every ``throttle_every``-th
    call of the named operations (throttling, 500, 503 in turn); count every request by
    operation."""

    def __init__(
        self,
        client: Any,
        operations: tuple[str, ...] = ("SendMessageBatch", "DeleteMessageBatch", "ReceiveMessage"),
        fail_every: int = 3,
        throttle_every: int = 4,
        permanent_bodies: tuple[str, ...] = (),
    ):
        self.client = client
        self.operations = operations
        self.fail_every = fail_every
        self.throttle_every = throttle_every
        self.permanent_bodies = set(permanent_bodies)
        self.requests: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._entries = itertools.count(1)
        self._calls = itertools.count(1)
        self._failed_once: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()  # the send thread pool calls from several threads
        self._hooks: list[tuple[str, Any, str]] = []

    def __enter__(self) -> "SQSFaults":
        self._on("before-call.sqs", self._count, "count")
        for op in self.operations:
            self._on(f"before-parameter-build.sqs.{op}", self._drop_entries, f"drop-{op}")
            self._on(f"before-call.sqs.{op}", self._refuse, f"refuse-{op}")
            self._on(f"after-call.sqs.{op}", self._report_dropped, f"report-{op}")
        return self

    def __exit__(self, *exc: object) -> None:
        for event, handler, unique_id in self._hooks:
            self.client.meta.events.unregister(event, handler, unique_id=unique_id)

    def _on(self, event: str, handler: Any, name: str) -> None:
        unique_id = f"tqflow-test-{name}-{id(self)}"
        self.client.meta.events.register(event, handler, unique_id=unique_id)
        self._hooks.append((event, handler, unique_id))

    def _count(self, model: Any, **kwargs: Any) -> None:
        with self._lock:
            self.requests[model.name] += 1

    def _refuse(self, model: Any, **kwargs: Any) -> Any:
        with self._lock:
            call = next(self._calls)
            if call % self.throttle_every:
                return None
            status, code, message = _REFUSALS[(call // self.throttle_every) % len(_REFUSALS)]
            self.injected[f"refused {model.name}"] += 1
            self.injected[f"HTTP {status}"] += 1
        error = {"Code": code, "Message": f"{message} (injected)"}
        return _RefusedResponse(status), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}

    def _drop_entries(self, params: dict[str, Any], model: Any, **kwargs: Any) -> None:
        with self._lock:
            self._local.dropped = self._choose(params, model)

    def _choose(self, params: dict[str, Any], model: Any) -> list[dict[str, Any]]:
        self._dropped: list[dict[str, Any]] = []
        if "Entries" not in params:
            return []
        kept = []
        for entry in params["Entries"]:
            identity = entry.get("MessageBody") or entry.get("ReceiptHandle")
            if identity in self.permanent_bodies:
                self._dropped.append({"Id": entry["Id"], "SenderFault": True, "Code": "InvalidMessageContents"})
            elif identity not in self._failed_once and next(self._entries) % self.fail_every == 0:
                self._failed_once.add(identity)
                self._dropped.append({"Id": entry["Id"], "SenderFault": False, "Code": "InternalError"})
            else:
                kept.append(entry)
                continue
            self.injected[f"failed {model.name} entry"] += 1
        if not kept:  # SQS rejects an empty batch: keep one entry that will be reported failed
            kept = [params["Entries"][0]]
            self._dropped = [d for d in self._dropped if d["Id"] != kept[0]["Id"]]
        params["Entries"] = kept
        return self._dropped

    def _report_dropped(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        dropped = getattr(self._local, "dropped", [])
        if dropped and "Error" not in parsed:
            parsed.setdefault("Failed", []).extend(
                {**d, "Message": "injected fault"} for d in dropped
            )
        self._local.dropped = []
