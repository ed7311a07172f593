"""What the benchmarks share: timing, medians, child environments; the local servers are the
tests' own (`tests.support.services`)."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

from tests.support import services
from tests.support.services import moto_server  # noqa: F401  (re-exported for the benchmarks)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["TQDM_DISABLE"] = "1"
    env.update(extra)
    return env


def median_of(runs: int, measure: Callable[[], float]) -> float:
    """Median of ``runs`` calls of ``measure`` (each returns seconds or a rate)."""
    return statistics.median(measure() for _ in range(runs))


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 with its own database (`tests.support.services`); yields
    its API URL and points this process's Prefect client at it."""
    from prefect.settings import PREFECT_API_URL

    from tests.support.helpers import prefect_settings

    # Through the tests' helper, which drains Prefect's events and log workers on the way out:
    # left pointing at this server once it stopped, they held the process at its exit for
    # minutes, retrying hundreds of events.
    with services.prefect_server(home, env=child_env()) as env:
        with prefect_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
            yield env["PREFECT_API_URL"]


def rss_mib(pid: int | None = None) -> float:
    """Resident memory of a process, MiB."""
    pages = int(Path(f"/proc/{pid or 'self'}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
