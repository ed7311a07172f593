"""The ``tqflow`` application: its command groups, ``--debug``, and the one place where an
error a user can fix becomes a sentence instead of a traceback (`errors_explained`). The
commands themselves are registered by the ``*_commands`` modules beside this one."""

from __future__ import annotations

import functools
import inspect
import sqlite3
from typing import Any, Callable, Iterator, Optional, TypeVar

import typer
from rich.console import Console

from tqflow.errors import TqflowError


def console(stderr: bool = False) -> Console:
    """A console sized when it prints: rich reads ``COLUMNS`` when a Console is made, so one
    made at import keeps whatever width the importing process had."""
    return Console(stderr=stderr)


def explain(exc: BaseException) -> Optional[str]:
    """One or two sentences for an error a user can fix, naming the input and the fix; None
    for a bug (the traceback is shown then)."""
    if isinstance(exc, TqflowError):
        return str(exc)
    unreachable = _prefect_api_unreachable(exc)
    if unreachable is not None:
        from prefect.settings import PREFECT_API_URL

        from flows.cli.prefect_api import unreachable as sentence

        return sentence(PREFECT_API_URL.value() or "(the temporary server)", unreachable)
    if _temporary_server_timed_out(exc):
        return (
            "Prefect's temporary server did not answer in time (a busy machine?): run the "
            "command again, give it longer (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS; "
            "tqflow waits 120 s unless it is set), or start a server (`prefect server start`) "
            "and set PREFECT_API_URL"
        )
    if isinstance(exc, sqlite3.DatabaseError):
        return (
            f"the local queue database cannot be read ({exc}): --data must be a folder whose "
            "queue.sqlite was written by tqflow; move a damaged file away to start afresh"
        )
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from or during, each once."""
    seen: set[int] = set()
    cause: Optional[BaseException] = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def _temporary_server_timed_out(exc: BaseException) -> bool:
    """Whether Prefect's wait for the temporary server it started timed out behind ``exc``
    (``RuntimeError("Timed out while attempting to connect to ephemeral ...")``)."""
    return any(
        isinstance(cause, RuntimeError)
        and str(cause).startswith("Timed out while attempting to connect to ephemeral")
        for cause in _causes(exc)
    )


def _prefect_api_unreachable(exc: BaseException) -> Optional[BaseException]:
    """The connection error behind ``exc`` when it says the Prefect API could not be reached:
    httpx's own, or Prefect's ``RuntimeError("Failed to reach API at ...")`` around one."""
    import httpx

    for cause in _causes(exc):
        if isinstance(cause, (httpx.ConnectError, httpx.ConnectTimeout)):
            return cause
        if isinstance(cause, RuntimeError) and str(cause).startswith("Failed to reach API"):
            return cause
    return None


F = TypeVar("F", bound=Callable[..., Any])


def errors_explained(command: F) -> F:
    """Run ``command``; an error a user can fix becomes one line on stderr and exit code 1
    (with ``--debug``, the traceback)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        context: Optional[typer.Context] = kwargs.pop(_CONTEXT, None)  # None: a direct call
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None or (context and context.find_root().params.get("debug")):
                raise
            console(stderr=True).print(f"[red]error:[/red] {message}", soft_wrap=True)
            raise typer.Exit(1) from None

    # typer hands a parameter annotated `typer.Context` the command line's context, through
    # which the root's --debug is read: the command's own parameters, and this one.
    signature = inspect.signature(command, eval_str=True)
    context = inspect.Parameter(
        _CONTEXT, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context, default=None
    )
    run.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), context]
    )
    return run  # type: ignore[return-value]


#: The name `errors_explained` gives the context it asks typer for.
_CONTEXT = "_tqflow_context"


class _Commands(typer.Typer):
    """Every command runs through `errors_explained`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)
        return lambda command: register(errors_explained(command))


app = _Commands(
    name="tqflow",
    help="Run cloud task-queue batch jobs as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dead_app = _Commands(help="Look at and redrive dead-lettered messages.", no_args_is_help=True)
app.add_typer(dead_app, name="dead-letters")
blocks_app = _Commands(
    help="Blocks: import a secrets folder, save the embedded setup's, register the types.",
    no_args_is_help=True,
)
app.add_typer(blocks_app, name="blocks")


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", envvar="TQFLOW_DEBUG", help="Show the traceback of an error."
    ),
) -> None:
    """(``--debug`` is read from the context by `errors_explained`.)"""


def main() -> None:
    """The ``tqflow`` command. Errors are explained by `errors_explained`, around each command,
    and nowhere else: a second catch here turned ``--debug``'s traceback back into one line."""
    app()
