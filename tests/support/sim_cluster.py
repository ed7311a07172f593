"""A simulated world for the batch controller: a clock, an SQS-like queue of tasks, a bucket
for the workers' reports, and a GKE cluster whose pods run worker runs of k processes.

The controller, its fleet (`tqflow.fleet.deployment.DeploymentFleet`), its sizers, liveness
and API budget are tqflow's real code; only what they talk to is simulated, as the cloud
behaves (and `tests.support.sim_prefect` is the Prefect API). Time moves only when the
controller sleeps (`SimClock.sleep` advances the world), so a day of a thousand pods runs in
seconds, reproducibly from its seed.

What the world does, by its `Scenario`:

- runs go Scheduled -> Pending (the Kubernetes worker submits them, ``pickup_seconds``) ->
  Running (the pod starts after ``pod_start_seconds``, while the quota allows ``quota_pods``;
  past it a pod stays Pending and the pod observer says ``Unschedulable.InsufficientResources``);
- each worker process leases a task at a time (its time drawn around ``task_seconds``), writes
  its report every ``report_seconds`` under a new name carrying its unit, reads the drain
  board as often, leaves after ``idle_seconds`` with nothing visible, and drains when named;
- spot preemption at ``preemptions_per_pod_hour``: SIGTERM, the processes release their
  tasks, the run completes with stats saying so (as prefect-kubernetes and tqflow's worker
  make it); a share ``vanish_share`` of them vanish instead, their run left Running for ever
  and their tasks back only when their leases end;
- a cancel reaches a pod after ``cancel_seconds`` (SIGTERM, tasks released); a share
  ``stuck_cancelling_share`` of cancelled runs stay Cancelling for ever;
- a node-pool upgrade at ``upgrade_at`` preempts every running pod at once;
- the Prefect API is out during ``api_outage`` and refuses calls past ``api_limit`` a minute;
  the pipeline's pod is evicted at ``evict_at`` (`Evicted`, raised from the clock's sleep).
"""

from __future__ import annotations

import math
import random
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from tqflow.engine.contracts import JSONFiles, QueueCounts
from tqflow.engine.layout import drain_path, report_path


class Evicted(BaseException):
    """The pipeline's pod got SIGTERM (a node upgrade, an eviction): what Prefect raises in the
    flow body."""


class ApiUnavailable(Exception):
    """The Prefect API refused the connection, or answered 429 past its limit."""


@dataclass
class Scenario:
    tasks: int = 10_000
    task_seconds: float = 60.0
    #: Spread of task times: each is task_seconds x a lognormal factor of this sigma.
    task_sigma: float = 0.3
    processes: int = 4
    idle_seconds: float = 5.0
    report_seconds: float = 25.0
    lease_seconds: float = 300.0
    pickup_seconds: float = 5.0
    pod_start_seconds: tuple[float, float] = (60.0, 120.0)
    cancel_seconds: float = 45.0
    quota_pods: Optional[int] = None
    #: The image cannot be pulled: no pod ever starts.
    image_pull_error: bool = False
    preemptions_per_pod_hour: float = 0.0
    vanish_share: float = 0.0
    stuck_cancelling_share: float = 0.0
    #: (start, end) seconds of a Prefect API outage.
    api_outage: Optional[tuple[float, float]] = None
    #: Requests a minute past which the API answers 429 (Prefect Cloud's plans).
    api_limit: Optional[int] = None
    evict_at: Optional[float] = None
    #: A node-pool upgrade at this second: every running pod preempted at once.
    upgrade_at: Optional[float] = None
    #: The server's clock, ahead of the pipeline's by this many seconds.
    server_skew_seconds: float = 3_600.0
    #: Pages of runs shift by one row between requests (a run that ended meanwhile).
    shifting_pages: bool = False
    seed: int = 1


#: What a pod's own calls cost the API: the Kubernetes worker's to submit it, the run's
#: engine at its start (states, blocks, deployment) and at its end (stats artifact, state).
SUBMIT_REQUESTS, START_REQUESTS, END_REQUESTS = 6, 16, 6


class SimClock:
    def __init__(self, world: "World") -> None:
        self.world = world
        self.epoch = 1_800_000_000.0

    def time(self) -> float:
        return self.epoch + self.world.now

    def monotonic(self) -> float:
        return self.world.now

    def sleep(self, seconds: float) -> None:
        self.world.advance(seconds)


