"""``moto_server`` with SQS receives made atomic: the stand-in the tests start for Amazon SQS.

moto's ``receive_message`` looks at whether a message is visible and then marks it received,
with a deep copy in between and no lock, while its HTTP server answers each request on its own
thread. Two workers receiving at once can therefore both be handed one message: on a busy
machine 8 of 400 messages went to two of four workers. Amazon SQS may also deliver a message
twice ("occasionally"), but tqflow's tests measure the duplicates tqflow itself causes (leases
lost, releases raced), and those drown in moto's. Everything else is moto's own server, over
real HTTP.

One lock is held for each receive; a long poll waits without it, so one 20 s poll does not
hold up the others.

Run as a script: ``python tests/atomic_moto.py -H 127.0.0.1 -p PORT`` (moto_server's options).
"""

from __future__ import annotations

import threading

from moto.server import main
from moto.sqs.models import Queue, SQSBackend

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


if __name__ == "__main__":
    SQSBackend.receive_message = receive_message
    Queue.wait_for_messages = wait_for_messages
    main()
