"""The flows on a real (temporary) Prefect server: pipeline, analysis, dead letters, worker."""

from __future__ import annotations

import io

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.dead_letters import dead_letters
from flows.pipeline import pipeline
from flows.worker import worker
from tests.support.helpers import both_backends, enqueue, runs, sqs_only
from tqflow.engine.layout import output_path
from tqflow.errors import DeadLettersError, ParameterError

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def backend() -> str:
    """The pipeline's own logic is the same on every backend, which the queue contract and the
    worker tests cover each: these tests run on the local queue, and the few marked
    ``both_backends`` (or ``sqs_only``) run end to end on SQS too."""
    return "local"


def latest_artifact(key: str):
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return max(found, key=lambda a: a.created)


def run_pipeline(queue, storage, **parameters):
    parameters.setdefault("worker_options", {"idle_seconds": 0.5})
    parameters.setdefault("poll_seconds", 0.2)
    return pipeline(queue=queue, storage=storage, **parameters)


@both_backends
def test_pipeline_writes_a_correct_output_for_every_item(queue_factory, storage):
    summary = run_pipeline(
        queue_factory(), storage, fn="tests.tasks:square", batch="squares", items=list(range(40))
    )
    assert (summary["queued"], summary["done"], summary["dead_lettered"]) == (40, 40, 0)
    for x in range(40):
        assert storage.get_json(output_path("squares", str(x)))["result"] == x * x


def test_analysis_table_has_one_row_per_item(queue_factory, storage):
    summary = run_pipeline(
        queue_factory(),
        storage,
        fn="tqflow.examples:skeleton_stats",
        batch="skeletons",
        items=list(range(100, 130)),
        kwargs={"n_nodes": 200},
    )
    table = pd.read_parquet(io.BytesIO(storage.get("skeletons/analysis/results.parquet")))
    assert sorted(table["key"]) == sorted(str(i) for i in range(100, 130))
    assert table["cable_length_um"].gt(0).all()
    assert summary["analysis"]["items"] == 30


def test_a_batch_whose_results_carry_their_root_ids_completes_with_its_analysis(
    queue_factory, storage, tmp_path
):
    from typer.testing import CliRunner

    from flows.cli import app

    roots = [864691135000000000 + i for i in range(40)]
    state = run_pipeline(
        queue_factory(),
        storage,
        fn="tests.tasks:neuron_profile",
        batch="profiles",
        items=roots,
        return_state=True,
    )
    assert state.is_completed(), state.message
    analysis = state.result()["analysis"]
    assert analysis["items"] == 40 and analysis["plot"]
    assert any(
        note.startswith("root_id: integers as large as root IDs") for note in analysis["notes"]
    )
    table = pd.read_parquet(io.BytesIO(storage.get("profiles/analysis/results.parquet")))
    assert sorted(table["root_id"]) == roots  # exact: int64, never through a float
    assert sorted(table["key"]) == sorted(map(str, roots))
    assert set(table["result.key"]) <= {f"mine-{i}" for i in range(5)}
    summarised = {row["column"] for row in _table_rows(latest_artifact("profiles-summary").data)}
    assert {"cable_length_um", "n_somas"} <= summarised and "root_id" not in summarised
    assert "## Notes" in latest_artifact("profiles-analysis").data
    # and `tqflow analyze` of the same batch, as a user runs it
    data = storage.cloudpath.removeprefix("file://")
    result = CliRunner().invoke(app, ["analyze", "--batch", "profiles", "--data", data])
    assert result.exit_code == 0, result.output
    assert "40 results" in result.output


def test_progress_and_summary_artifacts_carry_the_batch_numbers(queue_factory, storage):
    run_pipeline(
        queue_factory(),
        storage,
        fn="tqflow.examples:skeleton_stats",
        batch="artifacts-batch",
        items=list(range(25)),
        kwargs={"n_nodes": 100},
    )
    progress = latest_artifact("artifacts-batch-progress")
    assert progress.data == 100.0
    assert "25/25 done" in progress.description
    summary = latest_artifact("artifacts-batch-summary")
    rows = {row["column"]: row for row in _table_rows(summary.data)}
    assert rows["n_tips"]["count"] == 25
    assert rows["task_attempt"]["max"] == 1


def _table_rows(data):
    import json

    return json.loads(data) if isinstance(data, str) else data


