"""`CAVECredentials`, the CAVE item source and the CAVE example task, against caveclient's own
mock of the CAVE services (see tests/support/cave_service.py)."""

from __future__ import annotations

import json
import re
import secrets
import stat

import pandas as pd
import pytest
import responses

from blocks import CAVECredentials, CAVETableQuery, CloudFilesStorage, LocalTaskQueue
from tests.support.cave_service import (
    DATASTACK,
    QUERY_URL,
    SERVER,
    arrow_body,
    authorizations,
    cave_registrations,
)
from tests.support.helpers import enqueue
from tqflow.engine.layout import output_path
from tqflow.engine.options import WorkerOptions
from tqflow.engine.worker import Worker
from tqflow.enqueue import ItemSource
from tqflow.errors import CAVEQueryError, CredentialsError

SYNAPSES = pd.DataFrame(
    {
        "id": [1, 2, 3, 4, 5, 6],
        "pre_pt_root_id": [10, 10, 11, 12, 20, 20],
        "post_pt_root_id": [20, 20, 20, 20, 30, 20],
        "size": [100, 300, 200, 400, 50, 999],
    }
)


@pytest.fixture
def cave_block() -> CAVECredentials:
    return CAVECredentials(
        token=f"cave-token-{secrets.token_hex(8)}",
        server_address=SERVER,
        datastack_name=DATASTACK,
        materialization_version=1,
    )


@pytest.fixture
def cave_service():
    """The CAVE services a client needs to start; tests add their table responses."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for registration in cave_registrations(version=1):
            rsps.add(registration)
        yield rsps


def serve_table(rsps, table: str, frame: pd.DataFrame, version: int = 1) -> None:
    """Serve ``table``'s metadata, and answer its queries with the rows of ``frame`` that match
    the query's filter_equal_dict / filter_in_dict, as the materialization service would."""

    def answer(request):
        body = json.loads(request.body)
        rows = frame
        for column, value in body.get("filter_equal_dict", {}).get(table, {}).items():
            rows = rows[rows[column] == value]
        for column, values in body.get("filter_in_dict", {}).get(table, {}).items():
            rows = rows[rows[column].isin(values)]
        return 200, {"Content-Type": "data.arrow"}, arrow_body(rows)

    rsps.get(
        QUERY_URL.format(version=version, table=table).replace("/query", "/metadata"),
        json={"table_name": table, "reference_table": None, "voxel_resolution": [4.0, 4.0, 40.0]},
    )
    rsps.add_callback(
        responses.POST,
        re.compile(re.escape(QUERY_URL.format(version=version, table=table)) + r"(\?.*)?$"),
        callback=answer,
    )


def test_get_client_authenticates_with_the_block_token(cave_service, cave_block):
    client = cave_block.get_client()
    assert client.datastack_name == DATASTACK
    assert client.materialize.version == 1
    assert authorizations(cave_service) == {f"Bearer {cave_block.token.get_secret_value()}"}


