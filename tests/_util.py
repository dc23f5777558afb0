"""Helpers shared by tiger's tests."""

from __future__ import annotations

import os
import selectors
import subprocess


def read_line(proc: subprocess.Popen[str], timeout: float = 10.0) -> str:
    """One line of the process's stdout, waiting at most ``timeout``."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(timeout), f"no output within {timeout}s"
    return proc.stdout.readline()


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
