"""Durability: a snapshot file plus an append-only log of changes, in one data directory.

Files in DIR:
- ``lock``: held (flock) by the one writer using DIR; holds its pid.
- ``snapshot``: one framed entry, the whole content at the start of log generation G.
- ``log.G``: framed entries, one packed change each, applied after that snapshot.

An entry is ``MARKER | length (u32 LE) | crc32 (u32 LE) | payload``, so a damaged
one is recognisable. On start, a damaged entry with no valid entry after it is a
torn tail (a crash mid-append): the log is cut there. A damaged entry followed by
valid ones is corruption: the start stops and nothing on disk is changed.

A compaction never stops the writer for long: it starts ``log.G+1`` at once (later
changes go there), takes a shallow view of the store (its records are frozen, so the
view stays the store as it was), and writes the snapshot of generation G+1 a step at
a time between the writer's other work (``snapshot.tmp``, then fsync, rename, fsync
the directory), and only then removes ``log.G``. On start, the snapshot's generation g
is replayed with every ``log.k``, k >= g, in order: a crash at any point leaves either
the old snapshot with its logs or the new one with its (possibly absent) log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from tiger._errors import TigerError

log = logging.getLogger("tiger.writer")

MARKER = b"TGR\x01"
HEADER = struct.Struct("<4sII")
FSYNC_POLICIES = ("always", "everysec", "never")
COMPACT_BYTES = 64 * 1024 * 1024  # compact automatically once the log grows past this
STEP_BYTES = 512 * 1024  # bytes of snapshot a compaction writes per step (a few ms of the writer's time)


class Corrupt(TigerError):
    """A data directory whose log is damaged before its end: nothing was changed on disk."""


class Locked(TigerError):
    """Another writer holds the data directory."""


def frame(payload: bytes) -> bytes:
    return HEADER.pack(MARKER, len(payload), zlib.crc32(payload)) + payload


def _entry_at(data: bytes | memoryview, offset: int) -> int | None:
    """The offset just past a valid entry at ``offset``, or None."""
    if offset + HEADER.size > len(data):
        return None
    marker, length, crc = HEADER.unpack_from(data, offset)
    end: int = offset + HEADER.size + length
    if marker != MARKER or end > len(data):
        return None
    if zlib.crc32(data[offset + HEADER.size : end]) != crc:
        return None
    return end


def scan(data: bytes) -> tuple[list[bytes], int]:
    """The payloads of the valid entries and the offset where valid data ends.

    Raises ``Corrupt`` when a damaged entry has a valid one after it.
    """
    view = memoryview(data)
    payloads: list[bytes] = []
    offset = 0
    while offset < len(data):
        end = _entry_at(view, offset)
        if end is None:
            found = data.find(MARKER, offset + 1)
            while found != -1:
                if _entry_at(view, found) is not None:
                    raise Corrupt(f"damaged entry at byte {offset} followed by a valid one at byte {found}")
                found = data.find(MARKER, found + 1)
            return payloads, offset  # a torn tail
        payloads.append(bytes(view[offset + HEADER.size : end]))
        offset = end
    return payloads, offset


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._lock_fd)
            raise Locked(f"{self.path} is in use by the tiger writer with pid {holder}") from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        # a directory whose files can be written but where none can be made (chmod 0500) would take writes
        # and fail only at the first compaction, minutes later: refused now
        probe = os.path.join(self.path, "snapshot.tmp")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
            os.remove(probe)
        except OSError as e:
            os.close(self._lock_fd)
            raise OSError(e.errno, f"cannot make files in {self.path} ({e.strerror})") from None
        self.generation = 0  # of the log appended to
        self._snapshot_generation = 0  # of the snapshot in place (0: none)
        self.compaction: Compaction | None = None  # a snapshot being written, a step at a time
        self._fd = -1
        self.size = 0
        self._dirty = False
        self._last_sync = time.monotonic()

    # -- start ------------------------------------------------------------------------

    def load(self, unpack: Any) -> tuple[dict[str, Any], list[bytes]]:
        """(snapshot content, log payloads after it). Cuts a torn tail; ``Corrupt`` changes nothing.

        The logs after the snapshot are every ``log.k`` with k at least its generation, in order (more
        than one when a compaction was cut short by a crash before its snapshot was in place); a torn
        tail is cut only from the last of them (a damaged end of an earlier one has later changes after it)."""
        content: dict[str, Any] = {}
        snapshot = os.path.join(self.path, "snapshot")
        if os.path.exists(snapshot):
            with open(snapshot, "rb") as f:
                data = f.read()
            end = _entry_at(data, 0)
            if end is None or end != len(data):
                raise Corrupt(f"{snapshot} is damaged (it is written whole and renamed into place, so this is not a torn write)")
            saved = unpack(data[HEADER.size :])
            self.generation = self._snapshot_generation = saved["generation"]
            content = saved["tables"]
        logs = self._generations()
        later = [g for g in logs if g >= self.generation]
        payloads: list[bytes] = []
        cut: tuple[str, int, int] | None = None
        for i, generation in enumerate(later):
            path = self._log_path(generation)
            with open(path, "rb") as f:
                data = f.read()
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
        if cut is not None:
            log.warning("cut a torn tail of %d bytes at byte %d of %s", cut[1], cut[2], cut[0])
            os.truncate(cut[0], cut[2])
        if later:
            self.generation = later[-1]
        self._open_log()
        self._remove_stale()
        return content, payloads

    def _generations(self) -> list[int]:
        """The generations of the logs in the directory, in order."""
        found = []
        for name in os.listdir(self.path):
            if name.startswith("log.") and name[4:].isdigit():
                found.append(int(name[4:]))
        return sorted(found)

    def _log_path(self, generation: int | None = None) -> str:
        return os.path.join(self.path, f"log.{self.generation if generation is None else generation}")

    def _open_log(self) -> None:
        """Open the current generation's log for appending (made, and the directory synced, if new).
        ``OSError``: nothing is open (the fd before, if any, is left as it was)."""
        path = self._log_path()
        existed = os.path.exists(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if not existed:
                _fsync_dir(self.path)
        except OSError:
            os.close(fd)
            raise
        self._fd, self.size = fd, size

    def _remove_stale(self) -> None:
        """Remove what the snapshot in place made obsolete, or a crash mid-compaction left: logs of earlier
        generations than the snapshot's, an unfinished snapshot."""
        snapshot_generation = self._snapshot_generation
        for name in os.listdir(self.path):
            stale_log = name.startswith("log.") and name[4:].isdigit() and int(name[4:]) < snapshot_generation
            if stale_log or (name == "snapshot.tmp" and self.compaction is None):
                os.remove(os.path.join(self.path, name))

    # -- running ------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Append one change (written, not yet synced: see ``commit``). ``OSError`` (a full or read-only
        disk): nothing of it stays in the log."""
        if self._fd < 0:
            raise OSError(f"{self._log_path()} is not open")
        entry = frame(payload)
        try:
            written = os.write(self._fd, entry)
            while written < len(entry):  # a short write: finish it
                written += os.write(self._fd, entry[written:])
        except OSError:
            os.ftruncate(self._fd, self.size)  # leave no partial entry for later appends to follow
            raise
        self.size += len(entry)
        self._dirty = True

    def commit(self) -> None:
        """Group commit: with fsync=always, everything appended is on disk when this returns (one fsync
        for the whole group). ``OSError`` if the fsync fails."""
        if self._dirty and self.fsync == "always" and self._fd >= 0:
            os.fsync(self._fd)
            self._dirty = False

    def tick(self) -> None:
        """Called about twice a second: fsync=everysec syncs what was appended."""
        if self._fd >= 0 and self._dirty and self.fsync == "everysec" and time.monotonic() - self._last_sync >= 1.0:
            os.fsync(self._fd)
            self._dirty = False
            self._last_sync = time.monotonic()

    def needs_compaction(self) -> bool:
        return self.size > self.compact_bytes and self.compaction is None

    def begin_compaction(self, pack: Callable[[Any], bytes], content: dict[str, dict[str, list[Any]]]) -> Compaction:
        """Start writing ``content`` (table -> namespace -> records, a view that no later change alters) as
        the snapshot of the next generation, and append from now on to that generation's log. The
        snapshot is written by the returned ``Compaction``'s steps; until it is in place, a start replays
        this generation's log and the next one's. Called between groups (nothing appended unsynced under
        fsync=always). ``OSError`` before the switch of logs: nothing changed (the old log goes on); after
        it (``snapshot.tmp`` could not be made): appends go to the new log, and no compaction is under way."""
        if self.compaction is not None:
            raise RuntimeError("a compaction is already under way")
        old = self._fd
        if old >= 0 and self._dirty:
            # whatever the policy: a later log must never follow a torn or missing end of this one (a
            # power loss under fsync=never would otherwise replay the new log over a hole: a store that
            # never was). Once per compaction.
            os.fsync(old)
        self.generation += 1
        try:
            self._open_log()
        except OSError:
            self.generation -= 1
            raise
        if old >= 0:
            os.close(old)
        self._dirty = False
        self._last_sync = time.monotonic()
        self.compaction = Compaction(self, self.generation, pack, content)
        return self.compaction

    def _compacted(self, generation: int) -> None:
        """``Compaction``'s snapshot of ``generation`` is in place: the logs before it are obsolete."""
        self.compaction = None
        self._snapshot_generation = generation
        with contextlib.suppress(OSError):  # (removed later, at the next start, if not now)
            self._remove_stale()

    def remove_made(self) -> None:
        """Undo a start that failed after this made the directory (a writer that could not bind): remove the
        files it made there and the directories it made, each only if empty then. Call after ``close``."""
        if self.made is None:
            return
        with contextlib.suppress(OSError):
            for name in ("lock", "log.0"):
                path = os.path.join(self.path, name)
                if name == "lock" or os.path.getsize(path) == 0:
                    os.remove(path)
            directory = self.path
            while True:
                os.rmdir(directory)
                if directory == self.made:
                    break
                directory = os.path.dirname(directory)

    def close(self) -> None:
        if self.compaction is not None:
            self.compaction.abandon()
        if self._fd >= 0:
            if self._dirty and self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        os.close(self._lock_fd)


