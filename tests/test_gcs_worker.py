"""A worker on gs://, against a GCS stand-in that answers as GCS does (fake-gcs-server behind the
proxy that serves GCS's batch endpoint, tests/support/http_proxy.py): what it skips, what it
writes, and the requests it sends for it."""

from __future__ import annotations

import pytest

from tests.support.helpers import enqueue
from tqflow.engine.layout import output_path
from tqflow.engine.options import WorkerOptions
from tqflow.engine.worker import Worker
from tqflow.enqueue import enqueue_items


@pytest.fixture
def backend() -> str:
    return "local"


def gcs_requests(proxy) -> dict[str, int]:
    counts = proxy.counts()["forwarded"]
    return {kind: n for kind, n in counts.items() if "/storage/v1" in kind}


def test_an_enqueue_of_ten_items_checks_what_is_done_and_queues_them(
    queue_factory, gcs_bucket_storage
):
    queue = queue_factory()
    result = enqueue_items(queue, gcs_bucket_storage, "tests.tasks:square", range(10), "b")
    assert (result.queued, result.skipped_done) == (10, 0)


def test_a_worker_run_again_over_a_finished_gs_batch_skips_every_item_and_writes_nothing(
    queue_factory, gcs_bucket_storage, gcs_stand_in
):
    queue = queue_factory()
    enqueue_items(queue, gcs_bucket_storage, "tests.tasks:square", range(10), "b")
    options = WorkerOptions(idle_seconds=0.2, prefetch=10)
    first = Worker(queue, gcs_bucket_storage, options).run()
    assert first.outcomes["succeeded"] == 10
    finished = gcs_bucket_storage.get_json(output_path("b", "3"))["finished_at"]
    enqueue(queue, "tests.tasks:square", range(10))  # the same tasks again, past enqueue's check
    gcs_stand_in.reset()
    again = Worker(queue, gcs_bucket_storage, options).run()
    assert (again.outcomes["skipped"], again.outcomes["succeeded"]) == (10, 0)
    assert gcs_bucket_storage.get_json(output_path("b", "3"))["finished_at"] == finished
    sent = gcs_requests(gcs_stand_in)
    uploads = sum(n for kind, n in sent.items() if kind.startswith("POST /upload"))
    assert uploads <= 2, sent  # the worker's report, not ten outputs
    # the ten outputs were asked about in one request, with the receive that leased them
    assert sent.get("POST /batch/storage/v1", 0) == 1, sent
    assert not any(kind.startswith("GET /storage/v1/b/") and "/o/" in kind for kind in sent), sent
