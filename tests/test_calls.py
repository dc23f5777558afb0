"""PendingCalls without sockets: a client's own calls in flight, to ask again and asked, on a fake clock.

The replica thread calls ``due`` with the time and sends what it returns; here the time is a
number the test moves, and "sending" is reading the returned list.
"""

from __future__ import annotations

import secrets
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiger._calls import MAX_ASKING, MAX_ASKING_BYTES, PAUSE_GRACE, PendingCalls, call_expiry, resend_interval, stretched
from tiger._clock import PAUSE_OVER, overslept, paused_since
from tiger._replica import Sequencer
from tiger._table import Change, Store, prepare_insert

T0 = 1000.0  # the replica's clock, as it passes it in
TIMEOUT = 2.0  # the client's timeout: how long an answer to a call asked again can take
EPOCH = "e" * 16


@pytest.fixture
def calls() -> PendingCalls:
    return PendingCalls(TIMEOUT)


def _raised(calls: PendingCalls, req_id: int, deadline: float, payload: bytes | None = None) -> bytes:
    """A call started and raised with no answer; returns its bytes."""
    payload = f"call {req_id}".encode() if payload is None else payload
    calls.call_started(req_id)
    calls.call_finished(req_id, (req_id, payload, deadline))
    calls.check()
    return payload


def test_a_call_is_in_flight_from_its_start_until_it_finished(calls):
    assert not calls.in_flight
    calls.call_started(1)
    calls.call_started(2)
    assert calls.in_flight and calls.writing == 2
    calls.call_finished(1)  # answered: its change deposited
    assert calls.in_flight
    calls.call_finished(2)  # refused by an error answer: nothing to deposit
    assert not calls.in_flight and calls.writing == 0 and calls.asking == 0
    assert calls.due(T0 + 3600) == []  # neither is asked again
    calls.check()


def test_a_signal_between_a_calls_answer_and_its_deposit_left_it_in_flight_for_good(calls):
    # Calls were counted: the count went up before the caller's ``try`` and down when the answer was
    # deposited, so an interrupt in either window left it one too high for good, and every later gap
    # waited the whole timeout for a change that would never come. Calls are named now, and a finish
    # said again (the caller's safety net) or for a call never started changes nothing.
    calls.call_started(1)
    calls.call_finished(1)  # the answer taken
    calls.call_finished(1)  # the caller's ``except`` after a signal landed before the deposit
    calls.call_finished(2)  # a signal before ``call_started(2)``: never started
    assert not calls.in_flight and calls.writing == 0 and calls.asking == 0
    calls.call_started(3)
    calls.call_finished(1, (1, b"call 1", T0))  # said again with its bytes: not asked again either
    assert calls.writing == 1 and calls.asking == 0
    calls.check()


def test_a_call_that_raised_unanswered_is_asked_again_only_after_its_deadline(calls):
    payload = _raised(calls, 1, deadline=T0 + 3)
    assert calls.writing == 0 and calls.asking == 1
    assert calls.in_flight  # the writer may have applied it: its change may still come
    assert calls.due(T0) == []
    assert calls.due(T0 + 2.999) == []  # still live at the writer: asked now, it could apply
    assert calls.due(T0 + 3) == [payload]
    assert calls.due(T0 + 3.5) == []  # asked once
    assert calls.in_flight and calls.asking == 1  # asked, its answer awaited
    calls.check()


def test_an_answer_to_a_call_asked_again_ends_it(calls):
    _raised(calls, 7, deadline=T0)
    assert calls.due(T0) == [b"call 7"]
    calls.answered(7)
    assert not calls.in_flight and calls.asking == 0
    calls.answered(7)  # a duplicate, or an answer to a call forgotten already: nothing to do
    calls.answered(8)
    assert not calls.in_flight
    calls.check()


def test_an_answer_read_late_before_the_call_was_asked_again_ends_it_unasked(calls):
    # A storm of signals interrupting writes after they were sent: their answers, read late by the client's
    # next calls, now fill the gaps at once; the calls are then not asked again at their deadline.
    _raised(calls, 7, deadline=T0 + 3)
    _raised(calls, 8, deadline=T0 + 4)
    assert calls.next_due() == T0 + 3
    calls.answered(7)
    assert calls.next_due() == T0 + 4 and calls.asking == 1
    assert calls.due(T0 + 5) == [b"call 8"]
    assert calls.next_due() is None  # asked: nothing more is due
    calls.check()


