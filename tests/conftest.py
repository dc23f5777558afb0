"""Fixtures for tiger's own tests, built on tiger's pytest plugin (one writer for the whole run)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest
from _util import Sockets, default_sigint

import tiger

pytest_plugins = ["pytester"]


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytest's, its runs (``runpytest_subprocess``, ``run``, ``popen``) started with Ctrl-C's default action
    however this suite was started: some are sent SIGINT, and an xdist worker still busy at its end sends
    itself one (execnet); started with SIGINT ignored, as from a background job, they took no notice."""
    monkeypatch.setattr(pytester, "popen", functools.partial(pytester.popen, preexec_fn=default_sigint))
    return pytester


@pytest.fixture(scope="session")
def writer() -> Iterator[tiger.Server]:
    """A writer process of this worker's own, for tests that need its Server handle (pid, stop)."""
    with tiger.serve() as server:
        yield server


@pytest.fixture
def connect(tiger_url: str) -> Iterator[Callable[..., tiger.Client]]:
    """``connect()`` -> a fresh Client (its own replica) to the run's writer, closed after the test."""
    clients: list[tiger.Client] = []

    def _connect(url: str | None = None, timeout: float = 5.0) -> tiger.Client:
        client = tiger.connect(url or tiger_url, timeout=timeout)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


@pytest.fixture
def connect_own() -> Iterator[Callable[[], tiger.Client]]:
    """``connect_own()`` -> a fresh Client of a writer of this test's own, for tests that compare seqs: the
    run's shared writer's seq moves with the other xdist worker's writes."""
    clients: list[tiger.Client] = []
    with tiger.serve() as server:

        def _connect() -> tiger.Client:
            clients.append(tiger.connect(server.url))
            return clients[-1]

        yield _connect
        for client in clients:
            client.close()


@pytest.fixture
def client(connect: Callable[..., tiger.Client]) -> tiger.Client:
    return connect()


@pytest.fixture
def ns(tiger_namespace: str) -> str:
    """This test's namespace (the plugin's tiger_namespace: current for the test, dropped after it)."""
    return tiger_namespace


@pytest.fixture
def open_socket() -> Iterator[Sockets]:
    """``open_socket(kind, url)``: raw zmq sockets of the test's own, closed whether it passes or fails."""
    sockets = Sockets()
    yield sockets
    sockets.close()
