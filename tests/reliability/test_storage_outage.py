"""Reliability: the storage service goes away mid-batch and comes back. Storage here is a
gcp-storage-emulator that keeps its objects on disk, reached through a TCP proxy that is cut
(connections refused and reset) and restored on the same port."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from prefect_gcp import GcpCredentials

from blocks import CloudFilesStorage
from tests.reliability.conftest import scaled
from tests.support.cloud import service_account_info
from tests.support.helpers import enqueue, wait_until
from tests.support.services import StorageEmulator, TcpProxy
from tqflow.engine.layout import outputs_prefix

BUCKET = "outage-bucket"
ITEMS = scaled(80, 600)
OUTAGE_SECONDS = scaled(5, 10)


class StorageService:
    """A gcp-storage-emulator keeping its objects on disk (so they can be counted while it is
    unreachable), reached through a proxy whose cut is the outage."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.emulator = StorageEmulator(
            BUCKET, folder=folder, log=folder.parent / "storage-service.log"
        )
        self.emulator.start()
        self.proxy = TcpProxy(self.emulator.port)
        self.proxy.restore()

    def stop(self) -> None:
        self.proxy.cut()

    def start(self) -> None:
        self.proxy.restore()

    def objects_on_disk(self, prefix: str) -> int:
        """Objects stored under ``prefix``, counted on disk: works while the service is down."""
        return sum(1 for _ in (self.folder / ".cloudstorage" / BUCKET).glob(f"{prefix}*.json"))


@pytest.fixture
def storage_service(tmp_path, monkeypatch) -> Iterator[StorageService]:
    service = StorageService(tmp_path / "gcs")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", service.proxy.endpoint)
    yield service
    service.proxy.cut()
    service.emulator.stop()


def test_no_message_is_acknowledged_without_its_output_through_a_storage_outage(
    queue_factory, storage_service, forked_workers, tmp_path, figure
):
    storage = CloudFilesStorage(
        cloudpath=f"gs://{BUCKET}/outage",
        gcp_credentials=GcpCredentials(service_account_info=service_account_info()),
    )
    queue = queue_factory(lease_seconds=5, max_receive_count=3)
    log_dir = tmp_path / "executions"
    log_dir.mkdir()
    enqueue(queue, "tests.tasks:counted", range(ITEMS), log_dir=str(log_dir), seconds=0.03)
    prefix = "outage/" + outputs_prefix("b")

    def acknowledged() -> int:
        counts = queue.counts()
        return ITEMS - counts.pending - counts.dead

    def check_no_ack_without_output() -> None:
        acked = acknowledged()  # first: outputs only grow, so a later count can only be larger
        assert storage_service.objects_on_disk(prefix) >= acked

    workers = [forked_workers.start(queue, storage, idle_seconds=1) for _ in range(2)]
    wait_until(lambda: storage_service.objects_on_disk(prefix) >= ITEMS // 4, timeout=120)
    storage_service.stop()
    went_down = time.monotonic()
    while time.monotonic() - went_down < OUTAGE_SECONDS:
        check_no_ack_without_output()
        time.sleep(0.25)
    acked_during_outage = acknowledged()
    storage_service.start()
    came_back = time.monotonic()
    stats = [forked_workers.wait(w, timeout=300) for w in workers]
    recovery_seconds = time.monotonic() - came_back

    check_no_ack_without_output()
    counts = queue.counts()
    assert (counts.pending, counts.dead) == (0, 0)
    assert storage_service.objects_on_disk(prefix) == ITEMS
    assert sum(s["succeeded"] for s in stats) + sum(s["skipped"] for s in stats) >= ITEMS
    figure(
        "5. Storage outage mid-batch",
        trials=1,
        items=ITEMS,
        lost=ITEMS - storage_service.objects_on_disk(prefix),
        duplicated=0,
        dead_lettered=counts.dead,
        recovery_seconds=round(recovery_seconds, 1),
        notes=f"storage down {OUTAGE_SECONDS} s; {acked_during_outage} acknowledged by its end, "
        f"each with its output; {sum(s['failed'] for s in stats)} attempts failed",
    )
