"""Move the secrets files of the cloud-volume / cloud-files / caveclient world into blocks.

A secrets folder (``~/.cloudvolume/secrets``) holds:

- ``aws-secret.json``: ``{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"
  (or "AWS_REGION"), "AWS_SESSION_TOKEN"?}`` -> prefect-aws ``AwsCredentials``
- ``google-secret.json``: a service account key -> prefect-gcp ``GcpCredentials``
- ``cave-secret.json``: ``{"token"}`` for the default CAVE server -> ``CAVECredentials``
- ``<server>-cave-secret.json``: a token for ``https://<server>`` -> ``CAVECredentials``

`read_secrets_folder` reads and checks every file first; `save_blocks` saves only when all of
them are good and none would overwrite a block unless asked, so an import is all or nothing.
Nothing here prints or returns a secret value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from prefect.blocks.core import Block
from pydantic import ValidationError

from blocks.cave import DEFAULT_SERVER, CAVECredentials
from tqflow.errors import CredentialsError

DEFAULT_FOLDER = Path("~/.cloudvolume/secrets")


@dataclass
class ImportedSecret:
    """One secrets file turned into an (unsaved) block."""

    file: Path
    block: Block
    name: str
    #: What the block is for, without secrets: region, project, server and datastack.
    about: str

    @property
    def slug(self) -> str:
        return f"{self.block.get_block_type_slug()}/{self.name}"


def check_block_name(name: str, what: str = "name") -> str:
    """Prefect block names: lowercase letters, digits and dashes. Raises `CredentialsError`
    naming the name and a valid spelling."""
    from prefect.types.names import raise_on_name_alphanumeric_dashes_only

    try:
        raise_on_name_alphanumeric_dashes_only(name, what)
    except ValueError:
        suggestion = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "lab"
        raise CredentialsError(
            f"{what} {name!r} cannot name a Prefect block: use lowercase letters, digits and "
            f"dashes, e.g. {suggestion!r}"
        ) from None
    return name


#: The kinds of secrets file, as ``--skip`` names them.
KINDS = ("aws", "google", "cave")


def read_secrets_folder(
    folder: Path,
    name: str = "default",
    datastack: Optional[str] = None,
    skip: Iterable[str] = (),
) -> list[ImportedSecret]:
    """Blocks for every known secrets file in ``folder``, named ``name`` (CAVE tokens of other
    servers: ``<name>-<server>``), but for the kinds in ``skip`` (of `KINDS`: a Google key
    that Workload Identity makes unneeded stays on this machine, unread). Raises
    `CredentialsError` listing every file that cannot be read, and what it should hold."""
    check_block_name(name, "--name")
    skip = set(skip)
    if skip - set(KINDS):
        raise CredentialsError(
            f"--skip {', '.join(sorted(skip - set(KINDS)))}: name a kind of secrets file, "
            f"one of {', '.join(KINDS)}"
        )
    folder = folder.expanduser()
    if folder.is_file():
        raise CredentialsError(
            f"{folder} is a file: pass the folder that holds it and the other secrets files, "
            f"--folder {folder.parent}"
        )
    if not folder.is_dir():
        raise CredentialsError(
            f"secrets folder {folder} does not exist: pass the folder that holds "
            "aws-secret.json / google-secret.json / cave-secret.json (--folder)"
        )
    found: list[ImportedSecret] = []
    problems: list[str] = []
    for path in sorted(folder.glob("*.json")):
        reader = _reader_for(path.name)
        if reader is None or kind_of(path.name) in skip:
            continue
        try:
            content = json.loads(path.read_text())
            if not isinstance(content, dict):
                raise ValueError("it holds no JSON object")
            found.append(reader(path, content, name, datastack))
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{path}: {_reason(exc)}")
    if problems:
        raise CredentialsError(
            "cannot import these secrets files (nothing was saved):\n  " + "\n  ".join(problems)
        )
    return found


def _reason(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"it has no {exc.args[0]!r} key"
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not valid JSON (line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, ValidationError):  # its text would quote the (secret) input
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def kind_of(filename: str) -> Optional[str]:
    """The kind (of `KINDS`) of a secrets file, by its name; None for other files."""
    if filename == "aws-secret.json":
        return "aws"
    if filename == "google-secret.json":
        return "google"
    if filename.endswith("cave-secret.json"):
        return "cave"
    return None


def _reader_for(filename: str) -> Optional[Callable[..., ImportedSecret]]:
    return {"aws": _aws, "google": _gcp, "cave": _cave}.get(kind_of(filename) or "")


def _aws(
    path: Path, content: dict[str, Any], name: str, datastack: Optional[str]
) -> ImportedSecret:
    from prefect_aws import AwsCredentials

    key_id, secret = content["AWS_ACCESS_KEY_ID"], content["AWS_SECRET_ACCESS_KEY"]
    region = content.get("AWS_DEFAULT_REGION") or content.get("AWS_REGION")
    if not region:
        # Every worker pod would fail at its first SQS call (botocore's NoRegionError): a
        # pod has no ~/.aws/config to fall back on.
        raise ValueError(
            'it names no region: add "AWS_DEFAULT_REGION": "<the region of your queue, e.g. '
            'us-east-1>" (SQS queues live in one region, and the workers have no other '
            "place to learn it)"
        )
    block = AwsCredentials(
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=content.get("AWS_SESSION_TOKEN"),
        region_name=region,
    )
    return ImportedSecret(path, block, name, f"region {block.region_name}")


def _gcp(
    path: Path, content: dict[str, Any], name: str, datastack: Optional[str]
) -> ImportedSecret:
    from prefect_gcp import GcpCredentials

    for key in ("client_email", "private_key", "token_uri"):
        content[key]  # a service account key has these; KeyError names the missing one
    try:
        block = GcpCredentials(service_account_info=content)
    except Exception as exc:  # google-auth: a private key it cannot parse
        raise ValueError(
            f"it is not a usable service account key ({type(exc).__name__}); download a new "
            "JSON key for the service account"
        ) from None
    return ImportedSecret(
        path, block, name, f"project {block.project}, account {content['client_email']}"
    )


def _cave(
    path: Path, content: dict[str, Any], name: str, datastack: Optional[str]
) -> ImportedSecret:
    server = path.name[: -len("cave-secret.json")].rstrip("-")
    token = content["token"]
    if not isinstance(token, str) or not token:
        raise ValueError("its 'token' is not a non-empty string")
    block = CAVECredentials(
        token=token,
        server_address=f"https://{server}" if server else DEFAULT_SERVER,
        datastack_name=datastack,
    )
    block_name = f"{name}-{_slug(server)}" if server else name
    return ImportedSecret(
        path, block, block_name, f"server {block.server_address}, datastack {datastack or '(none)'}"
    )


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def existing(named: Iterable[tuple[str, Block]]) -> list[str]:
    """Slugs of the blocks (``(name, block)``) that are saved already."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    taken = []
    with get_client(sync_client=True) as client:
        for name, block in named:
            slug = f"{block.get_block_type_slug()}/{name}"
            try:
                client.read_block_document_by_name(name, block.get_block_type_slug())
            except ObjectNotFound:
                continue
            taken.append(slug)
    return taken


def save_blocks(found: list[ImportedSecret], overwrite: bool = False) -> None:
    """Save every block, or none: refuses (naming them) when some exist and not ``overwrite``."""
    named = [(item.name, item.block) for item in found]
    if not overwrite:
        taken = existing(named)
        if taken:
            raise CredentialsError(
                f"blocks {', '.join(taken)} exist already; nothing was saved. Pass --overwrite "
                "to replace them, or --name to import under another name"
            )
    for name, block in named:
        block.save(name, overwrite=overwrite)


def register_block_types() -> list[str]:
    """Register tqflow's block types (and the credentials blocks they use) with the Prefect
    API in use, e.g. a remote server that does not have tqflow installed."""
    from prefect_aws import AwsCredentials
    from prefect_gcp import GcpCredentials

    from blocks import CAVECredentials, CloudFilesStorage, LocalTaskQueue, SQSTaskQueue

    types = [
        CAVECredentials,
        CloudFilesStorage,
        LocalTaskQueue,
        SQSTaskQueue,
        AwsCredentials,
        GcpCredentials,
    ]
    for block_type in types:
        block_type.register_type_and_schema()
    return [block_type.get_block_type_slug() for block_type in types]
