"""deployments/gke/make_cluster.sh as a lab engineer runs it on a new Google Cloud project, with
recording stand-ins for gcloud, kubectl, gke-gcloud-auth-plugin and helm on PATH
(`tests/support/cloud_cli.py`): every call uses flags the real commands have, a second run creates
nothing, and a missing tool stops it before anything is changed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.support import cloud_cli
from tests.support.helpers import REPO

SCRIPT = REPO / "deployments/gke/make_cluster.sh"
TOOLS = ("gcloud", "kubectl", "gke-gcloud-auth-plugin", "helm")
#: gcloud container clusters create/update's recurring maintenance window.
MAINTENANCE_WINDOW = (
    "--maintenance-window-start",
    "--maintenance-window-end",
    "--maintenance-window-recurrence",
)
#: The flags of each command the script may run: gcloud's as its 578.0.0 release defines them
#: (lib/googlecloudsdk/command_lib and lib/surface of the SDK), kubectl's from its reference,
#: plus the gcloud-wide --project, --format, --flatten, --quiet.
FLAGS = {
    "gcloud billing projects describe": set(),
    "gcloud projects describe": set(),
    "gcloud services enable": set(),
    "gcloud iam service-accounts describe": set(),
    "gcloud iam service-accounts create": {"--display-name", "--description"},
    "gcloud projects add-iam-policy-binding": {"--member", "--role", "--condition"},
    "gcloud container clusters describe": {"--region", "--zone"},
    "gcloud container clusters create": {
        "--region",
        "--num-nodes",
        "--machine-type",
        "--service-account",
        "--workload-pool",
        "--release-channel",
        "--logging",
        "--monitoring",
        *MAINTENANCE_WINDOW,
    },
    "gcloud container clusters update": {"--region", "--zone", *MAINTENANCE_WINDOW},
    "gcloud container clusters get-credentials": {"--region", "--zone"},
    "gcloud container node-pools describe": {"--cluster", "--region", "--zone"},
    "gcloud container node-pools create": {
        "--cluster",
        "--region",
        "--machine-type",
        "--service-account",
        "--enable-autoscaling",
        "--min-nodes",
        "--max-nodes",
        "--num-nodes",
        "--node-taints",
        "--workload-metadata",
        "--spot",
        "--disk-type",
        "--disk-size",
    },
    # one group of settings a call: the command's flags are a mutually exclusive group
    "gcloud container node-pools update": {
        "--cluster",
        "--region",
        "--zone",
        "--machine-type",
        "--disk-type",
        "--disk-size",
        "--enable-autoscaling",
        "--min-nodes",
        "--max-nodes",
    },
    "gcloud compute regions describe": set(),
    "gcloud container clusters delete": {"--region", "--zone", "--async"},
    "gcloud container node-pools delete": {"--cluster", "--region", "--zone", "--async"},
    "gcloud artifacts repositories delete": {"--location", "--async"},
    "gcloud storage rm": {"--recursive", "--all-versions", "--continue-on-error"},
    "gcloud projects remove-iam-policy-binding": {"--member", "--role", "--condition", "--all"},
    "gcloud iam service-accounts delete": set(),
    "gcloud storage buckets describe": set(),
    "gcloud storage buckets create": {
        "--location",
        "--uniform-bucket-level-access",
        "--public-access-prevention",
    },
    "gcloud storage buckets add-iam-policy-binding": {"--member", "--role", "--condition"},
    "gcloud artifacts repositories describe": {"--location"},
    "gcloud artifacts repositories create": {"--repository-format", "--location", "--description"},
    "kubectl create namespace": {"--dry-run", "-o"},
    "kubectl create serviceaccount": {"--namespace", "--dry-run", "-o"},
    "kubectl apply": {"-f"},
}
GLOBAL = {"gcloud": {"--project", "--format", "--flatten", "--quiet"}, "kubectl": set()}


def unknown_flags(calls: list[list[str]], known: dict[str, set[str]] = FLAGS) -> list:
    """``(call, flags)`` for each call whose command is not in ``known`` (the longest key its
    leading words make) or that passes a flag the command does not have."""
    unknown = []
    for tool, *args in calls:
        words = [tool] + [a for a in args if not a.startswith("-")]
        key = max((k for k in known if words[: len(k.split())] == k.split()), key=len, default="")
        flags = {a.split("=")[0] for a in args if a.startswith("-") and a != "-"}  # "-": stdin
        extra = flags - known.get(key, set()) - GLOBAL.get(tool, set())
        if not key or extra:
            unknown.append(([tool, *args], extra))
    return unknown


#: What else the script runs: linked into the stand-ins' folder, the only one on PATH (a machine
#: may have the real gcloud and kubectl in /usr/bin, and /bin is /usr/bin on Debian).
UTILITIES = ("cat",)


@pytest.fixture
def cloud(tmp_path):
    """PATH with the stand-ins and nothing else, and their state folder."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for utility in UTILITIES:
        (bin_dir / utility).symlink_to(shutil.which(utility))
    cloud_cli.install(bin_dir, TOOLS)
    env = {
        "PATH": str(bin_dir),
        "CLOUD_CLI_STATE": str(state),
        "PROJECT": "my-lab-project",
        "BUCKET": "my-lab-tqflow",
        "HOME": str(tmp_path),
    }
    return env, bin_dir, state


