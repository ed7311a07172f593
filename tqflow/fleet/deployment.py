"""`DeploymentFleet`: workers as flow runs of a ``worker`` deployment (a GKE work pool in
production), with requests to the Prefect API that do not grow with the number of runs.

- **Launching**: the deployment is read once, one placeholder task run links every worker run
  to the pipeline run as its subflow (one request per fleet, where `run_deployment` makes one
  per run), and runs are created ``launch_concurrency`` at a time on Prefect Cloud, one at a
  time on a self-hosted server (SQLite takes one write at a time), each with an idempotency key
  (``<run_key>-worker-<n>``), so a pipeline run that is retried gets its runs back instead of
  launching them twice. Prefect's client waits out a 429 for as long as its Retry-After says.
- **Watching**: each poll reads only the fleet's runs (tagged ``tqflow-fleet-<run_key>``)
  that ended since the last poll, and those that have not started within
  ``start_timeout_seconds``: two requests whatever the fleet's size, plus one for the stats of
  the runs that completed and one for the pod events of the runs that were lost, when there
  are any. A lost run is found in the poll it ends.
- **Never started**: a run still Scheduled, Late or Pending ``start_timeout_seconds`` after it
  was created (no node: the project's quota, the pool's max nodes; an image that cannot be
  pulled) is cancelled and counted lost as `Cause.NEVER_STARTED`, so the monitor replaces it.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Optional

from tqflow.fleet.base import Fleet
from tqflow.fleet.endings import Cause, Ending, of_run, of_stop_reason

#: The states of a run that has not started yet, and those of a run that has ended.
_NOT_STARTED = ("SCHEDULED", "PENDING")
_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
#: Runs whose end time is this close to the newest end seen are read again (clocks differ).
_END_MARGIN = dt.timedelta(seconds=120)
#: The API's largest page.
_PAGE = 200


class DeploymentFleet(Fleet):
    """Workers as runs of the deployment ``flow-name/deployment-name``, ``processes`` worker
    processes in each. ``parameters`` name saved blocks by slug (no secret travels as a
    flow-run parameter); ``parent_flow_run_id``, the pipeline run whose subflows they are."""

    def __init__(
        self,
        deployment: str,
        parameters: dict[str, Any],
        run_key: str,
        *,
        parent_flow_run_id: Optional[str] = None,
        processes: int = 1,
        start_timeout_seconds: float = 900.0,
        launch_concurrency: int = 8,
    ) -> None:
        super().__init__()
        self.deployment = deployment
        self.parameters = {**parameters, "processes": processes}
        self.run_key = run_key
        self.parent_flow_run_id = parent_flow_run_id
        self.processes_per_unit = processes
        self.start_timeout_seconds = start_timeout_seconds
        self.launch_concurrency = launch_concurrency
        self.tag = f"tqflow-fleet-{run_key}"
        self._deployment_id: Any = None
        self._parent_task_run_id: Any = None
        self._next_index = 0
        #: Runs launched and not yet seen ended: id -> when it was created.
        self._live: dict[Any, dt.datetime] = {}
        self._ended: set[Any] = set()
        self._stopping: set[Any] = set()
        self._newest_end: Optional[dt.datetime] = None
        self._last_poll = 0.0
        #: Runs created at a time (`_prepare`).
        self._concurrency = 1

    # -- launching ------------------------------------------------------------------------------

    def launch(self, n: int) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            self._prepare(client)
            while n > 0:
                indices = list(range(self._next_index, self._next_index + n))
                self._next_index += n
                runs = self._create_all(client, indices)
                for run in runs:
                    if run.state is not None and run.state.is_final():
                        # an earlier attempt of this pipeline run launched and finished it
                        self._ended.add(run.id)
                        continue
                    self._live[run.id] = run.created or dt.datetime.now(dt.timezone.utc)
                    self.launched += 1
                    n -= 1

    def _prepare(self, client: Any) -> None:
        """Once per fleet: the deployment, and the task run its runs are subflows of."""
        if self._deployment_id is not None:
            return
        from prefect import Task
        from prefect.client.base import ServerType
        from prefect.states import Running

        # Prefect Cloud takes concurrent writes. A self-hosted server on SQLite takes one at a
        # time and answers more with 503s, which Prefect's client retries after backing off
        # seconds: 200 runs took 20 s created one at a time, 60 to 100 s two to eight at a time.
        if client.server_type == ServerType.CLOUD:
            self._concurrency = self.launch_concurrency
        self._deployment_id = client.read_deployment_by_name(self.deployment).id
        if self.parent_flow_run_id is not None:
            placeholder = Task(name=f"{self.deployment} runs", fn=lambda: None)
            self._parent_task_run_id = client.create_task_run(
                task=placeholder,
                flow_run_id=uuid.UUID(str(self.parent_flow_run_id)),
                dynamic_key=self.tag,
                state=Running(),
            ).id

    def _create_all(self, client: Any, indices: list[int]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self._concurrency) as pool:
            return list(pool.map(lambda i: self._create(client, i), indices))

    def _create(self, client: Any, index: int) -> Any:
        return client.create_flow_run_from_deployment(
            self._deployment_id,
            parameters=self.parameters,
            tags=[self.tag],
            idempotency_key=f"{self.run_key}-worker-{index}",
            parent_task_run_id=self._parent_task_run_id,
        )

    # -- watching -------------------------------------------------------------------------------

    def running(self) -> int:
        if not self._live:
            return 0
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            self._cancel_unstarted(client)
            ended = self._runs_ended_since_last_poll(client)
            if ended:
                self._record_ends(client, ended)
        self._last_poll = time.monotonic()
        return len(self._live)

    def _runs_ended_since_last_poll(self, client: Any) -> list[Any]:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterEndTime,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
        )

        final = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(_FINAL)))
        if self._newest_end is None or time.monotonic() - self._last_poll > 60:
            # first look, or a long pause since the last one: read the live runs by id
            chosen = FlowRunFilter(id=FlowRunFilterId(any_=list(self._live)), state=final)
        else:
            chosen = FlowRunFilter(
                tags=FlowRunFilterTags(all_=[self.tag]),
                state=final,
                end_time=FlowRunFilterEndTime(after_=self._newest_end - _END_MARGIN),
            )
        runs = [r for r in _pages(client, chosen) if r.id in self._live]
        for run in runs:
            if run.end_time is not None and (
                self._newest_end is None or run.end_time > self._newest_end
            ):
                self._newest_end = run.end_time
        if self._newest_end is None:
            self._newest_end = dt.datetime.now(dt.timezone.utc)
        return runs

    def _record_ends(self, client: Any, runs: list[Any]) -> None:
        completed = [r for r in runs if r.state.is_completed()]
        rows = _stats_rows(client, [r.id for r in completed]) if completed else {}
        lost = [r for r in runs if not r.state.is_completed() and r.id not in self._stopping]
        pods = _pod_reasons(client, lost) if lost else {}
        for run in runs:
            self._live.pop(run.id, None)
            self._ended.add(run.id)
            stopped = run.id in self._stopping
            if run.state.is_completed():
                stats = rows.get(run.id, [])
                endings = [e for e in map(_ending_of_row, stats) if e is not None]
            else:
                stats = []
                message = run.state.message or run.state.name or ""
                endings = [of_run(run.state.type.value, message, pods.get(run.id))]
            self._record_end(stats, endings, stopped)

    def _cancel_unstarted(self, client: Any) -> None:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterExpectedStartTime,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
        )

        now = dt.datetime.now(dt.timezone.utc)
        started_before = now - dt.timedelta(seconds=self.start_timeout_seconds)
        chosen = FlowRunFilter(
            tags=FlowRunFilterTags(all_=[self.tag]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(_NOT_STARTED))),
            expected_start_time=FlowRunFilterExpectedStartTime(before_=started_before),
        )
        for run in _pages(client, chosen):
            if run.id not in self._live:
                continue
            waited = (now - (run.expected_start_time or run.created or now)).total_seconds()
            self._cancel(client, run)
            self._live.pop(run.id, None)
            self._ended.add(run.id)
            detail = f"{run.state.name} {waited / 60:.0f} min"
            self._record_end([], [Ending(Cause.NEVER_STARTED, detail)], False)

    # -- stopping -------------------------------------------------------------------------------

    @property
    def stopping(self) -> int:
        return sum(1 for run_id in self._live if run_id in self._stopping)

    def shrink(self, n: int) -> None:
        """Cancel ``n`` runs, those not started yet first: their workers get SIGTERM, release
        their leases and complete."""
        if n <= 0 or not self._live:
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with get_client(sync_client=True) as client:
            live = _pages(client, FlowRunFilter(id=FlowRunFilterId(any_=list(self._live))))
            live = [r for r in live if r.id not in self._stopping and not r.state.is_final()]
            live.sort(key=lambda r: (r.state.type.value not in _NOT_STARTED, r.created))
            for run in live[:n]:
                self._stopping.add(run.id)
                self._cancel(client, run)

    def stop(self) -> None:
        """Cancel every run still live, and end the placeholder task run."""
        from prefect.client.orchestration import get_client
        from prefect.states import Completed

        with get_client(sync_client=True) as client:
            runs = list(self._live)
            self._stopping.update(runs)
            with ThreadPoolExecutor(max_workers=self.launch_concurrency) as pool:
                list(pool.map(lambda run_id: self._cancel(client, run_id), runs))
            if self._parent_task_run_id is not None:
                try:
                    client.set_task_run_state(self._parent_task_run_id, Completed(), force=True)
                except Exception:  # only the UI's picture of it is left Running
                    pass

    @staticmethod
    def _cancel(client: Any, run: Any) -> None:
        """Scheduled: cancelled at once; otherwise cancelling, so that its worker stops the
        run's infrastructure (the worker in it gets SIGTERM and releases its leases)."""
        from prefect.states import Cancelled, Cancelling

        run_id = getattr(run, "id", run)
        state = getattr(run, "state", None)
        scheduled = state is not None and state.type.value == "SCHEDULED"
        try:
            client.set_flow_run_state(
                run_id, Cancelled() if scheduled else Cancelling(), force=True
            )
        except Exception:  # it ended meanwhile, or the API is down: its own end says how
            pass


