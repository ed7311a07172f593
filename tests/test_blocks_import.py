"""``tqflow blocks import`` / ``register`` on a real (temporary) Prefect server."""

from __future__ import annotations

import json
import secrets
import uuid

import pytest
from typer.testing import CliRunner

from blocks import CAVECredentials
from flows.cli import app
from tests.support.cloud import service_account_info


@pytest.fixture
def secrets_folder(tmp_path):
    """A secrets folder laid out as cloud-volume's, with made-up values."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    values = {
        "aws": {
            "AWS_ACCESS_KEY_ID": "AKIATQFLOWTEST00001",
            "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
            "AWS_DEFAULT_REGION": "us-west-1",
        },
        "google": service_account_info(),
        "cave": {"token": secrets.token_hex(16)},
        "minnie": {"token": secrets.token_hex(16)},
    }
    (folder / "aws-secret.json").write_text(json.dumps(values["aws"]))
    (folder / "google-secret.json").write_text(json.dumps(values["google"]))
    (folder / "cave-secret.json").write_text(json.dumps(values["cave"]))
    (folder / "minnie.microns-daf.com-cave-secret.json").write_text(json.dumps(values["minnie"]))
    (folder / "notes.txt").write_text("not a secrets file")
    return folder, values


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


def error_of(result) -> str:
    """The one-line error a failed command printed (exit code 1, no traceback)."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def secret_strings(values) -> list[str]:
    return [
        values["aws"]["AWS_SECRET_ACCESS_KEY"],
        values["google"]["private_key"].splitlines()[1],
        values["cave"]["token"],
        values["minnie"]["token"],
    ]


def test_import_round_trips_every_secrets_file_into_blocks(secrets_folder, prefect_api):
    from prefect_aws import AwsCredentials
    from prefect_gcp import GcpCredentials

    folder, values = secrets_folder
    name = f"lab-{uuid.uuid4().hex[:6]}"
    result = invoke(
        "blocks",
        "import",
        "--folder",
        str(folder),
        "--name",
        name,
        "--datastack",
        "minnie65_public",
    )
    assert result.exit_code == 0, result.output

    aws = AwsCredentials.load(name)
    assert aws.aws_access_key_id == values["aws"]["AWS_ACCESS_KEY_ID"]
    assert aws.aws_secret_access_key.get_secret_value() == values["aws"]["AWS_SECRET_ACCESS_KEY"]
    assert aws.region_name == "us-west-1"
    gcp = GcpCredentials.load(name)
    assert (
        gcp.service_account_info.get_secret_value()["private_key"]
        == values["google"]["private_key"]
    )
    assert gcp.project == "tqflow-test"
    cave = CAVECredentials.load(name)
    assert cave.token.get_secret_value() == values["cave"]["token"]
    assert cave.server_address == "https://global.daf-apis.com"
    assert cave.datastack_name == "minnie65_public"
    minnie = CAVECredentials.load(f"{name}-minnie-microns-daf-com")
    assert minnie.token.get_secret_value() == values["minnie"]["token"]
    assert minnie.server_address == "https://minnie.microns-daf.com"

    assert f"aws-credentials/{name}" in result.output
    assert f"cave-credentials/{name}-minnie-microns-daf-com" in result.output
    for secret in secret_strings(values):
        assert secret not in result.output


def test_import_refuses_to_overwrite_and_saves_nothing_without_overwrite(
    secrets_folder, prefect_api
):
    folder, values = secrets_folder
    name = f"lab-{uuid.uuid4().hex[:6]}"
    CAVECredentials(token="older-token").save(name)

    message = error_of(invoke("blocks", "import", "--folder", str(folder), "--name", name))
    assert f"cave-credentials/{name} exist already" in message
    assert "--overwrite" in message
    assert CAVECredentials.load(name).token.get_secret_value() == "older-token"
    from prefect_aws import AwsCredentials

    with pytest.raises(ValueError):
        AwsCredentials.load(name)  # all or nothing: not saved either

    result = invoke("blocks", "import", "--folder", str(folder), "--name", name, "--overwrite")
    assert result.exit_code == 0, result.output
    assert CAVECredentials.load(name).token.get_secret_value() == values["cave"]["token"]


