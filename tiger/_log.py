"""Durability: a snapshot file plus an append-only log of changes, in one data directory.

Files in DIR:
- ``lock``: held (flock) by the one writer using DIR; holds its pid.
- ``snapshot``: one framed entry, the whole content at the start of log generation G.
- ``log.G``: framed entries, one packed change each, applied after that snapshot.

An entry is ``MARKER | length (u32 LE) | crc32 (u32 LE) | payload``, so a damaged
one is recognisable. On start, a damaged entry with no valid entry after it is a
torn tail (a crash mid-append): the log is cut there. A damaged entry followed by
valid ones is corruption: the start stops and nothing on disk is changed.

Compaction writes a new snapshot for generation G+1 (temp file, fsync, rename,
fsync the directory), then starts ``log.G+1`` and removes ``log.G``. A crash at
any point leaves either the old snapshot with its log or the new one with its
(possibly absent) log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

from tiger._errors import TigerError

log = logging.getLogger("tiger.writer")

MARKER = b"TGR\x01"
HEADER = struct.Struct("<4sII")
FSYNC_POLICIES = ("always", "everysec", "never")
COMPACT_BYTES = 64 * 1024 * 1024  # compact automatically once the log grows past this


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
        self.generation = 0
        self._fd = -1
        self.size = 0
        self._dirty = False
        self._last_sync = time.monotonic()

    # -- start ------------------------------------------------------------------------

    def load(self, unpack: Any) -> tuple[dict[str, Any], list[bytes]]:
        """(snapshot content, log payloads after it). Cuts a torn tail; ``Corrupt`` changes nothing."""
        content: dict[str, Any] = {}
        snapshot = os.path.join(self.path, "snapshot")
        if os.path.exists(snapshot):
            with open(snapshot, "rb") as f:
                data = f.read()
            end = _entry_at(data, 0)
            if end is None or end != len(data):
                raise Corrupt(f"{snapshot} is damaged (it is written whole and renamed into place, so this is not a torn write)")
            saved = unpack(data[HEADER.size :])
            self.generation = saved["generation"]
            content = saved["tables"]
        path = self._log_path()
        payloads: list[bytes] = []
        if os.path.exists(path):
            with open(path, "rb") as f:
                data = f.read()
            try:
                payloads, valid = scan(data)
            except Corrupt as e:
                raise Corrupt(f"{path}: {e}; refusing to start (nothing on disk was changed)") from None
            if valid < len(data):
                log.warning("cut a torn tail of %d bytes at byte %d of %s", len(data) - valid, valid, path)
                os.truncate(path, valid)
        self._open_log()
        return content, payloads

    def _log_path(self, generation: int | None = None) -> str:
        return os.path.join(self.path, f"log.{self.generation if generation is None else generation}")

    def _open_log(self) -> None:
        path = self._log_path()
        existed = os.path.exists(path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self._fd).st_size
        if not existed:
            _fsync_dir(self.path)
        for name in os.listdir(self.path):  # left by a crash mid-compaction: older logs, an unfinished snapshot
            if (name.startswith("log.") and name != f"log.{self.generation}") or name == "snapshot.tmp":
                os.remove(os.path.join(self.path, name))

    # -- running ------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Append one change (written, not yet synced: see ``commit``). ``OSError`` (a full or read-only
        disk): nothing of it stays in the log."""
        if self._fd < 0:
            raise OSError(f"{self._log_path()} is not open (a compaction failed after its snapshot was in place)")
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
        return self.size > self.compact_bytes

    def compact(self, pack: Callable[[Any], bytes], content: Any) -> int:
        """Write ``content`` as the snapshot of the next generation and start its log; returns its size."""
        payload = pack({"generation": self.generation + 1, "tables": content})
        tmp = os.path.join(self.path, "snapshot.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(frame(payload))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(self.path, "snapshot"))
        except OSError:  # a full or read-only disk: the old snapshot and log stand, as before
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        # the new snapshot is in place: the old log is obsolete, whatever fails from here
        self.generation += 1
        old, self._fd = self._fd, -1
        if old >= 0:
            os.close(old)
        self._dirty = False
        _fsync_dir(self.path)
        self._open_log()  # a fresh log; removes the old one
        return len(payload)

    def close(self) -> None:
        if self._fd >= 0:
            if self._dirty and self.fsync != "never":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        os.close(self._lock_fd)
