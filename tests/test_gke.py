"""The GKE side without a cluster: the resource planner against GKE's figures, and the worker
Job that prefect-kubernetes renders from our work-pool template, validated against the
Kubernetes API schema."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.support.helpers import REPO
from tqflow.errors import ResourcePlanError
from tqflow.gke.job_template import base_job_template
from tqflow.gke.resources import Machine, plan

GIB_MIB = 1024


# -- the planner ------------------------------------------------------------------------------


def test_allocatable_matches_gkes_published_4_vcpu_16_gib_node():
    # GKE's "plan node sizes" page: `kubectl get node` on a 4 vCPU / 16 GiB node shows
    # allocatable cpu 3920m and memory 13498416Ki.
    node = Machine.from_type("e2-standard-4")
    assert node.allocatable_cpu_millicores == 3920
    assert node.allocatable_memory_mib == pytest.approx(13498416 / 1024, rel=0.005)


def test_allocatable_matches_the_e2_highmem_4_nodes_of_the_user_notes():
    # `kubectl describe node` on an e2-highmem-4 node (32 GiB) in the user's notes: a 1-CPU
    # limit is 25% of allocatable CPU, and 4Gi / 3032M / 2G of memory are 14% / 10% / 6% of
    # allocatable memory, which puts it between 26.7 and 28.2 GiB ("29GB instead of 32GB").
    node = Machine.from_type("e2-highmem-4")
    assert node.allocatable_cpu_millicores == 3920
    assert 26.7 * GIB_MIB < node.allocatable_memory_mib <= 28.2 * GIB_MIB


@pytest.mark.parametrize(
    "cpus, millicores",
    [(1, 940), (2, 1930), (8, 7910), (16, 15890), (32, 31850), (96, 95690)],
)
def test_allocatable_cpu_follows_gkes_reservation_tiers(cpus, millicores):
    # 6% of the first core, 1% of the second, 0.5% of the next two, 0.25% above four.
    assert Machine(cpus=cpus, memory_gib=4 * cpus).allocatable_cpu_millicores == millicores


def test_machine_families_give_their_memory_per_vcpu():
    assert Machine.from_type("n1-standard-8") == Machine(cpus=8, memory_gib=30.0)
    assert Machine.from_type("n2-highmem-16") == Machine(cpus=16, memory_gib=128.0)
    assert Machine.from_type("E2-HIGHCPU-32") == Machine(cpus=32, memory_gib=32.0)


def test_planned_pods_and_system_pods_fit_within_allocatable():
    for machine_type, pods in [
        ("e2-highmem-4", 4),
        ("e2-highmem-4", 11),
        ("n2-standard-16", 15),
        ("e2-standard-2", 1),
    ]:
        node = Machine.from_type(machine_type)
        resources = plan(node, pods)
        cpu = int(resources.cpu_request.rstrip("m"))
        memory = int(resources.memory_request.rstrip("Mi"))
        assert pods * cpu + 250 <= node.allocatable_cpu_millicores
        assert pods * memory + 512 <= node.allocatable_memory_mib
        assert resources.memory_limit == resources.memory_request
        # and little is wasted: the headroom is the only slack
        assert pods * cpu + 250 > 0.93 * node.allocatable_cpu_millicores


def test_the_user_notes_cluster_would_have_fitted_its_eleven_pods():
    # The notes ran 11 pods at 300m on e2-highmem-4 nodes next to ~600m of system pods.
    assert plan(Machine.from_type("e2-highmem-4"), 11).cpu_request == "310m"


def test_too_many_pods_per_node_is_refused_with_how_many_fit():
    with pytest.raises(
        ResourcePlanError, match=r"40 worker pods do not fit.*at most (\d+) .*--pods-per-node \1"
    ):
        plan(Machine.from_type("e2-standard-2"), 40)


def test_a_machine_too_small_for_one_worker_pod_says_so_instead_of_at_most_one():
    with pytest.raises(
        ResourcePlanError, match=r"not one worker pod .* fits .*larger machine"
    ) as e:
        plan(Machine(cpus=1, memory_gib=1), 1)
    assert "at most" not in str(e.value)


def test_an_unknown_machine_type_says_to_give_cpus_and_memory():
    with pytest.raises(
        ResourcePlanError, match=r"unknown machine type 'm9-mega-4'.*--cpus and --memory-gib"
    ):
        Machine.from_type("m9-mega-4")


def test_plan_resources_command_prints_job_variables_without_a_cpu_limit():
    result = CliRunner().invoke(
        app, ["plan-resources", "--machine-type", "e2-highmem-4", "--pods-per-node", "4", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.output) == plan(Machine.from_type("e2-highmem-4"), 4).as_job_variables()
    )
    assert "cpu_limit" not in result.output

    raw = CliRunner().invoke(app, ["plan-resources", "--cpus", "4", "--memory-gib", "32", "--json"])
    assert json.loads(raw.output) == json.loads(result.output)


# -- the work-pool template and the Job it renders ---------------------------------------------


def test_checked_in_template_is_the_generated_one():
    checked_in = json.loads((REPO / "deployments/gke/base-job-template.json").read_text())
    assert checked_in == base_job_template(), (
        "regenerate: tqflow gke-job-template > deployments/gke/base-job-template.json"
    )


def render_job(job_variables: dict, parameters: dict) -> dict:
    """The Job manifest prefect-kubernetes' worker would submit for a flow run."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    configuration = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            base_job_template(), job_variables
        )
    )
    run = FlowRun(flow_id=uuid.uuid4(), name="brave-otter", parameters=parameters)
    configuration.prepare_for_flow_run(run)
    return configuration.job_manifest


