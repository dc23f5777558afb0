"""Change feeds: the changes a client's local replica applies, as a stream its code reads.

for change in plans.watch(timeout=5.0):
    if change.op == "put" and change.record["status"] == "paid":
        break

Theory of operation
-------------------
Rule 1: the replica never waits for a feed. Whoever applies a change (the replica thread, or a
writing thread depositing its own change) holds the replica's lock and hands the change to every
open feed (``deliver``): a filter check and an append to the feed's queue, O(1) per change per
feed. A change that would take a queue past its ``max_queued`` drops the queue whole and marks the
feed overflowed: its reader gets ``FeedOverflow`` instead of the rest (a consumer that fell behind
must re-read the table anyway). A feed no one reads any more (closed, collected, overflowed,
ended) is dropped from the replica at its next change.

Rule 2: a feed sees the changes in the order the replica applies them, which is seq order, none
twice, none skipped. One change of several records (``insert_many``, a ``client.batch()``) is one
:class:`Change` per record or operation, all with its seq, in the order applied. A clear, a
namespace clear and a namespace drop are one ``"clear"`` change each. tiger's own tables
(``RESERVED_PREFIX``) never appear.

Rule 3: a replica that reloads a snapshot (it missed changes, or the writer restarted) may have
skipped any number of them: every open feed gets one ``"reset"`` change at the snapshot's seq,
whatever its filter, then the changes after it.

Rule 4: the :class:`History` remembers the last changes applied (at most 1,024 seqs and 100,000
records) so that a feed can start after a seq it names (``since``). The history is read and the
feed registered under the replica's lock, so that no change falls between them or comes twice.

Rule 5: no zmq, no sockets. A blocking reader waits on its feed's Condition; an asyncio reader
awaits a future that the applying thread resolves through ``loop.call_soon_threadsafe``: no thread
per wait, and a cancelled wait consumes nothing.
"""

from __future__ import annotations

import _thread
import os
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from tiger import _table as t
from tiger._calls import WaitDeadline, check_seconds
from tiger._clock import mark, monotonic, overslept
from tiger._errors import FeedOverflow, TigerError, Timeout, shown
from tiger._handles import Unportable
from tiger._table import RESERVED_PREFIX, Record, check_name

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

Op = Literal["put", "delete", "clear", "reset"]
DEFAULT_MAX_QUEUED = 10_000
# the longest a blocking feed's read sleeps at once: a stop of the process found by a wait counts only past what
# it asked for (``tiger._clock.overslept``), so a read asking for all of its timeout counted little of a stop
# begun within it (``Replica.until``'s waits look as often)
WAIT_SLICE = 0.5
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Change:
    """One change a feed yields.

    ``op``:
      - ``"put"``: ``record`` (the frozen stored record) was stored under ``id`` in
        ``table``/``namespace`` (an insert, create or update).
      - ``"delete"``: ``id`` was removed from ``table``/``namespace``; ``record`` is None.
      - ``"clear"``: every record went, ``id`` and ``record`` None: of one namespace of a table
        (``clear_namespace``), of a whole table (``clear``: ``namespace`` None) or of one namespace in
        every table (``drop_namespace``: ``table`` None).
      - ``"reset"``: the replica reloaded a snapshot at ``seq`` (every other field None): changes
        before it may never have been yielded. Re-read what you follow from the table (reads are
        local), then go on reading the feed.

    ``seq``: the writer's sequence number of the change; the changes of one write share it.
    """

    seq: int
    op: Op
    table: str | None
    namespace: str | None
    id: str | None
    record: Record | None


# -- from table changes to feed changes ------------------------------------------------


def _where(part: t.Change) -> tuple[str | None, str | None]:
    """(table, namespace) a change (not a Batch) touches; None: every table, or every namespace."""
    if type(part) is t.Put or type(part) is t.Delete or type(part) is t.ClearNamespace:
        return part.table, part.namespace
    if type(part) is t.Clear:
        return part.table, None
    if type(part) is t.DropNamespace:
        return None, part.namespace
    raise TypeError(f"not a change of one table or namespace: {part!r}")


def _changes(seq: int, part: t.Change) -> list[Change]:
    """The feed changes of one table change (not a Batch), in the order it applies them."""
    if type(part) is t.Put:
        table, namespace, records = part.table, part.namespace, part.records
        if len(records) == 1:  # the common case, without a comprehension's cost
            return [Change(seq, "put", table, namespace, records[0]["id"], t.freeze(records[0]))]
        return [Change(seq, "put", table, namespace, r["id"], t.freeze(r)) for r in records]
    if type(part) is t.Delete:
        return [Change(seq, "delete", part.table, part.namespace, part.id, None)]
    where = _where(part)
    return [Change(seq, "clear", where[0], where[1], None, None)]


