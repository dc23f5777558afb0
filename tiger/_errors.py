"""The exceptions tiger raises. Pure: imported by the table rules and the client alike."""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class TigerError(Exception):
    """Base class of every error tiger raises on purpose."""


class NotFound(TigerError, KeyError):
    """A record (or a pagination cursor) is not in the namespace."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else ""


class AlreadyExists(TigerError):
    """`create` found the id already in the namespace."""


class Timeout(TigerError, TimeoutError):
    """A wait (`wait_for`, `sync`, a replica catching up) ran past its deadline."""


class Unavailable(TigerError):
    """The writer did not answer within the client's timeout."""


class HandshakeFailed(Unavailable):
    """The ZeroMQ handshake with the writer failed (ZMTP 3): a CurveZMQ key it cannot read, none for a
    writer serving CurveZMQ, one for a writer serving without it, or no tiger writer at the url. Waiting
    longer cannot help, so it is raised at once (within about a second of connect's start)."""


class FeedOverflow(TigerError):
    """A change feed fell more than its ``max_queued`` changes behind: the changes queued were dropped and
    the feed yields no more. Open a new feed and re-read the table (reads are local)."""


class OnceFailed(TigerError):
    """The factory of a ``once`` key failed (raised, or gave a value tiger cannot store); every caller
    of that key gets this, naming the key, the builder (``by``: worker and pid), the error's type and
    message, and the builder's last frames (``frames``, text)."""

    def __init__(self, key: str, type_name: str, message: str, by: str = "", frames: str = "") -> None:
        where = f" in {by}" if by else ""
        text = f"once {key!r} failed{where}: {type_name}: {message}"
        if frames:
            text += "\nthe factory's last frames:\n" + frames.rstrip()
        super().__init__(text)
        self.key = key
        self.type_name = type_name
        self.message = message
        self.by = by
        self.frames = frames

    def __reduce__(self) -> tuple[object, ...]:
        return (OnceFailed, (self.key, self.type_name, self.message, self.by, self.frames))


STOPS_FROM_OUTSIDE: list[Callable[[BaseException], bool]] = []
"""Predicates naming an exception that stopped a ``once`` build from outside it, as a test runner's
timeout or exit does: the key goes to the next caller, as on Ctrl-C, and is not failed for every caller
(``OnceFailed``). tiger's pytest plugin adds one for pytest-timeout's failure and ``pytest.exit``, for
every client of the process (``tiger_client.once`` or a client of the test's own as much as
``tiger_once``)."""


def stopped_from_outside(error: BaseException) -> bool:
    """Whether ``error`` stopped a build from outside it (``STOPS_FROM_OUTSIDE``, or ``mark_stopped``)."""
    return getattr(error, "_tiger_stopped", False) or any(stopped(error) for stopped in STOPS_FROM_OUTSIDE)


def mark_stopped(error: BaseException) -> None:
    """Say that ``error`` came from outside the work it stopped: raised (by a signal handler) in tiger's
    own steps around a ``once`` factory, not by the factory, it is no verdict on the factory."""
    try:
        error._tiger_stopped = True  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # (an exception type with no instance dict: taken as the factory's)
        pass


class ProtocolError(TigerError, ValueError):
    """Bytes that are not a valid tiger message."""


class DataDirLost(OSError):
    """The writer's data directory, or its log, was removed, moved or replaced while the writer ran: what
    it writes no longer reaches the path it was started on (``rm -rf`` of the directory: appends went to
    an unlinked file); or another file a start reads (the snapshot, an earlier log) is no longer the one
    the writer loaded or wrote: a restart would lose or change what it held. Lasting: the writer refuses
    writes until it is restarted, and never writes to that path again (another writer may own it by then)."""


# errnos of a write the file system had no room for: its disk or quota full, or a file size limit met
# (``ulimit -f``, RLIMIT_FSIZE): the writer's data directory (tiger._core) and tiger's own small files alike
ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class NoRoom(TigerError):
    """A file of tiger's own (the pytest plugin's run directory, a key pair) could not be written: its file
    system had no room (``ROOM_ERRNOS``). Says which path, which errno, and what to do (``no_room``)."""

    def __init__(self, message: str, path: str, errno_: int) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno_

    def __reduce__(self) -> tuple[object, ...]:
        return (NoRoom, (str(self), self.path, self.errno))


def no_room(path: str, error: OSError, remedy: str) -> NoRoom | None:
    """``NoRoom`` for ``error``, raised writing ``path``, if the file system had no room for it (``ROOM_ERRNOS``),
    saying what happened and ``remedy`` (what to do); None for any other error."""
    if error.errno not in ROOM_ERRNOS:
        return None
    name = errno.errorcode.get(error.errno, str(error.errno))
    why = "a file size limit was met (ulimit -f)" if error.errno == errno.EFBIG else "its disk or quota is full"
    message = f"no room to write {shown(path, 2 * SHOWN_MAX)}: {why} ({name}: {error.strerror}); {remedy}"
    return NoRoom(message, path, error.errno)


SHOWN_MAX = 100  # characters of a caller's str (an id, a key) an error message repeats


def shown(value: object, limit: int = SHOWN_MAX) -> str:
    """``repr(value)`` for an error message, cut short: a str or bytes of more than ``limit`` characters
    shows its first ones and its length, any other repr its first ``2 * SHOWN_MAX`` characters (ids and
    record keys have no length limit: a megabyte id made every error about it a megabyte long)."""
    if isinstance(value, (str, bytes)):
        if len(value) <= limit:
            return repr(value)
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}... ({len(value)} {unit})"
    if type(value) is int and value.bit_length() > 256:  # (repr refuses past 4300 digits, and a message needs none)
        return f"an int of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 2 * SHOWN_MAX else f"{text[: 2 * SHOWN_MAX]}... ({len(text)} characters)"


FAILURES: dict[str, type[Exception]] = {  # a Failed answer's kind -> what the caller raises (others: TigerError)
    "not_found": NotFound,
    "already_exists": AlreadyExists,
    "value": ValueError,
    "type": TypeError,
    "protocol": ProtocolError,
    "stopped": Unavailable,  # the writer stopped before it could answer (a compaction, a checksum under way)
}