@pytest.fixture(scope="module")
def rendered(request):
    request.getfixturevalue("prefect_api")
    resources = plan(Machine.from_type("e2-highmem-4"), 4).as_job_variables()
    manifest = render_job(
        {"image": "us-docker.pkg.dev/my-lab/tqflow/worker:0.1.0", **resources},
        # blocks travel by reference: the worker pod loads them from the API
        {
            "queue": {"$ref": {"block_document_id": str(uuid.uuid4())}},
            "options": {"idle_seconds": 30},
        },
    )
    return manifest, resources


#: prefect-kubernetes insists on these in the pod spec (its manifest check refuses a template
#: without them there), where Kubernetes has no such fields: the API server drops them with a
#: warning. They are the only fields strict validation may refuse.
MISPLACED_BY_PREFECT_KUBERNETES = ("parallelism", "completions")


def test_rendered_job_validates_strictly_against_the_kubernetes_schema(rendered):
    manifest = copy.deepcopy(rendered[0])
    pod = manifest["spec"]["template"]["spec"]
    for field in MISPLACED_BY_PREFECT_KUBERNETES:
        pod.pop(field)
    kubernetes_validate.validate(manifest, kubernetes_validate.latest_version(), strict=True)


def test_rendered_job_carries_the_planned_resources_and_no_cpu_limit(rendered):
    manifest, resources = rendered
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {
            "cpu": resources["cpu_request"],
            "memory": resources["memory_request"],
            "ephemeral-storage": resources["ephemeral_storage_request"],
        },
        "limits": {"memory": resources["memory_limit"]},
    }


def test_the_cluster_autoscaler_does_not_move_a_worker_mid_task(rendered):
    manifest, _ = rendered
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"


def test_the_grace_period_is_what_gke_gives_spot_pods_and_says_so():
    grace = base_job_template()["variables"]["properties"]["termination_grace_period_seconds"]
    assert grace["default"] == 15 and "15 s" in grace["description"]


def test_rendered_job_runs_on_the_worker_pool_and_tolerates_spot_nodes(rendered):
    manifest, _ = rendered
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "tqflow-workers"}
    assert {
        "key": "cloud.google.com/gke-spot",
        "operator": "Equal",
        "value": "true",
        "effect": "NoSchedule",
    } in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] == 15
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600


