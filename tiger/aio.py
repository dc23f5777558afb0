"""tiger for asyncio: the same store, semantics and errors as the blocking client, awaited.

import tiger.aio

async with await tiger.aio.connect(url) as client:       # returns once the replica holds the snapshot
    plans = client.table("plans", prefix="plan")
    plan = await plans.insert({"amount": 500})           # every write is awaited; read-your-writes on return
    assert plans[plan["id"]] == plan                     # reads stay plain calls on the local replica
    other = await plans.wait_for("plan_x", timeout=5.0)  # the event loop runs on while it waits

How it waits without blocking the event loop, and without a thread per call: a write goes out on a
DEALER socket whose file descriptor the event loop watches (the same Lazy Pirate resends and expiry as
the blocking client; see ``_AwaitedSocket``); the local replica is kept by its own thread, as for a
blocking client, and a task waiting for it (a write's change, ``wait_for``, ``sync``, ``once``) awaits a
future that the replica resolves through the event loop (``call_soon_threadsafe``) when it applies a
change.

Cancelling an awaited write (``task.cancel()``, ``asyncio.timeout``) raises ``CancelledError`` in the
caller at once and leaves the write as a write that timed out: either never applied (the writer refuses
it once its expiry, a little before the client's ``timeout``, has passed) or applied, and then in the
local replica about a round trip later (a task of the client takes its answer; had the writer gone,
the replica asks the writer for it after the call's deadline). Which one is not known when the caller
is cancelled.

A client is used from one event loop at a time (its socket follows the running loop, so one client may
serve the successive loops of a test suite; a call while a loop of another thread has one in flight
raises ``TigerError``). ``tiger.aio.AsyncClient.sharing(client)`` makes
an async client over a blocking client's connection (its replica, its id): no second replica in the
process, nothing to await to make one; the pytest plugin's ``tiger_aclient`` is that.
"""

from __future__ import annotations

from tiger import _loading

with _loading.lock:  # a fork waits for what this module loads first (zmq, tiger's client: see tiger._loading)
    import asyncio

    import tiger._client  # noqa: F401

import builtins
import concurrent.futures.thread  # noqa: F401  (off_loop's threads: imported at first use, it failed out of descriptors)
import contextlib
import logging
import math
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar, cast

import zmq

from tiger import _protocol as p
from tiger._batch import AsyncBatch
from tiger._calls import GIVE_UP, PROBE, RESEND, Attempts, WaitDeadline, check_seconds, resend_interval
from tiger._client import (
    HELLO_PROBE_AFTER,
    RELEASE_AT_EXIT,
    Client,
    Refusals,
    _connect_arguments,
    _Connection,
    _open_clients,
    _shut_down,
    _stored,
    _TableReads,
    _timeout,
    lasting_match,
)
from tiger._clock import mark, monotonic, moved, unpaused, wall
from tiger._errors import FeedOverflow, TigerError, Timeout, Unavailable
from tiger._feed import _EXPIRED, Alarm, Change, Owner, _resolve, check_timeout, off_loop, running_loop
from tiger._lookup import endpoint_or_why, unresolved
from tiger._owned import OwnedAsyncLock
from tiger._process import PauseWatch, check_room
from tiger._replica import Replica
from tiger._server import check_connect_url, recently_refused, unshown
from tiger._table import GLOBAL, Record, check_leasable, check_name

__all__ = ["AsyncClient", "AsyncTable", "connect"]
LOOK_WAIT = 0.6  # seconds a call out of time before its send waits for the replica thread to look for a pause
log = logging.getLogger("tiger.client")
_T = TypeVar("_T")


async def connect(
    url: str | None = None, timeout: float = 5.0, *, heartbeat_timeout: float = 2.0, server_key: str | None = None
) -> AsyncClient:
    """Connect to a tiger writer; returns once the local replica holds the full snapshot (the event loop
    runs meanwhile, between the replica thread's stretches of decoding it, which hold the GIL: up to
    0.17 s at a time for a 200k-record store in a user trial). The arguments are ``tiger.connect``'s:
    ``url`` defaults to ``$TIGER_URL``, ``timeout`` (seconds) bounds every request, a writer silent for
    ``heartbeat_timeout`` seconds is taken for gone. Raises ``TypeError`` / ``ValueError`` for a bad argument,
    ``tiger.Unavailable`` if no writer answers within ``timeout``. ``async with client:`` closes it."""
    server_key = unshown(server_key)  # (first: see ``unshown``)
    url, server_key = _connect_arguments(url, server_key)
    seconds: float = check_seconds(timeout, "timeout", positive=True)  # type: ignore[assignment]
    began = mark()
    deadline = began[0] + seconds
    # watched from before the lookup (a stop before the client's own watch began was seen by nothing: its
    # time counted, and the connect failed "did not answer" as the blocking one no longer does)
    watch = PauseWatch(deadline + 1.0, began)
    try:
        await _looked_up(check_connect_url(url), seconds, deadline, watch)
        # (the lookup counted in the timeout)
        client = AsyncClient(url, timeout, heartbeat_timeout, server_key, deadline, pause_watch=watch)
    except BaseException:
        watch.stop()
        raise
    try:
        await client._open()
    except BaseException:
        client._close_now()
        raise
    finally:
        client._pause_watch.stop()
    return client


async def _looked_up(url: str, timeout: float, deadline: float, watch: PauseWatch) -> None:
    """Return once the host name of ``url`` has an address (``tiger._lookup``, kept there for the client
    made next), within ``timeout`` seconds, as ``tiger.connect`` waits for it, the event loop running
    meanwhile: polled every 10 ms, no thread held. ``Unavailable`` naming why past ``deadline``
    (``time.monotonic()``: when the ``timeout`` ends), moved by the pauses ``watch`` found."""
    while True:
        found, why = endpoint_or_why(url, 0)
        left = deadline + watch.paused_since(watch.began) - monotonic()
        if found is not None:
            return
        if left <= 0:
            raise unresolved(url, timeout, why)
        await asyncio.sleep(min(0.01, left))


