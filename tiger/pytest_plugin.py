"""The pytest plugin: one writer per test run, started when a test first needs it; values built once
per run, torn down once after every test; a namespace per test.

Registered through the ``pytest11`` entry point; ``-p no:tiger`` turns it off.

Theory of operation: the plugin is one lifecycle, in this order.

1. **Configure** (every pytest process; cheap, no zmq, no socket). The controller (xdist's, or the
   only pytest process) makes the run's identity: a short run id and the path of a private run
   directory, made only when a process of the run first writes there (a run killed by SIGTERM, which
   runs no cleanup, left an empty one in $TMPDIR in every project with tiger installed; the process that
   makes it removes those that killed runs left beside it, see ``_RunDir``). Workers get
   both through ``workerinput``. ``pytest --help``, ``--version``, ``--collect-only``,
   ``--fixtures`` and a run in which no test asks for tiger never get further than this.
2. **First demand**, in whichever process first needs the writer (a tiger fixture): with
   ``--tiger-url``/``$TIGER_URL``, that writer is pinged; else the run's own writer is started, once
   per run, under a file lock in the run directory. It is owned by the controller (it exits when the
   controller ends, even by SIGKILL), and in a session of its own (the terminal's Ctrl-C does not
   reach it). ``TIGER_URL`` is set in the process from then on. Seed files load once per run.
   A writer that cannot be reached ends the run with one line (no traceback).
3. **Each test** with a namespace (``tiger_namespace``, ``tiger_isolate``) gets ``RUN:WORKER::NODEID``
   (each further run of it in the process, a rerun: ``RUN:WORKER::NODEID (run N)``, empty).
   It is the process's default namespace while the test runs (threads the test starts write into it;
   a ``tiger.namespace()`` block still overrides it), and it is dropped after the test. On a writer the
   run does not own, the process leases it (``Client.lease_namespace``), and the controller the run's
   namespace: the writer drops them if the process dies without its teardown (``os._exit``, SIGKILL).
   The controller's lease is a ``NamespaceLease`` (a socket of its own, no client), taken as it first
   reaches the writer, which an xdist controller does once a worker's collection shows tests using tiger,
   before any test runs, or at the first report of a worker that reached the writer during a test (a
   fixture asked for at run time); its goodbye comes after the end-of-run cleanup.
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
import importlib
import inspect
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from tiger._calls import callable_name, check_seconds
from tiger._clock import mark, monotonic, moved, overslept
from tiger._errors import STOPS_FROM_OUTSIDE, NoRoom, OnceFailed, TigerError, stopped_from_outside
from tiger._process import ProcessWatch, stop_process

if TYPE_CHECKING:
    from tiger._client import Client
    from tiger.aio import AsyncClient

_RUN_KEY = "tiger_run"  # the workerinput entry
_POLL = 0.02  # seconds between looks at the run directory while waiting for the end of the run
CLEANUP_WAIT = 10.0  # seconds the end of a run waits for a --tiger-url writer not there (restarting) to drop its namespaces
_NO_ROOM_WHY = "(its disk or quota is full, or a file size limit was met)"  # why a file of the run could not be written
_namespace_key = pytest.StashKey[str]()
_lease_lost_key = pytest.StashKey[str]()  # what to fail a test's teardown with: its lease ended during it
_TIGER = os.path.dirname(os.path.abspath(__file__)) + os.sep  # tiger's package directory


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
    parser.addini(
        "tiger_teardown_timeout",
        default="300",
        help="seconds the run waits, at its end, for the teardowns of tiger_once values (default 300)",
    )


class _Unreachable(Exception):
    """The writer cannot be reached or started: the run ends with this one line."""

    def __init__(self, message: str, returncode: pytest.ExitCode) -> None:
        super().__init__(message)
        self.returncode = returncode


class _RunDir:
    """The files one run's processes share, in a private (0700) directory made when a process of the run
    first writes one of them (a run whose tests never use tiger makes none: one killed by SIGTERM, which
    runs no cleanup, left an empty directory in $TMPDIR, in every project with tiger installed):

    - ``lock``: held while a process reaches or starts the writer (one writer per run);
    - ``writer``: ``{"url", "pid"}`` once reached (``pid`` None: a writer the run does not own),
      or ``{"error", "returncode"}`` once it could not be;
    - ``writer.log``: the run's own writer's log;
    - ``builders/PID.lock``, ``builders/PID.json``: a process that built ``tiger_once`` values with
      teardowns holds an exclusive lock on its ``.lock`` for as long as it lives, and records its keys,
      then their outcomes, in its ``.json``; a lock that can be taken belongs to a process that ended
      (pid reuse and zombies cannot fool a lock);
    - ``uses-tiger``: an xdist worker collected tests that use tiger, or reached the writer during a test,
      on a writer the run leases its namespaces at (the controller takes the run's lease then: before any
      test runs, or at that worker's next report);
    - ``all-done``: every test of every process has finished (the controller says so, by renaming
      ``not-done``, made with the directory: a rename needs no room, and a full disk kept the controller
      from making ``all-done``, so the builders never tore down and the controller waited
      ``tiger_teardown_timeout`` for them);
    - ``no-room``: a process of the run found no room to write the ``writer`` record (it stopped the writer
      it started) or the ``controller`` one: the others end as it did, rather than each starting a writer of
      its own;
      ``builders/PID.no-room``: that builder could not record its keys or its teardowns' outcomes;
    - ``alive``: every process of the run that made or used the directory holds a shared ``flock`` on it
      for as long as it lives (``tiger._paths.hold_run_dir``);
    - ``controller``: the run's controller (the xdist controller, or the only pytest process), written by
      the process that made the directory: its pid and start time. The xdist controller may never use the
      directory itself, and goes on using it (its writer, its builders' outcomes) after its workers ended.

    A run killed by SIGKILL or SIGTERM, or ended by ``os._exit``, leaves its directory behind: the next run
    that makes its own directory in the same parent removes it then, once its ``alive`` lock can be taken
    and its controller has ended (``tiger._paths.sweep_ended_run_dirs``; a directory of an older tiger,
    with no ``alive``, once nothing in it changed for a day).
    """

    def __init__(self, path: Path, controller_pid: int | None = None) -> None:
        self.path = path
        self.controller_pid = controller_pid  # the run's controller (recorded by the process making the directory)
        self._builder: Any = None  # this process's locked builders file, once it built a value with a teardown
        self._alive: int | None = None  # this process's descriptor of ``alive``, locked (shared) for life
        self._made = False

    def made(self) -> Path:
        """The directory, made (or checked) on first use in this process, its ``alive`` locked: ``path``.
        The process that makes it then removes the run directories of ended runs beside it."""
        if not self._made:
            from tiger._paths import hold_run_dir, sweep_ended_run_dirs

            self._alive, made = hold_run_dir(str(self.path), self.controller_pid)
            self._made = True
            if made:
                with contextlib.suppress(NoRoom):  # (then ``mark_all_done`` makes ``all-done`` itself)
                    _touch(self.path / "not-done")
                sweep_ended_run_dirs(str(self.path))
        return self.path

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        from tiger._paths import room_for

        path = self.made() / "lock"
        with room_for(str(path)):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with open(fd) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def mark_no_room(self) -> None:
        """Say to the run's other processes that this one found no room for the ``writer`` or ``controller``
        record (as far as the file system has room left for an empty file: its own ``NoRoom`` hid the record's)."""
        from tiger._paths import NO_ROOM

        with contextlib.suppress(OSError, NoRoom):
            _touch(self.path / NO_ROOM)

    def no_room(self) -> str | None:
        """What a process of the run that found no room for the ``writer`` or ``controller`` record leaves the
        others to say."""
        from tiger._paths import NO_ROOM, TEMP_REMEDY

        if not os.path.exists(self.path / NO_ROOM):
            return None

        return (
            f"tiger: another process of this run found no room to write in the run's directory {self.path} "
            f"{_NO_ROOM_WHY}: {TEMP_REMEDY}"
        )

    def writer(self) -> dict[str, Any] | None:
        return _read_json(self.path / "writer")  # type: ignore[no-any-return]

    def record_writer(self, state: dict[str, Any]) -> None:
        _write_json(self.made() / "writer", state)

    def record_builder(self, state: dict[str, Any]) -> None:
        """This process's builder state (keys, then outcomes): ``builders/PID.json``, written whole (a
        reader sees all of it or nothing), beside ``builders/PID.lock``, locked by this process for life."""
        from tiger._paths import room_for

        folder = self.made() / "builders"
        if self._builder is None:
            lock = folder / f"{os.getpid()}.lock"
            with room_for(str(lock)):
                os.makedirs(folder, exist_ok=True)
                self._builder = open(lock, "w")  # held for life: the lock goes with it
            fcntl.flock(self._builder, fcntl.LOCK_EX)
        _write_json(folder / f"{os.getpid()}.json", state)

    def mark_builder_no_room(self) -> None:
        """This builder could not record its state (``NoRoom``): said to the controller by an empty file, as far
        as the file system has room left for one."""
        with contextlib.suppress(OSError, NoRoom):
            _touch(self.path / "builders" / f"{os.getpid()}.no-room")

    @staticmethod
    def builder_had_no_room(lock: Path) -> bool:
        return os.path.exists(lock.with_suffix(".no-room"))

    def release_builder(self) -> None:
        """This process's teardowns are done (their outcomes written): the controller may read them."""
        if self._builder is not None:
            self._builder.close()
            self._builder = None

    def builders(self) -> list[Path]:
        """The lock files of the other processes of the run that built values with teardowns."""
        folder = self.path / "builders"
        names = os.listdir(folder) if os.path.isdir(folder) else []
        return sorted(folder / name for name in names if name.endswith(".lock") and name != f"{os.getpid()}.lock")

    @staticmethod
    def builder_state(lock: Path) -> dict[str, Any]:
        """What the builder of ``lock`` recorded so far (``{}``: nothing yet)."""
        return _read_json(lock.with_suffix(".json")) or {}

    @classmethod
    def ended_builder(cls, lock: Path) -> dict[str, Any] | None:
        """The state a builder left if it has ended (its lock is free), else None."""
        with open(lock) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None
        return cls.builder_state(lock)

    def mark_uses_tiger(self) -> None:
        _touch(self.made() / "uses-tiger")

    def uses_tiger(self) -> bool:
        return os.path.exists(self.path / "uses-tiger")

    def mark_all_done(self) -> None:
        """Every test of the run is done: ``not-done`` renamed ``all-done`` (no room needed), or ``all-done``
        made; ``NoRoom`` when neither can be."""
        folder = self.made()
        try:
            os.rename(folder / "not-done", folder / "all-done")
        except FileNotFoundError:  # (made by an older tiger, or with no room for it then)
            _touch(folder / "all-done")

    def exists(self) -> bool:
        """Whether a process of the run made the directory."""
        return os.path.isdir(self.path)

    def all_done(self) -> bool:
        return os.path.exists(self.path / "all-done")

    def remove(self) -> None:
        self.release_builder()
        shutil.rmtree(self.path, ignore_errors=True)
        if self._alive is not None:  # held through the removal
            os.close(self._alive)
            self._alive = None


def _teardown_timeout(value: object) -> float:
    """The ``tiger_teardown_timeout`` ini value, checked as every timeout is (``pytest.UsageError``)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise pytest.UsageError(
            f"tiger_teardown_timeout must be a number of seconds from 0 to 86400 (a day), not {value!r}"
        ) from None
    try:
        return check_seconds(seconds, "tiger_teardown_timeout")  # type: ignore[return-value]
    except ValueError as e:
        raise pytest.UsageError(f"{e} (ini value {value!r})") from None


class _Run:
    """This process's part of one test run, in lifecycle order: its identity (configure), the writer
    (first demand), each test's namespace, the once values it built (their teardowns at the end)."""

    def __init__(self, config: pytest.Config, identity: dict[str, Any]) -> None:
        self.config = config
        self.id: str = identity["id"]
        self.is_controller = not hasattr(config, "workerinput")
        self.controller_pid: int = identity["controller"]
        self.dir = _RunDir(Path(identity["dir"]), self.controller_pid)
        self.given_url: str | None = identity["url"]  # --tiger-url / $TIGER_URL: a writer this run does not own
        self._given_keeps_data: bool | None = None  # whether that writer keeps a data directory (None: not asked here)
        self.worker: str = getattr(config, "workerinput", {}).get("workerid", "main")
        self.namespace = f"tiger-run:{self.id}"  # once keys and what their factories write
        self.session: pytest.Session | None = None
        self.url: str | None = None  # set at first demand
        self._seeded = not config.getini("tiger_seed")
        self.teardown_timeout = _teardown_timeout(config.getini("tiger_teardown_timeout"))
        self._seeding = False
        self._client: Client | None = None
        self._started: Any = None  # the Server this process started: its Popen must live as long as the writer may
        self._run_lease: Any = None  # the controller's NamespaceLease of the run's namespace (``leases``)
        self.lease_failed = False  # the controller could not reach the writer to lease the run's namespace
        self._previous_env: str | None = None
        self._previous_key: str | None = None  # $TIGER_SERVER_KEY before ``reach`` unset it (the run's own writer)
        self.waited = False  # the controller waited for the builders' teardowns
        self.interrupted = False  # a Ctrl-C reached this process (``note_interrupts``), whatever the exit status says
        self._sigint: Any = None  # the SIGINT handler ``note_interrupts`` replaced (restored at the end)
        self._built: dict[str, str] = {}  # once keys with a teardown built here -> their outcome (None: not run yet)
        self._entered: tuple[pytest.Item, str, Callable[[], None]] | None = None  # the test run whose namespace is the default
        self._runs: dict[str, int] = {}  # node id -> how many times a test of that id entered its namespace here
        self.report: list[str] = []  # the end-of-run lines (the controller's summary)
        self.exit_code: pytest.ExitCode | None = None  # what the end of the run calls for, beyond the tests' own

    @property
    def label(self) -> str:
        """Who this process is in the run's messages: its worker id and pid."""
        return f"{self.worker} (pid {os.getpid()})"

    @property
    def identity(self) -> dict[str, Any]:
        return {"id": self.id, "dir": str(self.dir.path), "controller": self.controller_pid, "url": self.given_url}

    # -- 2. first demand -------------------------------------------------------------

    def demand(self) -> str:
        """The writer's URL, reaching (or starting) it on first call and loading the seed files once
        per run; ends the run if the writer cannot be reached; a failed seed fails every caller."""
        url = self._reached()
        if not self._seeded and not self._seeding:  # (the seeding itself demands the writer too)
            seeds = self.config.getini("tiger_seed")
            self._seeding = True
            try:
                self.once("tiger_seed", lambda: _load_seeds(self.client(), seeds))
            finally:
                self._seeding = False
            self._seeded = True
        return url

    def _reached(self) -> str:
        if self.url is None:
            failure = self.reach()
            if failure is not None:  # outside the except block: the line is shown alone, with no context
                self.give_up(str(failure), failure.returncode)
        self.keep_env()
        return self.url  # type: ignore[return-value]

    def keep_env(self) -> None:
        """Once the writer is reached: ``TIGER_URL`` set again when it is gone from the environment, and a
        ``TIGER_SERVER_KEY`` that ``reach`` unset, back again, unset again. A test's tool restores the
        environment it copied (``mock.patch.dict(os.environ)``, entered in a fixture before tiger's first
        use): every later ``tiger.connect()`` of the process and its subprocesses failed "no tiger URL" (a
        user trial). This runs as a test using a fixture of tiger's begins its setup, and as such a fixture
        asks for the writer: a test that sets or unsets them itself (``monkeypatch``), and tests using none of
        tiger's fixtures (unset for them in a fixture of a wider scope), are left alone."""
        if self.url is None:
            return
        if "TIGER_URL" not in os.environ:
            os.environ["TIGER_URL"] = self.url
        if self.given_url is None and self._previous_key is not None and os.environ.get("TIGER_SERVER_KEY") == self._previous_key:
            del os.environ["TIGER_SERVER_KEY"]

    def reach(self) -> _Unreachable | None:
        """Reach the writer (``url`` set) or find why not, which is returned, and recorded for every process
        of the run. The controller, on a writer the run does not own, takes the run's lease there too."""
        _keep_modules(activate=True)
        try:
            with self.dir.locked():  # one writer per run, whichever process asks first; one verdict
                url = self._reach()
                if self.is_controller and self.leases():
                    self._lease_run(url)
                elif self.leases():  # a worker using tiger: its controller leases the run's namespace once it sees
                    self.dir.mark_uses_tiger()  # this (a fixture asked for at run time, not seen in the collection)
        except _Unreachable as e:
            return e
        except NoRoom as e:  # the run's directory (its lock, the writer's record): one line, as an unreachable writer
            return _Unreachable(f"tiger: the run cannot share its writer: {e}", pytest.ExitCode.INTERRUPTED)
        self._previous_env = os.environ.get("TIGER_URL")
        os.environ["TIGER_URL"] = url  # tiger.connect() in tests and their subprocesses finds it
        self._previous_key = os.environ.get("TIGER_SERVER_KEY")
        if self.given_url is None:  # the run's own writer serves without CurveZMQ: a key kept for another writer
            os.environ.pop("TIGER_SERVER_KEY", None)  # failed every test's handshake (a user trial)
        self.url = url  # (last: a test stopped from outside before it reaches the writer again)
        return None

    def _reach(self) -> str:
        """Under the run's lock: the writer's URL, from the run directory or by reaching or starting it."""
        known = self.dir.writer()
        if known is not None:
            if "error" in known:  # another process of the run found it so: say it at once
                raise _Unreachable(known["error"], pytest.ExitCode(known["returncode"]))
            return str(known["url"])
        no_room = self.dir.no_room()
        if no_room is not None:  # (not a writer of this process's own: the run's processes would not share one)
            raise _Unreachable(no_room, pytest.ExitCode.INTERRUPTED)
        try:
            url, pid = self._ping_given() if self.given_url is not None else self._start_writer()
        except _Unreachable as e:
            with contextlib.suppress(NoRoom):  # (each process finds it then)
                self.dir.record_writer({"error": str(e), "returncode": int(e.returncode)})
            raise
        try:
            self.dir.record_writer({"url": url, "pid": pid})
        except NoRoom:  # unrecorded, every other process of the run would start a writer of its own: none runs
            if self._started is not None:
                self._started.stop()
                self._started = None
            self.dir.mark_no_room()
            raise
        return url

    def _lease_run(self, url: str) -> None:
        """The controller leases the run's namespace (what ``tiger_once`` factories write; their settled once
        keys go with it when the lease ends) at the writer the run does not own, before any test of the run
        writes there: with a ``NamespaceLease``, a socket of its own (an xdist controller runs no test, and
        connects no client). A controller killed before its cleanup (SIGKILL, the OOM killer, a CI timeout)
        leaves it nothing. Its goodbye comes after the cleanup (``close``). Not the process's client's lease:
        that one ended at the client's close, before the cleanup, and an xdist controller took it only at
        its end."""
        if self._run_lease is not None:
            return
        import zmq

        from tiger._server import NamespaceLease, env_server_key

        try:
            self._run_lease = NamespaceLease(url, self.namespace, server_key=env_server_key())
        except (TigerError, ValueError, OSError, zmq.ZMQError) as e:  # (a bad key, no file descriptor left: said,
            # as an unreachable writer is, not an INTERNALERROR of the xdist hook with the workers going on)
            failure = _Unreachable(
                f"tiger: the writer at {url} did not lease the run's namespace {self.namespace!r} ({e})",
                pytest.ExitCode.INTERRUPTED,
            )
            with contextlib.suppress(NoRoom):
                self.dir.record_writer({"error": str(failure), "returncode": int(failure.returncode)})
            raise failure from None

    def _ping_given(self) -> tuple[str, None]:
        from tiger._server import check_server_key, env_server_key, ping

        url = self.given_url
        assert url is not None
        key = env_server_key()  # (what is said of it names TIGER_SERVER_KEY, never the key itself)
        try:
            check_server_key(key)
        except ValueError as e:  # (it was said of the url: "'tcp://...' (--tiger-url or TIGER_URL) is not a writer's URL")
            raise _Unreachable(f"tiger: {e}", pytest.ExitCode.USAGE_ERROR) from None
        try:
            self._given_keeps_data = ping(url, server_key=key)["data"] is not None  # at once if nothing listens there
        except ValueError as e:
            raise _Unreachable(
                f"tiger: {url!r} (--tiger-url or TIGER_URL) is not a writer's URL: {e}", pytest.ExitCode.USAGE_ERROR
            ) from None
        except TigerError as e:
            from tiger._errors import HandshakeFailed
            from tiger._server import silence_hint, unresolved_host, why_refused

            drop = "drop --tiger-url and unset TIGER_URL (whichever gave it) so the run starts its own"
            if isinstance(e, HandshakeFailed):  # e says which key is wrong or missing, and what to set
                raise _Unreachable(f"tiger: {e}; or {drop}", pytest.ExitCode.USAGE_ERROR) from None
            if unresolved_host(url, 0.0) is not None:  # (said in e; past the ping's timeout: not waited for)
                advice = "pass a host name that resolves, "
            elif why_refused(url) is None:  # something is there: starting a writer at the url would fail
                advice = f"{silence_hint(url)}; "
            else:
                advice = f"start one with 'tiger serve --url {url}', "
            message = f"tiger: no writer answers at {url} ({e}): {advice}or {drop}"
            raise _Unreachable(message, pytest.ExitCode.USAGE_ERROR) from None
        return url, None

    def _start_writer(self) -> tuple[str, int]:
        from tiger._paths import room_for
        from tiger._server import start_writer

        if self._started is not None and self._started.running:  # started, then the test asking was stopped
            return self._started.url, self._started.pid  # (pytest-timeout) before the run's directory said so
        url = f"ipc://{self.dir.path}/w{secrets.token_hex(2)}"  # a fresh path per start: a second bind would steal it
        log = self.dir.path / "writer.log"
        with room_for(str(log)):  # (the log, made before the writer starts)
            server = start_writer(url, owner_pid=self.controller_pid, log=log)
        try:
            server.wait_ready()
        except TigerError as e:
            shown = _read_text(log).strip().splitlines()[-5:]
            raise _Unreachable(
                f"tiger: the run's writer did not start ({e}); its log: {' / '.join(shown) or '(empty)'}",
                pytest.ExitCode.INTERRUPTED,
            ) from None
        self._started = server
        return server.url, server.pid

    def give_up(self, message: str, returncode: pytest.ExitCode) -> NoReturn:
        """End the run: the writer cannot be reached. One line, no traceback. A worker cannot end the
        run itself (xdist takes ``pytest.exit`` there for a crash): it fails the test asking with that
        line and stops its own session; the controller ends the run with that line's exit code."""
        __tracebackhide__ = True
        if self.is_controller:
            pytest.exit(message, returncode=returncode)
        if self.session is not None:
            self.session.shouldstop = message
        pytest.fail(message, pytrace=False)

    def client(self) -> Client:
        if self._client is not None and not self._seeded and not self._seeding:  # connected by a seeding that
            self.demand()  # was stopped from outside (pytest-timeout): taken up again, not left half done
        if self._client is None:
            _keep_modules(activate=True)
            from tiger._client import connect

            url = self.demand()
            if self._client is not None:  # connected by the seeding, inside demand()
                return self._client
            failure: TigerError | None = None
            try:
                self._client = connect(url)  # (the run's namespace is leased by the controller: ``_lease_run``)
                self._client.__class__ = _shared_client_class()  # (connect's client, its close refused to tests)
            except TigerError as e:
                failure = e
            if failure is not None:  # outside the except block: the line is shown alone, with no context
                self.give_up(f"tiger: {failure}", pytest.ExitCode.INTERRUPTED)
            self._client.label = self.label  # type: ignore[union-attr]
        return self._client  # type: ignore[return-value]

    # -- 3. each test ----------------------------------------------------------------

    def namespace_for(self, item: pytest.Item, run: int = 1) -> str:
        """A namespace unique to this run of this test in this run of pytest: run id, worker id and node id
        (hashed down when too long), then `` (run N)`` from a test's second run in the process on."""
        name = f"{self.id}:{self.worker}::{item.nodeid}"
        suffix = "" if run == 1 else f" (run {run})"
        if len(name) + len(suffix) > 200:
            digest = hashlib.sha1(f"{name}{suffix}".encode()).hexdigest()[:12]
            name = f"{name[:150]}...{digest}"
        return f"{name}{suffix}"

    def enter_test(self, item: pytest.Item) -> str:
        """Make a namespace of this run of the test's own the process's default namespace until ``leave_test``.

        A test item can run more than once in a session: pytest-rerunfailures and flaky run its protocol
        again, pytest-retry sets it up again within its call, pytest-flakefinder runs copies of a unittest
        item that share its stash. Each run gets a namespace of its own, empty (the first run's is named as
        ever, the next ``NAME (run 2)``, ...): a rerun never sees what an earlier run left (``--tiger-keep``,
        a drop that failed) and each failed run's report names its own. Entered is this run, not the item's
        stash (the next run found the first run's name there and entered nothing: it wrote into "global")."""
        if self._entered is not None:
            if self._entered[0] is item:  # this run's, already (tiger_namespace asked for after the setup)
                return self._entered[1]
            self.leave_test()  # a test left unended (no teardown reached the plugin): not the next one's default
        _keep_modules(activate=True)
        from tiger._client import push_default_namespace

        run = self._runs[item.nodeid] = self._runs.get(item.nodeid, 0) + 1
        name = self.namespace_for(item, run)
        item.stash[_namespace_key] = name  # (this run's, for its reports)
        self._entered = (item, name, push_default_namespace(name))
        return name

    def leases(self) -> bool:
        """Whether this run leases its namespaces (``Client.lease_namespace``): only on a writer it does not
        own (``--tiger-url``, ``TIGER_URL``), which outlives the run; the run's own writer ends with the run,
        and what a process that died left with it, so a test process stopped for a while (Ctrl-Z) does not
        lose its namespace to a lease there. Not with --tiger-keep: kept namespaces stay."""
        return self.given_url is not None and not self.config.getoption("--tiger-keep")

    def lease_test(self, name: str) -> None:
        """Have the writer drop the test's namespace if this process dies before the teardown drops it
        (pytest-timeout's ``os._exit``, SIGKILL, the OOM killer): once it takes the process for gone, about
        1 s later, and its lease grace (``tiger serve --lease-grace``) has passed (see ``leases``)."""
        if self.leases():  # (no lease: no client connected for it, as before leases)
            self.client().lease_namespace(name)

    @property
    def in_test(self) -> bool:
        """Whether a test's namespace is the process's default now."""
        return self._entered is not None

    def leave_test(self, drop: bool = True) -> None:
        """Restore the default namespace and drop the test's (unless --tiger-keep, or not ``drop``: a test
        an interruption ended, its namespace dropped with the run's at the end, as a paused writer held
        each worker of an interrupted run the client's timeout here)."""
        if self._entered is None:
            return
        item, name, restore = self._entered
        self._entered = None
        restore()
        if drop and self.url is not None and not self.config.getoption("--tiger-keep"):
            # the run's own writer gone (its data with it): the test's own errors say so; a --tiger-url one down
            # (restarting on its data): the end of the run drops the namespace, or says it could not
            with contextlib.suppress(TigerError):
                lost = self.client()._drop(name)
                if lost is not None:  # its lease ended during the test: the teardown fails saying so
                    item.stash[_lease_lost_key] = lost

    # -- once ------------------------------------------------------------------------

    def once(self, key: str, factory: Callable[[], Any], timeout: float | None = None) -> Any:
        """``Client.once`` in the run's namespace; a factory's pytest outcome is every caller's."""
        __tracebackhide__ = True
        client = self.client()
        try:  # (pytest-timeout or pytest.exit stopping the build hands the key to the next caller)
            value = client.once(key, factory, timeout, namespace=self.namespace)
        except OnceFailed as e:
            failed: OnceFailed | None = e
        else:
            failed = None
        return self._settled(client, key, value if failed is None else None, failed)

    async def once_async(self, key: str, factory: Callable[[], Any], timeout: float | None = None) -> Any:
        """``once`` for an async factory (a coroutine or async generator function), awaited: the same key,
        namespace, outcomes and end-of-run teardown, through a ``tiger.aio`` client sharing this
        process's connection."""
        __tracebackhide__ = True
        from tiger.aio import AsyncClient

        client = self.client()
        shared = AsyncClient.sharing(client)  # its once keys and teardowns are the process client's
        try:
            value = await shared.once(key, factory, timeout, namespace=self.namespace)
        except OnceFailed as e:
            failed: OnceFailed | None = e
        else:
            failed = None
        finally:
            shared._close_now()
        return self._settled(client, key, value if failed is None else None, failed)

    def _settled(self, client: Client, key: str, value: Any, failed: OnceFailed | None) -> Any:
        """A once call's end: a failed key's outcome raised as pytest's (skip, xfail, fail) or as is; a
        value with a teardown noted, so that this process tears it down at the run's end."""
        __tracebackhide__ = True
        if failed is not None:  # outside the except block: pytest shows the outcome alone, not its context too
            if failed.type_name == "Skipped":
                pytest.skip(f"once {key!r}: {failed.message}")
            if failed.type_name == "XFailed":
                pytest.xfail(f"once {key!r}: {failed.message}")
            if failed.type_name == "Failed":
                pytest.fail(str(failed), pytrace=False)
            raise failed.with_traceback(None) from None  # the builder's frames are in its message
        if key not in self._built and client.has_teardown(key, self.namespace):
            self._built[key] = client.label
            try:
                self.dir.record_builder({"by": client.label, "keys": list(self._built)})
            except NoRoom:  # the value is built and torn down at the end all the same: the controller says
                self.dir.mark_builder_no_room()  # it could not learn of it (``wait_for_builders``)
        return value

    # -- 4. end of run ---------------------------------------------------------------

    def tear_down(self) -> dict[str, Any]:
        """Run this process's once teardowns (every test of the run is done), for at most
        ``tiger_teardown_timeout``: one still running then is stopped (in the main thread, by SIGALRM,
        as pytest-timeout's signal method does), those not begun are not run (nor at the client's close).
        Returns, and leaves for the controller, this builder's state: ``outcomes``, each key's error
        (shown as text, None where it finished), and ``interrupted``, whether a Ctrl-C ended them. Without
        xdist, a 30 s teardown held a run with a 1 s timeout for 31 s."""
        if self._client is None or not self._built:
            return {}
        once = self._client._once
        errors: dict[str, BaseException] = {}
        interrupted = False
        try:
            for key, error in once.tear_down(self._client, 0.0, until=monotonic() + self.teardown_timeout):
                if key not in errors or isinstance(errors[key], KeyboardInterrupt):  # (its own error first)
                    errors[key] = error
                interrupted = interrupted or isinstance(error, KeyboardInterrupt)
        except KeyboardInterrupt:  # between teardowns (a key's retire): the rest are not run, as after one
            interrupted = True  # a Ctrl-C stopped; escaping, it ended the run with a traceback, and close()
        finally:  # then ran the rest with no timeout (a review)
            left = [key for _, key in once.not_torn_down()]
            once.forget_teardowns()
        not_run = _NOT_RUN_INTERRUPTED if interrupted else _NOT_RUN
        outcomes = {key: not_run if key in left else _outcome(errors.get(key)) for key in [*self._built, *left]}
        state = {"by": self._client.label, "keys": list(self._built), "outcomes": outcomes, "interrupted": interrupted}
        try:
            self.dir.record_builder(state)
        except NoRoom:  # the controller, waiting for this lock, says the outcomes were lost (``wait_for_builders``);
            self.dir.mark_builder_no_room()  # without xdist, it reports them from ``state``
        # (held on, the controller waited tiger_teardown_timeout for a builder that was done; let go after
        # any other error, a Ctrl-C say, the controller said "no room" of a disk that had room: a review.
        # Held then, it is let go as this process ends)
        self.dir.release_builder()
        self._built.clear()
        return state

    def report_outcomes(self, by: str, state: dict[str, Any]) -> None:
        """Add the teardowns that failed or were interrupted (a builder's ``state``: ``tear_down``) to the
        end-of-run report and its exit code."""
        outcomes: dict[str, str | None] = state.get("outcomes", {})
        if state.get("interrupted") and not any(o in (_INTERRUPTED, _NOT_RUN_INTERRUPTED) for o in outcomes.values()):
            self.end_with(pytest.ExitCode.INTERRUPTED)  # (at the last key's retire, after its teardown raised)
            self.report.append(f"the teardowns in {by} were interrupted (Ctrl-C)")
        for key, error in outcomes.items():
            past = f"past tiger_teardown_timeout ({self.teardown_timeout:g}s)"
            if error == _INTERRUPTED:
                self.end_with(pytest.ExitCode.INTERRUPTED)
                self.report.append(f"teardown of once {key!r} in {by} was interrupted")
            elif error == _STOPPED:
                self.end_with(pytest.ExitCode.TESTS_FAILED)
                self.report.append(f"teardown of once {key!r} in {by} was stopped: still running {past}")
            elif error == _NOT_RUN:
                self.end_with(pytest.ExitCode.TESTS_FAILED)
                self.report.append(f"teardown of once {key!r} in {by} did not run: {past}")
            elif error == _NOT_RUN_INTERRUPTED:
                self.end_with(pytest.ExitCode.INTERRUPTED)
                self.report.append(f"teardown of once {key!r} in {by} did not run: interrupted (Ctrl-C)")
            elif error is not None:
                self.end_with(pytest.ExitCode.TESTS_FAILED)
                self.report.append(f"teardown of once {key!r} in {by} failed:\n{error}")

    def end_with(self, code: pytest.ExitCode) -> None:
        """The run's exit code must be at least this bad (an interruption outranks a failure)."""
        self.exit_code = _worse(self.exit_code, code)

    def worker_end(self) -> None:
        """An xdist worker, after it reported its end: if it built values with teardowns, wait until
        every test of the run is done (the controller says so, or has ended), then tear them down."""
        if not self._built:
            return
        with ProcessWatch(self.controller_pid) as controller:
            try:
                while not self.dir.all_done() and not controller.ended(_POLL):
                    pass
            except KeyboardInterrupt:  # a second Ctrl-C: the run is over anyway
                pass
        self.tear_down()

    def note_interrupts(self) -> None:
        """The xdist controller: note each SIGINT (Ctrl-C) before the handler there was runs (raising KeyboardInterrupt).
        A user trial: a second Ctrl-C, as pytest formatted the first (a session fixture's teardown had failed),
        left the session's exit status OK, and the controller waited ``tiger_teardown_timeout`` (300 s) for the
        builders' teardowns, which xdist lets the workers run only after. Left alone where SIGINT is ignored
        or not a Python handler's (nothing waits then), and outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGINT)
        if not callable(previous):
            return

        def noted(signum: int, frame: Any) -> Any:
            __tracebackhide__ = True  # (pytest's report of the Ctrl-C names where it landed, not this)
            self.interrupted = True
            return previous(signum, frame)

        signal.signal(signal.SIGINT, noted)
        self._sigint = (previous, noted)

    def stop_noting_interrupts(self) -> None:
        """Put back the SIGINT handler ``note_interrupts`` found, unless another replaced ours since."""
        if self._sigint is not None and threading.current_thread() is threading.main_thread():
            previous, noted = self._sigint
            if signal.getsignal(signal.SIGINT) is noted:
                signal.signal(signal.SIGINT, previous)
            self._sigint = None

    def wait_for_builders(self) -> None:
        """The xdist controller, every worker done with its tests: let the builders tear down, wait for
        them (at most ``tiger_teardown_timeout``, and a moment for their report: each stops its own
        teardowns at that timeout, see ``tear_down``) and report."""
        self.waited = True
        if not self.tell_all_done():
            return
        pending = self.dir.builders()
        try:
            self._collect_builders(pending, monotonic() + self.teardown_timeout + _REPORT_GRACE, _REPORT_LATE)
            return
        except TimeoutError:  # past the deadline
            why = "past tiger_teardown_timeout"
            self.end_with(pytest.ExitCode.TESTS_FAILED)
        except KeyboardInterrupt:  # a second Ctrl-C: the builders got it too (a terminal sends it to the whole
            why = "interrupted"  # group), and report what they tore down and what they did not a moment later:
            self.end_with(pytest.ExitCode.INTERRUPTED)  # every key of theirs was said "not waited for
            with contextlib.suppress(TimeoutError, KeyboardInterrupt):  # (interrupted)" (a user trial, 3 of 3)
                self._collect_builders(pending, monotonic() + _REPORT_GRACE)
        for path in pending:
            state = self.dir.builder_state(path)
            for key in state.get("keys", ["?"]):
                by = state.get("by", f"pid {path.stem}")
                self.report.append(f"teardown of once {key!r} in {by}: not waited for ({why})")

    def _collect_builders(self, pending: list[Path], deadline: float, late: float = 0.0) -> None:
        """Report each builder of ``pending`` as it ends (taken off the list), until none is left; past
        ``deadline`` (``time.monotonic()``, moved by the time this process was not running: Ctrl-Z on the run
        then fg stopped the builders' teardowns with it), ``TimeoutError``, once no builder left runs or ``late``
        seconds more have passed: a builder that stopped its teardowns on time reports a moment later, and
        on a loaded machine that moment passed the deadline (a user trial, 3 of 3 at load 3 to 4: a teardown
        stopped on time, and one that had run to its end, were said "not waited for")."""
        freed: dict[Path, float] = {}  # builders whose lock is free, still running: when they are given up
        began, counted = monotonic(), 0.0
        while pending:
            for path in list(pending):
                state = self.dir.ended_builder(path)
                if state is None:
                    continue
                no_room, running = self.dir.builder_had_no_room(path), "outcomes" not in state and _still_runs(path.stem)
                if running and not no_room and monotonic() < freed.setdefault(path, monotonic() + _EXITING):
                    continue  # a killed builder lets go of its lock a moment before it ends (its kernel closes its
                    # files first): it was reported "no room" in that moment (a race left in the last session)
                pending.remove(path)
                by = state.get("by", f"pid {path.stem}")
                if "outcomes" in state:
                    self.report_outcomes(by, state)
                elif no_room or running:  # (let go of its lock, its outcomes unrecorded: no room even for an empty
                    # file to say so)
                    from tiger._paths import TEMP_REMEDY

                    self.end_with(pytest.ExitCode.TESTS_FAILED)
                    keys = ", ".join(repr(key) for key in state.get("keys", [])) or "(not recorded)"
                    self.report.append(
                        f"the outcomes of the teardowns of once {keys} in {by} are unknown: it found no room to "
                        f"record them in the run's directory {self.dir.path} {_NO_ROOM_WHY}: {TEMP_REMEDY}"
                    )
                else:
                    for key in state.get("keys", ["?"]):
                        self.report.append(f"teardown of once {key!r} did not run: its builder {by} ended before it")
            deadline, counted = moved(deadline, began, counted)
            if pending and monotonic() > deadline:
                if monotonic() > deadline + late or not any(_still_runs(path.stem) for path in pending):
                    raise TimeoutError
            slept = mark()
            time.sleep(_POLL)
            overslept(slept, _POLL)

    def tell_all_done(self) -> bool:
        """The controller: tell the builders every test is done (``mark_all_done``). False, said in the report,
        when the run's directory has no room for it: the builders tear down only as this process ends then,
        unreported, and nothing waits for them (a full disk made the run wait ``tiger_teardown_timeout``)."""
        try:
            self.dir.mark_all_done()
        except NoRoom as e:
            self.end_with(pytest.ExitCode.TESTS_FAILED)
            self.report.append(
                f"could not tell the builders of tiger_once values that every test is done ({e}): their teardowns "
                "run as this process ends, unreported"
            )
            return False
        return True

    def writer_gone(self) -> str | None:
        """For the controller's summary: what to say when the writer this run started ended before the run
        stopped it (killed, crashed): every test that used it after failed with Unavailable, saying only
        that it was silent."""
        writer = self.dir.writer()
        if self.given_url is not None or writer is None or not writer.get("pid"):
            return None
        from tiger._process import ProcessWatch

        with ProcessWatch(int(writer["pid"])) as watch:
            if not watch.ended():
                return None
        log = self.dir.path / "writer.log"
        last = _read_text(log).strip().splitlines()[-3:] if os.path.exists(log) else []
        return (
            f"the run's writer (pid {writer['pid']}) ended during the run, before the run stopped it: the tests "
            f"that used it after failed with Unavailable; its log ends: {' / '.join(last) or '(empty)'}"
        )

    def close(self) -> None:
        """This process's last act: close its client; the controller also stops or cleans the writer."""
        if self._client is not None:
            with contextlib.suppress(Exception):  # its teardowns ran and were reported already
                _close_shared(self._client)
            self._client = None
        if self.url is not None:
            if self._previous_env is None:
                os.environ.pop("TIGER_URL", None)
            else:
                os.environ["TIGER_URL"] = self._previous_env
            if self._previous_key is not None:
                os.environ["TIGER_SERVER_KEY"] = self._previous_key
        if not self.is_controller:
            return
        try:
            writer = self.dir.writer()
            if writer is not None and "url" in writer:
                if self.given_url is not None:
                    self._clean_shared_writer(writer["url"])
                elif self._started is not None:
                    self._started.stop()
                else:
                    stop_process(int(writer["pid"]), writer["url"])
        finally:
            if self._run_lease is not None:  # after the cleanup, which dropped the run's namespace (its lease
                self._run_lease.close()  # record with it): the lease ending cannot drop it under the cleanup
                self._run_lease = None
        self.dir.remove()

    def _clean_shared_writer(self, url: str) -> None:
        """A writer this run does not own: drop the run's namespace, its once keys, and the namespaces of
        tests whose teardown never ran (a crashed worker, Ctrl-C) or could not drop them (the writer down).

        A writer that is not there (nothing bound at its url: restarting on its data directory) is waited
        for ``CLEANUP_WAIT`` seconds; a cleanup that fails is said, with what is left and the command that
        drops it (it was silent, and a writer restarted as the run ended kept the run's namespaces for its
        lease grace, 10 minutes)."""
        from tiger._errors import HandshakeFailed
        from tiger._protocol import say
        from tiger._server import why_refused

        until, said = monotonic() + CLEANUP_WAIT, False
        while True:
            try:
                self._drop_run_namespaces(url)
                return
            except TigerError as e:
                why = str(e)
                down = not isinstance(e, HandshakeFailed) and why_refused(url, 0.5) is not None
                if down and self._given_keeps_data is False:  # its store went with it: nothing is left there
                    return
                if down and monotonic() < until:
                    if not said:
                        say(
                            f"tiger: no writer at {url}: waiting up to {CLEANUP_WAIT:g}s to drop this run's namespaces",
                            sys.stderr,
                        )
                        said = True
                    try:
                        time.sleep(0.1)  # a writer restarting: nothing is there to wake this wait
                        continue
                    except KeyboardInterrupt:  # (Ctrl-C: the wait is given up, said below; the run's end goes on)
                        why = f"the tiger writer at {url} is not there, and the wait for it was interrupted"
                say(
                    f"tiger: the run's cleanup at {url} failed ({why}): this run's namespaces there (its tests' "
                    f"{self.id}:..., and {self.namespace!r}: what tiger_once factories wrote) are left; the writer "
                    "drops those a process of this run leased once its lease grace passes (`tiger serve "
                    f"--lease-grace`, default 600 s); `tiger drop --url {url} --run {self.id}` drops them now",
                    sys.stderr,
                )
                return

    def _drop_run_namespaces(self, url: str) -> None:
        """``_clean_shared_writer``'s requests; ``TigerError`` as the first that fails raises it."""
        from tiger import _protocol as p
        from tiger._protocol import say
        from tiger._server import env_server_key, request_once
        from tiger._table import LEASE_TABLE, ONCE_TABLE

        key = env_server_key()
        tables = request_once(url, p.Stats(1, checksum=False), server_key=key).result["tables"]
        if self._run_lease is not None and not tables.get(LEASE_TABLE, {}).get(self.namespace):
            say(  # (after the terminal summary: said on stderr)
                f"tiger: the run's lease of its namespace {self.namespace!r} (what tiger_once factories wrote) "
                "ended during the run: the writer took the controller for gone (silent about 3 s: stopped by Ctrl-Z "
                "or SIGSTOP, paused in a debugger) and its lease grace (`tiger serve --lease-grace`) passed without "
                "a word from it, or a test dropped that namespace; what was written there before was lost",
                sys.stderr,
            )
        request_once(url, p.ClearTable(2, ONCE_TABLE, self.namespace), server_key=key)
        kept = self.config.getoption("--tiger-keep")  # the tests' namespaces stay, then
        prefixes = (self.namespace,) if kept else (self.namespace, f"{self.id}:")
        ours = {ns for namespaces in tables.values() for ns in namespaces if ns.startswith(prefixes)}
        for i, namespace in enumerate(sorted(ours), 3):
            request_once(url, p.Drop(i, namespace), server_key=key)


def _still_runs(pid: str) -> bool:
    """Whether process ``pid`` (a builder's, from its lock file's name) still runs, not a zombie (an xdist
    worker that crashed, not yet reaped): a builder lets go of its lock before it ends only once its
    teardowns are done and recorded, or found no room for it; a killed one a moment before it ends
    (``_EXITING``)."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (ValueError, OSError, IndexError):
        return False


def _stopped_by_pytest(error: BaseException) -> bool:
    """pytest-timeout's failure (its ``pytest.fail``) or ``pytest.exit``: a build they stop is handed to
    the next caller, not failed for every caller (``tiger._errors.STOPS_FROM_OUTSIDE``)."""
    return isinstance(error, pytest.exit.Exception) or (
        isinstance(error, pytest.fail.Exception) and "from pytest-timeout" in str(error)  # its only mark
    )


def _in_tiger(error: BaseException) -> bool:
    """Whether ``error`` was raised inside a call of tiger's (a frame of its traceback is tiger's code)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_TIGER):
            return True
        tb = tb.tb_next
    return False


def _is_async(factory: object) -> bool:
    """A coroutine or async generator function, or an object whose ``__call__`` is one."""
    return any(
        is_async(f)
        for f in (factory, type(factory).__call__)
        for is_async in (inspect.iscoroutinefunction, inspect.isasyncgenfunction)
    )


def asyncio_running_loop() -> Any:
    """The asyncio loop running in this thread, or None (asyncio not imported: none)."""
    asyncio = sys.modules.get("asyncio")
    return None if asyncio is None else asyncio._get_running_loop()


_INTERRUPTED = "interrupted"  # a teardown's outcome when Ctrl-C stopped it
_STOPPED = "stopped"  # ... when it still ran at tiger_teardown_timeout
_NOT_RUN = "not run"  # ... when it had not begun by then
_NOT_RUN_INTERRUPTED = "not run: interrupted"  # ... when a Ctrl-C ended the teardowns before it
_REPORT_GRACE = 2.0  # seconds the controller waits past tiger_teardown_timeout for the builders' reports
_REPORT_LATE = 10.0  # seconds more for builders still running then (a loaded machine): see ``_collect_builders``
_EXITING = 0.5  # seconds a builder whose lock is free, its outcomes unrecorded, is given to end (killed) before it is
# taken for one that found no room to record them (it runs on)
_RANK = (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.INTERRUPTED, pytest.ExitCode.USAGE_ERROR)


def _worse(a: pytest.ExitCode | None, b: pytest.ExitCode) -> pytest.ExitCode:
    """The worse of two exit codes the run's end can call for (an interruption outranks a failure)."""
    return b if a is None or _RANK.index(b) > _RANK.index(a) else a


def _outcome(error: BaseException | None) -> str | None:
    """A teardown's outcome as the run directory keeps it: None (it finished), interrupted, or the traceback."""
    from tiger._once import PastDeadline

    if error is None:
        return None
    if isinstance(error, PastDeadline):
        return _STOPPED
    if isinstance(error, KeyboardInterrupt):
        return _INTERRUPTED
    return "".join(traceback.format_exception(error)).rstrip()


_SHARED = (
    "tiger_client is shared by every test of this pytest process (an xdist worker, or the whole run without "
    "xdist) and closed by the tiger plugin at the end of the run"
)
_CLOSE_REFUSED = (
    f"{_SHARED}: closed by a test, every later test of the process failed with 'this client is closed' (and the "
    "run's tiger_once teardowns ran then); for a client of your own to close, use tiger.connect()"
)
_TEAR_DOWN_REFUSED = (
    f"{_SHARED}, after the teardowns of its once values (tiger_once's among them), which run after every test of "
    "the run: torn down by a test, they were gone for the tests after it; for once values of your own to tear "
    "down, use a client of your own: tiger.connect()"
)
_shared_classes: dict[str, type[Any]] = {}


def _shared_client_class() -> type[Client]:
    """The class of the plugin's ``tiger_client``: a ``tiger.Client`` whose ``close()``, ``with`` block
    and ``tear_down_once_values()`` raise ``TigerError`` (``_CLOSE_REFUSED``, ``_TEAR_DOWN_REFUSED``). A
    test that closed the session's client (``with tiger_client:`` closes it on leaving) failed every
    later test of its process, and ran the run's ``tiger_once`` teardowns in the middle of the run. The
    plugin closes it at the end (``_close_shared``); left open at exit (a run that ended without
    ``pytest_unconfigure``), tiger's exit handler closes it with every other client (it calls no refused method).
    Made at first use (tiger._client imports zmq)."""
    if "client" not in _shared_classes:
        from tiger._client import Client

        class SharedClient(Client):
            """The pytest plugin's ``tiger_client``: a ``tiger.Client`` that tests may not close (``_CLOSE_REFUSED``)."""

            def close(self) -> None:
                """Refused (``TigerError``): see the class."""
                __tracebackhide__ = True
                raise TigerError(_CLOSE_REFUSED)

            def __enter__(self) -> Client:
                """Refused (``TigerError``), before the block runs: leaving it would close the client."""
                __tracebackhide__ = True
                raise TigerError(_CLOSE_REFUSED)

            def tear_down_once_values(self, wait: float = 0.0) -> list[tuple[str, BaseException]]:
                """Refused (``TigerError``): see the class."""
                __tracebackhide__ = True
                raise TigerError(_TEAR_DOWN_REFUSED)

        _shared_classes["client"] = SharedClient
    return _shared_classes["client"]


def _close_shared(client: Client) -> None:
    """Close the plugin's shared client, its once teardowns run as ``Client.close`` runs them: made a plain
    ``tiger.Client`` again first (the shared class refuses ``close`` and the ``tear_down_once_values`` it calls)."""
    from tiger._client import Client

    client.__class__ = Client
    client.close()


def _shared_async_client_class() -> type[AsyncClient]:
    """The class of ``tiger_aclient``: ``AsyncClient.sharing`` the process's ``tiger_client``, so its once
    values are that client's: its ``tear_down_once_values()`` raises ``TigerError`` (``_TEAR_DOWN_REFUSED``).
    Its ``close()`` closes only its own socket (the fixture's teardown closes it again, as a no-op)."""
    if "aclient" not in _shared_classes:
        from tiger.aio import AsyncClient

        class SharedAsyncClient(AsyncClient):
            """The pytest plugin's ``tiger_aclient``, over ``tiger_client``'s connection (its once values)."""

            async def tear_down_once_values(self, wait: float = 0.0) -> list[tuple[str, BaseException]]:
                """Refused (``TigerError``): see the class."""
                __tracebackhide__ = True
                raise TigerError(_TEAR_DOWN_REFUSED)

        _shared_classes["aclient"] = SharedAsyncClient
    return _shared_classes["aclient"]


def _load_seeds(client: Client, paths: list[Any]) -> int:
    from tiger._seed import load_files

    return load_files(client, paths)


# The run directory's files are read and written with ``os`` and ``open`` alone, never through pathlib (its
# methods call ``os`` several frames down): under pyfakefs, what a module it leaves alone (tiger's) calls
# reaches the real disk, and what pathlib calls for it did not on Python 3.13 (_unpatched.leave_tiger_alone).


def _write_json(path: Path, value: Any) -> None:
    """Atomically (``tiger._paths.write_whole``: aside, then renamed): a reader sees all of it or nothing;
    ``NoRoom`` where the file system has no room for it, the aside file removed."""
    from tiger._paths import write_whole

    write_whole(str(path), json.dumps(value))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except FileNotFoundError:
        return None


def _read_text(path: Path) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _touch(path: Path) -> None:
    from tiger._paths import touch

    touch(str(path))


_KEPT = ("zmq", "msgpack", "tiger")  # packages whose modules must stay the ones first imported
_kept: dict[str, Any] = {}  # their modules, as first imported in this process (empty: the plugin imported none)


def _keep_modules(activate: bool = False) -> None:
    """Put back into ``sys.modules`` any module of zmq, msgpack or tiger that was dropped from it, and
    remember those imported since.

    pytester restores ``sys.modules`` to a snapshot (``runpytest_inprocess`` after the nested run, its
    fixture after the test), dropping what was imported meanwhile. Imported a second time, zmq is a copy
    that does not mix with the first (its compiled core, loaded once per process, raises the first copy's
    errors: a client cannot connect), and tiger's client a copy with a default namespace of its own.
    Active once zmq is imported in the process, by the plugin (``activate``) or by a test (a test
    calling ``tiger.serve()`` inside a pytester run is enough to break the next one): called before
    the plugin's imports and around each test. It changes pytester's isolation for these three
    packages only, which cannot be imported twice anyway. Not covered: a module of these packages
    that a test imports for the first time after a nested in-process run in that same test."""
    if not (_kept or activate or "zmq" in sys.modules):
        return  # nothing to keep: a run that never imports zmq never gets further
    for name, module in _kept.items():
        if sys.modules.get(name) is not module:
            sys.modules[name] = module
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in _KEPT:
            _kept.setdefault(name, module)


def _run_dir() -> str:
    from tiger._paths import short_temp_path

    return short_temp_path("tiger-run-")  # made at first use (``_RunDir.made``)


_run_key = pytest.StashKey[_Run]()


# -- 1. configure ---------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    from tiger import _unpatched  # (what test tools replace, taken before any test replaces it)

    _unpatched.leave_tiger_alone()  # (pyfakefs's plugin imported pyfakefs: before any ``fs`` is set up)
    if _stopped_by_pytest not in STOPS_FROM_OUTSIDE:
        STOPS_FROM_OUTSIDE.append(_stopped_by_pytest)
    identity: dict[str, Any] | None = getattr(config, "workerinput", {}).get(_RUN_KEY)
    made = identity is None  # the controller, or the only pytest process: it makes the run's directory
    if identity is None:
        identity = {
            "id": secrets.token_hex(3),
            "dir": _run_dir(),
            "controller": os.getpid(),
            "url": config.getoption("--tiger-url") or os.environ.get("TIGER_URL") or None,
        }
    try:
        run = _Run(config, identity)
    except BaseException:  # a usage error (a bad tiger_teardown_timeout): pytest ends with no unconfigure of ours
        if made:
            _RunDir(Path(identity["dir"])).remove()
        raise
    config.stash[_run_key] = run


# the modules tiger's fixtures import on first use, and the fixtures after which (tiger_aclient: tiger.aio too)
_FIXTURE_MODULES = ("tiger._client", "tiger._server", "tiger._once", "tiger._paths", "tiger._process", "tiger._seed")
_FAKE_FILESYSTEMS = frozenset(("fs", "fs_class", "fs_module", "fs_session"))  # pyfakefs's fixtures
_FIXTURES = frozenset(("tiger_url", "tiger_client", "tiger_aclient", "tiger_namespace", "tiger_once"))


def _runs_no_test(config: pytest.Config) -> bool:
    """``--collect-only``, ``--fixtures``, ``--fixtures-per-test``: the tests are collected, none is run."""
    option = config.option
    return bool(option.collectonly or getattr(option, "showfixtures", False) or getattr(option, "show_fixtures_per_test", False))


@pytest.hookimpl(tryfirst=True)  # (an xdist worker: before xdist sends the controller its collection)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Import what tiger's fixtures need before the first test runs, when a collected test uses tiger (one
    of its fixtures, ``tiger_isolate``, or a module of tests that imported tiger): a test's timeout
    (pytest-timeout's signal method) landing in the import of zmq left it half imported for the rest of
    the process, whose compiled core kept the first, broken copy (every later test: ``AttributeError:
    module 'zmq' has no attribute 'COPY_THRESHOLD'``). Nothing for a run of tests that do not use tiger,
    nor for ``--collect-only``, ``--fixtures`` or ``--fixtures-per-test`` (they collect, then run no test)."""
    config = session.config
    if config.stash.get(_run_key, None) is None or not session.items or _runs_no_test(config):
        return
    fixturenames = [frozenset(getattr(item, "fixturenames", ())) for item in session.items]
    used = bool(config.getini("tiger_isolate")) or any(names & _FIXTURES for names in fixturenames)
    used = used or any(getattr(getattr(item, "module", None), "tiger", None) is sys.modules["tiger"] for item in session.items)
    if not used:
        return
    run = config.stash[_run_key]
    if not run.is_controller and run.leases():  # the xdist controller takes the run's lease before any test runs
        with contextlib.suppress(NoRoom):  # (``pytest_xdist_node_collection_finished``; with no room, the first
            run.dir.mark_uses_tiger()  # test using tiger says so)
    modules = (*_FIXTURE_MODULES, "tiger.aio") if any("tiger_aclient" in names for names in fixturenames) else _FIXTURE_MODULES
    _keep_modules(activate=True)
    try:
        for name in modules:
            importlib.import_module(name)
    except Exception:  # (a broken install: the fixture that imports it says so, in its test)
        return
    _keep_modules()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: hand the run's identity to each worker."""
    node.workerinput[_RUN_KEY] = node.config.stash[_run_key].identity


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """xdist controller, a worker's collection in (no test runs before every worker's is): if it uses tiger,
    on a writer the run leases its namespaces at, reach the writer and lease the run's namespace now (the
    controller runs no test: it reached the writer only at its end, and a controller killed before then left
    the run's namespace at the writer for good). A writer that cannot be reached is recorded for the
    workers, which say so as ever (the first test asking), and the run ends with that line's exit code,
    which the summary says too (the tests using tiger may all have been skipped)."""
    _lease_if_used(node.config)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """xdist controller, a worker's report in: as ``pytest_xdist_node_collection_finished``, for a worker that
    reached the writer during a test (``request.getfixturevalue("tiger_once")``, a module that imports tiger
    inside a function: not seen in its collection; a trial killed such a run's controller, and its run
    namespace stayed for good). One ``stat`` of the run directory per report until then."""
    node = getattr(report, "node", None)  # (set by xdist on a worker's report, in the controller)
    if node is not None:
        _lease_if_used(node.config)


def _lease_if_used(config: pytest.Config) -> None:
    """The controller: once a worker uses tiger (its ``uses-tiger`` mark), on a writer the run leases its
    namespaces at, reach the writer and lease the run's namespace; a writer it cannot reach is said in the
    summary (once)."""
    run = config.stash.get(_run_key, None)
    if run is None or not run.is_controller or run.url is not None or run.lease_failed or not run.leases():
        return
    if run.dir.uses_tiger():
        failure = run.reach()
        if failure is not None:  # said once, tried once
            run.lease_failed = True
            run.report.append(str(failure).removeprefix("tiger: "))


def pytest_report_header(config: pytest.Config) -> str | None:
    run = config.stash.get(_run_key, None)
    if run is None:
        return None
    where = f"the writer at {run.given_url}" if run.given_url else "a writer of its own, started when a test first needs it"
    return f"tiger: run {run.id}, {where}"


# -- 3. each test ---------------------------------------------------------------------


def _wants_namespace(item: pytest.Item) -> bool:
    return "tiger_namespace" in getattr(item, "fixturenames", ()) or bool(item.config.getini("tiger_isolate"))


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """The test's namespace entered before its fixtures are set up. The innermost wrapper (``trylast``):
    a pytest-timeout stopping it (as it imported the client, the first time) skipped the wrappers inside
    it, pytest's logging among them, whose teardown then raised ``KeyError`` for a stash key never set."""
    _keep_modules()
    run = item.config.stash.get(_run_key, None)
    if run is not None and _FIXTURES.intersection(getattr(item, "fixturenames", ())):
        run.keep_env()
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
        run.leave_test()


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Generator[None, Any, None]:
    """A fixture of a wider scope than the test (session, module, ...) outlives the test's namespace:
    it is set up in the run's namespace instead, as ``tiger_once`` factories are.

    A fixture of a wider scope stopped from outside (pytest-timeout, ``pytest.exit``) inside a call of
    tiger's is set up again by the next test that asks: pytest keeps such a fixture's error for its
    scope, and a timeout of the first test using tiger (as the plugin started the writer and loaded the
    seed files, or as a session fixture waited for a ``tiger_once`` build) made every later test of the
    process error with it. (Stopped in code of its own, it keeps pytest's rule.)"""
    if fixturedef.argname in _FAKE_FILESYSTEMS:  # (pyfakefs's: tiger's modules imported before its fake begins)
        from tiger._unpatched import leave_tiger_alone

        leave_tiger_alone(import_modules=True)
    run = request.config.stash.get(_run_key, None)
    restore = None
    if run is not None and run.in_test and fixturedef.scope != "function":
        from tiger._client import push_default_namespace

        restore = push_default_namespace(run.namespace)
    try:
        outcome = yield
    finally:
        if restore is not None:
            restore()
    stop = None if outcome.excinfo is None else outcome.excinfo[1]
    if fixturedef.scope != "function" and stop is not None and stopped_from_outside(stop) and _in_tiger(stop):
        fixturedef.finish(request)  # type: ignore[arg-type]  # (pytest does so for a fixture set up again with another parameter)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    name = item.stash.get(_namespace_key, None)
    if name is not None and report.failed and item.config.getoption("--tiger-keep"):
        report.sections.append(("tiger", f"namespace kept: {name}"))
    lost = item.stash.get(_lease_lost_key, None) if call.when == "teardown" else None
    if lost is not None:  # (a test that read its records back found them gone, and nothing said why)
        del item.stash[_lease_lost_key]
        if report.passed:
            report.outcome = "failed"
            report.longrepr = lost
        else:
            report.sections.append(("tiger", lost))


# -- 4. end of run --------------------------------------------------------------------


def pytest_sessionstart(session: pytest.Session) -> None:
    run = session.config.stash.get(_run_key, None)
    if run is not None:
        run.session = session
        if run.is_controller and session.config.pluginmanager.hasplugin("dsession"):  # an xdist controller alone:
            run.note_interrupts()  # it runs no test (asyncio.run and trio take Ctrl-C only from Python's own handler)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """The xdist controller, before xdist stops its workers: the builders among them tear down now. An
    interrupted run's workers may sit idle, waiting for xdist to stop them (a SIGINT to the controller
    alone): told that every test is done, they tear down as xdist stops them, and are waited for then
    (``pytest_sessionfinish_after_fixtures``, after xdist's own; waiting here hung until the timeout)."""
    run = session.config.stash.get(_run_key, None)
    if run is not None and run.is_controller and run.dir.exists():  # (a builder with no room to say so: told too)
        if session.exitstatus == pytest.ExitCode.INTERRUPTED or run.interrupted or not run.dir.builders():
            run.tell_all_done()
        else:
            run.wait_for_builders()


@pytest.hookimpl(hookwrapper=True, tryfirst=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_raised(session: pytest.Session) -> Generator[None, Any, None]:
    """A worker whose session finish raised: pytest then skips ``pytest_unconfigure``, where its once
    teardowns run and their outcomes are left for the controller (``worker_end``), so they run here,
    after xdist sent the worker's end (its hook wrapper, inside this one). A second Ctrl-C (execnet sends
    one 5 s after xdist stops its workers) landing in a slow session fixture's teardown: the worker sat
    waiting for xdist, its teardowns not run, and the controller waited ``tiger_teardown_timeout`` (300 s)
    for it; or, the worker stopped, its teardowns ran at exit and the summary said they "did not run"."""
    outcome = yield
    run = session.config.stash.get(_run_key, None)
    if outcome.excinfo is not None and run is not None and not run.is_controller:
        run.worker_end()


@pytest.hookimpl(trylast=True, specname="pytest_sessionfinish")
def pytest_sessionfinish_after_fixtures(session: pytest.Session) -> None:
    """After pytest tore down the session's fixtures (an interrupted or stopped run tears them down at
    session finish): the last test's namespace is left, and a single-process run's teardowns run."""
    run = session.config.stash.get(_run_key, None)
    if run is None:
        return
    run.leave_test(drop=False)  # a test interrupted (Ctrl-C, pytest.exit) before its own teardown
    if not run.is_controller:
        return
    if (session.exitstatus == pytest.ExitCode.INTERRUPTED or run.interrupted) and run.dir.builders() and not run.waited:
        run.wait_for_builders()  # xdist (its trylast hook registered after this one: run before it) stopped them
    run.report_outcomes(run.label, run.tear_down())
    writer = run.dir.writer()
    if writer is not None and "error" in writer:  # a worker stopped the run with that line (xdist showed it)
        run.end_with(pytest.ExitCode(writer["returncode"]))
    if run.exit_code is not None and session.exitstatus in _RANK:  # not an internal error, nor "no tests"
        session.exitstatus = _worse(pytest.ExitCode(session.exitstatus), run.exit_code)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(_run_key, None)
    if run is None or not run.is_controller:
        return
    for line in run.report:
        terminalreporter.write_line(f"tiger: {line}", red=True)
    gone = run.writer_gone()
    if gone is not None:
        terminalreporter.write_line(f"tiger: {gone}", red=True)
    if config.getoption("--tiger-stats"):
        from tiger._cli import format_run_stats

        terminalreporter.write_sep("=", "tiger")
        writer = run.dir.writer()
        if writer is None or "url" not in writer:
            terminalreporter.write_line(f"run {run.id}: no test used the tiger writer")
        else:
            with contextlib.suppress(TigerError):
                terminalreporter.write_line(format_run_stats(run.client(), run.namespace))


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_run_key, None)
    if run is None:
        return
    run.stop_noting_interrupts()
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
    """A connected tiger.Client for this process, shared by every test of the process: its ``close()``, a
    ``with tiger_client:`` block and its ``tear_down_once_values()`` raise ``TigerError`` (the plugin closes
    it at the end of the run; ``tiger.connect()`` makes a client of a test's own)."""
    return pytestconfig.stash[_run_key].client()


@pytest.fixture
def tiger_aclient(tiger_client: Client, tiger_namespace: str) -> Iterator[AsyncClient]:
    """A ``tiger.aio.AsyncClient`` for this test: writes, waits, ``once`` and batches are awaited, reads
    are plain calls; in a namespace of the test's own (``tiger_namespace``). It shares the connection of
    the process's ``tiger_client`` (one replica per process; ``AsyncClient.sharing``) with a command
    socket of its own, closed after the test.

    Made without awaiting anything, so the fixture itself needs no event loop: it serves ``async def``
    tests run by pytest-asyncio (strict or auto mode) and by anyio's pytest plugin (backend asyncio)
    alike, whatever their loop scope; neither is required by tiger."""
    client = _shared_async_client_class().sharing(tiger_client)
    yield client
    client._close_now()


@pytest.fixture
def tiger_namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own (``RUN:WORKER::NODEID``; a rerun's: ``... (run N)``): the default
    namespace of every thread of the process from setup to teardown, dropped afterwards."""
    run = request.config.stash[_run_key]
    run.demand()
    name = run.enter_test(request.node)  # (entered at setup; requested dynamically, getfixturevalue: from now on)
    run.lease_test(name)
    return name


@pytest.fixture(autouse=True)
def _tiger_isolate(request: pytest.FixtureRequest) -> None:
    if request.config.getini("tiger_isolate"):
        request.getfixturevalue("tiger_namespace")


@pytest.fixture(scope="session")
def tiger_once(pytestconfig: pytest.Config) -> Callable[..., Any]:
    """``tiger_once(key, factory, timeout=None)``: ``factory()`` runs once across every process of the
    run; every caller gets its value. A generator factory's code after its ``yield`` runs once, after
    every test of every process of the run. An async factory (a coroutine or async generator function)
    is awaited: ``await tiger_once(key, factory)`` in an async fixture or test. See ``Client.once`` for
    the outcomes."""
    run = pytestconfig.stash[_run_key]

    def once(key: str, factory: Callable[[], Any], timeout: float | None = None) -> Any:
        __tracebackhide__ = True
        if _is_async(factory):
            if asyncio_running_loop() is None:  # a sync fixture or test: it would get a coroutine, never awaited
                name = callable_name(factory)
                raise TypeError(
                    f"tiger_once({key!r}, {name}): an async factory is awaited, `await tiger_once(key, factory)`, in an "
                    "async fixture or test; this call runs in no asyncio event loop (under trio, or anyio's trio backend, "
                    "async factories are not supported: use a plain factory, or the asyncio backend)"
                )
            return run.once_async(key, factory, timeout)  # awaited by the async fixture or test that called
        return run.once(key, factory, timeout)

    return once
