"""Client and Table handles: writes go to the writer over zmq, reads come from the local replica."""

from __future__ import annotations

import atexit
import builtins
import contextlib
import inspect
import itertools
import logging
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import zmq

from tiger import _protocol as p
from tiger._batch import Batch
from tiger._calls import (
    GIVE_UP,
    PAUSE_GRACE,
    PROBE,
    RESEND,
    Attempts,
    WaitDeadline,
    call_expiry,
    callable_name,
    check_seconds,
    clock_offset,
    resend_interval,
    stretched,
)
from tiger._clock import mark, monotonic, overslept, paused_since, unpaused, wall
from tiger._core import LEASE_GRACE
from tiger._errors import (
    FAILURES,
    FeedOverflow,
    HandshakeFailed,
    NotFound,
    ProtocolError,
    TigerError,
    Timeout,
    Unavailable,
    shown,
)
from tiger._feed import (
    DEFAULT_MAX_QUEUED,
    Change,
    Feed,
    Owner,
    Subscription,
    check_max_queued,
    check_since,
    check_tables,
    check_timeout,
    describe,
)
from tiger._handles import SENT_BY_PICKLE, Handle
from tiger._handles import public_name as _public_name
from tiger._lookup import Endpoint, connect_socket, endpoint_or_why, wait_for_endpoint
from tiger._once import Once
from tiger._owned import OwnedLock
from tiger._process import (
    OUT_OF_DESCRIPTORS,
    ZMQ_THREADS,
    PauseWatch,
    check_room,
    out_of_descriptors,
    unsupported_environment,
)
from tiger._replica import Replica, _reachable
from tiger._server import (
    check_connect_url,
    check_server_key,
    env_server_key,
    handshake_failure,
    no_answer,
    recently_refused,
    secure,
    unshown,
)
from tiger._table import (
    GLOBAL,
    RESERVED_PREFIX,
    Put,
    Record,
    check_fields,
    check_id,
    check_leasable,
    check_name,
    check_prefix,
    check_record,
    check_records,
    check_storable_str,
    check_update,
)

# The current namespace is a ContextVar (per thread and task); its default is the process's
# default namespace, "global" unless the pytest plugin made a test's namespace the default while
# that test runs (so threads the test starts, which begin with an empty context, write into it).
# A different default is a different ContextVar: reads stay one C-level get(), never a Python call.
_namespace: ContextVar[str] = ContextVar("tiger_namespace", default=GLOBAL)
_current = _namespace.get
log = logging.getLogger("tiger.client")


@contextmanager
def namespace(name: str) -> Iterator[str]:
    """Make ``name`` the current namespace inside the ``with`` block (contextvars: per thread and task).

    Overrides the process's default namespace (see ``current_namespace``) in this thread or task only.
    """
    check_name(name, "namespace")
    var = _namespace  # the block ends on the variable it started on, whatever happens to the default
    token = var.set(name)
    try:
        yield name
    finally:
        var.reset(token)


def current_namespace() -> str:
    """The namespace reads and writes apply to here: the innermost ``namespace()`` block of this thread
    or task, else the process's default: ``"global"``, or, under the pytest plugin, the namespace of
    the test that is running (for every thread of the process)."""
    return _current()


def push_default_namespace(name: str) -> Callable[[], None]:
    """Make ``name`` the namespace of every thread and task of this process that is in no
    ``namespace()`` block; returns the function that restores the previous default.

    The pytest plugin calls this around each test that has a namespace. ``namespace()`` blocks
    entered before the call do not apply again until the default is restored.
    """
    global _namespace, _current
    check_name(name, "namespace")
    previous = _namespace
    _namespace = ContextVar("tiger_namespace", default=name)
    _current = _namespace.get

    def restore() -> None:
        global _namespace, _current
        _namespace = previous
        _current = previous.get

    return restore


class _CurrentNamespace:
    """The default namespace of ``watch``: the current one at the call (None means every namespace)."""

    def __repr__(self) -> str:
        return "tiger.current_namespace()"


CURRENT = _CurrentNamespace()


@dataclass(frozen=True)
class Page:
    """One page of ``Table.list``, Stripe style."""

    data: list[Record]
    has_more: bool
    object: str = field(default="list")


RETRY_PAUSE = 0.5  # seconds between two tries of a call made again while the writer is unavailable
# seconds a call's url must refuse connections, seen at its resends, before the call stops waiting for its
# deadline: a writer that is gone is not waited for, one restarting at its url (under a second) still is
GONE_AFTER = 1.0
# seconds connect's probe of the handshake (``handshake_failure``) may take, at a resend: a handshake took 2-50 ms
# here, and more under load (0.1 s missed it for 50 s while the suite ran on both cores)
HANDSHAKE_PROBE = 0.5
# connect's handshake probes in a row that heard nothing after which it makes no more (``Client._probe_hello``)
SILENT_PROBES = 2
# seconds connect's hello waits for its answer before it probes the handshake the first time (``Attempts``'
# ``PROBE``), as a one-shot request does (``GREETING_PROBE_AFTER``): a writer answers a hello in milliseconds
HELLO_PROBE_AFTER = 0.25


class Refusals:
    """What one call saw of its url at its resends (``Client._silence``): since when it has refused
    connections (``time.monotonic()`` seconds), None while it accepts them or cannot tell."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since: float | None = None


_open_clients: weakref.WeakSet[_Connection] = weakref.WeakSet()  # (made by tiger.connect or tiger.aio.connect)


def _socket_options(url: str, server_key: str | bytes | None) -> Callable[[zmq.Socket[Any]], None]:
    """What every socket of a client gets: IPv6 for a [::1] URL, CurveZMQ with a server key.

    A function of its own, not a method: the replica keeps it, and must not keep the client alive.
    """

    def apply(sock: zmq.Socket[Any]) -> None:
        if "[" in url:
            sock.setsockopt(zmq.IPV6, 1)
        secure(sock, server_key)

    return apply


class _Closable(Protocol):
    """A client's command socket: a ``zmq.Socket``, or tiger.aio's wrapper of one."""

    def close(self, linger: int | None = ...) -> None: ...


def _shut_down(replica: Replica | None, ctx: zmq.Context[Any], command: Sequence[_Closable]) -> None:
    """Stop the replica, close the command socket, end the context: ``close()`` and the finalizer."""
    stopped = replica is None or replica.stop()
    command[0].close(linger=0)
    if stopped:
        ctx.term()  # waits for the replica's own sockets, which its thread closes as it ends (thread-safe)
    else:  # called on the replica's own thread (a collection there): it stops as soon as this returns
        replica.term_context_when_stopped()  # type: ignore[union-attr]


def _abandoned(
    replica: Replica | None, ctx: zmq.Context[Any], command: Sequence[_Closable], pid: int, owed: Mapping[tuple[str, str], int]
) -> None:
    """A Client collected without ``close()``: stop its replica thread and close its sockets.

    No goodbye is sent (the writer forgets a client after its silence). Runs in whichever thread
    dropped the client's last reference; never in a forked copy, whose sockets are the parent's. The
    teardowns of the once values it built do not run (no call can be made from here): a warning names
    them (nothing said so: a user trial). Clients still referenced at exit are closed then, teardowns
    and all (``_close_open_clients``); a client kept until exit for its teardowns leaked one client per
    test of a suite that never closed them (a review: out of descriptors by the 20th test)."""
    if os.getpid() == pid:
        if owed:
            log.warning(
                "a tiger client was dropped without close(): the teardowns of its once values %s do not run "
                "(close it, or use it in a with / async with block)",
                sorted(key for _, key in owed),
            )
        _shut_down(replica, ctx, command)


@atexit.register
def _close_open_clients() -> None:
    """Close the clients left open at exit (blocking and ``tiger.aio``), in this thread: their teardowns run
    where their values were built (one run in another thread failed on a sqlite connection made here).

    Every teardown runs first, with every client still open: closed one after another, each running its
    own, a teardown writing through another client left open found it closed already (a user trial:
    1 time in 2, by the order of a set). Newest client first (as ``ExitStack`` unwinds), but first
    those whose values no client still to tear down holds: one after another, a client holding the
    next one's value and building one that client held waited its whole timeout for it. So each first
    lets go of what none of its teardowns may use (``Once.let_go_of_newer``), and of the rest once its
    own teardowns ran. Then every client closes. A ``tiger.aio`` client's teardowns are awaited in an
    event loop of their own (``asyncio.run``: its loop is gone; what they made bound to that loop may
    refuse to be closed from another, that error is the teardown's, logged). A Ctrl-C ends the
    teardowns (the rest logged, not run); the clients still close."""
    here = os.getpid()
    clients = sorted((c for c in _open_clients if not c._closed and c._pid == here), key=lambda c: c._made, reverse=True)
    for client in clients:
        _let_go_at_exit(client)
    waiting = list(clients)
    while waiting:
        still_open = {client.client_id for client in waiting}
        ready = next((c for c in waiting if not (_holders(c) & still_open - {c.client_id})), waiting[0])
        waiting.remove(ready)
        if not _run_teardowns_at_exit(ready):
            break
    for client in clients + [c for c in list(_open_clients) if c not in clients]:  # (forked children's too)
        _close_at_exit(client)


RELEASE_AT_EXIT = 1.0  # seconds a client left open at exit waits for each writer's answer as it lets go of a value
CLOSED_AT_EXIT = (
    "this client is closed: tiger closed it as the interpreter exits, with every client left open (an atexit "
    "handler runs after tiger's when it was registered before tiger was first used, or before the client was "
    "made: close the client yourself in that handler, or register the handler after)"
)


def _holders(client: _Connection) -> set[str]:
    try:
        return client._once.holders(client)
    except Exception:  # (a replica stopped): nothing to wait for
        return set()


def _run_teardowns_at_exit(client: _Connection) -> bool:
    """Run ``client``'s teardowns at exit, then let go of every value it still holds (as its goodbye
    would); each error logged. False when a Ctrl-C ended them (the rest are not run)."""
    try:
        errors = client._tear_down_at_exit()
    except KeyboardInterrupt:
        log.warning("tearing down the once values of %r at exit: interrupted (Ctrl-C)", client)
        return False
    except Exception:  # (a replica stopped, a writer gone): the other clients still tear down
        log.exception("tearing down the once values of %r at exit", client)
        errors = []
    for key, error in errors:
        log.error("once %r: its teardown raised at exit", key, exc_info=(type(error), error, error.__traceback__))
    _let_go_at_exit(client)
    return True


def _let_go_at_exit(client: _Connection) -> None:
    try:
        client._let_go_at_exit()
    except Exception:  # (a replica stopped, a writer gone): its goodbye lets go as before
        log.debug("letting go of once values at exit", exc_info=True)


def _close_at_exit(client: _Connection) -> None:
    client._closed_at_exit = True  # (its later use says so)
    try:
        left = client._once.not_torn_down() if os.getpid() == client._pid else []
        if left:
            log.warning("closing %r at exit with once teardowns not run: %s", client, sorted(k for _, k in left))
        client._close_now()
    except Exception:  # the other clients still close
        log.exception("closing %r at exit", client)


_closed_by_multiprocessing = 0  # the pid of the multiprocessing child whose exit hooks run _close_open_clients


def _close_as_multiprocessing_ends() -> None:
    """In a child process multiprocessing started (fork, forkserver), have its exit hooks close the clients
    left open (``_close_open_clients``): such a child ends with ``os._exit`` after them, no atexit handler
    runs, and its clients' once teardowns never ran, their keys held by a client gone silent (a user trial, 4
    of 4; a parent's teardown then waited for it). Once per such process, at its first client; ahead of
    multiprocessing's own pools (``exitpriority``)."""
    global _closed_by_multiprocessing
    if _closed_by_multiprocessing == os.getpid():
        return
    process = sys.modules.get("multiprocessing.process")
    if process is None or process.parent_process() is None:  # (not a child multiprocessing started)
        return
    import multiprocessing.util

    _closed_by_multiprocessing = os.getpid()
    multiprocessing.util.Finalize(None, _close_open_clients, exitpriority=20)


