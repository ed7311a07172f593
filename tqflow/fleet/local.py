"""`LocalFleet`: workers as OS processes on this machine, forked warm from one server process
(`tqflow.fleet.warm_workers`). They never call the Prefect API; whoever runs the fleet reports
for them. The fleet also keeps each worker's ``memory_limit_mib``, as Kubernetes keeps a pod's:
a worker whose resident memory passes it is killed and reported OOMKilled."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from tqflow.engine import process as worker_process
from tqflow.engine.contracts import CAVESource, Queue, Storage
from tqflow.engine.drain import DrainBoard
from tqflow.engine.options import WorkerOptions
from tqflow.engine.task_resources import resident_bytes
from tqflow.fleet.base import Fleet, FleetView
from tqflow.fleet.endings import Ending, of_process
from tqflow.fleet.warm_workers import WarmWorker, warm_worker_server

#: Seconds a stopped worker gets to release its leases and exit before it is killed.
STOP_SECONDS = 30.0


@dataclass
class _Worker:
    process: WarmWorker
    stdout: Any
    unit: str


class LocalFleet(Fleet):
    """Workers as local OS processes, one unit each. With ``drain_board``, a shrink drains its
    workers (they finish their task); without, it sends them SIGTERM (they release it)."""

    def __init__(
        self,
        queue: Queue,
        storage: Storage,
        options: WorkerOptions,
        cave: Optional[CAVESource] = None,
        *,
        drain_board: Optional[DrainBoard] = None,
    ) -> None:
        super().__init__()
        self.options = options
        self.drain_board = drain_board
        self._spec = worker_process.worker_spec(queue, storage, options, cave=cave)
        #: Unit names are this fleet's own: a board left by an earlier run of the batch names
        #: none of them.
        self._prefix = f"local-{uuid.uuid4().hex[:6]}"
        self._workers: list[_Worker] = []
        #: Workers killed over ``memory_limit_mib``, by pid: what was seen then.
        self._over_limit: dict[int, str] = {}
        #: Workers killed because the controller found them silent, by pid.
        self._silent: dict[int, Ending] = {}
        #: Workers the fleet stopped or drained itself, by pid.
        self._stopping: set[int] = set()
        #: One row per worker that ended: its stats, and how it ended if it was lost.
        self.rows: list[dict[str, Any]] = []

    def launch(self, n: int) -> None:
        for _ in range(n):
            # Workers of a worker run share its unit (the run's id); the pipeline's local
            # workers are a unit each.
            unit = self.options.unit or f"{self._prefix}-{self.launched + 1}"
            spec = {**self._spec, "options": {**self._spec["options"], "unit": unit}}
            # stdout to a file, not a pipe: a task that prints a lot must not block on a
            # full pipe nobody reads until the worker ends.
            stdout = tempfile.NamedTemporaryFile(mode="w+", prefix="tqflow-worker-", suffix=".out")
            process = warm_worker_server().start(spec, stdout.name)
            self._workers.append(_Worker(process, stdout, unit))
            self.launched += 1

    def observe(self) -> FleetView:
        alive = []
        for worker in self._workers:
            if worker.process.poll() is None:
                self._enforce_memory_limit(worker.process)
                alive.append(worker)
            else:
                self._ended(worker)
        self._workers = alive
        running = [w for w in alive if w.process.pid not in self._stopping]
        return FleetView(
            running=len(running),
            stopping=len(alive) - len(running),
            running_units=frozenset(w.unit for w in running),
        )

    def _ended(self, worker: _Worker) -> None:
        process = worker.process
        worker.stdout.seek(0)
        stats = worker_process.stats_from_output(worker.stdout.read())
        worker.stdout.close()
        code = process.returncode
        assert code is not None
        ending = self._silent.pop(process.pid, None) or of_process(
            code, stats, self._over_limit.pop(process.pid, None)
        )
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

    def shrink(self, n: int) -> int:
        """Stop the ``n`` newest running workers: drained through the board (they finish
        their task), else SIGTERM (they release it)."""
        running = [w for w in self._workers if w.process.pid not in self._stopping]
        chosen = running[max(0, len(running) - n) :] if n > 0 else []
        if chosen and self.drain_board is not None:
            self.drain_board.drain(w.unit for w in chosen)
        for worker in chosen:
            self._stopping.add(worker.process.pid)
            if self.drain_board is None:
                worker.process.terminate()
        return len(chosen)

    def declare_lost(self, units: Iterable[str], ending: Ending) -> None:
        units = set(units)
        for worker in self._workers:
            if worker.unit in units and worker.process.poll() is None:
                self._silent[worker.process.pid] = ending
                worker.process.kill()

    def stop(self) -> None:
        for worker in self._workers:
            self._stopping.add(worker.process.pid)
            worker.process.terminate()
        for worker in self._workers:
            try:
                worker.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(timeout=STOP_SECONDS)
        self.observe()

    def detach(self) -> None:
        """The workers are this process's children: they stop with it."""
        self.stop()