def _best_effort_task(call: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
    """A task of tiger's own that nothing awaits to the end (a write's late answer, a once release on the way
    out of a cancelled call): a loop ending with it pending (asyncio.run cancels the tasks it had, and one
    made as they are cancelled is never awaited) closes its coroutine, which hands the call to the replica,
    without "Task was destroyed but it is pending!" at exit (a user trial, each of the two)."""
    task = running_loop().create_task(call)
    task._log_destroy_pending = False  # type: ignore[attr-defined]
    return task


class AsyncClient(_Connection):
    """A connection to a tiger writer plus a full local replica, for asyncio code: every write and every
    wait is awaited; reads are plain calls. Made by :func:`tiger.aio.connect` or :meth:`sharing`."""

    _instead = "Another process connects itself: pass it the url (client.url) and call tiger.aio.connect(url) there"

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
        self._shared: Client | None = None  # the blocking client whose connection this one uses
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, OwnedAsyncLock] = weakref.WeakKeyDictionary()
        # tasks awaiting the answers of cancelled writes (-> the write's req_id), writes not waited for (-> None)
        self._late: dict[asyncio.Task[Any], int | None] = {}
        self._unanswered: dict[int, tuple[bytes, float]] = {}  # their req_id -> (call bytes, deadline)
        self._in_flight: set[int] = set()  # req_ids of the calls waiting for their answers, on any loop
        self._serving: dict[asyncio.AbstractEventLoop, set[object]] = {}  # loops using the socket -> their calls' tokens
        self._serving_lock = threading.RLock()  # (re-entered: see ``_served``)
        self._answers: dict[int, p.Reply] = {}  # answers one loop's call took for another's
        try:  # (connect stops its pause watch once it is done: here, if it never gets there)
            # a list the finalizer shares (a resend replaces the socket)
            self._command: list[_AwaitedSocket] = [_AwaitedSocket(self._first_socket())]
        except BaseException:
            self._pause_watch.stop()
            raise

    @classmethod
    def sharing(cls, client: Client) -> AsyncClient:
        """An async client over a connected blocking ``client``'s connection: the same replica, id and
        once keys (no second replica in the process), a command socket (and zmq context) of its own.
        Closing it (or dropping it unclosed: a feed opened through it keeps it) closes that socket and ends
        what was opened through it, as closing any client does: its feeds (their next reads, after the changes queued, raise
        ``TigerError("... ended: the client was closed")``) and its pending waits (``wait_for``,
        ``wait_until``, ``sync``, a write's wait for its change, ``once``: ``TigerError``); ``client``'s own
        feeds and waits go on. Once ``client`` is closed, this one's calls raise ``TigerError``, and its
        feeds and waits end with ``client``'s."""
        if not isinstance(client, Client):
            raise TypeError(f"client must be a tiger.Client, not {type(client).__name__}")
        if client._closed:
            raise TigerError("client is closed")
        shared = cls.__new__(cls)
        shared.__dict__.update(client.__dict__)  # its ids, settings, replica and once keys
        del shared.__dict__["_socket_hold"]  # the blocking client's hold on its socket: not this one's
        shared._shared = client
        shared._owner = Owner()  # its own feeds and waits on the shared replica, ended by its close (not ``client``'s)
        # a context of its own: closing ``client`` terminates its context, which waits for every socket in it
        check_room("a sharing tiger.aio client", 8)  # (a context and one socket of its own)
        shared._ctx = zmq.Context()
        shared._locks = weakref.WeakKeyDictionary()
        shared._late = {}
        shared._unanswered = {}
        shared._in_flight = set()
        shared._serving = {}
        shared._serving_lock = threading.RLock()
        shared._answers = {}
        shared._command = [_AwaitedSocket(shared._first_socket())]
        shared._finalizer = weakref.finalize(
            shared, _abandoned_sharing, client.replica, shared._owner, shared._ctx, shared._command, shared._pid
        )
        return shared

    async def _open(self) -> None:
        best: float | None = None  # (``Client._hello``'s steps)
        counted, asked = 0.0, 0
        info: dict[str, Any] | None = None
        while True:
            sent = wall()
            try:
                info = (await self._request(self._hello_request(), self._connect_by(), seconds=self.timeout)).result
            except Unavailable as e:
                if info is not None:
                    break
                counted = self._paused_hello(e, counted)
                continue
            asked += 1
            best, done = self._heard_hello(sent, wall(), info, best)
            if done or asked == 3:
                break
        replica = self._replica = self._make_replica(info)
        replica.start()
        deadline = self._connect_by()
        try:  # past the deadline while the snapshot's chunks keep coming (``Replica.joined_by``)
            await replica.until(replica.joined_or_failed, deadline, str, extend=replica.joining_by)
        except Timeout:
            raise await off_loop(replica.no_snapshot, self.timeout) from None
        if replica.failure is not None:
            raise replica.failure
        self._track_open()  # (left open at exit: its teardowns awaited in a loop of their own)

    # -- lifecycle ------------------------------------------------------------------

    async def close(self) -> None:
        """Run the teardowns of the once values this client built (awaiting async generators; as
        ``tiger.Client.close`` does: letting go of the values it got as it goes), wait for a
        call in flight (at most ``timeout`` seconds), say goodbye to the writer, stop the replica, close the
        sockets. Idempotent. A teardown that raised is raised again at the end. Cancelled, it still closes
        (the teardowns not run yet are logged, not run). Under anyio, the teardowns run in a shielded
        cancel scope (at most twice ``timeout`` seconds): anyio cancels again at every await, so a close in
        a cancelled scope or task group ran none of them and kept their keys. The feeds opened through this
        client end (their next reads, after the changes queued, raise ``TigerError("... ended: the client
        was closed")``, in a thread reading one too) and its pending waits raise ``TigerError``. An async
        client made by ``sharing`` runs no teardowns (the shared client's), leaves the shared replica
        running, and ends only its own feeds and waits (``Replica.end_owner``)."""
        if self._closed:
            return
        errors: list[tuple[str, BaseException]] = []
        try:
            if os.getpid() == self._pid and self._shared is None:
                with _shielded_under_anyio(2 * self.timeout):  # in this task: the teardown's context and scopes are its own
                    errors = await self._tear_down_once_values(self.timeout, leaving=True)
        finally:
            if self._once._teardowns:
                log.warning("closing %r with once teardowns not run: %s", self, sorted(k for _, k in self._once._teardowns))
            lock = self._lock(watching=False)  # (a loop that cannot watch the socket closes too)
            me = object()
            try:  # a call in flight ends first (not within the timeout: closed anyway; it gets "this client is closed")
                await lock.take(me, monotonic() + self.timeout)
            finally:
                self._close_now()
                try:  # (twice: see ``tiger._owned``)
                    lock.let_go(me)
                finally:
                    lock.let_go(me)
        if errors:
            raise errors[0][1]

    def _tear_down_at_exit(self) -> list[tuple[str, BaseException]]:
        if self._shared is not None:
            return []  # (its blocking client's)
        busy = self._loop_busy_at_exit()
        if busy is not None:
            log.warning("%r: its once teardowns do not run at exit: %s (close the client there first)", self, busy)
            return []
        return asyncio.run(self._tear_down_once_values(self.timeout, leaving=True))

    def _loop_busy_at_exit(self) -> str | None:
        """Why this client's teardowns cannot be awaited at exit in an event loop of their own: a loop that
        used it still runs (in another thread: two threads would use one socket, which libzmq does not
        survive), or one runs in this thread (``asyncio.run`` refuses). None when they can (a review)."""
        if any(loop.is_running() for loop in list(self._locks)):
            return "an event loop that used it still runs"
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        return "an event loop runs in the thread that exits"

    def _let_go_at_exit(self) -> None:
        if self._shared is None and self._loop_busy_at_exit() is None:
            asyncio.run(self._once.let_go_of_newer_async(self, RELEASE_AT_EXIT))

    def _close_now(self) -> None:
        """Close without awaiting anything (no teardowns): the sockets, the replica, the context; for a
        client made by ``sharing``, its own socket and context, and what was opened through it on the
        shared replica (its feeds and waits end: ``Replica.end_owner``)."""
        self._closed = True
        _open_clients.discard(self)
        if self._finalizer is not None:
            self._finalizer.detach()
        if os.getpid() != self._pid:
            return  # a forked child: the sockets belong to the parent
        if self._shared is not None:
            try:
                if self._replica is not None:
                    self._replica.end_owner(self._owner)  # (after ``_closed``: a feed opened meanwhile is refused)
            finally:
                self._socket.close(linger=0)
                self._ctx.term()
            return
        if self._replica is not None:
            try:
                self._socket.sock.send(p.encode_request(p.Bye(self.client_id)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        self._socket.close(linger=0)
        if self._replica is not None:
            self._replica.stop()
        self._ctx.term()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the store --------------------------------------------------------------------

    def table(self, name: str, prefix: str | None = None, fallback_to_global: bool = False) -> AsyncTable:
        """A handle on table ``name`` (the table exists from its first write): reads are plain calls, writes
        and waits are awaited."""
        self._checked_table(name, prefix, fallback_to_global)
        return AsyncTable(self, name, prefix, fallback_to_global)

    async def sync(self, timeout: float | None = None) -> None:
        """Return once the replica holds every write any client was answered for before this call.
        ``timeout``: seconds, above 0; default the client's."""
        began = monotonic()
        deadline = began + _timeout(timeout, self.timeout, positive=True)  # (as ``Client.sync``)
        while True:
            try:
                reply = await self._request(p.Sync(next(self._req_ids)), unpaused(deadline, began))
                break
            except Unavailable as unavailable:  # a paused writer is waited for, as long as the call allows
                left_until = unpaused(deadline, began)
                refused = await off_loop(recently_refused, self.url) if monotonic() < left_until else None
                with contextlib.suppress(Timeout):
                    await self.replica.until(*self._heard_again(unavailable, left_until, refused), self._owner)
                if monotonic() >= unpaused(deadline, began):
                    raise
        await self._caught_up(reply, deadline, since=began)

    def batch(self, timeout: float | None = None) -> AsyncBatch:
        """Writes across tables and namespaces sent as one command when the ``async with`` block ends,
        applied all or none: ``async with client.batch() as b: b.table("plans").insert({...})``
        (``timeout`` and the rest: see ``tiger.Client.batch``)."""
        from tiger._client import _current, _timeout

        return AsyncBatch(self, _current, _timeout(timeout, self.timeout, positive=True))  # type: ignore[arg-type]

    async def drop_namespace(self, namespace: str) -> None:
        """Remove every record of ``namespace`` in every table, in one command (a test's cleanup); a
        ``RuntimeWarning`` if this client had leased it and that lease had ended before (``tiger.Client.drop_namespace``)."""
        check_name(namespace, "namespace")
        leased = self._let_go(namespace)
        lost = self._dropped(namespace, leased, await self._write(p.Drop(next(self._req_ids), namespace)))
        if lost is not None:
            warnings.warn(lost, RuntimeWarning, stacklevel=2)

    async def lease_namespace(self, namespace: str | None = None) -> None:
        """``tiger.Client.lease_namespace``, awaited: the writer drops ``namespace`` (default: the current
        one) from every table once the last client leasing it is gone (closed, or silent about 1 s with its
        connection closed, 3 s without, and not heard again within the writer's lease grace)."""
        from tiger._client import _current

        name = check_leasable(_current() if namespace is None else namespace)
        await self._write(p.Lease(next(self._req_ids), name, self.client_id))
        self._leased.add(name)

    async def once(
        self, key: str, factory: Callable[[], Any], timeout: float | None = None, *, namespace: str | None = None
    ) -> Any:
        """``tiger.Client.once``, awaited: across every process using this writer, exactly one runs
        ``factory``; all get its value. ``factory`` may be a plain function, a coroutine function (its
        result is awaited) or an async generator function (its first value is the shared value; the rest,
        its teardown, is awaited at ``close()``); a generator function as for the blocking client."""
        check_name(key, "key")
        scope = GLOBAL if namespace is None else check_name(namespace, "namespace")
        if not callable(factory):
            raise TypeError(f"factory must be callable, not {type(factory).__name__}")
        wait = check_timeout(timeout)
        return await self._once.value_async(self, key, scope, factory, wait, in_scope=namespace is not None)

    async def tear_down_once_values(self, wait: float = 0.0) -> list[tuple[str, BaseException]]:
        """``tiger.Client.tear_down_once_values``, awaited (async generator factories' teardowns too)."""
        self._check_process()
        return await self._tear_down_once_values(check_seconds(wait, "wait"))  # type: ignore[arg-type]

    async def _tear_down_once_values(self, wait: float, leaving: bool = False) -> list[tuple[str, BaseException]]:
        """``tear_down_once_values``; ``leaving`` (``close()``): letting go of the values other clients built
        as it goes (``Once.tear_down``)."""
        errors = await self._once.tear_down_async(self, wait, leaving)
        for _, error in errors:  # the tear-down ended at it: a cancellation goes on now, before any error
            if isinstance(error, asyncio.CancelledError):
                raise error
        return errors

    async def stats(self) -> dict[str, Any]:
        """The writer's figures: epoch, seq, uptime, clients, records per table and namespace."""
        return (await self._request(p.Stats(next(self._req_ids)))).result  # type: ignore[no-any-return]

    # -- requests -------------------------------------------------------------------

    @property
    def _socket(self) -> _AwaitedSocket:
        return self._command[0]

    def _command_socket(self) -> zmq.Socket[Any]:
        return self._command[0].sock

    def _lock(self, watching: bool = True) -> OwnedAsyncLock:
        """One request in flight on the command socket, per event loop (asyncio locks belong to one). On a
        loop's first call ``watching``, the loop is made to watch the socket (refused: ``TigerError``)."""
        loop = running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            if watching:
                self._socket.watch(loop)  # a loop that cannot is refused before anything is sent
            lock = self._locks[loop] = OwnedAsyncLock()
            if self._late:
                self._drop_tasks_of_closed_loops()
        return lock

    def _forget_task(self, task: asyncio.Task[Any]) -> None:
        self._late.pop(task, None)

    def _drop_tasks_of_closed_loops(self) -> None:
        """Drop the tasks this client made on event loops closed before they ran, with their loops, as a new
        loop makes its first call: ``asyncio.run`` ending with a write in flight cancels it, and the task
        made then to await its answer never runs (a client serving a loop per test, as pytest-asyncio
        runs them, kept every such task and loop: 327 loops after 1000 runs, in a user trial). Each such
        write is left to the replica to ask again at once (its own look at calls of closed loops, within
        a heartbeat, may have done so already: ``PendingCalls``' Rule 6)."""
        for task, req_id in list(self._late.items()):
            if not task.get_loop().is_closed():
                continue
            del self._late[task]  # (one done as its loop closed: its done callback never ran)
            entry = None if req_id is None or task.done() else self._unanswered.pop(req_id, None)
            if entry is not None:  # (asked at once: no task of this client awaits its answer now)
                self.replica.call_failed(req_id, (req_id, entry[0], monotonic()))  # type: ignore[arg-type]

    def _serve(self, me: object) -> None:
        """The call ``me`` (a token) of the running loop uses the socket until ``_served(me)``, said in its
        ``finally`` however it ends (calls are named, not counted: a signal landing between a count and the
        ``try`` that undoes it left a loop counted for good, and every call of another thread's loop was
        refused). Refused (``TigerError``) while a loop running in another thread uses it: a ZeroMQ socket
        is not thread-safe, and two loops of two threads sharing one were seen to hang a call past its
        timeout (a loop not running, its call paused, is no obstacle)."""
        loop = running_loop()
        with self._serving_lock:  # (a copy: a ``_served`` of a collected call may run within, see there)
            if any(calls and other is not loop and other.is_running() for other, calls in self._serving.copy().items()):
                raise TigerError(
                    "this tiger.aio client is in use by an event loop running in another thread: a client serves one "
                    "event loop at a time; make one per thread (tiger.aio.connect, or AsyncClient.sharing(a tiger.Client))"
                )
            self._serving.setdefault(loop, set()).add(me)

    def _served(self, me: object) -> None:
        """The call ``me`` no longer uses the socket (not using it, refused say: nothing).

        Said in the ``finally`` of a call's coroutine, which the garbage collector runs when it collects
        the coroutine of a task whose event loop was closed under it: at any allocation of any thread, so
        maybe inside ``_serve`` or ``_served`` holding the lock (a plain lock hung the process on Python
        3.13, in a test running a loop per test). So the lock is re-entrant, and the dict is walked as a
        copy (``dict.copy`` runs no Python code) and changed only where the entry is still the one seen."""
        with self._serving_lock:
            for loop, calls in self._serving.copy().items():
                calls.discard(me)
                if not calls and self._serving.get(loop) is calls:
                    del self._serving[loop]

    def _ended(self, loop: asyncio.AbstractEventLoop) -> Callable[[], bool]:
        """Whether a call of ``loop`` can no longer take its answer: that loop closed under it (its task
        never runs again, its coroutine ends when the garbage collector gets to it, if ever), or this
        client closed, its socket with the answer, while the loop was not running (a loop kept from test
        to test). The replica then finishes the call, asking the writer for it at once if it was sent
        (``PendingCalls``' Rule 6)."""
        return lambda: self._closed or loop.is_closed()

    def _ask_at(self, deadline: float) -> float:
        """When the replica is to ask the writer again for a write that raised unanswered: after its
        ``deadline`` while its answer may still come on the command socket; at once when this client is
        closed, that answer gone with its socket (the gap its change left held every later write of the
        replica until the deadline, a blocking client's sharing it too). A call of a closed loop, handed
        over as it is collected or as its loop's tasks are dropped, is asked at once too."""
        return monotonic() if self._closed else deadline

    def _call_bytes(self, request: p.Request, deadline: float | None, probe: bool = True) -> tuple[bytes, float, float]:
        if self._shared is not None and self._shared._closed:
            raise TigerError("this client is closed (the tiger.Client whose connection it shares was closed)")
        return super()._call_bytes(request, deadline, probe)

    async def _pauses_looked_for(self) -> None:
        """Return once the replica thread has looked at the clock since now (at most ``LOOK_WAIT`` seconds): a
        pause of this process that has just ended is then found (``paused_since``). The event loop does not
        find its own (a loop held by a task is no pause), and it may run before that thread after a stop: a
        call that waited for the socket behind another then raised "held its socket until too late" (1 run
        in 3 of its test)."""
        replica, asked = self._replica, monotonic()
        until = asked + LOOK_WAIT
        while replica is not None and replica.last_awake < asked and replica.failure is None and monotonic() < until:
            await asyncio.sleep(0.005)

    async def _request(
        self, request: p.Request, deadline: float | None = None, own: bool = False, seconds: float | None = None
    ) -> p.Ok:
        """``Client._request``, awaited: the same call bytes, Lazy Pirate resends on a fresh socket, expiry
        and errors. Cancelled after sending, the call is left to the replica as one that raised unanswered."""
        began = monotonic()  # (time unsent moves by the pauses other threads found: a loop held is no pause)
        if seconds is None:  # the timeout the deadline stands for, as errors name it
            seconds = self.timeout if deadline is None else round(deadline - began, 3)
        try:
            call = self._call_bytes(request, deadline, probe=False)
        except Unavailable:  # a silent writer: its url probed in a thread (a probe may take 0.1 s)
            refused = await off_loop(recently_refused, self.url)
            if self._unheard():
                raise self._silent_writer(refused) from None
            call = self._call_bytes(request, deadline, probe=False)  # heard again meanwhile
        if monotonic() >= call[2]:
            await self._pauses_looked_for()
        call, counted = self._unpaused(request, call, began, 0.0, probe=False)
        payload, deadline, expires = call
        self._check_time_left(expires, seconds)
        req_id = request.req_id  # type: ignore[union-attr]
        sent = answered = False
        received: bytes | None = None  # the last answer received (a signal may cut its decoding short)
        refusals = None if type(request) is p.Hello else Refusals()
        me = object()
        try:
            if own:
                self.replica.call_started(req_id, self._ended(running_loop()))
            self._serve(me)  # before the loop's lock: a refused call must not touch the socket (watch)
            lock = self._lock()
            try:
                if not await lock.take(me, deadline):  # (``OwnedAsyncLock``: a signal cannot leave it held)
                    await self._pauses_looked_for()  # (its wait moved by pauses found: one just ended may not be yet)
                    if not await lock.take(me, moved(deadline, began, counted)[0]):  # (``deadline`` moved by ``counted``)
                        raise self._busy(seconds)
                if self._closed:
                    raise TigerError("this client is closed")
                if monotonic() >= expires:
                    await self._pauses_looked_for()
                    call, counted = self._unpaused(request, (payload, deadline, expires), began, counted, probe=False)
                    payload, deadline, expires = call
                if monotonic() >= expires:  # the socket came too late: sent now, the writer would refuse it
                    raise self._busy(seconds)
                if self._socket._loop is not running_loop():  # taken before its first use on this thread
                    self._socket.watch(running_loop())
                sent = True  # from here a cancellation may come after libzmq took the bytes
                if own:
                    self.replica.call_sent(req_id, payload, deadline)
                self._in_flight.add(req_id)
                self._send_call(payload)
                mine = p.own_records_of(request, payload)  # decoded while the writer works
                probe_after = HELLO_PROBE_AFTER if refusals is None else None
                attempts = Attempts(monotonic(), deadline, resend_interval(self.timeout, seconds, len(payload)), probe_after)
                try:
                    while True:
                        if self._answers:  # taken by a call of another event loop (see _late_answer)
                            kept = self._answers.pop(req_id, None)
                            if kept is not None:
                                reply, answered = kept, True
                                break
                        wait = attempts.wait(monotonic())
                        if wait == PROBE:  # ``Client._request``'s: connect's hello, its handshake probed in a thread
                            await off_loop(self._probe_hello, deadline)
                            continue
                        if wait == GIVE_UP:
                            late = self._queued_answer(self._socket.sock, req_id, mine, deadline)
                            if late is not None:
                                reply, answered = late, True
                                break
                        if wait <= RESEND:  # ``Client._silence``'s steps, its probes in a thread
                            if refusals is None:  # connect's hello: the handshake probe
                                await off_loop(self._probe_hello, deadline)
                            try:
                                await off_loop(self._judge_silence, wait, seconds, refusals)
                            except Unavailable:
                                self._fresh_socket()
                                raise
                            # no await from here to the send: a task cancelled in between would leave its
                            # call on neither socket, its late answer then taken only at its deadline
                            self._fresh_socket()
                            self._send_call(payload)
                            self.resends += 1
                        else:
                            data = await self._socket.recv(wait / 1000)
                            if data is None:
                                continue
                            received = data
                            reply = p.decode_reply(data, mine)
                            if reply.req_id == req_id:
                                answered = True
                                break
                            self._late_answer(reply)
                except zmq.ZMQError:  # its socket closed under it (a close() cancelled as it waited for this call)
                    if self._closed:
                        raise TigerError("this client is closed") from None
                    raise
            finally:
                try:  # (twice: see ``tiger._owned``)
                    lock.let_go(me)
                finally:
                    lock.let_go(me)
            return self._outcome(reply, seconds)
        except asyncio.CancelledError:
            if self._closed and not _cancelling():  # the socket was closed under the call (its wait is cancelled)
                if own:
                    self.replica.call_failed(req_id, (req_id, payload, self._ask_at(deadline)) if sent and not answered else None)
                raise TigerError("this client is closed") from None
            if own and sent and not answered:  # its answer comes in about a round trip: take it then (a task,
                # not the replica's ask-again after the deadline, which would hold this client's later writes
                # behind the gap for up to ``timeout`` seconds)
                self._unanswered[req_id] = (payload, deadline)
                task = _best_effort_task(self._answer_later(req_id))  # (its finally hands the call to the replica)
                self._late[task] = req_id
                task.add_done_callback(self._forget_task)
            elif own:
                self.replica.call_failed(req_id)
            raise
        except GeneratorExit:  # its coroutine closed (collected, its loop closed under it): see ``Replica.later``
            self._in_flight.discard(req_id)
            # (not the bytes it received last: decoding them as a late answer changes this client's own
            # dicts, which its event loop's thread reads unlocked; the replica asks the writer instead)
            # (sent and unanswered: asked at once, its loop closed: see ``_ask_at``)
            left = (req_id, own, (payload, monotonic()) if sent else None, reply if answered else None, None)
            self.replica.later(lambda: self._raised(*left))
            raise
        except BaseException:
            self._in_flight.discard(req_id)  # (an answer of its own read below is not for a call on another loop)
            self._raised(req_id, own, (payload, self._ask_at(deadline)) if sent else None, reply if answered else None, received)
            raise
        finally:
            try:  # (twice: see ``tiger._owned``)
                self._served(me)
            finally:
                self._served(me)
            self._in_flight.discard(req_id)
            if self._answers:
                self._answers.pop(req_id, None)

    async def _answer_later(self, req_id: int) -> None:
        """Wait for the answer to a write whose caller was cancelled after sending it, until its deadline:
        whichever request reads it from the socket first (this task or another call) gives its change to
        the replica as any write's (``_late_answer``); none by the deadline, the replica asks the writer.
        It polls in slices of at most 50 ms, the socket free for other calls in between."""
        try:
            while req_id in self._unanswered and not self._closed and monotonic() < self._unanswered[req_id][1]:
                lock, me = self._lock(), object()
                try:
                    await lock.take(me, math.inf)
                    if req_id in self._unanswered and not self._closed:
                        remaining = self._unanswered[req_id][1] - monotonic()
                        try:
                            self._serve(me)
                            data = await self._socket.recv(max(0.001, min(0.05, remaining)))
                        finally:
                            try:  # (twice: see ``tiger._owned``)
                                self._served(me)
                            finally:
                                self._served(me)
                        if data is not None:
                            self._late_answer(p.decode_reply(data))
                finally:
                    try:  # (twice: see ``tiger._owned``)
                        lock.let_go(me)
                    finally:
                        lock.let_go(me)
                await asyncio.sleep(0)  # the calls waiting for the socket go first
        except (TigerError, zmq.ZMQError):  # (an undecodable answer, the socket closed under it): the replica
            pass  # asks the writer. (Not any Exception: a signal handler's is not swallowed.)
        except GeneratorExit:  # its coroutine closed (collected, its loop closed under it): see ``Replica.later``
            entry = self._unanswered.pop(req_id, None)
            if entry is not None:
                left = (req_id, entry[0], monotonic())  # (its loop is closed: see ``_ask_at``)
                self.replica.later(lambda: self.replica.call_failed(req_id, left))
            raise
        finally:
            entry = self._unanswered.pop(req_id, None)
            if entry is not None:
                self.replica.call_failed(req_id, (req_id, entry[0], self._ask_at(entry[1])))

    def _late_answer(self, reply: p.Reply) -> None:
        """An answer on the command socket to an earlier call: a cancelled write's (its change goes to the
        replica, filling the gap its seq would leave), or a stale one (ignored)."""
        if reply.req_id in self._in_flight:  # a call's on another event loop (one used while the other was
            self._answers[reply.req_id] = reply  # paused, a call waiting on it): kept for it, not lost
            return
        entry = self._unanswered.pop(reply.req_id, None)  # type: ignore[arg-type]
        if entry is None:  # a write that raised otherwise (a signal's exception), or a stale answer
            if reply.req_id is not None and reply.req_id > 0:
                self.replica.late_answer(reply)
            return
        if type(reply) is p.Ok:
            self.replica.take_answer(reply, own=True)
        else:
            self.replica.call_failed(reply.req_id)  # type: ignore[arg-type]  # refused: nothing was applied

    def _fresh_socket(self) -> None:
        """A new command socket in place of the old (made and swapped in before the old one is closed). The
        cancelled writes whose answers are still awaited are sent again on it: their answers went with the
        old socket (the writer answers a repeat from the answers it keeps, or refuses it past its expiry)."""
        made = self._new_socket_or_none()
        if made is None:  # out of file descriptors: the calls go on with the socket they have
            return
        fresh = _AwaitedSocket(made)
        old, self._command[0] = self._command[0], fresh
        old.close(linger=0)
        for payload, _ in self._unanswered.values():
            try:
                fresh.sock.send(payload, zmq.NOBLOCK)
            except zmq.Again:  # (over 1000 of them) the rest are asked by the replica after their deadline
                break

    async def _write(self, request: p.Request, deadline: float | None = None) -> p.Ok:
        """A write: returns once the local replica holds its change (read-your-writes), by ``deadline``
        (``time.monotonic()`` seconds; None: the client's timeout from now)."""
        began = monotonic()
        if deadline is None:
            deadline = began + self.timeout
        reply = None
        try:
            reply = await self._request(request, deadline, own=True)
            await self._caught_up(reply, deadline, own=True, since=began)  # (as ``Client._write``)
        except asyncio.CancelledError:  # (a call cancelled unanswered is finished by ``_answer_later``)
            raise
        except GeneratorExit:  # its coroutine closed (collected, its loop closed under it): see ``Replica.later``
            self.replica.later(lambda: self.replica.answer_left(request.req_id, reply))  # type: ignore[union-attr]
            raise
        except BaseException:  # (a signal between the answer and its deposit: as ``Client._write``)
            self.replica.answer_left(request.req_id, reply)  # type: ignore[union-attr]
            raise
        return reply

    def _write_later(self, request: p.Request) -> asyncio.Task[p.Ok]:
        """``_write(request)`` in a task of this client's, returned; the caller may stop waiting for it (a
        once release on the way out of a cancelled call): what it raises is then logged. A ``close()``
        waits for it (as for any call in flight) before saying goodbye."""
        task = _best_effort_task(self._write(request))  # (the replica asks it again: ``_write``'s GeneratorExit)
        self._late[task] = None

        def done(task: asyncio.Task[p.Ok]) -> None:
            self._late.pop(task, None)
            if not task.cancelled() and task.exception() is not None:
                log.debug("a write not waited for (%s) raised: %r", type(request).__name__, task.exception())

        task.add_done_callback(done)
        return task

    async def _caught_up(self, answer: p.Ok, deadline: float, own: bool = False, since: float | None = None) -> None:
        """``Replica.catch_up``, awaited. Past its deadline (``since`` the call began), a stop just ended is looked
        for first (the event loop finds none: the replica thread may find it after the wait's one more look),
        once the answer is taken: a cancellation before it lost an answered write's change (a review)."""
        replica = self.replica
        if not replica.take_answer(answer, own):
            if since is not None and monotonic() >= unpaused(deadline, since):
                await self._pauses_looked_for()
            await replica.until(*replica.reaching(answer, deadline), self._owner, replica.caught_up_by, since)

    async def _until(self, predicate: Callable[[], bool], deadline: float, what: Callable[[], str]) -> None:
        """``Replica.until`` for a wait of this client (``wait_for``, ``once``): ``TigerError`` once it is closed."""
        await self.replica.until(predicate, deadline, what, self._owner)


class AsyncTable(_TableReads):
    """A handle on one table of an :class:`AsyncClient`, in the current namespace (a contextvar: it
    follows tasks as asyncio copies contexts). Reads as ``tiger.Table``'s; writes and waits awaited."""

    _connect = "tiger.aio.connect(url)"

    __slots__ = ()
    _client: AsyncClient

    async def wait_for(self, id: str, timeout: float = 5.0) -> Record:
        """Return once ``id`` is in the local replica (written by any process); else ``tiger.Timeout``."""
        waiting = self._waiting_for(id, timeout)  # the arguments checked, found or not
        found = self.get(id)
        if found is None:
            await self._client._until(*waiting)
            found = self.get(id)
        return found  # type: ignore[no-any-return]

    async def wait_until(self, predicate: Callable[[Record], bool], timeout: float | None = None) -> Record:
        """``tiger.Table.wait_until``, awaited: the first record of the current namespace for which
        ``predicate(record)`` is true, stored now or the first to be stored within ``timeout`` seconds
        (None: no limit); else ``tiger.Timeout``. ``predicate`` runs in this task's thread, the loop's."""
        ns, deadline, failed, predicate = self._waiting_until(predicate, timeout)
        wait = None if deadline is None else WaitDeadline(deadline, monotonic())  # (outside the loop: a stop
        # counted before a feed's reset counts after it too)
        while True:
            # the feed opens before the scan: a record stored meanwhile is in one or the other
            with self._client._watch_for(self.name, ns, f"wait_until on {self.name} in namespace {ns!r}") as feed:
                found = self._scan(ns, predicate)
                change: Change | None = None  # read already, not yet looked at (after a write's parts)
                while found is None:
                    try:
                        if change is None:
                            now = monotonic()
                            change = await feed._anext(None if wait is None else max(0.0, wait.at(now) - now))
                        if change.op == "reset":
                            break  # changes may have been missed: scan again
                        if change.op == "put" and predicate(change.record):  # type: ignore[arg-type]
                            found, change = lasting_match(feed, change, predicate)
                        else:
                            change = None
                    except FeedOverflow:
                        break  # fell behind (a slow predicate): scan again
                    except Timeout:
                        raise failed() from None
                if found is not None:
                    return found

    async def insert(self, record: Mapping[str, Any]) -> Record:
        """``tiger.Table.insert``, awaited: the record as stored, once the local replica holds it."""
        return _stored(await self._client._write(self._insert_request([record], False, single=True)))[0]

    async def insert_many(self, records: Sequence[Mapping[str, Any]]) -> builtins.list[Record]:
        """``tiger.Table.insert_many``, awaited: every record in one command, all or none."""
        request = self._insert_many_request(records)
        return [] if request is None else builtins.list(_stored(await self._client._write(request)))

    async def create(self, record: Mapping[str, Any]) -> Record:
        """``tiger.Table.create``, awaited: ``tiger.AlreadyExists`` if the id is taken."""
        return _stored(await self._client._write(self._insert_request([record], True, single=True)))[0]

    async def update(self, id: str, changes: Mapping[str, Any]) -> Record:
        """``tiger.Table.update``, awaited: the merged record."""
        return _stored(await self._client._write(self._update_request(id, changes)))[0]

    async def delete(self, id: str) -> None:
        """``tiger.Table.delete``, awaited (idempotent)."""
        await self._client._write(self._delete_request(id))

    async def clear(self) -> None:
        """Remove every record of this table, in every namespace."""
        await self._client._write(self._clear_request(None))

    async def clear_namespace(self, namespace: str) -> None:
        """Remove every record of this table in one namespace."""
        await self._client._write(self._clear_request(check_name(namespace, "namespace")))


def _cancelling() -> bool:
    """Whether the running task is being cancelled (Python 3.11+ can tell; 3.10 cannot: then False)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling()) if cancelling is not None else False


_POLLIN = int(zmq.POLLIN)  # a plain int: pyzmq's flag enums cost a call each

# Per event loop, per FD number: the token of the ``_AwaitedSocket`` registration it holds (changed on that
# loop's thread, or while it is not running), which a removal queued to that loop must still find there.
_readers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, object]] = weakref.WeakKeyDictionary()


class _AwaitedSocket:
    """An AsyncClient's command DEALER (a plain ``zmq.Socket``), awaited on the running event loop.

    The socket's ``ZMQ_FD`` stays registered with the loop (``loop.add_reader``) from one call to the
    next; a call that must wait awaits one future, which the FD's callback resolves once ``ZMQ_EVENTS``
    shows what it waits for, or a timer after ``timeout`` seconds. ``zmq.asyncio`` registers and
    unregisters the FD on every receive and takes a second turn of the loop after each event: a round
    trip measured 11 us (about 1.19x against 1.05x of a blocking one) more that way. The ZeroMQ rule
    both follow (zmq_getsockopt(3), ZMQ_FD): the FD only signals, edge-like, that ``ZMQ_EVENTS`` may
    have changed, so ``ZMQ_EVENTS`` is read before every wait and on every signal (reading it also
    clears the signal: a message left unread does not wake the loop again).

    One wait at a time (the client's per-loop lock); a wait from another loop moves the registration
    there. ``close`` ends a wait in progress by cancelling its future.

    A loop's selector and timers are changed only from its own thread, so what undoes a registration on
    a loop running in another thread is queued to it (``_on_its_thread``) and runs when that loop gets to
    it: maybe after a newer registration of that loop, which it must leave alone. Two loops of two threads
    used in turn (an async test and an app on a portal thread's loop, ``run_coroutine_threadsafe(...)
    .result()``: Starlette's TestClient) had the removal queued to the test's loop as the portal's loop
    took the socket run after the test's next call had registered the FD again: that call's answer never
    woke it, and every switch back cost a resend (1 s). A client closed on the portal's loop queued the
    removal of its FD to the test's loop the same way, and the number was the FD of the next client's
    socket there by the time it ran. So each registration has a token, kept per loop and FD number in
    ``_readers``, and a queued removal removes only the registration it was queued for (``_unwatched``);
    ``watch`` drops what a loop still holds under the number first (asyncio keeps a closed FD's
    registration as if watched: re-registering the number then changes nothing in the selector); a
    signal of a registration left on a loop that no longer watches reads nothing (the ZMQ_EVENTS read
    clears the FD's signal the watching loop waits for) and drops that registration; the timer of each
    wait is an alarm of the waiting loop's own (``_alarm_loop``), a new one for each loop taking over,
    the old one cancelled on its loop's thread: a ring of one loop's timer never reaches another's wait."""

    __slots__ = ("_alarm", "_alarm_loop", "_fd", "_guard", "_loop", "_token", "_waiter", "_want", "sock")

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self._fd = cast(int, sock.get(zmq.FD))
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop watching the FD (set on its own thread)
        self._token: object = None  # that registration's (see ``_readers``)
        self._waiter: asyncio.Future[Any] | None = None
        self._want = 0
        self._alarm = Alarm()  # the waits' timeouts, on the loop ``_alarm_loop`` (None: none yet)
        self._alarm_loop: asyncio.AbstractEventLoop | None = None
        self._guard = threading.RLock()  # a callback's token check and ZMQ_EVENTS read / the token's change

    def _signalled(self, loop: asyncio.AbstractEventLoop, token: object) -> None:
        with self._guard:  # (a loop taking the socket in another thread waits for this read to end)
            current = token is self._token
            if current:
                try:
                    events = cast(int, self.sock.get(zmq.EVENTS))
                except zmq.ZMQError:  # closed under the loop
                    events = -1
        if not current:  # a registration left on a loop that no longer watches (its removal queued)
            self._unwatched(loop, token)
            return
        if events < 0:
            self._unregister()
            return
        waiter = self._waiter
        if waiter is not None and events & self._want and not waiter.done():
            waiter.set_result(True)

    def _unregister(self) -> None:
        with self._guard:
            loop, token, self._loop, self._token = self._loop, self._token, None, None
        if loop is None or loop.is_closed():
            return
        try:  # (from another thread when a client is collected there)
            _on_its_thread(loop, self._unwatched, loop, token)
        except Exception:  # (that loop closing meanwhile): nothing left to undo
            pass

    def _unwatched(self, loop: asyncio.AbstractEventLoop, token: object) -> None:
        """On ``loop``'s thread: remove the registration ``token`` of the FD, unless a newer one of its
        number took its place (a removal queued to ``loop``, run after a call of that loop registered this
        socket again, or a socket made since with the same FD number: left alone)."""
        readers = _readers.get(loop)
        if readers is not None and readers.get(self._fd) is token:
            del readers[self._fd]
            loop.remove_reader(self._fd)

    def _retire_alarm(self) -> None:
        """Cancel the alarm's timer on its loop's thread (a new alarm is set up by the next ``watch``)."""
        alarm, loop, self._alarm_loop = self._alarm, self._alarm_loop, None
        if loop is None:
            alarm.close()
            return
        try:
            _on_its_thread(loop, alarm.close)
        except RuntimeError:  # its loop closed meanwhile: its timers never ring
            pass

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` watch the socket's FD (and no other loop). Raises ``TigerError`` for a loop that
        cannot watch file descriptors. A wait left pending on the loop watching before (a task of a loop
        not running now) is woken to look again: its loop watches the socket again when it goes on."""
        _look_again(self._waiter)
        self._unregister()
        token = object()
        try:
            # (a registration the loop holds under this number is a closed FD's, or this socket's whose
            # removal is still queued: dropped, so that the selector watches this FD afresh)
            loop.remove_reader(self._fd)
            loop.add_reader(self._fd, self._signalled, loop, token)
        except NotImplementedError:
            raise TigerError(
                f"tiger.aio needs an event loop that watches file descriptors (loop.add_reader), which "
                f"{type(loop).__name__} does not: the default selector loop on Linux and macOS does, uvloop too"
            ) from None
        readers = _readers.get(loop)
        if readers is None:
            readers = _readers[loop] = {}
        readers[self._fd] = token
        self._loop, self._token = loop, token
        if self._alarm_loop is not loop:
            self._retire_alarm()
            self._alarm, self._alarm_loop = Alarm(), loop

    async def wait(self, want: int, timeout: float) -> bool:
        """True once ``ZMQ_EVENTS`` has ``want`` (``_POLLIN``), False after ``timeout`` seconds."""
        loop = running_loop()
        if self._loop is not loop:  # (first: read before, a signal it took could be read by the loop giving the socket up)
            self.watch(loop)
        if cast(int, self.sock.get(zmq.EVENTS)) & want:
            return True
        waiter = self._waiter = loop.create_future()
        self._want = want
        timer = self._alarm.set(waiter, timeout)
        try:
            return await waiter is not _EXPIRED
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    async def recv(self, timeout: float) -> bytes | None:
        """The next message, or None after ``timeout`` seconds without one."""
        if not await self.wait(_POLLIN, timeout):
            return None
        try:
            return self.sock.recv(zmq.NOBLOCK)
        except zmq.Again:  # taken back by libzmq since (a peer gone): the caller waits on
            return None

    def close(self, linger: int | None = None) -> None:
        """Unregister the FD, end a wait in progress (its future cancelled, unless its loop was closed
        under it), close the socket."""
        self._unregister()
        self._retire_alarm()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done() and not waiter.get_loop().is_closed():
            try:
                waiter.cancel()
            except RuntimeError:  # its loop closed meanwhile (another thread's)
                pass
        self.sock.close(linger=linger)


def _abandoned_sharing(
    replica: Replica, owner: Owner, ctx: zmq.Context[Any], command: Sequence[_AwaitedSocket], pid: int
) -> None:
    """An async client made by ``sharing`` collected without ``close()``: what was opened through it on the
    shared ``replica`` ends, as at its close, and its socket and context close (``_abandoned``). The ending
    is left to the replica's thread (``Replica.later``, within half a second): a collection runs at any
    allocation of any thread, maybe one holding the replica's lock."""
    if os.getpid() == pid:
        replica.later(lambda: replica.end_owner(owner))
        _shut_down(None, ctx, command)


def _shielded_under_anyio(seconds: float) -> contextlib.AbstractContextManager[Any]:
    """Where anyio is imported: a cancel scope shielded from outer cancellation for at most ``seconds``
    (anyio's own way to let cleanup await under a cancelled scope); else nothing."""
    anyio = sys.modules.get("anyio")
    if anyio is None:
        return contextlib.nullcontext()
    return anyio.CancelScope(shield=True, deadline=anyio.current_time() + seconds)  # type: ignore[no-any-return]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    return asyncio._get_running_loop()


def _on_its_thread(loop: asyncio.AbstractEventLoop, function: Callable[..., object], *args: Any) -> None:
    """``function(*args)`` now, or on ``loop``'s own thread when it runs in another one (a loop's
    selector and futures are changed only from its thread). ``RuntimeError`` if that loop is closed."""
    if loop.is_running() and _running_loop() is not loop:
        loop.call_soon_threadsafe(function, *args)
    else:
        function(*args)


def _look_again(waiter: asyncio.Future[Any] | None) -> None:
    """Wake a pending wait (woken, not expired: it looks at ``ZMQ_EVENTS`` again), on its loop's thread."""
    if waiter is None or waiter.done():
        return
    try:
        _on_its_thread(waiter.get_loop(), _resolve, waiter)
    except RuntimeError:  # its loop is closed: nobody will look
        pass
