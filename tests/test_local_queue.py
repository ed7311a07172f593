"""What the local queue does beyond the shared contract: receipts stay exact, as SQS's do not."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from blocks import LocalTaskQueue
from tests.support.helpers import wait_until
from tqflow.errors import LeaseLostError

pytestmark = pytest.mark.parametrize("backend", ["local"], indirect=True)


def test_extend_of_a_lease_taken_over_by_another_receiver_raises(queue_factory):
    queue = queue_factory()
    queue.send(["x"])
    (stale,) = queue.receive(lease_seconds=1)
    wait_until(lambda: queue.receive(lease_seconds=30), timeout=5)
    with pytest.raises(LeaseLostError):
        queue.extend(stale, 30)


def test_ack_with_a_stale_receipt_leaves_the_new_receivers_message(queue_factory):
    queue = queue_factory()
    queue.send(["x"])
    (stale,) = queue.receive(lease_seconds=1)
    (current,) = wait_until(lambda: queue.receive(lease_seconds=30), timeout=5)
    assert queue.ack([stale]) == 0
    assert queue.counts().in_flight == 1
    assert queue.ack([current]) == 1


def test_an_item_waiting_as_a_dead_letter_is_not_sent_again_but_its_neighbours_are(
    queue_factory,
):
    queue = queue_factory()
    assert queue.send(["a", "b"], dedup_ids=["b/1", "b/2"]) == 2
    for lease in queue.receive(max_messages=2, lease_seconds=30):
        if lease.body == "a":
            queue.dead_letter(lease, "bad")
        else:
            queue.ack([lease])
    # item 1 waits in the dead-letter queue, item 2 is done: both may be sent again, but a
    # second live message of item 1 would run beside its redriven dead letter
    assert queue.send(["a", "b", "c"], dedup_ids=["b/1", "b/2", "b/3"]) == 2
    assert queue.redrive() == 1
    bodies = sorted(lease.body for lease in queue.receive(max_messages=10, lease_seconds=30))
    assert bodies == ["a", "b", "c"]


def test_a_new_queue_file_another_process_is_writing_is_opened_when_it_is_free(backend, tmp_path):
    # A file still in rollback-journal mode (being set up by another process, here another
    # connection holding its write lock): SQLite answered "database is locked" at once, and
    # `tqflow enqueue` exited 1 while a `tqflow work` or `status` opened the same new queue.
    path = tmp_path / "queue.sqlite"
    other = sqlite3.connect(path, timeout=60, isolation_level=None)
    other.execute("CREATE TABLE setting_up (a)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO setting_up VALUES (1)")
    opened: dict = {}
    thread = threading.Thread(
        target=lambda: opened.update(exists=LocalTaskQueue(path=str(path)).exists())
    )
    thread.start()
    thread.join(timeout=0.5)  # still waiting on the lock, not failed
    other.execute("COMMIT")
    thread.join(timeout=60)
    assert opened == {"exists": False}  # opened, and no queue named tqflow in it yet
