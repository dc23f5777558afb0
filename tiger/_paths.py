"""Private temporary directories short enough for ipc:// endpoints (no zmq: the pytest plugin makes
its run directory here before, or without, ever importing zmq)."""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from tiger._errors import shown

IPC_PATH_MAX = 107 - len(".pub")  # bytes of an ipc path; the PUB socket's is the command path + ".pub"
PATH_MAX = 4096 - 1  # bytes of a path the kernel takes (Linux's PATH_MAX holds its NUL)
NAME_MAX = 255  # bytes of one name in a path (Linux's, and most file systems')
DATA_ROOM = len("/snapshot.tmp")  # the longest name the writer puts in its data directory (tiger._log)
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


def check_path(value: object, field: str, *, room: int = 0, names: str = "a path") -> str:
    """``value`` (a str, bytes or os.PathLike path) as the str a child process's command line and the
    os functions take, a name that is not UTF-8 held as os.fsdecode gives it (it works: the writer's
    messages show it escaped). ``TypeError`` for another type and ``ValueError`` for a path no process
    could use, each naming ``field`` (and what it ``names``): empty, holding a NUL (a command line cannot carry it: Popen's bare
    "embedded null byte"), or longer than the kernel takes once made absolute, with ``room`` bytes more
    for the names put in it (a name past ``NAME_MAX`` bytes, the whole past ``PATH_MAX``)."""
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{field} must be a path (str, bytes or os.PathLike), not {type(value).__name__}")
    path = os.fspath(value)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path.strip():
        raise ValueError(f"{field} must name {names}, got {path!r}")
    if "\0" in path:
        raise ValueError(f"{field}: a path cannot hold a NUL character (no command line or file name can): {shown(path)}")
    whole = os.fsencode(os.path.abspath(path))
    longest = max(map(len, whole.split(b"/")))
    if longest > NAME_MAX or len(whole) + room > PATH_MAX:
        raise ValueError(
            f"{field}: a path may be at most {PATH_MAX - room} bytes made absolute, each name in it at most "
            f"{NAME_MAX}; got {len(whole)} bytes, its longest name {longest}: {shown(path)}"
        )
    return path


_KINDS = {
    stat.S_IFREG: "a file",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
}


def in_the_way(path: str) -> str | None:
    """What keeps a directory from being made or opened at ``path``, found by looking (nothing is made or
    changed): a file or other non-directory there or at the first of its parents that exists, or a symbolic
    link to nothing (``os.makedirs`` said only "File exists" of ``tiger serve --data /etc/passwd``, and of a
    dangling link). None when nothing is in the way: a permission or a read-only file system, the attempt
    itself says."""
    path = os.path.abspath(path)
    at = path
    while True:
        try:
            st = os.stat(at)
        except (FileNotFoundError, NotADirectoryError):  # (not a directory: a parent of it, found further up)
            if os.path.islink(at):
                link = f"{at} is a symbolic link to {os.readlink(at)}, which does not exist"
                return link if at == path else f"{path} cannot be made: {link}"
            parent = os.path.dirname(at)
            if parent == at:
                return None
            at = parent
            continue
        except (OSError, ValueError):  # (a loop of links, no permission to look: the attempt says)
            return None
        if stat.S_ISDIR(st.st_mode):
            return None
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a directory")
        what = f"{at} is {kind}, not a directory"
        return what if at == path else f"{path} cannot be made: {what}"


def ipc_path_unusable(url: str) -> tuple[int, str] | None:
    """Why a writer must not bind an ipc ``url`` (``(errno, reason)``), found by looking: a directory at its
    path (libzmq said "Address already in use"), or a file that is not a socket at it or at the ``.pub``
    beside it (its PUB socket's): libzmq's bind unlinks whatever is at the path, so ``tiger serve --url
    ipc:///dev/null`` (as root) deleted /dev/null, and any file named by mistake went the same way (a user
    trial). Symbolic links count as not sockets. None for any other url, or when both are free or stale
    sockets (or cannot be seen: the bind then says)."""
    path = url[len("ipc://") :] if url.startswith("ipc://") else ""
    if not path or path.startswith("@") or path.endswith("*"):
        return None
    if os.path.isdir(path):
        return errno.EISDIR, "an ipc path must name a socket file, not a directory"
    for each in (path, path + ".pub"):
        try:
            mode = os.lstat(each).st_mode
        except OSError:
            continue
        if not stat.S_ISSOCK(mode):
            return errno.EEXIST, f"{shown(each)} exists and is not a socket; a writer binding there would delete it"
    return None
