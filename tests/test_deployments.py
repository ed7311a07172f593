"""prefect.yaml end to end: a real ``prefect server start``, ``prefect deploy --all``, a process
worker, ``prefect deployment run``, and deployment-mode fan-out with a worker killed mid-run.

Building and pushing the worker image needs Docker and a registry, so the copy of prefect.yaml
deployed here has its build and push steps removed; everything else is the file as shipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from tests.conftest import REPO, free_port

# One server, one deploy: keep these tests on one xdist worker (make test uses --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deployments")]

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """``prefect server start`` on 127.0.0.1 with its own home and database; yields the
    environment that points the CLI and clients at it."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PYTHONPATH": str(REPO),  # flow runs import tests.tasks
        "PWD": str(REPO),  # prefect.yaml's local pull step: this checkout
    }
    log = open(home / "server.log", "w")
    process = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (home / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prefect server did not start in 120 s"
            time.sleep(0.5)
        yield env
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=env, cwd=REPO, capture_output=True, text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def deployed(server, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Work pools and local blocks created, ``prefect deploy --all`` run, a process worker
    polling the local pool."""
    work = tmp_path_factory.mktemp("deploy")
    cli(server, "prefect", "work-pool", "create", "tqflow-local", "--type", "process")
    cli(server, "prefect", "work-pool", "create", "tqflow-gke", "--type", "kubernetes",
        "--base-job-template", str(REPO / "deployments/gke/base-job-template.json"))
    cli(server, "tqflow", "blocks", "save-local", "--data", str(work / "data"))
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    spec.pop("build"), spec.pop("push")
    for deployment in spec["deployments"]:
        deployment.pop("build", None), deployment.pop("push", None)
    (work / "prefect.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    cli(server, "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", str(work / "prefect.yaml"))

    worker_log = open(work / "worker.log", "w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "tqflow-local", "--type", "process"],
        env=server, cwd=work, stdout=worker_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        yield {**server, "TQFLOW_DATA": str(work / "data"), "WORKER_LOG": str(work / "worker.log")}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
        worker_log.close()


@contextlib.contextmanager
def client(env):
    """A client of the e2e server; the session's own test server stays the default."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as c:
            yield c


def run_deployment(env, name: str, **parameters) -> None:
    """``prefect deployment run NAME --params ... --watch``; asserts the run completed."""
    out = cli(env, "prefect", "deployment", "run", name, "--params", json.dumps(parameters),
              "--watch", "--watch-timeout", "240", timeout=300)
    assert "Completed" in out, out[-2000:] + Path(env["WORKER_LOG"]).read_text()[-4000:]


def outputs(env, batch: str) -> set[str]:
    folder = Path(env["TQFLOW_DATA"]) / batch / "outputs"
    return {p.stem for p in folder.glob("*.json")} if folder.exists() else set()


def worker_runs(env, batch_started_after: float) -> list:
    with client(env) as c:
        runs = c.read_flow_runs()
        deployments = {d.id: d.name for d in c.read_deployments()}
    return [
        r for r in runs
        if deployments.get(r.deployment_id) == "worker-local" and r.created.timestamp() > batch_started_after
    ]


def test_deploy_all_registers_every_deployment_and_an_inactive_schedule(deployed):
    with client(deployed) as c:
        found = {d.name: d for d in c.read_deployments()}
    assert set(found) == {
        "pipeline-local", "worker-local", "pipeline-gke", "worker-gke", "analysis", "dead-letters",
    }
    [schedule] = found["pipeline-gke"].schedules
    assert (schedule.schedule.cron, schedule.active) == ("0 6 * * 1", False)
    assert found["worker-gke"].job_variables["memory_limit"] == found["worker-gke"].job_variables["memory_request"]
    assert "cpu_limit" not in found["worker-gke"].job_variables
    # blocks by slug: no credential in any deployment's parameters
    assert found["pipeline-gke"].parameters["queue"] == "sqs-task-queue/tqflow"
    assert found["pipeline-local"].pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]


def test_deployment_run_of_the_local_pipeline_writes_every_output(deployed):
    run_deployment(deployed, "pipeline/pipeline-local", batch="e2e-local", items=list(range(12)),
                   items_from=None, fn="tests.tasks:square", idle_seconds=1, poll_seconds=0.5)
    assert outputs(deployed, "e2e-local") == {str(i) for i in range(12)}


def test_deployment_mode_fan_out_runs_n_worker_deployments_that_drain_the_queue(deployed):
    started = time.time()
    run_deployment(deployed, "pipeline/pipeline-local", batch="e2e-fan", items=list(range(30)),
                   items_from=None, fn="tests.tasks:square", mode="deployment",
                   worker_deployment="worker/worker-local", workers=4, tasks_per_worker=10,
                   idle_seconds=1, poll_seconds=0.5, analyze=False)
    assert outputs(deployed, "e2e-fan") == {str(i) for i in range(30)}
    runs = worker_runs(deployed, started)
    assert len(runs) == 3  # min(workers=4, ceil(30 / 10))
    assert all(r.state.is_completed() for r in runs)


def test_a_killed_worker_run_is_replaced_and_the_batch_completes(deployed, tmp_path):
    from blocks import LocalTaskQueue

    with client(deployed):  # leases of 5 s: the killed worker's tasks come back soon
        LocalTaskQueue(
            path=str(Path(deployed["TQFLOW_DATA"]) / "queue.sqlite"), queue_name="e2e-kill",
            lease_seconds=5,
        ).save("e2e-kill")
    started = time.time()
    pipeline_run = subprocess.Popen(
        [str(BIN / "prefect"), "deployment", "run", "pipeline/pipeline-local", "--params", json.dumps({
            "queue": "local-task-queue/e2e-kill",
            "batch": "e2e-kill", "items": list(range(40)), "items_from": None,
            "fn": "tests.tasks:tracked", "kwargs": {"log_dir": str(tmp_path), "seconds": 0.25},
            "mode": "deployment", "worker_deployment": "worker/worker-local", "workers": 2,
            "tasks_per_worker": 20, "idle_seconds": 1, "poll_seconds": 0.5, "analyze": False,
        }), "--watch", "--watch-timeout", "240"],
        env=deployed, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:  # a worker that has started tasks
        running = [r for r in worker_runs(deployed, started) if r.state.is_running()]
        if running and len(list(tmp_path.glob("*.finished"))) >= 4:
            victim = _process_of_flow_run(running[0].id)
        time.sleep(0.2)
    assert victim is not None, "no running worker flow run was found"
    os.kill(victim, signal.SIGKILL)

    out, _ = pipeline_run.communicate(timeout=300)
    assert "Completed" in out, out[-3000:]
    assert outputs(deployed, "e2e-kill") == {str(i) for i in range(40)}
    runs = worker_runs(deployed, started)
    assert sum(r.state.is_crashed() or r.state.is_failed() for r in runs) == 1
    assert len(runs) == 3  # the two launched, and the one that replaced the killed run


def _process_of_flow_run(flow_run_id) -> int | None:
    """PID of the process executing ``flow_run_id`` (the process worker sets
    PREFECT__FLOW_RUN_ID in its environment)."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    return None
