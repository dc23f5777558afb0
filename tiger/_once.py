"""``Client.once``: one builder across every process, the value stored at the writer, teardowns run by the builder.

A key's record (table ``tiger.once``, in the key's namespace) is decided at the writer (the
``prepare_once_*`` rules in ``_table``): a client claims the key and builds, or waits on its
replica until the record moves (built, failed, released, claimed anew). ``Once`` is one
client's side of it: the locks that keep two callers of the process from building one key,
the values built whose delivery failed, and the teardowns of generator factories it still
has to run. It holds no reference to its client (the client owns it): each call is handed the
client whose writes and replica it uses.

Theory of operation (sans-IO, h11's shape): the logic of a call is written once, as a generator
(``Once._value``, ``Once._tear_down``) that does no I/O and never blocks. It yields an *effect*, a
frozen description of what it needs done, and is resumed with the effect's result, or has the
effect's exception thrown in at that ``yield``:

    Write(request, deadline, waited)    -> the writer's ``p.Ok``, its change in the replica (not waited: None)
    Until(predicate, deadline, what)    -> None once ``predicate()`` holds; Timeout, Unavailable thrown in
    Build(factory, namespace)           -> (value, teardown or None); what the factory raised thrown in
    TearDown(key, teardown, namespace, deadline)  -> what the teardown raised, or None (never thrown in)
    Sync(timeout)                       -> None once the replica holds every write answered before

Two drivers run these generators and differ only in how they perform an effect: ``value`` and
``tear_down`` block (the blocking ``Client``); ``value_async`` and ``tear_down_async`` await
(``tiger.aio``, through the ``AsyncOnceClient`` protocol: no thread per call).

Rule 1: every decision lives in the generators; a driver performs effects and decides nothing.
Rule 2: every exception a driver meets performing an effect goes into the generator at its
``yield``: the generator decides whether it releases the key, fails it for every caller, or passes.
Rule 3: reading the replica (``once_record``) is local and never blocks: the generators do it.
Rule 4: a build stopped from outside (``INTERRUPTIONS``; for the async driver also
``asyncio.CancelledError``) releases the key, best effort, and is raised again: another caller builds.
Rule 5: one caller per (scope, key) of a ``Once`` at a time, whatever its driver. The writer hands a
key back to the client that is building it, and clients sharing a connection (``AsyncClient.sharing``:
one per thread, each on an event loop of its own, or a blocking client beside its async one) share one
client id and one ``Once``: only its locks keep their callers from both building a key. A caller takes
its driver's lock of the key first (``OwnedLock`` among blocking threads, ``OwnedAsyncLock`` among the
tasks of one event loop: callers come in order, and a re-entered key is found there), then the key's
``DriversLock``, one for every driver and thread: a blocking caller waits for it blocking its thread,
an async one awaits it without blocking its loop (woken from any thread), each until its own deadline.
Its holder builds; the next finds the value stored.
Rule 6: a coroutine being closed (``GeneratorExit`` at an ``await``) may await nothing more: the
async driver then finishes the generator performing nothing (each effect fails with a TigerError,
so a release gives up) and the close goes on.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import math
import os
import sys
import threading
import traceback
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar

from tiger import _protocol as p
from tiger._calls import callable_name
from tiger._clock import monotonic, moved, paused_since, unpaused
from tiger._errors import OnceFailed, TigerError, Timeout, Unavailable, mark_stopped, stopped_from_outside
from tiger._feed import off_loop, running_loop
from tiger._owned import DriversLock, OwnedAsyncLock, OwnedLock
from tiger._server import recently_refused
from tiger._table import ONCE_TABLE, Record, check_value, freeze, well_formed_once

if TYPE_CHECKING:
    import asyncio
    import types

    from tiger._replica import Replica

log = logging.getLogger("tiger.client")

MAX_ONCE_VALUE = p.MAX_RECORD - 4096  # the value travels in a record with the key's bookkeeping
# seconds a caller waits for a release on the way out of a call that raised (cancelled, Ctrl-C, a timeout):
# a paused writer held a cancellation for the client's whole timeout. Past it, the async client's release
# goes on in a task; the blocking client's is given up, and the key stays claimed by this client until it
# closes (its goodbye releases it) or falls silent, or until its next call of the key.
RELEASE_WAIT = 0.5
INTERRUPTIONS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)  # a build stopped from outside
_SUPERSEDED = object()
_REENTERED = (
    "once {key!r} was called again from inside its own factory: it would wait for itself; build what it needs under another key"
)
_T = TypeVar("_T")

FactoryGenerator: TypeAlias = "Generator[Any, None, None] | AsyncGenerator[Any, None]"  # its teardown is the rest after its yield


# -- effects: what the logic asks its driver to do ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Send ``request`` to the writer, within ``deadline`` (``time.monotonic()`` seconds; None: the
    client's timeout). Result: its ``p.Ok`` answer, the change already in the replica (read-your-writes).
    Thrown in: what the write raised (``Unavailable``, ``Timeout``, ``ValueError``, ...).

    ``waited=False`` (a release on the way out of a call that raised): the caller waits for the answer
    at most ``RELEASE_WAIT`` seconds, not the client's timeout (a paused writer held a cancellation or a
    Ctrl-C that long: a user trial). The async driver sends it in a task of the client's, which goes on
    after that; the blocking driver, with no other thread, gives it up then. Result: None."""

    request: p.Request
    deadline: float | None = None
    waited: bool = True


@dataclass(frozen=True, slots=True)
class Until:
    """Wait on the replica until ``predicate()`` holds. Result: None. Thrown in: ``Timeout(what())``
    past ``deadline`` (``time.monotonic()`` seconds, may be ``math.inf``), ``Unavailable`` if the
    replica stopped."""

    predicate: Callable[[], bool]
    deadline: float
    what: Callable[[], str]


@dataclass(frozen=True, slots=True)
class Build:
    """Run ``factory()`` in ``namespace`` (None: the caller's). Result: (value, teardown or None), the
    teardown being a generator factory's generator, after its first (value's) yield. Thrown in: what
    the factory raised; ``ValueError`` for a generator that yielded nothing."""

    factory: Callable[[], Any]
    namespace: str | None


@dataclass(frozen=True, slots=True)
class TearDown:
    """Run the rest of a generator factory after its yield, in ``namespace`` (None: the caller's).
    Result: what it raised (a ``RuntimeError`` if it yielded again), None if it finished. Never thrown.

    Past ``deadline`` (``time.monotonic()`` seconds) the blocking driver stops it, in the main thread:
    ``PastDeadline`` is raised in it by SIGALRM, as pytest-timeout's signal method stops a test (the
    run's ``tiger_teardown_timeout``); it is then the result. The async driver does not stop one."""

    key: str
    teardown: FactoryGenerator
    namespace: str | None
    deadline: float = math.inf


class PastDeadline(BaseException):
    """Raised in a teardown still running at its deadline (``TearDown``); a BaseException, as
    KeyboardInterrupt is, so that the teardown's own ``except Exception`` does not take it."""


@dataclass(frozen=True, slots=True)
class Probe:
    """Whether nothing accepts connections at the writer's ``url`` (``recently_refused``). Result: why
    (a str), or None. Never thrown. A probe may take 0.1 s (a host that drops connections, a paused
    writer's full backlog): the async driver makes it in a thread, off the event loop."""

    url: str


@dataclass(frozen=True, slots=True)
class Sync:
    """Bring the replica up to every write the writer answered before now, within ``timeout`` seconds.
    Result: None. Thrown in: ``Timeout``, ``Unavailable``."""

    timeout: float


