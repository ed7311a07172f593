"""Worker processes forked from a warm forkserver.

A test that starts many workers (or kills them 20 times) cannot pay Python's and Prefect's ~3 s
of imports each time, so these are forked from a forkserver that has imported the worker and
built each block model once (`tests.forkserver_preload`). Each is still a real process running
the worker's own entry (`flows.worker_process.run_from_spec`, signal handling included), stopped
or killed by real signals. ``python -m flows.worker_process`` itself, the entry local fan-out
starts, is exercised by the pipeline tests.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

from blocks.queues.base import TaskQueue
from blocks.specs import block_spec
from blocks.storage import CloudFilesStorage

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["tests.forkserver_preload"])


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
