"""The Prefect API a ``tqflow`` command runs its flows on, ready before the flow starts.

- ``PREFECT_API_URL`` set: that server, asked for its health first, so a server that is down or
  a wrong URL is one line naming the URL and the fix, not Prefect's retries and traceback.
- Unset: Prefect's temporary server, as for any flow called without a server, but in a process
  group of its own. A terminal's Ctrl-C goes to its whole foreground process group; Prefect
  starts its temporary server in that group, so the server stopped at once, and the command,
  left to report its interrupted run, retried for over a minute and ended with "cannot reach
  the Prefect API". Its own group keeps it up until the command has reported and exits (Prefect
  stops it then, at exit).
"""

from __future__ import annotations

import functools
import os
import subprocess
import types
from typing import Any, Optional

from tqflow.errors import CLIInputError


def prepare() -> None:
    """Make sure the flows this command runs have an API: check the configured one answers,
    or arrange Prefect's temporary server in its own process group."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        _check_reachable(url)
    else:
        _use_a_temporary_server_of_its_own()


def _check_reachable(url: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise CLIInputError(unreachable(url, problem))


def unreachable(url: str, problem: BaseException) -> str:
    """The sentence for a Prefect API that does not answer."""
    return (
        f"cannot reach the Prefect API at {url} ({type(problem).__name__}): start that server "
        "(`prefect server start`), fix PREFECT_API_URL, or unset it to run on a temporary "
        "server of this command's own"
    )


#: Seconds a command waits for its temporary Prefect server to answer.
TEMPORARY_SERVER_START_SECONDS = 120
_STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _use_a_temporary_server_of_its_own() -> None:
    """Make Prefect's temporary server one started with ``start_new_session``. Prefect's
    clients ask its class for the one instance of the default port; this subclass's instance,
    made first, is that one."""
    from prefect.server.api import server as prefect_server

    # Its telemetry, unless the user chose: a temporary server's first heartbeat races the
    # migrations of its new SQLite file and logs "database is locked" with a traceback, and
    # offline it logs "Failed to send telemetry"; both as ERROR, in the first command a
    # newcomer runs.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    class TemporaryServerOfItsOwn(prefect_server.SubprocessASGIServer):
        def start(self, timeout: Optional[int] = None) -> None:
            # Prefect's 20 s is short for a busy laptop or CI machine (the server's first
            # start migrates its database): a command waits TEMPORARY_SERVER_START_SECONDS
            # unless the user set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.
            if timeout is None and _STARTUP_SETTING not in os.environ:
                timeout = TEMPORARY_SERVER_START_SECONDS
            super().start(timeout)

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            # Prefect's own command and environment, in a new session (process group).
            module_subprocess = prefect_server.subprocess
            prefect_server.subprocess = types.SimpleNamespace(
                Popen=functools.partial(subprocess.Popen, start_new_session=True)
            )
            try:
                return super()._run_uvicorn_command()
            finally:
                prefect_server.subprocess = module_subprocess

    TemporaryServerOfItsOwn()
