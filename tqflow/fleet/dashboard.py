"""A batch at a glance: counts, throughput, workers and why they died, failures by error type,
and what the tasks used. `BatchDashboard` publishes it as a markdown artifact in the Prefect UI
while the pipeline watches the batch drain, re-rendered every few seconds; ``tqflow status``
prints its failure and resource sections in the terminal.

Everything comes from what is cheap to read at any size: the queue's counts, the controller's
progress, the fleet's endings, and the workers' reports (`tqflow.engine.reports`), never the
outputs themselves.
"""

from __future__ import annotations

import base64
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from tqflow.artifacts import artifact_key
from tqflow.engine.contracts import BatchFolder
from tqflow.engine.reports import BatchTally, batch_tally, read_reports
from tqflow.errors import ResourcePlanError
from tqflow.fleet.base import Fleet
from tqflow.fleet.endings import why_ended
from tqflow.fleet.progress import Progress
from tqflow.gke.right_size import PRICES_AS_OF, BatchUsage, cheapest

#: Points of the throughput plot kept; older ones are thinned out, so memory is flat.
SERIES_POINTS = 400


@dataclass
class Snapshot:
    """What the dashboard shows, at one moment: the controller's progress, and what the
    fleet and the workers' reports add to it."""

    batch: str
    progress: Progress
    workers_lost: int = 0
    why_workers_died: list[str] = field(default_factory=list)
    tally: BatchTally = field(default_factory=BatchTally)
    finished: bool = False


class Throughput:
    """Tasks done against time, for the plot: at most `SERIES_POINTS` points."""

    def __init__(self) -> None:
        self.points: list[tuple[float, int]] = []

    def add(self, elapsed_seconds: float, done: int) -> None:
        self.points.append((elapsed_seconds, done))
        if len(self.points) > SERIES_POINTS:
            self.points = self.points[::2]

    def png(self, batch: str) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 2.4))
        if self.points:
            seconds, done = zip(*self.points, strict=True)
            ax.plot([s / 60 for s in seconds], done, color="#2f6db5")
        ax.set_xlabel("minutes", fontsize=8)
        ax.set_ylabel("tasks done", fontsize=8)
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80)
        plt.close(fig)
        return buffer.getvalue()


def markdown(snapshot: Snapshot, png: Optional[bytes] = None) -> str:
    s, p = snapshot, snapshot.progress
    state = "finished" if s.finished else "running"
    eta = _duration(p.eta_seconds) if p.eta_seconds is not None else "—"
    stale = (
        " (the queue or the Prefect API is not answering: last known figures)" if p.stale else ""
    )
    lines = [
        f"# Batch {s.batch} ({state})",
        "",
        "| done | in flight | waiting | dead-lettered | failed attempts | total |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {p.done:,} | {p.in_flight:,} | {p.waiting:,} | {p.dead_lettered:,} | "
        f"{s.tally.failed:,} | {p.total:,} |",
        "",
        f"**{100.0 * p.fraction:.1f}%** after {_duration(p.elapsed_seconds)}, "
        f"{p.tasks_per_second:,.1f} tasks/s, ETA {eta}{stale}",
        "",
    ]
    if png is not None:
        lines += [f"![throughput](data:image/png;base64,{base64.b64encode(png).decode()})", ""]
    starting = f", {p.workers_starting} starting" if p.workers_starting else ""
    lines += [f"## Workers: {p.workers_running} running{starting}, {s.workers_lost} lost", ""]
    if p.workers_waiting:
        lines += [
            f"{p.workers_running} of {p.workers_running + p.workers_starting} scheduled: "
            f"{p.workers_waiting} have waited past the start timeout ({p.waiting_reason}); "
            "the batch goes on with the capacity it got and launches no more.",
            "",
        ]
    if p.deadline_seconds is not None:
        projected = (
            _duration(p.projected_finish_seconds) if p.projected_finish_seconds is not None else "—"
        )
        lines += [
            f"Sized to finish within {_duration(p.deadline_seconds)}: {p.workers_wanted} "
            f"workers wanted, projected finish after {projected}{_projected_cost(s)}.",
            "",
        ]
    lines += [f"- {line}" for line in s.why_workers_died] or ["No worker lost."]
    lines += ["", "## Failures by error type", ""]
    lines += failure_lines(s.tally, markdown=True) or ["No task has failed."]
    lines += ["", "## What the tasks used", ""]
    lines += resource_lines(s.tally) or ["No task measured yet."]
    return "\n".join(lines) + "\n"


def failure_lines(tally: BatchTally, markdown: bool = False) -> list[str]:
    """One entry per error type, most frequent first: attempts, first keys, and (in markdown)
    the end of an example traceback."""
    bold = "**" if markdown else ""
    lines = []
    for kind, group in sorted(tally.errors.items(), key=lambda kv: -kv[1]["count"]):
        count = group["count"]
        attempts = f"{count:,} failed attempt{'' if count == 1 else 's'}"
        keys = ", ".join(group["keys"])
        lines.append(f"- {bold}{kind}{bold}: {attempts}; first items: {keys}")
        if markdown and group.get("example"):
            tail = "\n".join(group["example"].rstrip().splitlines()[-12:])
            lines += ["", "```", tail, "```", ""]
    return lines


