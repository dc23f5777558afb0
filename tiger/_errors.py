"""The exceptions tiger raises. Pure: imported by the table rules and the client alike."""

from __future__ import annotations


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


class ProtocolError(TigerError, ValueError):
    """Bytes that are not a valid tiger message."""
