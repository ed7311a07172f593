"""The ``tqflow`` commands README.md shows, run as written there (text taken from the README,
not retyped), from a fresh folder as a user runs them. The process-pool recipe has its own
end-to-end test (tests/test_deployments.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import REPO
from tests.support.readme import RECIPE_HEADING

pytestmark = pytest.mark.slow


def readme_commands() -> list[str]:
    """Every ``.venv/bin/tqflow ...`` line of the README's bash blocks (continuations joined,
    comments dropped), outside the process-pool recipe."""
    text = (REPO / "README.md").read_text()
    text = text[: text.index(RECIPE_HEADING)] + text[text.index("## Writing a task") :]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith(".venv/bin/tqflow "):
                commands.append(" ".join(line.split()))
    return commands


def test_the_readme_shows_the_commands_this_test_runs():
    assert readme_commands() == [
        ".venv/bin/tqflow status --batch demo",
        ".venv/bin/tqflow dead-letters list --batch demo",
        ".venv/bin/tqflow dead-letters redrive --batch demo",
        ".venv/bin/tqflow work --batch demo",
        ".venv/bin/tqflow analyze --batch demo",
        ".venv/bin/tqflow plan-resources --from-batch demo",
        ".venv/bin/tqflow blocks import --folder ~/.cloudvolume/secrets --name tqflow --datastack minnie65_public",
        ".venv/bin/tqflow enqueue mypackage.tasks:mesh_stats --items-file roots.csv --column root_id --kwargs '{\"lod\": 2}' --batch meshes-v1",
        ".venv/bin/tqflow work --batch meshes-v1",
    ], "README.md's commands changed: update this test's setup for them"


@pytest.fixture
def user_folder(tmp_path, prefect_api):
    """A fresh folder with the project's .venv, a secrets folder in HOME, a task package and a
    roots.csv, as the README's reader has them; Prefect commands reach the session's server."""
    from prefect.settings import PREFECT_API_URL

    home = tmp_path / "home"
    secrets = home / ".cloudvolume" / "secrets"
    secrets.mkdir(parents=True)
    (secrets / "aws-secret.json").write_text(
        json.dumps(
            {
                "AWS_ACCESS_KEY_ID": "made-up-id",
                "AWS_SECRET_ACCESS_KEY": "made-up-key",
                "AWS_DEFAULT_REGION": "us-west-1",
            }
        )
    )
    (secrets / "cave-secret.json").write_text(json.dumps({"token": "made-up-token"}))
    folder = tmp_path / "work"
    (folder / "mypackage").mkdir(parents=True)
    (folder / ".venv").symlink_to(REPO / ".venv")
    (folder / "mypackage" / "__init__.py").write_text("")
    (folder / "mypackage" / "tasks.py").write_text(
        "from blocks import CloudFilesStorage\n\n\n"
        "def mesh_stats(root_id: int, lod: int = 2, storage: CloudFilesStorage = None) -> dict:\n"
        "    storage.put('meshes/%d.npz' % root_id, b'mesh')\n"
        "    return {'n_vertices': 10 * lod, 'mesh': 'meshes/%d.npz' % root_id}\n"
    )
    (folder / "roots.csv").write_text("root_id\n864691135000000001\n\n864691135000000003\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQFLOW_")}
    env.update(
        HOME=str(home),
        PREFECT_API_URL=PREFECT_API_URL.value(),
        PYTHONPATH=str(folder),
        COLUMNS="200",
        PREFECT_HOME=str(tmp_path / "prefect-home"),
    )
    return folder, env


def run(folder: Path, env: dict, command: str) -> str:
    result = subprocess.run(
        ["bash", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


def test_every_readme_command_runs_as_written(user_folder):
    folder, env = user_folder
    env = {**env, "PYTHONPATH": f"{folder}{os.pathsep}{REPO}"}  # mypackage, and tests.tasks
    commands = readme_commands()
    # A small demo batch, run once, with one item that fails for good (as after `make demo`).
    run(
        folder,
        env,
        ".venv/bin/tqflow enqueue tqflow.examples:skeleton_stats --item 864691135000000001 "
        "--item 864691135000000002 --kwargs '{\"n_nodes\": 200}' --batch demo",
    )
    run(folder, env, ".venv/bin/tqflow enqueue tests.tasks:returns_a_set --item 7 --batch demo")
    run(folder, env, ".venv/bin/tqflow work --batch demo --idle-seconds 1")

    out = {command: run(folder, env, command) for command in commands}
    status, listing, redrive = out[commands[0]], out[commands[1]], out[commands[2]]
    assert re.search(r"tasks done\s*│\s*2", status) and re.search(r"dead-lettered\s*│\s*1", status)
    assert "the return value of tests.tasks:returns_a_set(7)" in " ".join(listing.split())
    assert "redrove 1 messages" in redrive
    assert json.loads(out[commands[3]])["dead_lettered"] == 1  # the redriven item, again
    assert (folder / "tqflow-data/demo/analysis/results.parquet").exists()
    plan = " ".join(out[commands[5]].split())
    assert "tasks measured" in plan and "memory_limit:" in plan
    assert re.search(r"within [\d.]+ h: [\d,]+ nodes?, ", plan), plan
    assert (
        "aws-credentials/tqflow" in out[commands[6]]
        and "cave-credentials/tqflow" in out[commands[6]]
    )
    assert "queued 2 tasks" in out[commands[7]]
    assert json.loads(out[commands[8]])["succeeded"] == 2
    mesh = json.loads(
        (folder / "tqflow-data/meshes-v1/outputs/864691135000000003.json").read_text()
    )
    assert mesh["result"] == {"n_vertices": 20, "mesh": "meshes/864691135000000003.npz"}
    assert (folder / "tqflow-data/meshes/864691135000000003.npz").read_bytes() == b"mesh"
