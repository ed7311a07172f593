"""The deployment fleet at 10, 100 and 1,000 runs, on a real Prefect server, side by side with the
fleet before it: the Prefect API requests it sends to launch runs and to watch them.

Both fleets run inside a real flow run (the pipeline's place) and talk to the server through a
counting proxy (`tests.support.services.http_proxy`); the runs are of a real deployment, moved through
their states without pods (Running, then a tenth Completed) by a stand-in for the work
pool that talks to the server directly, so the proxy counts only the fleet's own requests.

- the fleet before (`PerRunFleet`, its code as it was): `run_deployment` per run (a read of the
  deployment, a placeholder task run, the run), then one read per run per poll;
- tqflow's fleet (`tqflow.fleet.deployment.DeploymentFleet`).

Also measured: the requests of one worker run's own engine (its states, logs and stats), from
which the table of a 1,000-worker batch's requests a minute against Prefect Cloud's plan limits
is computed (bench/README.md).
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import REPO, child_env
from tests.support import services

SIZES = (10, 100, 1_000)
QUICK_SIZES = (10, 100)
#: Prefect Cloud's limits, requests a minute (docs.prefect.io, "Rate limits and data
#: retention"): the flow-run, task-run and flow endpoints, and logs; by plan.
PLANS = {
    "Hobby": (250, 500),
    "Starter": (500, 1_600),
    "Team": (1_000, 2_000),
    "Pro": (2_000, 10_000),
}


class PerRunFleet:
    """The deployment fleet before this change, as it launched and watched runs."""

    def __init__(self, deployment: str, parameters: dict[str, Any], run_key: str) -> None:
        self.deployment, self.parameters, self.run_key = deployment, parameters, run_key
        self._runs: list[Any] = []

    def launch(self, n: int) -> None:
        from prefect.deployments import run_deployment

        for _ in range(n):
            run = run_deployment(
                self.deployment,
                parameters=self.parameters,
                timeout=0,
                idempotency_key=f"{self.run_key}-worker-{len(self._runs)}",
                as_subflow=True,
            )
            self._runs.append(run)

    def running(self) -> int:
        from prefect.client.orchestration import get_client

        alive = []
        with get_client(sync_client=True) as client:
            for run in self._runs:
                state = client.read_flow_run(run.id).state
                if state is None or not state.is_final():
                    alive.append(run)
        self._runs = alive
        return len(alive)


def _live(fleet: Any) -> int:
    """Runs not ended, as either fleet counts them (one look)."""
    if isinstance(fleet, PerRunFleet):
        return fleet.running()
    return fleet.observe().live


def _requests(proxy: services.HttpProxy) -> tuple[int, Counter]:
    counts = proxy.counts()
    forwarded = Counter(counts["forwarded"])
    failed = counts.get("failed") or {}
    if failed:
        print(f"  (the server failed {sum(failed.values())} of them: {failed})", flush=True)
    return sum(forwarded.values()) + sum(counts["throttled"].values()), forwarded


def _server_client(server_url: str) -> Any:
    """A client of the server itself, not the proxy. (Inside a flow run, `get_client` returns
    the run's own client, whatever `PREFECT_API_URL` says meanwhile.)"""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(server_url)


def _move(server_url: str, run_ids: list[Any], state: Any) -> None:
    """The stand-in work pool: set ``state`` on each run, straight to the server."""
    with _server_client(server_url) as client:
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda i: client.set_flow_run_state(i, state(), force=True), run_ids))


def _live_run_ids(server_url: str, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    found: list[Any] = []
    with _server_client(server_url) as client:
        chosen = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]))
        while True:
            page = client.read_flow_runs(flow_run_filter=chosen, limit=200, offset=len(found))
            found += [r.id for r in page if not r.state.is_final()]
            if len(page) < 200:
                return found


