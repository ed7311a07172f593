"""Scenario 7: an enqueue interrupted at a random point and run again leaves one live message
per item: the real ``tqflow enqueue`` command in its own process, stopped once by SIGINT
(Ctrl-C) and once by SIGKILL during its send, then run again as written.

    python -m bench.run resume            # 100,000 local items, 1,000 on SQS (moto)
    python -m bench.run resume --quick    # 10,000 and 300

The local queue deduplicates in SQLite: exactly one live message per item, whatever the signal.
SQS cannot deduplicate; the enqueue keeps a per-batch record of the steps it sent, committed as
it goes, and resumes after it: SIGINT ends a step before stopping (no duplicates), while a
SIGKILL between a step's send and its record re-sends at most that one step. moto sets the SQS
size: it slows as its queue grows (tests/test_enqueue_resume.py's notes), and reading 1,000
messages back to count their keys takes minutes; the record's rule does not depend on N.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {"local": 100_000, "sqs": 1_000}
QUICK_SIZES = {"local": 10_000, "sqs": 300}
STEPS = {"local": 1_000, "sqs": 50}
SIGNALS = {"SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}


def measure(backend: str, signame: str, n: int, moto: str | None) -> dict[str, Any]:
    from tests.support.helpers import wait_until
    from tests.test_enqueue_resume import enqueue_command, live_keys, make_target

    step = STEPS[backend]
    with tempfile.TemporaryDirectory(prefix="tqflow-resume-") as tmp:
        folder = Path(tmp)
        queue, options, env = make_target(backend, folder / "data", moto)
        roots = [864691135000000000 + 7 * i for i in range(n)]
        items_file = folder / "roots.txt"
        items_file.write_text("\n".join(map(str, roots)) + "\n")
        stop_at = random.randint(1, n // 2)
        first = subprocess.Popen(
            enqueue_command(items_file, options, step),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(
            lambda: (
                first.poll() is not None or (queue.exists() and queue.counts().visible >= stop_at)
            ),
            timeout=1800,
            every=0.01 if backend == "local" else 0.2,
        )
        interrupted = first.poll() is None
        first.send_signal(SIGNALS[signame])
        first.wait(timeout=600)
        queued_before = queue.counts().visible
        started = time.perf_counter()
        again = subprocess.run(
            enqueue_command(items_file, options, step), env=env, capture_output=True, text=True
        )
        rerun_seconds = time.perf_counter() - started
        if again.returncode != 0:
            raise RuntimeError(f"the second enqueue failed: {again.stdout}{again.stderr}")
        keys = live_keys(queue)
    found = {
        "items": n,
        "interrupted_at": queued_before if interrupted else None,
        "rerun_seconds": rerun_seconds,
        "live": sum(keys.values()),
        "missing": len({str(r) for r in roots} - set(keys)),
        "duplicates": sum(keys.values()) - len(keys),
        "step": step,
    }
    print(f"  {backend:<5} {signame:<7} {n:>9,}  {found}", flush=True)
    return found


def rows_from(found: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for (backend, signame), f in found.items():
        allowed = f["step"] if (backend, signame) == ("sqs", "SIGKILL") else 0
        rows.append(
            {
                "measure": (
                    f"{backend} {f['items']:,}, {signame} after {f['interrupted_at'] or 0:,} "
                    "queued, run again: live messages"
                ),
                "value": f"{f['live']:,} ({f['missing']} missing, {f['duplicates']} twice)",
                "unit": "",
                "target": "one per item" + (f", <= {allowed} twice (one step)" if allowed else ""),
                "met": f["interrupted_at"] is not None
                and f["missing"] == 0
                and f["duplicates"] <= allowed,
            }
        )
    return rows


def run(runs: int = 1, quick: bool = False) -> list[dict]:
    """``runs`` is the other scenarios' knob: each case runs once."""
    from prefect.testing.utilities import prefect_test_harness

    from bench.common import moto_server

    sizes = QUICK_SIZES if quick else SIZES
    found = {}
    for signame in SIGNALS:
        found[("local", signame)] = measure("local", signame, sizes["local"], None)
    with moto_server() as moto, prefect_test_harness(server_startup_timeout=180):
        for signame in SIGNALS:
            found[("sqs", signame)] = measure("sqs", signame, sizes["sqs"], moto)
    return rows_from(found)


if __name__ == "__main__":
    from bench.run import table

    print(table([{"scenario": "resume", **row} for row in run(quick="--quick" in sys.argv)]))
    os._exit(0)
