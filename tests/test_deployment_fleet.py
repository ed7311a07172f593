"""The deployment fleet on a real Prefect server: one fleet per batch (a second controller
adopts the live runs), and cancels that never force a state over the server's rules."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def worker_deployment() -> str:
    """A ``worker`` deployment no worker picks runs of: its runs stay Scheduled."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    @flow(name="worker")
    def worker() -> None:
        pass

    name = f"fleet-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_deployment(flow_id=client.create_flow(worker), name=name)
    return f"worker/{name}"


def fleet_of(deployment: str, run_key: str, batch: str = "b"):
    from tqflow.fleet.deployment import DeploymentFleet, batch_tag

    parameters = {"queue": "local-task-queue/q", "storage": "cloud-files-storage/s"}
    return DeploymentFleet(deployment, parameters, run_key, batch_tag=batch_tag("q", batch))


def runs_of(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        found = client.read_deployment_by_name(deployment)
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[found.id]))
        )


@pytest.mark.usefixtures("prefect_api")
def test_a_second_controller_of_the_batch_adopts_its_live_runs_and_launches_none(
    worker_deployment,
):
    first = fleet_of(worker_deployment, run_key=f"first-{uuid.uuid4().hex[:6]}")
    first.launch(2)
    other_batch = fleet_of(worker_deployment, run_key="other", batch="another")
    other_batch.launch(1)
    second = fleet_of(worker_deployment, run_key=f"second-{uuid.uuid4().hex[:6]}")
    assert second.adopt() == 2  # the batch's two, not the other batch's one
    assert second.observe().active == 2
    assert len(runs_of(worker_deployment)) == 3


@pytest.mark.usefixtures("prefect_api")
def test_stopping_the_fleet_leaves_a_run_that_completed_completed(worker_deployment):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    fleet = fleet_of(worker_deployment, run_key=f"done-{uuid.uuid4().hex[:6]}")
    fleet.launch(2)
    finished, waiting = runs_of(worker_deployment)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(finished.id, Completed(), force=True)
        ended_at = client.read_flow_run(finished.id).end_time
    fleet.stop()  # before any look found that run ended
    with get_client(sync_client=True) as client:
        after = client.read_flow_run(finished.id)
        assert after.state.is_completed() and after.end_time == ended_at
        assert client.read_flow_run(waiting.id).state.is_cancelled()  # no infrastructure yet
