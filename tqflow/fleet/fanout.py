"""Fan-out: start N workers on a queue, watch them, relaunch lost ones while work remains.

Two fleets behind one interface:

- `LocalFleet` starts N OS processes running the worker loop (``tqflow.engine.process``), forked
  from one warm server process (`tqflow.fleet.warm_workers`). They never call the Prefect API; the
  pipeline reports for them.
- `DeploymentFleet` creates N runs of a ``worker`` deployment (a GKE work pool in production)
  with ``run_deployment(timeout=0, idempotency_key=...)``, so a retried pipeline run does not
  launch its workers twice.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Optional

from blocks.cave import CAVECredentials
from blocks.queues.base import TaskQueue
from blocks.storage import CloudFilesStorage
from tqflow.engine import process as worker_process
from tqflow.engine.options import WorkerOptions
from tqflow.engine.task_resources import resident_bytes
from tqflow.fleet.warm_workers import WarmWorker, warm_worker_server


class Fleet(ABC):
    """A set of workers draining one queue."""

    def __init__(
        self,
        queue: TaskQueue,
        storage: CloudFilesStorage,
        options: WorkerOptions,
        cave: Optional[CAVECredentials] = None,
    ):
        self.queue = queue
        self.storage = storage
        self.options = options
        self.cave = cave
        #: Stats reported by workers that finished.
        self.finished: list[dict[str, Any]] = []
        #: Workers that ended before the queue was drained, whatever their final state:
        #: crashed, killed, failed, cancelled, or stopped by SIGTERM (spot preemption) and
        #: completed. The monitor replaces them while work remains.
        self.lost = 0
        #: How each lost worker ended ("killed by SIGKILL", "stopped by a signal",
        #: "Crashed: ...") and how many ended so.
        self.endings: Counter[str] = Counter()
        self.launched = 0

    @abstractmethod
    def launch(self, n: int) -> None:
        """Start ``n`` more workers."""

    @abstractmethod
    def running(self) -> int:
        """How many workers are still running; collects the stats of those that ended."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every worker that is still running (their leases are released)."""

    def _ended(self, stats: Optional[dict[str, Any]], ending: str) -> None:
        """Count a worker that ended: finished when it reported stats and stopped for a reason
        of its own (idle, max_tasks, max_seconds), lost otherwise."""
        if stats is not None and stats.get("stop_reason") != "stopped":
            self.finished.append(stats)
            return
        if stats is not None:
            self.finished.append(stats)  # its counters still count
        self.lost += 1
        self.endings[ending] += 1