def test_an_asked_call_whose_answer_never_comes_is_forgotten_after_the_timeout(calls):
    _raised(calls, 1, deadline=T0)
    assert calls.due(T0) == [b"call 1"]
    assert calls.due(T0 + TIMEOUT) == [] and calls.in_flight  # an answer can take this long
    assert calls.due(T0 + TIMEOUT + 0.001) == []
    assert not calls.in_flight and calls.asking == 0  # its answer was lost too: a gap it leaves is a resync
    calls.check()


def test_a_call_whose_event_loop_closed_under_it_is_asked_again_at_once_if_it_was_sent(calls):
    # Rule 6: its coroutine ends when the garbage collector gets to it, if ever: meanwhile the gap its change
    # left held the replica's later writes (a blocking client's sharing it too) until its deadline and past.
    closed = {1: False, 2: False, 3: False}
    for req_id in closed:
        calls.call_started(req_id, lambda req_id=req_id: closed[req_id])
    calls.call_sent(1, b"call 1", T0 + 5)
    calls.call_sent(3, b"call 3", T0 + 5)  # (3 is answered, its loop then closed: nothing to do)
    calls.call_finished(3)
    calls.call_started(4)  # a blocking call: never ended unseen
    calls.call_sent(4, b"call 4", T0 + 5)  # (not started with ``ended``: nothing kept)
    assert calls.ending and calls.abandon_ended(T0) == 0  # every loop still open
    closed.update({1: True, 2: True, 3: True})
    assert calls.abandon_ended(T0) == 2  # 1 sent, 2 still waiting for the socket
    assert calls.writing == 1 and not calls.ending  # 4 goes on
    assert calls.due(T0) == [b"call 1"]  # at once, not at its deadline; 2, never sent, is not sent now
    calls.call_finished(1, (1, b"call 1", T0 + 5))  # its coroutine collected later: nothing changes
    calls.call_finished(2)
    assert calls.asking == 1 and calls.due(T0 + 5) == []
    calls.check()


def test_calls_asked_again_are_bounded_by_count_counting_those_asked(calls):
    for req_id in range(1, MAX_ASKING):
        _raised(calls, req_id, deadline=T0)
    assert calls.due(T0) == [f"call {r}".encode() for r in range(1, MAX_ASKING)]  # asked, still counted
    _raised(calls, MAX_ASKING, deadline=T0 + 1)
    assert calls.asking == MAX_ASKING
    _raised(calls, MAX_ASKING + 1, deadline=T0 + 1)  # one too many: a gap it leaves is left to a resync
    assert calls.asking == MAX_ASKING and calls.writing == 0
    assert calls.due(T0 + 1) == [f"call {MAX_ASKING}".encode()]
    calls.answered(1)
    _raised(calls, MAX_ASKING + 2, deadline=T0 + 1)  # room again
    assert calls.due(T0 + 1) == [f"call {MAX_ASKING + 2}".encode()]


def test_calls_to_ask_again_are_bounded_by_the_bytes_they_hold():
    calls = PendingCalls(TIMEOUT, max_asking_bytes=100)
    _raised(calls, 1, deadline=T0 + 1, payload=b"a" * 60)
    _raised(calls, 2, deadline=T0 + 1, payload=b"b" * 41)  # 101 bytes: dropped
    assert calls.asking == 1
    _raised(calls, 3, deadline=T0 + 1, payload=b"c" * 40)  # exactly 100: kept
    assert calls.asking == 2
    assert calls.due(T0 + 1) == [b"a" * 60, b"c" * 40]
    _raised(calls, 4, deadline=T0 + 2, payload=b"d" * 100)  # sent calls hold no bytes any more
    assert calls.asking == 3
    calls.check()