Effect: TypeAlias = "Write | Until | Build | TearDown | Probe | Sync"
Steps: TypeAlias = "Generator[Effect, Any, _T]"  # the logic of one call: effects out, their results in


# -- what the drivers need of their client --------------------------------------------------------


class OnceClient(Protocol):
    """What the once logic reads of its client, whichever driver runs it."""

    @property
    def client_id(self) -> str: ...
    @property
    def label(self) -> str: ...  # names this process in a failure: "gw0 1234"
    @property
    def _req_ids(self) -> Iterator[int]: ...
    @property
    def replica(self) -> Replica: ...
    @property
    def heartbeat_timeout(self) -> float: ...  # seconds: a writer silent this long is taken for gone
    @property
    def url(self) -> str: ...  # the writer's
    @property
    def timeout(self) -> float: ...  # seconds: a call's default deadline
    @property
    def _closed(self) -> bool: ...  # close() was called
    def _heard_again(
        self, unavailable: Unavailable, deadline: float, refused: str | None
    ) -> tuple[Callable[[], bool], float, Callable[[], str]]: ...  # the wait before a call is made again


class BlockingOnceClient(OnceClient, Protocol):
    """The blocking driver's client (``tiger.Client``); it waits with ``replica.wait_until``."""

    def _write(self, request: p.Request, deadline: float | None = None) -> p.Ok: ...
    def sync(self, timeout: float) -> None: ...


class AsyncOnceClient(OnceClient, Protocol):
    """The async driver's client (``tiger.aio``'s): the same, awaited, never blocking the event loop.

    ``_write(request, deadline)``: the writer's ``p.Ok``, its change in the replica (read-your-writes);
    raises what ``Client._write`` raises. ``_write_later(request)``: the same in a task of the client's,
    returned, whose outcome is only logged if nobody awaits it. ``_until(predicate, deadline, what)``:
    returns once ``predicate()`` holds for the replica; raises ``Timeout(what())`` past ``deadline``
    (``time.monotonic()`` seconds, may be ``math.inf``), ``Unavailable`` if the replica stopped.
    ``sync(timeout)``: ``Client.sync``.
    """

    async def _write(self, request: p.Request, deadline: float | None = None) -> p.Ok: ...
    def _write_later(self, request: p.Request) -> asyncio.Future[Any]: ...
    async def _until(self, predicate: Callable[[], bool], deadline: float, what: Callable[[], str]) -> None: ...
    async def sync(self, timeout: float) -> None: ...


# -- one client's once keys -----------------------------------------------------------------------


_L = TypeVar("_L", OwnedLock, OwnedAsyncLock, DriversLock)


class _KeyLocks(Generic[_L]):
    """A lock per key, kept while callers use it (counted) and dropped when the last is done with it.

    A plain dict, not a ``WeakValueDictionary``: that one's removal callback is Python code the
    interpreter runs as the last reference goes, and a signal's exception landing in it was lost
    ("Exception ignored in: ... WeakValueDictionary...remove", a user trial's watchdog). ``use`` and
    ``done`` pair in the caller's ``try``/``finally``; a signal between them leaves a count too high,
    which keeps one idle lock for good: never a second lock for a key in use."""

    __slots__ = ("_guard", "_locks", "_make", "_users")

    def __init__(self, guard: threading.RLock, make: Callable[[], _L]) -> None:
        self._guard = guard
        self._make: Callable[[], _L] = make
        self._locks: dict[tuple[str, str], _L] = {}
        self._users: dict[tuple[str, str], int] = {}

    def use(self, key: tuple[str, str]) -> _L:
        """The key's lock, counted as used until ``done(key)``. The guard is re-entrant: the garbage
        collector may run a collected async once's ``done`` at any allocation in here (a coroutine whose
        event loop was closed under it), so the count goes up first, and a ``done`` run meanwhile cannot
        drop the lock returned."""
        with self._guard:
            self._users[key] = self._users.get(key, 0) + 1
            lock = self._locks.get(key)
            if lock is None:
                made = self._make()
                lock = self._locks.setdefault(key, made)
            return lock

    def done(self, key: tuple[str, str]) -> None:
        with self._guard:
            users = self._users.get(key, 0) - 1
            if users > 0:
                self._users[key] = users
            else:
                self._users.pop(key, None)
                self._locks.pop(key, None)

    def get(self, key: tuple[str, str]) -> _L | None:
        return self._locks.get(key)

    def __len__(self) -> int:
        return len(self._locks)