class LocalFleet(Fleet):
    """Workers as local OS processes."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._processes: list[tuple[WarmWorker, Any]] = []
        #: Workers killed over ``memory_limit_mib``, by pid: their resident memory then.
        self._over_limit: dict[int, int] = {}

    def launch(self, n: int) -> None:
        spec = worker_process.worker_spec(self.queue, self.storage, self.options, cave=self.cave)
        for _ in range(n):
            # stdout to a file, not a pipe: a task that prints a lot must not block on a
            # full pipe nobody reads until the worker ends.
            stdout = tempfile.NamedTemporaryFile(mode="w+", prefix="tqflow-worker-", suffix=".out")
            process = warm_worker_server().start(spec, stdout.name)
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
            over = self._over_limit.pop(process.pid, None)
            if code == 0 and stats is not None:
                self._ended(stats, "stopped by a signal (SIGTERM / SIGINT)")
            elif over is not None:
                self._ended(
                    None,
                    f"OOMKilled: {over / 2**20:,.0f} MiB resident, over memory_limit_mib="
                    f"{self.options.memory_limit_mib}",
                )
            elif code < 0:
                self._ended(None, f"killed by {_signal_name(-code)}")
            else:
                self._ended(None, f"exited with code {code}")
        self._processes = alive
        return len(alive)

    def _enforce_memory_limit(self, process: WarmWorker) -> None:
        limit = self.options.memory_limit_mib
        if limit is None or process.pid in self._over_limit:
            return
        rss = resident_bytes(process.pid)
        if rss is not None and rss > limit * 2**20:
            self._over_limit[process.pid] = rss
            process.kill()

    def stop(self) -> None:
        for process, _ in self._processes:
            process.terminate()
        for process, _ in self._processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=30)
        self.running()


class DeploymentFleet(Fleet):
    """Workers as flow runs of a ``worker`` deployment (``flow-name/deployment-name``).

    The queue and storage must be saved blocks: runs get their slugs and load them, so no
    secret travels as a flow-run parameter.
    """

    def __init__(
        self,
        queue: TaskQueue,
        storage: CloudFilesStorage,
        options: WorkerOptions,
        deployment: str,
        run_key: str,
        cave: Optional[CAVECredentials] = None,
    ):
        super().__init__(queue, storage, options, cave)
        self.deployment = deployment
        self.run_key = run_key
        self._runs: list[Any] = []

    def launch(self, n: int) -> None:
        from prefect.deployments import run_deployment

        parameters = {
            "queue": _block_reference(self.queue),
            "storage": _block_reference(self.storage),
            "options": self.options.model_dump(mode="json", exclude_unset=True),
            **({"cave": _block_reference(self.cave)} if self.cave is not None else {}),
        }
        for _ in range(n):
            run = run_deployment(
                self.deployment,
                parameters=parameters,
                timeout=0,
                idempotency_key=f"{self.run_key}-worker-{self.launched}",
                as_subflow=True,
            )
            self._runs.append(run)
            self.launched += 1

    def running(self) -> int:
        from prefect.client.orchestration import get_client

        alive = []
        with get_client(sync_client=True) as client:
            for run in self._runs:
                state = client.read_flow_run(run.id).state
                if state is None or not state.is_final():
                    alive.append(run)  # includes runs rescheduled after SIGTERM
                elif state.is_completed():
                    # Results are not persisted (a pod's disk is gone with it): the worker
                    # flow publishes its counters as its "worker-stats" artifact instead.
                    self._ended(_worker_stats(client, run.id), "stopped by a signal (SIGTERM)")
                else:
                    ending = f"{state.type.value.title()}: {state.message or state.name}"
                    pod = _pod_reason(client, run)
                    self._ended(None, f"{ending} (pod: {pod})" if pod else ending)
        self._runs = alive
        return len(alive)

    def stop(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client:
            for run in self._runs:
                client.set_flow_run_state(run.id, Cancelling(), force=True)


def _worker_stats(client: Any, flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["worker-stats"]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
        )
    )
    if not artifacts:
        return {}
    rows = artifacts[0].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    return {row["counter"]: row["value"] for row in rows}


def _pod_reason(client: Any, run: Any) -> Optional[str]:
    """Why the run's pod ended, as prefect-kubernetes's pod observer reported it: its
    diagnosis (``OOMKilled``, ``Evicted``, ``Unschedulable.InsufficientResources``, ...), else
    the container's terminated reason (``OOMKilled``, ``Error``); the latest event first. ``None``
    where no observer reports (a process pool) or the events cannot be read."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventRelatedFilter,
    )

    try:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=run.created),
                event=EventNameFilter(prefix=["prefect.kubernetes.pod."]),
                related=EventRelatedFilter(id=[f"prefect.flow-run.{run.id}"]),
            ),
            limit=50,
        )
    except Exception:  # the state message still says how the run ended
        return None
    for event in sorted(page.events, key=lambda e: e.occurred, reverse=True):
        reason = event.resource.get("kubernetes.diagnosis") or event.resource.get(
            "kubernetes.reason"
        )
        if reason:
            return str(reason)
    return None


def _block_reference(block: Any) -> str:
    """A saved block's slug (``sqs-task-queue/prod``): what the worker flow loads when it
    starts, so no credential travels as a flow-run parameter."""
    name = getattr(block, "_block_document_name", None)
    if name is None or getattr(block, "_is_anonymous", False):
        raise ValueError(
            f"{type(block).__name__} must be a saved block for deployment fan-out: "
            "save it (block.save('name')) and pass the loaded block or its slug"
        )
    return f"{block.get_block_type_slug()}/{name}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