class Compaction:
    """The snapshot of one generation being written into ``snapshot.tmp`` a step at a time
    (``DataDir.begin_compaction``), then put in place. Its bytes are those of one framed entry holding
    ``{"generation": G, "tables": content}`` packed whole; the frame's header (length, crc32) is
    written last, over the placeholder at its start."""

    def __init__(
        self, data: DataDir, generation: int, pack: Callable[[Any], bytes], content: dict[str, dict[str, list[Any]]]
    ) -> None:
        self._data = data
        self.generation = generation
        self.records = sum(len(records) for namespaces in content.values() for records in namespaces.values())
        self.size = 0  # bytes of the payload written so far
        self._crc = 0
        self._pieces = _snapshot_pieces(generation, content, pack)
        self._tmp = os.path.join(data.path, "snapshot.tmp")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
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
            os.pwrite(self._fd, HEADER.pack(MARKER, self.size, self._crc), 0)
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, os.path.join(self._data.path, "snapshot"))
            # the rename is durable only once the directory is: until then the older logs stay (a failure
            # here is a failed compaction; whichever snapshot a start then finds, its logs are there)
            _fsync_dir(self._data.path)
        except OSError:
            self.abandon()
            raise
        self._data._compacted(self.generation)  # in place: the older logs are obsolete
        return True

    def abandon(self) -> None:
        """Stop: ``snapshot.tmp`` goes; the snapshot in place and every log after it stand (changes since
        the start go on into the new log)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.remove(self._tmp)
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
