"""Durability: a snapshot file plus an append-only log of changes, in one data directory.

Files in DIR:
- ``lock``: holds the pid of the one writer using DIR. That writer holds a flock on DIR itself and one on
  ``lock``: the directory's survives ``rm DIR/lock`` (a second writer would have made a new lock file and
  locked it), the file's keeps out writers of earlier versions, which lock only the file.
- ``snapshot``: one framed entry, the whole content at the start of log generation G.
- ``log.G``: framed entries, one packed change each, applied after that snapshot.

An entry is ``GUARD | crc32 of the next 12 bytes (u32 LE) | MARKER | length (u32 LE) | crc32 of the
payload (u32 LE) | payload``, so a damaged one is recognisable, and so is its extent while its header is
whole: a record's bytes may hold anything, whole entries too (a copy of a log), so only a header whose own
CRC holds says where the next entry begins. On start, reading from the first byte:
- a damaged entry whose header is whole is passed over by its length: what its payload holds is never
  taken for an entry. One that runs past the end of the file is a torn tail (a crash mid-append leaves a
  prefix of the entry, its header first), whatever bytes it holds;
- a damaged header (or a few bytes too short for one) does not say where the next entry begins: a valid
  entry found at any later byte is taken for one;
- a damaged entry followed by a valid one is corruption: the start stops and nothing on disk is changed.
  With none after it, the log is cut at the first damaged entry (a torn tail).
Entries an earlier version wrote (``MARKER | length | crc32 | payload``: what follows the guard) are read
too; a damaged one has no extent to trust, as a damaged header. The guard makes an earlier version refuse
a log of this one (it takes the guard for a damaged entry with the valid one after it) rather than cut
it as a torn tail.

A compaction never stops the writer for long: it starts ``log.G+1`` at once (later
changes go there), takes a shallow view of the store (its records are frozen, so the
view stays the store as it was), and writes the snapshot of generation G+1 a step at
a time between the writer's other work (``snapshot.tmp``, then fsync, rename, fsync
the directory), and only then removes ``log.G``. On start, the snapshot's generation g
is replayed with every ``log.k``, k >= g, in order: a crash at any point leaves either
the old snapshot with its logs or the new one with its (possibly absent) log.

Every file is opened relative to the directory the writer opened at start (``dir_fd``), never by its
path again: a writer whose directory was removed or moved cannot write into (or compact over, or remove
the logs of) another directory made at its path, a second writer's. Before a group's first append and
after its commit (the fsync, if any), the writer checks that its log is still the file at its path (one
stat): ``DataDirLost`` when the directory or the log was removed, moved or replaced under it. At each
tick and before a compaction it checks the other files a start reads the same way, with their sizes
(``check_kept``): the snapshot, and a log before the current one that no snapshot in place holds yet.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from tiger._clock import monotonic
from tiger._errors import DataDirLost, TigerError
from tiger._paths import in_the_way

log = logging.getLogger("tiger.writer")

MARKER = b"TGR\x01"
GUARD = b"TGR\x02"
HEADER = struct.Struct("<4sI4sII")  # GUARD | crc32 of the 12 bytes after it | MARKER | length | crc32 of the payload
OLD_HEADER = struct.Struct("<4sII")  # MARKER | length | crc32 of the payload: an entry of an earlier version
_GUARDED = HEADER.size - OLD_HEADER.size  # bytes of the guard, before the old-style header
FSYNC_POLICIES = ("always", "everysec", "never")
COMPACT_BYTES = 64 * 1024 * 1024  # compact automatically once the log grows past this
STEP_BYTES = 512 * 1024  # bytes of snapshot a compaction writes per step (a few ms of the writer's time)


class Corrupt(TigerError):
    """A data directory whose log is damaged before its end: nothing was changed on disk."""


class Locked(TigerError):
    """Another writer holds the data directory."""


def frame(payload: bytes) -> bytes:
    return _header(len(payload), zlib.crc32(payload)) + payload


def _header(length: int, crc: int) -> bytes:
    """The header of an entry whose payload has ``length`` bytes and CRC32 ``crc``."""
    old = OLD_HEADER.pack(MARKER, length, crc)
    return HEADER.pack(GUARD, zlib.crc32(old), MARKER, length, crc)


def _header_at(data: bytes | memoryview, offset: int) -> tuple[int, int, int, bool] | None:
    """(payload start, end, payload's crc32, whether that end can be trusted) of the header at ``offset``;
    None when there is no whole header there (or one whose own CRC fails). An entry of an earlier version
    has no CRC of its header: its end is not to be trusted when its payload's CRC fails."""
    if offset + HEADER.size <= len(data):
        guard, check, marker, length, crc = HEADER.unpack_from(data, offset)
        if guard == GUARD:
            if marker != MARKER or zlib.crc32(data[offset + _GUARDED : offset + HEADER.size]) != check:
                return None
            return offset + HEADER.size, offset + HEADER.size + length, crc, True
    if offset + OLD_HEADER.size <= len(data):
        marker, length, crc = OLD_HEADER.unpack_from(data, offset)
        if marker == MARKER:
            return offset + OLD_HEADER.size, offset + OLD_HEADER.size + length, crc, False
    return None


def _entry_at(data: bytes | memoryview, offset: int) -> tuple[int, int] | None:
    """(payload start, end) of a valid entry at ``offset``, or None."""
    found = _header_at(data, offset)
    if found is None:
        return None
    start, end, crc, _ = found
    if end > len(data) or zlib.crc32(data[start:end]) != crc:
        return None
    return start, end


def _valid_after(data: bytes, offset: int) -> int | None:
    """The offset of a valid entry that begins after ``offset`` (the first, but for entries overlapping
    each other), if any. Every entry holds ``MARKER``: at its start (an earlier version's) or after its
    guard."""
    view = memoryview(data)
    found = data.find(MARKER, offset + 1)
    while found != -1:
        if found - _GUARDED > offset and _entry_at(view, found - _GUARDED) is not None:
            return found - _GUARDED
        if _entry_at(view, found) is not None:
            return found
        found = data.find(MARKER, found + 1)
    return None


def scan(data: bytes) -> tuple[list[bytes], int]:
    """The payloads of the valid entries and the offset where valid data ends (see the module's docstring).

    Raises ``Corrupt`` when a damaged entry has a valid one after it.
    """
    view = memoryview(data)
    payloads: list[bytes] = []
    offset = 0
    damaged: int | None = None  # the first damaged entry's offset
    size, unpack, crc32 = len(data), HEADER.unpack_from, zlib.crc32
    while offset < size:
        if offset + HEADER.size <= size:  # (a valid entry of this version, inline: a start reads millions)
            guard, check, marker, length, crc = unpack(data, offset)
            start = offset + HEADER.size
            end = start + length
            if (
                guard == GUARD
                and marker == MARKER
                and end <= size
                and crc32(view[offset + _GUARDED : start]) == check
                and crc32(view[start:end]) == crc
            ):
                if damaged is not None:
                    raise Corrupt(f"damaged entry at byte {damaged} followed by a valid one at byte {offset}")
                payloads.append(data[start:end])
                offset = end
                continue
        found = _header_at(view, offset)
        if found is not None:
            start, end, crc, trusted = found
            if end <= size and zlib.crc32(view[start:end]) == crc:
                if damaged is not None:
                    raise Corrupt(f"damaged entry at byte {damaged} followed by a valid one at byte {offset}")
                payloads.append(bytes(view[start:end]))
                offset = end
                continue
            if trusted:  # the next entry begins at its end (past the end of the file: a torn tail)
                damaged = offset if damaged is None else damaged
                offset = end
                continue
        # no header to trust: where the next entry begins is unknown
        damaged = offset if damaged is None else damaged
        after = _valid_after(data, offset)
        if after is not None:
            raise Corrupt(f"damaged entry at byte {damaged} followed by a valid one at byte {after}")
        break
    return payloads, len(data) if damaged is None else damaged


def _fsync_dir(fd: int) -> None:
    """Make the entries of the directory open at ``fd`` durable (a file made, renamed or removed there)."""
    os.fsync(fd)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _kept_as(st: os.stat_result) -> tuple[int, int, int]:
    """What ``DataDir.check_kept`` compares of a file no write changes: its identity and its size."""
    return st.st_dev, st.st_ino, st.st_size


def _now_at(fd: int) -> str | None:
    """Where the directory open at ``fd`` is now, if it can be told: its ``..`` walked up to the root, each
    directory's name looked up in its parent (getcwd's old way: no Linux /proc needed); None once it was
    removed, or when a directory on the way cannot be read."""
    names: list[str] = []
    with contextlib.suppress(OSError):
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        try:
            while True:
                st = os.fstat(here)
                if st.st_nlink == 0:
                    return None
                parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=here)
                os.close(here)
                here = parent
                if _identity(os.fstat(here)) == _identity(st):  # the root is its own parent
                    return "/" + "/".join(reversed(names))
                names.append(_name_in(here, _identity(st)))
        finally:
            os.close(here)
    return None