def measure(kind: str, n: int, server_url: str, proxy: services.HttpProxy, deployment: Any) -> dict:
    """Launch ``n`` runs with fleet ``kind`` inside a flow run, then poll: requests and time."""
    from prefect import flow
    from prefect.states import Completed, Running

    from tqflow.fleet.deployment import DeploymentFleet

    parameters = {"queue": "local-task-queue/bench", "storage": "cloud-files-storage/bench"}
    found: dict[str, Any] = {}

    @flow(name="bench-pipeline")
    def pipeline_run() -> None:
        from prefect.runtime import flow_run

        key = f"{kind}-{n}-{uuid.uuid4().hex[:6]}"
        if kind == "before":
            fleet: Any = PerRunFleet("worker/bench", parameters, key)
        else:
            fleet = DeploymentFleet(
                "worker/bench",
                parameters,
                key,
                batch_tag=f"tqflow-batch-bench.{key}",
                parent_flow_run_id=flow_run.id,
            )
        proxy.reset()
        started = time.perf_counter()
        fleet.launch(n)
        found["launch_seconds"] = time.perf_counter() - started
        found["launch_requests"], found["launch_kinds"] = _requests(proxy)
        live = _live_run_ids(server_url, deployment)
        _move(server_url, live, Running)
        _live(fleet)  # the first look after the launch
        polls = []
        for _ in range(3):
            proxy.reset()
            assert _live(fleet) == n
            polls.append(_requests(proxy)[0])
        found["poll_requests"] = max(polls)
        ended = live[: max(1, n // 10)]
        _move(server_url, ended, Completed)
        proxy.reset()
        running = _live(fleet)
        found["poll_with_ends_requests"] = _requests(proxy)[0]
        found["found_ended"] = n - running
        _move(server_url, live, Completed)  # the rest, so the next size starts clean
        _live(fleet)

    pipeline_run()
    return found


def run_one_worker_flow(proxy_url: str, folder: Path) -> None:
    """One worker flow run in a process of its own, through the proxy, on an empty queue: the
    requests a worker run's own engine sends (its states, logs, stats artifact)."""
    import subprocess
    import sys

    code = (
        "from blocks import CloudFilesStorage, LocalTaskQueue\n"
        "from flows.worker import worker\n"
        f"q = LocalTaskQueue(path={str(folder / 'q.sqlite')!r}, queue_name='empty')\n"
        "q.ensure()\n"
        f"worker(queue=q, storage=CloudFilesStorage(cloudpath='file://{folder}'),"
        " options={'idle_seconds': 0.1})\n"
    )
    env = child_env(PREFECT_API_URL=proxy_url)
    subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, timeout=600)


def run(runs: int = 1, quick: bool = False) -> list[dict]:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from tests.support.helpers import prefect_settings

    rows: list[dict] = []
    sizes = QUICK_SIZES if quick else SIZES
    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        with services.prefect_server(home, env=child_env()) as env:
            server_url = env["PREFECT_API_URL"]
            with services.http_proxy(server_url.removesuffix("/api")) as proxy:
                proxy_url = f"{proxy.endpoint}/api"
                with prefect_settings({PREFECT_API_URL: server_url}):

                    @flow(name="worker")
                    def worker() -> None:
                        pass

                    with get_client(sync_client=True) as client:
                        deployment = client.create_deployment(
                            flow_id=client.create_flow(worker), name="bench"
                        )
                figures: dict[tuple[str, int], dict] = {}
                with prefect_settings({PREFECT_API_URL: proxy_url}):
                    for n in sizes:
                        for kind in ("before", "tqflow"):
                            figures[kind, n] = measure(kind, n, server_url, proxy, deployment)
                            print(f"{kind} fleet, {n} runs: {figures[kind, n]}", flush=True)
                proxy.reset()
                run_one_worker_flow(proxy_url, home)
                engine = Counter(proxy.counts()["forwarded"])
    for n in sizes:
        before, now = figures["before", n], figures["tqflow", n]
        rows += [
            {
                "measure": f"requests per poll, {n:,} runs running: before / tqflow",
                "value": f"{before['poll_requests']:,} / {now['poll_requests']}",
                "unit": "",
                "target": "tqflow constant, <= 5",
                "met": now["poll_requests"] <= 5,
            },
            {
                "measure": f"requests of the poll that finds {n // 10 or 1:,} ended: before / tqflow",
                "value": f"{before['poll_with_ends_requests']:,} / {now['poll_with_ends_requests']}",
                "unit": "",
            },
            {
                "measure": f"requests per launched run, {n:,} runs: before / tqflow",
                "value": f"{before['launch_requests'] / n:.2f} / {now['launch_requests'] / n:.2f}",
                "unit": "",
                "target": "tqflow <= 1.5",
                "met": now["launch_requests"] / n <= 1.5,
            },
            {
                "measure": f"seconds to launch {n:,} runs: before / tqflow",
                "value": f"{before['launch_seconds']:.1f} / {now['launch_seconds']:.1f}",
                "unit": "s",
            },
        ]
    rows.append(
        {
            "measure": "one worker run's own engine requests (states, logs, stats): by endpoint",
            "value": json.dumps(dict(engine)),
            "unit": "",
        }
    )
    return rows
