"""SQS's batch requests, each entry confirmed, and the move of a dead-letter queue.

SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch answer per entry: the
entries listed in ``Failed`` are retried alone with backoff, one wrong in itself
(``SenderFault``) is given up at once, and a batch that succeeded is never sent again. Whole
requests (throttling, 5xx, dropped connections) are retried by botocore alone (standard mode):
one retry layer per call. SQS bills per request: everything here goes 10 to a request.
"""

from __future__ import annotations

import json
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Optional, Sequence

from botocore.exceptions import BotoCoreError, ClientError

from tqflow.engine.contracts import Lease
from tqflow.engine.retries import retry_delay
from tqflow.errors import QueueError

#: SQS's limits: entries per batch request, bytes per batch, longest lease.
BATCH = 10
BATCH_BYTES = 262_144
MAX_VISIBILITY = 43_200
#: Error codes of an SQS-compatible endpoint without StartMessageMoveTask: redrive then moves
#: the messages itself (moto as shipped answers 500 with an HTML page, code "500").
_MOVE_UNSUPPORTED = ("InvalidAction", "UnknownOperationException", "NotImplemented")
#: Message attributes a message dead-lettered by a worker carries.
REASON_ATTRIBUTE = "tqflow-reason"
RECEIVES_ATTRIBUTE = "tqflow-receive-count"
_NOT_OURS = {"ReceiptHandleIsInvalid", "AWS.SimpleQueueService.ReceiptHandleIsInvalid"}


def send_all(
    client: Any,
    url: str,
    queue_name: str,
    bodies: list[str],
    *,
    max_attempts: int,
    threads: int,
    delay_seconds: float = 0,
    attributes: Optional[list[dict[str, Any]]] = None,
) -> int:
    """Send ``bodies`` (with their message ``attributes``) in batches on ``threads``; raise
    `QueueError` naming the items that could not be sent, after every other batch is sent."""
    chunks = list(_batches(bodies))
    failures: list[str] = []
    errors: list[str] = []

    def send(chunk: list[int]) -> tuple[list[str], str]:
        entries = {}
        for i in chunk:
            entry: dict[str, Any] = {"Id": str(i), "MessageBody": bodies[i]}
            if delay_seconds:
                entry["DelaySeconds"] = whole_seconds(delay_seconds)
            if attributes is not None:
                entry["MessageAttributes"] = attributes[i]
            entries[str(i)] = entry
        return _send_batch(client, url, entries, max_attempts)

    with ThreadPoolExecutor(max_workers=min(threads, max(1, len(chunks)))) as pool:
        for failed, error in pool.map(send, chunks):
            failures.extend(failed)
            if error:
                errors.append(error)
    if failures:
        cause = f" (last error: {errors[-1]})" if errors else ""
        raise QueueError(
            f"{len(failures)} of {len(bodies)} messages could not be sent to "
            f"{queue_name!r}{cause}; items: {', '.join(_item_keys(failures)[:20])}. "
            "The rest were sent; re-run the enqueue, which skips nothing that is not done"
        )
    return len(bodies)


def _send_batch(
    client: Any, url: str, pending: dict[str, dict[str, Any]], max_attempts: int
) -> tuple[list[str], str]:
    """Send one batch; retry only the entries that failed. Return the bodies that could not be
    sent, and why the request itself failed if it did (after botocore's retries), so that the
    error names the items."""
    refused: list[str] = []
    for attempt in range(1, max_attempts + 1):
        # botocore has retried the request itself; what is left are entries it failed.
        try:
            response = client.send_message_batch(QueueUrl=url, Entries=list(pending.values()))
        except (ClientError, BotoCoreError) as exc:
            bodies = [e["MessageBody"] for e in pending.values()]
            return refused + bodies, f"{type(exc).__name__}: {exc}"
        for ok in response.get("Successful", []):
            pending.pop(ok["Id"], None)
        for failed in response.get("Failed", []):
            if failed.get("SenderFault"):  # the entry itself is wrong: retrying won't help
                refused.append(pending.pop(failed["Id"])["MessageBody"])
        if not pending:
            break
        _backoff(attempt)
    return refused + [e["MessageBody"] for e in pending.values()], ""


def per_receipt(
    client: Any,
    operation: str,
    url: str,
    queue_name: str,
    leases: Sequence[Lease],
    *,
    max_attempts: int,
    extra: Callable[[Lease], dict] = lambda lease: {},
) -> list[Lease]:
    """Run a per-receipt batch ``operation`` (``delete_message_batch``,
    ``change_message_visibility_batch``) 10 at a time, retrying transient entry failures;
    return the leases whose receipt is no longer valid."""
    method = getattr(client, operation)
    lost: list[Lease] = []
    for start in range(0, len(leases), BATCH):
        pending = {str(i): lease for i, lease in enumerate(leases[start : start + BATCH])}
        for attempt in range(1, max_attempts + 1):
            entries = [
                {"Id": i, "ReceiptHandle": lease.receipt, **extra(lease)}
                for i, lease in pending.items()
            ]
            response = method(QueueUrl=url, Entries=entries)
            for ok in response.get("Successful", []):
                pending.pop(ok["Id"], None)
            for failed in response.get("Failed", []):
                if failed.get("Code") in _NOT_OURS or failed.get("SenderFault"):
                    lost.append(pending.pop(failed["Id"]))
            if not pending:
                break
            if attempt == max_attempts:
                raise QueueError(
                    f"{operation} kept failing for {len(pending)} messages of "
                    f"{queue_name!r}: {response.get('Failed')}"
                )
            _backoff(attempt)
    return lost


