"""``moto_server`` with SQS receives made atomic, and the message-move calls moto lacks: the
stand-in the tests start for Amazon SQS.

moto's ``receive_message`` looks at whether a message is visible and then marks it received,
with a deep copy in between and no lock, while its HTTP server answers each request on its own
thread. Two workers receiving at once can therefore both be handed one message: on a busy
machine 8 of 400 messages went to two of four workers. Amazon SQS may also deliver a message
twice ("occasionally"), but tqflow's tests measure the duplicates tqflow itself causes (leases
lost, releases raced), and those drown in moto's. Everything else is moto's own server, over
real HTTP.

One lock is held for each receive; a long poll waits without it, so one 20 s poll does not
hold up the others.

moto has no ``StartMessageMoveTask`` / ``ListMessageMoveTasks`` (SQS's server-side redrive of a
dead-letter queue). They are added here as the SQS API reference describes them: a task moves
the source queue's visible messages, attributes kept and receive counts starting anew, to
``DestinationArn`` (default: the queues whose redrive policy names the source); the list
answers the source's most recent task with its status and counts. A task here finishes before
its start call answers (SQS's run in the background at up to 500 messages a second).

Run as a script: ``python tests/support/atomic_moto.py -H 127.0.0.1 -p PORT`` (moto_server's options).
"""

from __future__ import annotations

import threading
import time
import uuid

from moto.core.responses import ActionResult
from moto.server import main
from moto.sqs.models import Queue, SQSBackend
from moto.sqs.responses import SQSResponse

_receiving = threading.Lock()
_receive_message = SQSBackend.receive_message
_wait_for_messages = Queue.wait_for_messages


def receive_message(self, *args, **kwargs):
    with _receiving:
        return _receive_message(self, *args, **kwargs)


def wait_for_messages(self, timeout):
    # Called only from inside receive_message (a long poll with nothing visible yet).
    _receiving.release()
    try:
        _wait_for_messages(self, timeout)
    finally:
        _receiving.acquire()


#: The message-move tasks started, newest last, by source queue ARN.
_move_tasks: dict[str, list[dict]] = {}


def _queue_by_arn(backend: SQSBackend, arn: str) -> Queue:
    for queue in backend.queues.values():
        if queue.queue_arn == arn:
            return queue
    from moto.sqs.exceptions import QueueDoesNotExist

    raise QueueDoesNotExist()


def start_message_move_task(self) -> ActionResult:
    backend = self.sqs_backend
    source = _queue_by_arn(backend, self._get_param("SourceArn"))
    destination_arn = self._get_param("DestinationArn")
    if destination_arn:
        destination = _queue_by_arn(backend, destination_arn)
    else:
        [destination] = backend.list_dead_letter_source_queues(source.name)
    with _receiving:
        moving = [m for m in source._messages if m.visible]
        for message in moving:
            backend.send_message(
                destination.name, message.body, message_attributes=message.message_attributes
            )
        source._messages = [m for m in source._messages if m not in moving]
    handle = uuid.uuid4().hex
    _move_tasks.setdefault(source.queue_arn, []).append(
        {
            "TaskHandle": handle,
            "Status": "COMPLETED",
            "SourceArn": source.queue_arn,
            "DestinationArn": destination.queue_arn,
            "ApproximateNumberOfMessagesMoved": len(moving),
            "ApproximateNumberOfMessagesToMove": len(moving),
            "StartedTimestamp": int(time.time() * 1000),
        }
    )
    return ActionResult({"TaskHandle": handle})


def list_message_move_tasks(self) -> ActionResult:
    tasks = _move_tasks.get(self._get_param("SourceArn"), [])
    newest = list(reversed(tasks))[: int(self._get_param("MaxResults") or 1)]
    return ActionResult({"Results": newest})


if __name__ == "__main__":
    SQSBackend.receive_message = receive_message
    Queue.wait_for_messages = wait_for_messages
    SQSResponse.start_message_move_task = start_message_move_task
    SQSResponse.list_message_move_tasks = list_message_move_tasks
    main()
