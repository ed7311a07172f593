"""Options that several ``tqflow`` commands share, declared once.

- `target_options`: where a command works — ``--batch``, ``--data`` and, as the command needs
  them, ``--queue`` / ``--queue-block`` and ``--storage-block`` — handed to the command as one
  `Target`.
- `worker_options`: one ``--flag`` per field of `WorkerOptions`, handed to the command as one
  validated model, so a new worker option reaches ``tqflow work`` without a line here.

Both add parameters to the command's signature, which is what typer reads.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, TypeVar, get_origin

import typer
from pydantic import ValidationError

from tqflow.engine.messages import check_batch
from tqflow.engine.options import WorkerOptions
from tqflow.errors import CLIInputError

F = TypeVar("F", bound=Callable[..., Any])

#: The embedded setup's folder when --data is not given.
DEFAULT_DATA = Path("tqflow-data")


@dataclass(frozen=True)
class Target:
    """The batch a command works on, its queue and its storage."""

    batch: str
    data: Path = DEFAULT_DATA
    queue_name: Optional[str] = None
    queue_block: Optional[str] = None
    storage_block: Optional[str] = None

    def __post_init__(self) -> None:
        check_batch(self.batch)  # before anything is read, written or run

    def queue(self, must_exist: bool = False) -> Any:
        """The saved queue block named by --queue-block, or the embedded SQLite queue."""
        from blocks.queues.base import TaskQueue

        if self.queue_block:
            found = load_block_option(self.queue_block, TaskQueue, "--queue-block")
        else:
            from blocks.queues.local import LocalTaskQueue

            found = LocalTaskQueue(
                path=str(self.folder() / "queue.sqlite"), queue_name=self.queue_name or self.batch
            )
        if must_exist and not found.exists():
            where = (
                f"block {self.queue_block}" if self.queue_block else f"{self.data / 'queue.sqlite'}"
            )
            raise CLIInputError(
                f"there is no queue {found.queue_name!r} ({where}): queue tasks first with "
                f"`tqflow enqueue ... --batch {self.batch}`, or name the queue with --queue / "
                "--queue-block"
            )
        return found

    def storage(self) -> Any:
        """The saved storage block named by --storage-block, or the --data folder."""
        from blocks.storage import CloudFilesStorage

        if self.storage_block:
            return load_block_option(self.storage_block, CloudFilesStorage, "--storage-block")
        return CloudFilesStorage(cloudpath=f"file://{self.folder()}")

    def folder(self, writable: bool = False) -> Path:
        return data_folder(self.data, writable)

    def check_writable(self) -> None:
        """For a command that writes: the --data folder, when the queue or the storage is
        there, made if missing and checked writable (a read-only one failed inside SQLite
        with "unable to open database file")."""
        if not (self.queue_block and self.storage_block):
            self.folder(writable=True)

    def check_writable_storage(self) -> None:
        """For a command that writes results: the --data folder, when the storage is there
        (checked before a flow starts, not as its traceback)."""
        if not self.storage_block:
            self.folder(writable=True)

    @property
    def names_queue(self) -> bool:
        """Whether the queue was named (it may hold other batches' messages)."""
        return bool(self.queue_name or self.queue_block)

    def flags(self) -> str:
        """The options that reach the same queue again, for the hints a command prints."""
        flags = [f"--batch {self.batch}"]
        if self.queue_block:
            flags.append(f"--queue-block {self.queue_block}")
        else:
            if self.queue_name:
                flags.append(f"--queue {self.queue_name}")
            if self.data != DEFAULT_DATA:
                flags.append(f"--data {self.data}")
        return " ".join(flags)


def data_folder(data: Path, writable: bool = False) -> Path:
    """``--data``, checked to be a folder (or not there yet); with ``writable``, made if
    missing and checked to be writable, before anything is queued or a flow starts."""
    if data.exists() and not data.is_dir():
        raise CLIInputError(
            f"--data {data} is a file: give the folder of the embedded setup (it holds "
            "queue.sqlite and the batches' outputs), e.g. --data tqflow-data"
        )
    if writable:
        try:
            data.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CLIInputError(
                f"--data {data} cannot be made ({exc.strerror}): give a folder you can write, "
                "e.g. --data ~/tqflow-data"
            ) from None
        if not os.access(data, os.W_OK | os.X_OK):
            raise CLIInputError(
                f"--data {data} is not writable (the queue and the outputs are written there): "
                "give a folder you can write, e.g. --data ~/tqflow-data"
            )
    return data


def load_block_option(slug_and_name: str, kind: Any, option: str) -> Any:
    """The saved block ``slug_and_name`` of type ``kind``; errors name ``option``."""
    import blocks  # noqa: F401  (registers tqflow's block types)
    from blocks.slugs import load_block

    try:
        return load_block(slug_and_name, kind)
    except ValueError as exc:
        raise CLIInputError(f"{option}: {exc}") from None


def _option(
    name: str, annotation: Any, default: Any, *decls: str, **info: Any
) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=typer.Option(default, *decls, **info),
        annotation=annotation,
    )