@both_backends
def test_failing_items_end_in_the_dead_letter_queue_and_fail_the_flow(
    queue_factory, storage, tmp_path
):
    queue = queue_factory(max_receive_count=2)
    flag = tmp_path / "fixed"
    # "of 3": the pipeline counts the items its enqueue queued, not what else the queue holds
    with pytest.raises(DeadLettersError, match=r"3 of 3 items .*tqflow dead-letters list"):
        _pipeline_with_two_good_items(queue, storage, flag)
    assert queue.counts().dead == 3
    listed = dead_letters(queue=queue, action="list")
    assert sorted(m["key"] for m in listed["messages"]) == ["1", "2", "3"]
    assert all("max_receive_count=2" in m["reason"] for m in listed["messages"])


def _pipeline_with_two_good_items(queue, storage, flag):
    # Items 10 and 11 (another function, already queued) succeed; items 1-3 hit the bug.
    enqueue(queue, "tests.tasks:square", [10, 11], batch="buggy")
    return run_pipeline(
        queue,
        storage,
        fn="tests.tasks:fails_until_fixed",
        batch="buggy",
        items=[1, 2, 3],
        kwargs={"fixed_flag": str(flag)},
        worker_options={"idle_seconds": 0.5, "retry_base_seconds": 0.05},
        analyze=False,
    )


def test_redriven_items_run_again_after_the_bug_is_fixed(queue_factory, storage, tmp_path):
    queue = queue_factory(max_receive_count=2)
    flag = tmp_path / "fixed"
    with pytest.raises(DeadLettersError):
        _pipeline_with_two_good_items(queue, storage, flag)
    flag.touch()  # the fix
    assert dead_letters(queue=queue, action="redrive", limit=None) == {"redriven": 3}
    stats = worker(queue=queue, storage=storage, options={"idle_seconds": 0.2})
    assert stats["succeeded"] == 3
    assert queue.counts().dead == 0
    assert storage.get_json(output_path("buggy", "2"))["result"] == 4


def test_running_a_batch_again_skips_every_finished_item(queue_factory, storage, log_dir):
    queue = queue_factory()
    parameters = dict(
        fn="tests.tasks:tracked",
        batch="resume",
        items=list(range(12)),
        kwargs={"log_dir": str(log_dir)},
        analyze=False,
    )
    run_pipeline(queue, storage, **parameters)
    again = run_pipeline(queue, storage, **parameters)
    assert (again["queued"], again["skipped_done"], again["workers_launched"]) == (0, 12, 0)
    assert all(runs(log_dir, i) == 1 for i in range(12))


def test_worker_flow_publishes_its_counters(queue_factory, storage):
    queue = queue_factory()
    enqueue(queue, "tests.tasks:square", range(6))
    stats = worker(queue=queue, storage=storage, options={"idle_seconds": 0.2})
    assert stats["succeeded"] == 6
    [row] = _table_rows(latest_artifact("worker-stats").data)  # one worker process
    assert (row["succeeded"], row["stop_reason"], row["ending"]) == (6, "idle", "")


