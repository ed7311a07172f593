"""The shipped prefect.yaml and the README's process-pool recipe, end to end and unmodified.

The README's recipe is run verbatim by bash in this checkout: it starts ``prefect server``,
saves the local blocks, creates the process pool, deploys, starts a process worker and runs the
local pipeline in deployment mode. On that server, the GKE guide's deploy commands
(deployments/gke/README.md, "7. Size and deploy", as written) then deploy the shipped
prefect.yaml's GKE deployments as a user without Docker does, with an image built elsewhere
(``TQFLOW_IMAGE``), and the remaining tests run pipelines whose worker runs are killed or
stopped by SIGTERM as on a spot node, and one that an active schedule starts.

Only the environment is the test's own: a private PREFECT_HOME, free ports, a data folder.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.helpers import REPO, runs
from tests.support.readme import guide_blocks, run_bash
from tqflow.examples import demo_root_ids

# One server, one deploy: keep these tests on one xdist worker (make test uses --dist loadgroup).
# pytest-timeout counts fixture setup: the first test to need the session's `recipe` (its own
# server, deploy and a 200-item run, 250 s on a quiet machine) pays for it, whichever that is.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("deployments"),
    pytest.mark.timeout(900),
]

BIN = Path(sys.executable).parent
#: What a user with an image built by CI or Cloud Build exports before the guide's deploy commands.
IMAGE = "us-west1-docker.pkg.dev/my-lab/tqflow/worker@sha256:" + "0" * 64


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{args} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def deployed(recipe) -> dict[str, str]:
    """The GKE work pool created from the shipped template, and the GKE guide's deploy commands
    with an image built elsewhere, on the recipe's server (which has the local deployments)."""
    assert recipe["RECIPE_EXIT"] == "0", Path(recipe["RECIPE_LOG"]).read_text()[-4000:]
    cli(
        recipe,
        "prefect",
        "work-pool",
        "create",
        "tqflow-gke",
        "--type",
        "kubernetes",
        "--base-job-template",
        str(REPO / "deployments/gke/base-job-template.json"),
    )
    [deploy] = guide_blocks("## 7. Size and deploy")
    run_bash(
        deploy, {**recipe, "TQFLOW_IMAGE": IMAGE, "PATH": f"{BIN}{os.pathsep}{recipe['PATH']}"}
    )
    return recipe


