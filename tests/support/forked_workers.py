"""Worker processes forked warm, the way local fan-out starts them (`tqflow.fleet.warm_workers`).

A test that starts many workers (or kills them 20 times) cannot pay the worker's ~5 s of imports
each time; local fan-out does not either. Each is a real process running the worker's own entry
(`tqflow.engine.process.main_from_spec`, signal handling included), stopped or killed by real
signals. ``python -m tqflow.engine.process``, the entry a Kubernetes-less user can start by hand,
is exercised by the tests that spawn it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from blocks.cave import CAVECredentials
from blocks.queues.base import TaskQueue
from blocks.storage import CloudFilesStorage
from tqflow.engine.process import stats_from_output, worker_spec
from tqflow.fleet.warm_workers import WarmWorker, warm_worker_server


class ForkedWorkers:
    """Worker processes forked from this test process's warm worker server."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[WarmWorker] = []

    def start(
        self,
        queue: TaskQueue,
        storage: CloudFilesStorage,
        cave: Optional[CAVECredentials] = None,
        **options: Any,
    ) -> WarmWorker:
        options.setdefault("idle_seconds", 0.5)
        stdout = self.folder / f"worker-{len(self.started)}.out"
        stderr = self.folder / f"worker-{len(self.started)}.log"
        spec = worker_spec(queue, storage, options, cave=cave)
        worker = warm_worker_server().start(spec, str(stdout), stderr_path=str(stderr))
        worker.stdout_path = stdout  # type: ignore[attr-defined]
        worker.log_path = stderr  # type: ignore[attr-defined]
        self.started.append(worker)
        return worker

    def run(
        self,
        queue: TaskQueue,
        storage: CloudFilesStorage,
        timeout: float = 120,
        cave: Optional[CAVECredentials] = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Run one worker to its end; return its stats."""
        return self.wait(self.start(queue, storage, cave, **options), timeout)

    @staticmethod
    def wait(worker: WarmWorker, timeout: float = 120) -> dict[str, Any]:
        code = worker.wait(timeout)
        out = worker.stdout_path.read_text()  # type: ignore[attr-defined]
        assert code == 0, f"worker exited {code}:\n{out[-2000:]}\n{_read(worker.log_path)[-3000:]}"  # type: ignore[attr-defined]
        stats = stats_from_output(out)
        assert stats is not None, f"no stats line in the worker's stdout:\n{out[-2000:]}"
        return stats

    @staticmethod
    def log(worker: WarmWorker) -> str:
        """What the worker has logged so far (its stderr)."""
        return _read(worker.log_path)  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for worker in self.started:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