def resource_lines(tally: BatchTally) -> list[str]:
    """Peak memory percentiles, CPU use and worker time of the measured tasks."""
    if not tally.measured_tasks:
        return []
    p50, p99, p999 = (tally.peak_rss_percentile(q) for q in (0.5, 0.99, 0.999))
    cores = tally.cpu_seconds / tally.task_seconds if tally.task_seconds else 0.0
    return [
        f"- {tally.measured_tasks:,} tasks measured",
        f"- worker peak memory during a task: p50 {_mib(p50)}, p99 {_mib(p99)}, "
        f"p99.9 {_mib(p999)}, max {_mib(tally.peak_rss_max)} (idle {_mib(tally.idle_rss_max)})",
        f"- CPU: {cores:.2f} cores a task on average; {tally.cpu_seconds / 3600:,.2f} CPU-hours",
        f"- task time: {tally.task_seconds / 3600:,.2f} worker-hours",
        *cost_lines(tally),
    ]


def cost_lines(tally: BatchTally) -> list[str]:
    """What the worker time so far costs on GKE, in pods of the size the measurements call for
    on the cheapest common machine type (`tqflow.gke.right_size`); none when no type fits."""
    try:
        usage = BatchUsage.of(tally, batch="")
        plan = cheapest(usage, items=max(1, usage.tasks), within_hours=24)
    except ResourcePlanError:
        return []
    assert plan.cost_on_demand is not None and plan.cost_spot is not None  # `cheapest`: priced
    # A plan's cost is its worker-hours times a pod's share of the node price, whatever the
    # node count; planned for the tasks measured, it is the cost of the worker time so far.
    return [
        f"- cost so far on GKE: ${plan.cost_on_demand:,.4f} on demand, "
        f"${plan.cost_spot:,.4f} spot, in {plan.machine_type} pods of "
        f"{plan.cpu_millicores}m CPU / {plan.memory_mib:,} MiB (us-central1 list prices of "
        f"{PRICES_AS_OF})"
    ]


def _projected_cost(s: Snapshot) -> str:
    """The whole batch's cost on GKE at the measured use, or '' before any task is measured."""
    try:
        usage = BatchUsage.of(s.tally, batch="")
        plan = cheapest(usage, items=max(1, s.progress.total), within_hours=24)
    except ResourcePlanError:
        return ""
    return f", projected cost ${plan.cost_on_demand:,.2f} on demand (${plan.cost_spot:,.2f} spot)"


def _mib(n_bytes: Optional[int]) -> str:
    return "—" if n_bytes is None else f"{n_bytes / 2**20:,.0f} MiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


#: Seconds between two updates of a running batch's dashboard artifact.
DASHBOARD_SECONDS = 5.0


class BatchDashboard:
    """The batch's dashboard artifact (key ``<batch>-dashboard``): made once, then updated in
    place at most every `DASHBOARD_SECONDS` while the batch drains, and once at its end. A
    failure to publish is logged and never stops the batch. It reads the controller's
    progress and the fleet's endings; ``memory_limit_mib`` is the workers' limit, for the
    advice on OOM kills."""

    def __init__(
        self,
        batch: str,
        storage: BatchFolder,
        logger: logging.Logger | logging.LoggerAdapter,
        memory_limit_mib: Optional[int] = None,
    ) -> None:
        self.batch, self.storage, self.logger = batch, storage, logger
        self.memory_limit_mib = memory_limit_mib
        self.throughput = Throughput()
        self.artifact_id: Any = None
        self.last = float("-inf")

    def update(self, progress: Progress, fleet: Fleet) -> None:
        """While the batch drains: publish if `DASHBOARD_SECONDS` have passed."""
        self.throughput.add(progress.elapsed_seconds, progress.done)
        if time.monotonic() - self.last < DASHBOARD_SECONDS:
            return
        self.last = time.monotonic()
        self._publish(progress, fleet)

    def finish(self, progress: Progress, fleet: Fleet, tally: BatchTally) -> None:
        """Once, at the end, with the batch's final tally (the controller's last look, which
        gave ``progress``, is already in the throughput)."""
        self._publish(progress, fleet, tally, finished=True)

    def why_workers_died(self, fleet: Fleet, tally: BatchTally) -> list[str]:
        return why_ended(fleet.endings, self.batch, tally, self.memory_limit_mib)

    def _publish(
        self,
        progress: Progress,
        fleet: Fleet,
        tally: Optional[BatchTally] = None,
        finished: bool = False,
    ) -> None:
        try:
            if tally is None:
                tally = batch_tally(read_reports(self.storage, self.batch))
            snapshot = Snapshot(
                batch=self.batch,
                progress=progress,
                workers_lost=fleet.lost,
                why_workers_died=self.why_workers_died(fleet, tally),
                tally=tally,
                finished=finished,
            )
            self._write(markdown(snapshot, self.throughput.png(self.batch)))
        except Exception as exc:
            self.logger.warning("could not publish the dashboard of %s: %s", self.batch, exc)

    def _write(self, text: str) -> None:
        from prefect.artifacts import create_markdown_artifact

        if self.artifact_id is None:
            self.artifact_id = create_markdown_artifact(
                key=artifact_key(self.batch, "dashboard"),
                markdown=text,
                description=f"Batch {self.batch}: live dashboard",
            )
            return
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        with get_client(sync_client=True) as client:
            client.update_artifact(self.artifact_id, ArtifactUpdate(data=text))
