"""The worker's process entry (its signals handled by `tqflow.engine.signals.stop_on_signals`).

``python -m tqflow.engine.process`` reads a JSON spec on stdin::

    {"queue": <block spec>, "storage": <block spec>, "cave": <block spec> | null,
     "options": {<WorkerOptions fields>}}

drains the queue, prints the worker's stats as one JSON line on stdout and exits 0, also when
stopped by SIGTERM (spot preemption, pod eviction); exits 3 when the queue stayed unreachable
(``stop_reason`` ``queue_unreachable``) and 4 when a task past its time limit would not stop.
It never calls the Prefect API: the parent reports for it. Secrets arrive on stdin, never in
argv or the environment.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from typing import IO, Any

from tqflow.engine.contracts import CAVESource, Queue, Storage
from tqflow.engine.options import WorkerOptions
from tqflow.engine.signals import stop_on_signals
from tqflow.engine.specs import block_from_spec, block_spec
from tqflow.engine.stats import StopReason, WorkerStats
from tqflow.engine.time_limit import SignalTimeLimit
from tqflow.engine.worker import Worker

#: Exit codes of a worker process that did not end normally.
EXIT_QUEUE_UNREACHABLE = 3
EXIT_STUCK_TASK = 4


def run_worker(
    queue: Queue,
    storage: Storage,
    options: WorkerOptions | None = None,
    *,
    cave: CAVESource | None = None,
    log: logging.Logger | logging.LoggerAdapter | None = None,
    progress_log: logging.Logger | logging.LoggerAdapter | None = None,
) -> WorkerStats:
    """Run a worker as a process's own: in the main thread, stopped by SIGTERM / SIGINT and
    its tasks' time limits kept by SIGALRM (a task stuck past the grace exits the process with
    `EXIT_STUCK_TASK`, so that it is replaced); elsewhere, with no handler, its time limits kept
    by asynchronous exceptions. What every worker entry runs: this module's, ``tqflow work``
    and the ``worker`` flow."""
    log = log or logging.getLogger("tqflow.worker")
    in_main = threading.current_thread() is threading.main_thread()
    limit = SignalTimeLimit(log, on_stuck=_exit_stuck) if in_main else None
    worker = Worker(
        queue, storage, options, cave=cave, log=log, progress_log=progress_log, time_limit=limit
    )
    with stop_on_signals(worker.request_stop, limit):
        return worker.run()


def _exit_stuck(reason: str) -> None:
    sys.stderr.write(f"tqflow worker: {reason}; exiting so that the process is replaced\n")
    sys.stderr.flush()
    os._exit(EXIT_STUCK_TASK)


def run_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    cave = spec.get("cave")
    stats = run_worker(
        block_from_spec(spec["queue"]),
        block_from_spec(spec["storage"]),
        WorkerOptions.of(spec.get("options")),
        cave=block_from_spec(cave) if cave else None,
    )
    return stats.as_dict()


def worker_spec(
    queue: Queue,
    storage: Storage,
    options: WorkerOptions | dict[str, Any] | None = None,
    *,
    cave: CAVESource | None = None,
) -> dict[str, Any]:
    """What a worker process is started with (secrets included: pass it by pipe, never argv)."""
    return {
        "queue": block_spec(queue),
        "storage": block_spec(storage),
        "cave": block_spec(cave) if cave is not None else None,
        "options": WorkerOptions.of(options).model_dump(mode="json", exclude_unset=True),
    }


def spawn(
    queue: Queue,
    storage: Storage,
    options: WorkerOptions | dict[str, Any] | None = None,
    *,
    cave: CAVESource | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Start a worker process on ``queue``; its spec (secrets included) goes through stdin."""
    spec = worker_spec(queue, storage, options, cave=cave)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    process = subprocess.Popen(
        [sys.executable, "-m", "tqflow.engine.process"],
        stdin=subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        env=child_env,
        text=True,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(spec))
    process.stdin.close()
    process.stdin = None  # so communicate() does not flush the closed pipe
    return process


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted: a handler
    holding the stream it was made with kept writing to a redirect that had ended (a test's
    capture, so a later test in the same process saw none of the worker's lines)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # StreamHandler.__init__ sets it; the current stderr is always used


def log_to_stderr(level: int = logging.INFO) -> logging.Logger:
    """Send tqflow's log records to stderr (once per process) and return the worker's logger.
    Prefect configures the root logger when it is imported (at WARNING), so
    ``logging.basicConfig`` would do nothing here."""
    logger = logging.getLogger("tqflow")
    if not any(getattr(h, "tqflow_stderr", False) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.tqflow_stderr = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logging.getLogger("tqflow.worker")


def main_from_spec(spec: dict[str, Any]) -> int:
    """A worker process's life: log to stderr, drain, print the stats line; the exit code."""
    log_to_stderr()
    stats = run_from_spec(spec)
    print(json.dumps(stats), flush=True)
    return EXIT_QUEUE_UNREACHABLE if stats["stop_reason"] == StopReason.QUEUE_UNREACHABLE else 0


def stats_from_output(text: str) -> dict[str, Any] | None:
    """The stats a worker process printed: the last line of its stdout that is a JSON object
    (its task may print anything before)."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def main() -> int:
    return main_from_spec(json.loads(sys.stdin.read()))


if __name__ == "__main__":
    sys.exit(main())
