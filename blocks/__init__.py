"""tqflow's Prefect blocks.

Importing this package registers the block types with Prefect; the ``prefect.collections``
entry point makes a Prefect server in the same environment import it.
"""

from blocks.cave import CAVECredentials
from blocks.queues import LocalTaskQueue, SQSTaskQueue, TaskQueue
from blocks.storage import CloudFilesStorage
from tqflow.enqueue import CAVETableQuery
from tqflow.errors import PermanentTaskError, TqflowError

__all__ = [
    "CAVECredentials",
    "CAVETableQuery",
    "CloudFilesStorage",
    "LocalTaskQueue",
    "PermanentTaskError",
    "SQSTaskQueue",
    "TaskQueue",
    "TqflowError",
]
