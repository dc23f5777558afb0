"""Locks held by a token, not by whoever acquired them: the command socket's (one call at a time) and a
``once`` key's (one builder per process).

The caller makes its token first, then takes the lock and lets it go in one ``try``::

    me = object()
    try:
        if not lock.take(me, deadline):
            raise Timeout(...)
        ...
    finally:
        try:
            lock.let_go(me)
        finally:
            lock.let_go(me)

A timed ``threading.Lock.acquire`` (or an awaited ``asyncio.Lock.acquire``) followed by ``try`` leaves
the lock held for ever when a signal's exception (Ctrl-C's ``KeyboardInterrupt``, a handler that raises)
lands between the two: Python runs signal handlers between bytecodes, so even ``try: acquired =
lock.acquire()`` can be left with the lock held and ``acquired`` still False. Here the lock is taken by
one store of the token, inside the caller's ``try``: an exception before it took nothing, one after it
is let go by ``let_go(me)``, which frees the lock only for its holder.

``let_go`` is said twice, the second in a ``finally`` of the first: Python checks for signals at the
first bytecode of every function it enters, so one landing there ends the ``finally`` before the
lock is let go (a user trial, with a profile hook sending SIGINT as ``let_go`` was entered). The
second call then lets it go, and is nothing when the first did. (Two signals in a row at those two
bytecodes still leave it held; Python itself offers no way to close that.)
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from tiger._clock import mark, monotonic, moved, overslept

if TYPE_CHECKING:
    import asyncio

WAKE_SLICE = 0.05
"""Seconds the first waiter sleeps at most before it looks again (a backstop: ``let_go`` hands the lock to
the first waiter and wakes it; a signal landing between the two leaves it to this). The others wait to
be woken, or for their deadline: each of them looking again every slice cost a loop of thousands of
waiting tasks work growing with their square (a user trial: 4000 writes at once on one client took 2.3 s,
6000 timed out)."""

LATE_SLICE = 1.0
"""Seconds the other waiters sleep at most (a backstop for the first: a signal landing as it left the
queue, before it handed the lock on, leaves the lock free and nobody woken); ``OwnedAsyncLock``: the
second waiter only."""


class Gate(Protocol):
    """A waiter's gate in an ``OwnedLock``'s queue: held until ``release`` wakes the waiter (a
    ``threading.Lock``, or an awaiting caller's ``LoopGate``)."""

    def locked(self) -> bool: ...
    def release(self) -> None: ...


class OwnedLock:
    """One holder at a time among threads, named by its token (``holder``; None: free), handed to the
    waiters in the order they came (``let_go`` makes the first waiter the holder, then wakes it): a
    caller that let go and took it again at once starved the others (a review).

    Not a ``threading.Condition``: its ``wait`` releases the lock before its own ``try``, so a signal's
    exception landing there made the ``with`` around it release the lock again, and the caller got
    ``RuntimeError: cannot release un-acquired lock`` in place of the signal's exception (a test of
    calls under a signal timer). A waiter here waits on a gate of its own, a lock ``let_go`` releases;
    the guard is held only around plain stores, never across a wait. A waiter handed the lock as it
    leaves (a signal, its deadline) is let go by its caller's ``finally``, which passes it on."""

    __slots__ = ("__weakref__", "_guard", "_queue", "holder")

    def __init__(self) -> None:
        self._guard: threading.Lock | threading.RLock = threading.Lock()
        self._queue: dict[Gate, object] = {}  # each waiter's gate (held until it is woken) -> its token
        self.holder: object | None = None

    def take(self, me: object, deadline: float) -> bool:
        """Make the token ``me`` the holder, waiting for those before it until ``deadline``
        (``time.monotonic()`` seconds; ``math.inf``: no limit). Returns False past it."""
        with self._guard:
            if self.holder is None and not self._queue:
                self.holder = me
                return True
        gate = threading.Lock()
        gate.acquire()
        began, counted = monotonic(), 0.0
        try:
            while True:
                with self._guard:
                    first = self._come(gate, me)
                    if self.holder is me:
                        return True
                deadline, counted = moved(deadline, began, counted)  # (a pause of this process does not count)
                left = deadline - monotonic()
                if left <= 0:
                    return False
                slept, asked = mark(), min(left, WAKE_SLICE if first else LATE_SLICE)
                gate.acquire(timeout=asked)
                overslept(slept, asked)
        finally:  # inline, no call first: a signal at the first bytecode of a method left the gate queued
            with self._guard:
                self._queue.pop(gate, None)
                if self.holder is None:
                    self._hand_on()
                elif self.holder is not me:  # left waiting (deadline, a signal, cancelled): the next may be
                    self._wake_first()  # first now, and looks every slice from now on

    def let_go(self, me: object) -> None:
        """The token ``me`` lets the lock go, if it holds it: to the first waiter, woken."""
        with self._guard:
            if self.holder is me:
                self.holder = None  # first: a signal before the hand-off leaves the waiters to their next look
                self._hand_on()

    def _come(self, gate: Gate, me: object) -> bool:
        """Queue ``gate`` (once), take the lock if it is free and ``gate`` first; whether it is first
        (the guard held)."""
        self._queue.setdefault(gate, me)
        if self.holder is None and next(iter(self._queue)) is gate:  # (a hand-off a signal skipped)
            self.holder = me
        first = next(iter(self._queue)) is gate
        if not first and self.holder is None:  # (a hand-off a signal skipped: the first looks again)
            self._wake_first()
        return first

    def _hand_on(self) -> None:
        """Make the first waiter the holder and wake it (the guard held, the lock free)."""
        if self._queue:
            self.holder = next(iter(self._queue.values()))
            self._wake_first()

    def _wake_first(self) -> None:
        """Wake the first waiter to look again (the guard held)."""
        for gate in self._queue:
            if gate.locked():
                gate.release()
            return


class OwnedAsyncLock:
    """``OwnedLock`` among the tasks of one event loop: ``await lock.take(me, deadline)``, handed on in
    the order the tasks came.

    The first waiter looks again every ``WAKE_SLICE`` and the second every ``LATE_SLICE`` (backstops: a
    signal landing between a waiter leaving the queue and its hand-off leaves the lock free, nobody woken);
    the others wait to be woken, or for their deadline. Every waiter looking each ``LATE_SLICE`` was work
    growing with their number every second: 30,000 writes gathered on one client got 25 of them through in
    time, where 2,000 a second went through when fewer waited (a user trial). A waiter woken without the
    lock (to look again) keeps its place: its token keys the queue, its future is replaced in place (a fresh
    future went to the back of the queue)."""

    __slots__ = ("__weakref__", "_queue", "holder")

    def __init__(self) -> None:
        self.holder: object | None = None
        # each waiting task's token -> its future, in order: an OrderedDict, whose first entry is found at once (a
        # dict's first, after many pops from its front, is found by a scan of the slots left: 30,000 waiters cost
        # seconds so; a review)
        self._queue: OrderedDict[object, asyncio.Future[None]] = OrderedDict()

    async def take(self, me: object, deadline: float) -> bool:
        """``OwnedLock.take``, awaited; cancelled, it holds nothing once its caller let go. A free lock
        nobody waits for is taken with no await (every call of a ``tiger.aio`` client takes its socket's so)."""
        if self.holder is None and not self._queue:
            self.holder = me
            return True
        import asyncio  # here: the blocking client never imports asyncio

        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        began, counted = monotonic(), 0.0
        try:
            self._queue[me] = woken
            while True:
                if self.holder is None and next(iter(self._queue)) is me:  # (a hand-off a signal skipped)
                    self.holder = me
                if self.holder is me:
                    return True
                deadline, counted = moved(deadline, began, counted)  # (by pauses other threads found)
                left = deadline - monotonic()
                if left <= 0:
                    return False
                if woken.done():  # (woken, and the lock not handed to it: a fresh future, in its place)
                    self._queue[me] = woken = loop.create_future()
                order = iter(self._queue)
                first = next(order) is me
                if not first and self.holder is None:  # (a hand-off a signal skipped: the first looks again)
                    self._wake_first()
                slice_ = WAKE_SLICE if first else LATE_SLICE if next(order, None) is me else math.inf
                wait = min(left, slice_)
                await asyncio.wait((woken,), timeout=None if wait == math.inf else wait)
        finally:
            self._queue.pop(me, None)
            if self.holder is None:
                self._hand_on()
            elif self.holder is not me:  # left waiting (deadline, cancelled): the next may be first now,
                self._wake_first()  # and looks every slice from now on
            self._wake_second()  # whichever waiter is second now keeps its backstop from now on

    def let_go(self, me: object) -> None:
        """``OwnedLock.let_go``: to the first waiting task, woken."""
        if self.holder is me:
            self.holder = None  # first: a signal before the hand-off leaves the waiters to their next look
            self._hand_on()

    def _hand_on(self) -> None:
        if self._queue:
            self.holder = next(iter(self._queue))
            self._wake_first()

    def _wake_first(self) -> None:
        for woken in self._queue.values():
            _wake(woken)
            return

    def _wake_second(self) -> None:
        order = iter(self._queue.values())
        if next(order, None) is not None:
            second = next(order, None)
            if second is not None:
                _wake(second)


class LoopGate:
    """An awaiting caller's gate: ``release``, from any thread (the guard held), resolves its ``future``
    in its own event loop. ``rearm`` (the guard held) makes a fresh future once it was released."""

    __slots__ = ("future", "loop", "opened", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread = threading.current_thread()
        self.future: asyncio.Future[None] = loop.create_future()
        self.opened = False

    def locked(self) -> bool:
        return not self.opened

    def gone(self) -> bool:
        """Whether its waiter never runs again: its loop closed, or its thread ended."""
        return self.loop.is_closed() or not self.thread.is_alive()

    def release(self) -> None:
        self.opened = True
        with contextlib.suppress(RuntimeError):  # its loop closed under it: that waiter never runs again
            self.loop.call_soon_threadsafe(_wake, self.future)

    def rearm(self) -> None:
        if self.opened:
            self.opened = False
            self.future = self.loop.create_future()


class DriversLock(OwnedLock):
    """A once key's lock among the callers of every driver of one ``Once`` (rule 5): ``OwnedLock``'s
    rules (a token holds it, taken by one store inside the caller's ``try``, handed to the waiters in
    the order they came, a slice's backstop for a hand-off a signal skipped), with waiters of both
    kinds: ``take`` blocks its thread, ``await take_async`` awaits in its event loop, woken from
    whichever thread lets it go.

    The guard is re-entrant and held only around plain stores, never across a wait: the garbage
    collector may run a collected async caller's ``let_go`` (a coroutine whose event loop was closed
    under it) at any allocation made in here. A holder whose event loop was closed under it (``close()``
    with its task pending: it never runs again), or whose thread ended, is taken for gone by the first
    waiter: callers of other threads waited for it until the garbage collector came, or for good. A
    waiter so abandoned is unqueued likewise (left first, it kept the key from every later caller)."""

    __slots__ = ("_loop",)

    def __init__(self) -> None:
        super().__init__()
        self._guard = threading.RLock()
        self._loop: tuple[object, LoopGate] | None = None  # an async holder's token, its gate

    async def take_async(self, me: object, deadline: float) -> bool:
        """``take``, awaited: the event loop goes on meanwhile. A free lock nobody waits for is taken
        with no await; cancelled, it holds nothing once its caller let go."""
        import asyncio  # here: the blocking client never imports asyncio

        loop = asyncio.get_running_loop()
        with self._guard:
            if self.holder is None and not self._queue:
                self.holder = me
                self._loop = (me, LoopGate(loop))
                return True
        gate = LoopGate(loop)
        began, counted = monotonic(), 0.0
        try:
            while True:
                with self._guard:
                    gate.rearm()
                    first = self._come(gate, me)
                    if self.holder is me:
                        return True
                    woken = gate.future
                deadline, counted = moved(deadline, began, counted)  # (by pauses other threads found, as ``take``)
                left = deadline - monotonic()
                if left <= 0:
                    return False
                await asyncio.wait((woken,), timeout=min(left, WAKE_SLICE if first else LATE_SLICE))
        finally:  # inline, no call first: a signal at the first bytecode of a method left the gate queued
            with self._guard:
                self._queue.pop(gate, None)
                if self.holder is None:
                    self._hand_on()
                elif self.holder is not me:  # left waiting (deadline, a signal, cancelled): the next may be
                    self._wake_first()  # first now, and looks every slice from now on

    def live_holder(self) -> object | None:
        """The holder's token, None when free or when the holder was abandoned (its event loop closed, or
        its thread ended)."""
        holder, held = self.holder, self._loop
        return None if held is not None and held[0] is holder and held[1].gone() else holder

    def _come(self, gate: Gate, me: object) -> bool:
        self._queue.setdefault(gate, me)
        self._drop_abandoned()
        if self.live_holder() is None:  # (an abandoned holder)
            self.holder = None
        first = super()._come(gate, me)
        if self.holder is me:
            self._loop = (me, gate) if isinstance(gate, LoopGate) else None
        return first

    def _drop_abandoned(self) -> None:
        """Unqueue the waiters that never run again (the guard held)."""
        for gate in [g for g in self._queue if isinstance(g, LoopGate) and g.gone()]:
            del self._queue[gate]

    def _hand_on(self) -> None:
        self._drop_abandoned()
        if self._queue:
            gate, self.holder = next(iter(self._queue.items()))
            self._loop = (self.holder, gate) if isinstance(gate, LoopGate) else None
            self._wake_first()


def _wake(woken: asyncio.Future[None]) -> None:
    """Resolve a waiting task's future, unless its loop was closed under it (a process ending with a loop
    abandoned mid-call: that waiter never runs again; resolving it raised "Event loop is closed", printed
    as "Exception ignored" as the call's coroutine was collected)."""
    if not woken.done() and not woken.get_loop().is_closed():
        woken.set_result(None)
