"""The README's own text, as the tests that run its commands take it."""

from __future__ import annotations

import re

from tests.support.helpers import REPO

RECIPE_HEADING = "### Without a cluster: the same fan-out on a process pool"


def readme_block(heading: str) -> str:
    """The first ```bash block after ``heading`` in README.md, as written there."""
    text = (REPO / "README.md").read_text()
    after = text[text.index(heading) :]
    match = re.search(r"```bash\n(.*?)```", after, re.S)
    assert match, f"no bash block under {heading!r} in README.md"
    return match.group(1)
