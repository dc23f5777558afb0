"""Fixtures for tiger's own tests: a real writer process per test session (per xdist worker)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

import tiger

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def writer() -> Iterator[tiger.Server]:
    """A writer process shared by this worker's tests; tests isolate themselves by namespace."""
    with tiger.serve() as server:
        yield server


@pytest.fixture
def connect(writer: tiger.Server) -> Iterator[object]:
    """``connect(**kw)`` -> a fresh Client to the session's writer, closed after the test."""
    clients: list[tiger.Client] = []

    def _connect(url: str | None = None, timeout: float = 5.0) -> tiger.Client:
        client = tiger.connect(url or writer.url, timeout=timeout)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


@pytest.fixture
def client(connect) -> tiger.Client:  # type: ignore[no-untyped-def]
    return connect()  # type: ignore[no-any-return]


@pytest.fixture
def ns() -> Iterator[str]:
    """A fresh namespace, current for the whole test."""
    name = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with tiger.namespace(name):
        yield name
