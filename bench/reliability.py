"""Run the reliability scenarios (tests/reliability) and write their figures into
bench/RELIABILITY.md, between its figures markers; the rest of that file is written by hand.

    python -m bench.reliability            # the sizes `make test` runs
    python -m bench.reliability --stress   # the longer versions (TQFLOW_STRESS=1)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.run import machine

REPO = Path(__file__).resolve().parents[1]
REPORT = Path(__file__).with_name("RELIABILITY.md")
BEGIN, END = "<!-- figures: written by bench/reliability.py -->", "<!-- /figures -->"
COLUMNS = [
    "scenario",
    "backend",
    "trials",
    "items",
    "lost",
    "duplicated",
    "dead_lettered",
    "recovery_seconds",
    "notes",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stress", action="store_true", help="run the longer versions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        figures = Path(folder) / "figures.jsonl"
        env = {
            **os.environ,
            "TQFLOW_RELIABILITY_FIGURES": str(figures),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        if args.stress:
            env["TQFLOW_STRESS"] = "1"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "tests/reliability",
        ]
        started = time.monotonic()
        result = subprocess.run(command, cwd=REPO, env=env)
        seconds = time.monotonic() - started
        rows = (
            [json.loads(line) for line in figures.read_text().splitlines()]
            if figures.exists()
            else []
        )
    if result.returncode != 0:
        print(
            f"the reliability tests failed (exit {result.returncode}); {REPORT.name} left as it was"
        )
        return result.returncode
    rows.sort(key=_order)
    shown = "python -m bench.reliability" + (" --stress" if args.stress else "")
    block = "\n".join(
        [
            BEGIN,
            f"Measured with `{shown}` ({seconds:.0f} s) on {machine()}, "
            f"{time.strftime('%Y-%m-%d')}.",
            "",
            "| " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
            *("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |" for row in rows),
            END,
        ]
    )
    text = REPORT.read_text()
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    REPORT.write_text(before + block + after)
    print(block)
    return 0


def _order(row: dict) -> tuple:
    """By scenario number (10 after 9), then name and backend."""
    number, _, name = row["scenario"].partition(". ")
    return (int(number) if number.isdigit() else 0, name, row["backend"])


def _cell(value: object) -> str:
    return "" if value is None else str(value).replace("|", "/")


if __name__ == "__main__":
    sys.exit(main())