def test_rendered_job_env_is_quiet_single_threaded_and_holds_no_secret(rendered):
    manifest, _ = rendered
    env = {
        e["name"]: e.get("value")
        for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TQDM_DISABLE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["PREFECT__FLOW_RUN_ID"]
    secretish = ("SECRET", "TOKEN", "PASSWORD", "AWS_ACCESS", "PRIVATE_KEY", "API_KEY")
    assert not [name for name in env if any(word in name.upper() for word in secretish)]


def test_worker_image_installs_the_lock_on_a_base_pinned_by_digest():
    import re

    dockerfile = (REPO / "worker_image/Dockerfile").read_text()
    steps = [line for line in dockerfile.splitlines() if re.match(r"^[A-Z]+ ", line)]
    [base] = [s for s in steps if s.startswith("FROM ")]
    assert re.fullmatch(r"FROM python:3\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base)
    # dependencies in a layer of their own, from the lock, before any code is copied
    lock = steps.index("COPY pyproject.toml uv.lock ./")
    deps = steps.index("RUN uv sync --locked --no-install-project")
    first_code = min(i for i, s in enumerate(steps) if re.match(r"COPY (blocks|flows|tqflow) ", s))
    assert lock < deps < first_code
    assert "RUN uv sync --locked --no-editable" in steps[first_code:]
    assert not [s for s in steps if re.search(r"pip install (\.|-e)", s)]
    # the uv the Makefile pins, which wrote the lock
    makefile = (REPO / "Makefile").read_text()
    uv = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M).group(1)
    assert f"RUN pip install uv=={uv}" in steps
    assert re.search(r"^USER \d+:\d+$", dockerfile, re.M)
    assert "TQDM_DISABLE=1" in dockerfile


def wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A pure-Python wheel of ``name`` in ``folder`` with these requirements: a package index
    of one's own, for an install that must not reach the network."""
    import zipfile

    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "",
        f"{dist}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tqflow-tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{dist}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)


def install_task_package(index: Path, requirement: str) -> subprocess.CompletedProcess:
    """worker_image/install_task_package.sh as the Dockerfile runs it, on this checkout's lock
    and environment, as a dry run from ``index`` alone."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "UV_PROJECT_ENVIRONMENT": str(Path(sys.executable).parent.parent), "UV_OFFLINE": "1"}  # fmt: skip
    return subprocess.run(
        [str(REPO / "worker_image/install_task_package.sh"), requirement, "--dry-run",
         "--no-index", "--find-links", str(index)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_task_package_that_fits_the_lock_installs_alone(tmp_path):
    wheel(tmp_path, "neuron_tasks", "1.2.0", requires=("tqdm>=4",))
    result = install_task_package(tmp_path, "neuron_tasks")
    assert result.returncode == 0, result.stderr
    assert "+ neuron-tasks==1.2.0" in result.stderr
    assert "- tqdm" not in result.stderr  # the lock's tqdm stays


def test_a_task_package_that_needs_another_version_of_a_locked_package_stops_the_build(tmp_path):
    import tqdm

    wheel(tmp_path, "tqdm", "1.0.0")
    wheel(tmp_path, "neuron_tasks", "1.2.0", requires=("tqdm<2",))
    result = install_task_package(tmp_path, "neuron_tasks")
    assert result.returncode == 1, result.stderr
    assert re.search(rf"tqdm<2\s+and\s+tqdm[^,]*=={re.escape(tqdm.__version__)}", result.stderr)
    assert "needs a version other than tqflow's uv.lock pins" in result.stderr


# -- one namespace, one service account: template, Helm values, cluster script ---------------------

import re  # noqa: E402

import yaml  # noqa: E402

from tqflow.gke.job_template import JOB_SERVICE_ACCOUNT, NAMESPACE  # noqa: E402


def helm_values() -> dict:
    return yaml.safe_load((REPO / "deployments/gke/worker-values.yaml").read_text())


def test_jobs_land_in_the_namespace_the_prefect_workers_role_and_observer_cover(rendered):
    manifest, _ = rendered
    values = helm_values()
    install = (REPO / "deployments/gke/worker-values.yaml").read_text()
    # the chart puts the worker's Role in the release namespace unless role.namespace says otherwise
    release_namespace = re.search(
        r"helm (?:upgrade --)?install .*?--namespace (\S+)", install, re.S
    ).group(1)
    role_namespace = values.get("role", {}).get("namespace") or release_namespace
    assert manifest["metadata"]["namespace"] == NAMESPACE
    assert role_namespace == NAMESPACE
    assert values["worker"]["config"]["jobNamespace"] == NAMESPACE
    # no second, hand-set copy of what jobNamespace sets
    assert "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES" not in install


def test_jobs_run_as_the_service_account_the_cluster_script_lets_write_the_bucket(rendered):
    manifest, _ = rendered
    script = (REPO / "deployments/gke/make_cluster.sh").read_text()
    assert manifest["spec"]["template"]["spec"]["serviceAccountName"] == JOB_SERVICE_ACCOUNT
    assert re.search(rf"^JOBS_KSA={JOB_SERVICE_ACCOUNT}\b", script, re.M)
    assert re.search(rf"^NAMESPACE=\$\{{NAMESPACE:-{NAMESPACE}\}}", script, re.M)
    # Workload Identity: the pool's metadata server (the bucket's grant to this account is
    # test_cluster_script.py's)
    assert "--workload-metadata GKE_METADATA" in script


def test_helm_values_remove_the_charts_cpu_limit_and_pin_the_chart():
    values = helm_values()
    limits = values["worker"]["resources"]["limits"]
    assert "cpu" in limits and limits["cpu"] is None  # null removes the chart's default
    text = (REPO / "deployments/gke/worker-values.yaml").read_text()
    guide = (REPO / "deployments/gke/README.md").read_text()
    [version] = set(re.findall(r"prefect/prefect-worker --version (\S+)", text + guide))
    assert re.fullmatch(r"\d{4}\.\d+\.\d+", version)


def test_orchestration_runs_render_onto_the_system_pool_and_workers_onto_spot(request):
    request.getfixturevalue("prefect_api")
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    for name in ("pipeline-gke", "analysis", "dead-letters"):
        variables = {**deployments[name]["work_pool"]["job_variables"], "image": "img"}
        pod = render_job(variables, {})["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "default-pool"}, name
        assert not pod.get("tolerations"), name
        memory = pod["containers"][0]["resources"]
        assert memory["requests"]["memory"] == memory["limits"]["memory"] == "5Gi"
    worker_variables = {**deployments["worker-gke"]["work_pool"]["job_variables"], "image": "img"}
    pod = render_job(worker_variables, {})["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-nodepool": "tqflow-workers"}
    assert any(t["key"] == "cloud.google.com/gke-spot" for t in pod["tolerations"])
    # the system pool holds two orchestration pods beside the Prefect worker and system pods
    node = Machine.from_type("e2-standard-4")
    assert 2 * 5 * 1024 + 256 + 512 <= node.allocatable_memory_mib


@pytest.mark.parametrize(
    "args, problem",
    [
        (["--cpus", "4", "--memory-gib", "100000"], "GCE machines have at most 11,776"),
        (["--cpus", "1000", "--memory-gib", "4000"], "GCE machines have 1 to 416"),
        (["--cpus", "4", "--memory-gib", "0.5"], "0.5 to 30 GiB per vCPU"),
        (["--machine-type", "e2-standard-64"], "e2 machines have 1 to 32 vCPUs"),
        (["--cpus", "4"], "give both --cpus and --memory-gib"),
    ],
)
def test_plan_resources_refuses_a_node_no_gce_machine_is(args, problem):
    result = CliRunner().invoke(app, ["plan-resources", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 1 and problem in " ".join(result.output.split()), result.output


@pytest.mark.parametrize(
    "extra, note",
    [
        (["--cpus", "8", "--memory-gib", "64"], "note: --cpus is ignored"),
        (["--items", "1000"], "note: --items (it needs --from-batch) is ignored"),
        (["--within-hours", "2"], "note: --within-hours (it needs --from-batch) is ignored"),
    ],
)
def test_plan_resources_says_which_options_it_ignores(extra, note):
    args = ["plan-resources", "--machine-type", "e2-highmem-4", *extra]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0 and note in result.output, result.output
    assert "memory_limit:" in result.output  # planned for the e2-highmem-4, as asked


def test_plan_resources_sizes_one_run_for_a_nodes_workers_and_proposes_it():
    def job_variables(*extra: str) -> dict:
        args = ["plan-resources", "--machine-type", "e2-highmem-4", "--pods-per-node", "4"]
        result = CliRunner().invoke(app, [*args, *extra, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    one, four = job_variables(), job_variables("--processes-per-run", "4")
    assert int(four["cpu_request"][:-1]) == 4 * int(one["cpu_request"][:-1])
    assert (
        four["memory_limit"] == four["memory_request"] == f"{4 * int(one['memory_limit'][:-2])}Mi"
    )
    text = (
        CliRunner()
        .invoke(app, ["plan-resources", "--machine-type", "e2-highmem-4", "--pods-per-node", "4"])
        .output
    )
    assert "one worker run per node instead: processes_per_run=4" in " ".join(text.split())
