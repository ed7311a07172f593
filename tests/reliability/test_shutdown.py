"""Reliability: stopping a worker as Kubernetes and a user at a terminal do: SIGTERM while it
waits in SQS's 20 s long poll, and a second signal when a task ignores the first."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import child_env, enqueue, runs, wait_until
from tqflow.engine import process as worker_process

BIN = Path(sys.executable).parent


@pytest.fixture
def idle_worker(queue_factory, storage):
    """A ``python -m tqflow.engine.process`` waiting in a 20 s long poll on an empty queue."""
    queue = queue_factory(wait_seconds=20)
    process = worker_process.spawn(
        queue, storage, {"idle_seconds": 600}, stderr=subprocess.PIPE, env=child_env()
    )
    wait_until(lambda: "draining" in process.stderr.readline(), timeout=120, every=0)
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.mark.parametrize("backend", ["sqs"])  # the local queue's receive polls in short sleeps
def test_sigterm_during_a_long_poll_stops_the_worker_at_once(idle_worker, figure):
    time.sleep(0.5)  # let it reach the receive (a signal before it stops it anyway)
    sent = time.monotonic()
    idle_worker.send_signal(signal.SIGTERM)
    assert idle_worker.wait(timeout=60) == 0
    seconds = time.monotonic() - sent
    # The poll began less than a second before the signal: waited out, it would end ~19 s later.
    # (A quiet machine exits in ~0.3 s; the bound leaves room for a busy one.)
    assert seconds < 12
    assert json.loads(idle_worker.stdout.read())["stop_reason"] == "stopped"
    figure(
        "12. SIGTERM during a 20 s long poll",
        trials=1,
        items=0,
        lost=0,
        duplicated=0,
        dead_lettered=0,
        recovery_seconds=None,
        notes=f"worker process exited 0 {seconds:.2f} s after SIGTERM (a waited-out poll: ~19 s)",
    )


def test_a_second_signal_stops_a_worker_whose_task_ignores_the_first(
    queue_factory, storage, forked_workers, tmp_path, figure
):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:refuses_to_stop", [1], log_dir=str(tmp_path))
    worker = forked_workers.start(queue, storage, idle_seconds=60)
    wait_until(lambda: runs(tmp_path, 1), timeout=120)
    worker.send_signal(signal.SIGTERM)
    wait_until(lambda: runs(tmp_path, 1, "interrupted"), timeout=60)
    assert worker.poll() is None  # the task swallowed the interrupt
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 128 + signal.SIGTERM
    seconds = time.monotonic() - sent
    figure(
        "12. Second signal: a task that swallows the first",
        trials=1,
        items=1,
        lost=0,
        duplicated=0,
        dead_lettered=0,
        recovery_seconds=None,
        notes=f"exit {128 + signal.SIGTERM} {seconds:.2f} s after the second SIGTERM; the item "
        "returns to the queue when its lease ends",
    )


def test_one_ctrl_c_of_the_demo_releases_every_lease_and_the_same_command_then_finishes(
    tmp_path, figure
):
    """Ctrl-C typed into the terminal that runs ``tqflow demo``: the terminal sends SIGINT to
    its whole foreground process group (the command, its workers, Prefect's temporary
    server), and the fleet then sends its workers SIGTERM. One stop: every lease released,
    the command ends at once with what to do, and running it again finishes the batch
    without waiting for leases or re-running anything that has an output."""
    from blocks import LocalTaskQueue
    from tests.support.terminal import Terminal

    data, items = tmp_path / "data", 300
    command = [str(BIN / "tqflow"), "demo", "--items", str(items), "--nodes", "20000"]
    command += ["--data", str(data)]
    env = {k: v for k, v in child_env().items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    outputs = data / "demo" / "outputs"

    with Terminal(command, env=env, cwd=tmp_path) as terminal:
        wait_until(lambda: len(list(outputs.glob("*.json"))) >= 20, timeout=600, every=0.05)
        terminal.type_ctrl_c()
        code = terminal.wait(timeout=120)
    assert code == 130, terminal.output
    assert "stopped: the workers released the tasks they held" in terminal.output
    assert "cannot reach the Prefect API" not in terminal.output
    counts = LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name="demo").counts()
    assert counts.in_flight == 0, f"{counts}: leases held after Ctrl-C\n{terminal.output}"
    done_before = {p.name: json.loads(p.read_text())["finished_at"] for p in outputs.glob("*.json")}
    assert 20 <= len(done_before) < items

    again = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stdout + again.stderr
    summary = re.search(
        r"(\d[\d,]*) tasks run, (\d[\d,]*) skipped as already done.* in ([\d.]+)s", again.stdout
    )
    assert summary, again.stdout
    ran, skipped, seconds = (
        int(summary[1].replace(",", "")),
        int(summary[2].replace(",", "")),
        float(summary[3]),
    )
    assert ran + skipped == items and skipped >= len(done_before)
    # Unreleased leases would hold the rest of the batch for lease_seconds (300 s) first.
    assert seconds < 240, again.stdout
    after = {p.name: json.loads(p.read_text())["finished_at"] for p in outputs.glob("*.json")}
    assert len(after) == items
    assert all(after[name] == finished for name, finished in done_before.items())  # not re-run
    figure(
        "14. Ctrl-C of tqflow demo in a terminal, then the same command",
        trials=1,
        items=items,
        lost=0,
        duplicated=0,
        dead_lettered=0,
        recovery_seconds=seconds,
        notes=f"{len(done_before)} done before Ctrl-C, 0 leases held after it; the re-run ran "
        f"{ran} and skipped {skipped}",
    )
