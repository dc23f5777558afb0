"""tiger: a multiprocess store. One writer process owns the table; every client reads a local replica.

import tiger

with tiger.serve() as server, tiger.connect(server.url) as client:
    plans = client.table("plans", prefix="plan")
    plan = plans.insert({"amount": 500})
    assert plans[plan["id"]] == plan
"""

from __future__ import annotations

from tiger._client import Client, Page, Table, connect, current_namespace, namespace
from tiger._errors import AlreadyExists, NotFound, OnceFailed, TigerError, Timeout, Unavailable
from tiger._server import Server, serve
from tiger._table import FrozenList, Record, thaw

__all__ = [
    "AlreadyExists",
    "Client",
    "FrozenList",
    "NotFound",
    "OnceFailed",
    "Page",
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