class SimStorage:
    """A bucket in memory, with the methods the controller and the drain board use."""

    cloudpath = "mem://sim"

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}

    def list(self, prefix: str = "", *, expected: Any = ()) -> Any:
        return iter(sorted(p for p in self.files if p.startswith(prefix)))

    def get_json(self, path: str) -> Any:
        return self.files.get(path)

    def get_json_many(self, paths: Any) -> JSONFiles:
        return JSONFiles({p: self.files[p] for p in paths if p in self.files})

    def put_json(self, path: str, value: Any) -> None:
        self.files[path] = value

    def exists(self, path: str) -> bool:
        return path in self.files

    def delete(self, path: str) -> None:
        self.files.pop(path, None)


class SimQueue:
    """The batch's tasks, SQS-like: leased, acknowledged, or released back."""

    queue_name = "sim"

    def __init__(self, world: "World", durations: list[float]) -> None:
        self.world = world
        self.durations = durations
        self.visible: deque[int] = deque(range(len(durations)))
        self.in_flight = 0
        self.done = [0] * len(durations)
        #: Tasks done at least once.
        self.done_once = 0
        #: Tasks released by leases that end later: (when, task).
        self.returning: list[tuple[float, int]] = []

    def counts(self) -> QueueCounts:
        return QueueCounts(len(self.visible), self.in_flight + len(self.returning), 0, 0)

    def take(self) -> Optional[int]:
        if not self.visible:
            return None
        self.in_flight += 1
        return self.visible.popleft()

    def release(self, task: int, after: float = 0.0) -> None:
        self.in_flight -= 1
        if after > 0:
            self.returning.append((self.world.now + after, task))
        else:
            self.visible.append(task)

    def ack(self, task: int) -> None:
        self.in_flight -= 1
        self.done[task] += 1
        self.done_once += self.done[task] == 1

    def leases_end(self) -> None:
        back = [t for when, t in self.returning if when <= self.world.now]
        if back:
            self.returning = [(w, t) for w, t in self.returning if w > self.world.now]
            self.visible.extend(back)


@dataclass
class Process:
    worker: str
    task: Optional[int] = None
    left: float = 0.0
    idle: float = 0.0
    stop_reason: Optional[str] = None
    version: int = 0
    next_report: float = 0.0
    succeeded: int = 0


@dataclass
class Run:
    id: uuid.UUID
    idempotency_key: str
    tags: list[str]
    created: float
    state: str = "SCHEDULED"
    name: str = "Scheduled"
    message: str = ""
    submit_at: float = 0.0
    start_at: Optional[float] = None
    processes: list[Process] = field(default_factory=list)
    cancel_at: Optional[float] = None
    stuck: bool = False
    #: A cancel reached it while a process held a task.
    cancelled_working: bool = False
    rows: list[dict[str, Any]] = field(default_factory=list)
    pod_events: list[str] = field(default_factory=list)
    ended_at: Optional[float] = None

    @property
    def final(self) -> bool:
        return self.state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

    def end(self, state: str, name: str, now: float) -> None:
        self.state, self.name, self.ended_at, self.cancel_at = state, name, now, None


