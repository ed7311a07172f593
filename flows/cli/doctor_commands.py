"""``tqflow doctor``: is the cluster setup ready for a batch? One line per check, each failure
with its fix; exit 1 if any failed.

What it asks, from this machine, with this machine's Prefect profile and credentials:

- the Prefect API answers, and takes this profile's credentials;
- the work pool exists, and a worker polls it;
- each deployment in the pool: every block it names by slug loads, and a Kubernetes
  deployment has its worker image;
- each storage block those deployments name can be written (a probe file, deleted after);
- each SQS queue they name, where it exists, has its dead-letter queue and answers this key.

A check that cannot run because an earlier one failed (no API: nothing else) is not run.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import typer

from flows.cli.app import app, console

#: A block slug as deployments pass them: ``block-type-slug/name``.
BLOCK_SLUG = re.compile(r"^[a-z0-9-]+/[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
#: Block types a tqflow deployment names.
BLOCK_TYPES = (
    "sqs-task-queue",
    "local-task-queue",
    "cloud-files-storage",
    "cave-credentials",
    "aws-credentials",
    "gcp-credentials",
)


@dataclass
class Check:
    """One line of the report: what was checked, and the fix when it failed."""

    what: str
    ok: bool
    detail: str

    def line(self) -> str:
        mark = "[green]ok  [/green]" if self.ok else "[red]FAIL[/red]"
        return f"{mark}  {self.what}: {self.detail}"


@app.command()
def doctor(
    work_pool: str = typer.Option(
        "tqflow-gke", "--work-pool", help="The work pool the batch's deployments run in."
    ),
) -> None:
    """Check the setup a batch needs: API, work pool and worker, blocks, bucket, queue, image."""
    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        console().print(check.line(), soft_wrap=True, highlight=False)

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    with get_client(sync_client=True) as client:
        report(_api(client, url))
        if checks[-1].ok:
            for check in _work_pool(client, work_pool):
                report(check)
            deployments = _deployments_in(client, work_pool)
            blocks: dict[str, Any] = {}
            for check in _deployment_checks(client, deployments, blocks):
                report(check)
            for slug, block in sorted(blocks.items()):
                for check in _resource_checks(slug, block):
                    report(check)
    failed = [c for c in checks if not c.ok]
    console().print(
        f"{len(failed)} of {len(checks)} checks failed" if failed else f"all {len(checks)} ok",
        soft_wrap=True,
    )
    if failed:
        raise typer.Exit(1)


def _api(client: Any, url: Optional[str]) -> Check:
    what = f"Prefect API {url or '(none set)'}"
    if not url:
        return Check(
            what,
            False,
            "PREFECT_API_URL is not set, so the CLI would start a temporary server of its own: "
            "set it (guide step 4: prefect config set PREFECT_API_URL=...)",
        )
    problem = client.api_healthcheck()
    if problem is not None:
        return Check(
            what,
            False,
            f"does not answer ({type(problem).__name__}): start the port-forward to the server "
            "(`kubectl -n tqflow port-forward svc/prefect-server 4200:4200`) or fix "
            "PREFECT_API_URL",
        )
    try:
        client.read_work_pools(limit=1)
    except Exception as exc:
        if _status(exc) == 401:
            return Check(
                what,
                False,
                "refuses this profile's credentials (401): set PREFECT_API_AUTH_STRING to "
                "admin:<password> (guide step 4), the password from the prefect-basic-auth "
                "Secret",
            )
        return Check(what, False, f"answers {type(exc).__name__}: {exc}")
    return Check(what, True, "answers, and takes this profile's credentials")


def _work_pool(client: Any, name: str) -> Iterable[Check]:
    from prefect.exceptions import ObjectNotFound

    what = f"work pool {name}"
    try:
        client.read_work_pool(name)
    except ObjectNotFound:
        yield Check(
            what,
            False,
            f"does not exist: create it (guide step 5, `prefect work-pool create {name} ...`), "
            "or name yours with --work-pool",
        )
        return
    workers = client.read_workers_for_work_pool(work_pool_name=name)
    online = [w for w in workers if str(getattr(w.status, "value", w.status)) == "ONLINE"]
    if not online:
        yield Check(
            what,
            False,
            "no worker polls it: install the Prefect worker (guide step 5, helm upgrade --install "
            "prefect-worker), and see its pod (`kubectl -n tqflow get pods`)",
        )
        return
    yield Check(what, True, f"exists, {len(online)} worker(s) polling it")


def _deployments_in(client: Any, work_pool: str) -> list[tuple[str, Any]]:
    """``(flow/deployment, deployment)`` for each deployment in the pool."""
    from prefect.client.schemas.filters import DeploymentFilter, WorkPoolFilter, WorkPoolFilterName

    found = client.read_deployments(
        deployment_filter=DeploymentFilter(),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[work_pool])),
    )
    flows: dict[Any, str] = {}
    named = []
    for deployment in found:
        if deployment.flow_id not in flows:
            flows[deployment.flow_id] = client.read_flow(deployment.flow_id).name
        named.append((f"{flows[deployment.flow_id]}/{deployment.name}", deployment))
    return sorted(named, key=lambda pair: pair[0])


def _deployment_checks(
    client: Any, deployments: list[tuple[str, Any]], blocks: dict[str, Any]
) -> Iterable[Check]:
    """Per deployment: its blocks load (kept in ``blocks`` by slug), and its image is set."""
    from prefect.blocks.core import Block

    from blocks.slugs import load_block

    if not deployments:
        yield Check("deployments", False, "none in this pool: deploy them (guide step 7)")
        return
    for name, deployment in deployments:
        problems = []
        for slug in _slugs(deployment.parameters):
            if slug not in blocks:
                try:
                    blocks[slug] = load_block(slug, Block)
                except Exception as exc:
                    blocks[slug] = None
                    problems.append(f"{slug} does not load ({_first_line(exc)})")
            elif blocks[slug] is None:
                problems.append(f"{slug} does not load")
        if problems:
            yield Check(
                f"deployment {name}",
                False,
                "; ".join(problems) + ": save it (guide step 6), or deploy with the block's name",
            )
        image = (deployment.job_variables or {}).get("image")
        if "image" in (deployment.job_variables or {}):
            if not image or "{{" in str(image):
                yield Check(
                    f"deployment {name}",
                    False,
                    "has no worker image: export TQFLOW_IMAGE as build_image.sh printed it "
                    "(guide step 2), then deploy again (guide step 7)",
                )
                continue
        if not problems:
            yield Check(
                f"deployment {name}",
                True,
                "its blocks load" + (f", image {image}" if image else ""),
            )


def _slugs(parameters: Any) -> list[str]:
    """The block slugs among a deployment's parameters (nested ones too)."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if BLOCK_SLUG.match(value) and value.split("/")[0] in BLOCK_TYPES:
                found.append(value)
        elif isinstance(value, dict):
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(parameters)
    return sorted(set(found))