@contextlib.contextmanager
def client(env):
    """A client of the e2e server (its own, never the throttling proxy's); the session's own test
    server stays the default. Inside, the process's settings point at the e2e server too (blocks
    saved there go to it)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from tests.support.helpers import prefect_settings

    with prefect_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as c:
            yield c


def deployment_run(env, name: str, **parameters) -> subprocess.Popen:
    """``prefect deployment run NAME --params ... --watch`` in the background."""
    return subprocess.Popen(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            name,
            "--params",
            json.dumps(parameters),
            "--watch",
            "--watch-timeout",
            "300",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def completed(env, run: subprocess.Popen) -> str:
    out, _ = run.communicate(timeout=420)
    assert "Completed" in out, out[-2000:] + Path(env["WORKER_LOG"]).read_text()[-4000:]
    return out


def outputs(env, batch: str) -> set[str]:
    folder = Path(env["TQFLOW_DATA"]) / batch / "outputs"
    return {p.stem for p in folder.glob("*.json")} if folder.exists() else set()


def runs_of(env, deployment: str, started_after: float) -> list:
    with client(env) as c:
        runs = c.read_flow_runs()
        deployments = {d.id: d.name for d in c.read_deployments()}
    return [
        r
        for r in runs
        if deployments.get(r.deployment_id) == deployment and r.created.timestamp() > started_after
    ]


# -- the README's recipe --------------------------------------------------------------------------


def test_readme_process_pool_recipe_completes_the_demo_batch_with_two_worker_runs(recipe):
    log = Path(recipe["RECIPE_LOG"]).read_text()
    assert recipe["RECIPE_EXIT"] == "0", log[-4000:]
    assert outputs(recipe, "demo") == {str(i) for i in demo_root_ids()}
    assert re.search(r"tasks done\s*│\s*200", log), log[-3000:]  # `tqflow status` at the end
    # deployment-mode fan-out: min(workers=2, ceil(200 / tasks_per_worker=100)) worker runs
    worker_runs = runs_of(recipe, "worker-local", 0)
    assert len(worker_runs) == 2 and all(r.state.is_completed() for r in worker_runs)


# -- the shipped file, deployed one setup at a time by name ------------------------------------------


def test_the_shipped_file_deploys_every_deployment_and_an_inactive_schedule(
    deployed,
):
    with client(deployed) as c:
        found = {d.name: d for d in c.read_deployments()}
    assert set(found) == {
        "pipeline-local",
        "worker-local",
        "pipeline-gke",
        "worker-gke",
        "analysis",
        "dead-letters",
    }
    [schedule] = found["pipeline-gke"].schedules
    assert (schedule.schedule.cron, schedule.active) == ("0 6 * * 1", False)
    # blocks by slug: no credential in any deployment's parameters
    assert found["pipeline-gke"].parameters["queue"] == "sqs-task-queue/tqflow"
    assert found["pipeline-local"].pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
    ]


def test_gke_deployments_take_the_image_built_elsewhere(deployed):
    with client(deployed) as c:
        found = {d.name: d for d in c.read_deployments()}
    for name in ("pipeline-gke", "worker-gke", "analysis", "dead-letters"):
        assert found[name].job_variables["image"] == IMAGE, name
    assert "image" not in found["pipeline-local"].job_variables


def test_only_worker_runs_go_to_spot_nodes_and_orchestration_runs_to_the_system_pool(deployed):
    with client(deployed) as c:
        found = {d.name: d for d in c.read_deployments()}
    worker = found["worker-gke"].job_variables
    assert "node_selector" not in worker and "tolerations" not in worker  # the pool's: spot
    assert worker["memory_limit"] == worker["memory_request"] and "cpu_limit" not in worker
    for name in ("pipeline-gke", "analysis", "dead-letters"):
        variables = found[name].job_variables
        assert variables["node_selector"] == {"cloud.google.com/gke-nodepool": "default-pool"}, name
        assert variables["tolerations"] == [], name
        assert variables["memory_limit"] == variables["memory_request"] == "5Gi", name


# -- fan-out on the process pool, and schedules ----------------------------------------------------
#
# One at a time: each starts several flow-run processes, and on a busy machine two at once
# overloaded the e2e server's SQLite (503s that failed a pipeline run).


def _deploy_rescheduling_worker(c) -> None:
    """``worker-local`` as prefect-kubernetes runs it: every Job whose backoffLimit is 0 (ours)
    gets PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule, so on SIGTERM the engine would
    reschedule the run."""
    worker = c.read_deployment_by_name("worker/worker-local")
    c.create_deployment(
        flow_id=worker.flow_id,
        name="worker-local-reschedule",
        entrypoint=worker.entrypoint,
        work_pool_name=worker.work_pool_name,
        work_queue_name=worker.work_queue_name,
        parameters=worker.parameters,
        pull_steps=worker.pull_steps,
        parameter_openapi_schema=worker.parameter_openapi_schema,
        job_variables={"env": {"PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule"}},
    )


def _lease_queue(env, name: str) -> str:
    """A saved local queue with 5 s leases, so a lost worker's tasks come back soon."""
    from blocks import LocalTaskQueue

    with client(env):
        LocalTaskQueue(
            path=str(Path(env["TQFLOW_DATA"]) / "queue.sqlite"),
            queue_name=name,
            lease_seconds=5,
        ).save(name, overwrite=True)
    return f"local-task-queue/{name}"


