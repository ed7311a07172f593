"""`LocalFleet`: workers as OS processes on this machine, forked warm from one server process
(`tqflow.fleet.warm_workers`). They never call the Prefect API; whoever runs the fleet reports
for them. The fleet also keeps each worker's ``memory_limit_mib``, as Kubernetes keeps a pod's:
a worker whose resident memory passes it is killed and reported OOMKilled."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from typing import Any, Optional

from tqflow.engine import process as worker_process
from tqflow.engine.contracts import CAVESource, Queue, Storage
from tqflow.engine.options import WorkerOptions
from tqflow.engine.task_resources import resident_bytes
from tqflow.fleet.base import Fleet
from tqflow.fleet.endings import of_process
from tqflow.fleet.warm_workers import WarmWorker, warm_worker_server

#: Seconds a stopped worker gets to release its leases and exit before it is killed.
STOP_SECONDS = 30.0


class LocalFleet(Fleet):
    """Workers as local OS processes, one unit each."""

    def __init__(
        self,
        queue: Queue,
        storage: Storage,
        options: WorkerOptions,
        cave: Optional[CAVESource] = None,
    ) -> None:
        super().__init__()
        self.options = options
        self._spec = worker_process.worker_spec(queue, storage, options, cave=cave)
        self._processes: list[tuple[WarmWorker, Any]] = []
        #: Workers killed over ``memory_limit_mib``, by pid: what was seen then.
        self._over_limit: dict[int, str] = {}
        #: Workers the fleet stopped itself, by pid.
        self._stopping: set[int] = set()
        #: One row per worker that ended: its stats, and how it ended if it was lost.
        self.rows: list[dict[str, Any]] = []

    def launch(self, n: int) -> None:
        for _ in range(n):
            # stdout to a file, not a pipe: a task that prints a lot must not block on a
            # full pipe nobody reads until the worker ends.
            stdout = tempfile.NamedTemporaryFile(mode="w+", prefix="tqflow-worker-", suffix=".out")
            process = warm_worker_server().start(self._spec, stdout.name)
            self._processes.append((process, stdout))
            self.launched += 1

    def running(self) -> int:
        alive = []
        for process, stdout in self._processes:
            if process.poll() is None:
                self._enforce_memory_limit(process)
                alive.append((process, stdout))
                continue
            stdout.seek(0)
            stats = worker_process.stats_from_output(stdout.read())
            stdout.close()
            code = process.returncode
            assert code is not None
            ending = of_process(code, stats, self._over_limit.pop(process.pid, None))
            stopped = process.pid in self._stopping
            self._stopping.discard(process.pid)
            self._record_end([stats] if stats else [], [ending] if ending else [], stopped)
            lost = ending is not None and not stopped
            self.rows.append(
                {
                    **(stats or {"stop_reason": ""}),
                    "ending": ending.cause.value if lost and ending else "",
                    "ending_detail": ending.detail if lost and ending else "",
                }
            )
        self._processes = alive
        return len(alive)

    def _enforce_memory_limit(self, process: WarmWorker) -> None:
        limit = self.options.memory_limit_mib
        if limit is None or process.pid in self._over_limit:
            return
        rss = resident_bytes(process.pid)
        if rss is not None and rss > limit * 2**20:
            self._over_limit[process.pid] = (
                f"{rss / 2**20:,.0f} MiB resident, over memory_limit_mib={limit}"
            )
            process.kill()

    @property
    def stopping(self) -> int:
        return sum(1 for p, _ in self._processes if p.pid in self._stopping)

    def shrink(self, n: int) -> None:
        """Stop the ``n`` newest workers (SIGTERM: they release their leases and exit)."""
        running = [
            p for p, _ in self._processes if p.poll() is None and p.pid not in self._stopping
        ]
        for process in running[len(running) - n :] if n > 0 else []:
            self._stopping.add(process.pid)
            process.terminate()

    def stop(self) -> None:
        for process, _ in self._processes:
            self._stopping.add(process.pid)
            process.terminate()
        for process, _ in self._processes:
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=STOP_SECONDS)
        self.running()
