"""uv.lock pins what the tests run and the worker image installs: it agrees with pyproject.toml,
and uv refuses a lock that does not (as `make install` and the Dockerfile's `uv sync --locked`
then do)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.helpers import REPO

UV = Path(sys.executable).parent / "uv"


def lock_check(folder: Path) -> subprocess.CompletedProcess:
    """``uv lock --check`` in ``folder``, offline (nothing leaves this machine)."""
    return subprocess.run(
        [str(UV), "lock", "--check", "--offline"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_project(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_the_lock_agrees_with_pyproject(tmp_path):
    result = lock_check(copy_project(tmp_path))
    assert result.returncode == 0, result.stderr


def test_a_lock_that_disagrees_with_pyproject_is_refused(tmp_path):
    folder = copy_project(tmp_path)
    pyproject = folder / "pyproject.toml"
    text = pyproject.read_text()
    assert '    "pandas",\n' in text
    pyproject.write_text(text.replace('    "pandas",\n', '    "pandas<2.3",\n'))
    result = lock_check(folder)
    assert result.returncode != 0
    assert (folder / "uv.lock").read_bytes() == (REPO / "uv.lock").read_bytes()  # not rewritten


def test_make_install_syncs_from_the_lock_and_refuses_a_stale_one():
    makefile = (REPO / "Makefile").read_text()
    install = makefile[makefile.index("$(INSTALLED):") :].split("\n\n")[0]
    assert "$(INSTALLED): pyproject.toml uv.lock" in install
    assert "uv sync" in install and "--locked" in install
    assert "pip install --quiet uv==$(UV_VERSION)" in install


@pytest.mark.parametrize(
    "platform", ["x86_64-unknown-linux-gnu", "aarch64-apple-darwin", "x86_64-apple-darwin"]
)
def test_the_lock_installs_on_linux_and_on_both_kinds_of_mac(tmp_path, platform):
    """A lab engineer's laptop is as likely a Mac as Linux (Windows: through WSL, Linux): the
    locked install, tests included, plans there with a wheel for every package (dry run)."""
    result = subprocess.run(
        [str(UV), "sync", "--locked", "--dry-run", "--offline", "--all-extras"]
        + ["--no-install-project", "--python-platform", platform, "--python", sys.executable],
        cwd=copy_project(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "+ prefect==" in result.stderr + result.stdout