def test_the_default_byte_bound_is_max_asking_bytes(calls):
    big = bytes(MAX_ASKING_BYTES // 2)
    _raised(calls, 1, deadline=T0, payload=big)
    _raised(calls, 2, deadline=T0, payload=big)
    _raised(calls, 3, deadline=T0, payload=b"x")
    assert calls.asking == 2
    calls.check()


def test_reset_after_a_snapshot_forgets_the_calls_asked_and_keeps_those_still_to_ask(calls):
    _raised(calls, 1, deadline=T0)
    assert calls.due(T0) == [b"call 1"]
    _raised(calls, 2, deadline=T0 + 1)  # its deadline is after the snapshot: the writer may apply it still
    calls.call_started(3)  # and one in flight
    calls.reset()
    assert calls.asking == 1 and calls.writing == 1
    assert calls.due(T0 + 1) == [b"call 2"]
    calls.check()


# -- with the Sequencer: when a gap is a loss --------------------------------------------


class Writer:
    """A writer's store handing out numbered changes, as the writer process does."""

    def __init__(self) -> None:
        self.store = Store()
        self.seq = 0

    def insert(self) -> tuple[int, Change]:
        change = prepare_insert(self.store, "t", "global", None, [{"n": self.seq}], create=False, now=1, token=secrets.token_hex)
        self.store.apply(change)
        self.seq += 1
        return self.seq, change


@pytest.fixture
def sequencer(calls) -> Sequencer:
    sequencer = Sequencer(Store(), calls, patience=2 * TIMEOUT)
    sequencer.reset(EPOCH, 0)
    return sequencer


def test_a_gap_while_a_call_is_in_flight_is_not_a_loss_but_becomes_one_after_it_finished(calls, sequencer):
    writer = Writer()
    calls.call_started(1)
    writer.insert()  # the call's change: its answer is lost
    sequencer.published(*writer.insert())
    assert sequencer.lost(T0) is None
    calls.call_finished(1)  # refused, say: nothing to deposit, nothing to ask
    assert sequencer.lost(T0) == "gap: got seq 2 after 0"


def test_a_gap_left_by_a_call_asked_again_is_a_loss_once_its_answer_is_forgotten(calls, sequencer):
    writer = Writer()
    calls.call_started(1)
    writer.insert()
    sequencer.published(*writer.insert())
    calls.call_finished(1, (1, b"call 1", T0))
    assert sequencer.lost(T0) is None  # to ask again
    assert calls.due(T0) == [b"call 1"]
    assert sequencer.lost(T0 + TIMEOUT) is None  # asked, its answer awaited
    assert calls.due(T0 + TIMEOUT + 0.001) == []
    assert sequencer.lost(T0 + TIMEOUT + 0.001) == "gap: got seq 2 after 0"


def test_a_gap_filled_by_the_answer_to_a_call_asked_again_is_no_loss(calls, sequencer):
    writer = Writer()
    calls.call_started(1)
    own = writer.insert()
    sequencer.published(*writer.insert())
    calls.call_finished(1, (1, b"call 1", T0))
    assert calls.due(T0) == [b"call 1"]
    calls.answered(1)  # the writer's kept answer: the replica deposits its change
    sequencer.deposit(EPOCH, *own)
    assert sequencer.seq == 2 and sequencer.lost(T0 + 1) is None
    assert sequencer.store.content() == writer.store.content()


# -- any sequence of events --------------------------------------------------------------

_EVENTS = st.one_of(
    st.just(("start",)),
    st.tuples(st.just("answered"), st.none()),  # answered or refused: nothing to ask again
    st.tuples(st.just("raised"), st.integers(1, 60), st.integers(0, 3000)),  # bytes, deadline after now (ms)
    st.tuples(st.just("tick"), st.integers(0, 3000)),  # ms
    st.tuples(st.just("answer"), st.integers(0, 10)),  # which of the asked calls (if any)
    st.just(("reset",)),
    st.tuples(st.just("again"), st.integers(0, 10)),  # a call finished once more (a caller's finally)
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_EVENTS, max_size=60))
def test_any_sequence_of_calls_keeps_the_bounds_asks_each_once_after_its_deadline_and_settles(events):
    """Checked against the test's own account of the calls to ask (payload -> deadline) and asked
    (payload -> request id and when)."""
    calls = PendingCalls(TIMEOUT, max_asking=4, max_asking_bytes=100)
    now, req_ids = T0, iter(range(1, 10_000))
    started: list[int] = []  # request ids in flight
    finished: list[int] = []
    to_ask: dict[bytes, tuple[int, float]] = {}
    asked: dict[bytes, tuple[int, float]] = {}
    sent: set[bytes] = set()
    for event in events:
        if event[0] == "start":
            req_id = next(req_ids)
            calls.call_started(req_id)
            started.append(req_id)
        elif event[0] == "answered" and started:
            calls.call_finished(started[0])
            finished.append(started.pop(0))
        elif event[0] == "again" and finished:
            req_id = finished[event[1] % len(finished)]
            calls.call_finished(req_id, (req_id, b"again", now))  # ignored: neither in flight nor to ask
        elif event[0] == "raised" and started:
            req_id = started.pop(0)
            finished.append(req_id)
            payload = f"{req_id}/".encode() + bytes(event[1])
            deadline = now + event[2] / 1000
            calls.call_finished(req_id, (req_id, payload, deadline))
            if len(to_ask) + len(asked) < 4 and sum(map(len, to_ask)) + len(payload) <= 100:
                to_ask[payload] = (req_id, deadline)
        elif event[0] == "tick":
            now += event[1] / 1000
            due = calls.due(now)
            assert len(due) == len(set(due)) and not set(due) & sent  # each asked once
            assert set(due) == {p for p, (_, d) in to_ask.items() if d <= now}  # once its deadline passed, not before
            for p in due:
                asked[p] = (to_ask.pop(p)[0], now)
            sent.update(due)
            asked = {p: (r, at) for p, (r, at) in asked.items() if now - at <= TIMEOUT}  # forgotten
        elif event[0] == "answer" and asked:
            payload = sorted(asked)[event[1] % len(asked)]
            calls.answered(asked.pop(payload)[0])
        elif event[0] == "reset":
            calls.reset()
            asked.clear()
        calls.check()
        assert calls.writing == len(started)
        assert calls.asking == len(to_ask) + len(asked)
        assert calls.in_flight == bool(started or to_ask or asked)
    for req_id in started:
        calls.call_finished(req_id)
    assert set(calls.due(now + 3600)) == set(to_ask)  # every call still to ask is asked...
    calls.due(now + 3600 + TIMEOUT + 1)  # ...and, with no answer, forgotten
    assert not calls.in_flight
    calls.check()


