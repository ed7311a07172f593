"""`DeploymentFleet`: workers as flow runs of a ``worker`` deployment (a GKE work pool in
production), with requests to the Prefect API that do not grow with the number of runs.

- **One fleet per batch**: every run carries the batch's tag (``tqflow-batch-<queue>.<batch>``)
  beside its pipeline run's (``tqflow-fleet-<run>``). A retried or re-run pipeline adopts the
  batch's live runs instead of launching a second fleet beside them (`adopt`, and again every
  `ADOPT_SECONDS`).
- **Launching**: the deployment is read once, one placeholder task run links every worker run
  to the pipeline run as its subflow (one request per fleet, where `run_deployment` makes one
  per run), and runs are created ``launch_concurrency`` at a time (default: 8 on Prefect Cloud,
  one at a time on a self-hosted server, whose SQLite takes one write at a time), each with an
  idempotency key (``<run>-<fleet>-worker-<n>``): a create whose answer was lost is sent again
  with the same key by the next launch, and finds its run instead of making a second one.
- **Watching**: each look reads, among the runs it knows by id, those in a final state and
  those not started: two requests whatever the fleet's size (more only past 200 of either),
  plus one for the stats of the runs that completed and one per 16 lost or waiting runs for
  their pod events. No offsets into a growing set are trusted (answers are deduplicated by id,
  and a run missed is found on the next look) and no clock is compared with the server's.
- **Waiting is not lost**: a run not started ``start_timeout_seconds`` after its launch is
  *waiting* for capacity (no node, the project's quota); it is not cancelled nor replaced, and
  the pod observer's diagnosis says why. One that cannot start however long it waits (an image
  that cannot be pulled, a pod that crash-loops) is reported as ``cannot_start``.
- **Cancelling** never forces a state: a run that already ended keeps its final state.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from tqflow.engine.drain import DrainBoard
from tqflow.fleet.base import Fleet, FleetView
from tqflow.fleet.clock import Clock
from tqflow.fleet.endings import Ending, of_run, of_stop_reason

#: The states of a run that has not started yet, and those of a run that has ended.
_NOT_STARTED = ("SCHEDULED", "PENDING")
_FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
#: The API's largest page.
_PAGE = 200
#: How often the batch's live runs are read by its tag, to adopt those another controller
#: of the batch launched meanwhile.
ADOPT_SECONDS = 300.0
#: How often the pod events of waiting runs are read again.
WAITING_REASON_SECONDS = 60.0
#: What prefect-kubernetes's pod observer diagnoses that no wait cures.
CANNOT_START = ("ImagePullError", "CrashLoopBackOff")


#: Every run a fleet launches carries ``<prefix><pipeline run>``: the worker flow knows by it
#: that its workers are a fleet's unit.
FLEET_TAG_PREFIX = "tqflow-fleet-"


def batch_tag(queue_name: str, batch: str) -> str:
    """The tag every worker run of a batch carries, whoever launched it."""
    return f"tqflow-batch-{queue_name}.{batch}"


@dataclass
class _Run:
    #: When this fleet launched or adopted it (the fleet's clock, never the server's).
    since: float
    started: bool = False
    stopping: bool = False
    #: Looks in a row that did not find it among the runs not started.
    not_seen_waiting: int = 0


def _prefect_client() -> AbstractContextManager[Any]:
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


class DeploymentFleet(Fleet):
    """Workers as runs of the deployment ``flow-name/deployment-name``, ``processes`` worker
    processes in each. ``parameters`` name saved blocks by slug (no secret travels as a
    flow-run parameter); ``parent_flow_run_id``, the pipeline run whose subflows they are;
    ``client``, how to open a Prefect client (a stand-in API in the simulated day)."""

    def __init__(
        self,
        deployment: str,
        parameters: dict[str, Any],
        run_key: str,
        *,
        batch_tag: str,
        parent_flow_run_id: Optional[str] = None,
        processes: int = 1,
        start_timeout_seconds: float = 900.0,
        launch_concurrency: Optional[int] = None,
        drain_board: Optional[DrainBoard] = None,
        clock: Optional[Clock] = None,
        client: Callable[[], AbstractContextManager[Any]] = _prefect_client,
    ) -> None:
        super().__init__(clock)
        self.deployment = deployment
        self.parameters = {**parameters, "processes": processes}
        self.run_key = run_key
        self.parent_flow_run_id = parent_flow_run_id
        self.processes_per_unit = processes
        self.start_timeout_seconds = start_timeout_seconds
        self.launch_concurrency = launch_concurrency
        self.drain_board = drain_board
        self._client = client
        self.tag = f"{FLEET_TAG_PREFIX}{run_key}"
        self.batch_tag = batch_tag
        self._fleet_id = uuid.uuid4().hex[:8]
        self._deployment_id: Any = None
        self._parent_task_run_id: Any = None
        self._next_index = 0
        #: Indices whose create raised: sent again, with the same key, by the next launch.
        self._unanswered: list[int] = []
        self._live: dict[Any, _Run] = {}
        self._ended: set[Any] = set()
        self._next_adopt = float("-inf")
        self._waiting_reasons: dict[Any, str] = {}
        self._next_waiting_read = float("-inf")

    # -- adopting and launching -----------------------------------------------------------------

    def adopt(self) -> int:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterDeploymentId,
            FlowRunFilterState,
            FlowRunFilterStateType,
            FlowRunFilterTags,
        )

        with self._client() as client:
            self._prepare(client)
            chosen = FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[self._deployment_id]),
                tags=FlowRunFilterTags(all_=[self.batch_tag]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=list(_FINAL))),
            )
            found = _pages(client, chosen)
        self._next_adopt = self.clock.monotonic() + ADOPT_SECONDS
        adopted = 0
        for run in found:
            if run.id in self._live or run.id in self._ended:
                continue
            self._live[run.id] = _Run(
                since=self.clock.monotonic(), started=_state(run) not in _NOT_STARTED
            )
            adopted += 1
        self.adopted += adopted
        return adopted

    def launch(self, n: int) -> None:
        if n <= 0:
            return
        with self._client() as client:
            self._prepare(client)
            retried, self._unanswered = self._unanswered[:n], self._unanswered[n:]
            fresh = list(range(self._next_index, self._next_index + n - len(retried)))
            self._next_index += len(fresh)
            answers = self._create_all(client, retried + fresh)
        failure: Optional[BaseException] = None
        for index, answer in answers:
            if isinstance(answer, Exception):
                self._unanswered.append(index)
                failure = failure or answer
                continue
            if answer.id in self._live or answer.id in self._ended:
                continue  # a create sent again found the run it had made
            if answer.state is not None and answer.state.is_final():
                self._ended.add(answer.id)
                continue
            self._live[answer.id] = _Run(since=self.clock.monotonic())
            self.launched += 1
        if failure is not None:
            raise failure

    def _prepare(self, client: Any) -> None:
        """Once per fleet: the deployment, and the task run its runs are subflows of."""
        if self._deployment_id is not None:
            return
        from prefect import Task
        from prefect.client.base import ServerType
        from prefect.states import Running

        if self.launch_concurrency is None:
            # Prefect Cloud takes concurrent writes. A self-hosted server on SQLite takes one at
            # a time and answers more with 503s, which Prefect's client retries after backing
            # off seconds: 200 runs took 20 s one at a time, 60 to 100 s two to eight at a time.
            self.launch_concurrency = 8 if client.server_type == ServerType.CLOUD else 1
        deployment_id = client.read_deployment_by_name(self.deployment).id
        if self.parent_flow_run_id is not None:
            placeholder = Task(name=f"{self.deployment} runs", fn=lambda: None)
            self._parent_task_run_id = client.create_task_run(
                task=placeholder,
                flow_run_id=uuid.UUID(str(self.parent_flow_run_id)),
                dynamic_key=self.tag,
                state=Running(),
            ).id
        self._deployment_id = deployment_id

    def _create_all(self, client: Any, indices: list[int]) -> list[tuple[int, Any]]:
        def create(index: int) -> tuple[int, Any]:
            try:
                return index, client.create_flow_run_from_deployment(
                    self._deployment_id,
                    parameters=self.parameters,
                    tags=[self.tag, self.batch_tag],
                    idempotency_key=f"{self.run_key}-{self._fleet_id}-worker-{index}",
                    parent_task_run_id=self._parent_task_run_id,
                )
            except Exception as exc:
                return index, exc

        with ThreadPoolExecutor(max_workers=self.launch_concurrency or 1) as pool:
            return list(pool.map(create, indices))

    # -- watching -------------------------------------------------------------------------------

    def observe(self) -> FleetView:
        if self._live and self.clock.monotonic() >= self._next_adopt:
            self.adopt()
        if not self._live:
            return FleetView()
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )

        def among_live(types: Iterable[str]) -> Any:
            return FlowRunFilter(
                id=FlowRunFilterId(any_=list(self._live)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types))),
            )

        with self._client() as client:
            ended = _pages(client, among_live(_FINAL))
            not_started = {r.id: r for r in _pages(client, among_live(_NOT_STARTED))}
            if ended:
                self._record_ends(client, [r for r in ended if r.id in self._live])
            now = self.clock.monotonic()
            for run_id, run in self._live.items():
                if run_id in not_started:
                    run.not_seen_waiting = 0
                elif not run.started:
                    # Started when two looks in a row did not find it waiting: a page of
                    # waiting runs that shifted under the reader cannot start one.
                    run.not_seen_waiting += 1
                    run.started = run.not_seen_waiting >= 2
            waiting = [
                not_started[i]
                for i, run in self._live.items()
                if not run.started
                and not run.stopping
                and i in not_started
                and now - run.since >= self.start_timeout_seconds
            ]
            reason, cannot_start = self._why_waiting(client, waiting, now)
        running = [str(i) for i, r in self._live.items() if r.started and not r.stopping]
        stopping = sum(1 for r in self._live.values() if r.stopping)
        return FleetView(
            starting=len(self._live) - len(running) - stopping,
            running=len(running),
            stopping=stopping,
            waiting=len(waiting),
            waiting_reason=reason,
            cannot_start=cannot_start,
            running_units=frozenset(running),
        )

    def _record_ends(self, client: Any, runs: list[Any]) -> None:
        completed = [r for r in runs if r.state.is_completed()]
        rows = _stats_rows(client, [r.id for r in completed]) if completed else {}
        lost = [r for r in runs if not r.state.is_completed() and not self._live[r.id].stopping]
        pods = _pod_reasons(client, lost) if lost else {}
        for run in runs:
            stopped = self._live.pop(run.id).stopping
            self._ended.add(run.id)
            self._waiting_reasons.pop(run.id, None)
            if run.state.is_completed():
                stats = rows.get(run.id, [])
                endings = [e for e in map(_ending_of_row, stats) if e is not None]
            else:
                stats = []
                message = run.state.message or run.state.name or ""
                endings = [of_run(run.state.type.value, message, pods.get(run.id))]
            self._record_end(stats, endings, stopped)

    def _why_waiting(self, client: Any, waiting: list[Any], now: float) -> tuple[str, str]:
        """What keeps the waiting runs from starting, in one phrase, and the reason none can
        start if the pod observer diagnosed one that waiting does not cure."""
        if not waiting:
            self._waiting_reasons.clear()
            return "", ""
        unknown = [r for r in waiting if r.id not in self._waiting_reasons]
        if now >= self._next_waiting_read or len(unknown) == len(waiting):
            self._next_waiting_read = now + WAITING_REASON_SECONDS
            asked = (unknown or waiting)[:_RUNS_PER_EVENTS_PAGE]  # a sample tells the reason
            self._waiting_reasons.update(_pod_reasons(client, asked))
        reasons = [self._waiting_reasons.get(r.id) for r in waiting]
        known = [r for r in reasons if r]
        fatal = next((r for r in known if r.split(".")[0] in CANNOT_START), "")
        if known:
            reason = max(set(known), key=known.count)
        elif all(_state(r) == "SCHEDULED" for r in waiting):
            reason = "Scheduled: no worker of the work pool has picked them up"
        else:
            reason = "Pending: no pod event yet"
        return reason, fatal

    # -- stopping -------------------------------------------------------------------------------

    def shrink(self, n: int) -> int:
        """Stop ``n`` active runs: those not started yet first (cancelled: nothing to lose),
        then the newest running ones, drained through the board (their workers finish their
        task), or cancelled without a board."""
        active = [(i, r) for i, r in self._live.items() if not r.stopping]
        active.sort(key=lambda ir: (ir[1].started, -ir[1].since))
        chosen = active[: max(0, n)]
        to_drain = [i for i, r in chosen if r.started and self.drain_board is not None]
        if to_drain:
            assert self.drain_board is not None
            self.drain_board.drain(str(i) for i in to_drain)
        cancel = [i for i, _ in chosen if i not in to_drain]
        if cancel:
            with self._client() as client:
                for run_id in cancel:
                    self._cancel(client, run_id)
        for _, run in chosen:
            run.stopping = True
        return len(chosen)

    def declare_lost(self, units: Iterable[str], ending: Ending) -> None:
        units = set(units)
        silent = [i for i in self._live if str(i) in units]
        if not silent:
            return
        with self._client() as client:
            for run_id in silent:
                self._cancel(client, run_id)
        for run_id in silent:
            self._live.pop(run_id)
            self._ended.add(run_id)
            self._record_end([], [ending], False)

    def stop(self) -> None:
        """Cancel every run still live, and end the placeholder task run."""
        try:
            with self._client() as client:
                runs = list(self._live)
                for run_id in runs:
                    self._live[run_id].stopping = True
                with ThreadPoolExecutor(max_workers=self.launch_concurrency or 1) as pool:
                    list(pool.map(lambda run_id: self._cancel(client, run_id), runs))
                if self._parent_task_run_id is not None:
                    from prefect.states import Completed

                    client.set_task_run_state(self._parent_task_run_id, Completed(), force=True)
        except Exception:  # the API is down: the runs end on their own once drained
            pass

    @staticmethod
    def _cancel(client: Any, run_id: Any) -> None:
        """Cancelling, so that its worker stops the run's infrastructure (the workers in it get
        SIGTERM and release their leases); the server makes a run that has none yet Cancelled,
        and refuses to change one that already ended."""
        from prefect.states import Cancelling

        try:
            client.set_flow_run_state(run_id, Cancelling(), force=False)
        except Exception:  # the API is down: its own end says how it ended
            pass


def _state(run: Any) -> str:
    return run.state.type.value if run.state is not None else "SCHEDULED"


def _pages(client: Any, flow_run_filter: Any) -> list[Any]:
    """Every flow run the filter selects, a page of `_PAGE` at a time, each once: a run that
    moved between pages is either read twice (kept once) or missed (read on the next look)."""
    from prefect.client.schemas.sorting import FlowRunSort

    found: dict[Any, Any] = {}
    offset = 0
    while True:
        page = client.read_flow_runs(
            flow_run_filter=flow_run_filter,
            sort=FlowRunSort.ID_DESC,
            limit=_PAGE,
            offset=offset,
        )
        offset += len(page)
        for run in page:
            found.setdefault(run.id, run)
        if len(page) < _PAGE:
            return list(found.values())


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
    from tqflow.fleet.endings import Cause

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
    """Why each run's pod ended or waits, as prefect-kubernetes's pod observer reported it:
    its diagnosis (``OOMKilled``, ``Evicted``, ``Unschedulable.InsufficientResources``,
    ``ImagePullError``, ...), else the container's terminated reason (``OOMKilled``,
    ``Error``); the latest event first. Nothing where no observer reports (a process pool) or
    the events cannot be read."""
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
    created = [run.created for run in runs if run.created is not None]
    occurred = EventOccurredFilter(since=min(created)) if created else EventOccurredFilter()
    try:
        page = client.read_events(
            EventFilter(
                occurred=occurred,
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
