"""Bad input gets a sentence that names the input and the fix, an exit code of 1 or 2, and no
traceback (``--debug`` shows one). Each test is one input a user really gives."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from blocks import CloudFilesStorage, LocalTaskQueue
from flows.cli import app
from tests.support.helpers import enqueue, run_worker

BIN = Path(sys.executable).parent


def fails(*args: str, code: int = 1, env: dict | None = None) -> str:
    """Run ``tqflow ARGS`` in this process; assert it failed with ``code`` and no traceback."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "300", **(env or {})})
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return " ".join(result.output.split())  # one line, whatever rich wrapped


def test_kwargs_that_are_not_json_name_the_option(tmp_path):
    out = fails(
        "enqueue",
        "tests.tasks:square",
        "--item",
        "1",
        "--kwargs",
        "{lod: 2}",
        "--data",
        str(tmp_path),
    )
    assert "--kwargs is not JSON" in out


def test_kwargs_that_are_not_an_object_name_the_option(tmp_path):
    out = fails(
        "enqueue", "tests.tasks:square", "--item", "1", "--kwargs", "[2]", "--data", str(tmp_path)
    )
    assert "--kwargs must be a JSON object" in out


def test_an_empty_csv_says_it_needs_a_header(tmp_path):
    (tmp_path / "roots.csv").write_text("")
    out = fails(
        "enqueue",
        "tests.tasks:square",
        "--items-file",
        str(tmp_path / "roots.csv"),
        "--data",
        str(tmp_path),
    )
    assert "roots.csv is empty" in out and "header line" in out


def test_a_headerless_csv_of_one_id_says_to_add_a_header(tmp_path):
    (tmp_path / "roots.csv").write_text("864691135000000001\n")
    out = fails(
        "enqueue",
        "tests.tasks:square",
        "--items-file",
        str(tmp_path / "roots.csv"),
        "--data",
        str(tmp_path),
    )
    assert "has no header line" in out


def test_a_function_without_a_colon_shows_the_form(tmp_path):
    out = fails("enqueue", "tests.tasks.square", "--item", "1", "--data", str(tmp_path))
    assert "'tests.tasks.square' must be written package.module:function" in out


