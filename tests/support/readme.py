"""The README's and the GKE guide's own text, as the tests that run their commands take it,
and a shell that runs a block as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.helpers import REPO

RECIPE_HEADING = "### Without a cluster: the same fan-out on a process pool"


def readme_block(heading: str) -> str:
    """The first ```bash block after ``heading`` in README.md, as written there."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)```", after, re.S)
    assert match, f"no bash block under {heading!r} in README.md"
    return match.group(1)


GUIDE = REPO / "deployments/gke/README.md"


def guide_blocks(heading: str, language: str = "bash") -> list[str]:
    """The fenced blocks of one section of the GKE guide (from ``heading`` to the next
    ``## ``), as written there."""
    text = GUIDE.read_text()
    section = text[text.index(heading) + len(heading) :]
    section = section[: section.find("\n## ")] if "\n## " in section else section
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def guide_steps() -> list[tuple[str, str, str]]:
    """Every command block of the GKE guide, in order: ``(section heading, language, text)``
    for each ```bash and ```python block (```text blocks are commands shown for later)."""
    steps, heading = [], ""
    for match in re.finditer(
        r"^## ([^\n]+)$|^```(bash|python)\n(.*?)^```", GUIDE.read_text(), re.M | re.S
    ):
        if match.group(1):
            heading = match.group(1)
        else:
            steps.append((heading, match.group(2), match.group(3)))
    return steps


def run_bash(script: str, env: dict[str, str], cwd: Path = REPO) -> str:
    """``script`` run by ``bash -euo pipefail`` as a user's shell runs it; its output, or a
    failed assertion with the script and what it printed."""
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout
