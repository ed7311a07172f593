"""How workers end, as a typed `Ending` (a `Cause` and a detail), and why they died, grouped,
each cause with the next step (`why_ended`).

An ending is classified once, where it is observed: a local process's exit code or signal
(`of_process`, with ``OOMKilled`` when the local fleet killed it over ``memory_limit_mib``), a
worker process's own stop reason, or a deployment run's final state with what
prefect-kubernetes's pod observer reported about its pod (`of_run`: the container's terminated
reason such as ``OOMKilled``, or a diagnosis such as ``Evicted`` or ``Unschedulable``).
Without an observer, Prefect's state says "Flow run infrastructure exited with non-zero status
code 137": 137 is 128 + SIGKILL, which on a pod with a memory limit is nearly always the OOM
killer. A unit whose workers stopped reporting (`Cause.SILENT`: a run left Running after its pod
vanished, a hung process) is recorded so by the controller that found it. A run that waits for
a node is not lost: it is waiting (`tqflow.fleet.base.FleetView`).
"""

from __future__ import annotations

import re
import signal
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Any, Optional

from tqflow.engine.reports import BatchTally
from tqflow.engine.stats import StopReason


class Cause(str, Enum):
    """Why a worker ended before its queue was drained, in the order they are reported."""

    OOM_KILLED = "OOMKilled"
    EVICTED = "evicted"
    PREEMPTED = "preempted or stopped (SIGTERM)"
    UNSCHEDULABLE = "unschedulable"
    SILENT = "silent (no report)"
    KILLED = "killed (SIGKILL)"
    QUEUE_UNREACHABLE = "queue unreachable"
    STUCK_TASK = "a task would not stop"
    EXITED = "exited"
    CRASHED = "crashed"


@dataclass(frozen=True)
class Ending:
    """How one lost worker ended: the cause, and what was observed (an exit code, a state's
    message, how long a run waited)."""

    cause: Cause
    detail: str = ""


def of_process(
    returncode: int,
    stats: Optional[dict[str, Any]],
    oom_killed_at: Optional[str] = None,
) -> Optional[Ending]:
    """A local worker process's ending; ``None`` when it finished its work (idle, or its
    ``max_tasks`` / ``max_seconds``). ``oom_killed_at``: what the fleet saw when it killed the
    process over its memory limit."""
    if oom_killed_at is not None:
        return Ending(Cause.OOM_KILLED, oom_killed_at)
    if returncode == 0 and stats is not None:
        return of_stop_reason(stats.get("stop_reason"))
    if returncode == 3:
        return Ending(Cause.QUEUE_UNREACHABLE, "exit code 3")
    if returncode == 4:
        return Ending(Cause.STUCK_TASK, "exit code 4")
    if returncode < 0:
        name = _signal_name(-returncode)
        if -returncode == signal.SIGKILL:
            return Ending(Cause.KILLED, name)
        if -returncode in (signal.SIGTERM, signal.SIGINT):
            return Ending(Cause.PREEMPTED, name)
        return Ending(Cause.CRASHED, f"killed by {name}")
    return Ending(Cause.EXITED, f"exit code {returncode}")


def of_stop_reason(stop_reason: Optional[str]) -> Optional[Ending]:
    """A worker that reported why it stopped: ``None`` when it finished its work."""
    try:
        reason = StopReason(stop_reason)
    except ValueError:
        return Ending(Cause.EXITED, f"stop reason {stop_reason!r}")
    if reason.finished_its_work:
        return None
    if reason is StopReason.QUEUE_UNREACHABLE:
        return Ending(Cause.QUEUE_UNREACHABLE)
    return Ending(Cause.PREEMPTED, "stopped by SIGTERM / SIGINT")


#: What Prefect's workers write into a crashed run's state message.
_EXIT_CODE = re.compile(r"non-zero status code (\d+)")


def of_run(state_type: str, state_message: str, pod_reason: Optional[str] = None) -> Ending:
    """A deployment run that ended otherwise than completed (``state_type``: Prefect's
    ``FAILED``, ``CRASHED``, ``CANCELLED``), classified from its state's message and, first,
    what the pod observer said (an evicted pod's exit code is a signal's too)."""
    detail = f"{state_type.title()}: {state_message}".strip()
    if pod_reason:
        detail += f" (pod: {pod_reason})"
        pod = pod_reason.lower()
        if "oomkilled" in pod:
            return Ending(Cause.OOM_KILLED, detail)
        if "evict" in pod:
            return Ending(Cause.EVICTED, detail)
        if "unschedulable" in pod:
            return Ending(Cause.UNSCHEDULABLE, detail)
    message = state_message.lower()
    code = _EXIT_CODE.search(message)
    if code and code.group(1) == "137":
        return Ending(Cause.OOM_KILLED, detail)
    if "evict" in message:
        return Ending(Cause.EVICTED, detail)
    if (code and code.group(1) == "143") or "preempt" in message or "nodeshutdown" in message:
        return Ending(Cause.PREEMPTED, detail)
    if "unschedulable" in message:
        return Ending(Cause.UNSCHEDULABLE, detail)
    return Ending(Cause.CRASHED, detail)


#: What to do about each cause.
ADVICE = {
    Cause.EVICTED: (
        "the node ran short of memory and evicted pods: give workers memory_request equal to "
        "memory_limit (`tqflow plan-resources`), so the scheduler never overcommits a node"
    ),
    Cause.PREEMPTED: (
        "spot VMs preempted or nodes scaled down: the workers released their leases and others "
        "ran those tasks; nothing is lost, and on spot nodes this is the price of the discount"
    ),
    Cause.UNSCHEDULABLE: (
        "the pods ask for more than a node can give: size them with "
        "`tqflow plan-resources --machine-type <the node pool's type>`"
    ),
    Cause.SILENT: (
        "their workers stopped writing their reports, though their runs had not ended (a pod "
        "that vanished with its run left Running, a process hung outside any task): cancelled "
        "and replaced; their leases end and their tasks run again"
    ),
    Cause.KILLED: (
        "killed from outside (kill -9, or the machine's OOM killer: see `dmesg`); their tasks "
        "come back when their leases end"
    ),
    Cause.QUEUE_UNREACHABLE: (
        "the queue could not be reached for queue_unreachable_seconds: check the network and "
        "the queue's credentials"
    ),
    Cause.STUCK_TASK: (
        "a task past its time limit would not stop (blocked in C code?) and the process exited "
        "so that it was replaced; the task is retried, and dead-lettered if it always hangs"
    ),
}


def why_ended(
    endings: Counter[Ending],
    batch: str,
    tally: Optional[BatchTally] = None,
    memory_limit_mib: Optional[int] = None,
) -> list[str]:
    """One sentence per cause: how many workers ended so, and what to do."""
    by_cause: Counter[Cause] = Counter()
    details: dict[Cause, list[str]] = {}
    for ending, count in endings.items():
        by_cause[ending.cause] += count
        if ending.detail:
            details.setdefault(ending.cause, []).append(ending.detail)
    lines = []
    for cause in Cause:
        if cause not in by_cause:
            continue
        if cause is Cause.OOM_KILLED:
            advice = _oom_advice(batch, tally, memory_limit_mib)
        elif cause in ADVICE:
            advice = ADVICE[cause]
        else:
            advice = "see the worker's log"
        seen = sorted(set(details.get(cause, [])))
        shown = f" ({'; '.join(seen[:3])}{'; ...' if len(seen) > 3 else ''})" if seen else ""
        if cause in (Cause.OOM_KILLED, Cause.EVICTED, Cause.PREEMPTED, Cause.KILLED):
            shown = ""  # the advice says what the details would
        lines.append(f"{by_cause[cause]} {cause.value}{shown}: {advice}")
    return lines


def _oom_advice(batch: str, tally: Optional[BatchTally], limit_mib: Optional[int]) -> str:
    step = f"`tqflow plan-resources --from-batch {batch}` sizes pods from what its tasks used"
    p99 = tally.peak_rss_percentile(0.99) if tally is not None else None
    if p99 is None or tally is None:
        return f"a worker's memory passed its limit; {step}"
    measured = f"the batch's p99 task peak is {_gib(p99)} (max {_gib(tally.peak_rss_max)})"
    if limit_mib is not None:
        measured += f" against a {_gib(limit_mib * 2**20)} limit"
    return (
        f"{measured}, not counting the tasks that were running when the workers were killed; {step}"
    )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
