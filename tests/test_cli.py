"""``tqflow status`` and ``tqflow dead-letters`` on an embedded setup with dead letters."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from blocks import CloudFilesStorage, LocalTaskQueue
from flows.cli import app
from tests.support.helpers import enqueue, run_worker


@pytest.fixture
def data_with_dead_letters(tmp_path):
    data = tmp_path / "data"
    queue = LocalTaskQueue(
        path=str(data / "queue.sqlite"),
        queue_name="nightly",
        max_receive_count=2,
        allowed_modules=["tests", "gone"],
    )
    queue.ensure()
    storage = CloudFilesStorage(cloudpath=f"file://{data}")
    enqueue(queue, "tests.tasks:square", [1, 2, 3], batch="nightly")
    enqueue(queue, "tests.tasks:always_fails", [7], batch="nightly")
    queue.send([json.dumps({"fn": "gone.module:f", "kwargs": {}, "key": "9", "batch": "nightly"})])
    run_worker(queue, storage, retry_base_seconds=0.05)
    return data


def invoke(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


def status_rows(out: str) -> dict[str, str]:
    cells = [line.split("│") for line in out.splitlines() if line.count("│") == 3]
    return {row[1].strip(): row[2].strip() for row in cells}


def test_status_shows_queue_counts_and_what_the_workers_reported(data_with_dead_letters):
    out = invoke("status", "--batch", "nightly", "--data", str(data_with_dead_letters))
    lines = status_rows(out)
    assert lines["dead-lettered"] == "2"
    assert lines["tasks done"] == "3"
    assert lines["failed attempts"] == "2"  # item 7, twice; then the queue dead-letters it
    assert lines["workers reporting (ended: 1)"] == "1"
    assert lines["visible (waiting)"] == "0"
    assert "outputs (listed)" not in lines  # the reports are summed, the outputs not listed
    assert "tqflow dead-letters list --batch nightly" in out


def test_status_groups_failures_by_error_type_and_shows_what_tasks_used(data_with_dead_letters):
    out = invoke("status", "--batch", "nightly", "--data", str(data_with_dead_letters))
    assert "- RuntimeError: 2 failed attempts; first items: 7" in out
    assert "- UnknownFunctionError: 1 failed attempt; first items: 9" in out
    assert "tasks measured" in out and "worker peak memory during a task: p50" in out


def test_status_lists_the_outputs_when_asked(data_with_dead_letters):
    out = invoke(
        "status", "--batch", "nightly", "--data", str(data_with_dead_letters), "--list-outputs"
    )
    assert status_rows(out)["outputs (listed)"] == "3"


def test_status_of_a_batch_without_worker_reports_lists_its_outputs(data_with_dead_letters):
    for report in (data_with_dead_letters / "nightly/workers").iterdir():
        report.unlink()  # as a batch run before workers wrote reports
    lines = status_rows(
        invoke("status", "--batch", "nightly", "--data", str(data_with_dead_letters))
    )
    assert lines["outputs (listed)"] == "3"
    assert "tasks done" not in lines


@pytest.mark.parametrize(
    "content",
    [
        '{"worker": "w", "succ',
        '{"worker": "w", "succeeded": "2", "task_seconds": "x"}',
        '{"worker": "w", "succeeded": 2, "peak_rss_histogram": [1], "errors": "e"}',
        '{"worker": "w", "errors": {"ValueError": {"count": "many"}}}',
        "[1, 2]",
    ],
    ids=["torn", "counts-as-text", "histogram-a-list", "error-count-as-text", "not-an-object"],
)
@pytest.mark.parametrize("command", ["status", "plan-resources"])
def test_a_worker_report_a_reader_cannot_add_up_is_left_out_and_named(
    data_with_dead_letters, content, command
):
    (data_with_dead_letters / "nightly/workers/torn.json").write_text(content)
    batch = ["--batch", "nightly"] if command == "status" else ["--from-batch", "nightly"]
    out = invoke(command, *batch, "--data", str(data_with_dead_letters))
    if command == "status":
        assert status_rows(out)["tasks done"] == "3"
    assert (
        "1 worker report(s) not valid JSON or not of a worker report's form, left out of the "
        "counts" in " ".join(out.split())
    )
    assert "torn.json" in out and "delete it" in out


def test_dead_letters_list_names_each_item_and_why(data_with_dead_letters):
    out = invoke(
        "dead-letters", "list", "--batch", "nightly", "--data", str(data_with_dead_letters)
    )
    assert "2 dead-lettered in nightly" in out
    rows = {
        row[2].strip(): row
        for row in (line.split("│") for line in out.splitlines())
        if len(row) == 7
    }
    assert rows["7"][1].strip() == "nightly" and rows["7"][3].strip() == "2"
    assert "max_receive_count=2" in rows["7"][4]
    assert "RuntimeError: item 7 always fails" in rows["7"][5]  # the task's last error
    assert "cannot import module 'gone.module'" in rows["9"][4]
    # the hint reaches the same queue
    assert f"tqflow dead-letters redrive --batch nightly --data {data_with_dead_letters}" in out


def test_dead_letters_redrive_puts_them_back(data_with_dead_letters):
    out = invoke(
        "dead-letters", "redrive", "--batch", "nightly", "--data", str(data_with_dead_letters)
    )
    assert "redrove 2 messages" in out
    status = invoke("status", "--batch", "nightly", "--data", str(data_with_dead_letters))
    assert status_rows(status)["dead-lettered"] == "0"
    assert status_rows(status)["visible (waiting)"] == "2"


def test_enqueue_with_a_function_that_cannot_take_the_items_fails_clearly(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "enqueue",
            "tests.tasks:square",
            "--item",
            "1",
            "--kwargs",
            '{"nope": 1}',
            "--data",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1
    assert "do not fit tests.tasks:square" in result.output


def test_dead_letters_of_a_shared_queue_are_listed_and_redriven_per_batch(tmp_path):
    data = tmp_path / "data"
    queue = LocalTaskQueue(
        path=str(data / "queue.sqlite"),
        queue_name="shared",
        max_receive_count=1,
        allowed_modules=["tests"],
    )
    queue.ensure()
    enqueue(queue, "tests.tasks:returns_a_set", [1, 2], batch="monday")
    enqueue(queue, "tests.tasks:returns_a_set", [3], batch="tuesday")
    run_worker(queue, CloudFilesStorage(cloudpath=f"file://{data}"))
    common = ["--queue", "shared", "--data", str(data)]
    listing = invoke("dead-letters", "list", "--batch", "tuesday", *common)
    assert "showing 1 of batch tuesday" in listing and "returns_a_set(3)" in " ".join(
        listing.split()
    )
    assert "returns_a_set(1)" not in " ".join(listing.split())
    assert f"redrive --batch tuesday --queue shared --data {data}" in listing  # the hint reaches it
    assert "redrove 1 messages" in invoke("dead-letters", "redrive", "--batch", "tuesday", *common)
    assert queue.counts().dead == 2  # monday's stay


def test_work_takes_allow_and_task_timeout(tmp_path):
    data = tmp_path / "data"
    queue = LocalTaskQueue(path=str(data / "queue.sqlite"), queue_name="limits")
    queue.ensure()
    enqueue(queue, "tests.tasks:sleeps_on", [1, 2], batch="limits", slow=[2])  # not via tqflow
    out = invoke(
        "work",
        "--batch",
        "limits",
        "--data",
        str(data),
        "--queue",
        "limits",
        "--allow",
        "tests",
        "--task-timeout",
        "1",
        "--max-tasks",
        "2",
    )
    stats = json.loads(out[out.index("{") :])
    assert (stats["succeeded"], stats["timed_out"], stats["dead_lettered"]) == (1, 1, 0)
    [record] = (data / "limits/errors/2").iterdir()  # one file per failed attempt
    error = json.loads(record.read_text())["attempt"]["error"]
    assert "timed out after 1 s" in error


@pytest.mark.parametrize("command", ["status", "analyze"])
def test_paths_are_printed_whole_on_a_narrow_terminal(data_with_dead_letters, command, prefect_api):
    # A path wrapped across lines cannot be copied; prose may wrap, paths may not. (`analyze`
    # runs the analysis flow, hence the Prefect API.)
    result = CliRunner().invoke(
        app,
        [command, "--batch", "nightly", "--data", str(data_with_dead_letters)],
        catch_exceptions=False,
        env={"COLUMNS": "40"},
    )
    assert result.exit_code == 0, result.output
    path = f"file://{data_with_dead_letters}/nightly/"
    assert len(path) > 40
    assert path in result.output, result.output


@pytest.mark.parametrize(
    "items, hours, warns",
    [
        (10**13, 0.01, r"nodes is more than a GKE cluster holds \(15,000\)"),
        (10**9, 0.01, r"nodes need [\d,]+ vCPUs of the region's quota .*regions describe"),
        (3, 1, None),
    ],
    ids=["past-a-cluster", "past-a-new-quota", "small"],
)
def test_a_plan_of_more_nodes_than_a_project_can_have_says_so(
    data_with_dead_letters, items, hours, warns
):
    out = invoke(
        "plan-resources", "--from-batch", "nightly", "--data", str(data_with_dead_letters),
        "--items", str(items), "--within-hours", str(hours),
    )  # fmt: skip
    one_line = " ".join(out.split())
    if warns is None:
        assert "warning:" not in one_line and " 1 node," in one_line
    else:
        assert re.search(warns, one_line), one_line


def test_status_of_a_mistyped_batch_on_a_shared_queue_says_so_and_names_the_close_one(tmp_path):
    queue = LocalTaskQueue(path=str(tmp_path / "queue.sqlite"), queue_name="shared")
    invoke(
        "enqueue", "tests.tasks:square", "--item", "1", "--item", "2",
        "--batch", "nightly", "--queue", "shared", "--data", str(tmp_path),
    )  # fmt: skip
    assert queue.counts().visible == 2
    result = CliRunner().invoke(
        app,
        ["status", "--batch", "nightlyy", "--queue", "shared", "--data", str(tmp_path)],
        env={"COLUMNS": "400"},
    )
    out = " ".join(result.output.split())
    assert result.exit_code == 0, out
    assert "warning: no batch 'nightlyy'" in out and "did you mean 'nightly'?" in out
    assert "the counts below are of queue 'shared', every batch on it" in out
