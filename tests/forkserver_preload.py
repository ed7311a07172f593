"""Imported once by the forkserver that `tests.forked_workers` forks worker processes from: imports
the worker and builds each block model once (pydantic builds a model's validator on first use,
~0.7 s), so every forked worker starts warm."""

from blocks import CloudFilesStorage, LocalTaskQueue
from blocks.queues.sqs import SQSTaskQueue
from blocks.specs import block_from_spec, block_spec
from flows import worker_process  # noqa: F401  (imported here to be inherited)
from tests import tasks  # noqa: F401

for block in (LocalTaskQueue(path="/nonexistent/warm.sqlite"), SQSTaskQueue(), CloudFilesStorage()):
    block_from_spec(block_spec(block))
