"""tiger: a multiprocess store. One writer process owns the table; every client reads a local replica.

import tiger

with tiger.serve() as server, tiger.connect(server.url) as client:
    plans = client.table("plans", prefix="plan")
    plan = plans.insert({"amount": 500})
    assert plans[plan["id"]] == plan

Importing ``tiger`` is cheap: the errors are plain classes, and everything that needs zmq or
msgpack (``connect``, ``serve``, ``Client``, ...) is imported on first use (PEP 562). The pytest
plugin relies on this: a test run that uses no tiger fixture never imports zmq.
"""

from __future__ import annotations

import _thread
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from tiger._errors import (
    AlreadyExists,
    FeedOverflow,
    HandshakeFailed,
    NoRoom,
    NotFound,
    OnceFailed,
    ProtocolError,
    TigerError,
    Timeout,
    Unavailable,
)

if TYPE_CHECKING:
    from tiger._batch import Batch, BatchTable, Pending
    from tiger._client import Client, Page, Table, connect, current_namespace, namespace
    from tiger._feed import Change, Feed
    from tiger._server import Server, serve
    from tiger._table import FrozenList, Record, thaw

_LAZY = {
    "Batch": "tiger._batch",
    "BatchTable": "tiger._batch",
    "Pending": "tiger._batch",
    "Client": "tiger._client",
    "Page": "tiger._client",
    "Table": "tiger._client",
    "connect": "tiger._client",
    "current_namespace": "tiger._client",
    "namespace": "tiger._client",
    "Change": "tiger._feed",
    "Feed": "tiger._feed",
    "Server": "tiger._server",
    "serve": "tiger._server",
    "FrozenList": "tiger._table",
    "Record": "tiger._table",
    "thaw": "tiger._table",
}

__all__ = [
    "AlreadyExists",
    "Batch",
    "BatchTable",
    "Change",
    "Client",
    "Feed",
    "FeedOverflow",
    "FrozenList",
    "HandshakeFailed",
    "NoRoom",
    "NotFound",
    "OnceFailed",
    "Page",
    "Pending",
    "ProtocolError",
    "Record",
    "Server",
    "Table",
    "TigerError",
    "Timeout",
    "Unavailable",
    "connect",
    "current_namespace",
    "namespace",
    "serve",
    "thaw",
]


# Held while ``__getattr__`` imports tiger's modules (zmq and msgpack with them: about 0.1 s), and taken by a fork
# before it forks (``os.register_at_fork``): a process forked while another of its threads made the first
# ``tiger.connect()`` got a child whose own connect hung for ever, on an import lock held by a thread the child does
# not have (a user trial: 9 of 9 forks 0.05 s after the thread began). Re-entrant: an import may ask for another
# lazy name. A fork waits for it at most FORK_WAIT seconds (a thread importing tiger could itself wait on an
# import the forking thread is in the middle of), then forks as before.
_importing = _thread.RLock()
# per thread, whether each fork under way took it (a stack: a signal handler's fork may run inside another's hooks)
_fork_took: dict[int, list[bool]] = {}
FORK_WAIT = 10.0


def _before_fork() -> None:
    _fork_took.setdefault(_thread.get_ident(), []).append(_importing.acquire(timeout=FORK_WAIT))


def _after_fork_in_parent() -> None:
    took = _fork_took.get(_thread.get_ident())
    if took and took.pop():
        _importing.release()


def _after_fork_in_child() -> None:
    global _importing
    _importing = _thread.RLock()  # (the parent's may be held by a thread the child has not)
    _fork_took.clear()


if hasattr(os, "register_at_fork"):
    # logging first: a fork takes logging's lock in its own hook (``logging`` registers one), and runs the hooks
    # registered last first; registered before logging's (logging imported by tiger's modules as they load), this
    # one waited for an import that waited for logging's lock (``getLogger`` as tiger's modules load), the fork
    # went on after FORK_WAIT, and its child hung as before
    import logging  # noqa: F401

    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiger' has no attribute {name!r}")
    with _importing:
        if "pyfakefs.fake_filesystem_unittest" in sys.modules:  # (before tiger's modules are imported: see _unpatched)
            importlib.import_module("tiger._unpatched").leave_tiger_alone(import_modules=True)
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


# what test tools replace (subprocess.Popen), taken now, before a test replaces it, when it is imported already
# (not imported, nothing replaced it yet; and tiger._table imports nothing it forbids); pyfakefs kept away (tiger's
# modules imported now, outside pytest: under pytest, the plugin imports them before a fixture of pyfakefs's)
if "subprocess" in sys.modules or "pyfakefs.fake_filesystem_unittest" in sys.modules:
    importlib.import_module("tiger._unpatched").leave_tiger_alone(import_modules="_pytest" not in sys.modules)
