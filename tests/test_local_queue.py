"""What the local queue does beyond the shared contract: receipts stay exact, as SQS's do not."""

from __future__ import annotations

import pytest

from tests.helpers import wait_until
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
