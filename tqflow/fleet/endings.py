"""Why workers died, grouped, each with the next step.

A fleet records how each lost worker ended as a line (`tqflow.fleet.fanout`): a local process's
exit code or signal, or ``OOMKilled`` when the local fleet killed it over ``memory_limit_mib``;
a deployment run's final state and its message, with what prefect-kubernetes's pod observer
reported about its pod (``prefect.kubernetes.pod.*`` events: the container's terminated reason
such as ``OOMKilled``, or a diagnosis such as ``Evicted`` or ``Unschedulable``). Without an
observer, the message is Prefect's "Flow run infrastructure exited with non-zero status code
137": 137 is 128 + SIGKILL, which on a pod with a memory limit is nearly always the OOM killer.
`explain` turns the lines into one sentence per cause, with what to do.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from tqflow.engine.reports import BatchTally

#: Causes, in the order they are reported, and what to do about each.
ADVICE = {
    "OOMKilled": "",  # written by `_oom_advice`, with the batch's measured peaks
    "evicted": (
        "the node ran short of memory and evicted pods: give workers memory_request equal to "
        "memory_limit (`tqflow plan-resources`), so the scheduler never overcommits a node"
    ),
    "preempted or stopped (SIGTERM)": (
        "spot VMs preempted or nodes scaled down: the workers released their leases and others "
        "ran those tasks; nothing is lost, and on spot nodes this is the price of the discount"
    ),
    "unschedulable": (
        "the pods ask for more than a node can give: size them with "
        "`tqflow plan-resources --machine-type <the node pool's type>`"
    ),
    "killed (SIGKILL)": (
        "killed from outside (kill -9, or the machine's OOM killer: see `dmesg`); their tasks "
        "come back when their leases end"
    ),
}


def cause(ending: str) -> str:
    """The cause an ending line names, one of `ADVICE`'s keys, or the line itself. What the
    pod observer said (``... (pod: Evicted)``) comes first: an evicted pod's exit code is a
    signal's, and would read as an OOM kill or a preemption."""
    pod = re.search(r"\(pod: ([^)]+)\)$", ending)
    for text in ([pod.group(1).lower()] if pod else []) + [ending.lower()]:
        if "oomkilled" in text or re.search(r"\bstatus code 137\b", text):
            return "OOMKilled"
        if "evict" in text:
            return "evicted"
        if any(w in text for w in ("preempt", "sigterm", "status code 143", "nodeshutdown")):
            return "preempted or stopped (SIGTERM)"
        if "unschedulable" in text:
            return "unschedulable"
        if "killed by sigkill" in text:
            return "killed (SIGKILL)"
    return ending


def explain(
    endings: Counter[str],
    batch: str,
    tally: Optional[BatchTally] = None,
    memory_limit_mib: Optional[int] = None,
) -> list[str]:
    """One sentence per cause: how many workers ended so, and what to do."""
    by_cause: Counter[str] = Counter()
    for ending, count in endings.items():
        by_cause[cause(ending)] += count
    known = [c for c in ADVICE if c in by_cause]
    others = [c for c in by_cause if c not in ADVICE]
    lines = []
    for name in known + others:
        if name == "OOMKilled":
            advice = _oom_advice(batch, tally, memory_limit_mib)
        else:
            advice = ADVICE.get(name, "see the worker's log")
        lines.append(f"{by_cause[name]} {name}: {advice}")
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