@pytest.fixture(scope="module")
def signalled_workers(deployed, tmp_path_factory) -> dict:
    """One 40-item pipeline on two runs of the rescheduling worker deployment; once both are
    doing tasks, one gets SIGKILL (as from the OOM killer) and the other SIGTERM (as on a spot
    node's preemption). One run for both tests: each costs minutes of flow-run starts.
    Returns the batch's worker runs and the two victims' flow-run IDs."""
    env, batch = deployed, "e2e-signals"
    log_dir = tmp_path_factory.mktemp("signals")
    with client(env) as c:
        _deploy_rescheduling_worker(c)
    started = time.time()
    pipeline_run = deployment_run(
        env,
        "pipeline/pipeline-local",
        queue=_lease_queue(env, batch),
        batch=batch,
        items=list(range(40)),
        fn="tests.tasks:tracked",
        kwargs={"log_dir": str(log_dir), "seconds": 0.25},
        mode="deployment",
        worker_deployment="worker/worker-local-reschedule",
        workers=2,
        tasks_per_worker=20,
        worker_options={"idle_seconds": 1},
        poll_seconds=0.5,
        analyze=False,
    )
    running: list = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # both workers have started tasks
        running = [
            r for r in runs_of(env, "worker-local-reschedule", started) if r.state.is_running()
        ]
        if len(running) == 2 and len(list(log_dir.glob("*.finished"))) >= 4:
            break
        time.sleep(0.2)
    assert len(running) == 2, f"{len(running)} running worker flow runs were found, not 2"
    killed, stopped = running
    for run, signum in ((killed, signal.SIGKILL), (stopped, signal.SIGTERM)):
        pid = _process_of_flow_run(run.id)
        assert pid is not None, f"no process runs worker flow run {run.name}"
        os.kill(pid, signum)
    completed(env, pipeline_run)
    return {
        "outputs": outputs(env, batch),
        "runs": runs_of(env, "worker-local-reschedule", started),
        "killed": killed.id,
        "stopped": stopped.id,
    }


