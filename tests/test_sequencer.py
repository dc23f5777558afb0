"""The replica's Sequencer without sockets: published changes and this client's own, in one seq order.

A client's replica is not sent the changes its own calls make; the calling thread deposits
each from its reply. These tests drive a writer Store and a replica Store through the
Sequencer the way the replica thread and the writing thread do.
"""

from __future__ import annotations

import secrets
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiger import _protocol as p
from tiger._calls import PendingCalls
from tiger._replica import Sequencer
from tiger._table import Change, Store, prepare_insert

EPOCH = "e" * 16
PATIENCE = 5.0  # seconds a call may stay in flight
T0 = 1000.0  # the replica's clock, as it passes it in


class Writer:
    """A writer's store handing out numbered changes, as the writer process does."""

    def __init__(self) -> None:
        self.store = Store()
        self.seq = 0

    def insert(self, n: int) -> tuple[int, Change]:
        change = prepare_insert(self.store, "t", "global", None, [{"n": n}], create=False, now=1, token=secrets.token_hex)
        self.store.apply(change)
        self.seq += 1
        return self.seq, change


@pytest.fixture
def pair() -> tuple[Writer, Sequencer]:
    writer, replica = Writer(), Sequencer(Store(), PendingCalls(timeout=PATIENCE / 2), patience=PATIENCE)
    replica.reset(EPOCH, 0)
    return writer, replica


def test_published_changes_apply_in_order(pair):
    writer, replica = pair
    for n in range(5):
        replica.published(*writer.insert(n))
    assert replica.seq == 5
    assert replica.store.content() == writer.store.content()
    assert replica.lost(T0) is None


def test_a_change_after_an_own_call_in_flight_is_held_until_the_deposit_fills_the_gap(pair):
    writer, replica = pair
    replica.calls.call_started(1)
    own = writer.insert(0)  # never published to this replica
    replica.published(*writer.insert(1))
    replica.published(*writer.insert(2))
    assert replica.seq == 0  # held, not applied out of order
    assert replica.lost(T0) is None  # and not taken for a loss: the call is in flight
    replica.calls.call_finished(1)
    replica.deposit(EPOCH, *own)
    assert replica.seq == 3
    assert replica.store.content() == writer.store.content()
    assert replica.lost(T0) is None


def test_an_own_change_answered_before_an_earlier_foreign_change_arrives_waits_for_it(pair):
    writer, replica = pair
    foreign = writer.insert(0)
    replica.calls.call_started(1)
    own = writer.insert(1)
    replica.calls.call_finished(1)
    replica.deposit(EPOCH, *own)
    assert replica.seq == 0
    assert replica.lost(T0) is None  # nothing published is ahead yet
    replica.published(*foreign)
    assert replica.seq == 2
    assert replica.store.content() == writer.store.content()


def test_a_gap_with_no_call_in_flight_is_a_loss(pair):
    writer, replica = pair
    writer.insert(0)  # lost on the way
    replica.published(*writer.insert(1))
    assert replica.seq == 0
    assert replica.lost(T0) == "gap: got seq 2 after 0"


def test_an_own_call_that_got_no_answer_leaves_a_gap_that_is_a_loss(pair):
    writer, replica = pair
    replica.calls.call_started(1)
    writer.insert(0)  # applied by the writer, its answer never arrived
    replica.published(*writer.insert(1))
    assert replica.lost(T0) is None
    replica.calls.call_finished(1)  # the call raised: nothing to deposit
    assert replica.lost(T0) == "gap: got seq 2 after 0"


def test_a_call_that_raised_but_whose_answer_is_asked_again_fills_its_gap_without_a_loss(pair):
    writer, replica = pair
    replica.calls.call_started(1)
    own = writer.insert(0)  # applied by the writer; its answer came too late for the call
    replica.published(*writer.insert(1))
    replica.calls.call_finished(1, (1, b"call", T0))  # the call raised Unavailable...
    assert replica.calls.due(T0) == [b"call"]  # ...and the replica asks the writer for its answer again
    assert replica.lost(T0) is None
    assert replica.lost(T0 + PATIENCE + 1) == "gap: got seq 2 after 0"  # not for ever
    replica.deposit(EPOCH, *own)  # the writer's kept answer
    replica.calls.answered(1)
    assert replica.seq == 2
    assert replica.lost(T0 + PATIENCE + 2) is None
    assert replica.store.content() == writer.store.content()


