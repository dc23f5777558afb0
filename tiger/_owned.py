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

import threading
import time
from typing import TYPE_CHECKING

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
queue, before it handed the lock on, leaves the lock free and nobody woken)."""


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
        self._guard = threading.Lock()
        self._queue: dict[threading.Lock, object] = {}  # each waiter's gate (held until it is woken) -> its token
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
        try:
            while True:
                with self._guard:
                    self._queue.setdefault(gate, me)
                    if self.holder is None and next(iter(self._queue)) is gate:  # (a hand-off a signal skipped)
                        self.holder = me
                    if self.holder is me:
                        return True
                    first = next(iter(self._queue)) is gate
                    if not first and self.holder is None:  # (a hand-off a signal skipped: the first looks again)
                        self._wake_first()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                gate.acquire(timeout=min(left, WAKE_SLICE if first else LATE_SLICE))
        finally:
            with self._guard:
                self._queue.pop(gate, None)
                if self.holder is None:
                    self._hand_on()
                elif self.holder is not me:  # left waiting (deadline, a signal): the next may be first now,
                    self._wake_first()  # and looks every slice from now on

    def let_go(self, me: object) -> None:
        """The token ``me`` lets the lock go, if it holds it: to the first waiter, woken."""
        with self._guard:
            if self.holder is me:
                self.holder = None  # first: a signal before the hand-off leaves the waiters to their next look
                self._hand_on()

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
    the order the tasks came."""

    __slots__ = ("__weakref__", "_queue", "holder")

    def __init__(self) -> None:
        self.holder: object | None = None
        self._queue: dict[asyncio.Future[None], object] = {}  # each waiting task's future -> its token

    async def take(self, me: object, deadline: float) -> bool:
        """``OwnedLock.take``, awaited; cancelled, it holds nothing once its caller let go. A free lock
        nobody waits for is taken with no await (every call of a ``tiger.aio`` client takes its socket's so)."""
        if self.holder is None and not self._queue:
            self.holder = me
            return True
        import asyncio  # here: the blocking client never imports asyncio

        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._queue[woken] = me
            while True:
                if self.holder is None and next(iter(self._queue)) is woken:  # (a hand-off a signal skipped)
                    self.holder = me
                if self.holder is me:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                if woken.done():  # (woken, and the lock not handed to it: wait on a fresh future)
                    del self._queue[woken]
                    woken = asyncio.get_running_loop().create_future()
                    self._queue[woken] = me
                first = next(iter(self._queue)) is woken
                if not first and self.holder is None:  # (a hand-off a signal skipped: the first looks again)
                    self._wake_first()
                await asyncio.wait((woken,), timeout=min(left, WAKE_SLICE if first else LATE_SLICE))
        finally:
            self._queue.pop(woken, None)
            if self.holder is None:
                self._hand_on()
            elif self.holder is not me:  # left waiting (deadline, cancelled): the next may be first now,
                self._wake_first()  # and looks every slice from now on

    def let_go(self, me: object) -> None:
        """``OwnedLock.let_go``: to the first waiting task, woken."""
        if self.holder is me:
            self.holder = None  # first: a signal before the hand-off leaves the waiters to their next look
            self._hand_on()

    def _hand_on(self) -> None:
        if self._queue:
            self.holder = next(iter(self._queue.values()))
            self._wake_first()

    def _wake_first(self) -> None:
        for woken in self._queue:
            _wake(woken)
            return


def _wake(woken: asyncio.Future[None]) -> None:
    """Resolve a waiting task's future, unless its loop was closed under it (a process ending with a loop
    abandoned mid-call: that waiter never runs again; resolving it raised "Event loop is closed", printed
    as "Exception ignored" as the call's coroutine was collected)."""
    if not woken.done() and not woken.get_loop().is_closed():
        woken.set_result(None)
