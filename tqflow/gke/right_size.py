"""Worker pods sized from what a batch's tasks used: ``tqflow plan-resources --from-batch``.

The workers' reports (`tqflow.engine.reports`) hold, per batch, a histogram of each task's peak
RSS (the whole worker process's, imports included: what the pod's memory limit must hold), the
CPU and wall seconds of the tasks, and how many ran. From them:

- **memory** request = limit = the p99.9 task peak plus ``margin`` (default 20%), rounded up to
  64 MiB: the rare larger task is retried, and dead-lettered if it always needs more, instead of
  every pod reserving for the single worst one;
- **CPU** request = the tasks' mean CPU use (CPU seconds / wall seconds) plus ``margin``, at
  least 100m; no CPU limit (`tqflow.gke.resources`);
- **pods per node** = as many as fit what GKE leaves for pods (`Machine`'s allocatable, less
  the system pods and the headroom);
- for a next batch of N items to finish within H hours: the node count, the wall time, and the
  cost on demand and on spot VMs, from `PRICES`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from tqflow.engine.reports import BatchTally
from tqflow.errors import ResourcePlanError
from tqflow.gke.resources import (
    SYSTEM_CPU_MILLICORES,
    SYSTEM_MEMORY_MIB,
    Machine,
    PodResources,
)

#: On-demand list prices in us-central1, USD per vCPU-hour and per GiB-hour, from
#: https://cloud.google.com/compute/vm-instance-pricing (recorded 2026-11-26; these per-unit
#: rates have been stable since 2022, e.g. e2-standard-4 = $0.134/h). Other regions cost up to
#: ~40% more. Spot prices change up to daily; `SPOT_FRACTION` is a typical fraction of the
#: on-demand price (GCE publishes discounts of 60-91%), not a quote.
PRICES = {
    "e2": (0.021811, 0.002923),
    "n2": (0.031611, 0.004237),
    "n2d": (0.027502, 0.003686),
    "n1": (0.031611, 0.004237),
}
PRICES_AS_OF = "2026-11-26"
SPOT_FRACTION = 0.3
#: Machine types `cheapest` chooses among: the common families at 2 to 32 vCPUs.
COMMON_TYPES = tuple(
    f"{family}-{kind}-{cpus}"
    for family in ("e2", "n2", "n2d")
    for kind in ("standard", "highmem", "highcpu")
    for cpus in (2, 4, 8, 16, 32)
    if not (family == "e2" and cpus > 16 and kind != "standard")
)
#: Nodes a GKE Standard cluster holds at most (GKE's quotas and limits page).
GKE_MAX_NODES = 15_000
#: vCPUs past which a plan is worth checking against the region's quota first: a new project
#: starts with a few dozen CPUS a region.
QUOTA_WORTH_CHECKING_VCPUS = 96


@dataclass(frozen=True)
class BatchUsage:
    """What a batch's measured tasks used."""

    tasks: int
    peak_rss_p999_bytes: int
    peak_rss_max_bytes: int
    #: CPU seconds per wall second of a task: how many cores one worker keeps busy.
    cpu_per_wall: float
    mean_task_seconds: float

    @classmethod
    def of(cls, tally: BatchTally, batch: str) -> BatchUsage:
        p999 = tally.peak_rss_percentile(0.999)
        if p999 is None or tally.task_seconds <= 0:
            raise ResourcePlanError(
                f"batch {batch!r} has no measured tasks in its worker reports "
                f"({batch}/workers/): run some of its tasks first (e.g. `tqflow work --batch "
                f"{batch} --max-tasks 200`), with workers of tqflow 0.1 or later"
            )
        return cls(
            tasks=tally.measured_tasks,
            peak_rss_p999_bytes=p999,
            peak_rss_max_bytes=tally.peak_rss_max,
            cpu_per_wall=tally.cpu_seconds / tally.task_seconds,
            # over the tasks that ran and were measured: a message dead-lettered before its
            # function ran (one that cannot be imported) took no task time
            mean_task_seconds=tally.task_seconds / tally.measured_tasks,
        )


