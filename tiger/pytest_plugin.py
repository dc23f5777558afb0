"""The pytest plugin: one writer per test run, started when a test first needs it; values built once
per run, torn down once after every test; a namespace per test.

Registered through the ``pytest11`` entry point; ``-p no:tiger`` turns it off.

Theory of operation: the plugin is one lifecycle, in this order.

1. **Configure** (every pytest process; cheap, no zmq, no socket). The controller (xdist's, or the
   only pytest process) makes the run's identity: a short run id and a private run directory.
   Workers get both through ``workerinput``. ``pytest --help``, ``--version``, ``--collect-only``,
   ``--fixtures`` and a run in which no test asks for tiger never get further than this.
2. **First demand**, in whichever process first needs the writer (a tiger fixture): with
   ``--tiger-url``/``$TIGER_URL``, that writer is pinged; else the run's own writer is started, once
   per run, under a file lock in the run directory. It is owned by the controller (it exits when the
   controller ends, even by SIGKILL), and in a session of its own (the terminal's Ctrl-C does not
   reach it). ``TIGER_URL`` is set in the process from then on. Seed files load once per run.
   A writer that cannot be reached ends the run with one line (no traceback).
3. **Each test** with a namespace (``tiger_namespace``, ``tiger_isolate``) gets ``RUN:WORKER::NODEID``.
   It is the process's default namespace while the test runs (threads the test starts write into it;
   a ``tiger.namespace()`` block still overrides it), and it is dropped after the test.
4. **End of run**. The teardowns of generator ``tiger_once`` factories run once each, in the process
   that built the value, after every test of every process: the controller writes ``all-done`` in
   the run directory at its session end, builders wait for it (xdist workers: after reporting
   their own end, so the controller's wait is not a deadlock), run their teardowns and record the
   outcome, which the controller reports. Then the controller stops the run's writer or, on a shared
   writer, drops what the run kept there.

What the run keeps at the writer is named by its run id (test namespaces ``RUN:...``, once keys and
what factories write in namespace ``tiger-run:RUN``), so two runs on one writer, or a pytest run
started inside a test, never see, build, clear or drop each other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import secrets
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from tiger._errors import OnceFailed, TigerError
from tiger._process import ProcessWatch, stop_process

if TYPE_CHECKING:
    from tiger._client import Client

_RUN_KEY = "tiger_run"  # the workerinput entry
_IPC_PATH_MAX = 100  # an ipc path (plus ".pub") must stay under 107 characters
_POLL = 0.02  # seconds between looks at the run directory while waiting for the end of the run
_namespace_key = pytest.StashKey[str]()
_restore_key = pytest.StashKey[Callable[[], None]]()


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
        help="JSON (lines) files loaded into 'global' once per run, when a test first uses tiger",
    )


class _Unreachable(Exception):
    """The writer cannot be reached or started: the run ends with this one line."""

    def __init__(self, message: str, returncode: pytest.ExitCode) -> None:
        super().__init__(message)
        self.returncode = returncode


class _Run:
    """This process's part of one test run: its identity (configure), the writer (first demand),
    the once values it built (their teardowns at the end)."""

    def __init__(self, config: pytest.Config, identity: dict[str, Any]) -> None:
        self.config = config
        self.id: str = identity["id"]
        self.dir = Path(identity["dir"])
        self.controller_pid: int = identity["controller"]
        self.given_url: str | None = identity["url"]  # --tiger-url / $TIGER_URL: a writer this run does not own
        self.worker: str = getattr(config, "workerinput", {}).get("workerid", "main")
        self.namespace = f"tiger-run:{self.id}"  # once keys and what their factories write
        self.is_controller = not hasattr(config, "workerinput")
        self.url: str | None = None  # set at first demand
        self._client: Client | None = None
        self._started: Any = None  # the Server this process started (the controller stops it at the end)
        self._previous_env: str | None = None
        self._built: list[str] = []  # once keys with a teardown built here
        self.session: pytest.Session | None = None
        self.report: list[str] = []  # the controller's end-of-run lines
        self.failed = False

    @property
    def identity(self) -> dict[str, Any]:
        return {"id": self.id, "dir": str(self.dir), "controller": self.controller_pid, "url": self.given_url}

    # -- 2. first demand -------------------------------------------------------------

    def demand(self) -> str:
        """The writer's URL, reaching (or starting) it on first call; ends the run if it cannot."""
        if self.url is not None:
            return self.url
        _keep_modules()
        failure: _Unreachable | None = None
        try:
            url = self._reach()
        except _Unreachable as e:
            failure = e
        if failure is not None:  # outside the except block: the line is shown alone, with no context
            self.give_up(str(failure), failure.returncode)
        self.url = url
        self._previous_env = os.environ.get("TIGER_URL")
        os.environ["TIGER_URL"] = url  # tiger.connect() in tests and their subprocesses finds it
        seeds = self.config.getini("tiger_seed")
        if seeds:  # loaded once per run, before any test of this process reads the writer
            self.once("tiger_seed", lambda: _load_seeds(self.client(), seeds))
        return url

    def give_up(self, message: str, returncode: pytest.ExitCode) -> NoReturn:
        """End the run: the writer cannot be reached. One line, no traceback. A worker cannot end the
        run itself (xdist takes ``pytest.exit`` there for a crash): it fails the test asking with that
        line, stops its own session, and leaves the line for the controller, which ends with it."""
        __tracebackhide__ = True
        _write_json(self.dir / "unreachable", {"message": message, "returncode": int(returncode)})
        if self.is_controller:
            pytest.exit(message, returncode=returncode)
        if self.session is not None:
            self.session.shouldstop = message
        pytest.fail(message, pytrace=False)

    def _reach(self) -> str:
        from tiger._server import ping

        earlier = _read_json(self.dir / "unreachable")
        if earlier is not None:  # another process of the run found it so: say it at once
            raise _Unreachable(earlier["message"], pytest.ExitCode(earlier["returncode"]))
        server_key = os.environ.get("TIGER_SERVER_KEY") or None
        if self.given_url is not None:
            try:
                if self.given_url.startswith("ipc://") and not os.path.exists(self.given_url[len("ipc://") :]):
                    raise TigerError("nothing is bound at that path")  # no need to wait out a timeout
                ping(self.given_url, server_key=server_key)
            except (TigerError, ValueError) as e:
                raise _Unreachable(
                    f"tiger: no writer answers at {self.given_url} ({e}): start one with 'tiger serve --url "
                    f"{self.given_url}', or unset TIGER_URL (and drop --tiger-url) so the run starts its own",
                    pytest.ExitCode.USAGE_ERROR,
                ) from None
            _write_json(self.dir / "writer", {"url": self.given_url, "pid": None})
            return self.given_url
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer per run, whichever process asks first
            known = _read_json(self.dir / "writer")
            if known is not None:
                return str(known["url"])
            return self._start_writer()

    def _start_writer(self) -> str:
        from tiger._server import start_writer

        url = f"ipc://{self.dir}/w{secrets.token_hex(2)}"  # a fresh path per start: a second bind would steal it
        log = self.dir / "writer.log"
        server = start_writer(url, owner_pid=self.controller_pid, log=log)
        try:
            server.wait_ready()
        except TigerError as e:
            shown = log.read_text(errors="replace").strip().splitlines()[-5:]
            message = str(e).replace(" (its log is above)", "")
            raise _Unreachable(
                f"tiger: {message}; its log: {' / '.join(shown) or '(empty)'}", pytest.ExitCode.INTERRUPTED
            ) from None
        self._started = server  # held: a worker ends its process by then, but must not drop the handle before
        _write_json(self.dir / "writer", {"url": server.url, "pid": server.pid})
        return server.url

    def client(self) -> Client:
        if self._client is None:
            _keep_modules()
            from tiger._client import connect

            url = self.demand()  # which may connect this process's client already (seeds)
            if self._client is not None:
                return self._client
            failure: TigerError | None = None
            try:
                self._client = connect(url)
            except TigerError as e:
                failure = e
            if failure is not None:  # outside the except block: the line is shown alone, with no context
                self.give_up(f"tiger: {failure}", pytest.ExitCode.INTERRUPTED)
            self._client.label = f"{self.worker} (pid {os.getpid()})"  # type: ignore[union-attr]
        return self._client  # type: ignore[return-value]

    # -- 3. each test ----------------------------------------------------------------

    def namespace_for(self, item: pytest.Item) -> str:
        """A namespace unique to this test in this run: run id, worker id and node id (hashed down when too long)."""
        name = f"{self.id}:{self.worker}::{item.nodeid}"
        if len(name) > 200:
            digest = hashlib.sha1(name.encode()).hexdigest()[:12]
            name = f"{name[:150]}...{digest}"
        return name

    def enter_test(self, item: pytest.Item) -> str:
        _keep_modules()
        from tiger._client import push_default_namespace

        name = self.namespace_for(item)
        item.stash[_namespace_key] = name
        item.stash[_restore_key] = push_default_namespace(name)
        return name

    def leave_test(self, item: pytest.Item) -> None:
        restore = item.stash.get(_restore_key, None)
        if restore is None:
            return
        del item.stash[_restore_key]
        restore()
        if self.url is not None and not self.config.getoption("--tiger-keep"):
            self.client().drop_namespace(item.stash[_namespace_key])

    # -- once ------------------------------------------------------------------------

    def once(self, key: str, factory: Callable[[], Any], timeout: float | None = None) -> Any:
        """``Client.once`` in the run's namespace; a factory's pytest outcome is every caller's."""
        __tracebackhide__ = True
        client = self.client()
        try:
            value = client.once(key, _guarded(factory), timeout, namespace=self.namespace)
        except _BuildInterrupted as e:  # pytest-timeout stopped the build: the key went to the next caller
            raise e.__cause__ from None  # type: ignore[misc]
        except OnceFailed as e:
            failed: OnceFailed | None = e
        else:
            failed = None
        if failed is not None:  # outside the except block: pytest shows the outcome alone, not its context too
            if failed.type_name == "Skipped":
                pytest.skip(f"once {key!r}: {failed.message}")
            if failed.type_name == "XFailed":
                pytest.xfail(f"once {key!r}: {failed.message}")
            if failed.type_name == "Failed":
                pytest.fail(str(failed), pytrace=False)
            raise failed.with_traceback(None) from None  # the builder's frames are in its message
        if (self.namespace, key) in client._teardowns and key not in self._built:
            self._built.append(key)
            _write_json(self.dir / "builders" / _file_name(key), {"key": key, "pid": os.getpid(), "by": client.label})
        return value

    # -- 4. end of run ---------------------------------------------------------------

    def tear_down(self) -> None:
        """Run this process's once teardowns (the whole run's tests are done) and record each outcome."""
        if self._client is None or not self._built:
            return
        errors = dict(self._client.tear_down_once_values())
        for key in self._built:
            error = errors.get(key)
            shown = None if error is None else "".join(traceback.format_exception(error)).rstrip()
            _write_json(self.dir / "torn" / _file_name(key), {"key": key, "error": shown})
        self._built.clear()

    def worker_end(self) -> None:
        """An xdist worker, after it reported its end: if it built values with teardowns, wait until
        every test of the run is done (the controller says so), then tear them down."""
        if self._built:
            with ProcessWatch(self.controller_pid) as controller:
                try:
                    while not (self.dir / "all-done").exists() and not controller.ended(_POLL):
                        pass
                except KeyboardInterrupt:  # a second Ctrl-C: the run is over anyway
                    pass
            self.tear_down()

    def controller_end(self, session: pytest.Session) -> None:
        """The controller, every test of every process done: teardowns, then their report."""
        self.tear_down()  # a single-process run builds here
        (self.dir / "all-done").touch()
        pending = {path.name: _read_json(path) for path in (self.dir / "builders").glob("*")}
        watches = {name: ProcessWatch(int(b["pid"])) for name, b in pending.items() if b is not None}
        try:
            while pending:
                for name, builder in list(pending.items()):
                    torn = _read_json(self.dir / "torn" / name)
                    if builder is None:
                        del pending[name]
                    elif torn is not None:
                        del pending[name]
                        if torn["error"] is not None:
                            self.failed = True
                            self.report.append(f"teardown of once {builder['key']!r} in {builder['by']} failed:\n{torn['error']}")
                    elif watches[name].ended(_POLL / max(1, len(pending))):
                        del pending[name]
                        self.report.append(
                            f"teardown of once {builder['key']!r} did not run: its builder {builder['by']} ended before it"
                        )
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            for builder in pending.values():
                self.report.append(f"teardown of once {builder['key']!r} in {builder['by']}: not waited for (interrupted)")
        finally:
            for watch in watches.values():
                watch.close()
        if self.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        unreachable = _read_json(self.dir / "unreachable")
        if unreachable is not None:  # a worker stopped the run with that line (xdist showed it): its exit code
            session.exitstatus = pytest.ExitCode(unreachable["returncode"])

    def close(self) -> None:
        """This process's last act: close its client; the controller also stops or cleans the writer."""
        if self._client is not None:
            with contextlib.suppress(TigerError):
                self._client.close()
            self._client = None
        if self.url is not None:
            if self._previous_env is None:
                os.environ.pop("TIGER_URL", None)
            else:
                os.environ["TIGER_URL"] = self._previous_env
        if not self.is_controller:
            return
        writer = _read_json(self.dir / "writer")
        if writer is not None and writer["pid"] is None:
            self._clean_shared_writer(writer["url"])
        elif self._started is not None:
            self._started.stop()
        elif writer is not None:
            stop_process(int(writer["pid"]), writer["url"])
        shutil.rmtree(self.dir, ignore_errors=True)

    def _clean_shared_writer(self, url: str) -> None:
        """A writer this run does not own: drop the run's namespace and its once keys (test namespaces
        were dropped after each test)."""
        from tiger import _protocol as p
        from tiger._server import request_once
        from tiger._table import ONCE_TABLE

        server_key = os.environ.get("TIGER_SERVER_KEY") or None
        with contextlib.suppress(TigerError):
            request_once(url, p.ClearTable(1, ONCE_TABLE, self.namespace), server_key=server_key)
            request_once(url, p.Drop(2, self.namespace), server_key=server_key)


