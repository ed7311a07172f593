"""A command in a pseudo-terminal, as a user runs it in theirs: a shell leads the session
whose controlling terminal is the pty, and runs the command as its foreground job (a process
group of its own), so Ctrl-C typed into it makes the terminal driver send SIGINT to that whole
group (the command and every child that shares it), and when the command ends the shell takes
the terminal back and whatever the command left behind goes on running, exactly as in a user's
terminal. (Were the command the session's leader, its end would hang up the terminal and
SIGHUP its group, killing what it left behind: a kindness no real terminal does.) No tmux
needed."""

from __future__ import annotations

import os
import pty
import re
import signal
import threading
import time
from pathlib import Path
from typing import Optional

#: A terminal control sequence (CSI: colours, styles, cursor moves).
ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class Terminal:
    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.command, self.env, self.cwd = command, env, cwd
        self._chunks: list[bytes] = []
        self.pid = 0
        self.fd = -1
        self._reader: Optional[threading.Thread] = None
        self._status: Optional[int] = None

    def __enter__(self) -> "Terminal":
        pid, fd = pty.fork()
        if pid == 0:  # the child: a new session, the pty its controlling terminal
            try:
                os.chdir(self.cwd)
                # bash with job control (set -m): the command a foreground job of its own;
                # the shell's exit status is the command's. The `exit` after it keeps bash from
                # exec'ing the command in its own place (it does for a last simple command),
                # which would make the command the session's leader again.
                shell = ["/bin/bash", "--norc", "--noprofile", "-c", 'set -m; "$0" "$@"; exit $?']
                os.execve(shell[0], shell + self.command, self.env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        # Read everything, so the command never blocks on a full terminal.
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the command and every process on the terminal are gone
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        """What the command wrote to the terminal, colours and all."""
        return b"".join(self._chunks).decode("utf-8", "replace")

    @property
    def text(self) -> str:
        """What a user reads on the terminal: the output without its colour and style codes
        (rich and Prefect's log handler colour what they write to a terminal)."""
        return ANSI_ESCAPE.sub("", self.output)

    def type_ctrl_c(self) -> None:
        """Ctrl-C typed at the keyboard: the terminal driver signals the foreground group."""
        os.write(self.fd, b"\x03")

    def wait(self, timeout: float) -> int:
        """The command's exit code (128 + N for a signal N); fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout:.0f} s:\n{self.output}")
            time.sleep(0.1)
        code = self._status
        return 128 - code if code < 0 else code

    def __exit__(self, *exc: object) -> None:
        if self._status is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the session's group: the command's own
            except ProcessLookupError:
                pass
            self.wait(timeout=60)
        if self._reader is not None:
            self._reader.join(timeout=10)
        os.close(self.fd)
