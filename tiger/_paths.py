"""Private temporary directories short enough for ipc:// endpoints (no zmq: the pytest plugin makes
its run directory here before, or without, ever importing zmq)."""

from __future__ import annotations

import os
import tempfile

IPC_PATH_MAX = 107 - len(".pub")  # bytes of an ipc path; the PUB socket's is the command path + ".pub"
_ROOM = len("/w0000")  # what tiger puts in such a directory: an endpoint name


def path_bytes(path: str) -> int:
    """The length of ``path`` in bytes, as the kernel counts an ipc path (``sockaddr_un.sun_path``): a
    $TMPDIR of 53 characters, 93 bytes in UTF-8, was taken for short enough, and every run failed.
    ``UnicodeEncodeError`` for a path UTF-8 cannot carry (a lone surrogate, or the bytes of a name that
    is not UTF-8 as os.fsdecode gives them), which ZeroMQ refuses: it encodes a path in UTF-8."""
    return len(path.encode("utf-8"))


def _fits(path: str) -> bool:
    """``path`` can hold tiger's ipc endpoints (in UTF-8, at most IPC_PATH_MAX bytes with them)."""
    try:
        return path_bytes(path) + _ROOM <= IPC_PATH_MAX
    except UnicodeEncodeError:  # a $TMPDIR whose name is not UTF-8: ZeroMQ could not bind there
        return False


def short_temp_path(prefix: str) -> str:
    """The path of a private temporary directory, not made yet (``make_private_dir`` makes it):
    ``prefix`` and 16 random hex digits, under $TMPDIR, or under /tmp when $TMPDIR is too long for the
    ipc endpoints made in it, or not UTF-8 (the rule ``short_temp_dir`` follows)."""
    import secrets  # here: it imports hashlib, 3-5 ms the blocking client need not pay

    name = prefix + secrets.token_hex(8)
    path = os.path.join(tempfile.gettempdir(), name)
    return path if _fits(path) else os.path.join("/tmp", name)


def make_private_dir(path: str) -> None:
    """Make ``path`` a private (0700) directory of this user's, or check that it already is one (another
    process of the same run made it first); ``PermissionError`` naming it if it is anything else (a
    file, a link, another user's directory, one others may read)."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    import stat

    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} exists and is not a private directory of this user's: tiger will not use it")


def short_temp_dir(prefix: str) -> str:
    """A new private (0700) temporary directory whose endpoints fit in an ipc path: under $TMPDIR, or
    under /tmp when $TMPDIR is too long or not UTF-8."""
    path = tempfile.mkdtemp(prefix=prefix)
    if not _fits(path):
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    return path
