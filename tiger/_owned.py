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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

WAKE_SLICE = 0.05
"""Seconds a waiter sleeps at most before it looks again (a backstop: ``let_go`` wakes every waiter; a
signal landing between the two leaves them to this)."""


class OwnedLock:
    """One holder at a time among threads, named by its token (``holder``; None: free).

    Not a ``threading.Condition``: its ``wait`` releases the lock before its own ``try``, so a signal's
    exception landing there made the ``with`` around it release the lock again, and the caller got
    ``RuntimeError: cannot release un-acquired lock`` in place of the signal's exception (a test of
    calls under a signal timer). A waiter here waits on a gate of its own, a lock ``let_go`` releases;
    the guard is held only around plain stores, never across a wait."""

    __slots__ = ("__weakref__", "_gates", "_guard", "holder")

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._gates: set[threading.Lock] = set()  # one per waiting thread, held until ``let_go`` wakes it
        self.holder: object | None = None

    def take(self, me: object, deadline: float) -> bool:
        """Make the token ``me`` the holder, waiting for the one holding it until ``deadline``
        (``time.monotonic()`` seconds; ``math.inf``: no limit). Returns False past it, holding nothing."""
        with self._guard:
            if self.holder is None:
                self.holder = me
                return True
        gate = threading.Lock()
        gate.acquire()
        try:
            while True:
                with self._guard:
                    if self.holder is None:
                        self.holder = me
                        return True
                    self._gates.add(gate)
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                gate.acquire(timeout=min(left, WAKE_SLICE))
        finally:
            with self._guard:
                self._gates.discard(gate)
                if self.holder is None:  # (a signal, past the deadline) a wake-up it took goes to the others
                    self._wake()

    def let_go(self, me: object) -> None:
        """The token ``me`` lets the lock go, if it holds it; every waiter is woken, and one takes it."""
        with self._guard:
            if self.holder is me:
                self.holder = None
                self._wake()

    def _wake(self) -> None:
        """Open every waiter's gate (the guard held: only here are gates released)."""
        for gate in self._gates:
            if gate.locked():
                gate.release()


class OwnedAsyncLock:
    """``OwnedLock`` among the tasks of one event loop: ``await lock.take(me, deadline)``."""

    __slots__ = ("__weakref__", "_waiters", "holder")

    def __init__(self) -> None:
        self.holder: object | None = None
        self._waiters: set[asyncio.Future[Any]] = set()

    async def take(self, me: object, deadline: float) -> bool:
        """``OwnedLock.take``, awaited; cancelled, it holds nothing. A free lock is taken with no await
        (every call of a ``tiger.aio`` client takes its socket's so)."""
        import asyncio  # here: the blocking client never imports asyncio

        while self.holder is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            woken = asyncio.get_running_loop().create_future()
            self._waiters.add(woken)
            try:
                await asyncio.wait((woken,), timeout=min(left, WAKE_SLICE))
            finally:
                self._waiters.discard(woken)
        self.holder = me  # (no await since the holder was seen None: no other task came between)
        return True

    def let_go(self, me: object) -> None:
        """``OwnedLock.let_go``: every waiting task is woken, and the first to run takes the lock."""
        if self.holder is me:
            self.holder = None  # first: a signal at the wake-up leaves the waiters to their next look
            for woken in self._waiters:
                if not woken.done():
                    woken.set_result(None)