def test_a_heartbeat_ahead_is_a_loss_unless_a_call_is_in_flight(pair):
    writer, replica = pair
    replica.calls.call_started(1)
    own = writer.insert(0)
    replica.heartbeat(writer.seq)
    assert replica.lost(T0) is None
    replica.calls.call_finished(1)
    assert replica.lost(T0) == "heartbeat at seq 1, replica at 0"
    replica.deposit(EPOCH, *own)
    assert replica.lost(T0) is None


def test_a_snapshot_covers_what_was_held_and_deposited_and_later_deposits_still_apply(pair):
    writer, replica = pair
    replica.calls.call_started(1)
    replica.calls.call_started(2)
    own_early = writer.insert(0)  # seq 1
    replica.published(*writer.insert(1))  # seq 2: held behind own_early
    replica.loading = True  # a snapshot is on its way: nothing applied now
    replica.deposit(EPOCH, *own_early)
    assert replica.seq == 0 and replica.store.content() == {}
    snapshot = writer.store.content()  # taken at seq 2
    own_late = writer.insert(2)  # seq 3
    replica.deposit(EPOCH, *own_late)
    replica.calls.call_finished(1)
    replica.calls.call_finished(2)
    later = writer.insert(3)  # seq 4, published after the snapshot
    replica.store.load(snapshot)
    replica.reset(EPOCH, 2)
    assert replica.seq == 3  # the late own change applied right after the snapshot
    assert replica.lost(T0) is None  # nothing stale kept from before the snapshot
    replica.published(*later)
    assert replica.seq == 4
    assert replica.store.content() == writer.store.content()


def test_a_deposit_of_a_new_epoch_waits_for_the_resync_to_that_epoch(pair):
    _, replica = pair
    replica.calls.call_started(1)
    restarted = Writer()
    seq, change = restarted.insert(7)  # answered by a restarted writer (new epoch) before the replica noticed
    replica.calls.call_finished(1)
    replica.deposit("f" * 16, seq, change)
    assert replica.seq == 0 and replica.epoch == EPOCH
    replica.store.load({})  # the new epoch's snapshot, taken before that change
    replica.reset("f" * 16, 0)
    assert replica.seq == 1
    assert replica.store.content() == restarted.store.content()


def started_at(ms: int) -> str:
    """An epoch as a writer started at ``ms`` (milliseconds since 1970) makes it (``_protocol.new_epoch``)."""
    return f"{ms:011x}abcde"


def test_an_answer_of_a_writer_replaced_before_the_replica_reached_it_is_reached_by_a_later_writers_snapshot(pair):
    """Regression: a write answered by a restarted writer (epoch F) that was itself replaced (epoch G) before
    the replica caught up with it waited for seq 1 of F, which never comes, and raised Timeout although it
    was applied; once the replica holds a later writer's snapshot, the wait is over."""
    _, replica = pair
    d, e, f, g = (started_at(1_700_000_000_000 + i) for i in range(4))
    replica.reset(d, 5)
    assert not replica.reached(f, 1)  # the replica is still on the writer before
    replica.reset(e, 3)  # a late snapshot of a writer before the one that answered: not enough
    assert not replica.reached(f, 1)
    replica.reset(g, 0)  # the writer after the one that answered, straight from d or e
    assert replica.reached(f, 1)
    assert not replica.reached(g, 1) and replica.reached(g, 0)  # the epoch it is at: by seq, as ever


def test_epochs_sort_by_when_their_writer_started():
    first = p.new_epoch()
    assert len(first) == 16 and int(first, 16) >= 0
    assert p.epoch_started(first) == pytest.approx(time.time() * 1000, abs=5_000)
    assert p.epoch_started(started_at(1)) < p.epoch_started(started_at(2))  # type: ignore[operator]
    assert p.epoch_started("e" * 16) is not None and p.epoch_started("not an epoch") is None


