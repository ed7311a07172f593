"""Task functions the tests queue. Worker processes import them as ``tests.tasks:<name>``.

Functions that take ``log_dir`` append one line per start and per finish to files named after the
item, so a test can count how often each item ran across processes.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from cloudfiles import CloudFiles


def square(x: int) -> int:
    return x * x


def _append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def tracked(x: int, log_dir: str, seconds: float = 0.0) -> int:
    """Record the start, sleep ``seconds``, record the finish, return ``x * x``."""
    _append(Path(log_dir) / f"{x}.started", str(os.getpid()))
    time.sleep(seconds)
    _append(Path(log_dir) / f"{x}.finished", str(os.getpid()))
    return x * x


def always_fails(x: int) -> None:
    raise RuntimeError(f"item {x} always fails")


def allocates_then_fails(x: int, mib: int, cpu_seconds: float) -> None:
    """`allocates`, then raises: what a failed attempt used is what it did before failing."""
    allocates(x, mib, cpu_seconds)
    raise RuntimeError(f"item {x} failed after its work")


def fails_until_fixed(x: int, fixed_flag: str) -> int:
    """Raises until the file ``fixed_flag`` exists (the bug is fixed), then works."""
    if not Path(fixed_flag).exists():
        raise ValueError(f"bug hit by item {x}")
    return x * x


def writes_extra(x: int, storage: "CloudFilesStorage") -> str:  # noqa: F821
    """Writes a large result itself through the injected storage and returns its path."""
    path = f"extra/{x}.json"
    storage.put_json(path, {"values": list(range(x))})
    return path


def needs_cave(x: int, cave: "CAVEclient") -> int:  # noqa: F821
    return x


def fails_on(x: int, bad: list[int]) -> int:
    """``x * x``, except for the items in ``bad``, which raise."""
    if x in bad:
        raise ValueError(f"item {x} is bad")
    return x * x


def counted(x: int, log_dir: str, seconds: float = 0.0) -> int:
    """Append ``x`` to this process's execution log (one line per execution, so a test can
    count executions across processes), sleep ``seconds``, return ``x * x``."""
    _append(Path(log_dir) / f"{os.getpid()}.log", str(x))
    time.sleep(seconds)
    return x * x


def executions(log_dir: str) -> Counter[int]:
    """How often each item ran, by the logs `counted` writes."""
    return Counter(
        int(line) for log in Path(log_dir).glob("*.log") for line in log.read_text().split()
    )


def identity(value):
    """Returns its item unchanged: what reached the task is what was read."""
    return value


def power(base: int, exponent: int = 1) -> int:
    return base**exponent


def returns_a_set(x: int) -> set:
    """A return value JSON cannot hold: fails the same way on every attempt."""
    return {x}


def not_finite(x: int) -> dict:
    """NaN and infinity in a result (for even items)."""
    if x % 2:
        return {"value": float(x), "ratio": 1.0 / x, "ok": float(x)}
    return {"value": float("nan"), "ratio": float("inf"), "ok": float(x)}


def takes_its_own_storage(path: str, storage: str = "gs://theirs") -> str:
    """A python-task-queue style function whose own ``storage`` argument is a string: tqflow
    must not replace it (it is not annotated as CloudFilesStorage)."""
    return f"{storage}/{path}"


def reads_with_cloudfiles(path: str, storage: Optional[CloudFiles] = None) -> str:
    """A python-task-queue style function that takes cloud-files' own client, which has every
    member of tqflow's storage contract: tqflow must not hand it the worker's storage."""
    return "no client" if storage is None else storage.cloudpath


def sleeps_on(x: int, slow: list[int], seconds: float = 3600.0) -> int:
    """``x * x``, except that the items in ``slow`` sleep for ``seconds`` first (a hung call)."""
    if x in slow:
        time.sleep(seconds)
    return x * x


def spins_on(x: int, slow: list[int]) -> int:
    """``x * x``, except that the items in ``slow`` loop in Python for ever."""
    while x in slow:
        pass
    return x * x


def refuses_to_stop(x: int, log_dir: str) -> int:
    """Swallows the interrupt of the first SIGTERM and goes on sleeping: only a second signal
    can end its worker. The "started" line is written inside the ``try``: an interrupt that
    lands while it is written (the test signals as soon as the line shows) is swallowed too."""
    started = False
    while True:
        try:
            if not started:
                _append(Path(log_dir) / f"{x}.started", "started")
                started = True
            time.sleep(3600)
        except BaseException:
            _append(Path(log_dir) / f"{x}.interrupted", "interrupted")


def huge_permanent_error(x: int, size: int) -> None:
    from tqflow.errors import PermanentTaskError

    raise PermanentTaskError("z" * size)


def retry_only_value_errors(receive_count: int, exc: Exception) -> bool:
    """A ``retry_when`` rule: retry `ValueError` (flaky input service), nothing else."""
    return isinstance(exc, ValueError)


def type_error_on(x: int, bad: list[int]) -> int:
    if x in bad:
        raise TypeError(f"item {x} has the wrong type")
    return x * x


def environment(x: int, name: str) -> dict:
    """The value of the environment variable ``name`` and the working directory the task sees."""
    return {"value": os.environ.get(name), "cwd": os.getcwd()}


def aws_key_in_use(x: int, storage: "CloudFilesStorage") -> str:  # noqa: F821
    """The AWS access key id the worker's storage writes with at this moment (its cloud-files
    client's copy, refreshed as the keys near their expiry)."""
    return storage._client().cloudfiles().secrets["AWS_ACCESS_KEY_ID"]


