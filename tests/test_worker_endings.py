"""How a lost worker ended, as a cause with a next step (`tqflow.fleet.endings`)."""

from __future__ import annotations

from collections import Counter

import pytest

from tqflow.engine.reports import BatchTally
from tqflow.engine.task_resources import TaskResources
from tqflow.fleet.endings import Cause, Ending, of_process, of_run, why_ended

GiB = 2**30


@pytest.mark.parametrize(
    ("state", "message", "pod", "cause"),
    [
        # What Prefect's kubernetes worker sets when a pod's container exits 137 (128 + SIGKILL)
        (
            "CRASHED",
            "Flow run infrastructure exited with non-zero status code 137. "
            "Process was terminated due to a Kill signal.",
            None,
            Cause.OOM_KILLED,
        ),
        ("FAILED", "The node was low on resource: memory. Evicted", None, Cause.EVICTED),
        (
            "CRASHED",
            "Flow run infrastructure exited with non-zero status code 143.",
            None,
            Cause.PREEMPTED,
        ),
        ("CRASHED", "PodUnschedulable: 0/3 nodes are available", None, Cause.UNSCHEDULABLE),
        (
            "CRASHED",
            "Flow run infrastructure exited with non-zero status code 1.",
            None,
            Cause.CRASHED,
        ),
        # What the pod observer said comes first: an evicted pod's container was SIGKILLed too
        ("CRASHED", "... non-zero status code 137.", "Evicted", Cause.EVICTED),
        ("CRASHED", "... non-zero status code 1.", "OOMKilled", Cause.OOM_KILLED),
        ("CRASHED", "...", "Unschedulable.InsufficientResources", Cause.UNSCHEDULABLE),
    ],
)
def test_a_deployment_runs_ending_is_read_from_its_state_and_pod(state, message, pod, cause):
    ending = of_run(state, message, pod)
    assert ending.cause is cause
    assert message in ending.detail and (pod is None or f"(pod: {pod})" in ending.detail)


@pytest.mark.parametrize(
    ("code", "stats", "ending"),
    [
        (0, {"stop_reason": "idle"}, None),
        (0, {"stop_reason": "max_tasks"}, None),
        (0, {"stop_reason": "stopped"}, Ending(Cause.PREEMPTED, "stopped by SIGTERM / SIGINT")),
        (3, None, Ending(Cause.QUEUE_UNREACHABLE, "exit code 3")),
        (4, None, Ending(Cause.STUCK_TASK, "exit code 4")),
        (-9, None, Ending(Cause.KILLED, "SIGKILL")),
        (-11, None, Ending(Cause.CRASHED, "killed by SIGSEGV")),
        (1, None, Ending(Cause.EXITED, "exit code 1")),
    ],
)
def test_a_local_worker_process_ending_is_read_from_its_exit(code, stats, ending):
    assert of_process(code, stats) == ending


def test_oom_kills_are_explained_with_the_batch_peaks_and_the_limit():
    tally = BatchTally()
    for peak in [1.0] * 99 + [2.3]:
        tally.measure(TaskResources(1.0, 0.5, int(peak * GiB), GiB // 2))
    endings = Counter({Ending(Cause.OOM_KILLED, "over"): 2, Ending(Cause.KILLED, "SIGKILL"): 1})
    lines = why_ended(endings, "b", tally, 2048)
    assert lines[0].startswith("2 OOMKilled: the batch's p99 task peak is 1.0")
    assert "(max 2.30 GiB) against a 2.00 GiB limit" in lines[0]
    assert "`tqflow plan-resources --from-batch b`" in lines[0]
    assert lines[1].startswith("1 killed (SIGKILL): killed from outside")


def test_endings_without_advice_show_what_was_observed():
    endings = Counter(
        {Ending(Cause.EXITED, "exit code 1"): 2, Ending(Cause.EXITED, "exit code 2"): 1}
    )
    assert why_ended(endings, "b") == ["3 exited (exit code 1; exit code 2): see the worker's log"]


def test_a_deployment_runs_ending_carries_what_the_pod_observer_reported(prefect_api, tmp_path):
    """On the real Prefect API: the fleet launches a worker run of a deployment (no worker picks
    it up), whose infrastructure then crashes with exit code 137, and prefect-kubernetes's pod
    observer emits the event for its pod, saying the pod was evicted."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.events import emit_event
    from prefect.states import Crashed

    from tests.support.helpers import wait_until
    from tqflow.fleet.deployment import DeploymentFleet, _pod_reasons

    @flow(name="worker")
    def worker() -> None:
        pass

    with get_client(sync_client=True) as client:
        deployment = client.create_deployment(
            flow_id=client.create_flow(worker), name="worker-evicted"
        )
    fleet = DeploymentFleet(
        "worker/worker-evicted",
        {"queue": "local-task-queue/evicted", "storage": "cloud-files-storage/evicted"},
        run_key="evicted",
        batch_tag="tqflow-batch-evicted.b",
    )
    fleet.launch(1)
    assert fleet.observe().starting == 1  # scheduled: not ended
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
        wait_until(lambda: _pod_reasons(client, [run]), timeout=120)

    assert fleet.observe().live == 0
    [ending] = fleet.endings
    assert ending.cause is Cause.EVICTED and ending.detail.endswith(
        "status code 137. (pod: Evicted)"
    )
    assert why_ended(fleet.endings, "b")[0].startswith("1 evicted: the node ran short of memory")
