"""Local worker processes forked from one warm server process.

A worker imports Prefect, prefect-aws, prefect-gcp and cloud-files before its first task: about
5 s of CPU. A local fleet of N workers, and every replacement of a lost one, would pay that N times
on a laptop's few cores. Instead the fleet starts one server (``python -m tqflow.fleet.warm_workers``)
that imports the worker once and forks each worker from there: the first worker waits for the
import, the others start in a fraction of a second.

Each worker is still its own OS process, with the environment, working directory and stdout the
fleet gives it, running the worker's process entry (`tqflow.engine.process.main_from_spec`: its
signal handlers, stats line and exit codes). The server is single-threaded, since a fork copies
only the calling thread, and it never imports the fleet's ``__main__``, so a script without an
``if __name__ == "__main__"`` guard is safe (multiprocessing's forkserver would re-run it).

One thing a fork does not redo: Prefect reads its settings from the environment once, when it is
imported (its global settings context), so a forked worker has the server's Prefect settings. The
worker loop uses none of them (it never calls the Prefect API); everything else it reads from the
environment (AWS, GCS, the storage emulator) it reads when it builds its clients, in the worker.

Protocol, JSON lines: the fleet writes ``{"id", "spec", "env", "cwd", "stdout", "stderr"}``
(paths; ``stderr`` null for the server's own) to the server's stdin;
the server answers ``{"request": id, "started": pid}`` and, once that worker has ended,
``{"ended": pid, "returncode": code}`` (negative for a signal, as `subprocess.Popen` reports it).
The server exits when its stdin closes, i.e. when the fleet's process has ended; workers still
running then go on to their own end.

A stop reaches the server too: a Ctrl-C is SIGINT to the terminal's whole process group (the
fleet's process, the server, the workers). The workers stop on it themselves; the server, from
then on, forks nothing: a request it has read and not yet served (the first one waits seconds
for the worker's import) is answered ``{"request": id, "refused": why}``, never turned into a worker nobody
stops. On the fleet's side, a `WarmWorkerServer.start` interrupted before its answer came
stops the worker that answer names, so an interrupted launch leaves no worker behind either.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Any, Optional

from tqflow.errors import WorkerNotStartedError

#: How often the server looks for workers that ended; a worker's end is known at most this late.
REAP_SECONDS = 0.1
#: The exit code reported for a worker that ended after its server died (its real one is lost).
EXIT_STATUS_LOST = 255


class WarmWorker:
    """One worker forked by the server; the parts of `subprocess.Popen` a fleet uses."""

    def __init__(self, server: "WarmWorkerServer", pid: int) -> None:
        self._server = server
        self.pid = pid

    @property
    def returncode(self) -> Optional[int]:
        return self._server.returncode(self.pid)

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self._server.wait(self.pid, timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        return code

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:  # not reported ended, so the pid is still this worker's
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class WarmWorkerServer:
    """The parent's side: starts the server on first use, forks workers through it and follows
    their ends. Thread-safe; one per process (`warm_worker_server`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one request and its answer at a time
        self._ended = threading.Condition()
        self._returncodes: dict[int, int] = {}
        #: Answers by request id: a pid, or why the server refused.
        self._answers: dict[int, int | str] = {}
        #: Requests whose `start` was interrupted before its answer came: their workers are
        #: stopped as soon as they are known.
        self._abandoned: set[int] = set()
        self._requests = itertools.count(1)
        self._process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None

    def start(
        self,
        spec: dict[str, Any],
        stdout_path: str,
        env: Optional[dict[str, str]] = None,
        stderr_path: Optional[str] = None,
    ) -> WarmWorker:
        """Fork a worker running ``spec`` (see `tqflow.engine.process`), its stdout appended to
        ``stdout_path``, its stderr (its log) to ``stderr_path`` or else the server's (the
        terminal's), its environment ``env`` (default: this process's) and its working directory
        this process's."""
        request_id = next(self._requests)
        request = {
            "id": request_id,
            "spec": spec,
            "env": dict(os.environ if env is None else env),
            "cwd": os.getcwd(),
            "stdout": stdout_path,
            "stderr": stderr_path,
        }
        with self._lock:
            try:
                process = self._running_server()
                assert process.stdin is not None
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
                with self._ended:
                    while request_id not in self._answers and process.poll() is None:
                        self._ended.wait(1.0)
            except BaseException:  # a Ctrl-C, say: whatever the answer, no worker stays
                with self._ended:
                    if isinstance(pid := self._answers.pop(request_id, None), int):
                        _stop(pid)
                    else:  # not come yet, or the request was never sent
                        self._abandoned.add(request_id)
                raise
            with self._ended:
                answer = self._answers.pop(request_id, None)
            if answer is None:
                raise RuntimeError(f"the warm worker server exited with {process.returncode}")
        if isinstance(answer, str):
            raise WorkerNotStartedError(f"no local worker started: {answer}")
        return WarmWorker(self, answer)

    def returncode(self, pid: int) -> Optional[int]:
        with self._ended:
            return self._known_end(pid)

    def wait(self, pid: int, timeout: Optional[float]) -> Optional[int]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ended:
            while (code := self._known_end(pid)) is None:
                left = 1.0 if deadline is None else min(deadline - time.monotonic(), 1.0)
                if left <= 0:
                    return None
                self._ended.wait(left)  # woken by each answer; at least once a second
            return code

    def _known_end(self, pid: int) -> Optional[int]:
        """The worker's exit code once it has ended (call with ``_ended`` held). A worker of a
        server that died (killed with its process group, say) has nobody to report its end: it
        is known only to have ended, with `EXIT_STATUS_LOST`."""
        code = self._returncodes.get(pid)
        if code is None and self._process is not None and self._process.poll() is not None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                code = self._returncodes[pid] = EXIT_STATUS_LOST
        return code

    def _running_server(self) -> subprocess.Popen:
        """The server, started if need be, with a thread reading its answers (started here
        too if a start interrupted before it left the server without one)."""
        if self._process is None or self._process.poll() is not None:
            self._reader = None
            self._process = subprocess.Popen(
                [sys.executable, "-m", "tqflow.fleet.warm_workers"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        if self._reader is None or not self._reader.is_alive():
            self._reader = threading.Thread(
                target=self._read_answers,
                args=(self._process,),
                daemon=True,
                name="tqflow-warm-workers",
            )
            self._reader.start()
        return self._process

    def _read_answers(self, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            answer = json.loads(line)
            with self._ended:
                if "request" in answer:
                    started = answer.get("started", answer.get("refused"))
                    if answer["request"] in self._abandoned:
                        self._abandoned.discard(answer["request"])
                        if isinstance(started, int):
                            _stop(started)
                    else:
                        self._answers[answer["request"]] = started
                else:
                    self._returncodes[answer["ended"]] = answer["returncode"]
                self._ended.notify_all()
        process.wait()
        with self._ended:  # the server is gone: wake whoever waits for it
            self._ended.notify_all()


def _stop(pid: int) -> None:
    """SIGTERM to a worker nobody will follow: it releases what it holds and exits."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


_server: Optional[WarmWorkerServer] = None
_server_lock = threading.Lock()


def warm_worker_server() -> WarmWorkerServer:
    """This process's server (started on its first worker)."""
    global _server
    with _server_lock:
        if _server is None:
            _server = WarmWorkerServer()
        return _server


# -- the server process ------------------------------------------------------------------------


def _warm_up(spec: dict[str, Any]) -> None:
    """Build the blocks of a worker's spec once in the server (pydantic builds a model's
    validator on first use, and a block's import pulls in Prefect), so that every worker forked
    after it starts warm. The server itself imports only the engine: a spec names its blocks'
    classes (`tqflow.engine.specs`)."""
    from tqflow.engine.specs import block_from_spec

    for name in ("queue", "storage", "cave"):
        if spec.get(name):
            block_from_spec(spec[name])


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()  # before any fork: a child must not inherit unwritten answers


def _run_worker(request: dict[str, Any]) -> int:
    """In the forked child: become the worker the request describes, run it, return its exit code."""
    # Python's own defaults, as in a process of its own (the server's handler only notes them)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _stopped_by:  # the server was stopped before this fork: so is this worker
        return 128 + signal.Signals[_stopped_by[0]].value
    # A stop sent since the fork waited, blocked (see `_fork`): it acts now, by the defaults.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    # as `python -m` would: the working directory and PYTHONPATH first on the import path
    for entry in reversed(
        [request["cwd"], *filter(None, request["env"].get("PYTHONPATH", "").split(os.pathsep))]
    ):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, request["stdout"]), (2, request.get("stderr"))):
        if path:
            out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.dup2(out, fd)
            os.close(out)
    from tqflow.engine.process import main_from_spec

    return main_from_spec(request["spec"])


def _fork(request: dict[str, Any]) -> int:
    # The stop signals are blocked across the fork: one reaching the child before it has set
    # its own handlers would run the server's (a Python handler runs at the next bytecode,
    # and by then the child has replaced it, so the signal was lost and the worker ran on).
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOPS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOPS)
        return pid
    code = 1
    try:
        code = _run_worker(request)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the worker's end, whatever it was: report it, never return to the loop
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
    return 0  # not reached


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _answer({"ended": pid, "returncode": os.waitstatus_to_exitcode(status)})


#: The signals that stop a worker, and the server's forking.
_STOPS = {signal.SIGINT, signal.SIGTERM}
#: The stop signals the server has received, by name: from the first on, it forks nothing.
_stopped_by: list[str] = []


def serve() -> None:
    """The server's loop: fork a worker per request line, report each one's end; after a
    SIGINT or SIGTERM, refuse every request (the batch is stopping)."""

    def stop_forking(signum: int, frame: Any) -> None:
        _stopped_by.append(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_forking)
    from tqflow.engine import process  # noqa: F401  (the worker every fork runs)

    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], REAP_SECONDS)
        if readable:
            chunk = os.read(0, 1 << 20)
            if not chunk:
                break  # the fleet's process ended
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                if not _stopped_by:
                    with contextlib.suppress(Exception):  # the worker reports a bad spec itself
                        _warm_up(request["spec"])
                answer: dict[str, Any] = {"request": request.get("id")}
                if _stopped_by:  # asked again after the warm-up: a signal may come during it
                    answer["refused"] = f"the batch is stopping ({_stopped_by[0]} received)"
                else:
                    answer["started"] = _fork(request)
                _answer(answer)
        _reap()
    _reap()


if __name__ == "__main__":
    serve()
