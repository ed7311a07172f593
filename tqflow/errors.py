"""tqflow's errors: one root, one subclass per area.

Every error says what went wrong with which item, and what to do about it. What a task raises
that is not an ``Exception`` (``sys.exit()``, ``KeyboardInterrupt``, python-task-queue's errors,
which subclass ``BaseException``) becomes a `TaskExitError` at the worker's call site: a failure
of that task. Elsewhere ``KeyboardInterrupt`` and ``SystemExit`` pass through.
"""

from __future__ import annotations

from typing import Any


class TqflowError(Exception):
    """Root of every error tqflow raises on purpose."""


class QueueError(TqflowError):
    """A queue operation failed or the queue is not in the state an operation needs."""


class LeaseLostError(QueueError):
    """The lease on a message is no longer ours: it expired and another receiver holds it, or
    the message was acknowledged or dead-lettered already."""


class NoDeadLetterQueueError(QueueError):
    """The queue has no dead-letter queue (queues made by python-task-queue or by hand), so a
    message cannot be dead-lettered."""


class QueueUnreachableError(QueueError):
    """The queue could not be reached for longer than the worker's bound: the worker stops,
    since no task can be received, acknowledged or retried meanwhile."""


class QueueConfigError(QueueError):
    """The queue exists with a configuration (such as its redrive policy) different from the
    one asked for."""


class MessageError(TqflowError):
    """A task message cannot be turned into a function call.

    Retrying cannot fix it, so the worker moves such a message to the dead-letter queue at once,
    with this error's text as the reason.
    """


class UndecodableMessageError(MessageError):
    """The message body is not a task message tqflow or python-task-queue can read."""


class UnknownFunctionError(MessageError):
    """The task function named by a message cannot be imported."""


class BadArgumentsError(MessageError):
    """The message's arguments do not bind to the task function's signature."""


class TaskNotAllowedError(MessageError):
    """The message names a function outside the worker's allowed modules. Workers hold the
    batch's credentials, so a body naming any callable (``os:system``) is refused, not run."""


class MessageTooLargeError(MessageError):
    """A message body is over the queue backend's size limit."""


class ParameterError(TqflowError):
    """A parameter of a flow, a command or a worker that cannot be used as given (a batch name
    that cannot name a folder, a number of workers below one): refused before anything starts."""


class WorkerConfigError(TqflowError):
    """A worker lacks what a task asks of it (a ``cave`` client without a CAVE block): the
    message is fine, and is retried (another worker may have it), never dead-lettered at once."""


class ItemSourceError(TqflowError):
    """The work items cannot be read from the given source (missing file, no such column, a
    column whose values were already rounded, two sources at once)."""


class PermanentTaskError(TqflowError):
    """Raised by a task (or by tqflow about a task) when trying again cannot help: the item is
    dead-lettered at once, with this error's text as the reason, instead of being retried."""


class ResultNotJSONError(PermanentTaskError):
    """A task returned a value that cannot be stored as JSON: it would fail the same way on
    every retry."""


class TaskExitError(TqflowError):
    """A task raised ``SystemExit``, ``KeyboardInterrupt`` or another ``BaseException`` of
    its own: a failure of that task, not the end of the worker that ran it."""


class TaskTimeoutError(TqflowError):
    """A task ran past its time limit (``task_timeout_seconds``), or would have outlived the
    longest lease its queue allows (SQS: 12 hours from receipt), and was stopped. It is retried
    like any failure, and dead-lettered after ``max_receive_count`` attempts."""


class StorageError(TqflowError):
    """Reading or writing task outputs in cloud storage failed."""


class CorruptFileError(StorageError):
    """A file in storage is not what tqflow wrote there (not JSON). Its reader says what to
    do: an output is run again once deleted, a worker report is only a summary, and so on."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{url} is not valid JSON ({problem})")


class CredentialsError(TqflowError):
    """Credentials are missing, malformed or rejected."""


class CAVEQueryError(TqflowError):
    """A CAVE query names a table, column or filter the datastack does not have."""


class EnqueueInterruptedError(TqflowError):
    """The enqueue was stopped (Ctrl-C, SIGTERM) between two steps; what was sent is recorded,
    so running the same enqueue again sends the rest. ``result`` is what was queued so far."""

    def __init__(self, result: Any, remaining: int, batch: str):
        self.result = result
        self.remaining = remaining
        super().__init__(
            f"stopped after queueing {result.queued:,} tasks of batch {batch!r}; "
            f"{remaining:,} not queued yet. Run the same enqueue again to queue the rest "
            "(nothing already queued is sent twice)"
        )


class WorkersLostError(TqflowError):
    """Workers keep ending without finishing the queue."""


class WorkerNotStartedError(TqflowError):
    """A local worker was asked for while its warm-worker server was stopping (a Ctrl-C or
    SIGTERM reached it): no worker was started."""


class WorkersCannotStartError(TqflowError):
    """No worker of the batch's fleet could start: an image that cannot be pulled, runs no
    worker of the pool picks up, no capacity within the start timeout."""


class BatchTimeLimitError(TqflowError):
    """A batch passed the time limit it was given before its queue was drained."""


class DeadLettersError(TqflowError):
    """Items of the batch ended in the dead-letter queue."""


class ResourcePlanError(TqflowError):
    """The machine is unknown, or the pods asked for do not fit on it."""


class CLIInputError(TqflowError):
    """A command-line option has a value the command cannot use."""
