"""`SQSTaskQueue`: the Queue contract on Amazon SQS, with a dead-letter queue.

Reliability over python-task-queue's SQS client, for the same message format:

- every SendMessageBatch / DeleteMessageBatch entry is confirmed; entries listed in ``Failed``
  are retried alone with backoff, and a batch that succeeded is never sent again; a permanent
  failure raises naming the item keys, after every other batch is sent. Whole requests
  (throttling, 5xx, dropped connections) are retried by botocore alone (standard mode): one
  retry layer per call (the requests themselves: `blocks.queues.sqs_requests`);
- the receive count (``ApproximateReceiveCount``) is read on every receive;
- the dead-letter queue and its redrive policy are created by `ensure()`, not by hand;
- SQS bills per request: receives take up to 10 messages, acknowledgements and lease
  extensions go 10 to a request.

The endpoint comes from the `AwsCredentials` block's ``aws_client_parameters.endpoint_url``
(``get_client("sqs")`` honours it), which is how tests point it at a local moto server.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

from botocore.exceptions import ClientError
from prefect_aws import AwsCredentials
from pydantic import Field

from blocks.queues.base import SQS_DOCUMENTATION_URL, TaskQueue
from blocks.queues.sqs_requests import (
    BATCH,
    REASON_ATTRIBUTE,
    RECEIVES_ATTRIBUTE,
    error_code,
    move_messages,
    per_receipt,
    receive_dead,
    send_all,
    whole_seconds,
)
from tqflow.engine.contracts import DeadLetter, Lease, QueueCounts
from tqflow.errors import LeaseLostError, NoDeadLetterQueueError, QueueConfigError, QueueError

#: The longest long poll SQS allows.
_MAX_WAIT = 20

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
                if error_code(exc) in (
                    "AWS.SimpleQueueService.NonExistentQueue",
                    "QueueDoesNotExist",
                ):
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
        existing = self.redrive_policy()
        if existing is False:
            self._client().create_queue(
                QueueName=self.queue_name,
                Attributes={
                    "VisibilityTimeout": str(whole_seconds(self.lease_seconds)),
                    "MessageRetentionPeriod": str(self.message_retention_seconds),
                    "ReceiveMessageWaitTimeSeconds": str(whole_seconds(self.wait_seconds)),
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

    def redrive_policy(self) -> dict | None | Literal[False]:
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
        self,
        url: str,
        bodies: list[str],
        delay_seconds: float = 0,
        attributes: Optional[list[dict[str, Any]]] = None,
    ) -> int:
        return send_all(
            self._client(),
            url,
            self.queue_name,
            bodies,
            max_attempts=self.max_attempts,
            threads=self.send_threads,
            delay_seconds=delay_seconds,
            attributes=attributes,
        )

    def _receive(self, max_messages: int, lease_seconds: float, wait_seconds: float) -> list[Lease]:
        response = self._client().receive_message(
            QueueUrl=self._url(self.queue_name),
            MaxNumberOfMessages=max(1, min(BATCH, max_messages)),
            VisibilityTimeout=whole_seconds(lease_seconds),
            WaitTimeSeconds=min(_MAX_WAIT, whole_seconds(wait_seconds)),
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
            lambda lease: {"VisibilityTimeout": whole_seconds(seconds)},
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
        return per_receipt(
            self._client(),
            operation,
            url,
            self.queue_name,
            leases,
            max_attempts=self.max_attempts,
            extra=extra,
        )

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
        return receive_dead(
            self._client(),
            self._url(self.dlq_name),
            limit,
            lease_seconds,
            max_receive_count=self.max_receive_count,
            select=select,
        )

    def redrive(
        self, limit: int | None = None, select: Optional[Callable[[str], bool]] = None
    ) -> int:
        if limit is None and select is None:
            client = self._client()
            dead, live = self._url(self.dlq_name), self._url(self.queue_name)
            moved = move_messages(client, dead, live, self.dlq_name)
            if moved is not None:
                return moved
        moved = 0
        passed: list[Lease] = []
        while limit is None or moved < limit:
            want = BATCH if limit is None else min(BATCH, limit - moved)
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

    def purge(self, dead_letters: bool = False) -> None:
        client = self._client()
        names = [self.queue_name] + ([self.dlq_name] if dead_letters else [])
        for name in names:
            try:
                client.purge_queue(QueueUrl=self._url(name))
            except ClientError as exc:
                if "PurgeQueueInProgress" not in error_code(exc):
                    raise
                raise QueueError(
                    f"SQS allows one purge of {name!r} per 60 seconds and one is in progress; "
                    "try again in a minute"
                ) from None
