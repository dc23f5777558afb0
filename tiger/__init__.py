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

import importlib
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiger' has no attribute {name!r}")
    with importlib.import_module("tiger._loading").lock:  # (a fork waits for this load: see tiger._loading)
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