def _name_in(parent: int, identity: tuple[int, int]) -> str:
    """The name of the entry of the directory open at ``parent`` that is ``identity``; ``FileNotFoundError``
    if none is (a mount point's name stats as the root mounted there: found too)."""
    for name in os.listdir(parent):
        with contextlib.suppress(OSError):
            if _identity(os.stat(name, dir_fd=parent, follow_symlinks=False)) == identity:
                return name
    raise FileNotFoundError(f"no entry of the directory is {identity}")


class DataDir:
    """The writer's durable state: lock, snapshot, log. Used by the writer process only."""

    def __init__(self, path: str, fsync: str = "everysec", compact_bytes: int = COMPACT_BYTES) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.path = os.path.abspath(path)
        self.fsync = fsync
        self.compact_bytes = compact_bytes
        self.made: str | None = None  # the outermost directory of the path this start made, if any
        missing = self.path
        while not os.path.lexists(missing) and os.path.dirname(missing) != missing:
            self.made, missing = missing, os.path.dirname(missing)
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            self._dir_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:  # (a file at the path was "[Errno 17] File exists": what is in the way, said)
            why = in_the_way(self.path) or f"cannot make or open the directory {self.path} ({e.strerror})"
            raise OSError(e.errno, why) from None
        self._lock_fd = -1
        try:
            self._dir_id = _identity(os.fstat(self._dir_fd))
            self._made_ids = self._made_directories()
            self._lock_dir()
            if os.fstat(self._dir_fd).st_nlink == 0:  # removed between its open and its lock (``remove_made``)
                gone = f"{self.path} was removed as this writer started, by a writer that made it and could not start"
                raise OSError(errno.ENOENT, f"{gone}: start again")
            self._lock_id = self._lock_file()
            self._lock_gone = False  # the lock file found gone at the last tick (see ``_check_lock``)
            # a directory whose files can be written but where none can be made (chmod 0500) would take
            # writes and fail only at the first compaction, minutes later: refused now
            try:
                os.close(os.open("snapshot.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=self._dir_fd))
                os.remove("snapshot.tmp", dir_fd=self._dir_fd)
            except OSError as e:
                raise OSError(e.errno, f"cannot make files in {self.path} ({e.strerror})") from None
        except BaseException:
            self._close_locks()
            raise
        self.generation = 0  # of the log appended to
        self._snapshot_generation = 0  # of the snapshot in place (0: none)
        self.compaction: Compaction | None = None  # a snapshot being written, a step at a time
        self._fd = -1
        self._log_id = (0, 0)  # (device, inode) of the log appended to
        # the other files a start would read, each's identity and size (None: there must be none): the snapshot,
        # and the logs before the one appended to that no snapshot in place holds yet (``check_kept``)
        self._kept: dict[str, tuple[int, int, int] | None] = {}
        self.size = 0
        self._dirty = False
        self._checked = False  # the log was found at its path since the last commit: appends may follow
        self._last_sync = monotonic()
        # no failure since the last snapshot put in place could have torn or lost an entry of the logs (an
        # fsync that failed, a failed append whose bytes could not be cut off): what a write the disk had
        # no room for may be retried on (``tiger._core``), where a snapshot of everything is needed otherwise
        self.whole = True
        self._breaks = 0  # such failures so far: a compaction begun after the last one mends them

    def _made_directories(self) -> list[tuple[str, tuple[int, int]]]:
        """(path, identity) of each directory this start made (``made``), the deepest first: what
        ``remove_made`` may remove."""
        if self.made is None:
            return []
        made = [(self.path, self._dir_id)]
        directory = self.path
        while directory != self.made:
            directory = os.path.dirname(directory)
            made.append((directory, _identity(os.lstat(directory))))
        return made

    def _lock_dir(self) -> None:
        """flock the directory itself. ``Locked`` if another writer holds it. A file system that cannot lock
        a directory (NFS maps flock to POSIX locks, which want a file open for writing) leaves the lock
        file's alone, as before."""
        try:
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Locked(f"{self.path} is in use by the tiger writer with pid {self._holder()}") from None
        except OSError as e:
            log.debug("cannot flock the directory %s (%s): only its lock file keeps other writers out", self.path, e)

    def _holder(self) -> str:
        """The pid the lock file names (read without making it)."""
        try:
            fd = os.open("lock", os.O_RDONLY, dir_fd=self._dir_fd)
        except OSError:
            return "unknown"
        try:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)

    def _lock_file(self) -> tuple[int, int]:
        """Open, flock and fill ``lock`` with this process's pid (its fd in ``_lock_fd``); its identity.
        ``OSError`` naming the lock file's whole path (a read-only or full file system said only "'lock'")."""
        try:
            fd = os.open("lock", os.O_RDWR | os.O_CREAT, 0o600, dir_fd=self._dir_fd)
        except OSError as e:
            raise OSError(e.errno, f"cannot make the lock file {os.path.join(self.path, 'lock')} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(f"{self.path} is in use by the tiger writer with pid {self._holder()}") from None
        except BaseException:
            os.close(fd)
            raise
        old, self._lock_fd = self._lock_fd, fd
        if old >= 0:
            os.close(old)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise OSError(e.errno, f"cannot write the lock file {os.path.join(self.path, 'lock')} ({e.strerror})") from None
        return _identity(os.fstat(fd))

    def _close_locks(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    # -- start ------------------------------------------------------------------------

    def load(
        self, unpack: Any, restore: Callable[[dict[str, Any], list[bytes]], None] | None = None
    ) -> tuple[dict[str, Any], list[bytes]]:
        """(snapshot content, log payloads after it). Cuts a torn tail; ``Corrupt`` changes nothing.
        ``restore(content, payloads)``, if given, is called before anything on disk is touched (the cut, the
        log opened): what it raises ends the load with nothing changed.

        The logs after the snapshot are every ``log.k`` with k at least its generation, in order (more
        than one when a compaction was cut short by a crash before its snapshot was in place); a torn
        tail is cut only from the last of them (a damaged end of an earlier one has later changes after it)."""
        content: dict[str, Any] = {}
        snapshot = os.path.join(self.path, "snapshot")
        read = self._read("snapshot")
        self._kept = {"snapshot": None if read is None else read[1]}
        if read is not None:
            data = read[0]
            entry = _entry_at(data, 0)
            if entry is None or entry[1] != len(data):
                raise Corrupt(f"{snapshot} is damaged (it is written whole and renamed into place, so this is not a torn write)")
            saved = unpack(data[entry[0] :])
            self.generation = self._snapshot_generation = saved["generation"]
            content = saved["tables"]
        logs = self._generations()
        if read is None and logs and logs[0] > 0:  # a log after a compaction, and no snapshot: what it held is gone
            raise Corrupt(
                f"{self._log_path(logs[0])} follows a compaction, but {snapshot}, which holds every record before it, "
                "is not there: those records are lost; refusing to start (nothing on disk was changed): put the "
                "snapshot back, or remove the directory to start empty"
            )
        later = [g for g in logs if g >= self.generation]
        payloads: list[bytes] = []
        cut: tuple[str, int, int] | None = None
        for i, generation in enumerate(later):
            path = self._log_path(generation)
            read = self._read(f"log.{generation}")
            data = b"" if read is None else read[0]
            if read is not None and i < len(later) - 1:  # (the last: the log appended to, ``check``)
                self._kept[f"log.{generation}"] = read[1]
            try:
                found, valid = scan(data)
            except Corrupt as e:
                raise Corrupt(f"{path}: {e}; refusing to start (nothing on disk was changed)") from None
            if valid < len(data):
                if i < len(later) - 1:
                    raise Corrupt(
                        f"{path}: damaged entry at byte {valid} with {self._log_path(later[i + 1])} after it; "
                        "refusing to start (nothing on disk was changed)"
                    )
                cut = (path, len(data) - valid, valid)
            payloads.extend(found)
        if restore is not None:
            restore(content, payloads)
        if cut is not None:
            log.warning("cut a torn tail of %d bytes at byte %d of %s", cut[1], cut[2], cut[0])
            fd = os.open(os.path.basename(cut[0]), os.O_WRONLY, dir_fd=self._dir_fd)
            try:
                os.ftruncate(fd, cut[2])
            finally:
                os.close(fd)
        if later:
            self.generation = later[-1]
        self._open_log()
        self._remove_stale()
        return content, payloads

    def _read(self, name: str) -> tuple[bytes, tuple[int, int, int]] | None:
        """The bytes of file ``name`` of the directory and its identity and size; None if there is none."""
        try:
            fd = os.open(name, os.O_RDONLY, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        with open(fd, "rb") as f:
            return f.read(), _kept_as(os.fstat(fd))

    def _generations(self) -> list[int]:
        """The generations of the logs in the directory, in order."""
        found = []
        for name in os.listdir(self._dir_fd):
            if name.startswith("log.") and name[4:].isdigit():
                found.append(int(name[4:]))
        return sorted(found)

    def _log_path(self, generation: int | None = None) -> str:
        return os.path.join(self.path, f"log.{self.generation if generation is None else generation}")

    def _open_log(self) -> None:
        """Open the current generation's log for appending (made, and the directory synced, if new).
        ``OSError``: nothing is open (the fd before, if any, is left as it was)."""
        name = f"log.{self.generation}"
        try:
            os.stat(name, dir_fd=self._dir_fd)
            existed = True
        except FileNotFoundError:
            existed = False
        fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600, dir_fd=self._dir_fd)
        try:
            st = os.fstat(fd)
            if not existed:
                _fsync_dir(self._dir_fd)
        except OSError:
            os.close(fd)
            if not existed:  # (left, a log the writer never appends to would sit after the one it does)
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=self._dir_fd)
            raise
        self._fd, self.size, self._log_id = fd, st.st_size, _identity(st)
        self._checked = False

    def _remove_stale(self) -> None:
        """Remove what the snapshot in place made obsolete, or a crash mid-compaction left: logs of earlier
        generations than the snapshot's, an unfinished snapshot."""
        snapshot_generation = self._snapshot_generation
        for name in os.listdir(self._dir_fd):
            stale_log = name.startswith("log.") and name[4:].isdigit() and int(name[4:]) < snapshot_generation
            if stale_log or (name == "snapshot.tmp" and self.compaction is None):
                os.remove(name, dir_fd=self._dir_fd)

    # -- where the files are ------------------------------------------------------------

    def check(self) -> None:
        """``DataDirLost`` unless the log appended to is still the file at its path (one stat of it: the
        directory removed, moved or replaced, or the log unlinked, renamed or replaced, all fail it). Another
        ``OSError`` of the stat (a parent directory made unreadable): raised as it is, a fault that may pass."""
        if self._fd < 0:
            return
        try:
            if _identity(os.stat(self._log_path())) == self._log_id:
                return
        except (FileNotFoundError, NotADirectoryError):
            pass
        raise DataDirLost(self._lost())

    def _lost(self) -> str:
        """What became of the directory or the log (``check`` found the log no longer at its path)."""
        try:
            at_path: tuple[int, int] | None = _identity(os.stat(self.path))
        except OSError:
            at_path = None
        if at_path != self._dir_id:
            if os.fstat(self._dir_fd).st_nlink == 0:
                what = "removed"
            else:
                now_at = _now_at(self._dir_fd)
                what = "moved" if now_at is None else f"moved to {now_at}"
            also = "" if at_path is None else ", and another directory is at that path now"
            return f"the data directory {self.path} was {what} while this writer ran{also}"
        name = self._log_path()
        try:
            os.stat(os.path.basename(name), dir_fd=self._dir_fd)
            what = "replaced by another file"
        except OSError:
            what = "removed" if self._fd < 0 or os.fstat(self._fd).st_nlink == 0 else "renamed"
        return f"the log {name} was {what} while this writer ran"

    def check_kept(self) -> None:
        """``DataDirLost`` unless the other files a start would read are still those this writer loaded or
        wrote, of the same size (one stat each): the snapshot (or still none), and the logs before the one
        appended to that no snapshot holds yet. One removed, renamed, replaced or cut short under the writer
        loses a restart what it held (or changes it), as the directory's loss does. Called with ``check``
        where no write waits on it: at each tick and before a compaction (a write acknowledged meanwhile is
        in the log appended to; what the lost file held is lost whatever is refused)."""
        for name, identity in self._kept.items():
            try:
                now: tuple[int, int, int] | None = _kept_as(os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False))
            except FileNotFoundError:
                now = None
            if now == identity:
                continue
            self.check()  # (the directory or the log appended to gone too, an ``rm -rf``: that is said)
            what = f"the {'snapshot' if name == 'snapshot' else 'log'} {os.path.join(self.path, name)}"
            if identity is None:
                raise DataDirLost(f"{what} was put there by another process while this writer ran (a restart would read it)")
            if now is None:
                happened = "removed or renamed"
            elif now[:2] == identity[:2]:
                happened = f"changed in place ({identity[2]} bytes, now {now[2]})"
            else:
                happened = "replaced by another file"
            raise DataDirLost(f"{what} was {happened} while this writer ran")

    def _check_lock(self) -> None:
        """Make the lock file again (with a warning) if it was removed or replaced: the directory's own
        flock still keeps other writers out, and a refused one is told whose pid holds it."""
        try:
            if _identity(os.stat("lock", dir_fd=self._dir_fd)) == self._lock_id:
                self._lock_gone = False
                return
        except FileNotFoundError:
            pass
        if not self._lock_gone:  # not at the first tick that finds it gone: an ``rm -rf`` of the directory
            self._lock_gone = True  # may be under way, and a lock made again between its unlinks made its
            return  # rmdir fail (ENOTEMPTY, a review); a tick later that removal has failed ``check``
        self._lock_gone = False
        log.warning("%s was removed or replaced while this writer ran: made again", os.path.join(self.path, "lock"))
        try:
            self._lock_id = self._lock_file()
        except Locked as e:  # an earlier version's writer took the file: two writers on one directory
            raise DataDirLost(f"{os.path.join(self.path, 'lock')} was removed while this writer ran, and {e}") from None

    # -- running ------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Append one change (written, not yet synced: see ``commit``). ``OSError`` (a full or read-only
        disk): nothing of it stays in the log."""
        if self._fd < 0:
            raise OSError(f"{self._log_path()} is not open")
        if not self._checked:  # the group's first append: not into a log gone from its path
            self.check()
            self._checked = True
        entry = frame(payload)
        try:
            written = os.write(self._fd, entry)
            while written < len(entry):  # a short write: finish it
                written += os.write(self._fd, entry[written:])
        except OSError:
            try:
                os.ftruncate(self._fd, self.size)  # leave no partial entry for later appends to follow
            except OSError:
                self._broken()
            raise
        self.size += len(entry)
        self._dirty = True

    def commit(self) -> None:
        """Group commit: with fsync=always, everything appended is on disk when this returns (one fsync
        for the whole group); whatever the policy, the log it went to is still the file at its path after
        it (``check``: else ``DataDirLost``, and the group must not be answered). ``OSError`` if the fsync
        fails."""
        if self._fd < 0:
            return
        if self._dirty and self.fsync == "always":
            self._fsync_log(self._fd)
            self._dirty = False
        self._checked = False
        self.check()

    def tick(self) -> None:
        """Called about twice a second: fsync=everysec syncs what was appended; the log and the lock file
        are checked (a writer without writes says its directory is gone within a second)."""
        if self._fd >= 0 and self._dirty and self.fsync == "everysec" and monotonic() - self._last_sync >= 1.0:
            self._fsync_log(self._fd)
            self._dirty = False
            self._last_sync = monotonic()
        if self._fd >= 0:
            self.check()
            self.check_kept()
            self._check_lock()

    def _fsync_log(self, fd: int) -> None:
        """fsync(2) a log; a failure may have lost what was written to it (Linux drops the pages it could not
        write back, and a later fsync succeeds): the logs are not ``whole`` until a snapshot of everything."""
        try:
            os.fsync(fd)
        except OSError:
            self._broken()
            raise

    def _broken(self) -> None:
        self.whole = False
        self._breaks += 1

    def needs_compaction(self) -> bool:
        return self.size > self.compact_bytes and self.compaction is None

    def begin_compaction(self, pack: Callable[[Any], bytes], content: dict[str, dict[str, list[Any]]]) -> Compaction:
        """Start writing ``content`` (table -> namespace -> records, a view that no later change alters) as
        the snapshot of the next generation, and append from now on to that generation's log. The
        snapshot is written by the returned ``Compaction``'s steps; until it is in place, a start replays
        this generation's log and the next one's. Called between groups (nothing appended unsynced under
        fsync=always). ``OSError`` before the switch of logs: nothing changed (the old log goes on); after
        it (``snapshot.tmp`` could not be made): appends go to the new log, and no compaction is under way.
        A log with nothing in it yet is kept, not switched (the snapshot is then of its generation): a
        compaction tried again and again on a full disk left an empty log behind at each try."""
        if self.compaction is not None:
            raise RuntimeError("a compaction is already under way")
        self.check()  # not a snapshot of a directory gone from its path
        self.check_kept()  # nor of a store whose snapshot or earlier log a start would no longer find
        breaks = self._breaks
        # nothing in it yet: what the snapshot's log is to hold (whole, and empty on disk too: a first append cut
        # short whose bytes could not be cut off left them there, which later appends would follow)
        if self._fd >= 0 and self.size == 0 and self.whole and os.fstat(self._fd).st_size == 0:
            self.compaction = Compaction(self, self.generation, pack, content, breaks)
            return self.compaction
        old, old_kept = self._fd, (*self._log_id, self.size)
        if old >= 0 and self._dirty:
            # whatever the policy: a later log must never follow a torn or missing end of this one (a
            # power loss under fsync=never would otherwise replay the new log over a hole: a store that
            # never was). Once per compaction.
            self._fsync_log(old)
        self.generation += 1
        try:
            self._open_log()
        except OSError:
            self.generation -= 1
            raise
        if old >= 0:
            os.close(old)
            self._kept[f"log.{self.generation - 1}"] = old_kept  # read by a start until the snapshot is in place
        self._dirty = False
        self._last_sync = monotonic()
        self.compaction = Compaction(self, self.generation, pack, content, breaks)
        return self.compaction

    def _compacted(self, generation: int, snapshot: tuple[int, int, int], breaks: int) -> None:
        """``Compaction``'s snapshot of ``generation`` (its identity and size: ``snapshot``) is in place: the logs
        before it are obsolete. ``breaks``: the failures (``whole``) before it began, which it mends (its
        snapshot holds everything then) unless another came since."""
        self.compaction = None
        if self._breaks == breaks:
            self.whole = True
        self._snapshot_generation = generation
        logs = {name: identity for name, identity in self._kept.items() if name != "snapshot" and int(name[4:]) >= generation}
        self._kept = {"snapshot": snapshot, **logs}
        with contextlib.suppress(OSError):  # (removed later, at the next start, if not now)
            self._remove_stale()

    def remove_made(self) -> None:
        """Undo a start that failed after this made the directory (a writer that could not bind): remove the
        files it made there and the directories it made, each only if it is still the one it made and empty
        then. Call before ``close``: all of it is done while the locks are held, so a writer that takes the
        directory once they are let go finds it whole, or not at all (removed after they were let go, by
        path, the lock and log of a second writer that took the directory in between went, and its
        directory with them)."""
        if self.made is None or self._dir_fd < 0:
            return
        with contextlib.suppress(OSError):
            made = [("lock", self._lock_id)]
            if self._fd >= 0 and self.size == 0:  # (nothing was written: a failed start takes no writes)
                made.append((f"log.{self.generation}", self._log_id))
            for name, identity in made:  # through the directory opened at start: its own files only
                if _identity(os.stat(name, dir_fd=self._dir_fd, follow_symlinks=False)) == identity:
                    os.unlink(name, dir_fd=self._dir_fd)
            for directory, identity in self._made_ids:  # the deepest first, each in its parent as it is now
                parent = os.open(os.path.dirname(directory), os.O_RDONLY | os.O_DIRECTORY)
                try:
                    name = os.path.basename(directory)
                    if _identity(os.stat(name, dir_fd=parent, follow_symlinks=False)) != identity:
                        return  # another directory is at that path now: not this start's to remove
                    os.rmdir(name, dir_fd=parent)  # (not empty: kept, and the directories above it too)
                finally:
                    os.close(parent)

    def close(self) -> None:
        if self.compaction is not None:
            self.compaction.abandon()
        if self._fd >= 0:
            if self._dirty and self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        self._close_locks()


class Compaction:
    """The snapshot of one generation being written into ``snapshot.tmp`` a step at a time
    (``DataDir.begin_compaction``), then put in place. Its bytes are those of one framed entry holding
    ``{"generation": G, "tables": content}`` packed whole; the frame's header (length and CRCs) is
    written last, over the placeholder at its start."""

    def __init__(
        self,
        data: DataDir,
        generation: int,
        pack: Callable[[Any], bytes],
        content: dict[str, dict[str, list[Any]]],
        breaks: int = 0,
    ) -> None:
        self._data = data
        self.generation = generation
        self._breaks = breaks  # the data directory's failures before it began (``DataDir.whole``)
        self.records = sum(len(records) for namespaces in content.values() for records in namespaces.values())
        self.size = 0  # bytes of the payload written so far
        self._crc = 0
        self._pieces = _snapshot_pieces(generation, content, pack)
        self._dir_fd = data._dir_fd  # every file of it in the directory opened at start, whatever is at its path now
        self._fd = os.open("snapshot.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600, dir_fd=self._dir_fd)
        self._tmp_id = (0, 0)
        try:
            self._tmp_id = _identity(os.fstat(self._fd))
            self._write(bytes(HEADER.size))  # the header's place
        except OSError:
            self.abandon()
            raise

    def step(self, budget: int = STEP_BYTES) -> bool:
        """Write about ``budget`` more bytes of the snapshot; True once it is whole, synced and in place.
        ``OSError`` (a full or read-only disk): the compaction is abandoned (see ``abandon``) and the
        snapshot and logs before it stand."""
        try:
            chunk = []
            taken = 0
            for piece in self._pieces:
                chunk.append(piece)
                taken += len(piece)
                if taken >= budget:
                    break
            if chunk:
                data = b"".join(chunk)
                self._crc = zlib.crc32(data, self._crc)
                self._write(data)
                if _fadvise is not None:  # start writing it back now, without waiting: the final fsync finds
                    _fadvise(self._fd, HEADER.size + self.size, len(data), os.POSIX_FADV_DONTNEED)  # little left
                self.size += len(data)
            if taken >= budget:
                return False
            os.pwrite(self._fd, _header(self.size, self._crc), 0)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._data.check()  # a snapshot put in place in a directory gone from its path keeps nothing
            self._check_tmp()
            os.replace("snapshot.tmp", "snapshot", src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            # the rename is durable only once the directory is: until then the older logs stay (a failure
            # here is a failed compaction; whichever snapshot a start then finds, its logs are there)
            _fsync_dir(self._dir_fd)
            self._data.check()  # (moved meanwhile: the snapshot went with it)
        except OSError:
            self.abandon()
            raise
        # in place: the older logs are obsolete
        self._data._compacted(self.generation, (*self._tmp_id, HEADER.size + self.size), self._breaks)
        return True

    def _check_tmp(self) -> None:
        """``OSError`` unless ``snapshot.tmp`` is still the file this compaction wrote: another file renamed
        over it would be put in place as the snapshot, and the logs it does not hold removed."""
        try:
            if _identity(os.stat("snapshot.tmp", dir_fd=self._dir_fd)) == self._tmp_id:
                return
        except FileNotFoundError:
            pass
        raise OSError(f"{os.path.join(self._data.path, 'snapshot.tmp')} was removed or replaced while this writer wrote it")

    def abandon(self) -> None:
        """Stop: ``snapshot.tmp`` goes; the snapshot in place and every log after it stand (changes since
        the start go on into the new log)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        if self._data._dir_fd >= 0:  # (closed: the fd's number may be another file's now)
            with contextlib.suppress(OSError):
                if _identity(os.stat("snapshot.tmp", dir_fd=self._dir_fd)) == self._tmp_id:  # its own only
                    os.remove("snapshot.tmp", dir_fd=self._dir_fd)
        if self._data.compaction is self:
            self._data.compaction = None

    def _write(self, data: bytes) -> None:
        written = os.write(self._fd, data)
        while written < len(data):  # a short write: finish it
            written += os.write(self._fd, data[written:])


_headers = msgpack.Packer(use_bin_type=True)
_fadvise = getattr(os, "posix_fadvise", None)  # (Linux: DONTNEED starts writing dirty pages back)


def _snapshot_pieces(generation: int, content: dict[str, dict[str, list[Any]]], pack: Callable[[Any], bytes]) -> Iterator[bytes]:
    """The bytes of ``pack({"generation": generation, "tables": content})``, a piece at a time (each record
    packed as it is reached)."""
    yield _headers.pack_map_header(2) + _headers.pack("generation") + _headers.pack(generation) + _headers.pack("tables")
    yield _headers.pack_map_header(len(content))
    for table, namespaces in content.items():
        yield _headers.pack(table) + _headers.pack_map_header(len(namespaces))
        for namespace, records in namespaces.items():
            yield _headers.pack(namespace) + _headers.pack_array_header(len(records))
            for record in records:
                yield pack(record)
