"""A client's own calls whose change may still come: in flight, to ask again, asked again.

Theory of operation
-------------------
A client's replica is not sent the changes its own calls make: each comes in the call's
answer, and the replica's ``Sequencer`` applies it in seq order. While such a change may
still come, a gap before a published change is that change on its way, not a loss. This
object keeps track of those calls; the Sequencer asks it (``in_flight``) and the replica
thread sends what it says is ``due``.

Rule 1: it is pure. No sockets, no threads, no clock: the time is passed in, and its
owner (the replica) calls it holding its lock. (Rule 6's ``ended`` is a flag it reads.)

Rule 2: a call is in flight from ``call_started(req_id)`` to ``call_finished(req_id)``, whatever the
outcome. Calls are named by their request id, not counted: a finish said again (a caller's ``finally``
after a signal landed between the answer and its deposit) changes nothing, where a count was left off by
one for good (every later gap waited the whole timeout for a call that would never come).

Rule 3: a call that raised with no answer (``call_finished(unanswered)``) may have been
applied by the writer: its answer came too late. It is asked again once its deadline has
passed, which is after the call's expiry: the writer answers a repeat from the answers it
keeps, or refuses it as expired if it never applied it, so it is never applied late. At
most ``MAX_ASKING`` calls, to ask or asked (and ``MAX_ASKING_BYTES`` of those waiting to be
sent), are kept; a gap beyond them is left to a resync.

Rule 4: a call asked again and not answered within ``timeout`` is forgotten: its answer
was lost too, and a gap it leaves is a resync. A snapshot covers every call asked before
it (``reset``); the calls still to ask are kept, as their answers may come after it.

Rule 5: until forgotten, calls to ask and asked count as in flight, like those not finished.

Rule 6: a call whose caller can no longer take its answer (``ended``: an asyncio call left on an
event loop closed under it, or its client closed while that loop was not running) finishes here as its
owner looks (``abandon_ended``): sent (``call_sent``), it is asked again at once, not after its deadline;
never sent, nothing. Its caller's own end may never come: the coroutine of a task on a closed loop ends
when the garbage collector gets to it, if ever, and until then the gap its change left held every later
write of the replica, a blocking client's sharing it too (pytest-asyncio's loop per test, tiger_aclient:
the plugin's drop of the test's namespace waited its whole timeout, a user trial). Asked before its
expiry, the writer answers it from the answers it keeps, or applies it if the first sending never
reached it (as that sending could have, within its expiry), or refuses it past its expiry: never
applied twice, nor late.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tiger._clock import monotonic, paused_since, wall
from tiger._errors import shown

# seconds past a deadline that say this process was not running as it passed (SIGSTOP, a debugger, a suspended
# laptop): what arrived meanwhile is queued, unread, so a wait past it looks once more, up to this long
PAUSE_GRACE = 0.1


class Stretched(float):
    """A deadline ``stretched`` once already: a wait looks once more, not again and again."""

    __slots__ = ()


def stretched(deadline: float, now: float) -> float:
    """The deadline a wait goes on with (``time.monotonic()`` seconds): ``deadline``, or ``now + PAUSE_GRACE``
    when ``now`` is more than ``PAUSE_GRACE`` past it (the process was not running as it passed: what arrived
    meanwhile, queued, gets that long to land before the wait gives up). Once per wait: a deadline stretched
    already is kept (a loop or thread that keeps waking late, an event loop with a task that computes for
    0.15 s between awaits, found itself past every stretched deadline too, and its waits never timed out)."""
    if type(deadline) is Stretched or now - deadline <= PAUSE_GRACE:
        return deadline
    return Stretched(now + PAUSE_GRACE)


class WaitDeadline:
    """A wait's deadline (``time.monotonic()`` seconds) as it goes on: moved by every pause of this process
    found since the wait (or the call it is a step of) ``began`` (``paused_since``), and ``stretched`` by
    ``PAUSE_GRACE`` once when found past it, until a pause found moves it again. A pause found only after the
    stretch (by another thread: the replica's finds most, a moment after the process resumed) moves the
    deadline from where it was before the stretch: added to the stretched one, a stop of 10 s found 0.1 s late
    was counted twice, and a wait that could not succeed raised 10 s late (a review). ``first``: the deadline
    moved by pauses only (what ``Replica.wait_until``'s ``extend`` is given)."""

    __slots__ = ("_began", "_counted", "_grace", "first", "moved")

    def __init__(self, deadline: float, began: float) -> None:
        self.first = self.moved = deadline  # ``moved``: also replaced by a later deadline (``extend``)
        self._began, self._counted, self._grace = began, 0.0, math.inf

    def at(self, now: float) -> float:
        """The deadline at ``now``: ``moved``, or its one stretch if later."""
        paused = paused_since(self._began)
        if paused > self._counted:
            step, self._counted = paused - self._counted, paused
            self.first, self.moved, self._grace = self.first + step, self.moved + step, math.inf
        if math.isinf(self._grace) and now - self.moved > PAUSE_GRACE:
            self._grace = now + PAUSE_GRACE  # (once, until a pause found moves it: see ``stretched``)
        return self.moved if math.isinf(self._grace) else max(self.moved, self._grace)


MAX_SECONDS = 86_400.0  # the longest timeout or wait tiger takes (a day): a clock, poll or lock given more overflows


def check_seconds(value: object, what: str, *, positive: bool = False, no_limit: bool = False) -> float | None:
    """A timeout in seconds: an int or a float (not a bool), from 0 (above 0 when ``positive``) to
    ``MAX_SECONDS``; None where ``no_limit`` (no limit; returned as None). Infinity and NaN are refused:
    the clocks, polls and locks underneath take none (``math.inf`` reached ``OverflowError`` there).
    Raises, naming ``what`` (as tiger's other argument checks do): ``TypeError`` for another type (a
    str, a bool; None where not ``no_limit``), ``ValueError`` for a number out of that range."""
    if value is None and no_limit:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        allowed = "an int or a float, or None for no limit" if no_limit else "an int or a float"
        given = "None" if value is None else f"{type(value).__name__} {shown(value)}"
        raise TypeError(f"{what} must be a number of seconds ({allowed}), not {given}")
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        seconds = math.inf
    if not ((seconds > 0 if positive else seconds >= 0) and seconds <= MAX_SECONDS):  # (NaN: neither)
        lowest = "above 0" if positive else "from 0"
        hint = "; None waits without limit" if no_limit else ""
        raise ValueError(f"{what} must be a number of seconds {lowest} to {MAX_SECONDS:g} (a day), got {shown(value)}{hint}")
    return seconds


def callable_name(function: object) -> str:
    """How errors name a user's callable: its qualified name, or its class's for an instance."""
    return getattr(function, "__qualname__", None) or type(function).__qualname__


MAX_ASKING = 1024  # calls asked again at once, at most (as many answers as a writer keeps, ``ANSWERS_KEPT_MAX``);
# a gap beyond them is left to a resync (64 were outrun by a storm of signals interrupting hundreds of calls)
MAX_ASKING_BYTES = 64 << 20  # and the bytes they hold

Unanswered = tuple[int, bytes, float]  # a call that raised with no answer: (request id, its bytes, its deadline)


class PendingCalls:
    """This client's calls whose change may still come in an answer (see the module's rules)."""

    def __init__(self, timeout: float, max_asking: int = MAX_ASKING, max_asking_bytes: int = MAX_ASKING_BYTES) -> None:
        self._timeout = timeout  # seconds an answer to a call asked again can take (the client's timeout)
        self._max_asking = max_asking
        self._max_asking_bytes = max_asking_bytes
        self._writing: set[int] = set()  # request ids of the calls started and not finished
        self._ended: dict[int, Callable[[], bool]] = {}  # of those, the ones whose caller may end unseen (Rule 6)
        self._sent: dict[int, tuple[bytes, float]] = {}  # of those, the ones sent -> (bytes, deadline)
        self._to_ask: dict[int, tuple[bytes, float]] = {}  # req id -> (bytes, deadline): to ask again
        self._asked: dict[int, float] = {}  # req id asked again -> when

    @property
    def writing(self) -> int:
        """Calls started and not finished."""
        return len(self._writing)

    @property
    def asking(self) -> int:
        """Calls that raised unanswered and are still to be asked again, or asked and not yet answered."""
        return len(self._to_ask) + len(self._asked)

    @property
    def in_flight(self) -> bool:
        """Whether a change of this client's may still come in an answer (a gap may be it)."""
        return bool(self._writing or self._to_ask or self._asked)

    def writing_call(self, req_id: int) -> bool:
        """Whether the call ``req_id`` is started and not finished (a read its own caller may make
        without its owner's lock: only that caller starts or finishes it)."""
        return req_id in self._writing

    @property
    def ending(self) -> bool:
        """Whether a call in flight has a caller that may end unseen (``abandon_ended`` has work)."""
        return bool(self._ended)

    def call_started(self, req_id: int, ended: Callable[[], bool] | None = None) -> None:
        """The call ``req_id`` is about to be sent: its change will come in its answer. ``ended``: says
        whether its caller can no longer take that answer (an asyncio call: its loop's ``is_closed``)."""
        self._writing.add(req_id)
        if ended is not None:
            self._ended[req_id] = ended

    def call_sent(self, req_id: int, payload: bytes, deadline: float) -> None:
        """The call ``req_id``, started with ``ended``, is being sent: its bytes, asked again if it is
        abandoned (Rule 6)."""
        if req_id in self._ended:
            self._sent[req_id] = (payload, deadline)

    def abandon_ended(self, now: float) -> int:
        """Finish the calls whose caller ended (Rule 6): those sent are asked again from ``now``. Returns
        how many were finished."""
        ended = [req_id for req_id, gone in list(self._ended.items()) if gone()]
        for req_id in ended:
            sent = self._sent.get(req_id)
            self.call_finished(req_id, None if sent is None else (req_id, sent[0], now))
        return len(ended)

    def call_finished(self, req_id: int, unanswered: Unanswered | None = None) -> None:
        """The call ``req_id`` ended: answered (its change deposited), refused, or raised. A call not in
        flight (finished already, or never started) changes nothing (Rule 2).

        ``unanswered`` (its request id, bytes and deadline) when it raised with no answer: kept to be
        asked again after its deadline (Rule 3), unless that goes beyond the bounds.
        """
        if req_id not in self._writing:
            return
        self._writing.discard(req_id)
        if self._ended:
            self._ended.pop(req_id, None)
            self._sent.pop(req_id, None)
        if unanswered is not None and self.asking < self._max_asking:
            req_id, payload, deadline = unanswered
            if sum(len(b) for b, _ in self._to_ask.values()) + len(payload) <= self._max_asking_bytes:
                self._to_ask[req_id] = (payload, deadline)

    def next_due(self) -> float | None:
        """When the first call still to ask again is due (its deadline); None when there is none."""
        return min((deadline for _, deadline in self._to_ask.values()), default=None)

    def due(self, now: float) -> list[bytes]:
        """The calls to send again now (their deadline has passed); forgets those asked longer ago than the timeout."""
        due: list[bytes] = []
        for req_id, (payload, deadline) in list(self._to_ask.items()):
            if now >= deadline:
                del self._to_ask[req_id]
                self._asked[req_id] = now
                due.append(payload)
        for req_id in [r for r, at in self._asked.items() if now - at > self._timeout]:
            del self._asked[req_id]  # its answer was lost too: a gap it leaves is a resync
        return due

    def answered(self, req_id: int) -> None:
        """The answer to a call that raised unanswered arrived: to its asking again, or late on the
        client's command socket before it was asked (its change, if any, is deposited by the caller).
        Either way it is not asked (again)."""
        self._asked.pop(req_id, None)
        self._to_ask.pop(req_id, None)

    def reset(self) -> None:
        """A snapshot was loaded: it covers what the calls asked before it applied."""
        self._asked.clear()

    def check(self) -> None:
        """Assert the invariants (for tests)."""
        assert not self._to_ask.keys() & self._asked.keys(), "a call both to ask and asked"
        assert self._sent.keys() <= self._ended.keys() <= self._writing, "a call abandonable and not in flight"
        assert self.asking <= self._max_asking, f"{self.asking} calls asked again, more than {self._max_asking}"
        held = sum(len(b) for b, _ in self._to_ask.values())
        assert held <= self._max_asking_bytes, f"{held} bytes to ask again, more than {self._max_asking_bytes}"


GIVE_UP = -1  # Attempts.wait: the deadline has passed
RESEND = 0  # Attempts.wait: send the call again (on a fresh socket) now
PROBE = -2  # Attempts.wait: probe the handshake now (connect's hello, unanswered a moment), then wait on


class Attempts:
    """One call's Lazy Pirate schedule (the ZeroMQ guide, chapter 4, client-side reliability): wait for its
    answer; with none within ``resend_every`` seconds, send the same bytes again on a fresh socket (the
    writer answers a repeat with its first answer); at ``deadline``, give up (the socket is dropped with
    what it still queued). Pure: the time (``time.monotonic()`` seconds) is passed in. Both clients, the
    blocking and the asyncio one, move their bytes by it.

    ``probe_after`` (seconds; connect's hello): with no answer by then, and before the first resend, ``PROBE``
    once, the socket left as it is: a handshake that failed (a wrong CurveZMQ key) was found only at the first
    resend, a second in, where `tiger stats` said it in a quarter of one."""

    def __init__(self, now: float, deadline: float, resend_every: float, probe_after: float | None = None) -> None:
        self.deadline = deadline
        self._every = resend_every
        self._resend_at = now + resend_every
        self._probe_at = None if probe_after is None or probe_after >= resend_every else now + probe_after

    def wait(self, now: float) -> int:
        """Milliseconds to wait for the answer now (at least 1), or ``PROBE``, ``RESEND`` or ``GIVE_UP``."""
        if now >= self.deadline:
            return GIVE_UP
        if self._probe_at is not None and now >= self._probe_at:
            self._probe_at = None
            return PROBE
        if now >= self._resend_at:
            self._resend_at = now + self._every
            return RESEND
        until = min(self.deadline, self._resend_at if self._probe_at is None else self._probe_at)
        return max(1, int((until - now) * 1000))


def clock_offset(sent: float, received: float, info: dict[str, Any]) -> float | None:
    """The writer's clock minus this process's, from one Hello round trip (``time.time()`` at send and
    receipt; ``info``: the Hello's result, its ``time`` the writer's): its time minus the round trip's
    midpoint (NTP's rule). None for a writer that sent no clock sample."""
    if "time" not in info:
        return None
    return float(info["time"]) - (sent + received) / 2


# bytes: a call this big is big: its client resends it sparingly and gives it a wider margin before its deadline,
# its writer looks it up (a resend? expired?) before decoding it whole (``_protocol.peek_call``)
BIG_CALL = 64 * 1024
COMMIT_RATE = 20e6  # bytes a second the writer is counted on to commit and answer a call after judging it


def call_expiry(deadline: float, offset: float, size: int = 0) -> tuple[float, float]:
    """When a call sent now, given up at ``deadline`` (``time.monotonic()`` seconds), expires at the writer:
    on its clock (``time.time()`` plus ``offset``, ``clock_offset``'s), a margin before the deadline, so that
    the writer refuses it before the caller gives up and it is never applied late. The margin: 0.5 s, and
    a second more per ``COMMIT_RATE`` bytes of the request (``size``: after judging a call the writer still
    logs, applies and answers it, and a 300k-record batch took it over 0.5 s on busy cores), at most a fifth
    of the time left. Returns (expiry, margin) in seconds."""
    now = monotonic()
    margin = min(0.5 + size / COMMIT_RATE, 0.2 * (deadline - now))
    return wall() + offset + (deadline - now) - margin, margin


def resend_interval(timeout: float, seconds: float, size: int) -> float:
    """Seconds without an answer before a call goes again (Lazy Pirate): ``min(1, timeout / 3)`` of the
    client's ``timeout``; a big call (``BIG_CALL`` bytes and more) no sooner than a fifth of its own
    ``seconds``, nor later than 2 s and a second per ``COMMIT_RATE`` bytes: a busy writer queues every copy
    whole (a 300k-record seed given 35 s was sent 30 times), and a writer that is gone is found at a resend
    (a fifth of a long timeout found it minutes late)."""
    interval = min(1.0, timeout / 3)
    return max(interval, min(seconds / 5, 2.0 + size / COMMIT_RATE)) if size >= BIG_CALL else interval