_TARGET = {
    "batch": _option("batch", str, "demo", "--batch", "-b", help="Name of the batch."),
    "data": _option(
        "data",
        Path,
        DEFAULT_DATA,
        "--data",
        envvar="TQFLOW_DATA",
        help="Folder of the embedded setup.",
    ),
    "queue_name": _option(
        "queue_name", Optional[str], None, "--queue", help="Queue name (default: the batch name)."
    ),
    "queue_block": _option(
        "queue_block",
        Optional[str],
        None,
        "--queue-block",
        help="Saved queue block, e.g. sqs-task-queue/prod.",
    ),
    "storage_block": _option(
        "storage_block",
        Optional[str],
        None,
        "--storage-block",
        help="Saved storage block, e.g. cloud-files-storage/results.",
    ),
}


#: ``--data`` for a command that takes no other target option.
DATA_OPTION = _TARGET["data"].default


def _with_parameters(
    command: F, argument: str, added: list[inspect.Parameter], build: Callable[..., Any]
) -> F:
    """``command`` taking the ``added`` parameters in place of ``argument``, which
    ``build(**values_of_added)`` makes."""
    names = {p.name for p in added}
    signature = inspect.signature(command)

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        values = {n: kwargs.pop(n) for n in names if n in kwargs}
        return command(*args, **kwargs, **{argument: build(**values)})

    parameters = []
    for p in signature.parameters.values():
        parameters += added if p.name == argument else [p]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return run  # type: ignore[return-value]


def target_options(*, queue: bool = True, storage: bool = True) -> Callable[[F], F]:
    """Give the command ``--batch`` / ``--data`` (and ``--queue`` / ``--queue-block``,
    ``--storage-block`` as asked) as its ``target: Target`` argument."""
    wanted = ["batch", "data"] + (["queue_name", "queue_block"] if queue else [])
    wanted += ["storage_block"] if storage else []

    return lambda command: _with_parameters(command, "target", [_TARGET[n] for n in wanted], Target)


#: Flags also kept under the names users already type.
_FLAG_ALIASES = {"task_timeout_seconds": "--task-timeout", "import_modules": "--import-module"}


def _flags(field: str) -> list[str]:
    """The flags of a `WorkerOptions` field: ``--idle-seconds``, and its alias if it has one."""
    return [
        "--" + field.replace("_", "-"),
        *([_FLAG_ALIASES[field]] if field in _FLAG_ALIASES else []),
    ]


#: `WorkerOptions` fields that get no flag: ``--batch`` sets ``default_batch``, and a fleet
#: enforces ``memory_limit_mib`` and names its ``unit`` (`tqflow work` is one worker, in this
#: terminal, of no fleet).
_NOT_WORKER_FLAGS = ("default_batch", "memory_limit_mib", "unit")


def worker_options(**defaults: Any) -> Callable[[F], F]:
    """Give the command one ``--flag`` per `WorkerOptions` field (``--batch`` sets
    ``default_batch``) as its ``options: WorkerOptions`` argument; ``defaults`` are the
    command's own defaults for some fields."""
    added = []
    for name, field in WorkerOptions.model_fields.items():
        if name in _NOT_WORKER_FLAGS:
            continue
        annotation = field.annotation
        default = defaults.get(name, field.get_default(call_default_factory=True))
        if get_origin(annotation) is list:  # repeat the flag: --allow a --allow b; none: []
            annotation, default = Optional[List[str]], None
        added.append(_option(name, annotation, default, *_flags(name), help=field.description))

    def build(**values: Any) -> WorkerOptions:
        try:
            return WorkerOptions.of(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(
                f"{_flags(str(error['loc'][0]))[0]}: {error['msg']}" for error in exc.errors()
            )
            raise CLIInputError(problems) from None

    return lambda command: _with_parameters(command, "options", added, build)
