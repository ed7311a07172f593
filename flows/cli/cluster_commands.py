"""Commands for a GKE cluster: pod sizes that fit a node (from a machine type, or from what a
batch's tasks used), and the work pool's base job template."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from flows.cli.app import app, console
from flows.cli.options import DATA_OPTION, Target
from tqflow.engine.messages import check_batch
from tqflow.errors import CLIInputError

#: Defaults of the options whose default depends on the mode (a value given where the mode
#: does not use it is said to be ignored).
_PODS_PER_NODE, _MARGIN, _WITHIN_HOURS = 4, 0.2, 4.0


@app.command("plan-resources")
def plan_resources(
    machine_type: Optional[str] = typer.Option(
        None, "--machine-type", help="GCE machine type of the worker nodes, e.g. e2-highmem-4."
    ),
    cpus: Optional[int] = typer.Option(None, "--cpus", min=1, help="Or: vCPUs of the node."),
    memory_gib: Optional[float] = typer.Option(
        None, "--memory-gib", min=0.5, help="And its memory in GiB."
    ),
    pods_per_node: Optional[int] = typer.Option(
        None,
        "--pods-per-node",
        min=1,
        help=f"Worker pods per node (default {_PODS_PER_NODE}; with --from-batch, as many as fit).",
    ),
    headroom: float = typer.Option(
        0.05, min=0.0, max=0.9, help="Fraction left free for cluster pods and spikes."
    ),
    from_batch: Optional[str] = typer.Option(
        None,
        "--from-batch",
        help="Size the pods from what this batch's tasks used (its worker reports); without "
        "--machine-type, choose the cheapest common machine type.",
    ),
    margin: Optional[float] = typer.Option(
        None,
        min=0.0,
        max=4.0,
        help=f"With --from-batch: added to the measured memory and CPU (default {_MARGIN}).",
    ),
    items: Optional[int] = typer.Option(
        None, "--items", min=1, help="With --from-batch: size of the next batch (default: as many)."
    ),
    within_hours: Optional[float] = typer.Option(
        None,
        "--within-hours",
        min=0.01,
        help=f"With --from-batch: finish the next batch within (default {_WITHIN_HOURS:g} h).",
    ),
    data: Path = DATA_OPTION,
    storage_block: Optional[str] = typer.Option(
        None, "--storage-block", help="With --from-batch: the storage block holding the batch."
    ),
    processes_per_run: int = typer.Option(
        1,
        "--processes-per-run",
        min=1,
        help="Worker processes in each worker run (the pipeline's processes_per_run): size the "
        "run's pod for that many.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the job variables as JSON."),
    deploy_flags: bool = typer.Option(
        False,
        "--deploy-flags",
        help="Print the job variables as `prefect deploy` flags (-jv name=value ...), for "
        "`prefect deploy --name worker-gke $(tqflow plan-resources ... --deploy-flags)`.",
    ),
) -> None:
    """Requests and memory limit for worker pods that fit a GKE node (no CPU limit)."""
    from tqflow.gke.resources import Machine, plan

    ignored = []
    if (cpus is None) != (memory_gib is None) and machine_type is None:
        raise CLIInputError(
            "give both --cpus and --memory-gib (the node's size), or --machine-type"
        )
    if machine_type is not None:
        ignored += [flag for flag, v in (("--cpus", cpus), ("--memory-gib", memory_gib)) if v]
        machine = Machine.from_type(machine_type)
    elif cpus is not None and memory_gib is not None:
        machine = Machine(cpus=cpus, memory_gib=memory_gib)
        machine_type = f"custom-{cpus}-{memory_gib:g}GiB"
    elif from_batch is None:
        raise typer.BadParameter("give --machine-type, or both --cpus and --memory-gib")
    else:
        machine = None
    if from_batch is not None:
        if pods_per_node is not None:
            ignored.append(
                "--pods-per-node (with --from-batch, as many pods fit as the tasks allow)"
            )
    else:
        given = (("--margin", margin), ("--items", items), ("--within-hours", within_hours))
        ignored += [f"{flag} (it needs --from-batch)" for flag, value in given if value is not None]
        if storage_block is not None:
            ignored.append("--storage-block (it needs --from-batch)")
    for flag in ignored:
        console(stderr=True).print(f"note: {flag} is ignored", soft_wrap=True, markup=False)
    if from_batch is not None:
        target = Target(batch=check_batch(from_batch), data=data, storage_block=storage_block)
        _plan_from_batch(
            target,
            machine_type,
            machine,
            _MARGIN if margin is None else margin,
            headroom,
            items,
            _WITHIN_HOURS if within_hours is None else within_hours,
            processes_per_run,
            as_json,
            deploy_flags,
        )
        return
    assert machine is not None
    workers_per_node = pods_per_node or _PODS_PER_NODE
    resources = plan(machine, workers_per_node, headroom=headroom)
    if as_json or deploy_flags:
        if processes_per_run > workers_per_node:
            raise CLIInputError(_too_many_processes(processes_per_run, workers_per_node))
        _print_variables(resources.times(processes_per_run).as_job_variables(), deploy_flags)
        return
    console().print(
        f"node: {machine.cpus} vCPUs, {machine.memory_gib:g} GiB -> allocatable "
        f"{machine.allocatable_cpu_millicores}m CPU, {machine.allocatable_memory_mib:,} MiB"
    )
    _print_pod(resources, workers_per_node, processes_per_run)


def _print_pod(per_worker: Any, workers_per_node: int, processes_per_run: int) -> None:
    """The job variables of a worker run's pod, and how many worker processes a run should
    have: one run per node takes a node's workers in one pod (a quarter of the runs, and of
    their requests to the Prefect API, at four per node)."""
    if processes_per_run > workers_per_node:
        raise CLIInputError(_too_many_processes(processes_per_run, workers_per_node))
    variables = per_worker.times(processes_per_run).as_job_variables()
    what = "each worker pod" if processes_per_run == 1 else f"a pod of {processes_per_run} workers"
    console().print(f"{what}:")
    for name, value in variables.items():
        console().print(f"  {name}: {value}")
    console().print("  cpu_limit: none (on purpose: a task may use idle cores)")
    if processes_per_run == 1 and workers_per_node > 1:
        whole = per_worker.times(workers_per_node).as_job_variables()
        console().print(
            f"one worker run per node instead: processes_per_run={workers_per_node} in the "
            f"pipeline, and a pod of cpu_request {whole['cpu_request']}, memory "
            f"{whole['memory_limit']} (`--processes-per-run {workers_per_node}`)",
            soft_wrap=True,
        )
    console().print(
        f"use: prefect deploy --name worker-gke -jv image=$TQFLOW_IMAGE {_jv(variables)}",
        soft_wrap=True,
    )


def _too_many_processes(processes_per_run: int, workers_per_node: int) -> str:
    return (
        f"--processes-per-run {processes_per_run}: a node holds {workers_per_node} workers; "
        "a run's pod must fit on one node"
    )


def _jv(variables: dict[str, str]) -> str:
    """Job variables as `prefect deploy` flags. Prefect honours them for one deployment at a
    time (with several, `--all` or more than one `--name`, it ignores them), and they replace
    the deployment's job variables in prefect.yaml rather than add to them: the image must be
    given with them."""
    return " ".join(f"-jv {name}={value}" for name, value in variables.items())


def _print_variables(variables: dict[str, str], deploy_flags: bool) -> None:
    print(_jv(variables) if deploy_flags else json.dumps(variables))


def _plan_from_batch(
    target: Target,
    machine_type: Optional[str],
    machine: Any,
    margin: float,
    headroom: float,
    items: Optional[int],
    within_hours: float,
    processes_per_run: int,
    as_json: bool,
    deploy_flags: bool,
) -> None:
    from tqflow.engine.reports import batch_tally, read_reports
    from tqflow.gke import right_size

    reports = read_reports(target.storage(), target.batch)
    if reports.warning():
        console(stderr=True).print(f"warning: {reports.warning()}", soft_wrap=True, markup=False)
    usage = right_size.BatchUsage.of(batch_tally(reports), target.batch)
    items = items or usage.tasks
    if machine_type is None:
        found = right_size.cheapest(usage, items, within_hours, margin, headroom)
    else:
        sized = right_size.size_pod(usage, machine_type, margin, headroom, machine=machine)
        found = right_size.plan_next_batch(sized, usage, items, within_hours)
    if as_json or deploy_flags:
        _print_variables(found.pod.times(processes_per_run).as_job_variables(), deploy_flags)
        return
    mib = 2**20
    console().print(
        f"batch {target.batch}: {usage.tasks:,} tasks measured; peak memory p99.9 "
        f"{usage.peak_rss_p999_bytes / mib:,.0f} MiB (max {usage.peak_rss_max_bytes / mib:,.0f}), "
        f"CPU {usage.cpu_per_wall:.2f} cores a task, {usage.mean_task_seconds:.2f} s a task",
        soft_wrap=True,
    )
    console().print(
        f"machine: {found.machine_type} ({found.machine.cpus} vCPUs, "
        f"{found.machine.memory_gib:g} GiB), {found.pods_per_node} worker pods per node; "
        f"memory p99.9 + {margin:.0%}, CPU mean + {margin:.0%}",
        soft_wrap=True,
    )
    cost = (
        f"${found.cost_on_demand:,.2f} on demand, ~${found.cost_spot:,.2f} on spot VMs "
        f"(us-central1 list prices of {right_size.PRICES_AS_OF}; spot ~"
        f"{right_size.SPOT_FRACTION:.0%} of on demand)"
        if found.cost_on_demand is not None
        else "no price for this machine family"
    )
    console().print(
        f"next batch of {found.items:,} items within {within_hours:g} h: {found.nodes:,} "
        f"node{'' if found.nodes == 1 else 's'}, "
        f"{found.wall_hours:.2f} h, {cost}",
        soft_wrap=True,
    )
    nodes = found.nodes or 0
    vcpus = nodes * found.machine.cpus
    if nodes > right_size.GKE_MAX_NODES:
        console(stderr=True).print(
            f"[yellow]warning:[/yellow] {nodes:,} nodes is more than a GKE cluster holds "
            f"({right_size.GKE_MAX_NODES:,}): give the batch more time (--within-hours) or split it",
            soft_wrap=True,
        )
    elif vcpus > right_size.QUOTA_WORTH_CHECKING_VCPUS:
        console(stderr=True).print(
            f"[yellow]warning:[/yellow] {nodes:,} nodes need {vcpus:,} vCPUs of the region's "
            "quota (CPUS, or PREEMPTIBLE_CPUS on spot VMs), far more than a new project has: "
            "check it before the batch, `gcloud compute regions describe REGION --flatten=quotas "
            "--format='table(quotas.metric,quotas.limit,quotas.usage)'`, and ask for more",
            soft_wrap=True,
        )
    _print_pod(found.pod, found.pods_per_node, processes_per_run)


@app.command("gke-job-template")
def gke_job_template() -> None:
    """Print the base job template for a GKE (kubernetes) work pool."""
    from tqflow.gke.job_template import base_job_template

    print(json.dumps(base_job_template(), indent=2, sort_keys=True))
