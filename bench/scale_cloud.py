"""Scenario 6: a batch on the cloud stand-ins, counted in requests: SQS on a moto server and
outputs on gcp-storage-emulator, at 1,000 and 2,000 items.

Clouds bill per request, and a request per item where one per thousand would do is what makes a
10^6-item batch slow and dear. Every HTTP request this process sends is counted, by service
(urllib3 underneath botocore and google-cloud-storage alike): the enqueue, a drain by two
in-process workers, and the resume check (the same enqueue again with every output present:
nothing queued, and the outputs listed, not checked one by one). Nothing may be lost: the batch
ends with one output per item.

    python -m bench.run scale-cloud            # 1k and 2k items (~14 minutes on 2 cores)
    python -m bench.run scale-cloud --quick    # 500
    python -m bench.scale_cloud 2000           # these sizes only; writes nothing

The stand-ins are slow servers, and they set the sizes: moto answers a SendMessageBatch in
~0.3 s at 1,000 queued messages and slower as its queue grows (an enqueue of 5,000 did not
finish in 10 minutes), and the emulator takes ~15 writes a second here, so 100,000 items
would take days (issue 17 asked for 10k and 100k). The seconds are theirs; the requests per
item are what carries over to SQS and GCS, and they do not depend on N but for the listing's
pages. SQS takes at most 10 messages per send, receive and delete: 0.3 requests per task is
its floor, and the fixed requests (queue set-up, the workers' last empty polls, deletes sent
before 10 have gathered when tasks are slow) come on top.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any, Iterator
from urllib.parse import urlsplit

from bench.common import moto_server
from tests.support.services import StorageEmulator

SIZES = (1_000, 2_000)
QUICK_SIZES = (500,)
FN = "bench.tasks:noop"
BUCKET = "tqflow-bench"
#: Issue 17's targets at 100k items.
SQS_PER_TASK = 0.3
RESUME_REQUESTS_PER_ITEM = 1 / 500


@contextlib.contextmanager
def counting_requests(ports: dict[int, str]) -> Iterator[Counter]:
    """Count every HTTP request this process sends to the given ports, by service name."""
    from urllib3.connectionpool import HTTPConnectionPool

    counted: Counter = Counter()
    lock = threading.Lock()
    original = HTTPConnectionPool.urlopen

    def counting(self, method, url, *args, **kwargs):
        service = ports.get(self.port)
        if service is not None:
            with lock:
                counted[service] += 1
        return original(self, method, url, *args, **kwargs)

    HTTPConnectionPool.urlopen = counting
    try:
        yield counted
    finally:
        HTTPConnectionPool.urlopen = original


def _blocks(moto: str, n: int) -> tuple[Any, Any]:
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters
    from prefect_gcp import GcpCredentials

    from blocks import CloudFilesStorage
    from blocks.queues.sqs import SQSTaskQueue
    from tests.support.cloud import service_account_info

    credentials = AwsCredentials(
        aws_access_key_id="bench-key-id",
        aws_secret_access_key="bench-secret-key",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=moto),
    )
    name = f"scale-{n}-{uuid.uuid4().hex[:6]}"
    queue = SQSTaskQueue(
        aws_credentials=credentials, queue_name=name, wait_seconds=1, allowed_modules=["bench"]
    )
    storage = CloudFilesStorage(
        cloudpath=f"gs://{BUCKET}/{name}",
        gcp_credentials=GcpCredentials(service_account_info=service_account_info()),
    )
    return queue, storage


def measure(n: int, moto: str, emulator: str) -> dict[str, Any]:
    """Enqueue, drain and resume-check ``n`` items; seconds and requests of each stage."""
    from tqflow.engine.layout import outputs_prefix
    from tqflow.engine.options import WorkerOptions
    from tqflow.engine.worker import Worker
    from tqflow.enqueue import enqueue_items

    ports = {urlsplit(moto).port: "sqs", urlsplit(emulator).port: "storage"}
    queue, storage = _blocks(moto, n)
    queue.ensure()
    found: dict[str, Any] = {}
    with counting_requests(ports) as counted:

        def stage(name: str, run: Any) -> Any:
            counted.clear()
            started = time.perf_counter()
            value = run()
            found[name] = {"seconds": time.perf_counter() - started, **counted}
            print(f"  {n:>9,}  {name:<16} {found[name]['seconds']:8.1f} s  {dict(counted)}")
            return value

        sent = stage("enqueue", lambda: enqueue_items(queue, storage, FN, range(n), "scale"))

        def drain() -> None:
            workers = [Worker(queue, storage, WorkerOptions(idle_seconds=3)) for _ in range(2)]
            threads = [threading.Thread(target=w.run) for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            found["drained"] = sum(w.stats.succeeded for w in workers)

        stage("drain", drain)
        again = stage("resume check", lambda: enqueue_items(queue, storage, FN, range(n), "scale"))
    outputs = sum(1 for p in storage.list(outputs_prefix("scale")) if p.endswith(".json"))
    found.update(queued=sent.queued, queued_again=again.queued, outputs=outputs)
    return found


def rows_from(by_size: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for n, found in sorted(by_size.items()):
        sqs = sum(found[s].get("sqs", 0) for s in ("enqueue", "drain", "resume check"))
        resume = found["resume check"].get("storage", 0)
        rows += [
            {
                "measure": f"cloud stand-ins, {n:,}: enqueue / drain / resume check",
                "value": " / ".join(
                    f"{found[s]['seconds']:.0f}" for s in ("enqueue", "drain", "resume check")
                ),
                "unit": "s",
            },
            {
                "measure": f"cloud stand-ins, {n:,}: SQS requests per task, end to end",
                "value": round(sqs / n, 3),
                "unit": "requests",
                "target": f"<= {SQS_PER_TASK} (SQS's floor: 10 messages a request)",
                "met": sqs / n <= SQS_PER_TASK,
            },
            {
                "measure": f"cloud stand-ins, {n:,}: storage requests of the resume check",
                "value": resume,
                "unit": "requests",
                "target": f"<= N/500 = {n * RESUME_REQUESTS_PER_ITEM:.0f}",
                "met": resume <= n * RESUME_REQUESTS_PER_ITEM,
            },
            {
                "measure": f"cloud stand-ins, {n:,}: storage requests per task (drain)",
                "value": round(found["drain"].get("storage", 0) / n, 2),
                "unit": "requests",
            },
            {
                "measure": f"cloud stand-ins, {n:,}: outputs / queued / queued again",
                "value": f"{found['outputs']:,} / {found['queued']:,} / {found['queued_again']}",
                "unit": "",
                "target": "nothing lost, nothing queued twice",
                "met": found["outputs"] == n == found["queued"] and found["queued_again"] == 0,
            },
        ]
    return rows


def run(runs: int = 1, quick: bool = False, sizes: tuple[int, ...] | None = None) -> list[dict]:
    """``runs`` is the other scenarios' knob: each size runs once."""
    import logging

    logging.getLogger("tqflow").setLevel(logging.WARNING)
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    emulator = StorageEmulator(BUCKET)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    with moto_server() as moto:
        emulator.start()
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.endpoint
        try:
            by_size = {n: measure(n, moto, emulator.endpoint) for n in sizes}
        finally:
            emulator.stop()
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
    return rows_from(by_size)


if __name__ == "__main__":
    from bench.run import table

    rows = run(sizes=tuple(int(a) for a in sys.argv[1:]) or None)
    print(table([{"scenario": "scale-cloud", **row} for row in rows]))
