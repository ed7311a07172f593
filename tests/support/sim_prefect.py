"""A stand-in Prefect API over a simulated cluster (`tests.support.sim_cluster.World`): the
client methods tqflow's `DeploymentFleet` calls, answering as Prefect 3.8's server does (runs by
id, tags, deployment and state type, sorted by id and paged; a Cancelling proposed without
force made Cancelled for a run without infrastructure and refused for one that ended; pod
events as prefect-kubernetes's observer emits them), with the world's faults: an outage, 429s
past a plan's limit, timestamps from a skewed clock, pages that shift between requests.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from prefect.client.base import ServerType

from tests.support.sim_cluster import Run, World


@dataclass
class _StateType:
    value: str


@dataclass
class SimState:
    type: _StateType
    name: str
    message: str = ""

    def is_final(self) -> bool:
        return self.type.value in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

    def is_completed(self) -> bool:
        return self.type.value == "COMPLETED"


@dataclass
class SimFlowRun:
    id: uuid.UUID
    state: SimState
    created: dt.datetime
    tags: list[str] = field(default_factory=list)
    end_time: Optional[dt.datetime] = None

    @property
    def expected_start_time(self) -> dt.datetime:
        return self.created


@dataclass
class _Related:
    id: str


@dataclass
class _Event:
    occurred: dt.datetime
    resource: dict[str, str]
    related: list[_Related]


@dataclass
class _Page:
    events: list[_Event]


@dataclass
class _Artifact:
    flow_run_id: uuid.UUID
    data: Any


@dataclass
class _Id:
    id: Any


class SimPrefectClient:
    """One client of the stand-in API; a context manager like Prefect's sync client."""

    server_type = ServerType.CLOUD

    def __init__(self, world: World) -> None:
        self.world = world
        self.calls: dict[str, int] = {}

    def __enter__(self) -> "SimPrefectClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.world.spend(1, refusable=True)

    def _at(self, seconds: float) -> dt.datetime:
        moment = self.world.clock.epoch + seconds + self.world.scenario.server_skew_seconds
        return dt.datetime.fromtimestamp(moment, dt.timezone.utc)

    def _view(self, run: Run) -> SimFlowRun:
        return SimFlowRun(
            id=run.id,
            state=SimState(_StateType(run.state), run.name, run.message),
            created=self._at(run.created),
            tags=run.tags,
            end_time=self._at(run.ended_at) if run.ended_at is not None else None,
        )

    # -- what DeploymentFleet calls ---------------------------------------------------------------

    def read_deployment_by_name(self, name: str) -> _Id:
        self._call("read_deployment_by_name")
        return _Id(uuid.UUID(int=1))

    def create_task_run(self, **_: Any) -> _Id:
        self._call("create_task_run")
        return _Id(uuid.uuid4())

    def set_task_run_state(self, *_: Any, **__: Any) -> None:
        self._call("set_task_run_state")

    def create_flow_run_from_deployment(
        self, deployment_id: Any, *, tags: list[str], idempotency_key: str, **_: Any
    ) -> SimFlowRun:
        self._call("create_flow_run_from_deployment")
        return self._view(self.world.create_run(idempotency_key, tags))

    def read_flow_runs(
        self, *, flow_run_filter: Any, sort: Any = None, limit: int = 200, offset: int = 0
    ) -> list[SimFlowRun]:
        self._call("read_flow_runs")
        chosen = _chosen(self.world, flow_run_filter, self._at)
        chosen.sort(key=lambda r: str(r.id), reverse=True)
        if self.world.scenario.shifting_pages and offset:
            offset -= 1  # a run ended between the pages: the next one starts a row early
        return [self._view(r) for r in chosen[offset : offset + limit]]

    def set_flow_run_state(self, run_id: Any, state: Any, force: bool = False) -> Any:
        self._call("set_flow_run_state")
        run = self.world.runs[uuid.UUID(str(run_id))]
        assert state.type.value in ("CANCELLING", "CANCELLED"), state
        return self.world.cancel(run, force)

    def read_artifacts(self, *, artifact_filter: Any, limit: int = 200) -> list[_Artifact]:
        self._call("read_artifacts")
        ids = artifact_filter.flow_run_id.any_
        runs = [self.world.runs[uuid.UUID(str(i))] for i in ids]
        return [_Artifact(r.id, r.rows) for r in runs if r.rows][:limit]

    def read_events(self, event_filter: Any, limit: int = 50) -> _Page:
        self._call("read_events")
        wanted = set(event_filter.related.id or [])
        events = []
        for run in self.world.runs.values():
            resource_id = f"prefect.flow-run.{run.id}"
            if resource_id not in wanted:
                continue
            for diagnosis in run.pod_events:
                events.append(
                    _Event(
                        occurred=self._at(run.created),
                        resource={"kubernetes.diagnosis": diagnosis},
                        related=[_Related(resource_id)],
                    )
                )
        return _Page(events[:limit])


def _chosen(world: World, flow_run_filter: Any, at: Any) -> list[Run]:
    f = flow_run_filter
    if f.id is not None and f.id.any_ is not None:
        runs = [world.runs[i] for i in map(_uuid, f.id.any_) if i in world.runs]
    else:
        runs = list(world.runs.values())
    if f.tags is not None and f.tags.all_:
        runs = [r for r in runs if set(f.tags.all_) <= set(r.tags)]
    if f.state is not None and f.state.type is not None:
        any_: Optional[list[Any]] = f.state.type.any_
        not_any: Optional[list[Any]] = f.state.type.not_any_
        if any_ is not None:
            states = {getattr(t, "value", t) for t in any_}
            runs = [r for r in runs if r.state in states]
        if not_any is not None:
            excluded = {getattr(t, "value", t) for t in not_any}
            runs = [r for r in runs if r.state not in excluded]
    if f.end_time is not None and f.end_time.after_ is not None:
        runs = [r for r in runs if r.ended_at is not None and at(r.ended_at) >= f.end_time.after_]
    if f.expected_start_time is not None and f.expected_start_time.before_ is not None:
        runs = [r for r in runs if at(r.created) <= f.expected_start_time.before_]
    return runs


def _uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