class Once:
    """One client's once keys: builds in progress, values whose delivery failed, teardowns to run."""

    def __init__(self) -> None:
        # a key's lock lives while callers of this client use it (``_KeyLocks``; one per key ever asked for,
        # kept for good, grew with every namespace's keys of a long run)
        self._locks_guard = threading.RLock()  # (re-entered: see ``_KeyLocks.use``)
        self._locks: _KeyLocks[OwnedLock] = _KeyLocks(self._locks_guard, OwnedLock)
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _KeyLocks[OwnedAsyncLock]] = (
            weakref.WeakKeyDictionary()
        )
        # a key's lock among the callers of every driver, taken after the driver's own (rule 5): clients sharing
        # this ``Once`` in two threads both built a key, the writer handing it back to their one client id
        self._drivers: _KeyLocks[DriversLock] = _KeyLocks(self._locks_guard, DriversLock)
        self._built: dict[tuple[str, str], Any] = {}  # values built whose delivery to the writer failed
        # (namespace, key) -> its generator factory, still to finish, and whether it ran in that namespace
        self._teardowns: dict[tuple[str, str], tuple[FactoryGenerator, bool]] = {}
        # when each value came to this client, in one order (``_got``): the values with a teardown it built
        # (its builds' ``Build`` answered) and those another client built that it holds ((owner, claim) names
        # which build: a key retired and built anew is another value). A closing client lets go of what it
        # got after a value it built before it waits for that value's holders (``_tear_down``'s ``leaving``)
        self._got = itertools.count()
        self._built_at: dict[tuple[str, str], int] = {}
        # the values of those teardowns (delivered again if the writer retired one, taking this client for gone)
        self._own_values: dict[tuple[str, str], Any] = {}
        self._held: dict[tuple[str, str], tuple[int, str, Any]] = {}

    def value(
        self, client: BlockingOnceClient, key: str, scope: str, factory: Callable[[], Any], wait: float | None, in_scope: bool
    ) -> Any:
        """``Client.once`` with its arguments checked: ``scope`` the key's namespace, ``wait`` the seconds
        to wait for another builder (None: no limit), ``in_scope`` whether the factory runs in ``scope``.

        Returns the key's value; raises ``OnceFailed`` (the key failed, here or elsewhere), ``Timeout``
        (past ``wait``), what a write raised, an interruption of the build (the key released), and
        ``TypeError`` for a factory this blocking call cannot await (see ``value_async``)."""
        __tracebackhide__ = True
        try:
            if inspect.iscoroutinefunction(factory):
                raise _async_factory(factory, "a coroutine function")
            if inspect.isasyncgenfunction(factory):
                raise _async_factory(factory, "an async generator function")
            began = monotonic()  # (each step's deadline moved by every pause since: ``unpaused``)
            deadline = _deadline(wait, began)
            mine = (threading.get_ident(), None)
            if self._held_by_thread((scope, key), mine[0]):  # this thread builds it (or its loop's task does)
                raise TigerError(_REENTERED.format(key=key))
            # two threads of this process never both build one key; the wait for the other is the caller's
            # too. (A timed ``threading.Lock`` acquired, then ``try``, was left held by a signal landing in
            # between: every later ``once`` of the key in this process then timed out.)
            lock = self._locks.use((scope, key))
            across = self._drivers.use((scope, key))  # (and with the callers of every other driver: rule 5)
            try:
                if not lock.take(mine, deadline) or not across.take(mine, unpaused(deadline, began)):
                    raise Timeout(f"once {key!r} was not built by another caller within {wait:g}s")
                return _drive(client, self._value(client, key, scope, factory, wait, (deadline, began), in_scope, INTERRUPTIONS))
            finally:
                try:  # (each twice: see ``tiger._owned``)
                    across.let_go(mine)
                finally:
                    try:
                        across.let_go(mine)
                    finally:
                        try:
                            lock.let_go(mine)
                        finally:
                            lock.let_go(mine)
                            self._drivers.done((scope, key))
                            self._locks.done((scope, key))
        except _AsyncFactory as e:
            raise TypeError(f"once {key!r}: {e}") from None  # (a plain TypeError: the class is private)

    async def value_async(
        self, client: AsyncOnceClient, key: str, scope: str, factory: Callable[[], Any], wait: float | None, in_scope: bool
    ) -> Any:
        """``value`` for ``tiger.aio``: ``await once.value_async(client, key, scope, factory, wait, in_scope)``.

        The same arguments (checked by the caller, as ``Client.once`` checks them), outcomes and errors;
        ``factory`` may also be a coroutine function (its result awaited) or an async generator function
        (its first yielded value is the value; the rest is its teardown, awaited by
        ``tear_down_async``). Cancelling the call raises ``CancelledError``; a build it cancels releases
        the key for another caller. Waits never block the event loop (``client._until``)."""
        __tracebackhide__ = True
        import asyncio  # here: the blocking client never imports asyncio

        began = monotonic()  # (as ``value``)
        deadline = _deadline(wait, began)
        interruptions = (*INTERRUPTIONS, asyncio.CancelledError)
        locks = self._async_key_locks()  # (first: it names asyncio when no loop runs)
        mine = (threading.get_ident(), id(asyncio.current_task()))
        held = locks.get((scope, key))
        if held is not None and held.holder is not None and held.holder[1] == mine[1]:  # type: ignore[index]
            raise TigerError(_REENTERED.format(key=key))  # (this task builds it)
        builder = self._drivers.get((scope, key))
        holder = None if builder is None else builder.live_holder()
        # (held by this task, or by a blocking caller of this thread, whose factory runs this loop)
        if holder is not None and holder[0] == mine[0] and holder[1] in (None, mine[1]):  # type: ignore[index]
            raise TigerError(_REENTERED.format(key=key))
        lock = locks.use((scope, key))
        across = self._drivers.use((scope, key))
        # two tasks of this loop never both build one key, nor a task and a caller of another thread or loop
        # sharing these keys (rule 5); the wait for the other is the caller's too, never blocking the loop
        try:
            if not await lock.take(mine, deadline) or not await across.take_async(mine, unpaused(deadline, began)):
                raise Timeout(f"once {key!r} was not built by another caller within {wait:g}s")
            steps = self._value(client, key, scope, factory, wait, (deadline, began), in_scope, interruptions)
            return await _drive_async(client, steps)
        finally:
            try:  # (each twice: see ``tiger._owned``)
                across.let_go(mine)
            finally:
                try:
                    across.let_go(mine)
                finally:
                    try:
                        lock.let_go(mine)
                    finally:
                        lock.let_go(mine)
                        self._drivers.done((scope, key))
                        locks.done((scope, key))

    def _held_by_thread(self, key: tuple[str, str], thread: int) -> bool:
        """Whether a caller of thread ``thread`` holds ``key``: blocking, or a task of a loop of that thread.
        (Held by the key's locks, not a table of holders beside them: a signal landing as the ``finally``
        began let one go and left its entry, and every later ``once`` of the key in that thread was
        refused as re-entered. A lock is dropped when its last caller is done with it.)"""
        with self._locks_guard:  # (another thread's first async once adds a loop meanwhile)
            # (a loop closed under a call never runs it again: its task holds nothing)
            loops = [locks for loop, locks in list(self._async_locks.items()) if not loop.is_closed()]
            held = [self._locks.get(key)] + [locks.get(key) for locks in loops]
            builder = self._drivers.get(key)
        holders = [lock.holder for lock in held if lock is not None] + [None if builder is None else builder.live_holder()]
        return any(holder is not None and holder[0] == thread for holder in holders)  # type: ignore[index]

    def tear_down(
        self, client: BlockingOnceClient, wait: float, until: float = math.inf, leaving: bool = False
    ) -> list[tuple[str, BaseException]]:
        """``Client.tear_down_once_values``: run the teardowns, newest first, and retire their keys.

        ``wait`` (seconds, for all keys together): first wait for the other holders of each value.
        ``leaving`` (``close()``): this client lets go of the values it got from other builders as it
        goes, so that clients closing together do not wait for each other (``_tear_down``). Returns
        the (key, error) of each teardown that raised; raises ``Unavailable`` if the replica stopped.
        ``until`` (``time.monotonic()`` seconds; the pytest plugin's ``tiger_teardown_timeout``): a
        teardown running then is stopped (its error ``PastDeadline``, main thread only), and those not
        begun by then are left (``not_torn_down``). A teardown interrupted by Ctrl-C (its error
        ``KeyboardInterrupt``) ends the tear-down too: the others are left, as for a cancelled async
        close (Ctrl-C stopped one teardown, and the next ran in full: a user trial); a Ctrl-C between
        teardowns is raised, the rest left."""
        return _drive(client, self._tear_down(client, wait, until, stop_on=(KeyboardInterrupt,), leaving=leaving))

    def let_go_of_newer(self, client: BlockingOnceClient, wait: float) -> None:
        """Let go of the values of other builders this client got after the newest value it built with a
        teardown (all it got, when it built none): what none of its own teardowns may use (``_tear_down``'s
        order). Waits at most ``wait`` seconds for each writer's answer (``_let_go``), for no holder. A process
        exiting with several clients open makes each do this first, then closes them in turn: no close waits
        for a client that is still to close (``tiger._client._close_open_clients``)."""
        with contextlib.suppress(TigerError):
            _drive(client, self._let_go(client, max(self._built_at.values(), default=-1), monotonic() + wait))

    async def let_go_of_newer_async(self, client: AsyncOnceClient, wait: float) -> None:
        """``let_go_of_newer`` for ``tiger.aio``, awaited."""
        with contextlib.suppress(TigerError):
            await _drive_async(client, self._let_go(client, max(self._built_at.values(), default=-1), monotonic() + wait))

    def holders(self, client: OnceClient) -> set[str]:
        """The other clients holding a value this client built with a teardown (the replica's view)."""
        return {holder for scope, key in self._teardowns for holder in _held(once_record(client, scope, key))}

    @property
    def owed(self) -> Mapping[tuple[str, str], int]:
        """The (scope, key) of the teardowns still to run, live: names only, so that a client's finalizer may
        hold it without holding the client (a teardown generator's frame may hold it: never collected)."""
        return self._built_at

    def not_torn_down(self) -> list[tuple[str, str]]:
        """The (scope, key) of the teardowns not run yet, newest first."""
        return list(reversed(self._teardowns))

    def forget_teardowns(self) -> None:
        """Drop the teardowns not run yet (a run's end gave up on them): ``close()`` will not run them,
        nor will Python when it finalizes their generators: dropped, a generator was closed at once by
        the garbage collector (its ``finally`` and ``with`` exits running then, unbounded, past the run's
        ``tiger_teardown_timeout``; an async one warning that it was never finished): they are kept for
        the rest of the process instead, never finalized (CPython)."""
        for teardown, _ in self._teardowns.values():
            _never_finalized(teardown)
        self._teardowns.clear()
        self._built_at.clear()
        self._own_values.clear()

    async def tear_down_async(
        self, client: AsyncOnceClient, wait: float, leaving: bool = False
    ) -> list[tuple[str, BaseException]]:
        """``tear_down`` for ``tiger.aio``: ``await once.tear_down_async(client, wait, leaving)``; async generator
        teardowns are awaited. A teardown that is cancelled counts as one that raised ``CancelledError``
        and ends the tear-down: the teardowns not run yet are left (``not_torn_down``), their keys kept,
        and the caller raises it again after (a cancelled ``close()`` ran every other teardown and retired
        every key, logging nothing: a user trial)."""
        import asyncio

        return await _drive_async(client, self._tear_down(client, wait, stop_on=(asyncio.CancelledError,), leaving=leaving))

    def has_teardown(self, key: str, scope: str) -> bool:
        """Whether this client built ``key`` of ``scope`` with a generator factory whose teardown has not run yet."""
        return (scope, key) in self._teardowns

    def _async_key_locks(self) -> _KeyLocks[OwnedAsyncLock]:
        """The keys' locks of the running event loop (its tasks' locks: each loop has its own)."""
        loop = running_loop()
        with self._locks_guard:
            locks = self._async_locks.get(loop)
            if locks is None:
                locks = self._async_locks[loop] = _KeyLocks(self._locks_guard, OwnedAsyncLock)
            return locks

    # -- the logic, once for both drivers ----------------------------------------------------------

    def _value(
        self,
        client: OnceClient,
        key: str,
        scope: str,
        factory: Callable[[], Any],
        wait: float | None,
        call: tuple[float, float],
        in_scope: bool,
        interruptions: tuple[type[BaseException], ...],
    ) -> Steps[Any]:
        """The steps of ``once``: claim the key, build it or wait for its builder. ``call``: the call's deadline
        (``time.monotonic()``; ``math.inf``: none) and when it began, since when every pause found moves the
        deadline (a waiter for another builder stopped midway raised as it resumed: each step counted only the
        pauses it found itself)."""
        __tracebackhide__ = True
        claims: list[int] = []  # the request id of each claim sent: a release names the first and the last

        def claim_request() -> p.OnceClaim:
            claims.append(next(client._req_ids))
            return p.OnceClaim(claims[-1], key, client.client_id, client.label, scope)

        while True:
            try:
                claim: p.Ok = yield from _written(client, claim_request, *call)
            except BaseException:  # (interrupted, or unanswered: Timeout, Unavailable) the claim may have been
                if claims:  # applied: give it up if ours (none made: a signal before the first; an IndexError
                    yield from _release(client, key, scope, (claims[0], claims[-1]))  # hid it, a signal storm test)
                raise
            if claim.result == "build":
                span = (claims[0], claims[-1])  # (a release names the call's claims: any may be the one applied)
                built = yield from self._build(client, key, scope, factory, in_scope, interruptions, unpaused(*call), span)
                if built is not _SUPERSEDED:
                    return built
                continue
            record = once_record(client, scope, key)
            if record is not None and record["state"] != "building":
                self._holding(client, scope, key, record)
                return _once_value(record)
            owner = None if record is None else record["owner"]
            yield from _wait_for_builder(client, key, scope, owner, call, wait)

    def _holding(self, client: OnceClient, scope: str, key: str, record: Record) -> None:
        """Note that this client got ``key``'s value, built by another client with a teardown (the writer
        counts it among the value's holders): when, in the order of ``_got``. A value got again keeps
        its first time, unless it is another build of the key."""
        if record["owner"] == client.client_id or not record.get("teardown"):
            return
        build = (record["owner"], record.get("claim"))
        held = self._held.get((scope, key))
        if held is None or held[1:] != build:
            self._held[scope, key] = (next(self._got), *build)

    def _let_go(self, client: OnceClient, after: int, deadline: float) -> Steps[None]:
        """Tell the writer this client no longer holds the values of other builders it got after ``after``
        (``_got``), newest first: their builders' teardowns wait for it no longer. Each is waited for by
        ``deadline`` (at least ``RELEASE_WAIT`` seconds, at most the heartbeat timeout); unanswered (a
        writer paused, gone, or an older writer that knows no "leave"), it is given up: the goodbye lets
        go of it too. A value the replica says it holds no more (retired, let go of) asks nothing of the
        writer. What the driver raises at the ``yield`` (a cancellation) goes through."""
        newer = sorted(((at, held) for held, (at, *_) in list(self._held.items()) if at > after), reverse=True)
        for _, (scope, key) in newer:
            self._held.pop((scope, key), None)
            record = once_record(client, scope, key)
            if record is None or client.client_id not in record["holders"]:
                continue
            leave = p.OnceFinish(next(client._req_ids), key, client.client_id, "leave", None, scope)
            with contextlib.suppress(TigerError):
                if _heard(client):
                    now = monotonic()
                    yield Write(leave, min(now + client.heartbeat_timeout, max(deadline, now + RELEASE_WAIT)))
                else:
                    yield Write(leave, waited=False)

    def _build(
        self,
        client: OnceClient,
        key: str,
        scope: str,
        factory: Callable[[], Any],
        in_scope: bool,
        interruptions: tuple[type[BaseException], ...],
        deadline: float,
        claim: tuple[int, int],
    ) -> Steps[Any]:
        __tracebackhide__ = True
        if (scope, key) in self._built:  # built before, but the writer did not get the value: send it, build nothing
            value = self._built[scope, key]
        elif (scope, key) in self._own_values:  # built, its teardown still to run, and the writer retired it: it took
            value = self._built[scope, key] = self._own_values[scope, key]  # this client for gone (stopped over 3 s)
            log.warning(  # and nobody built it since. Built again, the first was never torn down (a user trial)
                "once %r: the writer retired this client's value, taking it for gone (silent for over 3 s: stopped?); "
                "given again: processes that got it before may have torn it down meanwhile or hold it still",
                key,
            )
        else:
            given_up: tuple[type[BaseException], ...] = (*interruptions, _AsyncFactory)
            try:
                value, teardown = yield Build(factory, scope if in_scope else None)
                if teardown is not None:
                    self._teardowns[scope, key] = (teardown, in_scope)
                    self._built_at[scope, key] = next(self._got)
                    self._held.pop((scope, key), None)
                check_value(value, "value")
                try:
                    packed = len(p.pack(value))  # the writer's limit, checked before it is sent: a refusal is an outcome too
                except UnicodeEncodeError:
                    raise ValueError(p.unencodable_value(value, "value")) from None
                if packed > MAX_ONCE_VALUE:
                    raise ValueError(f"value is {packed} bytes packed; a once value may be at most {MAX_ONCE_VALUE} bytes")
                self._built[scope, key] = value
                if teardown is not None:
                    self._own_values[scope, key] = value
            except BaseException as e:
                # Ctrl-C, SystemExit, a test runner's timeout, a factory this driver cannot run: another caller
                # builds. Anything else (an error, pytest.skip/fail, a value tiger cannot store) is every
                # caller's outcome, and what the factory set up before its value was refused is torn down.
                outside = stopped_from_outside(e)
                if outside or isinstance(e, given_up):
                    if outside:  # the run goes on: what the factory set up is not the key's (a later build
                        yield from self._tear_down_now(scope, key)  # here would replace it)
                    yield from _release(client, key, scope, claim)
                    raise
                yield from self._tear_down_now(scope, key)
                error = [_sendable(type(e).__name__), _sendable(str(e)), _sendable(client.label), _sendable(_factory_frames(e))]
                yield from self._finish_or_release(client, key, scope, "error", error, deadline, claim)
                raise OnceFailed(key, *error) from e
        outcome = "resource" if (scope, key) in self._teardowns else "value"
        # the caller's timeout is for waiting on another builder: a build that took longer still gets the
        # client's timeout to deliver its value through a writer unavailable meanwhile
        delivery = max(deadline, monotonic() + client.timeout)
        try:
            finish = yield from self._finish_or_release(client, key, scope, outcome, value, delivery, claim)
        except BaseException:
            if client._closed:  # closed during the build, its teardowns run without this one: the value is nobody's,
                yield from self._tear_down_now(scope, key)  # and no later call sends it (it was never torn down: a
            raise  # user trial, an async generator factory's server left running)
        del self._built[scope, key]
        record = once_record(client, scope, key)
        ours = record is not None and record["state"] != "building" and record["owner"] == client.client_id
        if finish.result != "stored" and not ours:  # the writer gave the key to another caller meanwhile (we
            yield from self._tear_down_now(scope, key)  # were silent too long): our value is not the key's,
            return _SUPERSEDED  # nobody else will use it. (Ours: an earlier delivery of it was applied, unanswered.)
        if record is None or not ours:  # stored, then retired before the replica looked (this client, stopped,
            return freeze({"value": value})["value"]  # taken for gone past its grace), maybe claimed again since:
            # still ours to give and tear down (a bare AssertionError here, a trial: a worker stopped 5 s in a build)
        return _once_value(record)

    def _tear_down(
        self,
        client: OnceClient,
        wait: float,
        until: float = math.inf,
        stop_on: tuple[type[BaseException], ...] = (),
        leaving: bool = False,
    ) -> Steps[list[tuple[str, BaseException]]]:
        """The teardowns, newest first, each after waiting for its value's holders (``wait`` seconds for all).

        ``leaving`` (a client closing): before the wait for a value's holders, this client lets go of the
        values of other builders it got after it built that one (``_let_go``): two clients closing
        together, each holding a value the other built, each waited its whole timeout for the other,
        which let go only with its goodbye, after its own wait. In the order the values came (a stack, as
        pytest unwinds fixtures), no two closing clients wait for each other: each waits only for values
        newer than the one it tears down. What it got before one it built (what that one's factory used)
        it still holds while that one is torn down, until its goodbye."""
        errors: list[tuple[str, BaseException]] = []
        began = monotonic()
        deadline = began + wait
        retires: list[tuple[str, p.OnceFinish]] = []  # at a run's end (``until``): sent after the teardowns
        if wait > 0 and self._teardowns:
            with contextlib.suppress(TigerError):
                yield Sync(wait)  # every holder the writer knows of is in this replica
        # ``until`` moves by the time this process was not running (Ctrl-Z on the run then fg: the teardowns
        # left were skipped as not run)
        while self._teardowns and monotonic() < unpaused(until, began):
            # the newest first; taken off only when it runs: a wait interrupted before (a cancelled close)
            # leaves it to run at the next tear-down
            (scope, key), (teardown, in_scope) = next(reversed(self._teardowns.items()))
            if leaving:
                try:
                    yield from self._let_go(client, self._built_at.get((scope, key), -1), unpaused(deadline, began))
                except stop_on as stopped:  # (a cancelled close, a Ctrl-C): as in a teardown, nothing more
                    errors.append((key, stopped))
                    break
            if wait > 0 and client.replica.silent_for() <= client.heartbeat_timeout:
                with contextlib.suppress(Timeout):
                    yield Until(  # (a stop during a teardown before, or the sync: not counted)
                        lambda scope=scope, key=key: not _held(once_record(client, scope, key)),  # type: ignore[misc]
                        unpaused(deadline, began),
                        lambda: "",
                    )
                holders = _held(once_record(client, scope, key))
                if holders:  # past the wait, or told to hurry
                    log.warning("once %r: tearing down while %d other clients still hold it (%s)", key, len(holders), holders)
            del self._teardowns[scope, key]
            self._built_at.pop((scope, key), None)
            self._own_values.pop((scope, key), None)
            self._built.pop((scope, key), None)  # torn down: never to be delivered later
            try:
                error = yield TearDown(key, teardown, scope if in_scope else None, unpaused(until, began))
            except stop_on as stopped:  # (raised by the driver around it): its outcome, the errors so far kept
                error = stopped
            if error is not None:  # reported, and the other teardowns still run
                errors.append((key, error))
                if isinstance(error, stop_on):  # (cancelled) nothing more: no retire, no other teardown
                    break
            retire = p.OnceFinish(next(client._req_ids), key, client.client_id, "retire", None, scope)
            if not math.isinf(until):  # a run's end: after every teardown, so that a paused writer holds none up
                retires.append((key, retire))  # (it held the run's end the client's timeout per key, past xdist's
                continue  # own wait for its workers, which then killed the builder before its next teardown)
            try:
                with contextlib.suppress(TigerError):
                    yield Write(retire)
            except stop_on as stopped:  # (a Ctrl-C, a cancellation, while it waits): as in a teardown, nothing
                # more; raised from here, the errors of the teardowns run so far were lost with it (a review)
                errors.append((key, stopped))  # (after the teardown's own error, if it raised)
                with contextlib.suppress(TigerError):
                    yield Write(retire, waited=False)  # (best effort: its value is torn down)
                break
        hurried = False  # a retire failed, or the writer is silent: the others are best effort
        for key, retire in retires:
            try:
                with contextlib.suppress(TigerError):
                    if hurried or not _heard(client):
                        yield Write(retire, waited=False)
                    else:  # by ``until`` (at least RELEASE_WAIT), at most the heartbeat timeout: a writer
                        now = monotonic()  # silent that long is taken for gone, as for any write
                        hurried = True  # (unless it is answered)
                        yield Write(retire, min(now + client.heartbeat_timeout, max(until, now + RELEASE_WAIT)))
                        hurried = False
            except stop_on as stopped:  # as above: nothing more, the errors kept
                errors.append((key, stopped))
                break
        return errors

    def _tear_down_now(self, scope: str, key: str) -> Steps[None]:
        self._built.pop((scope, key), None)  # torn down: never to be delivered later
        entry = self._teardowns.pop((scope, key), None)
        self._built_at.pop((scope, key), None)
        self._own_values.pop((scope, key), None)
        if entry is not None:
            error = yield TearDown(key, entry[0], scope if entry[1] else None)
            if error is not None:
                log.warning("once %r: the teardown of a value that was not kept raised %r", key, error)

    def _finish_or_release(
        self, client: OnceClient, key: str, scope: str, outcome: str, payload: Any, deadline: float, claim: tuple[int, int]
    ) -> Steps[p.Ok]:
        """Deliver a build's outcome, through a writer gone silent for a while (``_written``: until
        ``deadline``). If the writer refuses it (a value it will not store), that refusal is the key's
        outcome for every caller; if the delivery fails otherwise (the writer gone past the deadline, an
        interruption), give the key up (best effort) so that no caller waits on it, and raise."""
        try:
            finish: p.Ok = yield from _written(
                client, lambda: p.OnceFinish(next(client._req_ids), key, client.client_id, outcome, payload, scope), deadline
            )
            return finish
        except (ValueError, TypeError) as refusal:  # the writer's verdict on the value, not a lost delivery
            if outcome == "error":  # (the report is made sendable: refused, the key is given up, not left claimed)
                yield from _release(client, key, scope, claim)
                raise
            error = [_sendable(type(refusal).__name__), _sendable(str(refusal)), _sendable(client.label), ""]
            yield Write(p.OnceFinish(next(client._req_ids), key, client.client_id, "error", error, scope))
            raise OnceFailed(key, *error) from refusal
        except BaseException:
            yield from _release(client, key, scope, claim)
            raise