def run(env: dict[str, str], state: Path) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    calls = state / "calls.jsonl"
    before = len(calls.read_text().splitlines()) if calls.exists() else 0
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    made = (
        [json.loads(line) for line in calls.read_text().splitlines()[before:]]
        if calls.exists()
        else []
    )
    return result, made


def test_every_call_on_an_empty_project_uses_flags_the_commands_have(cloud):
    env, _, state = cloud
    result, calls = run(env, state)
    assert result.returncode == 0, result.stderr
    assert not (unknown := unknown_flags(calls)), unknown
    made = {tuple(entry) for entry in json.loads((state / "made.json").read_text())}
    assert made == {
        ("iam service-accounts", "tqflow-nodes"),
        ("container clusters", "tqflow"),
        ("container node-pools", "tqflow-workers"),
        ("storage buckets", "gs://my-lab-tqflow"),
        ("artifacts repositories", "tqflow"),
    }
    enabled = next(c for c in calls if c[1:3] == ["services", "enable"])
    assert {"container.googleapis.com", "artifactregistry.googleapis.com"} <= set(enabled)
    # the nodes' own service account, not the default Compute one, and it may pull the image
    roles = [
        c[c.index("--role") + 1] for c in calls if c[1:3] == ["projects", "add-iam-policy-binding"]
    ]
    assert roles == ["roles/container.defaultNodeServiceAccount", "roles/artifactregistry.reader"]
    assert "100 workers at 4 per node are 25 nodes" in result.stdout


def test_a_second_run_creates_nothing(cloud):
    env, _, state = cloud
    assert run(env, state)[0].returncode == 0
    result, calls = run(env, state)
    assert result.returncode == 0, result.stderr
    created = [
        c for c in calls if c[0] == "gcloud" and "create" in c and "--dry-run=client" not in c
    ]
    assert not created, created


def test_a_project_without_billing_stops_before_anything_changes_saying_how_to_link_one(cloud):
    env, _, state = cloud
    (state / "billing.txt").write_text("False\n")
    result, calls = run(env, state)
    assert result.returncode == 4, result.stdout + result.stderr
    assert calls == [["gcloud", "billing", "projects", "describe", "my-lab-project", "--format",
                      "value(billingEnabled)"]]  # fmt: skip
    assert "gcloud billing projects link my-lab-project --billing-account" in result.stderr


def test_node_upgrades_wait_for_a_window_of_the_hours_gke_asks_for(cloud):
    env, _, state = cloud
    result, calls = run(env, state)
    assert result.returncode == 0, result.stderr
    [create] = [c for c in calls if c[1:4] == ["container", "clusters", "create"]]
    window = {flag: create[create.index(flag) + 1] for flag in MAINTENANCE_WINDOW}
    start, end = (
        datetime.fromisoformat(window[f].replace("Z", "+00:00")) for f in MAINTENANCE_WINDOW[:2]
    )
    days = re.fullmatch(r"FREQ=WEEKLY;BYDAY=([A-Z,]+)", window["--maintenance-window-recurrence"])
    assert days and set(days.group(1).split(",")) <= {"SA", "SU"}  # not in the working week
    hours_a_week = (end - start).total_seconds() / 3600 * len(days.group(1).split(","))
    assert hours_a_week * 32 / 7 >= 48  # GKE refuses less than 48 hours in any 32 days
    # a cluster made before the window gets it on the next run
    again, calls = run(env, state)
    [update] = [c for c in calls if c[1:4] == ["container", "clusters", "update"]]
    assert {flag: update[update.index(flag) + 1] for flag in MAINTENANCE_WINDOW} == window


