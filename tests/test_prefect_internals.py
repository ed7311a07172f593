"""What tqflow relies on in Prefect's private code, checked so that an upgrade that changes it
fails here, saying what to look at, instead of silently: flows/cli/prefect_api.py starts
Prefect's temporary server in a process group of its own (so that the Ctrl-C meant for a
command does not stop the server it reports to), and Prefect has no option for that. What it
does is tested by the demo's Ctrl-C (tests/reliability/test_shutdown.py)."""

from __future__ import annotations

import inspect
import subprocess


def test_the_temporary_server_is_still_started_the_way_tqflow_starts_it_apart():
    from prefect.server.api import server

    why = (
        "flows/cli/prefect_api.py swaps `subprocess` in prefect.server.api.server around "
        "SubprocessASGIServer._run_uvicorn_command to add start_new_session=True; Prefect "
        "changed how it starts its temporary server: start it in a session of its own again"
    )
    assert server.subprocess is subprocess, why
    method = getattr(server.SubprocessASGIServer, "_run_uvicorn_command", None)
    assert method is not None and "subprocess.Popen(" in inspect.getsource(method), why
    # One instance per port, kept by the class: the subclass's, made first, is the one every
    # Prefect client starts.
    assert "_instances" in inspect.getsource(server.SubprocessASGIServer.__new__), why


def test_the_temporary_servers_start_still_takes_the_wait_tqflow_gives_it():
    from prefect.server.api import server

    start = inspect.signature(server.SubprocessASGIServer.start)
    assert "timeout" in start.parameters, (
        "flows/cli/prefect_api.py passes SubprocessASGIServer.start(timeout=...) a longer wait "
        "than Prefect's 20 s for a busy machine; Prefect changed the method: pass it again"
    )