def test_a_task_module_in_the_current_folder_says_pythonpath_or_install(tmp_path):
    (tmp_path / "mytasks.py").write_text("def work(x):\n    return x\n")
    result = subprocess.run(
        [
            str(BIN / "tqflow"),
            "enqueue",
            "mytasks:work",
            "--item",
            "1",
            "--data",
            str(tmp_path / "data"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "Traceback" not in out, out
    assert (
        "'mytasks' is in the current folder" in out
        and "PYTHONPATH=." in out
        and "pip install -e ." in out
    )


def test_a_block_of_the_wrong_type_names_the_option_and_both_types(prefect_api, tmp_path):
    CloudFilesStorage(cloudpath=f"file://{tmp_path}").save("not-a-queue", overwrite=True)
    out = fails("status", "--queue-block", "cloud-files-storage/not-a-queue")
    assert "--queue-block" in out and "is a CloudFilesStorage, not a TaskQueue" in out
    LocalTaskQueue(path=str(tmp_path / "q.sqlite")).save("not-storage", overwrite=True)
    out = fails("analyze", "--storage-block", "local-task-queue/not-storage")
    assert "--storage-block" in out and "not a CloudFilesStorage" in out


def test_a_file_that_is_not_a_queue_database_is_named(tmp_path):
    (tmp_path / "queue.sqlite").write_text("these are my notes, not a database\n" * 100)
    out = fails("status", "--batch", "demo", "--data", str(tmp_path))
    assert f"{tmp_path / 'queue.sqlite'} is not a tqflow queue database" in out
    assert "move it away" in out


def test_data_that_is_a_file_asks_for_the_folder(tmp_path):
    (tmp_path / "data.txt").write_text("x")
    out = fails("status", "--data", str(tmp_path / "data.txt"))
    assert "--data" in out and "is a file: give the folder" in out


def test_work_on_a_queue_that_does_not_exist_says_so_and_creates_nothing(tmp_path):
    out = fails("work", "--batch", "nightly", "--data", str(tmp_path))
    assert "there is no queue 'nightly'" in out and "tqflow enqueue" in out
    assert not (tmp_path / "queue.sqlite").exists()


def test_an_invalid_block_name_is_refused_with_a_valid_spelling(tmp_path):
    (tmp_path / "aws-secret.json").write_text(
        '{"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}'
    )
    out = fails("blocks", "import", "--folder", str(tmp_path), "--name", "My Lab")
    assert "--name 'My Lab' cannot name a Prefect block" in out and "'my-lab'" in out


def test_saving_local_blocks_again_mentions_overwrite(prefect_api, tmp_path):
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["blocks", "save-local", "--data", str(tmp_path), "--overwrite"]
        ).exit_code
        == 0
    )
    out = fails("blocks", "save-local", "--data", str(tmp_path))
    assert "exist already; nothing was saved. Pass --overwrite" in out


def test_saving_local_blocks_is_all_or_nothing(prefect_api, tmp_path):
    # Only the storage block exists (another folder's): the queue block is not saved either.
    CloudFilesStorage(cloudpath=f"file://{tmp_path / 'old'}").save("tqflow-local", overwrite=True)
    if _saved("local-task-queue/tqflow"):
        LocalTaskQueue.delete("tqflow")
    out = fails("blocks", "save-local", "--data", str(tmp_path / "new"))
    assert "cloud-files-storage/tqflow-local exist already; nothing was saved" in out
    assert not _saved("local-task-queue/tqflow")


def _saved(slug: str) -> bool:
    from prefect.blocks.core import Block

    try:
        Block.load(slug)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "args",
    [
        ["--cpus", "0", "--memory-gib", "16"],
        ["--cpus", "4", "--memory-gib", "-1"],
        ["--machine-type", "e2-standard-4", "--pods-per-node", "0"],
    ],
)
def test_plan_resources_refuses_zero_or_negative_sizes(args):
    out = fails("plan-resources", *args, code=2)
    assert "Invalid value for" in out


def test_demo_refuses_a_negative_number_of_items():
    assert "Invalid value for '--items'" in fails("demo", "--items", "-5", code=2)


def test_demo_refuses_zero_workers():
    assert "Invalid value for '--workers'" in fails("demo", "--workers", "0", code=2)


@pytest.mark.parametrize("command", [["status"], ["analyze"], ["work"], ["dead-letters", "list"]])
def test_an_unsafe_batch_name_is_refused_as_a_batch_name(command, tmp_path):
    out = fails(*command, "--batch", "../etc", "--data", str(tmp_path))
    assert "batch name '../etc' cannot name a folder in storage" in out


def test_analyze_of_a_batch_without_outputs_exits_non_zero_with_a_hint(prefect_api, tmp_path):
    out = fails("analyze", "--batch", "never-ran", "--data", str(tmp_path))
    assert "batch 'never-ran' has no outputs" in out and "--batch" in out


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(
        app, ["--debug", "enqueue", "tests.tasks.square", "--item", "1", "--data", str(tmp_path)]
    )
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "UnknownFunctionError"


