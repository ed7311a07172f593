"""The base job template of tqflow's GKE work pool.

It is prefect-kubernetes' default template with what batch workers on GKE need added:

- ``node_selector`` and ``tolerations``, so workers land on the (tainted) worker node pool and
  may run on spot / preemptible nodes (orchestrating runs override both: see
  `ORCHESTRATION_JOB_VARIABLES`);
- the ``tqflow`` namespace, the one the Prefect worker's Role covers, and the ``tqflow-jobs``
  service account that Workload Identity binds to a Google service account;
- resource defaults from the planner (`tqflow.gke.resources`) for an ``e2-highmem-4`` node with
  four workers, an ephemeral-storage request (a pod without one is the first evicted when the
  node's disk fills), and **no CPU limit** at all (the variable and the manifest field are
  removed);
- the pod annotation ``cluster-autoscaler.kubernetes.io/safe-to-evict: "false"``: the cluster
  autoscaler does not take a node away from a worker mid-task to pack pods onto fewer nodes;
- quiet, single-threaded defaults in the environment: ``TQDM_DISABLE=1`` (progress bars fill
  node disks through the log pipeline), ``PYTHONUNBUFFERED=1``, one BLAS / OpenMP thread;
- ``termination_grace_period_seconds`` 15, what GKE gives a spot node's pods (the worker
  releases its leases within a second of SIGTERM), ``finished_job_ttl`` so finished Jobs do not pile up, ``backoff_limit`` 0 (Prefect
  reschedules a run whose pod was evicted; the pipeline relaunches lost workers).

``tqflow gke-job-template`` prints it; ``deployments/gke/base-job-template.json`` is that output.
"""

from __future__ import annotations

import copy
from typing import Any

from tqflow.gke.resources import Machine, plan

#: Environment every worker pod gets unless the deployment overrides ``env``.
WORKER_ENV = {
    "TQDM_DISABLE": "1",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

#: The taint deployments/gke/make_cluster.sh puts on the worker pool (it keeps other pods off),
#: and the ones GKE puts on spot and preemptible nodes.
WORKER_TOLERATIONS = [
    {"key": "tqflow-worker", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
    {
        "key": "cloud.google.com/gke-spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    },
    {
        "key": "cloud.google.com/gke-preemptible",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    },
]

WORKER_NODE_POOL = "tqflow-workers"
#: The namespace of the Jobs. The Prefect worker's Role (Helm chart: ``worker.config.jobNamespace``
#: and the release namespace) covers this namespace only, and its crash observer watches it.
NAMESPACE = "tqflow"
#: The Kubernetes service account of the Jobs: Workload Identity binds it to a Google service
#: account that may write the bucket (deployments/gke/make_cluster.sh creates both).
JOB_SERVICE_ACCOUNT = "tqflow-jobs"
#: Where the orchestrating runs (pipeline, analysis, dead-letters) go: the on-demand system pool,
#: not spot nodes (a preemption would kill the run that watches the batch), with memory for the
#: analysis of a large batch. Only worker runs go to the spot worker pool.
SYSTEM_NODE_POOL = "default-pool"
ORCHESTRATION_JOB_VARIABLES: dict[str, Any] = {
    "node_selector": {"cloud.google.com/gke-nodepool": SYSTEM_NODE_POOL},
    "tolerations": [],
    "cpu_request": "500m",
    "memory_request": "5Gi",
    "memory_limit": "5Gi",
}
DEFAULT_MACHINE_TYPE = "e2-highmem-4"
DEFAULT_PODS_PER_NODE = 4
#: The cluster autoscaler moves pods to empty a node it could remove; a worker pod is not moved
#: mid-task (its task would start again elsewhere), the node waits until the pod ends.
SAFE_TO_EVICT = "cluster-autoscaler.kubernetes.io/safe-to-evict"


def base_job_template() -> dict[str, Any]:
    """The GKE work pool's base job template (``prefect work-pool create --base-job-template``)."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    properties = template["variables"]["properties"]
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]

    del properties["cpu_limit"]
    del container["resources"]["limits"]["cpu"]

    resources = plan(Machine.from_type(DEFAULT_MACHINE_TYPE), DEFAULT_PODS_PER_NODE)
    for name in ("cpu_request", "memory_request", "memory_limit"):
        properties[name]["default"] = getattr(resources, name)
    properties["cpu_request"]["description"] += (
        f" Default: 4 workers per {DEFAULT_MACHINE_TYPE} node (`tqflow plan-resources`)."
    )
    properties["memory_limit"]["description"] += " tqflow sets it equal to the request."
    properties["ephemeral_storage_request"] = {
        "title": "Ephemeral Storage Request",
        "description": (
            "Node-local disk the pod asks for (logs, temporary files). Without a request the "
            "pod is the first the kubelet evicts when the node's disk fills."
        ),
        "type": "string",
        "default": resources.ephemeral_storage_request,
    }
    properties["env"]["default"] = dict(WORKER_ENV)
    properties["namespace"]["default"] = NAMESPACE
    properties["namespace"]["description"] += (
        " It must be the namespace the Prefect worker's Role covers (its Helm release's)."
    )
    properties["service_account_name"]["default"] = JOB_SERVICE_ACCOUNT
    properties["service_account_name"]["description"] = (
        "Kubernetes service account of the Job's pod; with Workload Identity it acts as the "
        "Google service account it is annotated with (iam.gke.io/gcp-service-account)."
    )
    properties["finished_job_ttl"]["default"] = 3600
    properties["node_selector"] = {
        "title": "Node Selector",
        "description": "Labels of the nodes worker pods may run on.",
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {"cloud.google.com/gke-nodepool": WORKER_NODE_POOL},
    }
    properties["tolerations"] = {
        "title": "Tolerations",
        "description": "Taints worker pods tolerate (default: the worker pool's, spot, preemptible).",
        "type": "array",
        "items": {"type": "object"},
        "default": copy.deepcopy(WORKER_TOLERATIONS),
    }
    properties["termination_grace_period_seconds"] = {
        "title": "Termination Grace Period Seconds",
        "description": (
            "Time between SIGTERM and SIGKILL when the pod is stopped. On spot nodes GKE gives "
            "pods 15 s of the node's 30 s notice whatever this says; the worker releases its "
            "leases within a second of SIGTERM."
        ),
        "type": "integer",
        "minimum": 1,
        "default": 15,
    }
    container["resources"]["requests"]["ephemeral-storage"] = "{{ ephemeral_storage_request }}"
    manifest["spec"]["template"].setdefault("metadata", {})["annotations"] = {
        SAFE_TO_EVICT: "false"
    }
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"
    pod["terminationGracePeriodSeconds"] = "{{ termination_grace_period_seconds }}"
    return template
