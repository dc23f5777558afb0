"""Private temporary directories short enough for ipc:// endpoints (no zmq: the pytest plugin makes
its run directory here before, or without, ever importing zmq)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator

from tiger._clock import wall
from tiger._errors import NoRoom, no_room, shown

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
    path = os.path.join(_temp_dir(), name)
    return path if _fits(path) else os.path.join("/tmp", name)


def _temp_dir() -> str:
    """``tempfile.gettempdir()``, or, where it finds no directory it can write a file in (each full, or past
    a file size limit: it writes one to try), $TMPDIR (or $TEMP, $TMP, /tmp) untried: a full $TMPDIR raised
    ``FileNotFoundError`` from every pytest run's configure, tests using tiger or not (the plugin names its
    run directory there); the directory's first use says why it cannot be made (``NoRoom``)."""
    try:
        return tempfile.gettempdir()
    except FileNotFoundError:
        return next((os.environ[name] for name in ("TMPDIR", "TEMP", "TMP") if os.environ.get(name)), "/tmp")


TEMP_REMEDY = "free space there, or set $TMPDIR to a directory on a file system with room"


def write_whole(path: str, text: str, remedy: str = TEMP_REMEDY) -> None:
    """Write ``text`` to the file ``path`` whole or not at all: written aside (``.NAME.PID`` beside it), then
    renamed over it. On any failure the aside file is removed (a full disk left it behind, as big as what
    fitted); a file system with no room raises ``NoRoom`` naming ``path``, the errno and ``remedy``."""
    folder, name = os.path.split(path)
    aside = os.path.join(folder, f".{name}.{os.getpid()}")
    try:
        with open(aside, "w") as f:  # (no room: said by write, or by the flush at close)
            f.write(text)
        os.replace(aside, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(aside)
        room = no_room(path, e, remedy) if isinstance(e, OSError) else None
        if room is not None:
            raise room from None
        raise


@contextlib.contextmanager
def room_for(path: str, remedy: str = TEMP_REMEDY) -> Iterator[None]:
    """An ``OSError`` of the block that says its file system had no room (``ROOM_ERRNOS``) raised as
    ``NoRoom`` naming ``path`` and ``remedy``; any other, as it is."""
    try:
        yield
    except OSError as e:
        room = no_room(path, e, remedy)
        if room is None:
            raise
        raise room from None


def touch(path: str, remedy: str = TEMP_REMEDY) -> None:
    """Make the empty file ``path`` (0600) if it is not there; ``NoRoom`` where the file system has no room
    even for that (no inode left, a directory that needs a block more)."""
    with room_for(path, remedy):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))


def make_private_dir(path: str) -> bool:
    """Make ``path`` a private (0700) directory of this user's (True), or check that it already is one
    (False: another process of the same run made it first); ``PermissionError`` naming it if it is anything
    else (a file, a link, another user's directory, one others may read); ``NoRoom`` where its file system
    has no room for it."""
    try:
        with room_for(path):
            os.mkdir(path, 0o700)
        return True
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} exists and is not a private directory of this user's: tiger will not use it")
    return False


RUN_DIR_PREFIX = "tiger-run-"  # the pytest plugin's run directories (``short_temp_path(RUN_DIR_PREFIX)``)
ALIVE = "alive"  # in a run directory: locked (shared) by every process of the run that uses it, for life
STALE_WITHOUT_ALIVE = 86400.0  # seconds after which a run directory of an older tiger (no ``alive``) is swept