def test_saved_blocks_are_found_by_slug_and_name_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from blocks import CloudFilesStorage, LocalTaskQueue
    from flows.cli import app

    queue = LocalTaskQueue(path=str(tmp_path / "q.sqlite"), queue_name="saved")
    queue.ensure()
    queue.save("nightly", overwrite=True)
    CloudFilesStorage(cloudpath=f"file://{tmp_path}").save("nightly", overwrite=True)
    result = CliRunner().invoke(
        app,
        [
            "status",
            "--batch",
            "b",
            "--queue-block",
            "local-task-queue/nightly",
            "--storage-block",
            "cloud-files-storage/nightly",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "queue saved / batch b" in result.output


def test_the_prefect_collections_entry_point_makes_every_tqflow_block_type_known():
    # What a Prefect server does at start to register collections' block types: in a fresh
    # process (this one imported the blocks already), load the collections, then look each
    # tqflow slug up in Prefect's block registry.
    import json
    import subprocess
    import sys

    script = (
        "import json\n"
        "from prefect.blocks.core import Block\n"
        "from prefect.plugins import load_prefect_collections\n"
        "from prefect.utilities.dispatch import get_registry_for_type\n"
        "collections = load_prefect_collections()\n"
        "registry = get_registry_for_type(Block)\n"
        "print(json.dumps({'collection': collections['tqflow'].__name__, 'types': {\n"
        "    slug: cls.__module__ for slug, cls in registry.items()\n"
        "    if cls.__module__.startswith('blocks')}}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["collection"] == "blocks"
    assert set(found["types"]) == {
        "sqs-task-queue",
        "local-task-queue",
        "cloud-files-storage",
        "cave-credentials",
    }


def _load_by_slug_in_a_new_process(slug: str, kind: str) -> list[str]:
    """``load_block(slug, kind)`` in a fresh Python process: the loaded block's type, and
    whether the process imported prefect-kubernetes (a collection tqflow's blocks do not use)."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from tests.support.helpers import child_env

    code = (
        "import sys\n"
        "import blocks\n"
        "from prefect.blocks.core import Block\n"
        "from blocks.slugs import load_block\n"
        f"block = load_block({slug!r}, {kind})\n"
        "print(type(block).__name__, 'prefect_kubernetes' in sys.modules)\n"
    )
    env = {**child_env(), "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


def test_a_tqflow_block_loads_by_slug_without_importing_every_prefect_collection(tmp_path):
    from blocks import LocalTaskQueue

    LocalTaskQueue(path=str(tmp_path / "q.sqlite"), queue_name="q").save("by-slug", overwrite=True)
    loaded = _load_by_slug_in_a_new_process("local-task-queue/by-slug", "blocks.TaskQueue")
    assert loaded == ["LocalTaskQueue", "False"]


def test_another_packages_block_type_still_loads_by_slug():
    from prefect_kubernetes import KubernetesClusterConfig

    KubernetesClusterConfig(config={"kind": "Config"}, context_name="lab").save(
        "by-slug", overwrite=True
    )
    loaded = _load_by_slug_in_a_new_process("kubernetes-cluster-config/by-slug", "Block")
    assert loaded == ["KubernetesClusterConfig", "True"]


def test_a_block_that_does_not_exist_is_named_in_the_error():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(
        app, ["status", "--queue-block", "local-task-queue/no-such-block"], env={"COLUMNS": "200"}
    )
    assert result.exit_code != 0
    assert "no saved block 'local-task-queue/no-such-block'" in result.output


@sqs_only  # the case with secrets in the block: AWS credentials
def test_flows_take_saved_blocks_by_slug_so_parameters_hold_no_credentials(queue_factory, storage):
    import uuid

    queue = queue_factory()
    name = f"slug-{uuid.uuid4().hex[:6]}"
    queue.save(name)
    storage.save(name)
    summary = run_pipeline(
        f"{queue.get_block_type_slug()}/{name}",
        f"cloud-files-storage/{name}",
        fn="tests.tasks:square",
        batch="by-slug",
        items=[2, 3],
        analyze=False,
    )
    assert summary["queued"] == 2
    assert storage.get_json(output_path("by-slug", "3"))["result"] == 9


def test_an_unsafe_batch_name_is_refused_as_a_batch_name_by_flows_and_worker(
    queue_factory, storage
):
    from tqflow.engine.options import WorkerOptions
    from tqflow.errors import ParameterError

    queue = queue_factory()
    with pytest.raises(ParameterError, match="batch name 'a/b' cannot name a folder"):
        run_pipeline(queue, storage, fn="tests.tasks:square", batch="a/b", items=[1])
    with pytest.raises(ParameterError, match="batch name '../x' cannot name a folder"):
        WorkerOptions(default_batch="../x")
    assert queue.counts().pending == 0


@pytest.mark.parametrize(
    "parameters, says",
    [
        ({"workers": 0}, r"workers=0: give a number of workers"),
        ({"workers": "auto", "finish_within_seconds": -5}, r"=-5(\.0)?: give a positive, finite"),
        ({"workers": "auto", "finish_within_seconds": float("nan")}, r"=nan: give a positive"),
        ({"workers": "auto", "finish_within_seconds": float("inf")}, r"=inf: give a positive"),
        ({"workers": 2, "finish_within_seconds": 600}, r"with workers=2 it would be ignored"),
        ({"processes_per_run": 0}, r"processes_per_run=0: give a whole number, at least 1"),
    ],
    ids=[
        "zero-workers",
        "negative-deadline",
        "nan-deadline",
        "inf-deadline",
        "ignored-deadline",
        "zero-processes-local",
    ],
)
def test_a_bad_fan_out_parameter_is_named_before_anything_is_queued(
    queue_factory, storage, parameters, says
):
    from tqflow.errors import ParameterError

    queue = queue_factory()
    with pytest.raises(ParameterError, match=says):
        run_pipeline(queue, storage, fn="tests.tasks:square", batch="b", items=[1], **parameters)
    assert queue.counts().pending == 0


def test_the_summary_says_why_workers_died_and_what_to_do(queue_factory, storage, log_dir):
    summary = run_pipeline(
        queue_factory(lease_seconds=2),
        storage,
        fn="tests.tasks:dies_once",
        batch="dying",
        items=list(range(20)),
        kwargs={"log_dir": str(log_dir), "how": {"3": "kill", "11": "oom"}},
        workers=2,
        worker_options={"idle_seconds": 0.5, "memory_limit_mib": 1024, "prefetch": 1},
    )
    assert summary["done"] == 20 and summary["dead_lettered"] == 0  # both came back
    endings = summary["worker_endings"]
    assert endings.get("killed (SIGKILL): SIGKILL") == 1, endings
    (oom,) = [e for e in endings if e.startswith("OOMKilled: ")]
    assert "over memory_limit_mib=1024" in oom
    why = " ".join(summary["why_workers_died"])
    assert "1 OOMKilled: the batch's p99 task peak is" in why
    assert "against a 1.00 GiB limit" in why
    assert "tqflow plan-resources --from-batch dying" in why
    assert "1 killed (SIGKILL):" in why


def test_the_batch_dashboard_shows_counts_failures_and_resources(queue_factory, storage):
    with pytest.raises(DeadLettersError):
        run_pipeline(
            queue_factory(max_receive_count=2),
            storage,
            fn="tests.tasks:fails_on",
            batch="board",
            items=list(range(30)),
            kwargs={"bad": [4, 17]},
            worker_options={"idle_seconds": 0.5, "retry_base_seconds": 0.05},
        )
    board = latest_artifact("board-dashboard").data
    assert "# Batch board (finished)" in board
    assert "| 28 | 0 | 0 | 2 | 4 | 30 |" in board  # done, in flight, waiting, dead, failed, total
    assert "**ValueError**: 4 failed attempts; first items: " in board
    assert "ValueError: item 4 is bad" in board or "ValueError: item 17 is bad" in board
    assert "32 tasks measured" in board  # 28 that succeeded and 4 failed attempts
    assert "![throughput](data:image/png;base64," in board


def test_a_retried_pipeline_run_still_fails_on_its_first_attempts_dead_letters(
    queue_factory, storage
):
    """A retry of a run reads the dead letters its queue held when its first attempt began,
    not when it began itself: the first attempt's dead letters are not done."""
    import uuid

    from prefect.flow_engine import run_flow
    from prefect.states import Scheduled

    name = f"retried-{uuid.uuid4().hex[:8]}"
    queue_factory().save(name)
    storage.save(name)
    parameters = {
        "fn": "tests.tasks:refuses",
        "queue": f"local-task-queue/{name}",
        "storage": f"cloud-files-storage/{name}",
        "batch": "retried",
        "items": [1, 2, 3],
        "workers": 1,
        "worker_options": {"idle_seconds": 0.5},
        "poll_seconds": 0.2,
        "analyze": False,
    }
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(pipeline, parameters=parameters)
    with pytest.raises(DeadLettersError, match="3 of 3 items"):
        run_flow(pipeline, flow_run=run, parameters=parameters)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Scheduled(), force=True)  # the UI's Retry
    with pytest.raises(DeadLettersError, match="3 of 3 items"):
        run_flow(pipeline, flow_run=run, parameters=parameters)


def test_a_deployment_mode_pipeline_with_an_unsaved_block_queues_nothing(queue_factory, storage):
    queue = queue_factory()
    with pytest.raises(ParameterError, match="must be a saved block for deployment fan-out"):
        pipeline(
            fn="tests.tasks:square",
            queue=queue,
            storage=storage,
            batch="unsaved",
            items=list(range(5)),
            mode="deployment",
        )
    assert queue.counts().visible == 0