def test_the_jobs_may_write_the_bucket_as_their_kubernetes_account_with_no_google_account(cloud):
    env, _, state = cloud
    result, calls = run(env, state)
    assert result.returncode == 0, result.stderr
    [grant] = [c for c in calls if c[1:4] == ["storage", "buckets", "add-iam-policy-binding"]]
    assert grant[grant.index("--member") + 1] == (
        f"principal://iam.googleapis.com/projects/{cloud_cli.PROJECT_NUMBER}/locations/global/"
        "workloadIdentityPools/my-lab-project.svc.id.goog/subject/ns/tqflow/sa/tqflow-jobs"
    )
    assert grant[grant.index("--role") + 1] == "roles/storage.objectAdmin"
    assert not [
        c for c in calls if c[1:3] == ["iam", "service-accounts"] and "tqflow-jobs" in str(c)
    ]


def pool_updates(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[1:4] == ["container", "node-pools", "update"]]


def test_a_run_with_other_pool_settings_changes_the_pool_to_them_once(cloud):
    env, _, state = cloud
    assert run(env, state)[0].returncode == 0
    bigger = {**env, "MACHINE_TYPE": "e2-highmem-8", "MAX_NODES": "20"}
    result, calls = run(bigger, state)
    assert result.returncode == 0, result.stderr
    changed = pool_updates(calls)
    assert [c[c.index("--machine-type") + 1] for c in changed if "--machine-type" in c] == [
        "e2-highmem-8"
    ]
    assert [c[c.index("--max-nodes") + 1] for c in changed if "--max-nodes" in c] == ["20"]
    assert not [c for c in changed if "--disk-size" in c]  # unchanged, untouched
    assert "machine type e2-highmem-4 -> e2-highmem-8" in result.stdout
    again, calls = run(bigger, state)
    assert again.returncode == 0 and pool_updates(calls) == []


def test_a_run_that_turns_spot_off_stops_and_says_what_to_delete_first(cloud):
    env, _, state = cloud
    assert run(env, state)[0].returncode == 0
    result, calls = run({**env, "SPOT": "0"}, state)
    assert result.returncode == 4, result.stdout
    assert pool_updates(calls) == []
    assert (
        "gcloud container node-pools delete tqflow-workers --cluster tqflow --region us-west1 "
        "--project my-lab-project" in result.stderr
    )


@pytest.mark.parametrize("tool", TOOLS)
def test_a_missing_tool_stops_it_before_anything_changes_with_how_to_install(cloud, tool):
    env, bin_dir, state = cloud
    (bin_dir / tool).unlink()
    result, calls = run(env, state)
    assert result.returncode == 2 and calls == []
    assert f"{tool}: " in result.stderr and "install" in result.stderr


#: A new project's regional quotas, as `gcloud compute regions describe REGION --flatten quotas
#: --format 'value(quotas.metric,quotas.limit,quotas.usage)'` prints them (a subset).
NEW_PROJECT_QUOTAS = """\
CPUS\t24.0\t0.0
DISKS_TOTAL_GB\t4096.0\t0.0
PREEMPTIBLE_CPUS\t0.0\t0.0
SSD_TOTAL_GB\t500.0\t0.0
IN_USE_ADDRESSES\t8.0\t0.0
"""


def test_a_new_projects_quota_stops_it_before_anything_is_created_naming_what_to_raise(cloud):
    env, _, state = cloud
    (state / "quotas.txt").write_text(NEW_PROJECT_QUOTAS)
    result, calls = run(env, state)
    assert result.returncode == 3, result.stdout + result.stderr
    # 25 spot nodes of 4 vCPUs: with no PREEMPTIBLE_CPUS granted they count against CPUS
    for line in (
        r"CPUS +needs +112 +limit +24",
        r"SSD_TOTAL_GB +needs +1550 +limit +500",
        r"IN_USE_ADDRESSES +needs +28 +limit +8",
    ):
        assert re.search(line, result.stdout), result.stdout
    assert "short of what 100 workers need: CPUS SSD_TOTAL_GB IN_USE_ADDRESSES" in result.stderr
    assert "iam-admin/quotas?project=my-lab-project" in result.stderr
    assert not [c for c in calls if "create" in c]  # nothing made