def _run_on_a_schedule(env):
    """An active schedule on ``pipeline-local`` whose one run is due 20 s from now (a day's
    interval anchored then: one run, however slow the machine, where a short interval piled up
    runs on a busy one; 20 s, so that the server's scheduler, looping every 2 s, sees it before it
    is due); returns that run once it completed (within 300 s). The schedule is deleted at the
    end."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import IntervalSchedule

    due = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=20)
    with client(env) as c:
        pipeline = c.read_deployment_by_name("pipeline/pipeline-local")
        [schedule] = c.create_deployment_schedules(
            pipeline.id,
            [
                DeploymentScheduleCreate(
                    schedule=IntervalSchedule(interval=dt.timedelta(days=1), anchor_date=due),
                    active=True,
                    parameters={
                        "batch": "e2e-scheduled",
                        "items": list(range(5)),
                        "fn": "tests.tasks:square",
                        "worker_options": {"idle_seconds": 1},
                        "poll_seconds": 0.5,
                        "analyze": False,
                    },
                )
            ],
        )
    try:
        deadline = time.monotonic() + 300
        while True:
            done = [
                r
                for r in runs_of(env, "pipeline-local", 0)
                if r.parameters.get("batch") == "e2e-scheduled" and r.state.is_completed()
            ]
            if done:
                return done[0]
            assert time.monotonic() < deadline, "no scheduled run completed in 300 s"
            time.sleep(1)
    finally:
        with client(env) as c:
            c.delete_deployment_schedule(pipeline.id, schedule.id)


def test_a_killed_worker_run_is_replaced_and_the_batch_completes(signalled_workers):
    runs = {r.id: r for r in signalled_workers["runs"]}
    killed = runs[signalled_workers["killed"]]
    assert killed.state.is_crashed() or killed.state.is_failed(), killed.state
    # the two launched, and replacements while the work left was worth a start: at least one
    # (the remaining seconds of tasks need no more than one run of their own)
    assert len(runs) in (3, 4), [(r.name, r.state.type) for r in runs.values()]
    assert signalled_workers["outputs"] == {str(i) for i in range(40)}


def test_a_worker_run_stopped_by_sigterm_is_replaced_as_on_kubernetes(signalled_workers):
    # tqflow's worker handles SIGTERM itself: it releases its leases and completes, and the
    # pipeline must still replace it while work worth a start remains, although the engine (told to by
    # PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=reschedule, as prefect-kubernetes sets it for
    # Jobs whose backoffLimit is 0) would reschedule it. The stopped run may end Completed (tqflow's
    # handler took the signal) or in Prefect's own ending; every run not signalled completed.
    runs = signalled_workers["runs"]
    signalled = {signalled_workers["killed"], signalled_workers["stopped"]}
    assert len(runs) in (3, 4), [(r.name, r.state.type) for r in runs]
    assert all(r.state.is_completed() for r in runs if r.id not in signalled), [
        (r.name, r.state.type) for r in runs
    ]
    assert signalled_workers["outputs"] == {str(i) for i in range(40)}


@pytest.mark.timeout(600)  # its own deadline is 300 s; the run itself needs a worker slot
def test_an_active_schedule_creates_and_completes_a_run(deployed):
    run = _run_on_a_schedule(deployed)
    assert run.auto_scheduled
    assert outputs(deployed, "e2e-scheduled") == {str(i) for i in range(5)}


def _copy_deployment(c, name: str, as_name: str, pool: str) -> None:
    """Deployment ``name`` (``flow/deployment``) again as ``as_name``, on work pool ``pool``."""
    found = c.read_deployment_by_name(name)
    c.create_deployment(
        flow_id=found.flow_id,
        name=as_name,
        entrypoint=found.entrypoint,
        work_pool_name=pool,
        work_queue_name="default",
        parameters=found.parameters,
        pull_steps=found.pull_steps,
        parameter_openapi_schema=found.parameter_openapi_schema,
    )


def test_a_deployment_mode_pipeline_completes_through_an_api_that_throttles(deployed, tmp_path):
    """Prefect Cloud over its rate limit answers 429 with Retry-After: here a fifth of every
    request the pipeline run, its worker runs and their process worker send. The batch completes,
    every item is done once, and no worker run is launched twice."""
    from prefect.client.schemas.actions import WorkPoolCreate

    from tests.support.services import http_proxy, start, stop_process

    env, batch, log_dir = deployed, "e2e-throttled", tmp_path / "runs"
    log_dir.mkdir()
    with client(env) as c:
        c.create_work_pool(WorkPoolCreate(name="tqflow-throttled", type="process"), overwrite=True)
        _copy_deployment(c, "pipeline/pipeline-local", "pipeline-throttled", "tqflow-throttled")
        _copy_deployment(c, "worker/worker-local", "worker-throttled", "tqflow-throttled")
    queue = _lease_queue(env, batch)
    server = env["PREFECT_API_URL"].removesuffix("/api")
    with http_proxy(server, throttle_share=0.2, retry_after=1) as proxy:
        throttled_env = {**env, "PREFECT_API_URL": f"{proxy.endpoint}/api"}
        with open(tmp_path / "worker.log", "w") as log:
            worker = start(
                [str(BIN / "prefect"), "worker", "start", "--pool", "tqflow-throttled"],
                env=throttled_env,
                cwd=REPO,
                log=log,
            )
            try:
                run = deployment_run(
                    throttled_env,
                    "pipeline/pipeline-throttled",
                    queue=queue,
                    batch=batch,
                    items=list(range(30)),
                    fn="tests.tasks:tracked",
                    kwargs={"log_dir": str(log_dir)},
                    mode="deployment",
                    worker_deployment="worker/worker-throttled",
                    workers=2,
                    tasks_per_worker=15,
                    worker_options={"idle_seconds": 1},
                    poll_seconds=0.5,
                    analyze=False,
                )
                out, _ = run.communicate(timeout=600)
            finally:
                stop_process(worker)
        counts = proxy.counts()
    assert "Completed" in out, out[-2000:] + (tmp_path / "worker.log").read_text()[-4000:]
    assert sum(counts["throttled"].values()) > 20, counts  # it did throttle
    assert outputs(env, batch) == {str(i) for i in range(30)}
    assert all(runs(log_dir, i, "finished") == 1 for i in range(30))  # each done once
    worker_runs = runs_of(env, "worker-throttled", 0)
    keys = [r.idempotency_key for r in worker_runs]
    assert len(worker_runs) == 2 and len(set(keys)) == 2, [
        (r.name, r.state.type) for r in worker_runs
    ]


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