@dataclass(frozen=True)
class Recommendation:
    machine_type: str
    machine: Machine
    pod: PodResources
    memory_mib: int
    cpu_millicores: int
    pods_per_node: int
    #: For the next batch: how many nodes, its wall time, and its cost.
    items: Optional[int] = None
    nodes: Optional[int] = None
    wall_hours: Optional[float] = None
    cost_on_demand: Optional[float] = None
    cost_spot: Optional[float] = None


def size_pod(
    usage: BatchUsage,
    machine_type: str,
    margin: float = 0.2,
    headroom: float = 0.05,
    machine: Optional[Machine] = None,
) -> Recommendation:
    """The pod for ``usage`` on ``machine_type`` (or on ``machine`` of that name)."""
    if margin < 0:
        raise ResourcePlanError(f"the margin is a fraction >= 0, got {margin}")
    machine = machine or Machine.from_type(machine_type)
    memory_mib = math.ceil(usage.peak_rss_p999_bytes * (1 + margin) / 2**20 / 64) * 64
    cpu_m = max(100, math.ceil(usage.cpu_per_wall * (1 + margin) * 1000 / 50) * 50)
    free_cpu = (machine.allocatable_cpu_millicores - SYSTEM_CPU_MILLICORES) * (1 - headroom)
    free_memory = (machine.allocatable_memory_mib - SYSTEM_MEMORY_MIB) * (1 - headroom)
    pods = int(min(free_cpu // cpu_m, free_memory // memory_mib))
    if pods < 1:
        raise ResourcePlanError(
            f"a worker needs {memory_mib:,} MiB and {cpu_m}m CPU, more than a {machine_type} "
            f"node leaves for pods ({int(free_memory):,} MiB, {int(free_cpu)}m): choose a "
            "machine type with more memory (e.g. a highmem one)"
        )
    pod = PodResources(
        cpu_request=f"{cpu_m}m", memory_request=f"{memory_mib}Mi", memory_limit=f"{memory_mib}Mi"
    )
    return Recommendation(machine_type, machine, pod, memory_mib, cpu_m, pods)


def plan_next_batch(
    recommendation: Recommendation, usage: BatchUsage, items: int, within_hours: float
) -> Recommendation:
    """``recommendation`` with the nodes, wall time and cost of ``items`` tasks finished
    within ``within_hours`` (each worker runs one task at a time)."""
    if items < 1 or within_hours <= 0:
        raise ResourcePlanError("give a positive number of items and of hours")
    worker_hours = items * usage.mean_task_seconds / 3600
    nodes = max(1, math.ceil(worker_hours / (recommendation.pods_per_node * within_hours)))
    wall_hours = worker_hours / (recommendation.pods_per_node * nodes)
    price = node_price(recommendation.machine_type, recommendation.machine)
    cost = None if price is None else nodes * wall_hours * price
    return dataclasses.replace(
        recommendation,
        items=items,
        nodes=nodes,
        wall_hours=wall_hours,
        cost_on_demand=cost,
        cost_spot=None if cost is None else cost * SPOT_FRACTION,
    )


def node_price(machine_type: str, machine: Machine) -> Optional[float]:
    """USD per hour of one node on demand; ``None`` for a family not in `PRICES`."""
    rates = PRICES.get(machine_type.split("-", 1)[0])
    if rates is None:
        return None
    return machine.cpus * rates[0] + machine.memory_gib * rates[1]


def cheapest(
    usage: BatchUsage,
    items: int,
    within_hours: float,
    margin: float = 0.2,
    headroom: float = 0.05,
    machine_types: tuple[str, ...] = COMMON_TYPES,
) -> Recommendation:
    """The machine type among ``machine_types`` that runs ``items`` tasks within
    ``within_hours`` for the least, with its pods."""
    options = []
    for machine_type in machine_types:
        try:
            sized = size_pod(usage, machine_type, margin, headroom)
        except ResourcePlanError:
            continue  # a worker does not fit this machine
        options.append(plan_next_batch(sized, usage, items, within_hours))
    priced = [o for o in options if o.cost_on_demand is not None]
    if not priced:
        raise ResourcePlanError(
            f"no common machine type fits a worker of {usage.peak_rss_p999_bytes / 2**30:.1f} "
            "GiB: give --machine-type with enough memory"
        )
    return min(priced, key=lambda o: (o.cost_on_demand, o.nodes))
