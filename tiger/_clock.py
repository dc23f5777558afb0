"""The clocks tiger reads, in every process: ones a test's fake clock does not reach.

Test suites fake the clock of their own process: freezegun's ``freeze_time`` replaces ``time.time``,
``time.monotonic`` and ``time.perf_counter`` (in the ``time`` module and wherever a module imported
them); time-machine's ``travel`` patches ``time.time`` and ``time.clock_gettime(CLOCK_REALTIME)`` in C.
tiger's client runs in that process, and its clocks must not move with the test's: a call's expiry
is on the writer's real clock (under a clock frozen in 2012, every write "arrived after its deadline
(470062846s late)"; under one in 2040, a call given up long ago would still be applied), and a wait's
deadline frozen never comes (``wait_for(id, timeout=0.3)`` waited for ever). Neither library touches
``clock_gettime(CLOCK_MONOTONIC)``, nor freezegun ``clock_gettime`` at all; time-machine's own escape
hatch gives the real time while it travels. ``created`` and every other timestamp a record gets come
from the writer's clock, in its own process: a test's fake clock does not reach them either.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["PAUSE_OVER", "Mark", "last_pause_end", "mark", "monotonic", "moved", "overslept", "paused_since", "unpaused", "wall"]

_modules = sys.modules
try:
    _clock_gettime = time.clock_gettime  # (the object itself: time-machine patches inside it, freezegun never)
    _MONOTONIC: int = time.CLOCK_MONOTONIC
    _REALTIME: int = time.CLOCK_REALTIME
except AttributeError:  # no clock_gettime (Windows): time's own functions, as they are now
    _MONOTONIC = _REALTIME = -1


def monotonic() -> float:
    """Seconds of ``CLOCK_MONOTONIC`` (``time.monotonic``'s clock on Linux), real under freezegun and
    time-machine: deadlines, timeouts, silences."""
    if _MONOTONIC < 0:
        return time.monotonic()
    return _clock_gettime(_MONOTONIC)


def wall() -> float:
    """Seconds since 1970 (``CLOCK_REALTIME``, ``time.time``'s clock), the real time under freezegun and while
    time-machine travels (its ``escape_hatch``): a call's expiry on the writer's clock, clock samples,
    files' ages, ``created``."""
    if "time_machine" in _modules:
        hatch = getattr(_modules["time_machine"], "escape_hatch", None)
        if hatch is not None and hatch.is_travelling():
            return float(hatch.time.time())
    if _REALTIME < 0:
        return time.time()
    return _clock_gettime(_REALTIME)


# seconds a wait may wake later than it asked before tiger takes the difference for time this process was not
# running (SIGSTOP then SIGCONT, Ctrl-Z then fg on a pytest run): a thread on 2 busy cores wakes late by
# milliseconds, one waiting for a GIL that C code holds by tens of them
PAUSE_OVER = 1.0
_PAUSES_KEPT = 64  # the latest pauses ``paused_since`` can count (a wait longer than 64 pauses counts the latest)
_pauses: list[tuple[float, float]] = []  # (began, ended) in ``monotonic()`` seconds, sorted, disjoint
_pauses_lock = threading.RLock()  # (re-entrant: a signal handler's close() may land inside ``paused_since``)


def _new_lock() -> None:
    global _pauses_lock
    _pauses_lock = threading.RLock()  # (a child forked while another thread held it would wait on it for ever)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)

Mark = tuple[float, float]  # (``monotonic()``, this process's CPU seconds): when a wait began, for ``overslept``


def mark() -> Mark:
    """Now, as ``overslept`` takes it: ``monotonic()`` and this process's CPU time (``time.process_time()``)."""
    return monotonic(), time.process_time()


def overslept(since: Mark, asked: float, now: float | None = None, keep: bool = True) -> float:
    """Seconds a wait begun at ``since`` (``mark()``) for at most ``asked`` seconds woke later than that, when
    more than ``PAUSE_OVER`` while the process used less CPU than half as long: it was not running
    (SIGSTOP, Ctrl-Z then fg, a machine starved of CPU; a ``pytest -n 4`` worker stopped 5 s as it connected
    failed "no snapshot within 5.0s", and the run was aborted); else 0 (a thread late because the process
    worked meanwhile, C code holding the GIL, a replica loading a snapshot under its lock, is no pause). The
    pause is kept for ``paused_since`` (every thread of a stopped process finds it: counted once); with
    ``keep=False``, only returned (what a thread cannot tell from its own time blocked: a signal handler or a
    finalizer run in it, waiting for a lock, is no pause of the process)."""
    began, cpu = since
    if now is None:
        now = monotonic()
    late = now - began - asked
    if late <= PAUSE_OVER or time.process_time() - cpu > late / 2:
        return 0.0
    if not keep:
        return late
    with _pauses_lock:
        merged: list[tuple[float, float]] = []
        for start, end in sorted([*_pauses, (now - late, now)]):
            if merged and start <= merged[-1][1]:  # overlapping: one pause
                merged[-1] = (merged[-1][0], max(merged[-1][1], end))
            else:
                merged.append((start, end))
        _pauses[:] = merged[-_PAUSES_KEPT:]
    return late


def paused_since(mark: float) -> float:
    """Seconds since ``mark`` (``monotonic()``) that a wait of this process found it not running (``overslept``)."""
    with _pauses_lock:
        return sum(max(0.0, end - max(start, mark)) for start, end in _pauses if end > mark)


def last_pause_end() -> float:
    """When the latest pause found ended (``monotonic()``; -inf: none)."""
    with _pauses_lock:
        return _pauses[-1][1] if _pauses else -math.inf


def unpaused(deadline: float, since: float) -> float:
    """``deadline`` (``monotonic()``) of a call that began at ``since``, moved by every pause found since: what
    a call made of several steps gives its next step, which counts from its own start only the pauses it
    finds. (A pause is found by the first wait that ends late after it, often the replica thread's, a moment
    after the step that slept through it: a step that must count that one too is given ``since`` itself.)"""
    return deadline + paused_since(since)


def moved(deadline: float, began: float, counted: float, found: Callable[[float], float] | None = None) -> tuple[float, float]:
    """A wait's ``deadline`` (``monotonic()``) moved by the pauses found since it ``began``, beyond the ``counted``
    ones; and the pauses counted now. Time this process was not running does not count against a wait.
    ``found``: what tells the pauses since a time, when not ``paused_since`` (a ``PauseWatch``'s, which also
    counts one going on that its thread has not yet looked at)."""
    paused = (found or paused_since)(began)
    if paused <= counted:
        return deadline, counted
    return deadline + paused - counted, paused