def test_lazy_pirate_attempts_wait_resend_every_interval_and_give_up_at_the_deadline():
    from tiger._calls import GIVE_UP, RESEND, Attempts

    attempts = Attempts(now=100.0, deadline=105.0, resend_every=1.0)
    assert attempts.wait(100.0) == 1000  # ms until the first resend
    assert attempts.wait(100.75) == 250
    assert attempts.wait(101.0) == RESEND
    assert attempts.wait(101.0) == 1000  # the next resend is an interval after this one
    assert attempts.wait(104.5) == RESEND
    assert attempts.wait(104.6) == 400  # the deadline comes before the next resend
    assert attempts.wait(104.9999999) == 1  # never a zero (poll forever) or negative wait
    assert attempts.wait(105.0) == GIVE_UP
    assert attempts.wait(106.0) == GIVE_UP


def test_connects_hello_probed_its_handshake_only_at_the_first_resend_a_second_in():
    # a wrong CurveZMQ key was said by connect after 1.0 s, by `tiger stats` after 0.25 s: the hello is now
    # probed once after probe_after seconds without an answer, the socket left as it is (no resend)
    from tiger._calls import GIVE_UP, PROBE, RESEND, Attempts

    attempts = Attempts(now=100.0, deadline=105.0, resend_every=1.0, probe_after=0.25)
    assert attempts.wait(100.0) == 250  # ms until the probe, not the resend
    assert attempts.wait(100.25) == PROBE
    assert attempts.wait(100.5) == 500  # once: then the resends as before
    assert attempts.wait(101.0) == RESEND
    assert attempts.wait(101.0) == 1000
    late = Attempts(now=100.0, deadline=100.9, resend_every=0.3, probe_after=0.25)
    assert late.wait(100.125) == 125
    assert late.wait(100.3) == PROBE  # a probe due is made before a resend due at the same time
    assert late.wait(100.3) == RESEND
    short = Attempts(now=100.0, deadline=100.5, resend_every=0.125, probe_after=0.25)  # resends come first:
    assert short.wait(100.0) == 125  # no probe of its own (the resend's probes the handshake)
    assert short.wait(100.25) == RESEND
    soon = Attempts(now=100.0, deadline=100.125, resend_every=1.0, probe_after=0.25)  # a review: the probe's
    assert soon.wait(100.0) == 125  # wait went past a deadline before it (a command's, its lookup taken)
    assert soon.wait(100.125) == GIVE_UP


