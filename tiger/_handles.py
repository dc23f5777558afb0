"""What copying and pickling do to tiger's objects that belong to the process that made them.

A client (blocking or ``tiger.aio``), a server started by ``tiger.serve`` and a namespace lease are
*handles*: each owns sockets, threads or a writer process of this process. ``copy.copy`` and
``copy.deepcopy`` give the handle itself (as they give a module or a function), so a dict, a fixture
value or a settings object holding one can be copied (Django's ``setUpTestData`` deep-copies its class
attributes for every test; pydantic and dataclass helpers copy their fields). Before, ``copy.copy(client)``
made a second client over the same sockets: closing it closed the first one's, whose next call failed
with ZeroMQ's "Socket operation on non-socket".

Pickling one raises ``TypeError`` saying what to send instead: pickle is how ``multiprocessing``'s
*spawn* and *forkserver* start methods (the default on macOS, and on Linux from Python 3.14) and
``concurrent.futures.ProcessPoolExecutor`` pass arguments to another process, and there the message was
pyzmq's "self.handle cannot be converted to a Python object for pickling". Another process reaches the
same writer by its URL and connects itself.

A table handle is copied as a new handle on the same client (its ``fallback_to_global`` is its own);
feeds and batches are neither copied nor pickled (a feed is a position in this replica's changes, a
batch lives in its ``with`` block).
"""

from __future__ import annotations

from typing import Any, ClassVar, NoReturn

SENT_BY_PICKLE = (
    "multiprocessing's spawn and forkserver start methods (the default on macOS, and on Linux from Python "
    "3.14) and ProcessPoolExecutor pickle what they pass to another process"
)


def public_name(obj: object) -> str:
    """``tiger.Client``, ``tiger.aio.AsyncTable``: where a user imports the class of ``obj`` from (a repr
    said ``tiger.AsyncClient``, which does not exist)."""
    module = type(obj).__module__
    return f"{'tiger' if module.startswith('tiger._') else module}.{type(obj).__name__}"


class Handle:
    """A mixin: ``copy.copy``/``copy.deepcopy`` give the object itself; pickling raises ``TypeError`` with
    ``_instead`` (what another process should be given, and do, instead)."""

    __slots__ = ()
    _instead: ClassVar[str]

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        what = public_name(self)
        raise TypeError(f"a {what} cannot be pickled: it belongs to this process. {self._instead} ({SENT_BY_PICKLE})")


class Unportable:
    """A mixin: copying or pickling raises ``TypeError`` naming ``_instead``."""

    __slots__ = ()
    _instead: ClassVar[str]

    def __copy__(self) -> NoReturn:
        raise TypeError(f"a {public_name(self)} cannot be copied: {self._instead}")

    def __deepcopy__(self, memo: dict[int, Any]) -> NoReturn:
        raise TypeError(f"a {public_name(self)} cannot be copied: {self._instead}")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(f"a {public_name(self)} cannot be pickled: {self._instead} ({SENT_BY_PICKLE})")
