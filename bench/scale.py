"""Scenario 5: what each stage of a batch costs per item, from 10,000 to 1,000,000 items.

On the embedded setup (local SQLite queue, local folder), with a no-op task, each stage is timed
on its own, in a fresh process (so its peak RSS is its own): enqueue; the drain by 2 worker
processes (from when both have started draining to an empty queue: start-up is not counted);
the resume check (the same enqueue again, every output present: nothing queued); one monitor
poll (the queue's counts); ``tqflow status`` (in process, warm); ``dead-letters list`` with a
tenth of the batch dead-lettered; and the analysis (outputs into one parquet table, statistics
and plot). Beside them the raw limits of the machine at the same N: SQLite inserts, and
writing, listing and reading N small files.

    python -m bench.run scale           # 10k, 100k and 1M items (~25 minutes on 2 cores)
    python -m bench.run scale --quick   # 10k and 100k
    python -m bench.scale 10000 100000  # these sizes only; writes nothing

A stage is flat when its cost per item at the largest N is within 1.5x of its cost at the
smallest (issue target); ``bench/scale.png`` plots cost per item against N, log-log.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from bench.common import REPO, child_env

SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
BATCH = "scale"
FN = "bench.tasks:noop"
#: Stages and what each reports, in the order they run.
STAGES = (
    "enqueue",
    "drain, 2 workers",
    "resume check",
    "monitor poll",
    "status",
    "dead-letters list",
    "analysis",
    "raw: SQLite insert",
    "raw: write files",
    "raw: list files",
    "raw: read files",
)
#: Cost per item at the largest N within this factor of the smallest: flat.
FLAT = 1.5


def _blocks(folder: Path) -> tuple[Any, Any]:
    from blocks import CloudFilesStorage, LocalTaskQueue

    queue = LocalTaskQueue(path=str(folder / "queue.sqlite"), queue_name=BATCH, wait_seconds=0)
    return queue, CloudFilesStorage(cloudpath=f"file://{folder}")


# -- the stages, each run by `python -m bench.scale stage NAME FOLDER N` ----------------------


def _enqueue(folder: Path, n: int) -> dict[str, Any]:
    from tqflow.enqueue import enqueue_items

    queue, storage = _blocks(folder)
    import bench.tasks  # noqa: F401  (imported by the enqueue otherwise: not its cost)

    started = time.perf_counter()
    result = enqueue_items(queue, storage, FN, range(n), BATCH)
    return {
        "seconds": time.perf_counter() - started,
        "queued": result.queued,
        "skipped_done": result.skipped_done,
    }


def _drain(folder: Path, n: int) -> dict[str, Any]:
    """2 worker processes drain the queue; timed from when both have started draining (each
    logs "draining" once it has imported what it needs) to an empty queue."""
    from tqflow.engine.process import spawn

    queue, storage = _blocks(folder)
    options = {"idle_seconds": 1.0, "progress_seconds": 3600.0}
    logs = [folder / f"worker-{i}.log" for i in range(2)]
    workers = []
    for log in logs:
        with open(log, "w") as stderr:
            workers.append(
                spawn(
                    queue,
                    storage,
                    options,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=child_env(),
                )
            )
    started = done = None
    rss: dict[int, list[float]] = {w.pid: [] for w in workers}
    while any(w.poll() is None for w in workers):
        now = time.perf_counter()
        if started is None and all("draining" in log.read_text() for log in logs):
            started = now
        pending = queue.counts().pending
        if pending == 0 and done is None:
            done = now
        if pending <= 0.9 * n:  # warm: past the first tenth of the batch
            for w in workers:
                mib = _rss_mib(w.pid)
                if mib is not None:
                    rss[w.pid].append(mib)
        time.sleep(0.1)
    assert queue.counts().pending == 0, "workers ended with tasks left"
    if started is None or done is None or done < started:  # one worker drained it all alone
        raise RuntimeError(
            f"{n:,} items drained before both workers were draining: too few to time a "
            "2-worker drain; run the scale scenario at 10,000 items or more"
        )
    growth = max(
        (samples[-1] / samples[0] - 1 for samples in rss.values() if len(samples) >= 2),
        default=0.0,
    )
    peak = max((max(s) for s in rss.values() if s), default=0.0)
    return {"seconds": done - started, "worker_peak_rss_mib": peak, "worker_rss_growth": growth}


def _monitor_poll(folder: Path, n: int) -> dict[str, Any]:
    queue, _ = _blocks(folder)
    return {"seconds": _best_of(3, queue.counts)}


def _status(folder: Path, n: int) -> dict[str, Any]:
    """``tqflow status`` itself, in this process (typer's runner): the second call, once the
    first has imported what it needs."""
    from typer.testing import CliRunner

    from flows.cli import app

    def status() -> None:
        result = CliRunner().invoke(app, ["status", "--data", str(folder), "--batch", BATCH])
        assert result.exit_code == 0, result.output

    return {"seconds": _best_of(2, status)}


def _dead_letters(folder: Path, n: int) -> dict[str, Any]:
    from blocks import LocalTaskQueue
    from tqflow.engine.messages import TaskMessage
    from tqflow.results.dead_letters import describe, in_batch

    _, storage = _blocks(folder)
    dead = LocalTaskQueue(path=str(folder / "dead.sqlite"), queue_name=BATCH, wait_seconds=0)
    dead.ensure()
    bodies = [
        TaskMessage(fn=FN, kwargs={"x": i}, key=str(i), batch=BATCH).encode() for i in range(n)
    ]
    for start in range(0, n, 10_000):
        dead.send(bodies[start : start + 10_000])
    for _ in range(n // 10 // 10):  # a tenth of the batch, dead-lettered
        for lease in dead.receive(max_messages=10):
            dead.dead_letter(lease, "PermanentTaskError: bench")

    def listing() -> None:
        for letter in dead.dead_letters(20, select=in_batch(BATCH)):
            describe(letter, storage)

    return {"seconds": _best_of(3, listing), "dead": dead.counts().dead}


def _analysis(folder: Path, n: int) -> dict[str, Any]:
    """The `analysis` flow's work, without the Prefect artifacts."""
    from tqflow.results.analyze import analyze_batch

    _, storage = _blocks(folder)
    started = time.perf_counter()
    done = analyze_batch(storage, BATCH)
    return {"seconds": time.perf_counter() - started, "rows": done.items if done else 0}


def _raw_sqlite(folder: Path, n: int) -> dict[str, Any]:
    db = sqlite3.connect(folder / "raw.sqlite")
    db.execute("CREATE TABLE m (id TEXT PRIMARY KEY, body TEXT)")
    rows = ((str(i), '{"fn": "bench.tasks:noop", "kwargs": {"x": %d}}' % i) for i in range(n))
    started = time.perf_counter()
    with db:
        db.executemany("INSERT INTO m VALUES (?, ?)", rows)
    return {"seconds": time.perf_counter() - started}


def _raw_write(folder: Path, n: int) -> dict[str, Any]:
    root = folder / "raw-files"
    root.mkdir()
    started = time.perf_counter()
    for i in range(n):
        (root / f"{i}.json").write_text('{"key": "%d", "result": %d}' % (i, i))
    return {"seconds": time.perf_counter() - started}


def _raw_list(folder: Path, n: int) -> dict[str, Any]:
    return {"seconds": _best_of(1, lambda: sum(1 for _ in os.scandir(folder / "raw-files")))}


def _raw_read(folder: Path, n: int) -> dict[str, Any]:
    def read() -> None:
        for entry in os.scandir(folder / "raw-files"):
            with open(entry.path, "rb") as f:
                f.read()

    return {"seconds": _best_of(1, read)}


_RUN: dict[str, Callable[[Path, int], dict[str, Any]]] = {
    "enqueue": _enqueue,
    "resume check": _enqueue,
    "drain, 2 workers": _drain,
    "monitor poll": _monitor_poll,
    "status": _status,
    "dead-letters list": _dead_letters,
    "analysis": _analysis,
    "raw: SQLite insert": _raw_sqlite,
    "raw: write files": _raw_write,
    "raw: list files": _raw_list,
    "raw: read files": _raw_read,
}


def _best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _stage_main(name: str, folder: str, n: str) -> None:
    """Run one stage; print what it measured (its own ``seconds``: imports and set-up not
    counted) and the process's peak RSS, as one JSON line."""
    found = _RUN[name](Path(folder), int(n))
    found["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(found), flush=True)


# -- the driver ------------------------------------------------------------------------------


def measure(n: int) -> dict[str, dict[str, Any]]:
    """Every stage at ``n`` items, each in its own process, in one fresh folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"tqflow-scale-{n}-"))
    found = {}
    try:
        for name in STAGES:
            out = subprocess.run(
                [sys.executable, "-m", "bench.scale", "stage", name, str(folder), str(n)],
                cwd=REPO,
                env=child_env(),
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                raise RuntimeError(f"stage {name!r} at {n:,} failed:\n{out.stderr[-3000:]}")
            found[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {n:>9,}  {name:<20} {found[name]['seconds']:9.3f} s", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return found


#: Seconds a call may take at the largest N (issue 17's targets, at 1M items).
PER_CALL_TARGET = {"monitor poll": 0.2, "status": 0.2, "dead-letters list": 0.2}
AT_A_MILLION = {"enqueue": 30.0, "resume check": 30.0, "analysis": 180.0}


def rows_from(by_size: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    sizes = sorted(by_size)
    small, large = sizes[0], sizes[-1]
    rows = []
    for name in STAGES:
        seconds = {n: by_size[n][name]["seconds"] for n in sizes}
        row: dict[str, Any] = {
            "measure": f"{name}: " + " / ".join(f"{n:,}" for n in sizes),
            "value": " / ".join(_fmt(seconds[n]) for n in sizes),
            "unit": "s",
            "us_per_item": {n: round(seconds[n] / n * 1e6, 3) for n in sizes},
            "peak_rss_mib": {n: round(by_size[n][name]["peak_rss_mib"]) for n in sizes},
        }
        if name in PER_CALL_TARGET:  # one call, whatever N: its own time is the figure
            row["target"] = f"<= {PER_CALL_TARGET[name]} s at {large:,}"
            row["met"] = seconds[large] <= PER_CALL_TARGET[name]
        elif not name.startswith("raw"):
            growth = (seconds[large] / large) / (seconds[small] / small)
            row["growth"] = round(growth, 2)
            row["target"] = f"cost per item at {large:,} <= {FLAT}x at {small:,}"
            row["met"] = growth <= FLAT
            if large == 1_000_000 and name in AT_A_MILLION:
                row["target"] += f"; <= {AT_A_MILLION[name]:g} s"
                row["met"] = row["met"] and seconds[large] <= AT_A_MILLION[name]
        rows.append(row)
    drain = {n: by_size[n]["drain, 2 workers"] for n in sizes}
    rate = {n: n / drain[n]["seconds"] for n in sizes}
    rows.append(
        {
            "measure": f"drain rate at {large:,} vs {small:,}",
            "value": round(rate[large] / rate[small], 2),
            "unit": "x",
            "target": ">= 0.8x",
            "met": rate[large] / rate[small] >= 0.8,
        }
    )
    rows.append(
        {
            "measure": "drain: worker peak RSS / growth past the first tenth",
            "value": " / ".join(
                f"{drain[n]['worker_peak_rss_mib']:.0f} MiB, "
                f"{100 * drain[n]['worker_rss_growth']:+.1f}%"
                for n in sizes
            ),
            "unit": "",
            "target": "growth < 10%",
            "met": all(drain[n]["worker_rss_growth"] < 0.10 for n in sizes),
        }
    )
    analysis_rss = by_size[large]["analysis"]["peak_rss_mib"]
    rows.append(
        {
            "measure": f"analysis: peak RSS at {large:,}",
            "value": round(analysis_rss),
            "unit": "MiB",
            "target": "<= 2048 MiB",
            "met": analysis_rss <= 2048,
        }
    )
    return rows


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 10 else f"{seconds:.0f}"


def write_plot(by_size: dict[int, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(by_size)
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in STAGES:
        per_item = [by_size[n][name]["seconds"] / n * 1e6 for n in sizes]
        ax.plot(
            sizes,
            per_item,
            marker="o",
            linestyle="--" if name.startswith("raw") else "-",
            label=name,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items in the batch")
    ax.set_ylabel("cost per item (µs)")
    ax.set_title("tqflow, embedded setup: cost per item of each stage (flat = scales)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(runs: int = 3, quick: bool = False, sizes: tuple[int, ...] | None = None) -> list[dict]:
    """``runs`` is the other scenarios' knob; each stage here runs once per size (the sizes
    make the run long enough to be steady)."""
    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    by_size = {n: measure(n) for n in sizes}
    if sizes == SIZES:
        write_plot(by_size, Path(__file__).with_name("scale.png"))
    return rows_from(by_size)


if __name__ == "__main__":
    if sys.argv[1:2] == ["stage"]:
        _stage_main(*sys.argv[2:5])
    else:
        from bench.run import table

        rows = run(sizes=tuple(int(a) for a in sys.argv[1:]) or None)
        print(table([{"scenario": "scale", **row} for row in rows]))