def test_a_wait_that_kept_waking_late_stretched_its_deadline_for_ever():
    # each wake-up more than PAUSE_GRACE late (a thread holding the interpreter in long C calls, a busy
    # event loop) was taken for a pause and stretched the deadline again: the wait never timed out
    deadline = 10.0
    first = stretched(deadline, 10.5)  # late: a pause, maybe; one more look
    assert first == 10.5 + PAUSE_GRACE
    assert stretched(first, 10.5 + PAUSE_GRACE + 0.5) == first  # late again: no more looks, it is past
    assert stretched(deadline, 10.05) == deadline  # within the grace: not a pause


def test_a_big_batch_given_a_long_timeout_was_sent_again_every_second():
    # a seed's one write given 35 s (300k records) went again, whole, every second: a busy writer queued each copy
    assert resend_interval(5.0, 35.0, 20 * 2**20) == pytest.approx(2.0 + 20 * 2**20 / 20e6)  # not every second
    assert resend_interval(5.0, 5.0, 20 * 2**20) == 1.0  # a fifth of its own time
    assert resend_interval(5.0, 600.0, 100_000) == pytest.approx(2.005)  # a gone writer is still found soon
    assert resend_interval(5.0, 35.0, 2000) == 1.0  # a small call as before: min(1, timeout / 3)
    assert resend_interval(0.3, 0.3, 2000) == pytest.approx(0.1)
    assert resend_interval(5.0, 2.0, 20 * 2**20) == 1.0


def test_a_big_call_expired_too_close_to_its_deadline_to_be_answered_in_time():
    # after judging a call the writer logs, applies and answers it: 0.5 s was too little for a 21 MB batch
    # on busy cores, and its caller raised Unavailable for a batch applied after all
    deadline = 1e9  # (monotonic seconds: far ahead, so no fifth of the time left caps the margins)
    assert call_expiry(deadline, 0.0)[1] == 0.5
    assert call_expiry(deadline, 0.0, 21_000_000)[1] == pytest.approx(0.5 + 21_000_000 / 20e6)
    from tiger._clock import monotonic

    assert call_expiry(monotonic() + 2.0, 0.0, 21_000_000)[1] == pytest.approx(0.4, abs=0.01)  # a fifth of 2 s


def test_a_pause_every_thread_of_a_stopped_process_slept_through_is_counted_once():
    """Regression: a ``pytest -n 4`` worker stopped (SIGSTOP, Ctrl-Z then fg) as it connected failed "no
    snapshot within 5.0s": connect's deadline counted the time it was not running. Each waiting thread finds
    the pause by waking late (``overslept``); ``paused_since`` counts it once, however many found it, and
    only the part after its mark. Times far before this process's clock: no real pause is among them."""
    base, cpu = -10_000.0, time.process_time()
    assert overslept((base, cpu), 0.5, base + 0.5 + PAUSE_OVER) == 0.0  # late by up to PAUSE_OVER: still running
    assert overslept((base, cpu), 0.5, base + 5.5) == pytest.approx(5.0)  # the main thread's wait, woken 5 s late
    assert overslept((base + 0.2, cpu), 0.1, base + 5.6) == pytest.approx(5.3)  # the replica thread's, the same pause
    assert paused_since(base) - paused_since(base + 100) == pytest.approx(5.3)  # one pause, base + 0.3 to + 5.6
    assert paused_since(base + 3.0) - paused_since(base + 100) == pytest.approx(2.6)  # the part after the mark
    assert overslept((base + 50, cpu), 0.1, base + 52.1) == pytest.approx(2.0)  # another pause: added
    assert paused_since(base) - paused_since(base + 100) == pytest.approx(7.3)
    assert overslept((base + 4, cpu), 0.5, base + 6.0) == pytest.approx(1.5)  # found late, overlapping the first
    # merged with the first only (0.3 to 6.0): the running time up to the second pause is not swallowed
    assert paused_since(base) - paused_since(base + 100) == pytest.approx(7.7)


def test_a_thread_woken_late_while_the_process_worked_took_it_for_a_pause():
    """Review: a wait woken 2 s late because C code held the GIL (or a replica loaded a snapshot under its
    lock) took those 2 s for a pause of the process, and ``wait_for(timeout=3)`` lasted 12 s. A late wake-up
    is a pause only if the process used less CPU than half as long meanwhile (a stopped process uses none)."""
    base = -20_000.0
    before = paused_since(base)
    assert overslept((base, time.process_time() - 2.5), 0.5, base + 3.0) == 0.0  # 2.5 s of CPU in a 2.5 s lateness
    assert paused_since(base) == before