_made = itertools.count()  # each client's place in the order they were made (closed at exit newest first)


class _Caller:
    """A call's token for its client's command socket (``OwnedLock``'s holder): the thread making it."""

    __slots__ = ("thread",)

    def __init__(self) -> None:
        self.thread = threading.get_ident()


class _Connection(Handle):
    """What the blocking :class:`Client` and the asyncio ``tiger.aio.AsyncClient`` share: their arguments,
    ids and context, the local replica and what is read from it, the bytes of a call (its expiry, its size)
    and what its answer means. No socket is used here: each client moves the bytes its own way."""

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        heartbeat_timeout: float = 2.0,
        server_key: str | bytes | None = None,
        deadline: float | None = None,
        pause_watch: PauseWatch | None = None,
    ) -> None:
        began = mark()  # (before any step: a stop from here on is seen by the pause watch's first look)
        unsupported = unsupported_environment()
        if unsupported is not None:
            raise TigerError(unsupported)
        check_connect_url(url)
        self.timeout: float = check_seconds(timeout, "timeout", positive=True)  # type: ignore[assignment]
        # when connecting must be done (``time.monotonic()``): the lookup, the hello and the snapshot share the
        # timeout (each waited it whole: a slow name server then a paused writer took twice the timeout)
        # (``deadline``: when a timeout that began earlier, as tiger.aio's lookup or tiger dump's probe, ends;
        # ``pause_watch``: the watch begun with it, as tiger.aio's connect begins one before its lookup)
        self._connect_began = began[0] if pause_watch is None else pause_watch.began
        self._connect_deadline = self._connect_began + self.timeout if deadline is None else deadline
        self.url = url
        check_server_key(server_key)  # (before any socket: a bad key raised with a socket open, and closing the
        self._server_key = server_key  # context waited for it for ever: connect() hung, and the run with it)
        # a writer silent this long is taken for gone
        self.heartbeat_timeout: float = check_seconds(heartbeat_timeout, "heartbeat_timeout", positive=True)  # type: ignore[assignment]
        # connect's deadline does not count time this process was not running (``_connect_by``): watched until
        # connected, from its first step (a worker stopped as it checked for room failed "did not answer")
        self._pause_watch = PauseWatch(self._connect_deadline + 1.0, began) if pause_watch is None else pause_watch
        try:
            self._first_steps(url)
        except BaseException:
            self._pause_watch.stop()
            raise

    def _first_steps(self, url: str) -> None:
        """``__init__``'s steps that do something: the lookup, the checks for room, the context."""
        # where the sockets connect: the url's host name looked up by tiger, within the timeout (``tiger._lookup``)
        address = endpoint_or_why(url, 0)[0]
        if address is None:  # (its deadline moved by the pauses the watch finds, between lookups too)
            address = wait_for_endpoint(url, self.timeout, self._connect_deadline, self._pause_watch.moved)
        self._endpoint = Endpoint(url, address)
        self.resends = 0  # calls sent again for want of an answer (Lazy Pirate)
        self._clock_offset = 0.0  # the writer's time.time() minus ours
        self.client_id = p.new_client_id()
        self._leased: set[str] = set()  # the namespaces this client leased and has not dropped itself
        self._pid = os.getpid()
        self._closed = False
        self._silent_probes = 0  # connect's handshake probes in a row that heard nothing (``_probe_hello``)
        self._handshake_probed = False  # whether a probe was made (then none at a call's deadline)
        check_room("a tiger client", threads=ZMQ_THREADS + 1)  # (+ its replica thread; its pause watch runs already)
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._req_ids = itertools.count(1)
        self._once = Once()  # the once keys this client builds, and the teardowns it owes
        self._owner = Owner()  # what this client opens on the replica: feeds and waits (``Replica.end_owner``)
        self.label = f"{os.environ.get('PYTEST_XDIST_WORKER', 'pid')} {os.getpid()}"
        self._secure = _socket_options(url, self._server_key)
        self._replica: Replica | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed_at_exit = False  # closed by tiger as the interpreter exits (``_close_open_clients``)
        self._made = next(_made)
        self._short_of_descriptors = False  # a resend found no descriptor for a fresh socket (logged once)

    def _track_open(self) -> None:
        """Once connected: dropped without close(), the replica thread and the sockets go with the client, its
        teardowns named as not run (``_abandoned``); left open at exit, ``_close_open_clients`` tears it down
        and closes it with the others (in a child multiprocessing started too)."""
        command: Sequence[_Closable] = self._command  # type: ignore[attr-defined]  # (each kind of client's own list)
        self._finalizer = weakref.finalize(self, _abandoned, self._replica, self._ctx, command, self._pid, self._once.owed)
        self._finalizer.atexit = False
        _open_clients.add(self)
        _close_as_multiprocessing_ends()

    # -- at exit (``_close_open_clients``): each kind of client its own way, no event loop running

    def _tear_down_at_exit(self) -> list[tuple[str, BaseException]]:
        """Run the teardowns this client owes (as ``close()`` runs them); the (key, error) of each that raised."""
        raise NotImplementedError

    def _let_go_at_exit(self) -> None:
        """Let go of the values of other builders none of its teardowns may use (``Once.let_go_of_newer``)."""
        raise NotImplementedError

    def _close_now(self) -> None:
        """Close without running teardowns."""
        raise NotImplementedError

    def _new_socket(self, ctx: zmq.Context[Any] | None = None) -> zmq.Socket[Any]:
        """A command socket (DEALER) connected to the writer, from ``ctx`` (default: the client's). Raises
        ``TigerError`` when the process is out of file descriptors (``out_of_descriptors``)."""
        try:
            sock: zmq.Socket[Any] = (ctx or self._ctx).socket(zmq.DEALER)
            try:  # (closed on any error: a socket left open holds its context's term() for ever)
                sock.setsockopt(zmq.LINGER, 0)
                self._secure(sock)
                try:
                    connect_socket(sock, self._endpoint.now())
                except zmq.ZMQError as e:
                    if e.errno in OUT_OF_DESCRIPTORS:  # (not the url's fault: it said "cannot connect")
                        raise
                    raise ValueError(f"url: cannot connect to {shown(self.url)}: {e}") from None
            except BaseException:
                sock.close(linger=0)
                raise
        except zmq.ZMQError as e:
            if e.errno in OUT_OF_DESCRIPTORS:
                raise out_of_descriptors("a tiger client's command socket", e.errno) from None
            raise
        return sock

    def _first_socket(self) -> zmq.Socket[Any]:
        """The client's first command socket (``_new_socket``); one that cannot be made (a bad url, out of
        descriptors) terminates the context made for it."""
        try:
            return self._new_socket()
        except (ValueError, TigerError):
            self._ctx.term()
            raise

    def _hello_request(self) -> p.Hello:
        return p.Hello(next(self._req_ids), self.client_id)

    def _heard_hello(self, sent: float, received: float, info: dict[str, Any], best: float | None) -> tuple[float | None, bool]:
        """One Hello round trip (``time.time()`` at send and receipt): the writer checks call deadlines on its
        own clock, so the offset is its time minus the midpoint of the round trip (NTP's rule), from the
        quickest of up to 3 round trips when the first is slow (the answer may have waited behind other work
        at the writer, which would skew the offset by that wait). Returns the quickest round trip so far and
        whether to stop asking."""
        offset = clock_offset(sent, received, info)
        if offset is None:  # a writer without a clock sample: take its word as is
            return best, True
        if best is None or received - sent < best:
            best = received - sent
            self._clock_offset = offset
        return best, received - sent < 0.05

    def _connect_by(self) -> float:
        """When connecting must be done (``time.monotonic()``): its deadline, moved by the time this process was
        found not running since it began (``paused_since``: SIGSTOP, Ctrl-Z then fg). A ``pytest
        -n 4`` worker stopped 5 s as it connected failed "no snapshot within 5.0s", and the run was aborted (a
        user trial)."""
        return self._connect_deadline + self._pause_watch.paused_since(self._connect_began)

    def _paused_hello(self, error: Unavailable, counted: float) -> float:
        """After connect's hello raised ``error``: the seconds this process was found not running since connect
        began, when more than the ``counted`` ones (the hello is asked again, by the later ``_connect_by``: it
        changes nothing; the writer's ZeroMQ heartbeat closes a stopped process's connection at 3 s, and the
        answer on it goes with it); else ``error`` is raised."""
        paused = self._pause_watch.paused_since(self._connect_began)
        if type(error) is HandshakeFailed or paused <= counted:
            raise error
        return paused

    def _make_replica(self, info: dict[str, Any]) -> Replica:
        """The replica (its thread not started) for the writer that answered Hello with ``info``."""
        self.writer_pid: int = info["pid"]
        self.heartbeat_timeout = max(self.heartbeat_timeout, 4 * info["heartbeat"])
        return Replica(
            self._ctx,
            self._endpoint,
            _reachable(self._endpoint.address, info["pub"]),
            self.client_id,
            heartbeat=info["heartbeat"],
            timeout=self.timeout,
            secure=self._secure,
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"epoch {self.epoch}, seq {self.seq}"
        return f"<{_public_name(self)} {self.url} ({state})>"

    # -- the replica ----------------------------------------------------------------

    @property
    def replica(self) -> Replica:
        if self._replica is None:
            raise TigerError("this client is not connected")
        return self._replica

    @property
    def epoch(self) -> str | None:
        """The writer's epoch the replica follows."""
        return self.replica.epoch

    @property
    def seq(self) -> int:
        """The last change the local replica has applied."""
        return self.replica.seq

    def _checked_table(self, name: str, prefix: str | None, fallback_to_global: bool) -> None:
        check_name(name, "name")
        if name.startswith(RESERVED_PREFIX):
            raise ValueError(f"name: table names starting with {RESERVED_PREFIX!r} are reserved for tiger")
        check_prefix(prefix)
        if type(fallback_to_global) is not bool:
            raise TypeError(f"fallback_to_global must be a bool, not {type(fallback_to_global).__name__}")

    def tables(self) -> list[str]:
        """Tables holding at least one record (in any namespace), from the replica."""
        return [t for t in self.replica.store.table_names() if not t.startswith(RESERVED_PREFIX)]

    def namespaces(self) -> list[str]:
        """Namespaces holding at least one record (in any table), from the replica."""
        return self.replica.store.namespace_names()

    def checksum(self) -> int:
        """The local replica's checksum; equal to ``stats()["checksum"]`` when it is up to date."""
        with self.replica.changed:
            return p.checksum(self.replica.store)

    def has_teardown(self, key: str, namespace: str | None = None) -> bool:
        """Whether this client built once ``key`` with a generator factory whose teardown has not run yet."""
        return self._once.has_teardown(key, GLOBAL if namespace is None else namespace)

    def watch(
        self,
        tables: Iterable[str] | None = None,
        namespace: str | _CurrentNamespace | None = CURRENT,
        since: int | None = None,
        *,
        timeout: float | None = None,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> Feed:
        """A feed of the changes the local replica applies from now on: ``for change in client.watch(): ...``
        (or ``async for``); each is a ``tiger.Change`` (seq, op, table, namespace, id, record).

        ``tables``: the names of the tables to follow (an iterable of at least one), or None for every table.
        An argument of the wrong type raises ``TypeError`` (``tables="plans"``, ``timeout="1"``, ``since="3"``), a
        bad value ``ValueError`` (``tables=[]``, ``timeout=-1``, ``since=-1``, ``max_queued=0``), naming it.
        ``namespace``: the one to follow, by default the current namespace at this call; None for every
        namespace. A clear that covers a followed table or namespace is included.
        ``since``: a seq; the feed starts with the changes after it that the replica remembers (the last
        1,024 seqs, 100,000 records at most, none before its last snapshot load): ``ValueError`` naming
        the oldest seq it can start after when ``since`` is older.
        ``timeout``: seconds a read waits for a change at most, then ``tiger.Timeout`` (None: no limit).
        ``max_queued``: changes kept unread at most; one more and they are dropped and the next read raises
        ``tiger.FeedOverflow``. The replica never waits for a feed.

        See ``tiger.Feed`` for what a read raises, and ``tiger.Change`` for a ``"reset"``.
        """
        self._check_open()
        names = check_tables(tables)
        if isinstance(namespace, _CurrentNamespace):
            namespace = _current()
        if namespace is not None:
            check_name(namespace, "namespace")
        since = check_since(since)
        wait = check_timeout(timeout)
        queued = check_max_queued(max_queued)
        opened = Subscription(names, namespace, queued, describe(names, namespace, since), self._owner)
        return Feed(self.replica.watch(opened, since), wait, self)

    def _check_open(self) -> None:
        """``TigerError`` unless this client is open, in the process that connected it."""
        # closed by its finalizer, not by close() (which detaches it): at exit (a tiger.aio client's, a sharing one's)
        finalized = not self._closed and self._finalizer is not None and not self._finalizer.alive
        if self._closed or finalized or (self._replica is not None and self._replica.closed):
            raise TigerError(CLOSED_AT_EXIT if finalized or self._closed_at_exit else "this client is closed")
        self._check_process()

    def _check_process(self) -> None:
        """``TigerError`` in a process forked from the one that connected this client: no replica thread
        here (a wait would wait for ever), and its once teardowns are that process's (a forked copy's
        ``tear_down_once_values()`` ran them here, and the parent ran them again: a user trial)."""
        if os.getpid() != self._pid:
            raise TigerError(
                f"this client was connected in process {self._pid}; connect again in this process (tiger.connect(), "
                "or tiger.aio.connect())"
            )

    def _watch_for(self, table: str, namespace: str, what: str) -> Feed:
        """A feed of one table in one namespace for a wait of this client; its errors name ``what``."""
        self._check_open()
        return Feed(self.replica.watch(Subscription(frozenset((table,)), namespace, DEFAULT_MAX_QUEUED, what, self._owner), None))

    # -- calls ----------------------------------------------------------------------

    def _call_bytes(self, request: p.Request, deadline: float | None, probe: bool = True) -> tuple[bytes, float, float]:
        """The bytes of a call carrying ``request``, its deadline (``time.monotonic()`` seconds; None: the
        client's timeout from now) and when it expires. The call expires at the writer a little before that
        deadline (on the writer's clock), after which the writer refuses it: a call that raised is never
        applied later. Raises (nothing sent) if the client is closed or forked, the writer silent, or the
        call too big. ``probe=False``: a silent writer's url is not probed here (``_silent_writer``; the async
        client probes in a thread first)."""
        self._check_open()
        replica = self._replica
        if self._unheard():
            raise self._silent_writer(recently_refused(self.url) if probe else None)
        if deadline is None:
            deadline = monotonic() + self.timeout
        try:
            packed = p.encode_request(request)
        except UnicodeEncodeError:
            raise ValueError(p.unencodable(request)) from None
        expires, margin = call_expiry(deadline, self._clock_offset, len(packed))
        payload = p.call_bytes(self.client_id, expires, packed, -1 if replica is None else replica.seq)
        if type(request) is p.Insert:
            p.check_record_sizes(request.records, len(payload))
        elif type(request) is p.Update:
            p.check_record_sizes([request.changes], len(payload), "changes")
        if len(payload) > p.MAX_MESSAGE:
            raise ValueError(
                f"the request is {len(payload)} bytes; a request may be at most {p.MAX_MESSAGE} bytes (store less per call)"
            )
        return payload, deadline, deadline - margin

    def _unpaused(
        self,
        request: p.Request,
        call: tuple[bytes, float, float],
        began: float,
        counted: float,
        probe: bool = True,
        own: float = 0.0,
    ) -> tuple[tuple[bytes, float, float], float]:
        """A call not sent yet (``_call_bytes``' payload, deadline, expiry), made again with its deadline and
        expiry later by the time this process was not running since ``began`` (``time.monotonic()``), less
        ``counted`` (moved by already); returns it and the pauses counted. ``own``: a pause the calling thread
        found in its own time since ``began`` (``overslept(..., keep=False)``), if longer. Nothing was sent:
        the writer cannot have it. A worker stopped (Ctrl-Z on a ``pytest -n 4`` run) between its write's
        deadline and its send raised "did not answer within 5s: the time was spent before the call could be
        sent", and a call waiting for the socket behind another one "other calls of this client held its
        socket" (a user trial: 2 whole-run stops of 10 s in 120)."""
        paused = max(paused_since(began), own)
        if paused <= counted:
            return call, counted
        return self._call_bytes(request, call[1] + paused - counted, probe), paused

    def _queued_answer(self, sock: zmq.Socket[Any], req_id: int, mine: p.Own | None, deadline: float) -> p.Reply | None:
        """At a call's deadline, before giving up: its answer if it already waits on the command socket
        (this process was stopped past the deadline while the writer answered: SIGSTOP, a debugger; a user
        trial saw such a call raise ``Unavailable``, applied). A process that finds itself more than
        ``PAUSE_GRACE`` seconds past the deadline was not running: it gives libzmq's I/O thread, just woken
        too, up to that long to hand over what it received meanwhile. Other answers read go to
        ``_late_answer``."""
        p.poll_on_a_real_clock()
        if stretched(deadline, monotonic()) != deadline and not sock.poll(int(PAUSE_GRACE * 1000), zmq.POLLIN):
            return None
        while True:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            try:
                reply = p.decode_reply(data, mine)
            except ProtocolError:
                continue
            if reply.req_id == req_id:
                return reply
            self._late_answer(reply)

    def _late_answer(self, reply: p.Reply) -> None:
        """An answer on the command socket to another call of this client: one that raised with no answer
        (a signal's exception landing after it was sent), whose change goes to the replica now, filling the
        gap its seq left (it was dropped, and the gap waited until the replica asked the writer again after
        the call's deadline: this client's next writes raised ``Timeout`` though applied), or a stale one
        (a resend's second answer), which changes nothing there."""
        if self._replica is not None and reply.req_id is not None and reply.req_id > 0:
            self._replica.late_answer(reply)

    def _raised(
        self, req_id: int, own: bool, sent: tuple[bytes, float] | None, answer: p.Reply | None, received: bytes | None
    ) -> None:
        """A call raised (a signal's exception, an error, its timeout): what became of it goes to the replica.
        ``own``: a write, whose change comes only in its answer; ``sent``: its bytes and deadline, once sent;
        ``answer``: its own answer, if it came; ``received``: the bytes it received last.

        An Ok answer that came (a signal after it, as the caller let go of the socket) is taken now, not lost;
        a write sent and unanswered may have been applied: the replica asks it again after its deadline. The
        bytes received last by a call with no answer may be its own answer, whose decoding a signal cut short,
        or another call's it was reading: decoded now and taken as a late answer (lost, its change waited for
        the replica's asking again after the deadline, and in a storm of such signals the client's next
        writes raised ``Timeout`` though applied); bytes that cannot be decoded: nothing."""
        if own and type(answer) is p.Ok:
            self.replica.answer_left(req_id, answer)
        elif own:
            self.replica.call_failed(req_id, None if sent is None or answer is not None else (req_id, *sent))
        if answer is None and received is not None:
            try:
                reply = p.decode_reply(received)
            except ProtocolError:
                return
            self._late_answer(reply)

    def _unheard(self) -> bool:
        """The writer has been silent for longer than ``heartbeat_timeout``: a call is not sent to it."""
        return self._replica is not None and self._replica.silent_for() > self.heartbeat_timeout

    def _silent_writer(self, refused: str | None) -> Unavailable:
        """What a call raises instead of being sent to a silent writer (``_unheard``), with ``refused`` (what
        ``recently_refused`` found at the url: a writer gone, not only paused or busy) if it says."""
        assert self._replica is not None
        silent = f"the tiger writer at {self.url} has been silent for {self._replica.silent_for():.1f}s"
        return Unavailable(silent + (f": {refused}" if refused else ""))

    def _heard_again(
        self, unavailable: Unavailable, deadline: float, refused: str | None
    ) -> tuple[Callable[[], bool], float, Callable[[], str]]:
        """After ``unavailable`` from a call that may be made again (a sync, a once claim or delivery), until
        ``deadline``: the wait (``Replica.wait_until``'s arguments) for the writer to be heard again, at
        least RETRY_PAUSE and at most a second (then the call is made again, and the url probed again).
        Raises ``unavailable`` past the deadline, or when nothing accepts connections at the url (``refused``,
        ``recently_refused``'s finding, probed by the caller: the async client probes in a thread): a writer
        that is gone is not waited for (a sync with a timeout of 60 s raised at once when a paused writer
        had been silent for 2 s)."""
        now = monotonic()
        if now >= deadline or refused is not None:
            raise unavailable
        # at least RETRY_PAUSE: a failure that came at once (a call refused as expired, a clock stepped forward)
        # from a writer still heard must not make a loop of calls and probes (19,651 in 3 s)
        replica, retry_at = self.replica, now + RETRY_PAUSE

        def heard() -> bool:
            return monotonic() >= retry_at and replica.silent_for() <= self.heartbeat_timeout

        return heard, min(deadline, now + 1.0), lambda: str(unavailable)

    def _probe_hello(self, deadline: float) -> None:
        """``HandshakeFailed`` if the handshake with the writer fails (``handshake_failure``, at most
        ``HANDSHAKE_PROBE`` seconds, and at most 0.1 s past the call's ``deadline``, ``time.monotonic()``:
        a probe at the deadline added its whole 0.5 s to a connect's timeout; the async client runs it in a
        thread). After ``SILENT_PROBES`` probes in a row that heard nothing in their whole time (a paused
        writer: no handshake either way) none is made again, nor one at the deadline once one was made
        (``connect(timeout=0.2)`` took 0.4 s). One silent probe is not enough: on a loaded machine one
        heard nothing of a wrong key's failed handshake, and connect waited its whole timeout to say
        "did not answer"."""
        if self._silent_probes >= SILENT_PROBES or (self._handshake_probed and monotonic() >= deadline):
            return
        self._handshake_probed = True
        probed = monotonic()
        seconds = min(HANDSHAKE_PROBE, max(deadline - probed, 0.1))
        failed = handshake_failure(self.url, self._server_key, seconds)
        if failed is not None:
            raise HandshakeFailed(failed)
        silent = seconds >= HANDSHAKE_PROBE and monotonic() - probed >= HANDSHAKE_PROBE
        self._silent_probes = self._silent_probes + 1 if silent else 0

    def _silence(self, wait: int, seconds: float, deadline: float, refusals: Refusals | None = None) -> None:
        """No answer in time (``Attempts.wait`` said ``RESEND`` or ``GIVE_UP``): a fresh command socket in
        place of the old one (what it still queued goes with it); past the deadline, ``Unavailable``
        naming the call's own time, ``seconds`` (its ``timeout``, else the client's; ``deadline``: when it
        ends, ``time.monotonic()``).

        ``refusals`` (a connected client's call; not connect's hello, which may wait for a writer being
        started): at a resend, the url is probed (``recently_refused``); refusing connections for
        ``GONE_AFTER`` seconds, it raises ``Unavailable`` before the deadline. A writer that is gone
        cannot apply the call later (nothing took its bytes), and a ``sync(timeout=10)`` to a writer
        killed a moment before waited all 10 s where the README says a gone writer is not waited for.
        Connect's hello instead probes the handshake (``_probe_hello``), raising ``HandshakeFailed`` at each
        resend (and once before the first, ``HELLO_PROBE_AFTER``): a wrong or missing CurveZMQ key waited out
        connect's whole timeout, then said only "did not answer". (The async client makes the same steps, its
        probes in a thread.) The probes come
        first, the fresh socket after them: a call cut short during a probe (a cancelled task, Ctrl-C) leaves
        its bytes on the socket that its late answer is taken from."""
        if refusals is None:
            self._probe_hello(deadline)
        try:
            self._judge_silence(wait, seconds, refusals)
        except Unavailable:
            self._fresh_socket()
            raise
        self._fresh_socket()

    def _judge_silence(self, wait: int, seconds: float, refusals: Refusals | None) -> None:
        """``_silence``'s verdict, from probes of the url that may take 0.1 s each (``recently_refused``,
        ``no_answer``'s; no DNS lookup): raises ``Unavailable`` past the deadline, or once
        the url has refused connections for ``GONE_AFTER`` seconds. Touches no socket of the client's."""
        if wait == GIVE_UP:
            raise Unavailable(no_answer(self.url, seconds))  # with what ZeroMQ's silent retries hid, if a probe tells
        if refusals is None:
            return
        why = recently_refused(self.url)
        now = monotonic()
        if why is None:
            refusals.since = None
        elif refusals.since is None:
            refusals.since = now
        elif now - refusals.since >= GONE_AFTER:
            gone = f"{why} for {now - refusals.since:.1f}s"
            raise Unavailable(f"the tiger writer at {self.url} did not answer, and is gone: {gone}")

    def _check_time_left(self, expires: float, seconds: float) -> None:
        """``Unavailable`` if a call's time was spent before it could be sent (``expires``: ``_call_bytes``',
        ``time.monotonic()``): by its connect's lookup and probes (said as other calls holding the socket,
        by a `tiger dump` that makes no other call)."""
        now = monotonic()
        if now >= expires:
            spent = "looking its host name up, probing it" if self.url.startswith("tcp://") else "probing it"
            paused = paused_since(now - seconds)
            if paused:  # (an ipc url has no host name to look up: a paused worker was told so)
                spent += f"; this process was not running for {paused:.1f}s of it (SIGSTOP, Ctrl-Z)"
            raise Unavailable(
                f"the tiger writer at {self.url} did not answer within {seconds:g}s: the time was spent before "
                f"the call could be sent ({spent})"
            )

    def _busy(self, seconds: float) -> Unavailable:
        """The error of a call that did not get this client's socket in time to be sent before it expires:
        other calls of the client (threads', tasks') held it, waiting for the writer. Such a call waited
        for the other's whole timeout and then said "did not answer within 1s" of its own (a review); one
        that got it just too late was sent, and refused as expired (a user trial: thousands of tasks
        writing at once through one client)."""
        return Unavailable(
            f"the tiger writer at {self.url} did not answer within {seconds:g}s: other calls of this client "
            "(from other threads or tasks) held its socket until too late to send this one, and a client sends one call "
            "at a time"
        )

    def _fresh_socket(self) -> None:
        raise NotImplementedError

    def _new_socket_or_none(self) -> zmq.Socket[Any] | None:
        """A fresh command socket for a call's resend, or None when the process is out of file descriptors:
        the call goes on with the socket it has (which reconnects by itself), to its answer or its
        deadline, as any call (it raised ZeroMQ's "Too many open files" mid-call, its write perhaps applied
        later, and the client then refused as busy). Logged once per client."""
        try:
            return self._new_socket()
        except TigerError as e:
            if not self._short_of_descriptors:
                self._short_of_descriptors = True
                log.warning("%r keeps its command socket for a resend: %s", self, e)
            return None

    def _command_socket(self) -> zmq.Socket[Any]:
        raise NotImplementedError

    def _send_call(self, payload: bytes) -> None:
        """Queue a call's bytes on the command socket without blocking. A call interrupted after sending
        (Ctrl-C, a cancelled task) leaves its bytes queued there; with the writer away, about 1000 of them
        (its SNDHWM) fill the queue, and a blocking send would then wait past the call's deadline, holding
        the client: a fresh socket, whose queue is empty, takes the bytes instead. One that cannot take them
        either has lost its only pipe already (a handshake failed on a protocol error: a server key to a
        writer without CurveZMQ): the bytes are left unsent, as a message lost, and the call's next resend
        (and connect's handshake probe) goes on from there; zmq.Again was raised to the caller. A big call
        lets libzmq's I/O thread send it before the caller goes on (``p.let_io_thread_send``)."""
        try:
            self._command_socket().send(payload, zmq.NOBLOCK)
        except zmq.Again:
            self._fresh_socket()
            try:
                self._command_socket().send(payload, zmq.NOBLOCK)
            except zmq.Again:
                return
        p.let_io_thread_send(len(payload))

    def _outcome(self, reply: p.Reply, seconds: float) -> p.Ok:
        """The Ok answer to a call, or the error its Failed answer names, raised."""
        if type(reply) is p.Failed:
            if reply.kind == "expired":
                raise Unavailable(f"the tiger writer at {self.url} did not answer within {seconds:g}s ({reply.message})")
            raise FAILURES.get(reply.kind, TigerError)(reply.message)
        if type(reply) is not p.Ok:
            raise ProtocolError(f"unexpected reply to a request: {type(reply).__name__}")
        return reply

    def _let_go(self, namespace: str) -> bool:
        """This client is about to drop ``namespace``: whether it leased it (forgotten now, before the drop is
        sent: a drop that raised, applied or not, makes no later drop of it warn)."""
        leased = namespace in self._leased
        self._leased.discard(namespace)
        return leased

    def _dropped(self, namespace: str, leased: bool, reply: p.Ok) -> str | None:
        """``namespace`` was dropped by this client (``reply``: the writer's answer, naming the clients whose
        leases ended with it): None, or what to say if this client had ``leased`` it and its lease had ended
        before (a process stopped past the lease grace found its records gone, and nothing said why)."""
        if not leased or not isinstance(reply.result, dict) or "leases" not in reply.result:
            return None  # (a writer of an older tiger answers None: it says nothing of the leases)
        if self.client_id in reply.result["leases"]:
            return None
        return (
            f"tiger: this process's lease of namespace {namespace!r} had ended before it was dropped, and what was "
            "written there before that end was lost: another client dropped the namespace, or the writer took this "
            "process for gone (silent about 3 s: stopped by Ctrl-Z or SIGSTOP, paused in a debugger, its host asleep) "
            f"and its lease grace passed without a word from it (`tiger serve --lease-grace`, default {LEASE_GRACE:g} s)"
        )


class Client(_Connection):
    """A connection to a tiger writer plus a full local replica of its tables.

    Use :func:`tiger.connect` to make one. ``copy.copy``/``copy.deepcopy`` give the client itself; pickling
    raises ``TypeError`` (another process connects itself: ``tiger._handles``).
    """

    _instead = "Another process connects itself: pass it the url (client.url) and call tiger.connect(url) there"

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        heartbeat_timeout: float = 2.0,
        server_key: str | bytes | None = None,
        deadline: float | None = None,
        pause_watch: PauseWatch | None = None,
    ) -> None:
        super().__init__(url, timeout, heartbeat_timeout, server_key, deadline, pause_watch)
        try:
            # one request in flight on the command socket: the call holding it (its token) is its holder
            self._socket_hold = OwnedLock()
            # the command socket, in a list the finalizer shares (a resend replaces it): see _socket
            self._command = [self._first_socket()]
            try:
                self._replica = self._make_replica(self._hello())
                self._replica.start(self.timeout, self._connect_by())
            except BaseException:
                self.close()
                raise
        finally:
            self._pause_watch.stop()
        self._track_open()

    # -- lifecycle ------------------------------------------------------------------

    def _hello(self) -> dict[str, Any]:
        """Say hello; learn the writer's PUB endpoint, heartbeat, pid and clock (see ``_heard_hello``), by the
        deadline of connecting, moved by the time this process was not running (``_paused_hello``)."""
        best: float | None = None
        counted, asked = 0.0, 0
        info: dict[str, Any] | None = None
        while True:
            sent = wall()
            try:
                info = self._request(self._hello_request(), self._connect_by(), seconds=self.timeout).result
            except Unavailable as e:
                if info is not None:  # (a round trip done already: its clock sample is enough)
                    return info
                counted = self._paused_hello(e, counted)
                continue
            asked += 1
            best, done = self._heard_hello(sent, wall(), info, best)
            if done or asked == 3:
                return info

    def close(self) -> None:
        """Run the teardowns of the once values this client built, each once its other holders have let go
        of it (closed, closing, or silent; at most ``timeout`` seconds for all: past it, a warning names
        them), newest first, letting go of the values of other builders it got after each as it goes (two
        clients closing together, each holding the other's value, each waited its whole ``timeout``); wait
        for a call in flight on another thread (at most ``timeout`` seconds: a call ends only by its
        deadline, as a paused writer could still apply it), say goodbye to the writer, stop the replica,
        close the sockets. Idempotent. A teardown that raised is raised again at the end. Interrupted
        (Ctrl-C) in a teardown or between them, it still closes, the teardowns not run yet logged, not run."""
        if self._closed:
            return
        errors: list[tuple[str, BaseException]] = []
        try:
            if os.getpid() == self._pid:
                errors = self._tear_down_once_values(self.timeout, leaving=True)
        finally:
            left = self._once.not_torn_down() if os.getpid() == self._pid else []
            if left:
                log.warning("closing %r with once teardowns not run: %s", self, sorted(k for _, k in left))
            try:
                self._close()
            finally:
                if errors:
                    raise errors[0][1]

    def _tear_down_at_exit(self) -> list[tuple[str, BaseException]]:
        return self._tear_down_once_values(self.timeout, leaving=True)

    def _let_go_at_exit(self) -> None:
        self._once.let_go_of_newer(self, RELEASE_AT_EXIT)

    def _close_now(self) -> None:
        self._close()

    def _close(self) -> None:
        self._closed = True
        _open_clients.discard(self)
        if self._finalizer is not None:
            self._finalizer.detach()
        if os.getpid() != self._pid:
            return  # a forked child: the sockets belong to the parent
        me = _Caller()
        try:
            # a request in flight on another thread ends first (at most the timeout: closed anyway); one of this
            # thread, interrupted by a signal handler closing the client, is not waited for: it never ends
            # before the handler does (a SIGTERM handler's close() waited the whole timeout, 5 s, 3 of 3 times)
            if not self._held_by_this_thread():
                with contextlib.suppress(Unavailable):
                    self._take_socket(me, monotonic() + self.timeout, self.timeout)
            if self._replica is not None:
                try:
                    self._socket.send(p.encode_request(p.Bye(self.client_id)), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            _shut_down(self._replica, self._ctx, self._command)
        finally:
            try:  # (twice: see ``tiger._owned``)
                self._socket_hold.let_go(me)
            finally:
                self._socket_hold.let_go(me)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the replica ----------------------------------------------------------------

    def table(self, name: str, prefix: str | None = None, fallback_to_global: bool = False) -> Table:
        """A handle on table ``name``; the table exists from its first write."""
        self._checked_table(name, prefix, fallback_to_global)
        return Table(self, name, prefix, fallback_to_global)

    def sync(self, timeout: float | None = None) -> None:
        """Return once the replica holds every write any client was answered for before this call.
        ``timeout``: seconds, above 0 (the writer's answer takes a round trip); default the client's."""
        began = monotonic()
        deadline = began + _timeout(timeout, self.timeout, positive=True)  # (each step's moved by the pauses since)
        while True:
            try:
                reply = self._request(p.Sync(next(self._req_ids)), unpaused(deadline, began))
                break
            except Unavailable as unavailable:  # a paused writer is waited for, as long as the call allows
                left_until = unpaused(deadline, began)
                refused = recently_refused(self.url) if monotonic() < left_until else None  # (past it: raised)
                with contextlib.suppress(Timeout):
                    self.replica.wait_until(*self._heard_again(unavailable, left_until, refused))
                if monotonic() >= unpaused(deadline, began):
                    raise
        self.replica.catch_up(reply, deadline, since=began)

    def batch(self, timeout: float | None = None) -> Batch:
        """Writes across tables and namespaces sent as one command when the ``with`` block ends, applied
        all or none (one seq): ``with client.batch() as b: b.table("plans").insert({...})``. Each call
        in the block returns a ``Pending`` whose ``result`` is set once the block has ended; a failing
        operation fails the whole batch with its error (``NotFound``, ``AlreadyExists``, ``ValueError``)
        naming the operation's index; an exception inside the block sends nothing. ``timeout``: seconds
        the block's end waits for the batch to be applied (None: the client's ``timeout``; a batch of
        hundreds of thousands of records may need more: ``tiger.Unavailable`` past it, the batch then
        never applied); ``TypeError``/``ValueError`` as every timeout. See ``tiger._batch``."""
        return Batch(self, _current, _timeout(timeout, self.timeout, positive=True))

    def drop_namespace(self, namespace: str) -> None:
        """Remove every record of ``namespace`` in every table, in one command (a test's cleanup).

        A namespace this client leased whose lease had ended before (``lease_namespace``: the writer took this
        client for gone and its lease grace passed, or another client dropped it) is dropped all the same,
        with a ``RuntimeWarning`` saying that what was written there before that end was lost."""
        lost = self._drop(namespace)
        if lost is not None:
            warnings.warn(lost, RuntimeWarning, stacklevel=2)

    def _drop(self, namespace: str) -> str | None:
        """``drop_namespace``, returning what it would warn of (the pytest plugin fails the test's teardown)."""
        check_name(namespace, "namespace")
        leased = self._let_go(namespace)
        return self._dropped(namespace, leased, self._write(p.Drop(next(self._req_ids), namespace)))

    def lease_namespace(self, namespace: str | None = None) -> None:
        """Have the writer drop ``namespace`` (default: the current namespace) from every table once this
        client is gone: closed (its goodbye: at once), or silent for about 1 s with its connection closed (a
        process killed, ``os._exit``, the OOM killer) and not heard again within the writer's lease grace
        (seconds: ``tiger serve --lease-grace``, default 600; a process stopped by Ctrl-Z and resumed within
        it keeps its namespaces). An etcd lease, a ZooKeeper ephemeral node.

        Leasing a namespace this client leases already changes nothing; ``drop_namespace`` ends the lease
        with the namespace. Several clients may lease one namespace: it is dropped when the last of them is
        gone, not the first, so that a namespace shared by several processes outlives one that crashed while
        the others still use it. The lease is a record at the writer: it survives a restart with a data
        directory, and a leasing client not heard from within about 3 s of that start is taken for gone (its
        grace then begins). Once keys scoped to the namespace go with it when settled (built or failed, with
        no teardown to wait for). ``ValueError`` naming ``namespace`` for
        a bad name, and for ``"global"`` (every process's default: a lease would drop everyone's records)."""
        name = check_leasable(_current() if namespace is None else namespace)
        self._write(p.Lease(next(self._req_ids), name, self.client_id))
        self._leased.add(name)

    def once(self, key: str, factory: Callable[[], Any], timeout: float | None = None, *, namespace: str | None = None) -> Any:
        """Across every process using this writer, exactly one runs ``factory()``; all get its value.

        The value (anything a record can hold) is stored at the writer: every caller, now or
        later, gets the same (frozen) value. Waiting callers wait on their replica.

        ``factory`` may be a generator function: its first yielded value is the shared value,
        and the code after that ``yield`` is its teardown, run once, by this client, in
        ``close()`` (the pytest plugin runs it after every test of every process of the run).
        A builder that dies first (killed: ``Pool.terminate()``) cannot run it: the writer retires
        its value once it finds the builder dead (about 1 s; one stopped, after its lease grace),
        and the next caller builds anew.

        Outcomes, the same for every caller: if the factory raises (or ``pytest.skip``/``fail``),
        or returns a value tiger cannot store, it is built once and every caller gets
        ``tiger.OnceFailed`` naming the key, the builder and the error. If the build is
        interrupted (``KeyboardInterrupt``, ``SystemExit``) or the builder dies (the writer notices
        its silence), one waiting caller takes over.

        ``namespace`` scopes the key (default ``"global"``); given, the factory also runs in it, so
        what it writes lives as long as that namespace. ``timeout`` (seconds, default no limit)
        bounds the wait for another builder: ``tiger.Timeout``.
        """
        check_name(key, "key")
        scope = GLOBAL if namespace is None else check_name(namespace, "namespace")
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        wait = check_timeout(timeout)
        return self._once.value(self, key, scope, factory, wait, in_scope=namespace is not None)

    def tear_down_once_values(self, wait: float = 0.0) -> list[tuple[str, BaseException]]:
        """Run the teardowns of the generator factories this client built, each once, newest first, and
        retire their keys (a later caller builds anew); returns the (key, error) of each that raised.

        ``wait`` (seconds, for all keys together): first wait for the other clients that got a value
        (its holders, known to the writer) to close or fall silent. Past it, the teardown runs anyway
        and a warning names the clients still holding it. ``close()`` waits the client's timeout; the
        pytest plugin waits for every test of the run instead. ``TigerError`` in a process forked from
        the one that connected the client (its teardowns are that process's). A Ctrl-C (in a teardown or between
        them) ends the tear-down, the rest left, and is raised again (as ``tiger.aio`` raises a
        cancellation), before any error.
        """
        self._check_process()
        return self._tear_down_once_values(check_seconds(wait, "wait"))  # type: ignore[arg-type]

    def _tear_down_once_values(self, wait: float, leaving: bool = False) -> list[tuple[str, BaseException]]:
        """``tear_down_once_values``; ``leaving`` (``close()``): letting go of the values other clients built
        as it goes (``Once.tear_down``)."""
        errors = self._once.tear_down(self, wait, leaving=leaving)
        for _, error in errors:
            if isinstance(error, KeyboardInterrupt):
                raise error
        return errors

    def stats(self) -> dict[str, Any]:
        """The writer's figures: epoch, seq, uptime, clients (heard from; ``awaited``: those a writer started on
        its data directory waits about 3 s to hear from, the once builders and lease holders it stored), records
        per table and namespace, leases
        (``{"grace": seconds, "namespaces": n, "ending": {namespace: seconds before it is dropped}}``) and
        the data directory."""
        return self._request(p.Stats(next(self._req_ids))).result  # type: ignore[no-any-return]

    # -- requests -------------------------------------------------------------------

    @property
    def _socket(self) -> zmq.Socket[Any]:
        """The command socket (one request at a time: ``_take_socket``)."""
        return self._command[0]

    @_socket.setter
    def _socket(self, sock: zmq.Socket[Any]) -> None:
        self._command[0] = sock

    def _request(
        self, request: p.Request, deadline: float | None = None, own: bool = False, seconds: float | None = None
    ) -> p.Ok:
        """Send one request and return its Ok reply; raise what a Failed reply names.

        Lazy Pirate: with no answer within ``resend`` seconds, the same call (same
        request id) goes again on a fresh socket; the writer answers a repeat with
        its first answer. At the deadline the socket is dropped (and what it still
        queued with it) and ``Unavailable`` is raised; the call carries an expiry
        a little before that deadline, after which the writer refuses it, so a call
        that raised is never applied later.

        ``own``: a write, whose change comes only in the answer (this client's replica is
        not sent it): the replica counts it in flight until ``catch_up(..., own=True)``. ``seconds``: the
        timeout the deadline stands for, as errors name it (default: what is left until it).
        """
        began = mark()
        if seconds is None:
            seconds = self.timeout if deadline is None else round(deadline - monotonic(), 3)
        call = self._call_bytes(request, deadline)
        # (rare) its time ran out before it could be sent: this process stopped? Only this thread ran here, but
        # a signal handler or a finalizer may have waited in it: taken for this call's pause, not the process's
        stopped = overslept(began, 0.0, keep=False) if monotonic() >= call[2] else 0.0  # (0.0: none)
        call, counted = self._unpaused(request, call, began[0], 0.0, own=stopped)
        payload, deadline, expires = call
        self._check_time_left(expires, seconds)
        req_id = request.req_id  # type: ignore[union-attr]
        sent = answered = False
        data: bytes | None = None  # the last answer received (a signal may cut its decoding short: ``_raised``)
        refusals = None if type(request) is p.Hello else Refusals()
        me = _Caller()
        try:
            if own:  # (after the pid check: a forked child may have inherited the replica's lock held)
                self.replica.call_started(req_id)
            self._take_socket(me, deadline, seconds)  # (``me`` made before: a signal just after cannot leak it)
            if self._closed:
                raise TigerError("this client is closed")
            if monotonic() >= expires:  # (its wait for the socket moved by the pauses it found)
                call, counted = self._unpaused(request, (payload, deadline, expires), began[0], counted, probe=False)
                payload, deadline, expires = call
            if monotonic() >= expires:  # the socket came too late: sent now, the writer would refuse it
                raise self._busy(seconds)
            sent = True  # (before: a signal landing as the send returns, after it, left a call sent unasked for)
            self._send_call(payload)
            mine = p.own_records_of(request, payload)  # decoded while the writer works
            probe_after = HELLO_PROBE_AFTER if refusals is None else None
            attempts = Attempts(monotonic(), deadline, resend_interval(self.timeout, seconds, len(payload)), probe_after)
            while True:
                wait = attempts.wait(monotonic())
                if wait == PROBE:  # connect's hello, unanswered a moment: a failed handshake is said now
                    self._probe_hello(deadline)
                    continue
                if wait == GIVE_UP:
                    late = self._queued_answer(self._socket, req_id, mine, deadline)
                    if late is not None:
                        reply, answered = late, True
                        break
                if wait <= RESEND:
                    self._silence(wait, seconds, deadline, refusals)
                    self._send_call(payload)
                    self.resends += 1
                    continue
                # poll, then receive: a poll interrupted by a signal goes on with what is left of its
                # timeout, where a receive with RCVTIMEO starts its whole timeout again (pyzmq retries
                # it), so a process taking signals more often than that would never time out
                slept = mark()
                readable = p.readable_within(self._socket, wait)
                overslept(slept, wait / 1000)  # (a stop found here, not only by the replica thread a moment later:
                if not readable:  # the wait for the replica that follows counts it from its first look)
                    continue
                try:
                    data = self._socket.recv(zmq.NOBLOCK)
                except zmq.Again:  # taken back by libzmq since (a peer gone): wait on
                    continue
                reply = p.decode_reply(data, mine)
                if reply.req_id == req_id:
                    answered = True
                    break
                self._late_answer(reply)
            self._socket_hold.let_go(me)  # (a signal at its first bytecode: let go below)
            return self._outcome(reply, seconds)
        except BaseException as e:
            try:  # (twice: see ``tiger._owned``)
                self._socket_hold.let_go(me)
            finally:
                self._socket_hold.let_go(me)
            self._raised(req_id, own, (payload, deadline) if sent else None, reply if answered else None, data)
            if self._closed and isinstance(e, zmq.ZMQError):  # closed under it (a signal handler's close(): its
                raise TigerError("this client is closed") from None  # socket gone, "Socket operation on non-socket")
            raise

    def _command_socket(self) -> zmq.Socket[Any]:
        return self._socket

    def _take_socket(self, me: object, deadline: float, seconds: float) -> None:
        """Make the call ``me`` (a token) the one holding the command socket, waiting for the call holding it
        until ``deadline``: past it, ``Unavailable`` (``_busy``). A call behind another waited as long as that
        call's own timeout, then said it had waited its own (a review). The token is made by the caller
        before this, and given back by ``_socket_hold.let_go(me)`` in its ``finally`` (``OwnedLock``: a timed
        lock acquired, then ``try``, was left held by a signal landing in between; every later call was
        then "busy")."""
        if self._held_by_this_thread():
            raise TigerError(
                "a call of this client is under way in this very thread and was interrupted to run this code (a "
                "signal handler, or a finalizer): this call would wait for it, in vain, until its timeout. From a "
                "signal handler, set a flag or raise (KeyboardInterrupt, SystemExit) and call tiger after; close() "
                "works there"
            )
        if not self._socket_hold.take(me, deadline):
            raise self._busy(seconds)

    def _held_by_this_thread(self) -> bool:
        """Whether the command socket is held by a call of the running thread: one this code interrupted (a
        signal handler runs in the main thread between two steps of whatever it was doing)."""
        holder = self._socket_hold.holder
        return type(holder) is _Caller and holder.thread == threading.get_ident()

    def _fresh_socket(self) -> None:
        """A new command socket in place of the old: made, swapped in, then the old one closed, so that an
        interrupt at any point (Ctrl-C's KeyboardInterrupt during a resend) leaves a usable socket in place
        (closing first left a closed one behind: every later call failed with 'Socket operation on
        non-socket')."""
        fresh = self._new_socket_or_none()
        if fresh is not None:
            old, self._socket = self._socket, fresh
            old.close(linger=0)

    def _write(self, request: p.Request, deadline: float | None = None) -> p.Ok:
        """A write: returns once the local replica holds its change (read-your-writes), by ``deadline``
        (``time.monotonic()`` seconds; None: the client's timeout from now).

        The change is not published to this client's replica: it comes in the reply (its records
        decoded frozen), and ``catch_up`` applies it in seq order.
        """
        began = monotonic()
        if deadline is None:
            deadline = began + self.timeout
        reply = None
        try:
            reply = self._request(request, deadline, own=True)
            # every pause since the write began counts, the request's too (``since``)
            self.replica.catch_up(reply, deadline, own=True, since=began)
        except BaseException:  # (a signal between the answer and its deposit: the answer is taken now, else
            self.replica.answer_left(request.req_id, reply)  # type: ignore[union-attr]  # a gap waits the timeout)
            raise
        return reply


def _timeout(value: float | None, default: float, what: str = "timeout", *, positive: bool = False) -> float:
    """A call's or a wait's ``timeout``: None is ``default``; else ``check_seconds``."""
    if value is None:
        return default
    return check_seconds(value, what, positive=positive)  # type: ignore[return-value]


class _TableReads:
    """What a table handle of either client holds: its reads, answered by the local replica, and the
    checked request of each write (sent by ``Table`` and awaited by ``tiger.aio.AsyncTable``)."""

    __slots__ = ("_client", "_namespaces", "_store", "fallback_to_global", "name", "prefix")
    _connect = "tiger.connect(url)"  # how another process makes the client of such a table (pickling's advice)

    def __init__(self, client: _Connection, name: str, prefix: str | None, fallback_to_global: bool) -> None:
        self._client = client
        self.name = name
        self.prefix = prefix
        self.fallback_to_global = fallback_to_global
        self._store = client.replica.store
        self._namespaces = self._store.namespaces_of(name)  # stable: never replaced by the replica

    def __copy__(self) -> Any:
        """A new handle on the same table of the same client (``fallback_to_global`` copied, then its own;
        a subclass's own attributes too)."""
        cls = type(self)
        new = object.__new__(cls)
        for klass in cls.__mro__:
            slots = getattr(klass, "__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name.startswith("__") and not name.endswith("__"):  # stored mangled: ``_Class__name``
                    name = f"_{klass.__name__.lstrip('_')}{name}"
                if name not in ("__dict__", "__weakref__") and hasattr(self, name):
                    object.__setattr__(new, name, getattr(self, name))
        if hasattr(self, "__dict__"):
            new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self.__copy__()  # (the client is a handle: the same one)

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError(
            f"a {_public_name(self)} cannot be pickled: it reads this process's replica. Make it in the other "
            f"process: {self._connect}.table(name, prefix), with this table's client.url, name ({self.name!r}) and prefix "
            f"({self.prefix!r}) ({SENT_BY_PICKLE})"
        )

    def __repr__(self) -> str:
        return f"<{_public_name(self)} {self.name!r} prefix={self.prefix!r}>"

    # -- reads ------------------------------------------------------------------------

    def get(self, id: str, default: Any = None) -> Any:
        """The record with this id, or ``default``."""
        try:
            return self._namespaces[_current()][id]  # the hit path: two subscripts, nothing else
        except (KeyError, TypeError):
            record = self._miss(id)
        return default if record is None else record

    def __getitem__(self, id: str) -> Record:
        try:
            return self._namespaces[_current()][id]  # the same hit path, inlined: no second method call
        except (KeyError, TypeError):
            record = self._miss(id)
        if record is None:
            raise NotFound(f"{self.name} {shown(id)} is not in namespace {_current()!r}")
        return record

    def _miss(self, id: object) -> Record | None:
        """After a miss in the current namespace: a bad id is named; then "global" if this handle falls back."""
        if type(id) is not str:  # checked only here: the hit path stays a dict lookup
            check_id(id)
        if self.fallback_to_global:
            rows = self._namespaces.get(GLOBAL)
            if rows is not None:
                return rows.get(id)  # type: ignore[call-overload, no-any-return]
        return None

    def __contains__(self, id: object) -> bool:
        return self.get(id) is not None  # type: ignore[arg-type]

    def count(self) -> int:
        """How many records the current namespace holds."""
        return len(self._namespaces.get(_current()) or ())

    __len__ = count

    def list(self, limit: int = 10, starting_after: str | None = None, ending_before: str | None = None) -> Page:
        """A page of records, newest first (``created`` descending, later inserts first on ties)."""
        data, has_more = self._store.page(self.name, _current(), limit, starting_after, ending_before)
        return Page(data, has_more)

    def find(self, /, **fields: Any) -> builtins.list[Record]:  # (``/``: a field named ``self`` can be found)
        """Records of the current namespace whose top-level fields equal all the given values (Python's ``==``:
        ``True`` matches ``1`` and ``1.0``; a tuple matches the stored list), in list order."""
        check_fields(fields)
        return self._store.find(self.name, _current(), fields)

    def all(self, namespace: str | None = None) -> builtins.list[Record]:
        """Every record of the current (or the given) namespace, in list order."""
        ns = _current() if namespace is None else check_name(namespace, "namespace")
        return list(self._store.ordered(self.name, ns))

    def _waiting_for(self, id: str, timeout: float) -> tuple[Callable[[], bool], float, Callable[[], str]]:
        """``wait_for``'s predicate (run by the waiting thread or task: its current namespace), deadline
        and message; the arguments checked."""
        check_storable_str(check_id(id), "id")  # (a wait for an id that cannot be stored would wait in vain)
        timeout = _timeout(timeout, 5.0)
        self._client._check_open()
        ns = _current()
        return (
            lambda: self.get(id) is not None,
            monotonic() + timeout,
            lambda: f"{self.name} {shown(id)} did not appear in namespace {ns!r} within {timeout:g}s{self._silence()}",
        )

    def watch(self, timeout: float | None = None, *, since: int | None = None, max_queued: int = DEFAULT_MAX_QUEUED) -> Feed:
        """A feed of this table's changes in the current namespace (at this call): ``for change in
        plans.watch(): ...``. ``client.watch(tables=[name])`` with the same arguments; see there."""
        return self._client.watch([self.name], CURRENT, since, timeout=timeout, max_queued=max_queued)

    def _waiting_until(
        self, predicate: Callable[[Record], bool], timeout: float | None
    ) -> tuple[str, float | None, Callable[[], Timeout], Callable[[Record], bool]]:
        """``wait_until``'s namespace, deadline (None: none), error past it, and the predicate to call (one
        that refuses an awaitable result); the arguments checked."""
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, not {type(predicate).__name__}")
        if inspect.iscoroutinefunction(predicate) or inspect.iscoroutinefunction(type(predicate).__call__):
            name = callable_name(predicate)
            raise TypeError(f"predicate must be a plain function, not the coroutine function {name}: {_NOT_AWAITED}")
        wait = check_timeout(timeout)
        self._client._check_open()
        ns = _current()
        deadline = None if wait is None else monotonic() + wait
        message = f"no record of {self.name} in namespace {ns!r} matched the predicate within {wait or 0:g}s"

        def accepts(record: Record) -> bool:
            verdict = predicate(record)
            if verdict is True or verdict is False or verdict is None:
                return bool(verdict)
            if inspect.isawaitable(verdict):  # (truthy: every record would match)
                if inspect.iscoroutine(verdict):
                    verdict.close()  # never awaited: no warning for it
                raise TypeError(f"predicate {callable_name(predicate)} returned {type(verdict).__name__}: {_NOT_AWAITED}")
            return bool(verdict)

        return ns, deadline, lambda: Timeout(message + self._silence()), accepts

    def _silence(self) -> str:
        """What a wait's ``Timeout`` adds when the writer went unheard past the heartbeat timeout meanwhile:
        "did not appear within 3s" alone blamed the record of a writer killed seconds before (a user trial;
        ``sync`` at that moment said the writer was silent, and gone)."""
        silent = self._client.replica.silent_for()
        if silent <= self._client.heartbeat_timeout:
            return ""
        return f" (the tiger writer at {self._client.url} has been silent for {silent:.1f}s: stopped, or gone)"

    def _scan(self, namespace: str, predicate: Callable[[Record], bool]) -> Record | None:
        """The first record of ``namespace`` stored now (list order) that ``predicate`` accepts."""
        for record in self._store.ordered(self.name, namespace):
            if predicate(record):
                return record
        return None

    # -- the request of each write ----------------------------------------------------

    def _insert_request(self, records: Sequence[Mapping[str, Any]], create: bool, *, single: bool) -> p.Insert:
        check_records(records, self.name, self.prefix, single=single)
        return p.Insert(next(self._client._req_ids), self.name, _current(), self.prefix, builtins.list[Any](records), create)

    def _insert_many_request(self, records: Sequence[Mapping[str, Any]]) -> p.Insert | None:
        """None: nothing to insert."""
        if not isinstance(records, (builtins.list, tuple)):
            raise TypeError(f"records must be a list, not {type(records).__name__}")
        return self._insert_request(records, False, single=False) if records else None

    def _update_request(self, id: str, changes: Mapping[str, Any]) -> p.Update:
        check_id(id)
        check_record(changes, "changes")
        check_update(id, changes, self._namespaces.get(_current(), {}).get(id))  # what the replica knows of it
        return p.Update(next(self._client._req_ids), self.name, _current(), id, dict(changes))

    def _delete_request(self, id: str) -> p.Remove:
        check_id(id)
        return p.Remove(next(self._client._req_ids), self.name, _current(), id)

    def _clear_request(self, namespace: str | None) -> p.ClearTable:
        """``namespace`` None: every namespace."""
        if namespace is not None:
            check_name(namespace, "namespace")
        return p.ClearTable(next(self._client._req_ids), self.name, namespace)


def _stored(reply: p.Ok) -> tuple[Record, ...]:
    """The records a write stored, as its answer carries them."""
    assert type(reply.change) is Put
    return reply.change.records


class Table(_TableReads):
    """A handle on one table. Every method works in the current namespace.

    Reads (``get``, ``[]``, ``in``, ``len``, ``count``, ``list``, ``find``, ``all``)
    are answered by the local replica; writes go to the writer and return once the
    local replica holds their change.
    """

    __slots__ = ()
    _client: Client

    def wait_for(self, id: str, timeout: float = 5.0) -> Record:
        """Block until ``id`` is in the local replica (written by any process); else ``tiger.Timeout``."""
        waiting = self._waiting_for(id, timeout)  # the arguments checked, found or not
        found = self.get(id)
        if found is None:
            self._client.replica.wait_until(*waiting)
            found = self.get(id)
        return found  # type: ignore[no-any-return]

    def wait_until(self, predicate: Callable[[Record], bool], timeout: float | None = None) -> Record:
        """The first record of the current namespace for which ``predicate(record)`` is true: one stored now
        (in list order), else the first to be stored (by any process) within ``timeout`` seconds (None:
        no limit); else ``tiger.Timeout``. ``predicate`` runs in this thread; what it raises is raised.
        """
        ns, deadline, failed, predicate = self._waiting_until(predicate, timeout)
        began = monotonic()  # (outside the loop: a stop counted before a feed's reset counts after it too)
        while True:
            # the feed opens before the scan: a record stored meanwhile is in one or the other
            with self._client._watch_for(self.name, ns, f"wait_until on {self.name} in namespace {ns!r}") as feed:
                found = self._scan(ns, predicate)
                if found is not None:
                    return found
                try:
                    found = _first_put(feed, predicate, deadline, began)
                except FeedOverflow:
                    continue  # fell behind (a slow predicate): scan again
                except Timeout:  # past the deadline
                    raise failed() from None
                if found is not None:
                    return found

    # -- writes -----------------------------------------------------------------------

    def insert(self, record: Mapping[str, Any]) -> Record:
        """Store the whole record (replacing one with the same id); returns it as stored.

        Without an ``"id"`` the writer makes one (``prefix_`` + 16 hex digits);
        ``"created"`` (Unix seconds) is added when absent.
        """
        return _stored(self._client._write(self._insert_request([record], False, single=True)))[0]

    def insert_many(self, records: Sequence[Mapping[str, Any]]) -> builtins.list[Record]:
        """Insert every record in one command: all of them or, on any error, none."""
        request = self._insert_many_request(records)
        return [] if request is None else builtins.list(_stored(self._client._write(request)))

    def create(self, record: Mapping[str, Any]) -> Record:
        """Like ``insert``, but ``tiger.AlreadyExists`` if the id is taken (decided at the writer)."""
        return _stored(self._client._write(self._insert_request([record], True, single=True)))[0]

    def update(self, id: str, changes: Mapping[str, Any]) -> Record:
        """Merge ``changes`` into the stored record, atomically at the writer; returns the result."""
        return _stored(self._client._write(self._update_request(id, changes)))[0]

    def delete(self, id: str) -> None:
        """Remove the record if present (idempotent)."""
        self._client._write(self._delete_request(id))

    def clear(self) -> None:
        """Remove every record of this table, in every namespace."""
        self._client._write(self._clear_request(None))

    def clear_namespace(self, namespace: str) -> None:
        """Remove every record of this table in one namespace."""
        self._client._write(self._clear_request(check_name(namespace, "namespace")))


_NOT_AWAITED = "wait_until calls it with each record and takes its result as true or false, without awaiting it"


def _first_put(feed: Feed, predicate: Callable[[Record], bool], deadline: float | None, began: float) -> Record | None:
    """The record of the first "put" on ``feed`` matching ``predicate`` that its write leaves stored
    (``lasting_match``; ``Timeout`` past ``deadline``, moved by the pauses since the wait ``began``, every one
    of them: a wait that scanned again after a reset and counted anew raised as it resumed from a stop); None
    after a "reset" (changes may have been missed: the caller scans the table again)."""
    change: Change | None = None  # read already, not yet looked at
    wait = None if deadline is None else WaitDeadline(deadline, began)  # (a pause of this process does not count)
    while True:
        if change is None:
            now = monotonic()
            change = feed._next(None if wait is None else max(0.0, wait.at(now) - now))
        if change.op == "reset":
            return None
        if change.op == "put" and predicate(change.record):  # type: ignore[arg-type]
            found, change = lasting_match(feed, change, predicate)
            if found is not None:
                return found
        else:
            change = None


def lasting_match(feed: Feed, first: Change, predicate: Callable[[Record], bool]) -> tuple[Record | None, Change | None]:
    """``wait_until``'s pick in the write whose matching put ``first`` is: the first record a put of that
    write (one seq: a batch's parts) stores that matches and that no later part of it removes, or replaces
    with one that does not match (a batch that inserted a record and deleted it returned a record no replica
    ever held); None if none stands. The write's other parts are queued with ``first`` (``deliver``): read
    without waiting. Also returns the change read after them, not yet looked at (None: none)."""
    found: dict[str | None, Record] = {first.id: first.record}  # type: ignore[dict-item]
    change = feed._queued()
    while change is not None and change.seq == first.seq:
        if change.op == "put" and predicate(change.record):  # type: ignore[arg-type]
            found[change.id] = change.record  # type: ignore[assignment]  # (a record replaced keeps its place)
        elif change.op in ("put", "delete"):
            found.pop(change.id, None)
        elif change.op == "clear":
            found.clear()
        change = feed._queued()
    return next(iter(found.values()), None), change


def connect(
    url: str | None = None, timeout: float = 5.0, *, heartbeat_timeout: float = 2.0, server_key: str | None = None
) -> Client:
    """Connect to a tiger writer; returns once the local replica holds the full snapshot.

    ``url`` defaults to the ``TIGER_URL`` environment variable. ``timeout`` (seconds) bounds every
    request, and connecting as a whole (the host name's lookup, the hello, the snapshot; time this process
    was not running, SIGSTOP or Ctrl-Z, does not count); a writer not heard from for ``heartbeat_timeout``
    seconds is taken for gone (writes raise ``tiger.Unavailable`` at once until it is back). ``server_key``
    (default ``$TIGER_SERVER_KEY``) is the public key of a writer serving with CurveZMQ.
    """
    server_key = unshown(server_key)  # (first: see ``unshown``)
    url, server_key = _connect_arguments(url, server_key)
    return Client(url, timeout, heartbeat_timeout, server_key)


def _connect_arguments(url: str | None, server_key: str | None) -> tuple[str, str | None]:
    """The URL and server key of ``connect``: from ``$TIGER_URL`` and ``$TIGER_SERVER_KEY`` when not given (the
    key as an ``EnvServerKey``, so that what is said of it names TIGER_SERVER_KEY, not ``server_key``)."""
    if url is None:
        url = os.environ.get("TIGER_URL") or None
        if url is None:
            raise ValueError("no tiger URL: pass connect(url=...) or set the TIGER_URL environment variable")
    if server_key is None:
        server_key = env_server_key() or None
    return url, server_key
