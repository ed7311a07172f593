"""``tqflow plan-resources --from-batch``: pods sized from what a batch's tasks used."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tests.support.helpers import enqueue, run_worker
from tqflow.engine.layout import output_path
from tqflow.engine.reports import BatchTally
from tqflow.errors import ResourcePlanError
from tqflow.gke import right_size
from tqflow.gke.resources import Machine

MiB = 2**20


def plan(*args: str) -> str:
    result = CliRunner().invoke(app, ["plan-resources", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def measured_batch(queue_factory, storage, tmp_path):
    """A batch whose tasks hold 100 MiB, but one in ten 400 MiB."""
    queue = queue_factory()
    enqueue(queue, "tests.tasks:allocates", range(9), mib=100)
    enqueue(queue, "tests.tasks:allocates", [9], mib=400)
    run_worker(queue, storage, prefetch=1)
    return storage


@pytest.mark.parametrize("backend", ["local"])
def test_the_memory_limit_covers_the_largest_task_with_its_margin(measured_batch, tmp_path):
    largest = measured_batch.get_json(output_path("b", "9"))["resources"]["peak_rss_bytes"]
    data = measured_batch.cloudpath.removeprefix("file://")
    variables = json.loads(
        plan("--from-batch", "b", "--data", data, "--machine-type", "e2-standard-4", "--json")
    )
    limit = int(variables["memory_limit"].removesuffix("Mi")) * MiB
    assert variables["memory_request"] == variables["memory_limit"]
    assert largest * 1.2 <= limit <= largest * 1.2 * 1.05 + 64 * MiB
    assert "cpu_limit" not in variables


@pytest.mark.parametrize("backend", ["local"])
def test_the_plan_gives_nodes_time_and_cost_of_the_next_batch(measured_batch):
    data = measured_batch.cloudpath.removeprefix("file://")
    out = plan("--from-batch", "b", "--data", data, "--items", "1000000", "--within-hours", "2")
    assert "10 tasks measured" in out
    assert "next batch of 1,000,000 items within 2 h:" in out
    assert "on demand" in out and "spot" in out
    assert "prefect deploy --name worker-gke -jv image=$TQFLOW_IMAGE -jv cpu_request=" in out


def test_a_batch_without_worker_reports_is_an_error_naming_it(tmp_path):
    result = CliRunner().invoke(
        app, ["plan-resources", "--from-batch", "nothing", "--data", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "batch 'nothing' has no measured tasks" in " ".join(result.output.split())


def usage(peak_gib: float, cpu_per_wall: float = 0.5, seconds: float = 10.0):
    tally = BatchTally(succeeded=1000, task_seconds=1000 * seconds)
    tally.cpu_seconds = tally.task_seconds * cpu_per_wall
    for _ in range(1000):
        from tqflow.engine.task_resources import TaskResources

        tally.measure(TaskResources(seconds, 0, int(peak_gib * 2**30), 2**28))
    tally.cpu_seconds = tally.task_seconds * cpu_per_wall
    return right_size.BatchUsage.of(tally, "b")


def test_pods_per_node_are_as_many_as_memory_and_cpu_allow():
    sized = right_size.size_pod(usage(peak_gib=3.0, cpu_per_wall=0.5), "e2-highmem-4")
    machine = Machine.from_type("e2-highmem-4")
    free_memory = (machine.allocatable_memory_mib - 512) * 0.95  # system pods, headroom
    free_cpu = (machine.allocatable_cpu_millicores - 250) * 0.95
    assert sized.cpu_millicores == 600  # 0.5 cores + 20%
    pods = sized.pods_per_node
    assert pods * sized.memory_mib <= free_memory and pods * 600 <= free_cpu
    assert (pods + 1) * sized.memory_mib > free_memory or (pods + 1) * 600 > free_cpu


def test_a_worker_larger_than_any_node_of_the_type_is_refused_with_the_fix():
    with pytest.raises(ResourcePlanError, match="more memory"):
        right_size.size_pod(usage(peak_gib=20.0), "e2-standard-4")


def test_the_cheapest_type_costs_no_more_than_any_other_that_fits():
    found = usage(peak_gib=6.0, cpu_per_wall=0.25)
    best = right_size.cheapest(found, items=100_000, within_hours=4)
    for machine_type in ("e2-standard-8", "n2-highmem-4", "e2-highmem-8"):
        other = right_size.plan_next_batch(
            right_size.size_pod(found, machine_type), found, 100_000, 4
        )
        assert best.cost_on_demand <= other.cost_on_demand
    assert best.wall_hours <= 4


def test_messages_dead_lettered_before_they_ran_do_not_shorten_the_mean_task():
    from tqflow.engine.task_resources import TaskResources

    tally = BatchTally(succeeded=10, dead_lettered=10)  # 10 could not even be imported
    for _ in range(10):
        tally.measure(TaskResources(2.0, 1.0, 2**30, 2**29))
    assert right_size.BatchUsage.of(tally, "b").mean_task_seconds == 2.0


def test_the_cost_so_far_is_the_worker_time_at_a_pods_share_of_its_node_price():
    from tqflow.engine.task_resources import TaskResources
    from tqflow.fleet.dashboard import cost_lines

    tally = BatchTally()
    for _ in range(7200):  # two worker-hours of one-second tasks at 900 MiB
        tally.measure(TaskResources(1.0, 0.5, 900 * 2**20, 300 * 2**20))
    [line] = cost_lines(tally)
    machine_type = line.split(" in ", 1)[1].split(" pods", 1)[0]
    sized = right_size.size_pod(right_size.BatchUsage.of(tally, "b"), machine_type)
    per_pod_hour = right_size.node_price(machine_type, sized.machine) / sized.pods_per_node
    assert f"${2 * per_pod_hour:,.4f} on demand" in line
    assert f"${2 * per_pod_hour * right_size.SPOT_FRACTION:,.4f} spot" in line


@pytest.mark.parametrize("backend", ["local"])
def test_a_corrupt_worker_report_is_left_out_of_the_plan_and_named(measured_batch):
    data = measured_batch.cloudpath.removeprefix("file://")
    measured_batch.put("b/workers/torn.json", b"{not json")
    out = plan("--from-batch", "b", "--data", data, "--machine-type", "e2-standard-4")
    assert "torn.json" in out and "memory_limit:" in out