def test_get_client_writes_no_token_or_cache_file(cave_service, cave_block, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cave_block.get_client()
    assert list(tmp_path.rglob("*")) == []


def test_a_refused_token_names_the_block_and_how_to_get_a_new_one(cave_block):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(re.compile(re.escape(SERVER) + "/.*"), status=401, json={"error": "bad token"})
        cave_block._block_document_name = "minnie"
        with pytest.raises(
            CredentialsError,
            match=r"refused the token of CAVE block cave-credentials/minnie.*get_new_token",
        ) as info:
            cave_block.get_client()
    assert cave_block.token.get_secret_value() not in str(info.value)


def test_secrets_folder_holds_private_token_files_and_is_removed(cave_block):
    with cave_block.secrets_folder() as folder:
        files = sorted(p.name for p in (folder / "secrets").iterdir())
        assert files == ["cave-secret.json", "test.cave.com-cave-secret.json"]
        for name in files:
            path = folder / "secrets" / name
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert json.loads(path.read_text()) == {"token": cave_block.token.get_secret_value()}
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not folder.exists()


def test_cave_query_gives_distinct_items_in_table_order(cave_service, cave_block):
    serve_table(cave_service, "synapses", SYNAPSES)
    query = CAVETableQuery(
        table="synapses", column="pre_pt_root_id", filter_equal={"post_pt_root_id": 20}
    )
    assert ItemSource(cave_query=query).read(cave_block) == [10, 11, 12, 20]
    assert authorizations(cave_service) == {f"Bearer {cave_block.token.get_secret_value()}"}


def test_cave_query_of_a_missing_column_names_the_columns_there_are(cave_service, cave_block):
    serve_table(cave_service, "synapses", SYNAPSES.drop(columns=["size"]))
    with pytest.raises(CAVEQueryError, match=r"no column 'size'.*pre_pt_root_id"):
        ItemSource(cave_query=CAVETableQuery(table="synapses", column="size")).read(cave_block)


def test_cave_query_without_a_cave_block_says_what_to_pass():
    with pytest.raises(Exception, match="need a CAVE block"):
        ItemSource(cave_query=CAVETableQuery(table="synapses")).read()


def test_synapse_profile_runs_in_the_worker_with_one_client_per_worker(
    cave_service, cave_block, tmp_path
):
    serve_table(cave_service, "synapse_table", SYNAPSES)
    queue = LocalTaskQueue(path=str(tmp_path / "q.sqlite"), queue_name="cave", wait_seconds=0)
    queue.ensure()
    storage = CloudFilesStorage(cloudpath=f"file://{tmp_path / 'out'}")
    enqueue(
        queue,
        "tqflow.examples:synapse_profile",
        [20, 30],
        batch="syn",
        synapse_table="synapse_table",
    )

    stats = Worker(queue, storage, WorkerOptions(idle_seconds=0.1), cave=cave_block).run()

    assert stats.succeeded == 2
    profile = storage.get_json(output_path("syn", "20"))["result"]
    assert profile == {
        "n_inputs": 4,  # synapse 6 is an autapse
        "n_presynaptic_partners": 3,
        "mean_input_size": 250.0,
        "n_outputs": 1,
        "n_postsynaptic_partners": 1,
        "mean_output_size": 50.0,
    }
    assert storage.get_json(output_path("syn", "30"))["result"]["n_outputs"] == 0
    info_requests = [
        c for c in cave_service.calls if c.request.url.endswith(f"/datastack/full/{DATASTACK}")
    ]
    assert len(info_requests) == 1
    assert authorizations(cave_service) == {f"Bearer {cave_block.token.get_secret_value()}"}


def test_enqueue_command_takes_items_from_a_cave_table(
    cave_service, cave_block, tmp_path, prefect_api
):
    from typer.testing import CliRunner

    from flows.cli import app

    serve_table(cave_service, "synapses", SYNAPSES)
    name = f"cli-{secrets.token_hex(3)}"
    cave_block.save(name)
    result = CliRunner().invoke(
        app,
        [
            "enqueue",
            "tests.tasks:square",
            "--cave-table",
            "synapses",
            "--column",
            "pre_pt_root_id",
            "--cave-filter",
            '{"post_pt_root_id": 20}',
            "--cave-block",
            f"cave-credentials/{name}",
            "--batch",
            "from-cave",
            "--data",
            str(tmp_path),
        ],
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    queue = LocalTaskQueue(path=str(tmp_path / "queue.sqlite"), queue_name="from-cave")
    assert sorted(json.loads(lease.body)["key"] for lease in queue.receive(max_messages=10)) == [
        "10",
        "11",
        "12",
        "20",
    ]


def test_cave_query_keeps_18_digit_root_ids_exact_and_skips_empty_cells(cave_service, cave_block):
    roots = [864691135000000001, 864691135000000003, 864691135123456789]
    frame = pd.DataFrame(
        {
            "pre_pt_root_id": pd.array(
                [roots[0], None, roots[1], roots[2], roots[0]], dtype="Int64"
            ),
            "post_pt_root_id": [20] * 5,
        }
    )
    serve_table(cave_service, "synapses", frame)
    query = CAVETableQuery(
        table="synapses", column="pre_pt_root_id", filter_equal={"post_pt_root_id": 20}
    )
    items = ItemSource(cave_query=query).read(cave_block)
    assert items == roots and all(type(i) is int for i in items)
    assert items.empty_lines == [2]