def hold_run_dir(path: str, controller: int | None = None) -> tuple[int, bool]:
    """Make the run directory ``path`` (``make_private_dir``), or join it, and hold a shared ``flock`` on its
    ``alive`` file for as long as the returned descriptor is open (the process's life): while any process of
    the run holds it, ``sweep_ended_run_dirs`` cannot take it, and a lock that can be taken belongs to
    processes that all ended (pid reuse cannot fool it). Returns the descriptor and whether this process made
    the directory.

    No window in which a live run's directory can be swept by a run in the same pid namespace (a controller
    in a container sharing this /tmp looks ended from here: its directory then goes once no process of its run
    holds ``alive``, as between its xdist workers' end and its own): a sweep that takes ``alive`` between its making
    and the lock here removes the directory, holding the lock as it does; the lock here waits for it, then
    finds ``alive`` gone (not the file it locked), and makes the directory again. A directory with no
    ``alive`` yet is only swept a day old (``STALE_WITHOUT_ALIVE``).

    The process that makes it records the run's ``controller`` (pid) there, with its start time: the xdist
    controller may hold no lock (it may never use the directory until its workers have ended), and a
    directory is swept only once its controller has ended too.

    A file system with no room for it (or for ``alive``, or the controller's record) raises ``NoRoom``; a
    directory made here whose controller could not be recorded gets a ``no-room`` file (``NO_ROOM``, as far
    as there is room for an empty file) for the run's other processes to find: removed, another process
    that joined it meanwhile started the writer in a directory gone (a test's run)."""
    alive = os.path.join(path, ALIVE)
    for _ in range(10):
        made = make_private_dir(path)
        try:
            with room_for(alive):
                fd = os.open(alive, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:  # swept after the check above: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # (waits only for a sweep that took it: as long as its rmtree)
            if os.path.samestat(os.fstat(fd), os.lstat(alive)):
                if made and controller is not None:
                    _write_controller(path, controller)
                return fd, made
        except FileNotFoundError:
            pass
        except NoRoom:
            os.close(fd)
            with contextlib.suppress(OSError, NoRoom):  # (as far as there is room: its own NoRoom hid the record's)
                touch(os.path.join(path, NO_ROOM))
            raise
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # swept before the lock: what was locked is gone
    raise OSError(f"{path}: removed as it was made, ten times over (something else removes tiger's run directories)")


CONTROLLER = "controller"  # in a run directory: "PID START" of the run's controller (``hold_run_dir``)
NO_ROOM = "no-room"  # in a run directory: a process of the run found no room for a record every process needs


def _write_controller(path: str, pid: int) -> None:
    """Record ``pid``, the run's controller, and its start time in the run directory ``path`` (whole or not
    at all: ``write_whole``; ``NoRoom`` where its file system has none)."""
    write_whole(os.path.join(path, CONTROLLER), f"{pid} {process_start(pid)}")


def process_start(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (field 22 of ``/proc/PID/stat``, after the
    command name, which may hold spaces and parentheses); "" where there is no ``/proc`` or no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return ""
    return stat_line.rpartition(b")")[2].split()[19].decode()


def _controller_alive(folder: int) -> bool:
    """Whether the controller recorded in the run directory open at ``folder`` still runs: its pid is that of
    a live process (a zombie counts) that started when it did (pid reuse cannot fool it where there is a
    ``/proc``; elsewhere a reused pid keeps the directory). None recorded: False."""
    try:
        fd = os.open(CONTROLLER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        return False
    with os.fdopen(fd) as f:
        pid_text, _, start = f.read().partition(" ")
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process now has that pid
        return False
    return process_start(pid) == start


def sweep_ended_run_dirs(own: str) -> None:
    """Remove the run directories (``tiger-run-*``) of ended runs beside ``own``, this run's: the ones a run
    killed by SIGKILL or SIGTERM, or ended by ``os._exit``, left behind. Only real directories (not symbolic
    links, never followed) of this user's whose ``alive`` lock can be taken at once (LOCK_NB: never waits),
    so every process that used it has ended, and whose run's ``controller`` has ended too; one with no
    ``alive`` (an older tiger's) only when nothing in it changed for a day. Silent: nothing of this run
    depends on it, and a directory it cannot remove (another's doing) would otherwise be said again in
    every run."""
    parent, name = os.path.split(own)
    try:
        with os.scandir(parent) as entries:
            names = [e.name for e in entries if e.name.startswith(RUN_DIR_PREFIX) and e.name != name]
    except OSError:
        return
    for each in names:
        try:
            _remove_if_ended(os.path.join(parent, each))
        except Exception:  # gone already, no permission, a file system error: left as it is
            pass


def _remove_if_ended(path: str) -> None:
    folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)  # a link: ELOOP
    try:
        st = os.fstat(folder)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return
        try:
            alive = os.open(ALIVE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        except FileNotFoundError:  # an older tiger's run directory, or one being made (``hold_run_dir``)
            if wall() - _last_change(folder, st) > STALE_WITHOUT_ALIVE:
                _remove(path, st)
            return
        try:
            try:
                fcntl.flock(alive, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a live run's
                return
            if _controller_alive(folder):  # every process that used it has ended, but not the run: its controller
                return  # (an xdist controller at its end, its workers gone) goes on using it
            _remove(path, st)  # holding the lock: a process of that run joining now waits, then makes it again
        finally:
            os.close(alive)
    finally:
        os.close(folder)


def _last_change(folder: int, st: os.stat_result) -> float:
    """The latest mtime of the directory open at ``folder`` and of what is in it (not followed)."""
    latest = st.st_mtime
    with os.scandir(folder) as entries:
        for entry in entries:
            latest = max(latest, entry.stat(follow_symlinks=False).st_mtime)
    return latest


def _remove(path: str, st: os.stat_result) -> None:
    """``remove_tree`` of ``path`` if it is still the directory looked at (``st``)."""
    if os.path.samestat(os.lstat(path), st):
        remove_tree(path)


def remove_tree(path: str) -> None:
    """``shutil.rmtree(path, ignore_errors=True)`` for tiger's own small private directories (a writer's ipc
    directory, a run's directory: files, and one folder of them), made of ``os`` calls alone, following no
    link. Under pyfakefs, what tiger calls itself reaches the real disk, but what shutil calls for it several
    frames down did not, and on Python 3.13 rmtree then failed an assertion of its own (a real ``open`` of
    a directory its faked ``lstat`` had seen): see ``_unpatched.leave_tiger_alone``."""
    for root, folders, files in os.walk(path, topdown=False):
        for name in files + [f for f in folders if os.path.islink(os.path.join(root, f))]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in folders:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def short_temp_dir(prefix: str) -> str:
    """A new private (0700) temporary directory whose endpoints fit in an ipc path: under $TMPDIR, or
    under /tmp when $TMPDIR is too long or not UTF-8. ``NoRoom`` where its file system has no room for it."""
    base = _temp_dir()
    with room_for(os.path.join(base, f"{prefix}...")):
        path = tempfile.mkdtemp(prefix=prefix, dir=base)
    if not _fits(path):
        os.rmdir(path)
        with room_for(os.path.join("/tmp", f"{prefix}...")):
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


NEAR_A_KEY = range(36, 61)
"""Lengths of what may be a z85 key (40 characters) given with a little more or less: quoted, ``secret=``
before it, a character short."""


def missing_secret_file(path: str, field: str) -> str | None:
    """What an error says of a CurveZMQ secret key file's ``path`` (``field``: ``curve_secret``,
    ``--curve-secret``) where no file is, when it may not show the path: its length only. A path with no
    file there may be the key itself, near enough to a key's shape to pass for a path (quoted from a .env
    file, a character short), and the error printed it whole (a review). None (the path may be shown, as
    the error of a mistyped path should) when it names a file in a directory that exists, or is a bare name
    of a length far from a key's 40 characters (``NEAR_A_KEY``). For a path of about a key's length, only an
    absolute directory two levels deep or more counts: ``/`` and ``.`` are z85 characters, and a key beginning
    with ``/`` (a path in the root) was shown (a random key's test failed 1 time in about 85), as one
    beginning with ``./`` or with the name of a directory in the current one would be."""
    parent = os.path.dirname(path)
    near = len(path) in NEAR_A_KEY
    deep = os.path.isabs(parent) and len([part for part in parent.split(os.sep) if part]) >= 2
    in_a_directory = bool(parent) and os.path.isdir(parent) and (deep or not near)
    if in_a_directory or (not parent and not near):
        return None
    return (
        f"{field}: no file at the path given ({len(path)} characters; not shown, as it may be a key): give the "
        "path of DIR/tiger.key that tiger keygen DIR wrote"
    )


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
