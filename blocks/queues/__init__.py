"""Queue blocks: the Queue contract (`TaskQueue`) and its backends."""

from blocks.queues.base import TaskQueue
from blocks.queues.local import LocalTaskQueue
from blocks.queues.sqs import SQSTaskQueue
from tqflow.engine.contracts import DeadLetter, Lease, QueueCounts

__all__ = ["DeadLetter", "Lease", "LocalTaskQueue", "QueueCounts", "SQSTaskQueue", "TaskQueue"]