def _resource_checks(slug: str, block: Any) -> Iterable[Check]:
    """What a storage or queue block reaches, asked from this machine."""
    from blocks import CloudFilesStorage, SQSTaskQueue

    if isinstance(block, CloudFilesStorage):
        yield _check(f"storage {slug} ({block.cloudpath})", lambda: _writable(block))
    elif isinstance(block, SQSTaskQueue):
        yield _check(f"queue {slug} ({block.queue_name})", lambda: _queue_ready(block))


def _check(what: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(what, True, probe())
    except Exception as exc:
        return Check(what, False, _first_line(exc))


def _writable(storage: Any) -> str:
    storage.check()
    probe = f".tqflow-doctor/{uuid.uuid4().hex}"
    storage.put(probe, b"tqflow doctor", content_type="text/plain")
    try:
        if storage.get(probe) != b"tqflow doctor":
            raise RuntimeError(f"{storage.url(probe)} did not read back as written")
    finally:
        storage.delete(probe)
    return "written, read back and deleted a probe file"


def _queue_ready(queue: Any) -> str:
    from tqflow.errors import QueueConfigError

    if not queue.exists():
        return f"not created yet: the first enqueue creates {queue.queue_name} and {queue.dlq_name}"
    if queue.redrive_policy() is None:
        raise QueueConfigError(
            f"SQS queue {queue.queue_name} has no dead-letter queue, so failing tasks would be "
            f"retried forever: attach {queue.dlq_name} (SQSTaskQueue.attach_dead_letter_queue())"
        )
    counts = queue.counts()
    return f"answers this key, with its dead-letter queue: {counts.pending:,} pending, {counts.dead:,} dead"


def _status(exc: BaseException) -> Optional[int]:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