def allocates(x: int, mib: int, cpu_seconds: float = 0.0) -> int:
    """Hold ``mib`` MiB of touched memory for a moment (and spin ``cpu_seconds`` of CPU);
    the memory is freed when the task returns."""
    block = bytearray(mib * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    deadline = time.process_time() + cpu_seconds
    while time.process_time() < deadline:
        pass
    del block
    return x


def dies_once(x: int, log_dir: str, how: dict) -> int:
    """``x``; but the first run of an item named in ``how`` ends its worker: ``"kill"`` sends
    it SIGKILL, ``"oom"`` holds 1.5 GiB until something kills it (a memory limit)."""
    import signal

    marker = Path(log_dir) / f"{x}.died"
    way = how.get(str(x))
    if way is None or marker.exists():
        return x
    marker.touch()
    if way == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    block = bytearray(1536 * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(600)
    return x


def broken_items() -> list[int]:
    """An items generator with a bug in it."""
    return [1 // 0]


class NotATask:
    """A class that is neither a function nor a python-task-queue RegisteredTask."""

    def __init__(self, x: int) -> None:
        self.x = x


def neuron_profile(root_id: int) -> dict:
    """A result as users write them: the item's root ID, a constant, a string, a nested dict,
    a measurement, and fields named like the table's own columns."""
    return {
        "root_id": root_id,
        "n_somas": 1,
        "cell_type": "pyramidal" if root_id % 2 else "basket",
        "soma": {"x": root_id % 7, "y": 2.5},
        "cable_length_um": (root_id % 97) * 1.5,
        "key": f"mine-{root_id % 5}",
        "task_seconds": 99,
    }


def fails_first(x: int, log_dir: str, failures: dict, seconds: float = 0.0) -> int:
    """``x * x`` after ``seconds``; but the first ``failures[str(x)]`` attempts of an item
    raise (a flaky item that a retry mends)."""
    marker = Path(log_dir) / f"{x}.attempts"
    _append(marker, str(os.getpid()))
    time.sleep(seconds)
    if len(marker.read_text().splitlines()) <= failures.get(str(x), 0):
        raise RuntimeError(f"item {x} failed on attempt {len(marker.read_text().splitlines())}")
    return x * x


def refuses(x: int) -> None:
    """Dead-lettered at once: a failure no retry can fix."""
    from tqflow.errors import PermanentTaskError

    raise PermanentTaskError(f"item {x} cannot be done")


class NotAnException(BaseException):
    """Raised by a task: a ``BaseException`` that is not an ``Exception``, as python-task-queue's
    errors are."""


def exits_on(x: int, bad: list[int]) -> int:
    """``x * x``, except that the items in ``bad`` call ``sys.exit(3)``."""
    if x in bad:
        sys.exit(3)
    return x * x


def raises_base_exception_on(x: int, bad: list[int]) -> int:
    if x in bad:
        raise NotAnException(f"item {x}")
    return x * x
