"""Pod resources that fit a GKE node: the planner behind ``tqflow plan-resources``.

Pods that ask for more than a node can give stay ``PodUnschedulable``; pods without a memory
limit let one task take the node down. The numbers that fit come from what GKE leaves for pods:

- **Allocatable** = machine - GKE's reservation - the kubelet's 100 MiB eviction threshold.
  GKE reserves CPU: 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% above
  four; memory: 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the next
  112, 2% above 128 GiB (255 MiB on machines under 1 GiB). The kernel keeps a further ~2.7% of
  memory before the kubelet counts capacity: a 16 GiB node shows 13,498,416 Ki allocatable.
- **System pods** (kube-system, gmp-system DaemonSets: logging, metrics, kube-proxy, CSI) request
  about 250m CPU and 500 MiB on every node; cluster singletons (kube-dns, metrics-server) add
  more on some nodes, which the headroom covers.
- Workers get **no CPU limit** (a task may use idle cores; the request only places the pod) and
  a **memory limit equal to the request**: a task that needs more is OOMKilled alone, with a
  clear reason, instead of the node evicting its neighbours.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from tqflow.errors import ResourcePlanError

#: GiB of memory per vCPU of the predefined GCE machine families (``<family>-<kind>-<vCPUs>``).
FAMILY_MEMORY_PER_VCPU_GIB = {
    ("e2", "standard"): 4.0,
    ("e2", "highmem"): 8.0,
    ("e2", "highcpu"): 1.0,
    ("n2", "standard"): 4.0,
    ("n2", "highmem"): 8.0,
    ("n2", "highcpu"): 1.0,
    ("n2d", "standard"): 4.0,
    ("n2d", "highmem"): 8.0,
    ("n2d", "highcpu"): 1.0,
    ("n4", "standard"): 4.0,
    ("n4", "highmem"): 8.0,
    ("n4", "highcpu"): 2.0,
    ("c3", "standard"): 4.0,
    ("c3", "highmem"): 8.0,
    ("c3", "highcpu"): 2.0,
    ("c2", "standard"): 4.0,
    ("c2d", "standard"): 4.0,
    ("c2d", "highmem"): 8.0,
    ("c2d", "highcpu"): 2.0,
    ("t2d", "standard"): 4.0,
    ("n1", "standard"): 3.75,
    ("n1", "highmem"): 6.5,
    ("n1", "highcpu"): 0.9,
}

#: Most vCPUs of a predefined machine type, by family (GCE's machine type tables).
MAX_VCPUS = {
    "e2": 32,
    "n2": 128,
    "n2d": 224,
    "n4": 80,
    "c3": 176,
    "c2": 60,
    "c2d": 112,
    "t2d": 60,
    "n1": 96,
}
#: No machine type a GKE node pool can use is larger than m2-ultramem-416 (416 vCPUs,
#: 11,776 GB), and every one has 0.5 (e2-micro) to ~28 (m2-ultramem) GiB per vCPU.
MOST_VCPUS = 416
MOST_MEMORY_GIB = 11_776
MEMORY_PER_VCPU_GIB = (0.5, 30.0)

#: Requests of the DaemonSets GKE runs on every node (fluentbit, gke-metrics-agent, kube-proxy,
#: pdcsi-node, the managed Prometheus collector), rounded up.
SYSTEM_CPU_MILLICORES = 250
SYSTEM_MEMORY_MIB = 512
#: Memory the kernel keeps before the kubelet reports capacity (fitted to GKE's published
#: 16 GiB node: 13,498,416 Ki allocatable).
KERNEL_MEMORY_FRACTION = 0.0268
EVICTION_THRESHOLD_MIB = 100


@dataclass(frozen=True)
class Machine:
    """A node's size. Sizes no GCE machine has are refused (a typo planned a 100,000 GiB
    node before)."""

    cpus: int
    memory_gib: float

    def __post_init__(self) -> None:
        low, high = MEMORY_PER_VCPU_GIB
        if not 1 <= self.cpus <= MOST_VCPUS:
            raise ResourcePlanError(
                f"a node of {self.cpus} vCPUs: GCE machines have 1 to {MOST_VCPUS} "
                "(m2-ultramem-416); give the node pool's machine type or real size"
            )
        if not 0 < self.memory_gib <= MOST_MEMORY_GIB:
            raise ResourcePlanError(
                f"a node of {self.memory_gib:g} GiB: GCE machines have at most "
                f"{MOST_MEMORY_GIB:,} (m2-ultramem-416); give the node pool's machine type or "
                "real size"
            )
        if not low <= self.memory_gib / self.cpus <= high:
            raise ResourcePlanError(
                f"a node of {self.cpus} vCPUs and {self.memory_gib:g} GiB "
                f"({self.memory_gib / self.cpus:.2f} GiB per vCPU): GCE machines have {low:g} "
                f"to {high:g} GiB per vCPU; check --cpus and --memory-gib"
            )

    @classmethod
    def from_type(cls, machine_type: str) -> "Machine":
        """A predefined GCE machine type, e.g. ``e2-highmem-4``."""
        match = re.fullmatch(r"([a-z0-9]+)-([a-z]+)-(\d+)", machine_type.strip().lower())
        ratio = FAMILY_MEMORY_PER_VCPU_GIB.get((match.group(1), match.group(2))) if match else None
        if match is None or ratio is None:
            known = ", ".join(sorted({f"{f}-{k}" for f, k in FAMILY_MEMORY_PER_VCPU_GIB}))
            raise ResourcePlanError(
                f"unknown machine type {machine_type!r}: give --cpus and --memory-gib instead "
                f"(known families: {known})"
            )
        family, cpus = match.group(1), int(match.group(3))
        if not 1 <= cpus <= MAX_VCPUS[family]:
            raise ResourcePlanError(
                f"machine type {machine_type!r} does not exist: {family} machines have 1 to "
                f"{MAX_VCPUS[family]} vCPUs"
            )
        return cls(cpus=cpus, memory_gib=cpus * ratio)

    @property
    def allocatable_cpu_millicores(self) -> int:
        cores = float(self.cpus)
        reserved = (
            0.06 * min(cores, 1)
            + 0.01 * min(max(cores - 1, 0), 1)
            + 0.005 * min(max(cores - 2, 0), 2)
            + 0.0025 * max(cores - 4, 0)
        )
        return int(round((cores - reserved) * 1000))

    @property
    def allocatable_memory_mib(self) -> int:
        gib = self.memory_gib
        if gib < 1:
            reserved_gib = 255 / 1024
        else:
            reserved_gib = (
                0.25 * min(gib, 4)
                + 0.20 * min(max(gib - 4, 0), 4)
                + 0.10 * min(max(gib - 8, 0), 8)
                + 0.06 * min(max(gib - 16, 0), 112)
                + 0.02 * max(gib - 128, 0)
            )
        visible_gib = gib * (1 - KERNEL_MEMORY_FRACTION)
        return int((visible_gib - reserved_gib) * 1024) - EVICTION_THRESHOLD_MIB


#: Node-local disk a worker process asks for: its logs, Python's temporary files and what a task
#: writes to /tmp. A pod without an ephemeral-storage request is the first the kubelet evicts
#: when the node's disk fills (GKE's boot disk default: 100 GB, of which pods get ~90%); a task
#: that writes large temporary files needs more (``-jv ephemeral_storage_request=...``).
EPHEMERAL_STORAGE_MIB_PER_WORKER = 2048


@dataclass(frozen=True)
class PodResources:
    """Requests and limits for one worker pod, in Kubernetes quantities."""

    cpu_request: str
    memory_request: str
    memory_limit: str
    ephemeral_storage_request: str = f"{EPHEMERAL_STORAGE_MIB_PER_WORKER}Mi"

    def as_job_variables(self) -> dict[str, str]:
        """The kubernetes work pool's job variables (no ``cpu_limit``: on purpose)."""
        return asdict(self)

    def times(self, processes: int) -> "PodResources":
        """A pod for ``processes`` such workers (``processes_per_run``): their requests and
        limits added (the memory of pages they share counted once each: a margin)."""
        cpu = int(self.cpu_request.removesuffix("m")) * processes
        memory = int(self.memory_request.removesuffix("Mi")) * processes
        disk = int(self.ephemeral_storage_request.removesuffix("Mi")) * processes
        return PodResources(f"{cpu}m", f"{memory}Mi", f"{memory}Mi", f"{disk}Mi")


