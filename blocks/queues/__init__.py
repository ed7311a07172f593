"""Queue blocks: the Queue contract (`TaskQueue`) and its backends."""

from typing import Union

from blocks.queues.base import TaskQueue
from blocks.queues.local import LocalTaskQueue
from blocks.queues.sqs import SQSTaskQueue
from tqflow.engine.contracts import DeadLetter, Lease, QueueCounts

#: A flow parameter that takes a queue: a block of either backend, or a saved block's slug
#: (``"sqs-task-queue/prod"``). The backends are named, not the abstract `TaskQueue`: the Prefect
#: UI's run form offers a type's saved blocks in a picker, and has none of an abstract type.
QueueParameter = Union[LocalTaskQueue, SQSTaskQueue, str]

__all__ = [
    "DeadLetter",
    "Lease",
    "LocalTaskQueue",
    "QueueCounts",
    "QueueParameter",
    "SQSTaskQueue",
    "TaskQueue",
]