def _records(change: t.Change) -> int:
    """How many records a change holds (the history's measure of its size)."""
    if type(change) is t.Put:
        return len(change.records)
    if type(change) is t.Batch:
        return sum(_records(part) for part in change.changes)
    return 1 if type(change) is t.Delete else 0


# -- one feed's queue ---------------------------------------------------------------------


class Owner:
    """The client a feed or a wait on a replica was opened through (``Subscription.owner``, ``Replica.until``'s
    ``owner``). Clients sharing one replica (``tiger.aio.AsyncClient.sharing``) each have their own: closing one
    ends what was opened through it (``Replica.end_owner``: the feeds' next reads, and its waits, raise
    ``TigerError``) and leaves the other's alone. ``closed`` is set holding the replica's lock."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False


class Subscription:
    """What the replica holds of one open feed: its filter and its queue.

    ``offer``, ``reset`` and ``end`` are called by whoever applies changes, holding the replica's lock;
    the reader takes changes with ``take`` holding ``cond`` (this feed's own lock: a reader never holds
    the replica's). ``done`` (a plain attribute, read without a lock): no more changes are wanted.
    """

    __slots__ = (
        "closed",
        "cond",
        "done",
        "ended",
        "max_queued",
        "name",
        "namespace",
        "overflow",
        "owner",
        "pid",
        "queue",
        "sleepers",
        "tables",
    )

    def __init__(
        self, tables: frozenset[str] | None, namespace: str | None, max_queued: int, name: str, owner: Owner | None = None
    ) -> None:
        self.tables = tables  # None: every table
        self.namespace = namespace  # None: every namespace
        self.max_queued = max_queued
        self.name = name  # how errors name the feed
        self.owner = owner  # the client it was opened through (None: not known)
        self.queue: deque[Change] = deque()
        self.cond = Waking()  # threads wait on it, asyncio readers await its futures
        self.sleepers = 0  # threads waiting on cond
        self.overflow: str | None = None  # why the queue was dropped
        self.ended: tuple[type[TigerError], str] | None = None  # the replica stopped: what to raise
        self.closed = False
        self.done = False
        self.pid = os.getpid()  # the process whose replica feeds it

    def check_process(self) -> None:
        """``TigerError`` in a process forked from the one that opened the feed (before its lock is taken: the
        replica's thread may have held it as the process forked): no thread feeds it there, and a read
        without a timeout waited for ever (a user trial), where the client's calls raise at once."""
        if os.getpid() != self.pid:
            raise TigerError(
                f"{self.name} was opened in process {self.pid}, and no replica feeds it in this one: connect again "
                "in this process and open another feed there"
            )

    def wants(self, table: str | None, namespace: str | None) -> bool:
        """Whether a change of ``table``/``namespace`` (None: all of them) passes this feed's filter."""
        return (self.tables is None or table is None or table in self.tables) and (
            self.namespace is None or namespace is None or namespace == self.namespace
        )

    def offer(self, changes: list[Change]) -> None:
        """Queue changes (all of one seq), or drop the queue if they do not fit."""
        with self.cond:
            if self.done:
                return
            if len(self.queue) + len(changes) > self.max_queued:
                if len(changes) > self.max_queued:
                    why = f"one write of {len(changes)} changes is more than max_queued={self.max_queued}"
                    advice = "open it with a max_queued above the largest write it follows"
                else:
                    why = f"{len(self.queue)} changes were queued unread (max_queued={self.max_queued}) and are dropped"
                    advice = "read faster (or open it with a larger max_queued)"
                self.overflow = (
                    f"{self.name} overflowed at seq {changes[0].seq}: {why}. Open a new feed and re-read the table "
                    f"(reads are local), and {advice}"
                )
                self.queue.clear()
                self.done = True
            else:
                self.queue.extend(changes)
            self._wake()

    def end(self, error: type[TigerError], message: str) -> None:
        """The replica stopped: the reader gets ``error(message)`` once the queued changes are read."""
        with self.cond:
            if self.ended is None:
                self.ended = (error, message)
            self.done = True
            self._wake()

    def close(self) -> None:
        """The reader is done: reads end the iteration from now on."""
        if os.getpid() != self.pid:  # a forked child: the lock may be held by the parent's thread, gone here
            self.abandon()
            return
        with self.cond:
            self.closed = self.done = True
            self.queue.clear()
            self._wake()

    def abandon(self) -> None:
        """Its Feed was collected: takes no lock (a collection may run on a thread holding it); the
        replica drops it at its next change."""
        self.closed = self.done = True

    def take(self) -> Change | None:
        """Holding ``cond``: the next change, or None while there is none yet. Raises ``_Closed`` once closed,
        ``FeedOverflow`` once overflowed, the replica's error once it stopped and the queue is read."""
        if self.closed:
            raise _Closed
        if self.queue:
            return self.queue.popleft()
        if self.overflow is not None:
            raise FeedOverflow(self.overflow)
        if self.ended is not None:
            raise self.ended[0](self.ended[1])
        return None

    @property
    def waiters(self) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        """The asyncio readers waiting (their loops and futures)."""
        return self.cond._futures

    def _wake(self) -> None:
        """Holding ``cond``: the waiting threads now, the waiting tasks once ``cond`` is let go."""
        if self.sleepers or self.cond._futures:
            self.cond.notify_all()


class _Closed(Exception):
    """The feed was closed: the iteration ends (not StopIteration, which a coroutine may not raise)."""


def wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Resolve each waiting task's future on its own event loop (``call_soon_threadsafe`` from another
    thread, ``call_soon`` from the loop's own), and clear the list. A future of a closed loop is skipped:
    nobody awaits it any more. Feeds wake their readers by it, and the replica's ``Changes`` its waiting
    tasks."""
    from asyncio import _get_running_loop  # (loaded already: a task waits) not at the top: see _anext

    running = _get_running_loop()  # (None outside a loop): the caller's own loop needs no self-pipe
    held = getattr(_holding, "wakes", None)
    for loop, future in waiters:
        try:
            if loop is running:
                loop.call_soon(_resolve, future)
            elif held is not None:
                held.append((loop, future))
            else:
                loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:  # its loop is closed
            pass
    waiters.clear()


_holding = _thread._local()  # per thread: the wakes it holds (None: none held)


def hold_wakes() -> None:
    """From now on, this thread's wakes of waiting threads and of tasks on other threads' loops wait for
    ``send_held_wakes``.

    The replica's thread holds them while it applies what came, and sends them just before it waits
    again (letting the interpreter lock go): a thread or task woken at once found the interpreter lock
    (and a thread the replica's lock) still held by the applying thread for the rest of its turn, and
    slept again until then (two wake-ups where one does)."""
    if getattr(_holding, "wakes", None) is None:
        _holding.wakes = []


def send_held_wakes(stop: bool = False) -> None:
    """Wake the threads and tasks whose wakes this thread held (``hold_wakes``); ``stop``: hold none from now on."""
    held = getattr(_holding, "wakes", None)
    if held is None:
        return
    _holding.wakes = None if stop else []
    for wake in held:
        if type(wake) is tuple:
            loop, future = wake
            try:
                loop.call_soon_threadsafe(_resolve, future)
            except RuntimeError:  # its loop is closed
                pass
        else:  # a waiting thread's gate
            wake.release()


class Waking(_thread.RLock):  # type: ignore[misc]  # (final in typeshed; a C type that allows subclasses)
    """A lock and a condition for threads (``wait``) and asyncio tasks (``future``). ``notify_all``,
    called holding the lock, wakes the waiting threads at once and the waiting tasks as the lock is let
    go (``with`` is how every caller holds it): woken at once through their loop's self-pipe, a task
    found the lock still held and blocked its loop on it (seen with py-spy after each change of an async
    feed). The replica's ``Changes`` and each feed's ``Subscription.cond``.

    Not a ``threading.Condition`` over a ``Lock``: a signal whose handler raises, landing just after
    its ``__enter__`` (Python code) took the lock, left it held, and the next ``with`` of the main
    thread and the replica thread waited on it for ever (a signal storm test); landing inside its
    ``wait`` as it let the lock go, the ``with`` around it raised ``RuntimeError`` (CPython gh-78667).
    Here the lock is a C ``RLock``, taken by its own C ``__enter__`` with no Python code between it and
    the block, and ``__exit__`` lets go of every hold this thread has (``with`` is never nested on it:
    a hold a signal left at ``__exit__``'s first bytecode is let go by the thread's next ``with``)."""

    def __init__(self) -> None:
        super().__init__()
        self._gates: list[_thread.LockType] = []  # one per waiting thread, released by ``notify_all``
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []  # tasks waiting
        self._due: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []  # woken once the lock is let go

    def wait(self, timeout: float | None = None) -> bool:
        """``threading.Condition.wait``: called holding the lock; lets it go until ``notify_all`` or
        ``timeout`` seconds (None: no limit), then holds it again. Returns False past the timeout."""
        gate = _thread.allocate_lock()
        gate.acquire()
        self._gates.append(gate)
        woken = False
        try:
            self._release_save()  # type: ignore[attr-defined]
            if timeout is None:
                woken = gate.acquire()
            else:
                woken = gate.acquire(True, timeout) if timeout > 0 else gate.acquire(False)
            return woken
        finally:
            if not self._is_owned():  # type: ignore[attr-defined]  # (a signal may have landed before it was let go, or after)
                self.acquire()
            if not woken:
                try:
                    self._gates.remove(gate)
                except ValueError:  # (released by ``notify_all`` meanwhile)
                    pass

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """``threading.Condition.wait_for``: wait until ``predicate()`` is true, or ``timeout`` seconds
        (None: no limit) have passed; returns its last value. Called holding the lock."""
        deadline = None if timeout is None else monotonic() + timeout
        while not (result := predicate()):
            left = None if deadline is None else deadline - monotonic()
            if left is not None and left <= 0:
                break
            self.wait(left)
        return result

    def future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future of ``loop`` resolved at the next ``notify_all``. Call it holding the lock."""
        future: asyncio.Future[None] = loop.create_future()
        self._futures.append((loop, future))
        return future

    def forget(self, future: asyncio.Future[None]) -> None:
        """A future no task awaits any more (its wait ended). Call it holding the lock. (Not cancelled
        when its loop was closed under it: cancelling schedules its callbacks, and raised "Event loop is
        closed", printed as "Exception ignored" as the waiting coroutine was collected.)"""
        if not future.get_loop().is_closed():
            future.cancel()
        try:
            self._futures.remove((future.get_loop(), future))
        except ValueError:  # resolved and cleared by notify_all already
            pass

    def notify_all(self) -> None:
        """Wake every waiting thread now and every waiting task once the lock is let go. Call it holding the lock."""
        if self._gates:
            gates, self._gates = self._gates, []
            held = getattr(_holding, "wakes", None)
            if held is not None:  # (see ``hold_wakes``)
                held += gates
            else:
                for gate in gates:
                    gate.release()
        if self._futures:
            self._due += self._futures
            self._futures = []

    def __exit__(self, *exc: object) -> None:
        due = self._due
        if due:
            self._due = []
        while self._is_owned():  # type: ignore[attr-defined]
            self.release()
        if due:
            wake(due)


_NO_LOOP = (
    "tiger.aio runs on asyncio, and no asyncio event loop runs in this thread (called outside one, or under "
    "another async library: trio, or anyio's trio backend). There, use the blocking tiger.Client in a worker "
    "thread (trio.to_thread.run_sync, anyio.to_thread.run_sync)"
)


def running_loop() -> asyncio.AbstractEventLoop:
    """The asyncio event loop running in this thread; ``TigerError`` saying that tiger.aio needs one when
    none does (asyncio's own ``RuntimeError: no running event loop`` says nothing of trio)."""
    from asyncio import _get_running_loop  # loaded already: an awaited call is running

    loop = _get_running_loop()
    if loop is None:
        raise TigerError(_NO_LOOP)
    return loop


_off_loop: tuple[int, ThreadPoolExecutor] | None = None  # (pid, tiger's threads for off_loop)
_off_loop_lock = _thread.allocate_lock()


async def off_loop(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` run in a thread of tiger's own (at most 4 per process), awaited: what may block for a
    while (a probe of the writer's url: a connect of up to 0.5 s, a DNS lookup of up to 1 s) must not stop
    the event loop. Not the loop's default executor (``asyncio.to_thread``): the application's own blocking
    jobs (its ``run_in_executor`` calls) may hold every thread of that, and a probe would wait behind them,
    a wrong key said only when they end. A forked child makes its own: its parent's threads are not in it.
    Once the interpreter is shutting down (an atexit handler), or when no thread can be started (a limit on
    threads or memory: it raised the bare ``RuntimeError``), here."""
    global _off_loop
    try:
        with _off_loop_lock:
            if _off_loop is None or _off_loop[0] != os.getpid():
                from concurrent.futures import ThreadPoolExecutor

                _off_loop = (os.getpid(), ThreadPoolExecutor(4, thread_name_prefix="tiger-probe"))
            threads = _off_loop[1]
        done = running_loop().run_in_executor(threads, fn, *args)
    except RuntimeError as e:  # "cannot schedule new futures after interpreter shutdown", or its import's atexit;
        import threading  # or "can't start new thread" (a limit on threads or memory): run here, the loop held

        if not getattr(threading, "_SHUTTING_DOWN", False) and "can't start new thread" not in str(e):
            raise
        return fn(*args)
    return await done


def _forked() -> None:
    """In a forked child: a lock the parent held at the fork is not held here (its holder is not here)."""
    global _off_loop_lock
    _off_loop_lock = _thread.allocate_lock()


os.register_at_fork(after_in_child=_forked)


def _resolve(future: asyncio.Future[None]) -> None:
    """On the waiter's loop: wake it, unless it was cancelled (or timed out) meanwhile."""
    if not future.done():
        future.set_result(None)


_EXPIRED: Any = object()  # what a timer resolves a waiting future with


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_result(_EXPIRED)


async def woken(future: asyncio.Future[Any], timeout: float | None) -> bool:
    """Await a future ``wake`` resolves, at most ``timeout`` seconds (None: no limit): True once woken,
    False at the timeout. The future itself is awaited, a timer resolving it at the timeout: woken, the
    task runs on the next turn of the loop, where ``asyncio.wait`` (or ``wait_for``) takes one turn more
    and two objects more. A cancellation is raised as is, even one that comes as the future resolves
    (``wait_for`` before Python 3.12 swallowed that one)."""
    if timeout is None:
        await future
        return True
    timer = future.get_loop().call_later(max(0.0, timeout), _expire, future)
    try:
        return await future is not _EXPIRED
    finally:
        timer.cancel()


class Alarm:
    """One timer that a waiter re-uses across its waits, in place of a ``loop.call_later`` per wait.

    ``set(future, timeout)`` has ``future`` resolved with ``_EXPIRED`` after ``timeout`` seconds unless
    something resolves it first. The timer already armed is kept when it rings no later than needed:
    ringing early, it finds the wait not due yet and arms again for when it is. A reader of a feed with
    a 30 s timeout so arms a timer about every 30 s, not on every change (creating, scheduling and
    cancelling one each wait cost some 8 us of CPU per change on the machine of the bench). ``set`` on a
    busy alarm (a second task waiting at once) gives that wait a timer of its own, and so does ``set`` from
    a loop while the alarm is armed on another loop running in another thread (a feed read in turn by an
    anyio portal's loop and the test's): its timer is never cancelled nor re-armed across threads, where
    its ring, running meanwhile, ended the new wait from the wrong thread. ``close`` cancels it."""

    __slots__ = ("_due", "_future", "_handle", "_loop")

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: asyncio.Future[Any] | None = None
        self._due = 0.0  # loop.time() of the wait's timeout

    def set(self, future: asyncio.Future[Any], timeout: float) -> asyncio.TimerHandle | None:
        """Arm for ``future`` (``timeout`` seconds); returns the extra timer a busy alarm made, else None."""
        loop = future.get_loop()
        owner = self._loop
        if (self._future is not None and not self._future.done()) or (
            owner is not None and owner is not loop and owner.is_running()
        ):  # busy, or armed on a loop running in another thread (its timer rings there): a timer of its own
            return loop.call_later(max(0.0, timeout), _expire, future)
        due = loop.time() + max(0.0, timeout)
        self._future, self._due = future, due
        handle = self._handle
        if handle is None or self._loop is not loop or handle.when() > due:
            if handle is not None:
                handle.cancel()
            self._loop = loop
            self._handle = loop.call_at(due, self._ring)
        return None

    def _ring(self) -> None:
        self._handle = None
        future = self._future
        if future is None or future.done():
            return  # nothing waits: armed again by the next wait
        assert self._loop is not None
        if self._loop.time() >= self._due:
            self._future = None
            future.set_result(_EXPIRED)
        else:
            self._handle = self._loop.call_at(self._due, self._ring)

    def close(self) -> None:
        handle, self._handle, self._future = self._handle, None, None
        if handle is not None:
            try:
                handle.cancel()
            except RuntimeError:  # (its loop closed, another thread's): nothing left to ring
                pass


# -- the replica's side: delivery, reset, history ---------------------------------------------


def deliver(subscriptions: list[Subscription], seq: int, change: t.Change) -> None:
    """Hand one applied change to every open feed that wants it; drop the feeds that are done.

    The caller holds the replica's lock and calls this in seq order. Each part of the change is
    turned into feed changes once, for the first feed that wants it, and shared with the others. A
    batch's parts are queued to each feed at once: a reader that has read one finds the others of its
    seq queued (``Feed._queued``: wait_until took a record a later part of its batch removed for one
    that was stored).
    """
    stale = False
    offers: dict[Subscription, list[Change]] | None = {} if type(change) is t.Batch else None
    for part in change.changes if type(change) is t.Batch else (change,):
        table, namespace = _where(part)
        if table is not None and table.startswith(RESERVED_PREFIX):
            continue
        changes: list[Change] | None = None
        for sub in subscriptions:
            if sub.done:
                stale = True
            elif sub.wants(table, namespace):
                if changes is None:
                    changes = _changes(seq, part)
                if offers is None:
                    sub.offer(changes)
                else:
                    offers.setdefault(sub, []).extend(changes)
    for sub, changes in (offers or {}).items():
        sub.offer(changes)
    if stale:
        subscriptions[:] = [sub for sub in subscriptions if not sub.done]


def deliver_reset(subscriptions: list[Subscription], seq: int) -> None:
    """The replica loaded a snapshot at ``seq``: one "reset" change for every open feed, filter or not."""
    reset = [Change(seq, "reset", None, None, None, None)]
    for sub in subscriptions:
        sub.offer(reset)
    subscriptions[:] = [sub for sub in subscriptions if not sub.done]


class History:
    """The last changes a replica applied, in seq order: at most ``MAX_SEQS`` changes and ``MAX_RECORDS``
    records, whichever comes first; a snapshot load forgets them all.

    The Sequencer appends each change it applies to ``changes`` itself (a deque that forgets its oldest
    past ``MAX_SEQS``: the cheapest append there is) and calls ``weigh`` for each that is not a
    one-record Put. The seqs are not stored: the changes are consecutive, the last at the replica's seq.
    """

    MAX_SEQS = 1024
    MAX_RECORDS = 100_000

    def __init__(self) -> None:
        self.changes: deque[t.Change] = deque(maxlen=self.MAX_SEQS)
        self._heavy: deque[tuple[int, int]] = deque()  # (seq, records) of the changes of several records kept
        self._heavy_records = 0

    def restart(self) -> None:
        """A snapshot was loaded: remember from its seq on."""
        self.changes.clear()
        self._heavy.clear()
        self._heavy_records = 0

    def weigh(self, seq: int, change: t.Change) -> None:
        """After appending ``change`` (at ``seq``): forget the oldest changes while the records kept are too many.

        The changes of at most one record (not weighed) count one each, at most ``MAX_SEQS`` of them: the
        heavy ones may hold the rest.
        """
        records = _records(change)
        if records <= 1:
            return
        heavy, changes = self._heavy, self.changes
        while heavy and heavy[0][0] <= seq - len(changes):  # fell off the deque meanwhile
            self._heavy_records -= heavy.popleft()[1]
        heavy.append((seq, records))
        self._heavy_records += records
        while self._heavy_records > self.MAX_RECORDS - self.MAX_SEQS:
            oldest, records = heavy.popleft()
            self._heavy_records -= records
            for _ in range(oldest - (seq - len(changes))):  # forget it and every change before it
                changes.popleft()

    def since(self, since: int, seq: int) -> list[tuple[int, t.Change]]:
        """The (seq, change) pairs after ``since``, for a replica at ``seq``; ``ValueError`` if some are forgotten."""
        oldest = seq - len(self.changes)  # the oldest ``since`` this history can serve
        if since < oldest:
            raise ValueError(
                f"since={shown(since)} is older than this replica remembers: the oldest seq a feed can start after is "
                f"{oldest} (it remembers the last {self.MAX_SEQS} changes, {self.MAX_RECORDS} records at most, and "
                "nothing before a snapshot load); open the feed without since and re-read the table"
            )
        if since > seq:
            raise ValueError(f"since={shown(since)} is ahead of this replica, at seq {seq} (call client.sync() first)")
        start = len(self.changes) - (seq - since)
        return [(since + 1 + i, change) for i, change in enumerate(islice(self.changes, start, None))]


def subscribe(
    subscriptions: list[Subscription], history: History, seq: int, sub: Subscription, since: int | None
) -> Subscription:
    """Open the feed ``sub`` (new) on a replica at ``seq``: its queue starts with the remembered changes after
    ``since``; returns it.

    The caller holds the replica's lock, so that no change is applied between reading the history
    and registering the feed. ``ValueError`` if ``since`` is not remembered. The feeds closed since are
    dropped from ``subscriptions`` here too, not only at the next change: on a store nobody wrote to, each
    ``wait_until`` that timed out and each feed closed stayed listed (a poller of one wait a second grew its
    process by some 170 MB a day, a user trial).
    """
    if since is not None:
        for at, change in history.since(since, seq):
            deliver([sub], at, change)
    if any(old.done for old in subscriptions):
        subscriptions[:] = [old for old in subscriptions if not old.done]
    if not sub.done:  # the remembered changes may have overflowed it already
        subscriptions.append(sub)
    return sub


# -- the reader's side ----------------------------------------------------------------------


class Feed(Unportable):
    """An open change feed: iterate it (``for``, or ``async for``) to get each :class:`Change`.

    Made by ``Table.watch()`` or ``Client.watch()``. It yields every change the local replica applies
    after it was opened (or after ``since``) that passes its filter, in seq order, until it is closed
    (``close()``, or the end of a ``with`` block), which ends the iteration.

    Raises, from the read that meets it:
      - ``tiger.Timeout``: no change came within ``timeout`` seconds (None: wait as long as it takes);
        the feed stays usable.
      - ``tiger.FeedOverflow``: more than ``max_queued`` changes were waiting unread; they were dropped,
        and so is every later change: open a new feed and re-read the table.
      - ``tiger.TigerError``: the client was closed (``tiger.Unavailable``: its replica stopped), after
        the changes queued before that.
    A ``"reset"`` change says the replica reloaded a snapshot: see :class:`Change`. It is neither copied
    nor pickled (``TypeError``): it is a place in this process's replica's changes.
    """

    __slots__ = ("_alarm", "_client", "_sub", "_timeout")
    _instead = "it is a place in this process's replica's changes: open another feed (watch()) where it is read"

    def __init__(self, sub: Subscription, timeout: float | None = None, client: object = None) -> None:
        # the client that opened it, kept alive by it as a table handle keeps its client: a helper that
        # connected and returned only a feed (``return (await connect()).table(t).watch()``) had its client
        # collected, and the feed ended "the client was closed" though nothing closed it (a user trial)
        self._client = client
        self._sub = sub
        self._alarm = Alarm()  # the timeouts of async reads
        self.timeout = timeout

    @property
    def timeout(self) -> float | None:
        """Seconds a read waits for a change at most (None: no limit); settable, checked as ``watch``'s."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = check_timeout(value)

    def __repr__(self) -> str:
        return self._sub.name

    def __del__(self) -> None:
        self._sub.abandon()

    @property
    def queued(self) -> int:
        """How many changes wait to be read."""
        return len(self._sub.queue)

    def close(self) -> None:
        """Stop the feed: the replica forgets it, reads (a waiting one too) end the iteration. Idempotent."""
        self._sub.close()

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Feed:
        """``async with table.watch() as feed:`` as well as ``with``: the same feed, closed at the end."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Feed:
        return self

    def __next__(self) -> Change:
        return self._next(self.timeout)

    def _queued(self) -> Change | None:
        """The next change if one is queued now, else None (no wait; None once closed). Raises as ``next``
        does (``FeedOverflow``, the replica's error) when the queue is read. The parts of a batch are queued
        at once: after one of them, the others of its seq are here."""
        self._sub.check_process()
        with self._sub.cond:
            try:
                return self._sub.take()
            except _Closed:
                return None

    def _next(self, timeout: float | None) -> Change:
        """The next change, waiting at most ``timeout`` seconds (None: no limit); ``StopIteration`` once closed."""
        try:
            return self._wait(timeout)
        except _Closed:
            raise StopIteration from None

    def _wait(self, timeout: float | None) -> Change:
        sub = self._sub
        sub.check_process()
        began = monotonic()
        wait = None if timeout is None else WaitDeadline(began + timeout, began)  # (a pause does not count)
        with sub.cond:
            while True:
                change = sub.take()
                if change is not None:
                    return change
                now = monotonic()
                remaining = None if wait is None else wait.at(now) - now
                if remaining is not None and remaining <= 0:
                    raise Timeout(f"{sub.name} got no change within {timeout:g}s")
                slept, asked = mark(), None if remaining is None else min(remaining, WAIT_SLICE)
                try:  # (counted inside the ``try``: no signal lands between a store and the call after it)
                    sub.sleepers += 1
                    sub.cond.wait(asked)
                finally:
                    sub.sleepers -= 1
                if asked is not None:
                    overslept(slept, asked)

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Change:
        return await self._anext(self.timeout)

    async def _anext(self, timeout: float | None) -> Change:
        """``_next`` for an asyncio task (``StopAsyncIteration`` once closed): awaits a future the applying
        thread resolves (no coroutine below this one: each costs a frame on every change). Cancelling the
        awaiting task consumes nothing: the feed stays as it was."""

        sub = self._sub
        sub.check_process()
        began = monotonic()
        wait = None if timeout is None else WaitDeadline(began + timeout, began)  # (a pause does not count)
        try:
            while True:
                with sub.cond:
                    change = sub.take()
                    if change is not None:
                        return change
                    future: asyncio.Future[Any] = sub.cond.future(running_loop())
                now = monotonic()
                timer = None if wait is None else self._alarm.set(future, wait.at(now) - now)
                closing = False
                try:  # a cancellation, even one that comes as the future resolves, consumes nothing
                    expired = await future is _EXPIRED
                except GeneratorExit:  # closed: by the garbage collector, maybe inside the feed's own lock,
                    closing = True  # which the applying thread holds: listed, it goes at the next notify_all
                    raise  # (taking the lock again and letting it go left that thread's work unlocked)
                finally:
                    if timer is not None:
                        timer.cancel()
                    if not closing and (not future.done() or future.cancelled() or future.result() is _EXPIRED):
                        with sub.cond:  # not woken: still listed (``notify_all`` takes the ones it wakes)
                            sub.cond.forget(future)
                if expired:
                    with sub.cond:
                        change = sub.take()
                    if change is not None:
                        return change
                    assert wait is not None  # (expired: a deadline was set)
                    now = monotonic()
                    # the loop's clock ran ahead of tiger's (freeze_time without real_asyncio jumped it), or a pause
                    # moved the deadline, or it was not running as it passed (one more look): the rest of the wait
                    if now < wait.at(now):
                        continue
                    raise Timeout(f"{sub.name} got no change within {timeout:g}s")
        except _Closed:
            raise StopAsyncIteration from None


# -- arguments -------------------------------------------------------------------------------


def check_tables(tables: Iterable[str] | None) -> frozenset[str] | None:
    """``tables`` of ``watch``: None (every table) or an iterable of table names, at least one, none of
    tiger's own. ``TypeError`` for another type (a str: one name is ``[name]``), ``ValueError`` for a bad
    name or none at all (a feed of no table would yield nothing, for ever)."""
    if tables is None:
        return None
    if isinstance(tables, str) or not isinstance(tables, Iterable):
        raise TypeError(f"tables must be None or an iterable of table names (a list), not {type(tables).__name__}")
    names = []
    for i, name in enumerate(tables):
        check_name(name, f"tables[{i}]")  # (one UTF-8 cannot encode: refused, else a feed of nothing)
        if name.startswith(RESERVED_PREFIX):
            raise ValueError(f"tables[{i}]: table names starting with {RESERVED_PREFIX!r} are reserved for tiger")
        names.append(name)
    if not names:
        raise ValueError("tables must name at least one table (a feed of none would yield nothing); None follows every table")
    return frozenset(names)


def check_timeout(value: object, what: str = "timeout") -> float | None:
    """None (no limit) or a number of seconds (``_calls.check_seconds``)."""
    return check_seconds(value, what, no_limit=True)


def check_max_queued(value: object) -> int:
    """``max_queued`` of ``watch``: an int from 1 (changes). ``TypeError`` for another type (a bool too),
    ``ValueError`` below 1."""
    if type(value) is not int:
        raise TypeError(f"max_queued must be an int (changes), not {type(value).__name__} {shown(value)}")
    if value < 1:
        raise ValueError(f"max_queued must be a positive int (changes), got {shown(value)}")
    return value


def check_since(value: object) -> int | None:
    if value is not None and type(value) is not int:
        raise TypeError(f"since must be None or an int (a seq), not {type(value).__name__}")
    if value is not None and value < 0:  # (seqs count from 0: a negative one is no seq, not an old one)
        raise ValueError(f"since must be a seq (an int from 0), got {shown(value)}")
    return value


def describe(tables: frozenset[str] | None, namespace: str | None, since: int | None) -> str:
    """How a feed names itself in errors: ``<tiger.Feed tables=['plans'] namespace='ns'>``."""
    what = "every table" if tables is None else f"tables={sorted(tables)!r}"
    what += " every namespace" if namespace is None else f" namespace={namespace!r}"
    if since is not None:
        what += f" since={shown(since)}"
    return f"<tiger.Feed {what}>"