_MAX_REPORT = 64 * 1024  # characters of each string of a failed build's report


def _sendable(text: str) -> str:
    """A string of a failed build's report as the writer can take it: what UTF-8 cannot carry (a lone
    surrogate, as os.fsdecode makes of a non-UTF-8 file name) escaped, and at most 64 Ki characters."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_REPORT else text[:_MAX_REPORT] + f"... ({len(text)} characters)"


def _written(client: OnceClient, request: Callable[[], p.Request], deadline: float, since: float | None = None) -> Steps[p.Ok]:
    """``Write(request())``, made again while the writer is unavailable (paused, stalled, restarting) until
    ``deadline`` (with none, ``math.inf``: for the client's ``timeout`` from the first failure): a writer
    silent for 3 s as a build ended made its builder give up, release the key and raise, although its
    caller allowed 60 s, and the next caller built the value a second time. Between tries it waits until
    the writer is heard again (``Until``). A claim or a finish made again is safe: the writer hands a key
    back to the client building it, and says "superseded" to a second finish (the caller then finds its
    own value stored). A writer that is gone is not waited for: when nothing accepts connections at its
    url (a paused process's kernel still does), or past that time, the last ``Unavailable`` is raised.
    Each try ends by ``deadline``: a call with a 1 s timeout raised after the client's 3 s when the
    writer was paused (a user trial); but a try is given at least ``RELEASE_WAIT`` seconds (at most the
    client's timeout), the round trip a call makes even with ``timeout=0`` (which raised at once). ``since``:
    when the call began (``deadline`` is then unmoved): every pause since moves the deadline (``unpaused``)."""
    limit = None if math.isinf(deadline) else deadline
    began, counted = monotonic() if since is None else since, 0.0
    while True:
        if limit is not None:
            limit, counted = moved(limit, began, counted)  # (a pause of this process does not count)
        try:
            now = monotonic()
            tried = now + client.timeout
            floor = now + min(client.timeout, RELEASE_WAIT)
            reply: p.Ok = yield Write(request(), None if limit is None or limit >= tried else max(limit, floor))
            return reply
        except Unavailable as unavailable:
            if limit is None:  # no deadline of the caller's: the client's timeout, from the first failure (the
                limit, counted = monotonic() + client.timeout, paused_since(began)  # pauses before it: not its)
            limit, counted = moved(limit, began, counted)  # (the try may have been stopped: not past it then)
            refused = (yield Probe(client.url)) if monotonic() < limit else None  # (past it: raised)
            with contextlib.suppress(Timeout):  # (as ``Client.sync`` waits: past the limit, or gone, it raises)
                yield Until(*client._heard_again(unavailable, limit, refused))
            if monotonic() >= moved(limit, began, counted)[0]:
                raise


def _wait_for_builder(
    client: OnceClient, key: str, scope: str, owner: str | None, call: tuple[float, float], wait: float | None
) -> Steps[None]:
    """Until the key's record moves (built, failed, released, claimed anew) or ``deadline`` (``Timeout``).
    A writer that is gone (silent, and nothing accepts connections at its url) is not waited for: with no
    timeout, a waiter whose writer was killed during the build waited for good, and a pytest-xdist run
    with it (a user trial); it raises ``Unavailable`` within about a second of finding it so. ``call``: the
    call's deadline (``time.monotonic()``) and when it began: every pause since moves it (``unpaused``)."""
    while True:
        deadline = unpaused(*call)  # (each 1 s slice counts only the pauses it found, and not all of those)
        now = monotonic()
        try:
            yield Until(
                lambda: _once_moved(once_record(client, scope, key), owner),
                min(deadline, now + 1.0),
                lambda: f"once {key!r} was not built by another process within {wait or 0:g}s",  # (a slice: None)
            )
            return
        except Timeout:
            if monotonic() >= unpaused(*call):  # (the slice's wait found a pause: not past it)
                raise
        if not _heard(client):
            gone = yield Probe(client.url)
            if gone is not None:
                raise Unavailable(
                    f"once {key!r}: the tiger writer at {client.url} is gone ({gone}) while another process built the key"
                )


def _heard(client: OnceClient) -> bool:
    """The writer was heard within the client's heartbeat timeout: a call to it goes out again."""
    return client.replica.silent_for() <= client.heartbeat_timeout


def _release(client: OnceClient, key: str, scope: str, claim: tuple[int, int]) -> Steps[None]:
    """Give the key up, best effort, on the way out of a call that raised: not waited for (``Write``'s
    ``waited``), so that the caller's error or cancellation is not held up by a paused writer. If the
    writer is gone, it forgets the claim when this client says goodbye or falls silent. A client that
    does not hold the claim releases nothing, nor does one whose claim of the key is not one of the
    call's, ``claim`` (the request ids of its first and last claim: any of them may be the one the
    writer applied): an async client's release, gone on in a task, could reach the writer after the
    same client id claimed the key again (``AsyncClient.sharing``)."""
    with contextlib.suppress(TigerError):
        payload = list(claim)
        yield Write(p.OnceFinish(next(client._req_ids), key, client.client_id, "release", payload, scope), waited=False)


# -- the drivers ----------------------------------------------------------------------------------


class _Outcome:
    """What the effect a driver last performed gave, or raised: it goes into the logic next."""

    __slots__ = ("error", "outside", "reply")

    def __init__(self) -> None:
        self.reply: Any = None
        self.error: BaseException | None = None
        self.outside = False  # the error landed in the driver's own steps, not in the effect

    def resume(self, steps: Steps[Any]) -> Effect | None:
        """The next effect ``steps`` asks for, this outcome sent (or thrown) in; None once ``steps``
        returned (``reply`` then holds what it returned). What ``steps`` raises goes through. An error
        from ``outside`` is marked so (``mark_stopped``): no verdict on a factory it lands before."""
        __tracebackhide__ = True
        reply, error = self.reply, self.error
        self.reply = self.error = None
        if self.outside and error is not None:
            mark_stopped(error)
        self.outside = False
        try:
            return steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            self.reply = done.value
            return None
        finally:
            error = None  # a raised error leaves through this frame's traceback without it


def _drive(client: BlockingOnceClient, steps: Steps[_T]) -> _T:
    """Run ``steps`` to its end, performing each effect with the blocking client; returns what it returns.

    What interrupts the driver itself (a signal's exception landing as it takes a step, between two
    effects) goes into ``steps`` as the error of the effect at hand, as one raised by the effect would:
    raised past it, the logic was left suspended (a key claimed and being built stayed claimed by this
    live client, every other caller waiting for it, until it called the key again). The loop runs inside
    that ``try``: a signal lands at its jump back too. (Whether ``steps`` ended is read as an attribute,
    ``gi_frame``: a function called there is one more place for a signal to land.)"""
    __tracebackhide__ = True
    outcome = _Outcome()
    while True:
        try:
            while True:
                effect = outcome.resume(steps)
                if effect is None:
                    return outcome.reply  # type: ignore[no-any-return]
                try:
                    outcome.reply = _perform(client, effect)
                except BaseException as e:
                    outcome.error = e
        except BaseException as e:
            if steps.gi_frame is None:  # type: ignore[attr-defined]  # what ``steps`` itself raised: its outcome
                raise
            outcome.error, outcome.outside = e, True  # (plain stores: marked in ``resume``, inside the ``try``)


def _perform(client: BlockingOnceClient, effect: Effect) -> Any:
    __tracebackhide__ = True
    match effect:
        case Write(request, deadline, True):
            return client._write(request, deadline)
        case Write(request, _, False):  # no other thread to send it: a short wait, then on
            client._write(request, monotonic() + min(client.timeout, RELEASE_WAIT))
            return None
        case Until(predicate, deadline, what):
            client.replica.wait_until(predicate, deadline, what)
            return None
        case Build(factory, namespace):
            with _in_namespace(namespace):
                result = factory()
                if inspect.isawaitable(result) or inspect.isasyncgen(result):
                    if inspect.iscoroutine(result):
                        result.close()  # never awaited, and no warning saying so
                    raise _async_factory(factory, f"it returned a {type(result).__name__}")
                return _first_value(result)
        case TearDown(key, teardown, namespace, deadline):
            try:
                with _stopped_at(deadline, key) as alarm:
                    if isinstance(teardown, AsyncGenerator):  # built by an async client sharing these keys (tiger_aclient)
                        error = _finish_async_generator_here(key, teardown, namespace, alarm)
                    else:
                        error = _finish_generator(key, teardown, namespace)
            except PastDeadline as stopped:  # (between the teardown's end and the timer's)
                return stopped
            if alarm.fired and not isinstance(error, PastDeadline):  # it caught the stop and ran on to its end: a
                # teardown past the run's timeout all the same (the run ended 0 and said nothing: a review)
                return PastDeadline(_past(key) + " (it caught the stop)")
            return error
        case Probe(url):
            return recently_refused(url)
        case Sync(timeout):
            client.sync(timeout)
            return None
    raise TypeError(f"not a once effect: {effect!r}")


async def _drive_async(client: AsyncOnceClient, steps: Steps[_T]) -> _T:
    """Run ``steps`` to its end, awaiting each effect with the async client; returns what it returns."""
    __tracebackhide__ = True
    outcome = _Outcome()
    while True:
        try:  # (what lands in the driver's own steps goes into ``steps``, as in ``_drive``)
            while True:
                effect = outcome.resume(steps)
                if effect is None:
                    return outcome.reply  # type: ignore[no-any-return]
                try:
                    outcome.reply = await _perform_async(client, effect)
                except GeneratorExit:
                    raise
                except BaseException as e:
                    outcome.error = e
        except GeneratorExit as closing:  # this coroutine is being closed: it may await nothing more (rule 6)
            _abandon(steps, closing)
            raise
        except BaseException as e:
            if steps.gi_frame is None:  # type: ignore[attr-defined]  # what ``steps`` itself raised
                raise
            outcome.error, outcome.outside = e, True


async def _perform_async(client: AsyncOnceClient, effect: Effect) -> Any:
    __tracebackhide__ = True
    match effect:
        case Write(request, deadline, True):
            return await client._write(request, deadline)
        case Write(request, _, False):  # waited for a while, then left to its task
            import asyncio

            await asyncio.wait({client._write_later(request)}, timeout=min(client.timeout, RELEASE_WAIT))
            return None
        case Until(predicate, deadline, what):
            await client._until(predicate, deadline, what)
            return None
        case Build(factory, namespace):
            with _in_namespace(namespace):
                result = factory()
                if inspect.isasyncgen(result):
                    try:
                        return await _adopted_by_no_loop(result), result
                    except StopAsyncIteration:
                        raise ValueError(_NO_VALUE) from None
                if inspect.isawaitable(result):
                    return await result, None
                return _first_value(result)
        case TearDown(key, teardown, namespace, _):
            if isinstance(teardown, AsyncGenerator):
                return await _finish_async_generator(key, teardown, namespace)
            return _finish_generator(key, teardown, namespace)
        case Probe(url):
            return await off_loop(recently_refused, url)
        case Sync(timeout):
            await client.sync(timeout)
            return None
    raise TypeError(f"not a once effect: {effect!r}")


def _abandon(steps: Steps[Any], closing: BaseException) -> None:
    """End ``steps`` performing nothing: ``closing`` goes in, and every effect it asks for after that
    fails with a TigerError (a best-effort release gives up; the writer forgets the claim when this
    client says goodbye or falls silent)."""
    failure = closing
    while True:
        try:
            steps.throw(failure)
        except BaseException:
            return
        failure = TigerError("the once call was closed before it could do this")


# -- helpers --------------------------------------------------------------------------------------


class _AsyncFactory(TypeError):
    """A factory the blocking driver cannot await: the caller's mistake, not the key's outcome."""


def _async_factory(factory: Callable[[], Any], kind: str) -> _AsyncFactory:
    name = callable_name(factory)
    advice = "use tiger.aio (await client.once(key, factory)), or in pytest await tiger_once(key, factory)"
    if kind.startswith("it returned"):  # a plain function (a lambda) returning one: tiger_once cannot tell before
        # calling it, which only the builder may do (a user trial: the advice was what the user had done)
        advice = (
            "use tiger.aio (await client.once(key, factory)), or in pytest pass the coroutine or async generator "
            "function itself, not a function returning its result: await tiger_once(key, functools.partial(f, x))"
        )
    return _AsyncFactory(f"factory {name} is asynchronous ({kind}); the blocking Client.once cannot await it: {advice}")


def _deadline(wait: float | None, began: float) -> float:
    """The ``time.monotonic()`` at which a wait of ``wait`` seconds (None: no limit) begun at ``began`` ends."""
    return math.inf if wait is None else began + wait


def once_record(client: OnceClient, scope: str, key: str) -> Record | None:
    """The record of once ``key`` of ``scope`` in the client's replica (None: never claimed, or released, or
    no once key's record: ``well_formed_once``)."""
    return well_formed_once(client.replica.store.get(ONCE_TABLE, scope, key))


def _in_namespace(scope: str | None) -> AbstractContextManager[object]:
    """``tiger.namespace(scope)``, or no change for None."""
    from tiger._client import namespace  # here, not at the top: tiger._client imports this module

    return nullcontext() if scope is None else namespace(scope)


_FORGOTTEN: list[FactoryGenerator] = []  # teardowns given up on: never finalized (``_never_finalized``)


def _never_finalized(teardown: FactoryGenerator) -> None:
    """Keep ``teardown`` (a suspended generator) from ever being finalized, even at the process's exit,
    where clearing the modules would close it (running its ``finally``): one reference taken that is
    never given back (CPython's ``Py_IncRef``; elsewhere, held by this module until its exit)."""
    _FORGOTTEN.append(teardown)
    try:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(teardown))
    except (ImportError, AttributeError, OSError):  # (not CPython; or out of descriptors, ctypes not loaded yet)
        pass


STOP_EVERY = 1.0  # seconds between the stops of a teardown still running past its deadline


class _Alarm:
    """What ``_stopped_at`` did: ``fired``, whether the deadline passed with the teardown running (it was
    stopped: ``PastDeadline`` raised in it, or its task cancelled, and it may have gone on to its end).
    ``cancel``: set while an async teardown runs in a loop of its own (``_finish_async_generator_here``):
    a stop cancels its task instead."""

    __slots__ = ("cancel", "fired")

    def __init__(self) -> None:
        self.fired = False
        self.cancel: Callable[[], Any] | None = None


def _past(key: str) -> str:
    return f"the teardown of once {key!r} was still running at its deadline"


@contextlib.contextmanager
def _stopped_at(deadline: float, key: str) -> Iterator[_Alarm]:
    """Raise ``PastDeadline`` in the teardown run inside (under ``_finish_generator`` or
    ``_finish_async_generator_here``), if it still runs at ``deadline`` (``time.monotonic()`` seconds),
    and again every ``STOP_EVERY`` seconds while it goes on (its ``finally`` or ``except``): by SIGALRM
    (``signal.setitimer``), so in the main thread only, where Python runs signal handlers. A teardown
    that takes every stop and goes on (``except BaseException`` in a loop) is not ended. Nothing is
    stopped, and SIGALRM is left alone, elsewhere, with no deadline, where a timer due before
    ``deadline`` is set (pytest-timeout's, say: it stays first), or where SIGALRM's handler was not set
    from Python (it could not be put back). A timer due later is put back with what remains of it, and
    its interval; the handler too. Yields an ``_Alarm``."""
    import signal

    alarm = _Alarm()
    if math.isinf(deadline) or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield alarm
        return
    started = monotonic()
    due, _ = signal.getitimer(signal.ITIMER_REAL)
    previous = signal.getsignal(signal.SIGALRM)
    if previous is None or (due > 0 and due <= deadline - started):
        yield alarm
        return

    def stop(signum: int, frame: types.FrameType | None) -> None:
        # only inside a teardown (its runner on the stack): never in tiger's own code around it, where it
        # would skip putting the timer and handler back; and again each STOP_EVERY seconds, as a teardown
        # whose finally or except went on after the first stop ran unbounded (a review). An async one is
        # cancelled instead: raised in the loop's own code, it left the loop closed with the teardown pending
        while frame is not None:
            if frame.f_code in _TEARDOWN_RUNNERS:
                alarm.fired = True
                if alarm.cancel is not None:
                    alarm.cancel()
                    return
                raise PastDeadline(_past(key))
            frame = frame.f_back

    before, interval = 0.0, 0.0
    try:  # (armed inside: a Ctrl-C just after would leave the repeating timer set)
        signal.signal(signal.SIGALRM, stop)
        before, interval = signal.setitimer(signal.ITIMER_REAL, max(deadline - started, 0.001), STOP_EVERY)
        yield alarm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if before > 0:
            signal.setitimer(signal.ITIMER_REAL, max(before - (monotonic() - started), 0.001), interval)


def _finish_generator(key: str, generator: Generator[Any, None, None], scope: str | None) -> BaseException | None:
    """Run a generator factory's teardown (the rest after its ``yield``), in ``scope`` when it was built
    there; returns what it raised (None: it finished)."""
    try:
        with _in_namespace(scope):
            next(generator)
    except StopIteration:
        return None
    except BaseException as e:
        return e
    generator.close()
    return RuntimeError(f"the factory of once {key!r} yielded more than once")


async def _finish_async_generator(key: str, generator: AsyncGenerator[Any, None], scope: str | None) -> BaseException | None:
    """``_finish_generator`` for an async generator factory."""
    try:
        with _in_namespace(scope):
            await anext(generator)
    except StopAsyncIteration:
        return None
    except GeneratorExit:  # this coroutine is being closed (rule 6), not the teardown failing
        raise
    except BaseException as e:
        return e
    await generator.aclose()
    return RuntimeError(f"the factory of once {key!r} yielded more than once")


def _adopted_by_no_loop(generator: AsyncGenerator[Any, Any]) -> Awaitable[Any]:
    """``anext(generator)``, made with no asyncgen hooks set: the running loop does not adopt the generator,
    so when the loop closes (``shutdown_asyncgens``: pytest-asyncio closes each test's loop) it does not
    close it too, skipping its teardown; tiger runs that, when the value's holders are done with it."""
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=None, finalizer=None)
    try:
        return anext(generator)
    finally:
        sys.set_asyncgen_hooks(*hooks)


def _finish_async_generator_here(
    key: str, generator: AsyncGenerator[Any, None], scope: str | None, alarm: _Alarm | None = None
) -> BaseException | None:
    """The blocking driver's teardown of an async generator factory (one a ``tiger.aio`` client sharing
    this client's keys built: the pytest plugin tears down at the end of the run, after the tests' event
    loops are gone): run in an event loop of its own. What the factory made bound to the loop it was
    built in may refuse to be closed from another; that error is the teardown's.

    ``alarm`` (``_stopped_at``'s): past the deadline the teardown's task is cancelled (at its next
    await), not interrupted by SIGALRM inside the loop's own code, which left the loop closed with the
    teardown pending. A cancellation the teardown ended with is the alarm's (``PastDeadline``) or else
    a Ctrl-C's (``KeyboardInterrupt``): asyncio.run turns Ctrl-C into a cancellation of its task, which
    a teardown returning its error hid, so that the next teardown ran in full (a review)."""
    import asyncio  # loaded already: an async generator factory ran

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return TypeError(
            f"the teardown of once {key!r} is an async generator and this thread runs an event loop: "
            "await the tiger.aio client's tear_down_once_values() instead"
        )

    async def run() -> tuple[BaseException | None, bool]:
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None
        if alarm is not None:
            alarm.cancel = lambda: None if loop.is_closed() else loop.call_soon_threadsafe(task.cancel)
        try:
            error = await _finish_async_generator(key, generator, scope)
        finally:
            if alarm is not None:
                alarm.cancel = None
        # cancelled from outside (the alarm, or asyncio.run's Ctrl-C handler, 3.11+), not by its own code
        return error, getattr(task, "cancelling", lambda: 0)() > 0

    try:
        error, cancelled = asyncio.run(run())
    except KeyboardInterrupt as interrupted:  # (Python 3.10's asyncio.run, or a second Ctrl-C): the
        return interrupted  # teardown's outcome, not raised past the errors of the others (a review)
    if isinstance(error, asyncio.CancelledError) and alarm is not None and alarm.fired:
        return PastDeadline(_past(key))
    if isinstance(error, asyncio.CancelledError) and cancelled:
        return KeyboardInterrupt()
    return error  # (a cancellation of its own code is its error, as any other: a review)


_NO_VALUE = "the generator factory returned without yielding a value"


def _first_value(result: Any) -> tuple[Any, Generator[Any, None, None] | None]:
    """A factory's value, and its generator when it is a generator function (its teardown is the rest)."""
    if not inspect.isgenerator(result):
        return result, None
    generator: Generator[Any, None, None] = result  # type: ignore[assignment]
    try:
        return next(generator), generator
    except StopIteration:
        raise ValueError(_NO_VALUE) from None


_TIGER_DIR = os.path.dirname(os.path.abspath(__file__))


def _factory_frames(error: BaseException, last: int = 3) -> str:
    """The last frames of a factory's error, tiger's own left out (a value check has none to show)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.dirname(f.filename) != _TIGER_DIR]
    return "".join(traceback.format_list(frames[-last:]))


def _once_value(record: Record) -> Any:
    __tracebackhide__ = True
    if record["state"] == "failed":
        raise OnceFailed(record["id"], *record["error"])
    return record["value"]


def _held(record: Record | None) -> list[str]:
    """The clients other than its builder holding a once value."""
    return [] if record is None else list(record["holders"])


def _once_moved(record: Record | None, owner: str | None) -> bool:
    """A waiting caller's cue: the key was built, failed, released, or claimed anew."""
    return record is None or record["state"] != "building" or record["owner"] != owner


# the functions a teardown runs under: ``_stopped_at`` stops only code they called
_TEARDOWN_RUNNERS = frozenset({_finish_generator.__code__, _finish_async_generator_here.__code__})
