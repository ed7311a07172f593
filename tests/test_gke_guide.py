"""deployments/gke/README.md as a lab engineer follows it: every command block as written, in
order, in one terminal, twice, then the clean-up, with stand-ins for what reaches a cloud
(gcloud, kubectl, helm, docker; AWS on moto, GCS on its stand-in) and a real Prefect server with
basic auth where only the guide's kubernetes pool exists. Every call uses flags the real
commands have; the second pass changes nothing; the clean-up leaves nothing; every GKE
deployment is registered with the image and job variables the guide says; the Helm values are
the charts' own and the auth string lives in a Secret; and the Job prefect-kubernetes builds
under that worker carries the auth string only as a Secret reference."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import pytest
import yaml

from tests.support import cloud_cli
from tests.support.helpers import REPO, prefect_settings
from tests.support.readme import guide_blocks, guide_steps, run_bash
from tests.support.services import prefect_server
from tqflow.gke.job_template import NAMESPACE, base_job_template
from tqflow.gke.resources import Machine, plan

#: One worker runs the module, so its server (module fixture) starts once in the suite.
pytestmark = pytest.mark.xdist_group("gke-guide")
BIN = Path(sys.executable).parent
IMAGE = "us-west1-docker.pkg.dev/my-project/tqflow/worker@sha256:" + "1" * 64
#: The GKE deployments of prefect.yaml, all of which the guide deploys.
GKE_DEPLOYMENTS = {"pipeline-gke", "worker-gke", "analysis", "dead-letters"}
#: The flow parameters that name a block.
BLOCK_PARAMETERS = ("queue", "storage", "cave")


# -- the guide's own steps on a server with basic auth ----------------------------------------------


#: The tools the guide runs that reach a cloud: recording stand-ins (`tests/support/cloud_cli.py`).
STAND_INS = ("gcloud", "kubectl", "gke-gcloud-auth-plugin", "helm", "docker")


@pytest.fixture(scope="module")
def guided(tmp_path_factory, moto_endpoint, fake_gcs, gcs_stand_in):
    """The whole guide as a lab engineer follows it: every command block, in order, in one
    terminal (what a block exports, the next one has), twice, then the clean-up, with
    stand-ins for gcloud, kubectl, helm and docker first on PATH, AWS on moto (the engineer's
    admin credentials), GCS on its stand-in, and a real Prefect server with basic auth. The
    server starts where the guide's Helm step would start it, after step 3, with the password
    that step put in its Secret; the guide's profile points at 127.0.0.1:4200 (its
    port-forward), and the server's own port comes as PREFECT_API_URL, which Prefect lets the
    environment override. Once step 5 installed the worker chart, a worker polls the pool
    (heartbeats, as the chart's would). Yields the server's state after each pass and the
    stand-ins' calls."""
    home = tmp_path_factory.mktemp("guide")
    bin_dir, state, user_home = home / "bin", home / "state", home / "user"
    for folder in (bin_dir, state, user_home):
        folder.mkdir()
    cloud_cli.install(bin_dir, STAND_INS)
    secrets_folder = user_home / ".cloudvolume" / "secrets"
    secrets_folder.mkdir(parents=True)
    (secrets_folder / "cave-secret.json").write_text(json.dumps({"token": "made-up-token"}))
    path = os.pathsep.join(
        [str(bin_dir)] + [d for d in os.environ["PATH"].split(os.pathsep) if Path(d) != BIN]
    )
    env = {
        "PATH": path,  # the venv comes with step 0's `source .venv/bin/activate`
        "HOME": str(user_home),
        "PREFECT_HOME": str(user_home / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "CLOUD_CLI_STATE": str(state),
        "STORAGE_EMULATOR_HOST": gcs_stand_in.endpoint,
        # the engineer's AWS admin credentials (`aws configure`), on moto
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "admin-made-up",
        "AWS_SECRET_ACCESS_KEY": "admin-made-up",
        "COLUMNS": "200",
        "LANG": "C.UTF-8",
    }
    terminal = home / "terminal.sh"  # what one block exports, for the next
    terminal.write_text("")
    steps = guide_steps()
    setup = [step for step in steps if not step[0].startswith("9. ")]
    clean_up = [step for step in steps if step[0].startswith("9. ")]
    assert steps == setup + clean_up and "delete_cluster.sh" in clean_up[0][2]

    printed: list[str] = []

    def run(language: str, block: str, extra: dict[str, str]) -> None:
        script = block if language == "bash" else f"python - <<'PYTHON'\n{block}PYTHON\n"
        wrapped = f'source "{terminal}"\n{script}\nexport -p > "{terminal}"\n'
        printed.append(run_bash(wrapped, {**env, **extra}))

    with contextlib.ExitStack() as stack:
        server: dict[str, str] = {}
        stop_heartbeats = threading.Event()
        stack.callback(stop_heartbeats.set)
        states, passes, heartbeating = [], [], False
        for _ in range(2):  # every step can be run again, and changes nothing the second time
            for heading, language, block in setup:
                run(language, block, server)
                if heading.startswith("3. ") and not server:
                    [auth] = [
                        v["auth-string"]
                        for k, v in json.loads((state / "secrets.json").read_text()).items()
                        if k == "prefect-basic-auth"
                    ]
                    server_home = home / "server"
                    server_home.mkdir()
                    server_env = {**os.environ, "PREFECT_SERVER_API_AUTH_STRING": auth}
                    started = stack.enter_context(prefect_server(server_home, env=server_env))
                    server.update(PREFECT_API_URL=started["PREFECT_API_URL"])
                    guided = {"PREFECT_API_URL": started["PREFECT_API_URL"], "auth": auth}
                if "prefect/prefect-worker" in block and not heartbeating:
                    threading.Thread(
                        target=heartbeats, args=(guided, stop_heartbeats), daemon=True
                    ).start()
                    heartbeating = True
            states.append(server_state(guided))
            passes.append(recorded(state))
        stop_heartbeats.set()
        aws = aws_side(guided, moto_endpoint, make_queue=True)  # as the first batch makes it
        for _, language, block in clean_up:
            run(language, block, {**server, "DELETE_BUCKET": "1"})  # "yes" to its question
        calls = recorded(state)
        yield {
            **guided,
            "env": {**env, **server},
            "states": states,
            "passes": [passes[0], passes[1][len(passes[0]) :]],
            "clean_up": calls[len(passes[1]) :],
            "made": json.loads((state / "made.json").read_text()),
            "printed": printed,
            "image": re.search(r'TQFLOW_IMAGE="([^"]+)"', terminal.read_text()).group(1),
            "aws": aws,
            "aws_after_clean_up": aws_side(guided, moto_endpoint),
        }


def aws_side(guided, moto_endpoint: str, make_queue: bool = False) -> dict:
    """The AWS side as the admin sees it: the SQS user's policy and keys, and the queues
    (made first, through the guide's queue block, when asked: the first batch would)."""
    import boto3
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    from blocks import SQSTaskQueue

    if make_queue:
        settings = {
            PREFECT_API_URL: guided["PREFECT_API_URL"],
            PREFECT_API_AUTH_STRING: guided["auth"],
        }
        # the block holds no endpoint: moto's comes from the environment, as in the guide's
        with (
            prefect_settings(settings),
            mock.patch.dict(os.environ, AWS_ENDPOINT_URL=moto_endpoint),
        ):
            SQSTaskQueue.load("tqflow").ensure()
    admin = {"endpoint_url": moto_endpoint, "region_name": "us-east-1",
             "aws_access_key_id": "admin-made-up", "aws_secret_access_key": "admin-made-up"}  # fmt: skip
    iam, sqs = boto3.client("iam", **admin), boto3.client("sqs", **admin)
    users = {u["UserName"] for u in iam.list_users()["Users"]}
    side: dict = {"queues": sorted(sqs.list_queues().get("QueueUrls", [])), "user": None}
    if "tqflow-sqs" in users:
        side["user"] = {
            "policy": iam.get_user_policy(UserName="tqflow-sqs", PolicyName="tqflow-sqs")[
                "PolicyDocument"
            ],
            "keys": iam.list_access_keys(UserName="tqflow-sqs")["AccessKeyMetadata"],
        }
    return side


def recorded(state: Path) -> list[list[str]]:
    """The stand-ins' calls so far."""
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def heartbeats(guided, stop: threading.Event) -> None:
    """The chart's Prefect worker polling the pool: a heartbeat every few seconds."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    settings = {
        PREFECT_API_URL: guided["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: guided["auth"],
    }
    with prefect_settings(settings), get_client(sync_client=True) as client:
        while not stop.wait(5):
            try:
                client.send_worker_heartbeat("tqflow-gke", "prefect-worker-0")
            except Exception:  # noqa: BLE001 (the pool is made a moment later; try again)
                pass


def server_state(guided) -> dict:
    """What the guide's steps made on the server: deployments (pool, job variables,
    parameters), work pools, and block documents (with their values)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    async def go():
        async with get_client() as client:
            deployments = await client.read_deployments()
            pools = await client.read_work_pools()
            documents = await client.read_block_documents(include_secrets=True)
        return {
            "deployments": {
                d.name: (d.work_pool_name, d.job_variables, d.parameters) for d in deployments
            },
            "pools": {p.name: p.base_job_template for p in pools},
            "blocks": {d.name: (d.block_type_id, d.data) for d in documents},
        }

    settings = {
        PREFECT_API_URL: guided["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: guided["auth"],
    }
    with prefect_settings(settings):
        return asyncio.run(go())


def read(guided, what: str):
    """``read_deployments`` / ``read_work_pools`` of the guide's server, as the guide's user."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    async def go():
        async with get_client() as client:
            return await getattr(client, what)()

    settings = {
        PREFECT_API_URL: guided["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: guided["auth"],
    }
    with prefect_settings(settings):
        return asyncio.run(go())


def deployments(guided) -> dict:
    return {d.name: d for d in read(guided, "read_deployments")}


@pytest.mark.slow
def test_the_guide_registers_every_gke_deployment_on_a_server_with_only_its_pool(guided):
    assert [pool.name for pool in read(guided, "read_work_pools")] == ["tqflow-gke"]
    found = deployments(guided)
    assert set(found) == GKE_DEPLOYMENTS
    for name, deployment in found.items():
        assert deployment.work_pool_name == "tqflow-gke", name
        assert deployment.job_variables["image"] == guided["image"], name
    # the image step 2 built and pushed, by digest
    assert re.fullmatch(r"us-west1-docker\.pkg\.dev/my-project/tqflow/worker@sha256:[0-9a-f]{64}",
                        guided["image"])  # fmt: skip


@pytest.mark.slow
def test_the_worker_deployment_is_sized_for_the_pipelines_processes_per_run(guided):
    found = deployments(guided)
    processes = found["pipeline-gke"].parameters["processes_per_run"]
    sized = plan(Machine.from_type("e2-highmem-4"), 4).times(processes).as_job_variables()
    worker = found["worker-gke"].job_variables
    assert {k: worker[k] for k in sized} == sized
    assert "cpu_limit" not in worker and worker["memory_limit"] == worker["memory_request"]
    # prefect.yaml's own numbers are the guide's: deploying without -jv gives the same pod
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [shipped] = [d for d in spec["deployments"] if d["name"] == "worker-gke"]
    assert {k: shipped["work_pool"]["job_variables"][k] for k in sized} == sized
    # Prefect replaces the file's job variables with -jv ones: the guide's give them all
    assert set(worker) == set(shipped["work_pool"]["job_variables"])


@pytest.mark.slow
def test_the_guides_steps_run_twice_change_nothing_the_second_time(guided):
    first, second = guided["states"]
    assert {"pipeline-gke", "worker-gke", "analysis", "dead-letters"} <= set(first["deployments"])
    assert "tqflow-gke" in first["pools"] and "tqflow" in first["blocks"]
    assert second == first


#: What the guide runs besides make_cluster.sh and delete_cluster.sh (whose commands
#: test_cluster_script.py's FLAGS has), with the flags the real commands define: gcloud 578.0.0's
#: (lib/surface), kubectl's and helm's references.
GUIDE_FLAGS = {
    "gcloud auth configure-docker": set(),
    "gcloud builds submit": {"--config", "--substitutions"},
    "gcloud artifacts docker images describe": set(),
    "kubectl get secret": {"--namespace", "-o"},
    "kubectl create secret generic": {"--namespace", "--from-literal", "--dry-run", "-o"},
    "kubectl port-forward": {"--namespace"},
    "helm repo add": {"--force-update"},
    "helm repo update": set(),
    "helm upgrade": {"--install", "--version", "--namespace", "-f", "--set"},
    "docker buildx version": set(),
    "docker buildx build": {"--platform", "-f", "--build-arg", "-t", "--push"},
    "docker buildx imagetools inspect": {"--format"},
}


def test_every_command_of_the_guide_uses_flags_the_real_commands_have(guided):
    from tests.test_cluster_script import FLAGS, unknown_flags

    calls = [c for calls in guided["passes"] for c in calls] + guided["clean_up"]
    unknown = unknown_flags(calls, {**FLAGS, **GUIDE_FLAGS})
    assert not unknown, unknown


def test_the_second_pass_of_the_guide_creates_nothing_in_the_cloud(guided):
    first, second = guided["passes"]
    assert [c for c in first if c[0] == "gcloud" and "create" in c]  # the first made it all
    assert not [c for c in second if "create" in c and "--dry-run=client" not in c], second


def test_the_clean_up_leaves_nothing_the_guide_made(guided):
    assert guided["made"] == []  # in Google Cloud
    assert [q.rsplit("/", 1)[1] for q in guided["aws"]["queues"]] == ["tqflow", "tqflow-dlq"]
    assert guided["aws_after_clean_up"] == {"queues": [], "user": None}  # in AWS
    assert not [c for c in guided["clean_up"] if "create" in c]


def test_a_terminal_without_the_image_deploys_nothing_and_says_what_to_export(guided):
    [deploy] = guide_blocks("## 7. Size and deploy")
    env = {**guided["env"], "PATH": f"{BIN}{os.pathsep}{guided['env']['PATH']}"}  # a new terminal
    with pytest.raises(AssertionError, match="TQFLOW_IMAGE: is not set in this terminal"):
        run_bash(deploy, env)
    assert server_state(guided)["deployments"] == guided["states"][-1]["deployments"]


def test_the_guides_sqs_key_may_use_only_the_queue_and_its_dead_letter_queue(guided):
    from prefect_aws import AwsCredentials

    [allowed] = guided["aws"]["user"]["policy"]["Statement"]
    account = allowed["Resource"][0].split(":")[4]
    assert account.isdigit()
    assert allowed["Resource"] == [
        f"arn:aws:sqs:us-east-1:{account}:tqflow",
        f"arn:aws:sqs:us-east-1:{account}:tqflow-dlq",
    ]
    # run twice: one key, the one the secrets file holds and the block was made from
    [key] = guided["aws"]["user"]["keys"]
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    settings = {
        PREFECT_API_URL: guided["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: guided["auth"],
    }
    with prefect_settings(settings):
        block = AwsCredentials.load("tqflow")
    assert block.aws_access_key_id == key["AccessKeyId"]
    assert block.region_name == "us-east-1"


def test_every_block_a_gke_deployment_names_is_one_the_guide_created(guided):
    from prefect.blocks.core import Block
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    slugs = {
        value
        for deployment in deployments(guided).values()
        for name, value in deployment.parameters.items()
        if name in BLOCK_PARAMETERS
    }
    assert {"sqs-task-queue/tqflow", "cloud-files-storage/tqflow", "cave-credentials/tqflow"} <= (
        slugs
    )
    settings = {
        PREFECT_API_URL: guided["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: guided["auth"],
    }
    with prefect_settings(settings):
        for slug in slugs:
            block = Block.load(slug)
            if slug.startswith("cloud-files-storage/"):
                # on GKE, Workload Identity: no key stored, none sent to a pod
                assert block.gcp_credentials is None and block.aws_credentials is None


# -- the guide's Helm steps, with stand-ins for helm and kubectl ------------------------------------

#: Value paths of the pinned charts (prefect-helm's charts/*/values.yaml) this guide may set,
#: each checked there: a misspelt key is silently ignored by Helm, so the test refuses it here.
CHART_VALUES = {
    "prefect/prefect-server": {
        "global.prefect.image.repository",
        "global.prefect.image.prefectTag",
        "server.command",
        "server.args",
        "server.basicAuth.enabled",
        "server.basicAuth.existingSecret",
        "server.nodeSelector",
        "server.uiConfig.prefectUiApiUrl",
        "secret.create",
        "postgresql.auth.existingSecret",
        "postgresql.primary.persistence.enabled",
        "postgresql.primary.persistence.size",
        "postgresql.primary.nodeSelector",
    },
    "prefect/prefect-worker": {
        "worker.apiConfig",
        "worker.selfHostedServerApiConfig.apiUrl",
        "worker.selfHostedServerApiConfig.basicAuth.enabled",
        "worker.selfHostedServerApiConfig.basicAuth.existingSecret",
        "worker.config.workPool",
        "worker.config.type",
        "worker.config.jobNamespace",
        "worker.image.repository",
        "worker.image.prefectTag",
        "worker.nodeSelector",
        "worker.resources.requests.cpu",
        "worker.resources.requests.memory",
        "worker.resources.limits.memory",
        "worker.resources.limits.cpu",
    },
}
HELM_FLAGS = {"--version", "--namespace", "-f", "--set"}
#: Maps and lists whose entries are data, not chart values.
DATA_VALUES = (
    "server.nodeSelector",
    "worker.nodeSelector",
    "postgresql.primary.nodeSelector",
    "server.command",
    "server.args",
)


def value_paths(values: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in DATA_VALUES:
            paths |= value_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


@pytest.fixture
def helm_steps(guided):
    """The helm and kubectl calls of the guide's first pass."""
    return [c for c in guided["passes"][0] if c[0] in ("helm", "kubectl")]


def test_helm_steps_set_only_values_the_pinned_charts_have(helm_steps):
    # `upgrade --install`: the step run again upgrades the release in place
    installs = [c for c in helm_steps if c[:3] == ["helm", "upgrade", "--install"]]
    assert [c[4] for c in installs] == ["prefect/prefect-server", "prefect/prefect-worker"]
    assert not [c for c in helm_steps if c[:2] == ["helm", "install"]]  # fails a second time
    for call in installs:
        chart, args = call[4], call[5:]
        flags = {a for a in args if a.startswith("-")}
        assert flags <= HELM_FLAGS, flags - HELM_FLAGS
        assert args[args.index("--namespace") + 1] == NAMESPACE
        given = value_paths(yaml.safe_load((REPO / args[args.index("-f") + 1]).read_text()))
        given |= {args[i + 1].split("=")[0] for i, a in enumerate(args) if a == "--set"}
        assert given <= CHART_VALUES[chart], given - CHART_VALUES[chart]
    assert len({c[c.index("--version") + 1] for c in installs}) == 1  # released together


def test_the_auth_string_lives_only_in_the_secret_both_charts_read(helm_steps):
    [secret] = [
        c
        for c in helm_steps
        if c[:5] == ["kubectl", "create", "secret", "generic", "prefect-basic-auth"]
    ]
    name = secret[4]
    [literal] = [a for a in secret if a.startswith("--from-literal=")]
    assert re.fullmatch(r"--from-literal=auth-string=admin:[0-9a-f]{32}", literal)
    server = yaml.safe_load((REPO / "deployments/gke/server-values.yaml").read_text())
    worker = yaml.safe_load((REPO / "deployments/gke/worker-values.yaml").read_text())
    auth = worker["worker"]["selfHostedServerApiConfig"]["basicAuth"]
    assert server["server"]["basicAuth"] == {"enabled": True, "existingSecret": name}
    assert auth == {"enabled": True, "existingSecret": name}
    password = literal.split(":", 1)[1]
    assert not [c for c in helm_steps if c[0] == "helm" and any(password in a for a in c)]


def test_the_servers_database_persists_with_a_password_of_its_own_made_once(helm_steps, tmp_path):
    server = yaml.safe_load((REPO / "deployments/gke/server-values.yaml").read_text())
    database = server["postgresql"]
    assert database["primary"]["persistence"]["enabled"] is True
    assert server["secret"]["create"] is False  # no chart-made Secret from a default password
    [made] = [c for c in helm_steps if c[:4] == ["kubectl", "create", "secret", "generic"]
              and c[4] == database["auth"]["existingSecret"]]  # fmt: skip
    literals = dict(
        a.split("=", 1)[1].split("=", 1) for a in made if a.startswith("--from-literal")
    )
    assert re.fullmatch(r"[0-9a-f]{32}", literals["password"])
    assert literals["connection-string"] == (
        f"postgresql+asyncpg://prefect:{literals['password']}"
        f"@prefect-server-postgresql.{NAMESPACE}:5432/server"
    )
    assert "prefect-rocks" not in json.dumps(helm_steps)  # the chart's default password


def test_the_guide_run_again_keeps_both_passwords(guided):
    for name in ("prefect-basic-auth", "prefect-db"):
        made = [
            c
            for calls in guided["passes"]
            for c in calls
            if c[:5] == ["kubectl", "create", "secret", "generic", name]
        ]
        assert len(made) == 1, name  # the second pass found it, and made no new password


def test_the_cli_logs_in_with_the_password_from_its_secret_never_printing_it(guided):
    profiles = Path(guided["env"]["PREFECT_HOME"]) / "profiles.toml"
    assert guided["auth"] in profiles.read_text()  # what `prefect work-pool ls` then used
    assert not [out for out in guided["printed"] if guided["auth"].split(":")[1] in out]
    assert profiles.stat().st_mode & 0o077 == 0  # the owner's alone


# -- the Job the worker submits under basic auth ------------------------------------------------------


class KubernetesJobsAPI(ThreadingHTTPServer):
    """Kubernetes' create-Job endpoint on 127.0.0.1: records each Job posted and returns it."""

    def __init__(self) -> None:
        self.jobs: list[dict] = []
        super().__init__(("127.0.0.1", 0), _JobsHandler)


class _JobsHandler(BaseHTTPRequestHandler):
    server: KubernetesJobsAPI

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        job = json.loads(body)
        self.server.jobs.append(job)
        job.setdefault("metadata", {}).setdefault("uid", str(uuid.uuid4()))
        reply = json.dumps(job).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


def chart_worker_env(values: dict, auth_string: str) -> dict[str, str]:
    """The environment prefect-worker's deployment template gives the worker for these values
    (charts/prefect-worker/templates/deployment.yaml): with basicAuth.existingSecret, the auth
    string from the Secret's key ``auth-string``, and that Secret's name and key for
    prefect-kubernetes."""
    auth = values["worker"]["selfHostedServerApiConfig"]["basicAuth"]
    env = {"PREFECT_API_AUTH_STRING": auth_string} if auth["enabled"] else {}
    if auth["enabled"] and auth.get("existingSecret"):
        env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"] = auth[
            "existingSecret"
        ]
        env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"] = "auth-string"
    return env


def test_a_worker_job_gets_the_auth_string_only_as_a_secret_reference(monkeypatch, request):
    request.getfixturevalue("prefect_api")
    from kubernetes_asyncio.client import ApiClient, Configuration
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_AUTH_STRING
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    auth_string = f"admin:{secrets.token_hex(16)}"
    values = yaml.safe_load((REPO / "deployments/gke/worker-values.yaml").read_text())
    for name, value in chart_worker_env(values, auth_string).items():
        monkeypatch.setenv(name, value)
    api = KubernetesJobsAPI()
    threading.Thread(target=api.serve_forever, daemon=True).start()
    request.addfinalizer(api.shutdown)

    async def submit() -> None:
        configuration = await KubernetesWorkerJobConfiguration.from_template_and_values(
            base_job_template(), {"image": IMAGE}
        )
        configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="brave-otter"))
        kubernetes = Configuration(host=f"http://127.0.0.1:{api.server_address[1]}")
        async with ApiClient(kubernetes) as client:
            worker = KubernetesWorker(work_pool_name="tqflow-gke")
            await worker._create_job(configuration, client)

    with prefect_settings({PREFECT_API_AUTH_STRING: auth_string}):
        asyncio.run(submit())
    [job] = api.jobs
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    [entry] = [e for e in env if e["name"] == "PREFECT_API_AUTH_STRING"]
    secret = values["worker"]["selfHostedServerApiConfig"]["basicAuth"]["existingSecret"]
    assert entry == {
        "name": "PREFECT_API_AUTH_STRING",
        "valueFrom": {"secretKeyRef": {"name": secret, "key": "auth-string"}},
    }
    assert auth_string.split(":")[1] not in json.dumps(job)
