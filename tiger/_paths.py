"""Private temporary directories short enough for ipc:// endpoints (no zmq: the pytest plugin makes
its run directory here before, or without, ever importing zmq)."""

from __future__ import annotations

import os
import tempfile

IPC_PATH_MAX = 107 - len(".pub")  # characters of an ipc path; the PUB socket's is the command path + ".pub"
_ROOM = len("/w0000")  # what tiger puts in such a directory: an endpoint name


def short_temp_dir(prefix: str) -> str:
    """A new private (0700) temporary directory whose endpoints fit in an ipc path: under $TMPDIR, or
    under /tmp when $TMPDIR is too long."""
    path = tempfile.mkdtemp(prefix=prefix)
    if len(path) + _ROOM > IPC_PATH_MAX:
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    return path
