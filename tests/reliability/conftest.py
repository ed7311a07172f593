"""What the reliability scenarios share: sizes, figures, and worker processes to kill.

Sizes: ``make test`` runs each scenario at a size that keeps the suite short;
``TQFLOW_STRESS=1`` runs the longer versions (``make reliability`` does, and writes the
figures into ``bench/RELIABILITY.md``).

Figures: each scenario calls ``figure(...)`` with what it measured (trials, items, lost,
duplicated, dead-lettered, recovery time). They are appended as JSON lines to the file named by
``TQFLOW_RELIABILITY_FIGURES`` when it is set, and go nowhere otherwise.

Worker processes: a scenario that kills workers 20 times cannot pay Python's and Prefect's
~3 s start-up each time, so `ForkedWorkers` forks them from a forkserver that has imported the
worker once. Each is still a real process running the worker's own entry
(`flows.worker_process.run_from_spec`, signal handling included), killed by real signals.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from blocks.queues.base import TaskQueue
from blocks.specs import block_spec
from blocks.storage import CloudFilesStorage

STRESS = os.environ.get("TQFLOW_STRESS") == "1"
FIGURES = os.environ.get("TQFLOW_RELIABILITY_FIGURES")


def scaled(default: Any, stress: Any) -> Any:
    """``stress`` under ``TQFLOW_STRESS=1``, else ``default``."""
    return stress if STRESS else default


@pytest.fixture
def figure(request) -> Callable[..., None]:
    """Record this scenario's figures (see the module docstring)."""

    def record(scenario: str, **values: Any) -> None:
        if not FIGURES:
            return
        backend = request.node.callspec.params.get("backend", "") if hasattr(request.node, "callspec") else ""
        row = {"scenario": scenario, "backend": backend, "stress": STRESS, **values}
        with open(FIGURES, "a") as f:
            f.write(json.dumps(row) + "\n")

    return record


_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["tests.reliability.forkserver_preload"])


def _worker_main(spec: dict[str, Any], env: dict[str, str], stats_path: str) -> None:
    # A forkserver child starts with the forkserver's environment, not the test's.
    os.environ.update(env)
    from flows.worker_process import log_to_stderr, run_from_spec

    log_to_stderr()
    stats = run_from_spec(spec)
    Path(stats_path).write_text(json.dumps(stats))


class ForkedWorkers:
    """Worker processes forked from a forkserver that has the worker imported already."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[multiprocessing.Process] = []

    def start(self, queue: TaskQueue, storage: CloudFilesStorage, **options: Any) -> multiprocessing.Process:
        options.setdefault("idle_seconds", 0.5)
        spec = {"queue": block_spec(queue), "storage": block_spec(storage), "cave": None, "options": options}
        env = {k: v for k, v in os.environ.items() if k.startswith(("STORAGE_EMULATOR", "PREFECT_"))}
        stats_path = self.folder / f"stats-{len(self.started)}.json"
        process = _context.Process(target=_worker_main, args=(spec, env, str(stats_path)), daemon=True)
        process.start()
        process.stats_path = stats_path  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def run(self, queue: TaskQueue, storage: CloudFilesStorage, timeout: float = 120, **options: Any) -> dict[str, Any]:
        """Run one worker to its end; return its stats."""
        process = self.start(queue, storage, **options)
        return self.wait(process, timeout)

    @staticmethod
    def wait(process: multiprocessing.Process, timeout: float = 120) -> dict[str, Any]:
        process.join(timeout)
        assert process.exitcode == 0, f"worker exited {process.exitcode}"
        return json.loads(process.stats_path.read_text())  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for process in self.started:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
                process.join(10)


@pytest.fixture
def forked_workers(tmp_path) -> Iterator[ForkedWorkers]:
    workers = ForkedWorkers(tmp_path)
    yield workers
    workers.stop_all()
