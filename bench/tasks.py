"""Task functions the benchmarks queue (importable as ``bench.tasks:<name>``)."""

from __future__ import annotations


def noop(x: int) -> int:
    """No work: what is measured is the machinery around a task."""
    return x


def spin(x: int, iterations: int = 200_000) -> int:
    """CPU-bound work of a fixed size (pure Python, holds the GIL)."""
    total = 0
    for i in range(iterations):
        total += (i * x) % 7
    return total


from taskqueue import queueable  # noqa: E402


@queueable
def noop_tq(x: int) -> int:
    """``noop`` the python-task-queue way (a ``@queueable``)."""
    return x
