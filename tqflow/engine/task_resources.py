"""What one task used: wall seconds, CPU seconds, and the worker's peak memory while it ran.

Pods are sized from these (``tqflow plan-resources --from-batch``): the memory limit must cover
the largest peak of the process running a task, imports and all, so the peak recorded is the
process's resident set at its highest during the task, not the task's own increment (which is
``peak_rss_bytes - idle_rss_bytes``).

- **Peak RSS** on Linux: the kernel's high-water mark is reset before the task by writing ``5``
  to ``/proc/self/clear_refs`` and read after it (``getrusage``'s ``ru_maxrss`` follows the
  reset): exact, ~10 µs a task with the RSS read before it. Where that
  file cannot be written (macOS, some sandboxes), a thread samples the RSS every 10 ms while a
  task runs (psutil), which can miss a spike shorter than that.
- **CPU seconds** are the process's CPU time during the task: a task's BLAS or thread-pool
  threads count, which is what the pod's CPU request has to cover. The worker's own threads
  (lease keeper, reports) add little: they wake about once a second.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class TaskResources:
    wall_seconds: float
    cpu_seconds: float
    #: The process's highest resident set while the task ran; None where it cannot be read.
    peak_rss_bytes: Optional[int]
    #: The process's resident set just before the task.
    idle_rss_bytes: Optional[int]

    def as_dict(self) -> dict[str, Any]:
        return {  # built by hand: `dataclasses.asdict` deep-copies, on every task
            "wall_seconds": round(self.wall_seconds, 6),
            "cpu_seconds": round(self.cpu_seconds, 6),
            "peak_rss_bytes": self.peak_rss_bytes,
            "idle_rss_bytes": self.idle_rss_bytes,
        }


@dataclass
class _Start:
    wall: float
    cpu: float
    rss: Optional[int]


class ResourceMeter:
    """Measures the tasks of one worker process, one at a time."""

    def __init__(self) -> None:
        self._pid: Optional[int] = None
        self._clear_refs: Optional[int] = None
        self._statm: Optional[int] = None
        self._sampler: Optional[_Sampler] = None

    def start(self) -> _Start:
        self._open()
        rss = self._rss()
        if self._clear_refs is not None:
            os.write(self._clear_refs, b"5")  # the high-water mark is now the current RSS
        elif self._sampler is not None:
            self._sampler.arm(rss)
        return _Start(time.perf_counter(), time.process_time(), rss)

    def stop(self, start: _Start) -> TaskResources:
        wall = time.perf_counter() - start.wall
        cpu = time.process_time() - start.cpu
        peak: Optional[int] = None
        if self._clear_refs is not None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        elif self._sampler is not None:
            peak = self._sampler.disarm()
        return TaskResources(wall, cpu, peak, start.rss)

    def _open(self) -> None:
        # /proc/self names the process that opens it: a worker forked from a warm server
        # opens its own files, once.
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._clear_refs = self._statm = None
        try:
            self._statm = os.open("/proc/self/statm", os.O_RDONLY)
            self._clear_refs = os.open("/proc/self/clear_refs", os.O_WRONLY)
            os.write(self._clear_refs, b"5")
        except OSError:
            self._clear_refs = None
            self._sampler = _Sampler.for_this_process()

    def _rss(self) -> Optional[int]:
        if self._statm is not None:
            return _statm_rss(os.pread(self._statm, 200, 0))
        if self._sampler is not None:
            return self._sampler.rss()
        return None


def resident_bytes(pid: int) -> Optional[int]:
    """Process ``pid``'s resident memory now; ``None`` if it has ended or there is no /proc."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return _statm_rss(f.read())
    except (OSError, ValueError, IndexError):
        return None


def _statm_rss(statm: bytes) -> int:
    return int(statm.split()[1]) * _PAGE  # pages: size, resident, shared, ...


class _Sampler:
    """The fallback: the RSS sampled every 10 ms by a thread while a task runs."""

    INTERVAL = 0.01

    def __init__(self, process: Any) -> None:
        self._process = process
        self._armed = threading.Event()
        self._peak = 0
        threading.Thread(target=self._run, name="tqflow-rss-sampler", daemon=True).start()

    @classmethod
    def for_this_process(cls) -> Optional[_Sampler]:
        try:
            import psutil
        except ImportError:
            return None
        return cls(psutil.Process())

    def rss(self) -> int:
        return int(self._process.memory_info().rss)

    def arm(self, rss: Optional[int]) -> None:
        self._peak = rss or 0
        self._armed.set()

    def disarm(self) -> int:
        self._armed.clear()
        self._peak = max(self._peak, self.rss())
        return self._peak

    def _run(self) -> None:
        while True:
            self._armed.wait()
            self._peak = max(self._peak, self.rss())
            time.sleep(self.INTERVAL)
