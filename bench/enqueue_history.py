"""The million-item enqueue against an earlier revision of tqflow, side by side in one run.

Each side runs bench/scale.py's enqueue stage (`enqueue_items` of N root IDs into the embedded
setup, timed without its imports) in a process of its own: this checkout, and the revision in
a temporary git worktree (default 3bd20ae, the enqueue before items were shuffled). Prints
each side's seconds at 10^5 and 10^6 items, per-item cost at 10^6 against 10^5, and this
checkout's time against the revision's.

    python -m bench.run enqueue-history             # 10^5 and 10^6, against 3bd20ae
    python -m bench.enqueue_history REV             # against another revision
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from bench.common import REPO, child_env

REVISION = "3bd20ae"
SIZES = (100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)


@contextlib.contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """The repository at ``revision``, in a temporary git worktree."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tree"
        subprocess.run(
            ["git", "worktree", "add", "--detach", "-q", str(path), revision],
            cwd=REPO,
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=False
            )


def enqueue_seconds(tree: Path, n: int) -> float:
    with tempfile.TemporaryDirectory() as data:
        done = subprocess.run(
            [sys.executable, "-m", "bench.scale", "stage", "enqueue", data, str(n)],
            cwd=tree,
            env=child_env(PYTHONPATH=str(tree)),
            capture_output=True,
            text=True,
            check=True,
        )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def run(runs: int = 1, quick: bool = False, revision: str = REVISION) -> list[dict]:
    small, large = QUICK_SIZES if quick else SIZES
    with worktree(revision) as before:
        times = {
            (side, n): enqueue_seconds(tree, n)
            for side, tree in (("before", before), ("now", REPO))
            for n in (small, large)
        }
    flat = (times["now", large] / large) / (times["now", small] / small)
    against = times["now", large] / times["before", large]
    return [
        {
            "measure": f"enqueue of {small:,} / {large:,} items: {revision} / this checkout",
            "value": f"{times['before', small]:.2f} / {times['before', large]:.1f} s; "
            f"{times['now', small]:.2f} / {times['now', large]:.1f} s",
            "unit": "",
        },
        {
            "measure": f"per item at {large:,} against {small:,}, this checkout",
            "value": f"{flat:.2f}x",
            "unit": "",
            "target": "<= 1.2x",
            "met": flat <= 1.2,
        },
        {
            "measure": f"enqueue of {large:,} items, this checkout against {revision}",
            "value": f"{against:.2f}x",
            "unit": "",
            "target": "<= 1.2x",
            "met": against <= 1.2,
        },
    ]


if __name__ == "__main__":  # pragma: no cover - a manual run
    from bench.run import table

    revision = sys.argv[1] if len(sys.argv) > 1 else REVISION
    print(table([{"scenario": "enqueue-history", **r} for r in run(revision=revision)]))