def _pages(client: Any, flow_run_filter: Any) -> list[Any]:
    """Every flow run the filter selects, a page of `_PAGE` at a time."""
    from prefect.client.schemas.sorting import FlowRunSort

    found: list[Any] = []
    while True:
        page = client.read_flow_runs(
            flow_run_filter=flow_run_filter,
            sort=FlowRunSort.ID_DESC,
            limit=_PAGE,
            offset=len(found),
        )
        found += page
        if len(page) < _PAGE:
            return found


def _stats_rows(client: Any, run_ids: list[Any]) -> dict[Any, list[dict[str, Any]]]:
    """Each completed run's ``worker-stats`` artifact (a row per worker process), read for all
    of them at once. Results are not persisted (a pod's disk is gone with it): the worker
    flow publishes its counters as that artifact instead."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    rows: dict[Any, list[dict[str, Any]]] = {}
    for start in range(0, len(run_ids), _PAGE):
        some = run_ids[start : start + _PAGE]
        try:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["worker-stats"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=some),
                ),
                limit=_PAGE,
            )
        except Exception:  # a run whose stats cannot be read counts as finished
            continue
        for artifact in artifacts:
            data = artifact.data
            table = json.loads(data) if isinstance(data, str) else data
            rows[artifact.flow_run_id] = [r for r in table if isinstance(r, dict)]
    return rows


def _ending_of_row(row: dict[str, Any]) -> Optional[Ending]:
    """A worker process's ending, as its run's stats artifact says."""
    if row.get("ending"):
        try:
            return Ending(Cause(row["ending"]), row.get("ending_detail") or "")
        except ValueError:
            return Ending(Cause.CRASHED, str(row["ending"]))
    return of_stop_reason(row.get("stop_reason"))


#: Prefect's server answers at most 50 events a page: read the events of this many runs at a
#: time (a pod's observer emits one to three).
_EVENTS_PAGE = 50
_RUNS_PER_EVENTS_PAGE = 16


def _pod_reasons(client: Any, runs: Iterable[Any]) -> dict[Any, str]:
    """Why each run's pod ended, as prefect-kubernetes's pod observer reported it: its
    diagnosis (``OOMKilled``, ``Evicted``, ``Unschedulable.InsufficientResources``, ...), else
    the container's terminated reason (``OOMKilled``, ``Error``); the latest event first.
    Nothing where no observer reports (a process pool) or the events cannot be read."""
    runs = list(runs)
    reasons: dict[Any, str] = {}
    for start in range(0, len(runs), _RUNS_PER_EVENTS_PAGE):
        reasons.update(_pod_reasons_of(client, runs[start : start + _RUNS_PER_EVENTS_PAGE]))
    return reasons


def _pod_reasons_of(client: Any, runs: list[Any]) -> dict[Any, str]:
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventRelatedFilter,
    )

    by_resource = {f"prefect.flow-run.{run.id}": run.id for run in runs}
    since = min(run.created for run in runs if run.created is not None)
    try:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(since=since),
                event=EventNameFilter(prefix=["prefect.kubernetes.pod."]),
                related=EventRelatedFilter(id=list(by_resource)),
            ),
            limit=_EVENTS_PAGE,
        )
    except Exception:  # the state's message still says how the run ended
        return {}
    reasons: dict[Any, str] = {}
    for event in sorted(page.events, key=lambda e: e.occurred, reverse=True):
        reason = event.resource.get("kubernetes.diagnosis") or event.resource.get(
            "kubernetes.reason"
        )
        if not reason:
            continue
        for related in event.related:
            run_id = by_resource.get(related.id)
            if run_id is not None:
                reasons.setdefault(run_id, str(reason))
    return reasons