def test_debug_shows_the_traceback_of_the_installed_command(tmp_path):
    a_file = tmp_path / "queue.sqlite"
    a_file.write_text("")
    args = [str(BIN / "tqflow"), "status", "--data", str(a_file)]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=300)
    debug = subprocess.run(
        [args[0], "--debug", *args[1:]], capture_output=True, text=True, timeout=300
    )
    assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr, debug.stderr
    assert "is a file" in debug.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["status", "--queue-block", "local-task-queue/x"],
        ["demo", "--items", "3"],  # runs a flow: the API is asked before it starts
        ["analyze", "--batch", "demo"],
    ],
    ids=lambda c: c[0],
)
def test_an_unreachable_prefect_api_is_one_line_naming_it(tmp_path, command):
    from tests.support.services import free_port

    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    result = subprocess.run(
        [str(BIN / "tqflow"), *command, "--data", str(tmp_path / "data")],
        cwd=tmp_path,
        env={**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "Traceback" not in out, out
    assert f"cannot reach the Prefect API at {url}" in out and "prefect server start" in out
    assert "tqflow demo:" not in out  # nothing started


# -- what tasks return ----------------------------------------------------------------------------


def test_a_result_that_is_not_json_is_dead_lettered_at_once_naming_the_call(queue_factory, storage):
    queue = queue_factory(max_receive_count=5)
    enqueue(queue, "tests.tasks:returns_a_set", [4])
    stats = run_worker(queue, storage)
    assert (stats["dead_lettered"], stats["failed"]) == (1, 0)  # not retried
    [dead] = queue.dead_letters()
    assert "the return value of tests.tasks:returns_a_set(4)" in dead.reason
    assert dead.receive_count == 1


def test_nan_and_infinity_are_stored_as_null_and_analyze_runs(prefect_api, queue_factory, tmp_path):
    data = tmp_path / "data"
    queue = LocalTaskQueue(
        path=str(data / "queue.sqlite"), queue_name="nan", wait_seconds=0, allowed_modules=["tests"]
    )
    queue.ensure()
    storage = CloudFilesStorage(cloudpath=f"file://{data}")
    enqueue(queue, "tests.tasks:not_finite", [1, 2, 3], batch="nan")
    run_worker(queue, storage)
    record = json.loads((data / "nan/outputs/2.json").read_text())
    assert record["result"] == {"value": None, "ratio": None, "ok": 2.0}
    out = CliRunner().invoke(app, ["analyze", "--batch", "nan", "--data", str(data)])
    assert out.exit_code == 0, out.output
    assert (data / "nan/analysis/summary.png").stat().st_size > 0


@pytest.mark.parametrize(
    "option, named",
    [
        (["--import-module", "no_such_module_here"], "for import_modules (--import-module)"),
        (["--retry-when", "no_such_module_here:rule"], "for retry_when rule"),
        (["--retry-when", "tests.tasks:nope"], "(retry_when rule 'tests.tasks:nope')"),
    ],
)
def test_worker_code_that_does_not_import_is_one_line_naming_the_option(tmp_path, option, named):
    queue = LocalTaskQueue(path=str(tmp_path / "queue.sqlite"), queue_name="demo")
    queue.ensure()
    enqueue(queue, "tests.tasks:square", [1])
    out = fails("work", "--data", str(tmp_path), "--idle-seconds", "0.1", *option)
    assert named in out


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only for this user: ``chmod 555``, or for root, who writes anywhere
    that mode allows, the immutable attribute (``chattr +i``)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    else:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            pytest.skip("chattr +i is not possible here, and root writes 555 folders")
        undo = ["chattr", "-i", str(folder)]
    try:
        yield folder
    finally:
        subprocess.run(undo, check=True)


def test_a_read_only_data_folder_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "data").mkdir()
    with read_only(tmp_path / "data") as data:
        out = fails("enqueue", "tests.tasks:square", "--item", "1", "--data", str(data))
    assert f"--data {data} is not writable" in out


def test_a_bad_batch_name_is_refused_before_a_flow_starts(tmp_path):
    result = subprocess.run(
        [str(BIN / "tqflow"), "demo", "--batch", "my batch", "--items", "2"],
        cwd=tmp_path,
        env={**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "batch name 'my batch' cannot name a folder" in out
    assert "Traceback" not in out and "flow run" not in out, out  # no flow started


@pytest.mark.parametrize("column", [None, "864691135000000001"])
def test_a_headerless_table_of_two_columns_is_refused_whichever_column_is_named(tmp_path, column):
    table = tmp_path / "roots.csv"
    table.write_text("864691135000000001,5\n864691135000000002,6\n")
    named = ["--column", column] if column else []
    out = fails(
        "enqueue", "tests.tasks:square", "--items-file", str(table), *named,
        "--data", str(tmp_path),
    )  # fmt: skip
    assert "has no header line: its first line (864691135000000001,5) holds items" in out
    assert "--column root_id" in out
    assert not (tmp_path / "queue.sqlite").exists()  # nothing queued, the first item not lost


def test_a_cave_table_without_a_cave_block_names_the_option_that_gives_one(tmp_path):
    out = fails(
        "enqueue", "tests.tasks:square", "--cave-table", "synapses", "--data", str(tmp_path)
    )
    assert "--cave-table synapses" in out and "add --cave-block" in out


def test_a_function_taking_star_args_first_is_told_to_wrap_it(tmp_path):
    out = fails("enqueue", "builtins:print", "--item", "1", "--data", str(tmp_path))
    assert "builtins:print takes *args first" in out and "def task(root_id)" in out


@pytest.mark.parametrize(
    "url, says",
    [
        ("gs:///roots.csv", "'gs:///roots.csv': it names no bucket; write gs://BUCKET/"),
        ("s3:/bucket/roots.csv", "'s3:/bucket/roots.csv': not a s3:// URL; write s3://BUCKET/"),
        ("gs://bucket", "'gs://bucket': it names a bucket or a folder, not a file"),
        ("http://example.org/roots.csv", "tqflow reads items files at gs://, s3:// and file://"),
    ],
    ids=["no-bucket", "one-slash", "bucket-only", "http"],
)
def test_an_items_url_that_names_no_file_says_how_to_write_one(tmp_path, url, says):
    out = fails("enqueue", "tests.tasks:square", "--items-file", url, "--data", str(tmp_path))
    assert says in out


@pytest.mark.parametrize("item", ["8646911350000,0002", "864691135000,000002", "12,5"])
def test_digits_broken_by_a_comma_are_refused_not_queued_as_a_name(tmp_path, item):
    out = fails("enqueue", "tests.tasks:square", "--item", item, "--data", str(tmp_path))
    assert f"--item #1 ('{item}') is digits broken by a comma" in out
    assert not (tmp_path / "queue.sqlite").exists()


def test_a_timestamp_column_is_named_with_its_row_not_a_message_key(tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "cells.parquet"
    when = [datetime.datetime(2024, 1, 1), datetime.datetime(2024, 1, 2)]
    pq.write_table(pa.table({"seen_at": when, "root_id": [1, 2]}), table)
    out = fails(
        "enqueue", "tests.tasks:square", "--items-file", str(table), "--column", "seen_at",
        "--data", str(tmp_path),
    )  # fmt: skip
    assert "cells.parquet column seen_at row 1 (2024-01-01 00:00:00) is a datetime" in out
    assert "h-" not in out  # no message key


@pytest.fixture
def queued_batch(tmp_path) -> Path:
    """A --data folder with batch b1 queued by `tqflow enqueue` in a process of its own, which
    closed the queue (so SQLite removed its -wal and -shm files, as a copied folder has none)."""
    data = tmp_path / "data"
    result = subprocess.run(
        [str(BIN / "tqflow"), "enqueue", "tests.tasks:square", "--batch", "b1", "--item", "3",
         "--data", str(data)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["b1", "queue.sqlite"]
    return data


def test_status_of_a_read_only_data_folder_says_to_copy_it(queued_batch):
    with read_only(queued_batch) as data:
        out = fails("status", "--batch", "b1", "--data", str(data))
    assert f"its folder {data} is read-only" in out
    assert f"cp -r {data} ~/tqflow-data-copy" in out


def test_analyze_of_a_read_only_data_folder_is_refused_before_the_flow_starts(queued_batch):
    with read_only(queued_batch) as data:
        result = subprocess.run(
            [str(BIN / "tqflow"), "analyze", "--batch", "b1", "--data", str(data)],
            env={**os.environ, "COLUMNS": "300"},
            capture_output=True,
            text=True,
            timeout=300,
        )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and f"--data {data} is not writable" in output, output
    assert "Traceback" not in output and "temporary server" not in output  # no flow ran
