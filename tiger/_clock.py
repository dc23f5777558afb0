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

import sys
import time

__all__ = ["monotonic", "wall"]

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
