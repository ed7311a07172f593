"""Fault injection for SQS calls through botocore's event hooks.

Requests still go over HTTP to the moto server; the hooks only take entries out of a batch
request before it is sent (and report them as ``Failed``, as SQS does for a partial failure) or
answer an HTTP attempt with a throttling or server error instead of sending it (``before-send``,
so botocore parses the answer and its retry mode sees it, as it would SQS's). So what the
injected faults claim is always true: a "failed" entry really was not sent.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from typing import Any

from botocore.awsrequest import AWSResponse


class _Body:
    def __init__(self, content: bytes) -> None:
        self.content = content

    def stream(self, **kwargs: Any) -> Any:
        yield self.content


def _refusal(url: str, status: int, code: str, message: str) -> AWSResponse:
    """What SQS (JSON protocol) answers when it refuses a request."""
    body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": "injected"}
    return AWSResponse(url, status, headers, _Body(body))


#: What a refused call answers, in turn.
_REFUSALS = [
    (400, "ThrottlingException", "Rate exceeded"),
    (500, "InternalError", "We encountered an internal error"),
    (503, "ServiceUnavailable", "The service is unavailable"),
]


class SQSFaults:
    """Fail each batch entry once (every ``fail_every``-th), refuse every ``throttle_every``-th
    HTTP attempt of the named operations (throttling, 500, 503 in turn); count every call by
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
            self._on(f"before-send.sqs.{op}", self._refuse, f"refuse-{op}")
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

    def _refuse(self, request: Any, event_name: str, **kwargs: Any) -> Any:
        operation = event_name.rsplit(".", 1)[-1]
        with self._lock:
            attempt = next(self._calls)
            if attempt % self.throttle_every:
                return None
            status, code, message = _REFUSALS[(attempt // self.throttle_every) % len(_REFUSALS)]
            self.injected[f"refused {operation}"] += 1
            self.injected[f"HTTP {status}"] += 1
        return _refusal(request.url, status, code, f"{message} (injected)")

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
                self._dropped.append(
                    {"Id": entry["Id"], "SenderFault": True, "Code": "InvalidMessageContents"}
                )
            elif identity not in self._failed_once and next(self._entries) % self.fail_every == 0:
                self._failed_once.add(identity)
                self._dropped.append(
                    {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError"}
                )
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
