"""Queue blocks: the Queue contract (`TaskQueue`) and its backends."""

from blocks.queues.base import DeadLetter, Lease, QueueCounts, TaskQueue
from blocks.queues.local import LocalTaskQueue

__all__ = ["DeadLetter", "Lease", "LocalTaskQueue", "QueueCounts", "TaskQueue"]