def test_an_answer_is_not_taken_as_reached_by_an_epoch_it_cannot_order(pair):
    _, replica = pair
    replica.reset("x" * 16, 0)  # (an older tiger's writer: its epoch says nothing of when it started)
    assert not replica.reached(started_at(1), 1)


def test_too_many_held_changes_are_a_loss_even_with_a_call_in_flight(pair, monkeypatch):
    writer, replica = pair
    monkeypatch.setattr(Sequencer, "MAX_HELD", 3)
    replica.calls.call_started(1)
    writer.insert(0)
    for n in range(4):
        replica.published(*writer.insert(n))
    assert replica.lost(T0) == "4 published changes held behind a gap at seq 1"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=30))
def test_any_interleaving_of_published_and_own_changes_ends_equal_to_the_writer(plan):
    """Each step: the writer makes a change, own (this client's call) or not; an own change's answer
    arrives after ``delay`` more steps. Published changes arrive in order, at once."""
    writer, replica = Writer(), Sequencer(Store(), PendingCalls(timeout=PATIENCE / 2), patience=PATIENCE)
    replica.reset(EPOCH, 0)
    answers: list[tuple[int, int, Change]] = []  # (due step, seq, change)
    for step, (own, delay) in enumerate(plan):
        if own:
            replica.calls.call_started(step)
            seq, change = writer.insert(step)
            answers.append((step + delay, seq, change, step))
        else:
            replica.published(*writer.insert(step))
        for due in [a for a in answers if a[0] <= step]:
            answers.remove(due)
            replica.calls.call_finished(due[3])
            replica.deposit(EPOCH, due[1], due[2])
        assert replica.lost(T0) is None  # a gap is always an own answer still to come
    for _, seq, change, req_id in answers:
        replica.calls.call_finished(req_id)
        replica.deposit(EPOCH, seq, change)
    assert replica.lost(T0) is None
    assert replica.seq == writer.seq
    assert replica.store.content() == writer.store.content()


def test_a_gap_older_than_any_call_can_be_is_a_loss_even_while_a_call_is_counted_in_flight(pair):
    """A call in flight for longer than a call can last (an interrupt between counting a call and sending
    it, or between its answer and the deposit, left one in flight for good, when calls were counted, not
    named): the gap is trusted only that long."""
    writer, replica = pair
    replica.calls.call_started(1)
    writer.insert(0)  # its answer never deposited
    replica.published(*writer.insert(1))
    assert replica.lost(T0) is None
    assert replica.lost(T0 + PATIENCE) is None
    assert replica.lost(T0 + PATIENCE + 0.1) == "gap: got seq 2 after 0"


def test_the_gap_clock_restarts_once_the_replica_caught_up(pair):
    writer, replica = pair
    replica.calls.call_started(1)
    own = writer.insert(0)
    replica.published(*writer.insert(1))
    assert replica.lost(T0) is None
    replica.deposit(EPOCH, *own)
    assert replica.lost(T0 + 1) is None  # caught up: no gap any more
    writer.insert(2)
    replica.published(*writer.insert(3))
    assert replica.lost(T0 + PATIENCE + 1) is None  # a new gap, seen just now, while a call is in flight
    assert replica.lost(T0 + 2 * PATIENCE + 2) == "gap: got seq 4 after 2"


def test_deposits_of_two_epochs_are_kept_apart(pair):
    """After a writer restart two threads may deposit answers of the old and the new epoch, in any order."""
    writer, replica = pair
    restarted = Writer()
    new_seq, new_change = restarted.insert(9)
    replica.calls.call_started(1)
    replica.calls.call_started(2)
    old = writer.insert(0)
    replica.calls.call_finished(1)
    replica.calls.call_finished(2)
    replica.deposit("f" * 16, new_seq, new_change)
    replica.deposit(EPOCH, *old)  # must not drop the new epoch's deposit
    assert replica.seq == 1
    replica.store.load({})
    replica.reset("f" * 16, 0)
    assert replica.seq == 1 and replica.store.content() == restarted.store.content()
