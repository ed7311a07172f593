"""A batch at a glance: counts, throughput, workers and why they died, failures by error type,
and what the tasks used. The pipeline publishes it as a markdown artifact in the Prefect UI
(`flows.pipeline`), re-rendered every few seconds while the batch drains; ``tqflow status``
prints its failure and resource sections in the terminal.

Everything comes from what is cheap to read at any size: the queue's counts, the monitor's
progress, the fleet's endings, and the workers' reports (`tqflow.engine.reports`), never the
outputs themselves.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Optional

from tqflow.engine.reports import BatchTally
from tqflow.errors import ResourcePlanError
from tqflow.gke.right_size import PRICES_AS_OF, BatchUsage, cheapest

#: Points of the throughput plot kept; older ones are thinned out, so memory is flat.
SERIES_POINTS = 400


@dataclass
class Snapshot:
    """What the dashboard shows, at one moment."""

    batch: str
    total: int
    done: int
    in_flight: int
    waiting: int
    dead_lettered: int
    elapsed_seconds: float
    tasks_per_second: float
    eta_seconds: Optional[float]
    workers_running: int
    workers_lost: int
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
    s = snapshot
    state = "finished" if s.finished else "running"
    percent = 100.0 * (s.done + s.dead_lettered) / s.total if s.total else 100.0
    eta = _duration(s.eta_seconds) if s.eta_seconds is not None else "—"
    lines = [
        f"# Batch {s.batch} ({state})",
        "",
        "| done | in flight | waiting | dead-lettered | failed attempts | total |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {s.done:,} | {s.in_flight:,} | {s.waiting:,} | {s.dead_lettered:,} | "
        f"{s.tally.failed:,} | {s.total:,} |",
        "",
        f"**{percent:.1f}%** after {_duration(s.elapsed_seconds)}, "
        f"{s.tasks_per_second:,.1f} tasks/s, ETA {eta}",
        "",
    ]
    if png is not None:
        lines += [f"![throughput](data:image/png;base64,{base64.b64encode(png).decode()})", ""]
    lines += [f"## Workers: {s.workers_running} running, {s.workers_lost} lost", ""]
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


def _mib(n_bytes: Optional[int]) -> str:
    return "—" if n_bytes is None else f"{n_bytes / 2**20:,.0f} MiB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"
