"""Several worker processes in one worker run (one pod): ``processes=k`` on the ``worker`` flow.

A thousand workers as 1,000 / k flow runs: each run's engine costs the Prefect API requests
(states, logs, artifacts), its pod costs a scheduling and an image start, and k processes in a
pod share one Python import of the worker (they are forked warm, `tqflow.fleet.warm_workers`).
The run keeps its k processes while messages are visible, replaces those that are lost (at
most ``3 * k`` times), and returns one row per process: its stats and, for one that was lost,
how it ended, which the pipeline's fleet reads (`tqflow.fleet.deployment`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from tqflow.engine.contracts import CAVESource, Queue, Storage
from tqflow.engine.options import WorkerOptions
from tqflow.fleet.local import LocalFleet

#: Seconds between two looks at the processes.
POLL_SECONDS = 0.5


def run_processes(
    queue: Queue,
    storage: Storage,
    options: WorkerOptions,
    processes: int,
    *,
    cave: Optional[CAVESource] = None,
    stop: threading.Event,
    log: logging.Logger | logging.LoggerAdapter,
) -> list[dict[str, Any]]:
    """Run ``processes`` worker processes until none is left; ``stop`` (set by the run's signal
    handler) stops them all, and they release what they hold. One row per process."""
    fleet = LocalFleet(queue, storage, options, cave)
    fleet.launch(processes)
    replaced, lost_seen = 0, 0
    while True:
        running = fleet.observe().live
        if stop.is_set():
            fleet.stop()
            break
        lost_now, lost_seen = fleet.lost - lost_seen, fleet.lost
        if lost_now and replaced < 3 * processes and running < processes:
            visible = _visible(queue, log)
            if visible:
                launch = min(lost_now, processes - running, visible, 3 * processes - replaced)
                log.warning(
                    "%d worker processes lost; starting %d in their place", lost_now, launch
                )
                fleet.launch(launch)
                replaced += launch
                continue
        if running == 0:
            break
        stop.wait(POLL_SECONDS)
    return fleet.rows


def _visible(queue: Queue, log: logging.Logger | logging.LoggerAdapter) -> int:
    try:
        return queue.counts().visible
    except Exception as exc:  # the processes themselves wait out an unreachable queue
        log.warning("could not read the queue's counts: %s", exc)
        return 0