class _BuildInterrupted(KeyboardInterrupt):
    """pytest-timeout stopped a build (it raises ``pytest.fail``): a hand-over, not the key's outcome."""


def _guarded(factory: Callable[[], Any]) -> Callable[[], Any]:
    """The factory, with pytest-timeout's failure turned into an interruption (its ``pytest.fail`` is
    no verdict on the factory: another caller may build it)."""

    def interrupted(e: BaseException) -> bool:
        return isinstance(e, pytest.fail.Exception) and "from pytest-timeout" in str(e)

    if inspect.isgeneratorfunction(factory):

        def generator() -> Iterator[Any]:
            steps = factory()
            try:
                value = next(steps)
            except StopIteration:
                raise ValueError("the generator factory returned without yielding a value") from None
            except BaseException as e:
                if interrupted(e):
                    raise _BuildInterrupted(str(e)) from e
                raise
            yield value
            yield from steps  # the teardown

        return generator

    def plain() -> Any:
        try:
            return factory()
        except BaseException as e:
            if interrupted(e):
                raise _BuildInterrupted(str(e)) from e
            raise

    return plain


def _load_seeds(client: Client, paths: list[Any]) -> int:
    from tiger._seed import load_files

    return load_files(client, paths)


def _file_name(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _write_json(path: Path, value: Any) -> None:
    """Atomically (temp file, rename): a reader sees all of it or nothing."""
    path.parent.mkdir(exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(json.dumps(value))
    os.replace(temp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _run_dir() -> str:
    path = tempfile.mkdtemp(prefix="tiger-run-")  # mode 0700
    if len(path) + len("/w0000.pub") > _IPC_PATH_MAX:  # a long TMPDIR: ipc paths must be short
        os.rmdir(path)
        path = tempfile.mkdtemp(prefix="tiger-run-", dir="/tmp")
    return path


_KEPT = ("zmq", "msgpack", "tiger")  # packages whose modules must stay the ones first imported
_kept: dict[str, Any] = {}  # their modules, as first imported in this process
_kept_at = 0  # len(sys.modules) when they were last looked for


def _keep_modules() -> None:
    """Put back into ``sys.modules`` any module of zmq, msgpack or tiger that was dropped from it, and
    remember those imported since the last call.

    pytester restores ``sys.modules`` to a snapshot (``runpytest_inprocess`` after the nested run, its
    fixture after the test), dropping what was imported meanwhile. Imported a second time, zmq is a copy
    that does not mix with the first (its compiled core, loaded once per process, raises the first copy's
    errors: a client cannot connect), and tiger's client a copy with a default namespace of its own.
    Called around each test and before the plugin imports them."""
    global _kept_at
    if not _kept and "zmq" not in sys.modules:
        return  # nothing imported yet (a run that does not use tiger never gets further)
    for name, module in _kept.items():
        if sys.modules.get(name) is not module:
            sys.modules[name] = module
    if len(sys.modules) != _kept_at:
        for name, module in list(sys.modules.items()):
            if name.partition(".")[0] in _KEPT:
                _kept.setdefault(name, module)
        _kept_at = len(sys.modules)


_run_key = pytest.StashKey[_Run]()


# -- 1. configure ---------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    identity = getattr(config, "workerinput", {}).get(_RUN_KEY)
    if identity is None:  # the controller, or the only pytest process
        identity = {
            "id": secrets.token_hex(3),
            "dir": _run_dir(),
            "controller": os.getpid(),
            "url": config.getoption("--tiger-url") or os.environ.get("TIGER_URL") or None,
        }
    config.stash[_run_key] = _Run(config, identity)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the run's identity to each worker."""
    node.workerinput[_RUN_KEY] = node.config.stash[_run_key].identity


def pytest_report_header(config: pytest.Config) -> str | None:
    run = config.stash.get(_run_key, None)
    if run is None:
        return None
    where = f"the writer at {run.given_url}" if run.given_url else "a writer of its own, started when a test first needs it"
    return f"tiger: run {run.id}, {where}"


# -- 3. each test ---------------------------------------------------------------------


def _wants_namespace(item: pytest.Item) -> bool:
    return "tiger_namespace" in getattr(item, "fixturenames", ()) or bool(item.config.getini("tiger_isolate"))


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    _keep_modules()
    run = item.config.stash.get(_run_key, None)
    if run is not None and _wants_namespace(item):
        run.enter_test(item)  # current for every fixture's setup, the call, and teardowns
    yield


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    _keep_modules()  # what the test imported, before pytester's fixture drops it
    yield  # the test's fixtures are torn down inside their namespace first
    _keep_modules()
    run = item.config.stash.get(_run_key, None)
    if run is not None:
        run.leave_test(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    name = item.stash.get(_namespace_key, None)
    if name is not None and report.failed and item.config.getoption("--tiger-keep"):
        report.sections.append(("tiger", f"namespace kept: {name}"))


# -- 4. end of run --------------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    run = session.config.stash.get(_run_key, None)
    if run is not None:
        run.session = session


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Controller: before xdist stops its workers (builders among them wait to tear down)."""
    run = session.config.stash.get(_run_key, None)
    if run is not None and run.is_controller:
        run.controller_end(session)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(_run_key, None)
    if run is None or not run.is_controller:
        return
    for line in run.report:
        terminalreporter.write_line(f"tiger: {line}", red=True)
    if config.getoption("--tiger-stats"):
        from tiger._cli import format_run_stats

        terminalreporter.write_sep("=", "tiger")
        writer = _read_json(run.dir / "writer")
        if writer is None:
            terminalreporter.write_line(f"run {run.id}: no test used the tiger writer")
        else:
            terminalreporter.write_line(format_run_stats(run.client(), run.namespace))


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_run_key, None)
    if run is None:
        return
    _keep_modules()
    if not run.is_controller:
        run.worker_end()  # after xdist sent this worker's end: the controller is not held up by it
    run.close()
    _keep_modules()  # a nested in-process run: its imports stay for the outer run


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiger_url(pytestconfig: pytest.Config) -> str:
    """The URL of this run's tiger writer (started, or reached, when first asked for)."""
    return pytestconfig.stash[_run_key].demand()


@pytest.fixture(scope="session")
def tiger_client(pytestconfig: pytest.Config) -> Client:
    """A connected tiger.Client for this process (shared by the session; do not close it)."""
    return pytestconfig.stash[_run_key].client()


@pytest.fixture
def tiger_namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own (``RUN:WORKER::NODEID``): the default namespace of every thread of
    the process from setup to teardown, dropped afterwards."""
    run = request.config.stash[_run_key]
    run.demand()
    name = request.node.stash.get(_namespace_key, None)
    if name is None:  # requested dynamically (getfixturevalue): current from now on
        name = run.enter_test(request.node)
    return name  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _tiger_isolate(request: pytest.FixtureRequest) -> None:
    if request.config.getini("tiger_isolate"):
        request.getfixturevalue("tiger_namespace")


@pytest.fixture(scope="session")
def tiger_once(pytestconfig: pytest.Config) -> Callable[..., Any]:
    """``tiger_once(key, factory, timeout=None)``: ``factory()`` runs once across every process of the
    run; every caller gets its value. A generator factory's code after its ``yield`` runs once, after
    every test of every process of the run. See ``Client.once`` for the outcomes."""
    run = pytestconfig.stash[_run_key]

    def once(key: str, factory: Callable[[], Any], timeout: float | None = None) -> Any:
        __tracebackhide__ = True
        return run.once(key, factory, timeout)

    return once
