"""Helpers shared by tiger's tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from tiger._cli import DEFAULT_URL

# A url whose host never resolves (.invalid, RFC 2606), on the default port: nothing binds or connects there.
UNRESOLVED_HOST = "tiger-no-such-host.invalid"
UNRESOLVED = f"tcp://{UNRESOLVED_HOST}:{DEFAULT_URL.rsplit(':', 1)[1]}"


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """One line of the process's stdout, waiting at most ``timeout``. Read by a thread: a line that came with
    the one before waits in the stream's own buffer, where a ``select`` on its descriptor does not see it (a
    builder printing two lines at once: the second "came" only after 30 s, 2 runs in 6 on a loaded machine,
    and the test failed), and a ``select`` that sees part of a line lets ``readline`` block for the rest."""
    stdout = proc.stdout
    assert stdout is not None
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert got, f"no output within {timeout}s"
    return got[0]


def default_sigint() -> None:
    """``preexec_fn`` of a process a test sends SIGINT (Ctrl-C): it starts with SIGINT's default action, as
    from a terminal, so its Python raises KeyboardInterrupt (and SIG_DFL passes on to its own children). A
    process started with SIGINT ignored inherits that (the suite run from a background job, ``nohup .ci/run
    &``), and Python then installs no handler: a Ctrl-C does nothing. (``restore_signals`` leaves SIGINT be.)"""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def held_to_modes() -> list[str]:
    """The words that run a command held to file modes (nothing for a user; root makes files anywhere, and
    without CAP_DAC_OVERRIDE is held to the modes): skips the test if root cannot drop it (no setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--inh-caps=-dac_override", "--bounding-set=-dac_override"]


def alive(pid: int) -> bool:
    """Whether process ``pid`` is running (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


class Sockets:
    """``open_socket(kind, url)`` -> a socket (connected unless url is None); ``open_socket.monitor(sock,
    events)`` -> a monitor socket of it. Every one is closed with linger=0 after the test, passed or failed.

    pyzmq's own suite does this (its tests/conftest.py: a socket factory fixture tracking what it made).
    Each test has a context of its own, terminated after the sockets are closed: that hangs while any
    socket of it is open, so a socket made around the factory is closed after 5 s and fails the test
    instead of hanging the run.
    """

    def __init__(self) -> None:
        self.context = zmq.Context()
        self.opened: list[zmq.Socket[Any]] = []

    def __call__(self, kind: int, url: str | None) -> zmq.Socket[Any]:
        sock = self._track(self.context.socket(kind))
        if url is not None:
            sock.connect(url)
        return sock

    def monitor(self, sock: zmq.Socket[Any], events: int) -> zmq.Socket[Any]:
        return self._track(sock.get_monitor_socket(events))

    def _track(self, sock: zmq.Socket[Any]) -> zmq.Socket[Any]:
        self.opened.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        return sock

    def close(self) -> None:
        for sock in reversed(self.opened):  # monitors before the sockets they watch
            sock.close(linger=0)
        term = threading.Thread(target=self.context.term, daemon=True)
        term.start()
        term.join(5)
        if term.is_alive():
            strays = [sock for sock in list(self.context._sockets) if not sock.closed]
            for sock in strays:
                sock.close(linger=0)
            term.join(5)
            raise AssertionError(f"{len(strays)} zmq socket(s) opened around the open_socket fixture were left open")


@contextlib.contextmanager
def script_process(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -c SCRIPT ARGS`` (dedented) with pipes to its stdin and stdout, for a test to talk to and
    signal; after the test, resumed if stopped, killed if still running, reaped, its pipes closed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]


def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Return once process ``pid`` is stopped (state T in /proc), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        assert time.monotonic() < deadline, f"process {pid} did not stop"
        time.sleep(0.01)  # sleep-ok: polling /proc for the stop, with a deadline