def test_a_quota_that_fits_lets_it_go_on(cloud):
    env, _, state = cloud
    (state / "quotas.txt").write_text(
        "CPUS\t24.0\t0.0\nPREEMPTIBLE_CPUS\t200.0\t0.0\nSSD_TOTAL_GB\t4096.0\t0.0\n"
        "IN_USE_ADDRESSES\t64.0\t0.0\n"
    )
    result, _ = run(env, state)
    assert result.returncode == 0, result.stderr
    assert re.search(r"PREEMPTIBLE_CPUS +needs +100 +limit +200", result.stdout)
    assert re.search(r"CPUS +needs +12 +limit +24", result.stdout)


TEARDOWN = REPO / "deployments/gke/delete_cluster.sh"


def teardown(env: dict[str, str], state: Path) -> tuple[subprocess.CompletedProcess, list]:
    calls = state / "calls.jsonl"
    before = len(calls.read_text().splitlines())
    result = subprocess.run(
        ["/bin/bash", str(TEARDOWN)], env=env, capture_output=True, text=True, timeout=300
    )
    return result, [json.loads(line) for line in calls.read_text().splitlines()[before:]]


def test_the_teardown_removes_everything_the_setup_made_with_flags_the_commands_have(cloud):
    env, _, state = cloud
    assert run(env, state)[0].returncode == 0
    result, calls = teardown({**env, "DELETE_BUCKET": "1"}, state)
    assert result.returncode == 0, result.stderr
    assert json.loads((state / "made.json").read_text()) == []  # nothing left of the setup
    assert not (unknown := unknown_flags(calls)), unknown
    assert "Kept:" in result.stdout and "SQS queues" in result.stdout
    again, calls = teardown({**env, "DELETE_BUCKET": "1"}, state)
    assert again.returncode == 0, again.stderr
    assert not [c for c in calls if "delete" in c or c[1:3] == ["storage", "rm"]]


def test_the_teardown_keeps_the_bucket_unless_told_and_says_so(cloud):
    env, _, state = cloud
    assert run(env, state)[0].returncode == 0
    result, _ = teardown(env, state)  # no terminal to ask, no DELETE_BUCKET
    assert result.returncode == 0, result.stderr
    assert json.loads((state / "made.json").read_text()) == [
        ["storage buckets", "gs://my-lab-tqflow"]
    ]
    assert "the bucket gs://my-lab-tqflow and its results (DELETE_BUCKET=1 deletes them)" in (
        result.stdout
    )


BUILD = REPO / "deployments/gke/build_image.sh"


def test_without_docker_the_image_is_built_by_cloud_build_from_the_same_dockerfile(tmp_path):
    import yaml

    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    cloud_cli.install(bin_dir, ("gcloud",))  # and no docker
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CLOUD_CLI_STATE": str(state),
        "HOME": str(tmp_path),
        "REPOSITORY": "us-west1-docker.pkg.dev/my-lab-project/tqflow",
        "TASK_PACKAGE": "git+https://github.com/my-lab/neuron-tasks@v1.2",
    }
    result = subprocess.run(
        ["/bin/bash", str(BUILD)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    [submit] = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()
                if json.loads(line)[1:3] == ["builds", "submit"]]  # fmt: skip
    assert submit[-1] == "."  # the repository root, as the Dockerfile's COPY lines expect
    assert {a for a in submit if a.startswith("-")} <= {"--config", "--substitutions"}
    given = dict(p.split("=", 1) for p in submit[submit.index("--substitutions") + 1].split(","))
    assert given["_TASK_PACKAGE"] == env["TASK_PACKAGE"]
    image = given["_IMAGE"]
    digest = json.loads((state / "images.json").read_text())[image]
    [export] = result.stdout.splitlines()  # stdout is the line to eval, alone
    tag = image.rsplit(":", 1)[1]
    assert (
        export == f"export TQFLOW_IMAGE={env['REPOSITORY']}/worker@{digest} TQFLOW_IMAGE_TAG={tag}"
    )
    config = yaml.safe_load((REPO / submit[submit.index("--config") + 1]).read_text())
    [step] = config["steps"]
    assert "--file=worker_image/Dockerfile" in step["args"]
    assert "--build-arg=TASK_PACKAGE=${_TASK_PACKAGE}" in step["args"]
    assert "--tag=${_IMAGE}" in step["args"] and config["images"] == ["$_IMAGE"]