def plan(
    machine: Machine,
    pods_per_node: int,
    system_cpu_millicores: int = SYSTEM_CPU_MILLICORES,
    system_memory_mib: int = SYSTEM_MEMORY_MIB,
    headroom: float = 0.05,
) -> PodResources:
    """Requests that let ``pods_per_node`` worker pods share one node with the system pods,
    keeping ``headroom`` of what is left free for cluster singletons and spikes."""
    if pods_per_node < 1:
        raise ResourcePlanError(f"pods per node must be at least 1, got {pods_per_node}")
    if not 0 <= headroom < 1:
        raise ResourcePlanError(f"headroom is a fraction in [0, 1), got {headroom}")
    cpu = (machine.allocatable_cpu_millicores - system_cpu_millicores) * (1 - headroom)
    memory = (machine.allocatable_memory_mib - system_memory_mib) * (1 - headroom)
    cpu_each = int(cpu / pods_per_node) // 10 * 10
    memory_each = int(memory / pods_per_node) // 16 * 16
    if cpu_each < 100 or memory_each < 256:
        most = max(0, math.floor(min(cpu / 100, memory / 256)))
        node = (
            f"a node with {machine.cpus} vCPUs and {machine.memory_gib:g} GiB "
            f"({machine.allocatable_cpu_millicores}m, {machine.allocatable_memory_mib} MiB "
            f"allocatable, {system_cpu_millicores}m and {system_memory_mib} MiB of it for the "
            "system pods)"
        )
        if most == 0:
            raise ResourcePlanError(
                f"not one worker pod (100m / 256 MiB at least) fits on {node}: use a larger "
                "machine, e.g. e2-standard-4"
            )
        raise ResourcePlanError(
            f"{pods_per_node} worker pods do not fit on {node}: at most {most} of 100m / "
            f"256 MiB; use --pods-per-node {most} or fewer, or a larger machine"
        )
    return PodResources(
        cpu_request=f"{cpu_each}m",
        memory_request=f"{memory_each}Mi",
        memory_limit=f"{memory_each}Mi",
    )
