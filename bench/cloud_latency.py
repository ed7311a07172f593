"""Scenario: a batch's outputs in a bucket 30 ms away. fake-gcs-server (concurrent; its
filesystem backend) behind `tests/support/http_proxy.py`, which delays every request by 0 or
30 ms and answers listings at a bucket's pace (0.27 ms a name: 0.3 s a page of 1,000 at 30 ms,
Google's 300 s for 10^6 in one sequence of pages); at 10^4 and 10^5 outputs, side by side:

- **analysis**: every output into one table, as the code before shards did it (one listing,
  then each output read) and as it does now (the shards read, the outputs listed in parallel
  ranges cut at the shards' keys, one by one only what no shard holds); seconds, GCS requests
  per item, and the 30 ms / 0 ms ratio (1.0: latency hidden). 10^6 is extrapolated along the
  measured slope from 10^4 to 10^5;
- **resume check**: an enqueue's check of which items are done, as one listing and as it is
  now (`done_outputs`: ranges listed in parallel);
- **status**: `read_reports` of a batch with 1,000 worker reports, what `tqflow status` and
  each dashboard update read: the first read (no digest yet), and the next after a tenth of
  the reports changed (1,000 workers write every 100 s; the dashboard reads every 10 s).

The outputs, shards and reports are written straight to fake-gcs-server first (not timed).
Each measurement runs in a fresh process, so no client keeps a connection to the last proxy.

    python -m bench.run cloud-latency            # 10^4 and 10^5 (~14 minutes on 2 cores)
    python -m bench.run cloud-latency --quick    # 2,000
    python -m bench.cloud_latency 10000          # these sizes only; writes nothing
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

SIZES = (10_000, 100_000)
QUICK_SIZES = (2_000,)
DELAYS = (0.0, 0.03)
REPORTS = 1_000
BUCKET = "tqflow-bench"
#: The first item's key (root IDs are 18 digits).
FIRST_KEY = 864691135000000000
#: Threads the setup writes with, straight to the server.
SETUP_THREADS = 40


def _cloudfiles(folder: str, threads: int) -> Any:
    from cloudfiles import CloudFiles
    from google.auth.credentials import AnonymousCredentials

    return CloudFiles(
        f"gs://{BUCKET}/{folder}", secrets=AnonymousCredentials(), num_threads=threads
    )


def write_batch(endpoint: str, folder: str, n: int) -> None:
    """``n`` outputs as a worker writes them, their shards, and `REPORTS` worker reports."""
    from tqflow.engine.layout import output_path, report_path, shard_path
    from tqflow.engine.messages import TaskMessage
    from tqflow.engine.outputs import output_record
    from tqflow.engine.shards import RECORDS_PER_SHARD

    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    cf = _cloudfiles(folder, SETUP_THREADS)
    records = []
    for i in range(n):
        key = str(FIRST_KEY + i)
        message = TaskMessage(fn="tqflow.examples:skeleton_stats", key=key, batch="b", kwargs={})
        result = {"root_id": int(key), "cable_length": i * 1.5, "branch_points": i % 97}
        records.append(output_record(message, result, attempt=1, seconds=0.2, worker="w"))
    files = [(output_path("b", r["key"]), json.dumps(r).encode()) for r in records]
    for number, start in enumerate(range(0, n, RECORDS_PER_SHARD)):
        shard = {"records": records[start : start + RECORDS_PER_SHARD]}
        files.append((shard_path("b", "w", number), json.dumps(shard).encode()))
    report = {"worker": "w", "batch": "b", "counts": {"succeeded": n // REPORTS}}
    for r in range(REPORTS):
        files.append((report_path("b", f"w{r}", 1), json.dumps({**report, "report": r}).encode()))
    cf.puts(files, content_type="application/json", compress=None)


def measure(endpoint: str, folder: str, counts_url: str, n: int) -> dict[str, float]:
    """In this process: the analysis before and after shards, the listing, the status read;
    the requests the proxy forwarded for the analysis with shards."""
    import httpx

    from blocks.storage import CloudFilesStorage
    from tqflow.engine.layout import outputs_prefix, report_path, reports_digest_path
    from tqflow.engine.reports import read_reports
    from tqflow.enqueue import done_outputs
    from tqflow.results.shard_index import ShardIndex
    from tqflow.results.table import build_results_table, output_paths

    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    storage = CloudFilesStorage(cloudpath=f"gs://{BUCKET}/{folder}")
    figures: dict[str, float] = {}
    keys = [str(FIRST_KEY + i) for i in range(n)]
    with tempfile.TemporaryDirectory() as local:
        started = time.perf_counter()
        listed = list(storage.list(outputs_prefix("b")))
        figures["list_sequential_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        done = done_outputs(storage, "b", keys)
        figures["resume_seconds"] = time.perf_counter() - started
        assert len(done) == len(listed) == n, (len(done), len(listed), n)
        httpx.post(counts_url.replace("counts", "reset"), timeout=60)
        started = time.perf_counter()
        shards = ShardIndex.build(storage, "b", local)
        paths = output_paths(storage, "b", shards.keys())
        table = build_results_table(storage, paths, local, shards=shards)
        figures["analysis_seconds"] = time.perf_counter() - started
        counts = httpx.get(counts_url, timeout=60).json()["forwarded"]
        figures["analysis_requests"] = sum(counts.values())
        assert table.rows == len(paths), (table.rows, len(paths))
        shards.close()
        os.unlink(table.path)
        started = time.perf_counter()
        before = build_results_table(storage, output_paths(storage, "b"), local)  # one by one
        figures["analysis_before_seconds"] = time.perf_counter() - started
        assert before.rows == len(paths)
    # The first reader's view: no digest yet. (fake-gcs-server has no batch API, through
    # which cloud-files deletes on GCS: the digest is overwritten empty instead.)
    storage.put_json(reports_digest_path("b"), {"reports": {}})
    started = time.perf_counter()
    reports = read_reports(storage, "b")
    figures["status_cold_seconds"] = time.perf_counter() - started
    assert len(reports) == REPORTS
    # The next dashboard update: at 1,000 workers each writes its report every 100 s
    # (report_seconds_for), so a tenth of them has written in the 10 s since the last update.
    version = int(time.time() * 1000) % 10**8
    for r in range(0, REPORTS, 10):
        report = {"worker": "w", "batch": "b", "report": r, "succeeded": version}
        storage.put_json(report_path("b", f"w{r}", version), report)
    started = time.perf_counter()
    reports = read_reports(storage, "b")
    figures["status_seconds"] = time.perf_counter() - started
    assert len(reports) == REPORTS
    return figures


def run(runs: int = 1, quick: bool = False, sizes: tuple[int, ...] | None = None) -> list[dict]:
    """``runs`` is the other scenarios' knob: each size runs once."""
    from tests.support.services import FakeGCS, http_proxy

    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    by: dict[tuple[int, float], dict[str, float]] = {}
    with FakeGCS(BUCKET) as gcs:
        for n in sizes:
            folder = uuid.uuid4().hex[:8]
            _in_process("write", gcs.endpoint, folder, str(n))
            for delay in DELAYS:
                with http_proxy(gcs.endpoint, delay_seconds=delay, gcs=gcs) as proxy:
                    counts = f"{proxy.endpoint}/__proxy__/counts"
                    by[n, delay] = json.loads(
                        _in_process("measure", proxy.endpoint, folder, counts, str(n))
                    )
    return rows_from(by, sizes)


