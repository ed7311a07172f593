"""`SQSTaskQueue`: the Queue contract on Amazon SQS, with a dead-letter queue.

Reliability over python-task-queue's SQS client, for the same message format:

- every SendMessageBatch / DeleteMessageBatch entry is confirmed; entries listed in ``Failed``
  are retried alone with backoff, and a batch that succeeded is never sent again; a permanent
  failure raises naming the item keys, after every other batch is sent. Whole requests
  (throttling, 5xx, dropped connections) are retried by botocore alone (standard mode): one
  retry layer per call;
- the receive count (``ApproximateReceiveCount``) is read on every receive;
- the dead-letter queue and its redrive policy are created by `ensure()`, not by hand;
- SQS bills per request: receives take up to 10 messages, acknowledgements and lease
  extensions go 10 to a request.

The endpoint comes from the `AwsCredentials` block's ``aws_client_parameters.endpoint_url``
(``get_client("sqs")`` honours it), which is how tests point it at a local moto server.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

from botocore.exceptions import BotoCoreError, ClientError
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.queues.base import SQS_DOCUMENTATION_URL, TaskQueue
from tqflow.engine.contracts import DeadLetter, Lease, QueueCounts
from tqflow.engine.retries import retry_delay
from tqflow.errors import LeaseLostError, NoDeadLetterQueueError, QueueConfigError, QueueError

#: SQS's limits: entries per batch request, bytes per batch, longest long poll, longest lease.
_BATCH = 10
_BATCH_BYTES = 262_144
_MAX_WAIT = 20
_MAX_VISIBILITY = 43_200
#: Error codes of an SQS-compatible endpoint without StartMessageMoveTask: redrive then moves
#: the messages itself (moto as shipped answers 500 with an HTML page, code "500").
_MOVE_UNSUPPORTED = ("InvalidAction", "UnknownOperationException", "NotImplemented")
_NOT_OURS = {"ReceiptHandleIsInvalid", "AWS.SimpleQueueService.ReceiptHandleIsInvalid"}

#: Message attributes a message dead-lettered by a worker carries.
REASON_ATTRIBUTE = "tqflow-reason"
RECEIVES_ATTRIBUTE = "tqflow-receive-count"

_queue_urls: dict[tuple, str] = {}
_queue_urls_lock = threading.Lock()


class SQSTaskQueue(TaskQueue):
    """A task queue on Amazon SQS with a dead-letter queue attached by a redrive policy.

    Example:
        ```python
        from prefect_aws import AwsCredentials
        from blocks.queues.sqs import SQSTaskQueue

        queue = SQSTaskQueue(
            queue_name="mesh-tasks",
            aws_credentials=AwsCredentials.load("lab-aws"),
            max_receive_count=5,
        )
        queue.ensure()  # creates mesh-tasks and mesh-tasks-dlq, with the redrive policy
        queue.save("mesh-tasks")
        ```

        Load a saved block:
        ```python
        from blocks import SQSTaskQueue

        queue = SQSTaskQueue.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "SQS Task Queue"
    _description = (
        "A task queue on Amazon SQS with a dead-letter queue attached by a redrive policy."
    )
    _logo_url = AwsCredentials._logo_url  # prefect-aws's
    _documentation_url = SQS_DOCUMENTATION_URL

    aws_credentials: AwsCredentials = Field(
        default_factory=AwsCredentials,
        description="AWS credentials; set aws_client_parameters.endpoint_url for a stand-in.",
    )
    dead_letter_queue_name: Optional[str] = Field(
        default=None, description="Name of the dead-letter queue (default: <queue_name>-dlq)."
    )
    wait_seconds: float = Field(
        default=20.0,
        ge=0,
        le=_MAX_WAIT,
        description="Long-polling wait of a receive, at most 20 s: fewer billed empty receives.",
    )
    message_retention_seconds: int = Field(
        default=1_209_600,
        ge=60,
        le=1_209_600,
        description="How long SQS keeps a message (both queues); at most 14 days.",
    )
    send_threads: int = Field(
        default=8, ge=1, description="Parallel SendMessageBatch requests when sending."
    )
    max_attempts: int = Field(
        default=8,
        ge=1,
        description=(
            "Attempts of a request (botocore's standard retry mode: throttling, server errors, "
            "dropped connections) and of a batch entry SQS reports failed, before giving up."
        ),
    )

    # -- plumbing -------------------------------------------------------------------------

    @property
    def dlq_name(self) -> str:
        return self.dead_letter_queue_name or f"{self.queue_name}-dlq"

    def _client(self) -> Any:
        """The SQS client. botocore retries throttling, server errors and dropped connections
        itself (standard retry mode, `max_attempts`), unless the block's client parameters
        configure retries otherwise: tqflow adds no second retry layer around a request."""
        credentials = self.aws_credentials
        parameters = credentials.aws_client_parameters
        if "retries" not in (parameters.config or {}):
            config = {
                **(parameters.config or {}),
                "retries": {"mode": "standard", "max_attempts": self.max_attempts},
            }
            credentials = credentials.model_copy(
                update={"aws_client_parameters": parameters.model_copy(update={"config": config})}
            )
        return credentials.get_client("sqs")

    def _url(self, name: str) -> str:
        client = self._client()
        key = (client.meta.endpoint_url, client.meta.region_name, name)
        with _queue_urls_lock:
            url = _queue_urls.get(key)
        if url is None:
            try:
                url = client.get_queue_url(QueueName=name)["QueueUrl"]
            except ClientError as exc:
                if _code(exc) in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
                    raise QueueError(
                        f"SQS queue {name!r} does not exist at {client.meta.endpoint_url}: "
                        "create it with queue.ensure() (or run the enqueue flow, which does)"
                    ) from None
                raise
            with _queue_urls_lock:
                _queue_urls[key] = url
        return url

    # -- contract -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self._queue_exists(self.queue_name)

    def _dead_letter_queue_exists(self) -> bool:
        return self._queue_exists(self.dlq_name)

    def _queue_exists(self, name: str) -> bool:
        try:
            self._url(name)
        except QueueError:
            return False
        return True

    def ensure(self) -> None:
        policy = self._ensure_dead_letter_queue()
        existing = self._existing_redrive_policy()
        if existing is False:
            self._client().create_queue(
                QueueName=self.queue_name,
                Attributes={
                    "VisibilityTimeout": str(_seconds(self.lease_seconds)),
                    "MessageRetentionPeriod": str(self.message_retention_seconds),
                    "ReceiveMessageWaitTimeSeconds": str(_seconds(self.wait_seconds)),
                    "RedrivePolicy": json.dumps(policy),
                },
            )
            return
        if existing is None:
            raise QueueConfigError(
                f"SQS queue {self.queue_name!r} exists without a dead-letter queue, so failing "
                f"tasks would be retried forever. Attach {self.dlq_name!r} with "
                "queue.attach_dead_letter_queue(), or use another queue_name"
            )
        found = (existing.get("deadLetterTargetArn"), int(existing.get("maxReceiveCount", 0)))
        if found != (policy["deadLetterTargetArn"], self.max_receive_count):
            raise QueueConfigError(
                f"SQS queue {self.queue_name!r} exists with max_receive_count={found[1]} and "
                f"dead-letter queue {found[0]}, not max_receive_count={self.max_receive_count} "
                f"and {policy['deadLetterTargetArn']}; use max_receive_count={found[1]} in the "
                "block, call queue.attach_dead_letter_queue() to change the queue, or use "
                "another queue_name"
            )

    def attach_dead_letter_queue(self) -> None:
        """Create the dead-letter queue if needed and set this block's redrive policy on an
        existing queue (e.g. one made by python-task-queue or by hand)."""
        policy = self._ensure_dead_letter_queue()
        self._client().set_queue_attributes(
            QueueUrl=self._url(self.queue_name),
            Attributes={"RedrivePolicy": json.dumps(policy)},
        )

    def _ensure_dead_letter_queue(self) -> dict[str, Any]:
        """Create the dead-letter queue if missing; return the redrive policy pointing at it."""
        client = self._client()
        client.create_queue(
            QueueName=self.dlq_name,
            Attributes={"MessageRetentionPeriod": str(self.message_retention_seconds)},
        )
        arn = client.get_queue_attributes(
            QueueUrl=self._url(self.dlq_name),
            AttributeNames=["QueueArn"],
        )["Attributes"]["QueueArn"]
        return {"deadLetterTargetArn": arn, "maxReceiveCount": self.max_receive_count}

    def _existing_redrive_policy(self) -> dict | None | Literal[False]:
        """The queue's redrive policy; ``None`` if it has none; ``False`` if no queue."""
        try:
            url = self._url(self.queue_name)
        except QueueError:
            return False
        attributes = (
            self._client()
            .get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])
            .get("Attributes", {})
        )
        policy = attributes.get("RedrivePolicy")
        return json.loads(policy) if policy else None

    def send(
        self,
        bodies: Iterable[str],
        delay_seconds: float = 0,
        dedup_ids: Sequence[str] | None = None,
    ) -> int:
        # Standard queues cannot deduplicate (FIFO queues could, for 5 minutes only): dedup_ids
        # are ignored, and enqueue keeps its own record of what was sent.
        bodies = list(bodies)
        self.check_sizes(bodies)
        return self._send_to(self._url(self.queue_name), bodies, delay_seconds)

    def _send_to(
        self, url: str, bodies: list[str], delay_seconds: float = 0, attributes=None
    ) -> int:
        batches = list(_batches(bodies))
        failures: list[str] = []
        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=min(self.send_threads, max(1, len(batches)))) as pool:
            for failed, error in pool.map(
                lambda batch: self._send_batch(url, batch, delay_seconds, attributes), batches
            ):
                failures.extend(failed)
                if error:
                    errors.append(error)
        if failures:
            cause = f" (last error: {errors[-1]})" if errors else ""
            raise QueueError(
                f"{len(failures)} of {len(bodies)} messages could not be sent to "
                f"{self.queue_name!r}{cause}; items: {', '.join(_item_keys(failures)[:20])}. "
                "The rest were sent; re-run the enqueue, which skips nothing that is not done"
            )
        return len(bodies)

    def _send_batch(
        self, url: str, batch: list[str], delay_seconds: float, attributes: Optional[list]
    ) -> tuple[list[str], str]:
        """Send one batch; retry only the entries that failed. Return the bodies that could
        not be sent, and why the request itself failed if it did (after botocore's retries),
        so that the error names the items."""
        client = self._client()
        pending = {str(i): body for i, body in enumerate(batch)}
        refused: list[str] = []
        for attempt in range(1, self.max_attempts + 1):
            entries = []
            for entry_id, body in pending.items():
                entry: dict[str, Any] = {"Id": entry_id, "MessageBody": body}
                if delay_seconds:
                    entry["DelaySeconds"] = _seconds(delay_seconds)
                if attributes is not None:
                    entry["MessageAttributes"] = attributes[int(entry_id)]
                entries.append(entry)
            # botocore has retried the request itself; what is left are entries it failed.
            try:
                response = client.send_message_batch(QueueUrl=url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                return refused + list(pending.values()), f"{type(exc).__name__}: {exc}"
            for ok in response.get("Successful", []):
                pending.pop(ok["Id"], None)
            for failed in response.get("Failed", []):
                if failed.get("SenderFault"):  # the entry itself is wrong: retrying won't help
                    refused.append(pending.pop(failed["Id"]))
            if not pending:
                break
            _backoff(attempt)
        return refused + list(pending.values()), ""

    def _receive(self, max_messages: int, lease_seconds: float, wait_seconds: float) -> list[Lease]:
        response = self._client().receive_message(
            QueueUrl=self._url(self.queue_name),
            MaxNumberOfMessages=max(1, min(_BATCH, max_messages)),
            VisibilityTimeout=_seconds(lease_seconds),
            WaitTimeSeconds=min(_MAX_WAIT, _seconds(wait_seconds)),
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        return [
            Lease(
                message_id=m["MessageId"],
                receipt=m["ReceiptHandle"],
                body=m["Body"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            )
            for m in response.get("Messages", [])
        ]

    def extend(self, lease: Lease, seconds: float) -> None:
        if self.extend_many([lease], seconds):
            raise LeaseLostError(
                f"message {lease.message_id} is no longer leased by this receiver "
                "(acknowledged or dead-lettered)"
            )

    def extend_many(self, leases: Sequence[Lease], seconds: float) -> list[Lease]:
        return self._batch_entries(
            "change_message_visibility_batch",
            self._url(self.queue_name),
            leases,
            lambda lease: {"VisibilityTimeout": _seconds(seconds)},
        )

    def release(self, lease: Lease) -> None:
        self.extend_many([lease], 0)

    def ack(self, leases: Sequence[Lease]) -> int:
        lost = self._batch_entries("delete_message_batch", self._url(self.queue_name), leases)
        return len(leases) - len(lost)

    def _batch_entries(
        self,
        operation: str,
        url: str,
        leases: Sequence[Lease],
        extra: Callable[[Lease], dict] = lambda lease: {},
    ) -> list[Lease]:
        """Run a per-receipt batch operation 10 at a time, retrying transient entry failures;
        return the leases whose receipt is no longer valid."""
        method = getattr(self._client(), operation)
        lost: list[Lease] = []
        for start in range(0, len(leases), _BATCH):
            pending = {str(i): lease for i, lease in enumerate(leases[start : start + _BATCH])}
            for attempt in range(1, self.max_attempts + 1):
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
                if attempt == self.max_attempts:
                    raise QueueError(
                        f"{operation} kept failing for {len(pending)} messages of "
                        f"{self.queue_name!r}: {response.get('Failed')}"
                    )
                _backoff(attempt)
        return lost

    def dead_letter(self, lease: Lease, reason: str) -> bool:
        if not self._dead_letter_queue_exists():
            raise NoDeadLetterQueueError(
                f"SQS queue {self.queue_name!r} has no dead-letter queue ({self.dlq_name!r} "
                "does not exist); attach one with queue.attach_dead_letter_queue() so that "
                "unrunnable messages are kept in a queue"
            )
        attributes = {
            RECEIVES_ATTRIBUTE: {"DataType": "Number", "StringValue": str(lease.receive_count)}
        }
        reason = self.fit_reason(reason, lease.body)
        if reason:
            attributes[REASON_ATTRIBUTE] = {"DataType": "String", "StringValue": reason}
        self._send_to(self._url(self.dlq_name), [lease.body], attributes=[attributes])
        return self.ack([lease]) == 1

    def counts(self) -> QueueCounts:
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        main = self._attributes(self.queue_name, names)
        # A queue made by python-task-queue or by hand may have no dead-letter queue.
        dead = self._attributes(self.dlq_name, names) if self._dead_letter_queue_exists() else {}
        return QueueCounts(
            visible=main[names[0]],
            in_flight=main[names[1]],
            delayed=main[names[2]],
            dead=sum(dead.values()),
        )

    def _attributes(self, name: str, names: list[str]) -> dict[str, int]:
        attributes = self._client().get_queue_attributes(
            QueueUrl=self._url(name), AttributeNames=names
        )["Attributes"]
        return {n: int(attributes.get(n, 0)) for n in names}

    def dead_letters(
        self, limit: int = 100, select: Optional[Callable[[str], bool]] = None
    ) -> list[DeadLetter]:
        chosen, passed = self._receive_dead(limit, lease_seconds=30, select=select)
        # Peek, don't consume: make them visible again at once.
        self._batch_entries(
            "change_message_visibility_batch",
            self._url(self.dlq_name),
            [lease for lease, _ in chosen] + passed,
            lambda lease: {"VisibilityTimeout": 0},
        )
        return [
            DeadLetter(lease.message_id, lease.body, reason, lease.receive_count)
            for lease, reason in chosen
        ]

    def _receive_dead(
        self, limit: int, lease_seconds: int, select: Optional[Callable[[str], bool]] = None
    ) -> tuple[list[tuple[Lease, str]], list[Lease]]:
        """Up to ``limit`` dead letters whose body ``select`` accepts (all without it), held
        for ``lease_seconds``; and the leases of those passed over, held too so that one pass
        does not see them twice (the caller makes them visible again)."""
        client, url = self._client(), self._url(self.dlq_name)
        found: dict[str, tuple[Lease, str]] = {}
        passed: dict[str, Lease] = {}
        empty = 0
        while len(found) < limit and empty < 2:
            response = client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=min(_BATCH, limit - len(found)),
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
                    f"received {self.max_receive_count} times without being acknowledged "
                    f"(max_receive_count={self.max_receive_count}; moved by the redrive policy)"
                )
                # The DLQ's own receive count counts peeks too: report the task's receives.
                receives = int(
                    attributes.get(RECEIVES_ATTRIBUTE, {}).get("StringValue")
                    or self.max_receive_count
                )
                lease = Lease(m["MessageId"], m["ReceiptHandle"], m["Body"], receives)
                if select is None or select(lease.body):
                    found.setdefault(m["MessageId"], (lease, reason))
                else:
                    passed[m["MessageId"]] = lease
        return list(found.values()), list(passed.values())

    def redrive(
        self, limit: int | None = None, select: Optional[Callable[[str], bool]] = None
    ) -> int:
        if limit is None and select is None:
            moved = self._move_dead_letter_queue()
            if moved is not None:
                return moved
        moved = 0
        passed: list[Lease] = []
        while limit is None or moved < limit:
            want = _BATCH if limit is None else min(_BATCH, limit - moved)
            chosen, skipped = self._receive_dead(want, lease_seconds=60, select=select)
            passed.extend(skipped)
            leases = [lease for lease, _ in chosen]
            if not leases:
                break
            # Send first, then delete: a crash in between duplicates, never loses.
            self._send_to(self._url(self.queue_name), [lease.body for lease in leases])
            self._batch_entries("delete_message_batch", self._url(self.dlq_name), leases)
            moved += len(leases)
        if passed:  # not this batch's: visible again in the dead-letter queue
            self._batch_entries(
                "change_message_visibility_batch",
                self._url(self.dlq_name),
                passed,
                lambda lease: {"VisibilityTimeout": 0},
            )
        return moved

    def _move_dead_letter_queue(self) -> int | None:
        """The whole dead-letter queue moved back by SQS itself (StartMessageMoveTask: one
        call, and SQS moves up to 500 messages a second, instead of a receive, a send and a
        delete for every 10); ``None`` where the SQS endpoint lacks the call."""
        client = self._client()
        source, destination = (
            client.get_queue_attributes(QueueUrl=self._url(name), AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            for name in (self.dlq_name, self.queue_name)
        )
        try:
            client.start_message_move_task(SourceArn=source, DestinationArn=destination)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if _code(exc) in _MOVE_UNSUPPORTED or status >= 500 or status == 404:
                return None  # the message-by-message path moves them just as surely
            raise QueueError(
                f"SQS refused to move the dead letters of {self.dlq_name!r} back "
                f"({_code(exc)}: {exc}); a move already running must end first (SQS console)"
            ) from exc
        polls = 0
        while True:
            polls += 1
            tasks = client.list_message_move_tasks(SourceArn=source, MaxResults=1)["Results"]
            status = tasks[0]["Status"] if tasks else "RUNNING"  # not listed yet
            if status == "COMPLETED":
                return int(tasks[0].get("ApproximateNumberOfMessagesMoved", 0))
            if status in ("FAILED", "CANCELLED", "CANCELLING"):
                raise QueueError(
                    f"moving the dead letters of {self.dlq_name!r} back ended {status}: "
                    f"{tasks[0].get('FailureReason', 'no reason given')}"
                )
            time.sleep(retry_delay(polls, base_seconds=0.5, max_seconds=5.0))

    def purge(self, dead_letters: bool = False) -> None:
        client = self._client()
        names = [self.queue_name] + ([self.dlq_name] if dead_letters else [])
        for name in names:
            try:
                client.purge_queue(QueueUrl=self._url(name))
            except ClientError as exc:
                if "PurgeQueueInProgress" not in _code(exc):
                    raise
                raise QueueError(
                    f"SQS allows one purge of {name!r} per 60 seconds and one is in progress; "
                    "try again in a minute"
                ) from None


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _backoff(attempt: int) -> None:
    """A pause before retrying a batch's failed entries: the one backoff rule, jittered."""
    pause = retry_delay(attempt + 1, base_seconds=0.05, max_seconds=10.0)
    time.sleep(pause * (0.5 + random.random()))


def _seconds(value: float) -> int:
    """SQS takes whole seconds: round a lease up so it is never shorter than asked."""
    return max(0, min(_MAX_VISIBILITY, math.ceil(value)))


def _batches(bodies: list[str]) -> Iterable[list[str]]:
    """At most 10 bodies and 256 KiB per batch."""
    batch: list[str] = []
    size = 0
    for body in bodies:
        n = len(body.encode("utf-8"))
        if batch and (len(batch) == _BATCH or size + n > _BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(body)
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
