"""Reliability: stopping a worker as Kubernetes and a user at a terminal do: SIGTERM while it
waits in SQS's 20 s long poll, a second signal when a task ignores the first, and a Ctrl-C
at any moment of ``tqflow demo``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import child_env, enqueue, runs, wait_until, warm_server_importing
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


def processes_with(marker: str) -> dict[int, str]:
    """This machine's processes whose environment holds ``marker``, by pid: a test's own,
    whatever session or process group they moved to."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        if marker.encode() in environ.split(b"\0"):
            found[int(entry.name)] = cmdline
    return found


def warm_worker_server_importing(marker: str) -> bool:
    """The fleet's warm-worker server (a process with ``marker``) is importing the worker."""
    servers = [p for p, cmd in processes_with(marker).items() if "tqflow.fleet.warm_workers" in cmd]
    return bool(servers) and warm_server_importing(servers[0])


#: Moments of ``tqflow demo`` at which a Ctrl-C is typed: what the terminal shows first (the
#: command's banner, Prefect's temporary server starting, the enqueue running), or a
#: condition on the processes: the warm-worker server importing the worker before it forks
#: (``"fork"``), the workers draining (``"drain"``: outputs written).
CTRL_C_MOMENTS = {
    "start": "tqflow demo:",
    "server": "Starting temporary server",
    "enqueue": "for flow 'enqueue'",
    "fork": warm_worker_server_importing,
    "drain": None,
}


@pytest.mark.timeout(2400)
def test_a_ctrl_c_at_any_moment_of_the_demo_leaves_no_process_and_no_lease_and_the_rerun_finishes(
    tmp_path, figure
):
    """Ctrl-C typed into the terminal that runs ``tqflow demo``: the terminal sends SIGINT to
    its whole foreground process group (the command, the warm-worker server, its workers,
    Prefect's temporary server). At each moment of a run (`CTRL_C_MOMENTS`) one Ctrl-C stops
    it: exit 130 with a sentence and no traceback, no process of it left, no lease held, no
    output written after it. The same command run once more then finishes the batch at once,
    every item run once (nothing done before a Ctrl-C runs again)."""
    from blocks import LocalTaskQueue
    from tests.support.terminal import Terminal

    data, items = tmp_path / "data", 400
    command = [str(BIN / "tqflow"), "demo", "--items", str(items), "--nodes", "20000"]
    command += ["--data", str(data)]
    env = {k: v for k, v in child_env().items() if k != "PREFECT_API_URL"}
    home = tmp_path / "prefect"
    env["PREFECT_HOME"] = str(home)
    marker = f"PREFECT_HOME={home}"
    outputs = data / "demo" / "outputs"

    def finished() -> dict[str, str]:
        return {p.name: json.loads(p.read_text())["finished_at"] for p in outputs.glob("*.json")}

    for moment, text in CTRL_C_MOMENTS.items():
        done_before = len(finished())
        with Terminal(command, env=env, cwd=tmp_path) as terminal:
            try:
                if text is None:
                    more = done_before + 20
                    wait_until(lambda n=more: len(finished()) >= n, timeout=600, every=0.05)
                elif callable(text):
                    wait_until(lambda f=text: f(marker), timeout=600, every=0.01)
                else:
                    wait_until(lambda t=text: t in terminal.text, timeout=600, every=0.01)
            except AssertionError:
                raise AssertionError(f"never reached {moment!r}:\n{terminal.text}") from None
            terminal.type_ctrl_c()
            code = terminal.wait(timeout=300)
        at_exit = finished()
        where = f"Ctrl-C at {moment!r}:\n{terminal.text}"
        assert code == 130, where
        assert "Traceback" not in terminal.text, where
        assert "stopped" in terminal.text, where
        wait_until(lambda: not processes_with(marker), timeout=120, every=0.2)
        assert finished() == at_exit, f"outputs written after the command ended; {where}"
        if (data / "queue.sqlite").exists():
            counts = LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name="demo").counts()
            assert counts.in_flight == 0, f"{counts}: leases held; {where}"
    done_before = finished()
    assert 20 <= len(done_before) < items

    again = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stdout + again.stderr
    # Nothing that reads as a failure in a run that did not fail (Prefect's temporary server
    # logs its telemetry's faults as ERROR, with a traceback, unless tqflow turns it off).
    assert "| ERROR" not in again.stdout + again.stderr, again.stdout + again.stderr
    summary = re.search(
        r"(\d[\d,]*) tasks run, (\d[\d,]*) skipped as already done.* in ([\d.]+)s", again.stdout
    )
    assert summary, again.stdout
    ran, skipped, seconds = (
        int(summary[1].replace(",", "")),
        int(summary[2].replace(",", "")),
        float(summary[3]),
    )
    assert ran + skipped == items and skipped == len(done_before)
    # Unreleased leases would hold the rest of the batch for lease_seconds (300 s) first.
    assert seconds < 240, again.stdout
    after = finished()
    assert len(after) == items
    assert all(after[name] == when for name, when in done_before.items())  # not re-run
    assert not processes_with(marker)
    figure(
        "14. Ctrl-C of tqflow demo in a terminal at five moments, then the same command",
        trials=len(CTRL_C_MOMENTS),
        items=items,
        lost=0,
        duplicated=0,
        dead_lettered=0,
        recovery_seconds=seconds,
        notes=f"{len(done_before)} done before, 0 processes and 0 leases left after each "
        f"Ctrl-C ({', '.join(CTRL_C_MOMENTS)}); the last run ran {ran} and skipped {skipped}",
    )


def test_a_ctrl_c_while_the_items_are_read_stops_the_enqueue_with_nothing_queued(tmp_path):
    """The items file is a pipe the test writes: the enqueue is surely reading it when the
    SIGINT of a Ctrl-C comes to its process group. (pandas, interrupted while it parses a
    table, reports a damaged file; the command must say it was stopped.)"""
    pipe = tmp_path / "roots.csv"
    os.mkfifo(pipe)
    data = tmp_path / "data"
    command = [str(BIN / "tqflow"), "enqueue", "tests.tasks:square", "--items-file", str(pipe)]
    command += ["--column", "root_id", "--data", str(data)]
    process = subprocess.Popen(
        command,
        env=child_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        with open(pipe, "w") as writer:  # opens once the command opens the file to read it
            writer.write("root_id\n864691135000000001\n")
            writer.flush()
            os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
        # The pipe closed: the read returns. (A signal the kernel hands to another of the
        # command's threads does not end a read the main thread is blocked in; Python acts
        # on it when the read returns.)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    out = " ".join(output.split())
    assert process.returncode == 130, out
    assert "stopped while reading the items: nothing was queued" in out
    assert "not a readable table" not in out and "Traceback" not in out
    assert not (data / "queue.sqlite").exists()