def rows_from(by: dict[tuple[int, float], dict[str, float]], sizes: tuple[int, ...]) -> list[dict]:
    fast_delay, slow_delay = DELAYS
    ms = f"{slow_delay * 1000:.0f} ms"
    rows: list[dict[str, Any]] = []
    for n in sizes:
        slow, fast = by[n, slow_delay], by[n, fast_delay]
        hidden = slow["analysis_seconds"] / fast["analysis_seconds"]
        rows += [
            {
                "measure": f"{n:,} outputs at {ms}: analysis before shards / now",
                "value": f"{slow['analysis_before_seconds']:.1f} / {slow['analysis_seconds']:.1f}"
                f" ({slow['analysis_before_seconds'] / slow['analysis_seconds']:.1f}x)",
                "unit": "s",
            },
            {
                "measure": f"{n:,} outputs: analysis now, {ms} / 0 ms",
                "value": f"{hidden:.2f} ({slow['analysis_seconds']:.1f} / "
                f"{fast['analysis_seconds']:.1f} s)",
                "unit": "",
                "target": "<= 1.5 (latency hidden)",
                "met": hidden <= 1.5,
            },
            {
                "measure": f"{n:,} outputs: GCS requests per item, analysis now",
                "value": round(slow["analysis_requests"] / n, 4),
                "unit": "requests",
            },
            {
                "measure": f"{n:,} outputs at {ms}: the resume check, one listing / ranges "
                "listed in parallel",
                "value": f"{slow['list_sequential_seconds']:.1f} / {slow['resume_seconds']:.1f}",
                "unit": "s",
                "target": "<= 30 s at 10^5",
                "met": slow["resume_seconds"] <= 30 if n >= 100_000 else None,
            },
            {
                "measure": f"{REPORTS:,} worker reports at {ms}: the first status (no digest)",
                "value": round(slow["status_cold_seconds"], 2),
                "unit": "s",
            },
            {
                "measure": f"{REPORTS:,} worker reports at {ms}: status / a dashboard update "
                "after a tenth changed (the digest read first)",
                "value": round(slow["status_seconds"], 2),
                "unit": "s",
                "target": "<= 2 s",
                "met": slow["status_seconds"] <= 2,
            },
        ]
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        rise = by[large, slow_delay]["analysis_seconds"] - by[small, slow_delay]["analysis_seconds"]
        slope = rise / (large - small)
        at_million = by[large, slow_delay]["analysis_seconds"] + slope * (1_000_000 - large)
        rows.append(
            {
                "measure": f"10^6 outputs at {ms}: analysis now, extrapolated along the slope "
                f"from {small:,} to {large:,} ({slope * 1000:.2f} ms an item)",
                "value": round(at_million),
                "unit": "s",
                "target": "<= 180 s",
                "met": at_million <= 180,
            }
        )
    return rows


def _in_process(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bench.cloud_latency", "--step", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


if __name__ == "__main__":
    if sys.argv[1:2] == ["--step"]:
        step, endpoint, folder, *extra = sys.argv[2:]
        import logging

        logging.getLogger("tqflow").setLevel(logging.WARNING)
        if step == "write":
            write_batch(endpoint, folder, int(extra[0]))
        else:
            print(json.dumps(measure(endpoint, folder, extra[0], int(extra[1]))))
    else:
        from bench.run import table

        rows = run(sizes=tuple(int(a) for a in sys.argv[1:]) or None)
        print(table([{"scenario": "cloud-latency", **row} for row in rows]))
