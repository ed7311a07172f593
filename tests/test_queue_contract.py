"""The Queue contract (DESIGN.md, "Queue"), run against every backend in QUEUE_BACKENDS.

Leases and delays are whole seconds here: SQS takes no fractions (the SQS backend rounds up).
Many receivers at once (no message delivered twice while its lease holds) is proven end to end,
with worker processes, in ``tests/reliability/test_many_writers.py``.
"""

from __future__ import annotations

import time

import pytest

from tests.support.helpers import wait_until
from tqflow.errors import LeaseLostError, MessageTooLargeError, QueueConfigError


def test_send_returns_how_many_were_sent(queue_factory):
    queue = queue_factory()
    assert queue.send(f"m{i}" for i in range(25)) == 25
    assert queue.counts().visible == 25


def test_receive_returns_each_body_with_receive_count_one(queue_factory):
    queue = queue_factory()
    queue.send(["a", "b"])
    leases = queue.receive(max_messages=10)
    assert sorted(lease.body for lease in leases) == ["a", "b"]
    assert {lease.receive_count for lease in leases} == {1}


def test_lease_hides_a_message_until_it_expires(queue_factory):
    queue = queue_factory()
    queue.send(["only"])
    assert len(queue.receive(lease_seconds=1)) == 1
    assert queue.receive() == []
    (again,) = wait_until(lambda: queue.receive(), timeout=5)
    assert again.body == "only"


def test_receive_count_increments_on_each_receive(queue_factory):
    queue = queue_factory()
    queue.send(["x"])
    counts = []
    for _ in range(3):
        (lease,) = queue.receive(lease_seconds=30)
        counts.append(lease.receive_count)
        queue.release(lease)
    assert counts == [1, 2, 3]


def test_new_receive_gets_a_new_receipt(queue_factory):
    queue = queue_factory()
    queue.send(["x"])
    (first,) = queue.receive(lease_seconds=30)
    queue.release(first)
    (second,) = queue.receive(lease_seconds=30)
    assert first.message_id == second.message_id
    assert first.receipt != second.receipt


def test_message_moves_to_dead_letters_after_exactly_max_receive_count_receives(queue_factory):
    queue = queue_factory(max_receive_count=3)
    queue.send(["poison"])
    for expected in (1, 2, 3):
        (lease,) = queue.receive(lease_seconds=30)
        assert lease.receive_count == expected
        queue.release(lease)  # not acknowledged: as if the task failed
    assert queue.counts().dead == 0
    assert queue.receive() == []
    counts = queue.counts()
    assert (counts.dead, counts.pending) == (1, 0)
    (dead,) = queue.dead_letters()
    assert dead.body == "poison"
    assert dead.receive_count == 3
    assert "max_receive_count=3" in dead.reason


def test_delayed_message_is_not_received_before_its_delay(queue_factory):
    queue = queue_factory()
    queue.send(["later"], delay_seconds=1)
    assert queue.counts().delayed == 1
    assert queue.receive() == []
    (lease,) = wait_until(lambda: queue.receive(), timeout=5)
    assert lease.body == "later"


def test_extend_of_an_acknowledged_message_raises_lease_lost(queue_factory):
    queue = queue_factory()
    queue.send(["x"])
    (lease,) = queue.receive(lease_seconds=30)
    queue.ack([lease])
    with pytest.raises(LeaseLostError):
        queue.extend(lease, 30)


def test_extend_keeps_a_message_hidden_past_its_first_lease(queue_factory):
    queue = queue_factory()
    queue.send(["long"])
    (lease,) = queue.receive(lease_seconds=1)
    queue.extend(lease, 30)
    time.sleep(1.5)
    assert queue.receive() == []
    assert queue.counts().in_flight == 1


def test_release_makes_a_message_visible_at_once(queue_factory):
    queue = queue_factory()
    queue.send(["x"])
    (lease,) = queue.receive(lease_seconds=300)
    queue.release(lease)
    (again,) = queue.receive()
    assert again.message_id == lease.message_id


def test_ack_deletes_messages(queue_factory):
    queue = queue_factory()
    queue.send(["a", "b", "c"])
    leases = queue.receive(max_messages=3)
    assert queue.ack(leases) == 3
    counts = queue.counts()
    assert (counts.pending, counts.dead) == (0, 0)


def test_dead_letter_moves_a_message_at_once_with_its_reason(queue_factory):
    queue = queue_factory(max_receive_count=5)
    queue.send(["not json"])
    (lease,) = queue.receive()
    assert queue.dead_letter(lease, "UndecodableMessageError: the body is not JSON")
    (dead,) = queue.dead_letters()
    assert dead.reason == "UndecodableMessageError: the body is not JSON"
    assert dead.receive_count == 1
    assert queue.counts().pending == 0


def test_counts_report_each_state(queue_factory):
    queue = queue_factory(max_receive_count=1)
    queue.send(["v1", "v2", "f", "dead"])
    queue.send(["d"], delay_seconds=60)
    leases = {lease.body: lease for lease in queue.receive(max_messages=4, lease_seconds=60)}
    queue.release(leases["v1"])
    queue.release(leases["v2"])
    queue.dead_letter(leases["dead"], "test")
    counts = queue.counts()
    assert (counts.visible, counts.in_flight, counts.delayed, counts.dead) == (2, 1, 1, 1)
    assert counts.pending == 4


def test_dead_letters_are_listed_without_being_consumed(queue_factory):
    queue = queue_factory()
    queue.send(["a", "b"])
    for lease in queue.receive(max_messages=2):
        queue.dead_letter(lease, "why")
    assert len(queue.dead_letters(limit=1)) == 1
    assert len(queue.dead_letters()) == 2
    assert queue.counts().dead == 2


def test_redrive_moves_dead_letters_back_with_receive_count_reset(queue_factory):
    queue = queue_factory(max_receive_count=1)
    queue.send(["a", "b", "c"])
    for lease in queue.receive(max_messages=3):
        queue.dead_letter(lease, "bug")
    assert queue.redrive(limit=2) == 2
    assert queue.counts().dead == 1
    leases = queue.receive(max_messages=10)
    assert len(leases) == 2
    assert {lease.receive_count for lease in leases} == {1}
    assert queue.redrive() == 1


def test_purge_empties_the_queue_and_keeps_dead_letters(queue_factory):
    queue = queue_factory()
    queue.send(["a", "b", "c"])
    (lease,) = queue.receive()
    queue.dead_letter(lease, "x")
    queue.purge()
    counts = queue.counts()
    assert (counts.pending, counts.dead) == (0, 1)


def test_purge_with_dead_letters_empties_both(queue_factory):
    queue = queue_factory()
    queue.send(["a", "b"])
    (lease,) = queue.receive()
    queue.dead_letter(lease, "x")
    queue.purge(dead_letters=True)
    counts = queue.counts()
    assert (counts.pending, counts.dead) == (0, 0)


def test_send_refuses_an_oversized_body_and_sends_nothing(queue_factory):
    queue = queue_factory()
    big = "x" * (queue.max_message_bytes + 1)
    with pytest.raises(MessageTooLargeError, match="message #1"):
        queue.send(["ok", big, "ok too"])
    assert queue.counts().pending == 0


def test_ensure_is_idempotent(queue_factory):
    queue = queue_factory()
    queue.send(["kept"])
    queue.ensure()
    assert queue.counts().visible == 1


def test_ensure_reports_a_different_redrive_policy(queue_factory, tmp_path):
    queue_factory(max_receive_count=5)
    with pytest.raises(QueueConfigError, match="max_receive_count=5"):
        queue_factory(max_receive_count=2)