def test_malformed_files_are_named_with_what_is_wrong_and_nothing_is_saved(
    secrets_folder, prefect_api
):
    folder, values = secrets_folder
    (folder / "aws-secret.json").write_text(json.dumps({"AWS_ACCESS_KEY_ID": "x"}))
    broken = dict(values["google"], private_key="-----BEGIN PRIVATE KEY-----\nnot a key\n")
    (folder / "google-secret.json").write_text(json.dumps(broken))
    (folder / "cave-secret.json").write_text("{not json")
    name = f"lab-{uuid.uuid4().hex[:6]}"

    message = error_of(invoke("blocks", "import", "--folder", str(folder), "--name", name))

    assert "aws-secret.json: it has no 'AWS_SECRET_ACCESS_KEY' key" in message
    assert "google-secret.json: it is not a usable service account key" in message
    assert "cave-secret.json: it is not valid JSON" in message
    assert "nothing was saved" in message
    for secret in secret_strings(values):
        assert secret not in message
    with pytest.raises(ValueError):
        CAVECredentials.load(f"{name}-minnie-microns-daf-com")


def test_skip_google_leaves_the_google_key_unread_and_unsaved(secrets_folder, prefect_api):
    from prefect_gcp import GcpCredentials

    folder, _ = secrets_folder
    (folder / "google-secret.json").write_text("{not even json")  # unread, so no complaint
    name = f"lab-{uuid.uuid4().hex[:6]}"

    result = invoke("blocks", "import", "--folder", str(folder), "--name", name, "--skip", "google")

    assert result.exit_code == 0, result.output
    assert f"aws-credentials/{name}" in result.output and "gcp-credentials" not in result.output
    with pytest.raises(ValueError):
        GcpCredentials.load(name)


def test_skip_with_an_unknown_kind_names_the_kinds(secrets_folder):
    folder, _ = secrets_folder
    message = error_of(invoke("blocks", "import", "--folder", str(folder), "--skip", "gcp"))
    assert "--skip gcp: name a kind of secrets file, one of aws, google, cave" in message


def test_an_aws_key_without_a_region_is_refused_with_the_line_to_add(secrets_folder):
    folder, values = secrets_folder
    keys = {k: v for k, v in values["aws"].items() if k != "AWS_DEFAULT_REGION"}
    (folder / "aws-secret.json").write_text(json.dumps(keys))

    message = error_of(invoke("blocks", "import", "--folder", str(folder)))

    assert 'aws-secret.json: it names no region: add "AWS_DEFAULT_REGION"' in message
    assert "nothing was saved" in message
    assert values["aws"]["AWS_SECRET_ACCESS_KEY"] not in message


def test_a_secrets_file_given_as_the_folder_names_the_folder_to_pass(secrets_folder):
    folder, _ = secrets_folder
    message = error_of(invoke("blocks", "import", "--folder", str(folder / "aws-secret.json")))
    assert "aws-secret.json is a file" in message and f"--folder {folder}" in message


def test_a_missing_folder_says_which_and_what_to_pass(tmp_path):
    message = error_of(invoke("blocks", "import", "--folder", str(tmp_path / "nowhere")))
    assert "nowhere does not exist" in message
    assert "--folder" in message


def test_register_makes_the_block_types_known_to_the_server(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:  # a server that has never seen the type
        try:
            client.delete_block_type(client.read_block_type_by_slug("cave-credentials").id)
        except ObjectNotFound:
            pass
        with pytest.raises(ObjectNotFound):
            client.read_block_type_by_slug("cave-credentials")

    result = invoke("blocks", "register")
    assert result.exit_code == 0, result.output
    with get_client(sync_client=True) as client:
        for slug in (
            "cave-credentials",
            "cloud-files-storage",
            "sqs-task-queue",
            "local-task-queue",
        ):
            assert client.read_block_type_by_slug(slug).slug == slug
            assert f"registered {slug}" in result.output


def test_a_temporary_server_that_does_not_start_in_time_is_one_sentence(secrets_folder, tmp_path):
    """With no API configured, `blocks import` saves to Prefect's temporary server; on a busy
    machine it may not answer within Prefect's startup timeout (here none at all)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder, values = secrets_folder
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="0",
        COLUMNS="300",
    )
    tqflow = Path(sys.executable).parent / "tqflow"
    result = subprocess.run(
        [str(tqflow), "blocks", "import", "--folder", str(folder), "--name", "busy"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1, out
    assert "Traceback" not in out
    assert "Prefect's temporary server did not answer in time" in out
    assert "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in out
    assert values["aws"]["AWS_SECRET_ACCESS_KEY"] not in out
