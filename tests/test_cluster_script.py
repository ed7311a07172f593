"""deployments/gke/make_cluster.sh as a lab engineer runs it on a new Google Cloud project, with
recording stand-ins for gcloud, kubectl, gke-gcloud-auth-plugin and helm on PATH
(`tests/support/cloud_cli.py`): every call uses flags the real commands have, a second run creates
nothing, and a missing tool stops it before anything is changed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import cloud_cli
from tests.support.helpers import REPO

SCRIPT = REPO / "deployments/gke/make_cluster.sh"
TOOLS = ("gcloud", "kubectl", "gke-gcloud-auth-plugin", "helm")
#: The flags of each command the script may run: gcloud's as its 578.0.0 release defines them
#: (lib/googlecloudsdk/command_lib and lib/surface of the SDK), kubectl's from its reference,
#: plus the gcloud-wide --project, --format, --flatten, --quiet.
FLAGS = {
    "gcloud services enable": set(),
    "gcloud iam service-accounts describe": set(),
    "gcloud iam service-accounts create": {"--display-name", "--description"},
    "gcloud iam service-accounts add-iam-policy-binding": {"--member", "--role", "--condition"},
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
    },
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
    "kubectl annotate serviceaccount": {"--namespace", "--overwrite"},
    "kubectl apply": {"-f"},
}
GLOBAL = {"gcloud": {"--project", "--format", "--flatten", "--quiet"}, "kubectl": set()}


def command_of(call: list[str]) -> tuple[str, set[str]]:
    """The command a call runs (the longest `FLAGS` key its leading words make) and its flags."""
    tool, args = call[0], call[1:]
    words = [tool] + [a for a in args if not a.startswith("-")]
    key = max((k for k in FLAGS if words[: len(k.split())] == k.split()), key=len, default="")
    flags = {a.split("=")[0] for a in args if a.startswith("-") and a != "-"}  # "-": stdin
    return key, flags


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
    unknown = []
    for call in calls:
        key, flags = command_of(call)
        if not key or not flags <= FLAGS[key] | GLOBAL[call[0]]:
            unknown.append((call, key, flags - FLAGS.get(key, set()) - GLOBAL[call[0]]))
    assert not unknown, unknown
    made = {tuple(entry) for entry in json.loads((state / "made.json").read_text())}
    assert made == {
        ("iam service-accounts", "tqflow-nodes"),
        ("container clusters", "tqflow"),
        ("container node-pools", "tqflow-workers"),
        ("iam service-accounts", "tqflow-jobs"),
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
    unknown = [
        (call, flags)
        for call in calls
        for key, flags in [command_of(call)]
        if not key or not flags <= FLAGS[key] | GLOBAL[call[0]]
    ]
    assert not unknown, unknown
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
