"""The pytest plugin: one writer per test run, shared fixtures built once, a namespace per test.

Registered through the ``pytest11`` entry point; ``-p no:tiger`` turns it off.

Where the writer runs: in the xdist controller, or in the only pytest process
without xdist. Its URL reaches the workers through ``workerinput`` and every
process's ``TIGER_URL``. ``--tiger-url URL`` (or ``TIGER_URL`` set before the
run) uses a writer that is already running and never stops it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from tiger._client import Client, _namespace, connect
from tiger._errors import TigerError
from tiger._server import Server, ping, start_writer

_URL_KEY = "tiger_url"
_namespace_key = pytest.StashKey[str]()
_token_key = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tiger", "tiger: a shared store for test processes")
    group.addoption("--tiger-url", default=None, help="use the tiger writer at this URL (default: $TIGER_URL, else start one)")
    group.addoption("--tiger-keep", action="store_true", help="keep each test's namespace; name it when the test fails")
    group.addoption("--tiger-stats", action="store_true", help="print tiger's records, writes and once-keys at the end")
    parser.addini("tiger_isolate", type="bool", default=False, help="a tiger namespace for every test")
    parser.addini(
        "tiger_seed",
        type="paths",
        default=[],
        help="JSON (lines) files loaded into 'global' first",
    )


class _Run:
    """What the plugin holds for this pytest process."""

    def __init__(self, url: str, server: Server | None, worker: str) -> None:
        self.url = url
        self.worker = worker
        self.server = server  # set only where this process started the writer
        self.client: Client | None = None
        self.previous_url: str | None = None

    def ready(self) -> None:
        """Wait for the writer this process started (at once if it answered already)."""
        if self.server is not None:
            self.server.wait_ready()

    def connect(self) -> Client:
        self.ready()
        if self.client is None:
            self.client = connect(self.url)
            self.client.label = f"{self.worker} (pid {os.getpid()})"
        return self.client

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.server is not None:
            self.server.stop()
            self.server = None


_run_key = pytest.StashKey[_Run]()


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if _is_worker(config):
        url = config.workerinput[_URL_KEY]  # type: ignore[attr-defined]
        server = None
    else:
        url = config.getoption("--tiger-url") or os.environ.get("TIGER_URL") or None
        server = None
        if url is None:  # started now, waited for before the first test: collection or the workers' start overlap it
            server = start_writer()
            url = server.url
        else:
            ping(
                url, server_key=os.environ.get("TIGER_SERVER_KEY") or None
            )  # fail the run at once, naming the URL, if nobody answers there
    run = _Run(url, server, _worker_id(config))
    run.previous_url = os.environ.get("TIGER_URL")
    os.environ["TIGER_URL"] = url  # so tiger.connect() in tests and their subprocesses finds it
    config.stash[_run_key] = run
    if not _is_worker(config):
        if server is None:  # a writer that outlives runs: this run's tiger_once keys start afresh
            run.connect().forget_once_keys()
        seeds = config.getini("tiger_seed")
        if seeds:
            from tiger._seed import load_files

            try:
                load_files(run.connect(), seeds)
            except BaseException:
                run.close()
                raise


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, None, None]:
    """Before any test (here, or on xdist's workers once they are sent tests): the writer answers."""
    run = session.config.stash.get(_run_key, None)
    if run is not None:
        try:
            run.ready()
        except TigerError as e:  # the run cannot go on: say why in one line, not as an internal error
            pytest.exit(f"tiger: {e}", returncode=pytest.ExitCode.INTERNAL_ERROR)
    yield


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the writer's URL to each worker."""
    node.workerinput[_URL_KEY] = node.config.stash[_run_key].url


def pytest_report_header(config: pytest.Config) -> str | None:
    run = config.stash.get(_run_key, None)
    if run is None:
        return None
    if run.server is not None:
        return f"tiger: writer {run.url} (pid {run.server.pid})"
    return f"tiger: using the writer at {run.url}"


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_run_key, None)
    if run is not None:
        if run.server is None and not _is_worker(config) and run.client is not None:
            try:
                run.client.forget_once_keys()  # leave nothing of this run's once keys for the next
            except TigerError:
                pass
        run.close()
        if run.previous_url is None:
            os.environ.pop("TIGER_URL", None)
        else:
            os.environ["TIGER_URL"] = run.previous_url


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not config.getoption("--tiger-stats") or _is_worker(config):
        return
    from tiger._cli import format_run_stats

    run = config.stash[_run_key]
    terminalreporter.write_sep("=", "tiger")
    terminalreporter.write_line(format_run_stats(run.connect()))


# -- the per-test namespace ---------------------------------------------------------------


def _worker_id(config: pytest.Config) -> str:
    return getattr(config, "workerinput", {}).get("workerid", "main")  # type: ignore[no-any-return]


def namespace_for(item: pytest.Item) -> str:
    """A namespace unique to this test: worker id and node id (hashed down when too long)."""
    worker = _worker_id(item.config)
    name = f"{worker}::{item.nodeid}"
    if len(name) > 200:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"{name[:150]}...{digest}"
    return name


def _wants_namespace(item: pytest.Item) -> bool:
    return "tiger_namespace" in getattr(item, "fixturenames", ()) or bool(item.config.getini("tiger_isolate"))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    if _run_key in item.config.stash and _wants_namespace(item):
        name = namespace_for(item)
        item.stash[_namespace_key] = name
        item.stash[_token_key] = _namespace.set(name)  # current for every fixture's setup, the call, and teardowns
    yield


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield  # the test's fixtures are torn down inside their namespace first
    token = item.stash.get(_token_key, None)
    if token is None:
        return
    del item.stash[_token_key]
    _namespace.reset(token)
    if not item.config.getoption("--tiger-keep"):
        item.config.stash[_run_key].connect().drop_namespace(item.stash[_namespace_key])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    name = item.stash.get(_namespace_key, None)
    if name is not None and report.failed and item.config.getoption("--tiger-keep"):
        report.sections.append(("tiger", f"namespace kept: {name}"))


@pytest.fixture(scope="session")
def tiger_url(pytestconfig: pytest.Config) -> str:
    """The URL of this run's tiger writer."""
    return pytestconfig.stash[_run_key].url


@pytest.fixture(scope="session")
def tiger_client(pytestconfig: pytest.Config) -> Client:
    """A connected tiger.Client for this process (shared by the session; do not close it)."""
    return pytestconfig.stash[_run_key].connect()


@pytest.fixture
def tiger_namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test, current from setup to teardown, cleared afterwards."""
    name = request.node.stash.get(_namespace_key, None)
    if name is None:  # requested dynamically (getfixturevalue): current from now on
        name = namespace_for(request.node)
        request.node.stash[_namespace_key] = name
        request.node.stash[_token_key] = _namespace.set(name)
    yield name


@pytest.fixture(autouse=True)
def _tiger_isolate(request: pytest.FixtureRequest) -> None:
    if request.config.getini("tiger_isolate"):
        request.getfixturevalue("tiger_namespace")


@pytest.fixture(scope="session")
def tiger_once(tiger_client: Client) -> Callable[[str, Callable[[], Any]], Any]:
    """``tiger_once(key, factory)``: ``factory()`` runs once across every process of the run."""

    def once(key: str, factory: Callable[[], Any], timeout: float | None = None) -> Any:
        return tiger_client.once(key, factory, timeout=timeout)

    return once
