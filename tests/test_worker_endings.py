"""How a lost worker ended, as a cause with a next step (`tqflow.fleet.endings`)."""

from __future__ import annotations

from collections import Counter

import pytest

from tqflow.engine.reports import BatchTally
from tqflow.engine.task_resources import TaskResources
from tqflow.fleet.endings import cause, explain

GiB = 2**30


@pytest.mark.parametrize(
    ("ending", "expected"),
    [
        # What Prefect's kubernetes worker sets when a pod's container exits 137 (128 + SIGKILL)
        (
            "Crashed: Flow run infrastructure exited with non-zero status code 137. "
            "Process was terminated due to a Kill signal.",
            "OOMKilled",
        ),
        ("OOMKilled: 2,100 MiB resident, over memory_limit_mib=2048", "OOMKilled"),
        ("Failed: The node was low on resource: memory. Evicted", "evicted"),
        (
            "Crashed: Flow run infrastructure exited with non-zero status code 143.",
            "preempted or stopped (SIGTERM)",
        ),
        ("stopped by a signal (SIGTERM)", "preempted or stopped (SIGTERM)"),
        ("Pending: PodUnschedulable: 0/3 nodes are available", "unschedulable"),
        ("killed by SIGKILL", "killed (SIGKILL)"),
        ("exited with code 3", "exited with code 3"),
        # What the pod observer said comes first: an evicted pod's container was SIGKILLed too
        ("Crashed: ... non-zero status code 137. (pod: Evicted)", "evicted"),
        ("Crashed: ... non-zero status code 1. (pod: OOMKilled)", "OOMKilled"),
        ("Pending: ... (pod: Unschedulable.InsufficientResources)", "unschedulable"),
    ],
)
def test_each_ending_is_read_as_its_cause(ending, expected):
    assert cause(ending) == expected


def test_oom_kills_are_explained_with_the_batch_peaks_and_the_limit():
    tally = BatchTally()
    for peak in [1.0] * 99 + [2.3]:
        tally.measure(TaskResources(1.0, 0.5, int(peak * GiB), GiB // 2))
    lines = explain(Counter({"OOMKilled: over": 2, "killed by SIGKILL": 1}), "b", tally, 2048)
    assert lines[0].startswith("2 OOMKilled: the batch's p99 task peak is 1.0")
    assert "(max 2.30 GiB) against a 2.00 GiB limit" in lines[0]
    assert "`tqflow plan-resources --from-batch b`" in lines[0]
    assert lines[1].startswith("1 killed (SIGKILL): killed from outside")


def test_an_unknown_ending_is_kept_as_it_was_written():
    assert explain(Counter({"exited with code 3": 1}), "b") == [
        "1 exited with code 3: see the worker's log"
    ]


def test_a_deployment_runs_ending_carries_what_the_pod_observer_reported(prefect_api, tmp_path):
    """On the real Prefect API: the fleet launches a worker run of a deployment (no worker picks
    it up), whose infrastructure then crashes with exit code 137, and prefect-kubernetes's pod
    observer emits the event for its pod, saying the pod was evicted."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.events import emit_event
    from prefect.states import Crashed

    from blocks import CloudFilesStorage, LocalTaskQueue
    from tests.helpers import wait_until
    from tqflow.engine.options import WorkerOptions
    from tqflow.fleet.fanout import DeploymentFleet, _pod_reason

    @flow(name="worker")
    def worker() -> None:
        pass

    with get_client(sync_client=True) as client:
        deployment = client.create_deployment(
            flow_id=client.create_flow(worker), name="worker-evicted"
        )
    queue = LocalTaskQueue(path=str(tmp_path / "q.sqlite"))
    storage = CloudFilesStorage(cloudpath=f"file://{tmp_path}")
    queue.save("evicted", overwrite=True)  # a deployment's worker runs get saved blocks
    storage.save("evicted", overwrite=True)
    fleet = DeploymentFleet(
        queue,
        storage,
        WorkerOptions(),
        deployment="worker/worker-evicted",
        run_key="evicted",
    )
    fleet.launch(1)
    assert fleet.running() == 1  # scheduled: not ended
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment])
            )
        )
        crashed = Crashed(message="Flow run infrastructure exited with non-zero status code 137.")
        client.set_flow_run_state(run.id, crashed, force=True)
        emit_event(
            event="prefect.kubernetes.pod.evicted",
            resource={
                "prefect.resource.id": "prefect.kubernetes.pod.0f5e",
                "kubernetes.namespace": "tqflow",
                "kubernetes.reason": "Error",
                "kubernetes.diagnosis": "Evicted",
            },
            related=[
                {
                    "prefect.resource.id": f"prefect.flow-run.{run.id}",
                    "prefect.resource.role": "flow-run",
                }
            ],
        )
        wait_until(lambda: _pod_reason(client, run) is not None, timeout=120)

    assert fleet.running() == 0
    [ending] = fleet.endings
    assert ending.endswith("status code 137. (pod: Evicted)")
    assert explain(fleet.endings, "b")[0].startswith("1 evicted: the node ran short of memory")