def receive_dead(
    client: Any,
    url: str,
    limit: int,
    lease_seconds: int,
    *,
    max_receive_count: int,
    select: Optional[Callable[[str], bool]] = None,
) -> tuple[list[tuple[Lease, str]], list[Lease]]:
    """Up to ``limit`` dead letters whose body ``select`` accepts (all without it), held
    for ``lease_seconds``; and the leases of those passed over, held too so that one pass
    does not see them twice (the caller makes them visible again)."""
    found: dict[str, tuple[Lease, str]] = {}
    passed: dict[str, Lease] = {}
    empty = 0
    while len(found) < limit and empty < 2:
        response = client.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(BATCH, limit - len(found)),
            VisibilityTimeout=lease_seconds,
            WaitTimeSeconds=0,
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=[REASON_ATTRIBUTE, RECEIVES_ATTRIBUTE],
        )
        messages = response.get("Messages", [])
        empty = 0 if messages else empty + 1
        for m in messages:
            attributes = m.get("MessageAttributes", {})
            reason = attributes.get(REASON_ATTRIBUTE, {}).get("StringValue") or (
                f"received {max_receive_count} times without being acknowledged "
                f"(max_receive_count={max_receive_count}; moved by the redrive policy)"
            )
            # The DLQ's own receive count counts peeks too: report the task's receives.
            receives = int(
                attributes.get(RECEIVES_ATTRIBUTE, {}).get("StringValue") or max_receive_count
            )
            lease = Lease(m["MessageId"], m["ReceiptHandle"], m["Body"], receives)
            if select is None or select(lease.body):
                found.setdefault(m["MessageId"], (lease, reason))
            else:
                passed[m["MessageId"]] = lease
    return list(found.values()), list(passed.values())


def move_messages(client: Any, source_url: str, destination_url: str, source: str) -> int | None:
    """Every message of the queue ``source`` moved back by SQS itself (StartMessageMoveTask:
    one call, and SQS moves up to 500 messages a second, instead of a receive, a send and a
    delete for every 10); ``None`` where the SQS endpoint lacks the call."""
    source_arn, destination_arn = (
        client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        for url in (source_url, destination_url)
    )
    try:
        client.start_message_move_task(SourceArn=source_arn, DestinationArn=destination_arn)
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if error_code(exc) in _MOVE_UNSUPPORTED or status >= 500 or status == 404:
            return None  # the message-by-message path moves them just as surely
        raise QueueError(
            f"SQS refused to move the dead letters of {source!r} back "
            f"({error_code(exc)}: {exc}); a move already running must end first (SQS console)"
        ) from exc
    polls = 0
    while True:
        polls += 1
        tasks = client.list_message_move_tasks(SourceArn=source_arn, MaxResults=1)["Results"]
        status = tasks[0]["Status"] if tasks else "RUNNING"  # not listed yet
        if status == "COMPLETED":
            return int(tasks[0].get("ApproximateNumberOfMessagesMoved", 0))
        if status in ("FAILED", "CANCELLED", "CANCELLING"):
            raise QueueError(
                f"moving the dead letters of {source!r} back ended {status}: "
                f"{tasks[0].get('FailureReason', 'no reason given')}"
            )
        time.sleep(retry_delay(polls, base_seconds=0.5, max_seconds=5.0))


def error_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def whole_seconds(value: float) -> int:
    """SQS takes whole seconds: round a lease up so it is never shorter than asked."""
    return max(0, min(MAX_VISIBILITY, math.ceil(value)))


def _backoff(attempt: int) -> None:
    """A pause before retrying a batch's failed entries: the one backoff rule, jittered."""
    pause = retry_delay(attempt + 1, base_seconds=0.05, max_seconds=10.0)
    time.sleep(pause * (0.5 + random.random()))


def _batches(bodies: list[str]) -> Iterator[list[int]]:
    """The bodies' indexes, at most 10 bodies and 256 KiB per batch."""
    batch: list[int] = []
    size = 0
    for i, body in enumerate(bodies):
        n = len(body.encode("utf-8"))
        if batch and (len(batch) == BATCH or size + n > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += n
    if batch:
        yield batch


def _item_keys(bodies: list[str]) -> list[str]:
    keys = []
    for body in bodies:
        try:
            keys.append(str(json.loads(body).get("key")))
        except (ValueError, AttributeError):
            keys.append(repr(body[:40]))
    return keys