class World:
    """Everything the controller's clock moves; ``step`` seconds at most per move."""

    def __init__(self, scenario: Scenario, batch: str = "sim", step: float = 5.0) -> None:
        self.scenario, self.batch, self.step = scenario, batch, step
        self.random = random.Random(scenario.seed)
        self.now = 0.0
        self.clock = SimClock(self)
        durations = [
            scenario.task_seconds * self.random.lognormvariate(0, scenario.task_sigma)
            for _ in range(scenario.tasks)
        ]
        self.queue = SimQueue(self, durations)
        self.storage = SimStorage()
        self.runs: dict[uuid.UUID, Run] = {}
        #: The runs not in a final state.
        self.open: dict[uuid.UUID, Run] = {}
        self.by_key: dict[str, Run] = {}
        #: Requests to the API by 10-second bucket (the pods' own included), and refused ones.
        self.requests: dict[int, int] = {}
        self.refused = 0
        self.evicted = False
        #: States proposed with force.
        self.forced = 0
        #: Pods preempted, and of them those that vanished with their run left Running.
        self.preempted = 0
        self.vanished = 0
        #: (seconds, runs running, runs active) at each move, for the figures.
        self.finished_at: Optional[float] = None
        self.min_running_after_start: Optional[int] = None
        self.peak_active = 0

    # -- the API's budget, as the stand-in API and the pods spend it -----------------------------

    def spend(self, n: int = 1, refusable: bool = False) -> None:
        s = self.scenario
        if refusable and s.api_outage and s.api_outage[0] <= self.now < s.api_outage[1]:
            raise ApiUnavailable("connection refused (the Prefect API is out)")
        if refusable and s.api_limit and self.last_minute() >= s.api_limit:
            self.refused += 1
            raise ApiUnavailable("429 Too Many Requests, after the client's retries")
        bucket = int(self.now // 10)
        self.requests[bucket] = self.requests.get(bucket, 0) + n

    def last_minute(self) -> int:
        bucket = int(self.now // 10)
        return sum(self.requests.get(b, 0) for b in range(bucket - 5, bucket + 1))

    def peak_per_minute(self) -> int:
        if not self.requests:
            return 0
        last = max(self.requests)
        return max(
            sum(self.requests.get(b, 0) for b in range(end - 5, end + 1))
            for end in range(min(self.requests), last + 1)
        )

    # -- time -------------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            dt = min(self.step, end - self.now)
            self.now += dt
            self._move(dt)
            s = self.scenario
            if s.evict_at is not None and not self.evicted and self.now >= s.evict_at:
                self.evicted = True
                raise Evicted()

    def _move(self, dt: float) -> None:
        s = self.scenario
        self.queue.leases_end()
        pods_up = sum(
            1
            for r in self.open.values()
            if r.processes or (r.state == "PENDING" and r.start_at is not None)
        )
        for run in list(self.open.values()):
            if run.final:
                self.open.pop(run.id)
                continue
            if run.state == "SCHEDULED" and self.now >= run.submit_at:
                self.spend(SUBMIT_REQUESTS)
                run.state, run.name = "PENDING", "Pending"
            if run.state == "PENDING" and run.start_at is None:
                if s.image_pull_error:
                    if not run.pod_events:
                        run.pod_events.append("ImagePullError")
                elif s.quota_pods is None or pods_up < s.quota_pods:
                    low, high = s.pod_start_seconds
                    run.start_at = self.now + self.random.uniform(low, high)
                    pods_up += 1
                elif not run.pod_events:
                    run.pod_events.append("Unschedulable.InsufficientResources")
            if run.state == "PENDING" and run.start_at is not None and self.now >= run.start_at:
                self._start(run)
            if run.cancel_at is not None and self.now >= run.cancel_at:
                self._end_pod(run, "stopped", cancelled=True)
                continue
            if run.processes:
                self._work(run, dt)
        if s.upgrade_at is not None and self.now - dt < s.upgrade_at <= self.now:
            for run in list(self.open.values()):
                if run.state == "RUNNING" and run.processes:
                    self._preempt(run)
        rate = s.preemptions_per_pod_hour
        if rate:
            chance = 1 - math.exp(-rate * dt / 3600)
            for run in list(self.open.values()):
                if run.state == "RUNNING" and run.processes and self.random.random() < chance:
                    self._preempt(run)
        for run in [r for r in self.open.values() if r.final]:
            self.open.pop(run.id)
        self._watch()

    def _start(self, run: Run) -> None:
        self.spend(START_REQUESTS)
        run.state, run.name = "RUNNING", "Running"
        run.processes = [
            Process(worker=f"pod-{run.id.hex[:8]}-{n}") for n in range(self.scenario.processes)
        ]
        for process in run.processes:
            self._report(run, process)

    def _work(self, run: Run, dt: float) -> None:
        s = self.scenario
        draining = run.cancel_at is None and str(run.id) in self._drained()
        for p in run.processes:
            if p.stop_reason:
                continue
            left = dt
            while left > 0 and not p.stop_reason:
                if p.task is None:
                    if draining:
                        p.stop_reason = "drained"
                        break
                    p.task = self.queue.take()
                    if p.task is None:
                        p.idle += left
                        if p.idle >= s.idle_seconds:
                            p.stop_reason = "idle"
                        break
                    p.idle, p.left = 0.0, self.queue.durations[p.task]
                used = min(left, p.left)
                p.left -= used
                left -= used
                if p.left <= 0 and p.task is not None:
                    self.queue.ack(p.task)
                    p.task, p.succeeded = None, p.succeeded + 1
            if self.now >= p.next_report:
                self._report(run, p)
        if all(p.stop_reason for p in run.processes):
            self._complete(run)

    def _drained(self) -> list[str]:
        board = self.storage.files.get(drain_path(self.batch)) or {}
        return board.get("units", [])

    def _report(self, run: Run, p: Process) -> None:
        """A new version of the process's report, named for its unit (the old one deleted)."""
        name = f"{p.worker}@{run.id}"
        old = report_path(self.batch, name, p.version)
        self.storage.files.pop(old, None)
        p.version += 1
        self.storage.files[report_path(self.batch, name, p.version)] = {"succeeded": p.succeeded}
        p.next_report = self.now + self.scenario.report_seconds

    def _release_tasks(self, run: Run, after: float = 0.0) -> None:
        for p in run.processes:
            if p.task is not None:
                self.queue.release(p.task, after)
                p.task = None

    def _preempt(self, run: Run) -> None:
        self.preempted += 1
        if self.random.random() < self.scenario.vanish_share:
            self.vanished += 1
            # the node is gone: nothing releases the leases, and the run stays Running
            self._release_tasks(run, after=self.scenario.lease_seconds)
            run.processes = []
            return
        self._end_pod(run, "stopped")

    def _end_pod(self, run: Run, reason: str, cancelled: bool = False) -> None:
        if any(p.task is not None for p in run.processes) and cancelled:
            run.cancelled_working = True
        self._release_tasks(run)
        for p in run.processes:
            p.stop_reason = p.stop_reason or reason
        if cancelled:
            run.rows = []
            run.processes = []
            if run.stuck:
                return
            self.spend(END_REQUESTS)
            run.end("CANCELLED", "Cancelled", self.now)
            return
        self._complete(run)

    def _complete(self, run: Run) -> None:
        self.spend(END_REQUESTS)
        run.rows = [
            {"stop_reason": p.stop_reason, "succeeded": p.succeeded, "ending": ""}
            for p in run.processes
        ]
        run.processes = []
        run.end("COMPLETED", "Completed", self.now)

    def _watch(self) -> None:
        running = sum(1 for r in self.open.values() if r.state == "RUNNING" and r.processes)
        active = sum(1 for r in self.open.values() if not r.final and r.cancel_at is None)
        self.peak_active = max(self.peak_active, active)
        if self.finished_at is None and self.tasks_done() == self.scenario.tasks:
            self.finished_at = self.now
        if running and self.finished_at is None:
            self.min_running_after_start = min(self.min_running_after_start or running, running)

    # -- what the stand-in API does to runs ------------------------------------------------------

    def create_run(self, key: str, tags: list[str]) -> Run:
        if key in self.by_key:
            return self.by_key[key]
        run = Run(
            id=uuid.UUID(int=self.random.getrandbits(128)),
            idempotency_key=key,
            tags=list(tags),
            created=self.now,
            submit_at=self.now + self.scenario.pickup_seconds,
        )
        self.runs[run.id] = run
        self.open[run.id] = run
        self.by_key[key] = run
        return run

    def cancel(self, run: Run, force: bool = False) -> str:
        """A Cancelling proposed: the server's answer. Forced, it is taken whatever the run's
        state (a run that had completed is Cancelling again, its end time cleared)."""
        if force:
            self.forced += 1
        if run.final and not force:
            return "ABORT"
        if run.state == "SCHEDULED" and not force:
            run.end("CANCELLED", "Cancelled", self.now)
            return "REJECT"  # made Cancelled instead
        if run.final:
            run.ended_at = None
            self.open[run.id] = run
        if run.state != "CANCELLING":
            run.state, run.name = "CANCELLING", "Cancelling"
            run.cancel_at = self.now + self.scenario.cancel_seconds
            run.stuck = self.random.random() < self.scenario.stuck_cancelling_share
        return "ACCEPT"

    # -- figures ----------------------------------------------------------------------------------

    def tasks_done(self) -> int:
        return self.queue.done_once

    def cancelled_working(self) -> int:
        return sum(1 for r in self.runs.values() if r.cancelled_working)
