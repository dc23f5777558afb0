"""Change feeds: ``Table.watch``, ``Client.watch``, ``Table.wait_until``.

First the feed logic in memory: a Sequencer (the replica's apply path, no sockets) hands its changes to
feeds, as the replica thread and writing threads do holding the replica's lock. Then real writer
processes and clients: filters, one change per record, overflow, ``since``, a writer restart, timeouts,
a closed client, asyncio, ``wait_until``, and three processes writing at once compared with the writer's
log. Tests that compare seqs use a writer of their own (the run's shared writer's seq moves with the
other xdist worker's writes).
"""

from __future__ import annotations

import asyncio
import gc
import secrets
import threading
import time
from collections.abc import Callable

import pytest

import tiger
from tiger import _table
from tiger._calls import PendingCalls
from tiger._feed import Feed, History
from tiger._replica import Sequencer
from tiger._table import Put, Store

EPOCH = "e" * 16


# -- in memory: a Sequencer and its feeds ----------------------------------------------------------


class Writer:
    """A writer's store handing out numbered changes, as the writer process does (see test_sequencer)."""

    def __init__(self) -> None:
        self.store = Store()
        self.seq = 0

    def commit(self, change: _table.Change) -> tuple[int, _table.Change]:
        self.store.apply(change)
        self.seq += 1
        return self.seq, change

    def insert(self, *records: dict, table: str = "t", namespace: str = "a") -> tuple[int, _table.Change]:
        return self.commit(
            _table.prepare_insert(self.store, table, namespace, None, list(records), create=False, now=1, token=secrets.token_hex)
        )


@pytest.fixture
def pair() -> tuple[Writer, Sequencer]:
    writer, replica = Writer(), Sequencer(Store(), PendingCalls(timeout=5.0), patience=10.0)
    replica.reset(EPOCH, 0)
    return writer, replica


def watch(
    replica: Sequencer,
    tables: list[str] | None = None,
    namespace: str | None = None,
    since: int | None = None,
    max_queued: int = 10_000,
    timeout: float | None = 0,
) -> Feed:
    """A Feed on the in-memory replica (the test's thread stands for the replica's lock)."""
    names = None if tables is None else frozenset(tables)
    return Feed(replica.watch(names, namespace, since, max_queued, "<test feed>"), timeout)


def drain(feed: Feed) -> list[tuple]:
    """Every change queued now, as (seq, op, table, namespace, id)."""
    out = []
    while feed.queued:
        c = next(feed)
        out.append((c.seq, c.op, c.table, c.namespace, c.id))
    return out


def test_a_feed_yields_each_applied_change_in_seq_order_with_its_stored_record(pair):
    writer, replica = pair
    feed = watch(replica)
    replica.published(*writer.insert({"id": "x", "n": 1}))
    replica.published(*writer.insert({"id": "x", "n": 2}))
    replica.published(*writer.commit(_table.Delete("t", "a", "x")))
    first, second, third = next(feed), next(feed), next(feed)
    assert (first.seq, first.op, first.table, first.namespace, first.id) == (1, "put", "t", "a", "x")
    assert first.record == {"id": "x", "n": 1, "created": 1} and type(first.record) is _table.Record  # frozen
    assert second.seq == 2 and second.record["n"] == 2
    assert (third.seq, third.op, third.id, third.record) == (3, "delete", "x", None)
    with pytest.raises(tiger.Timeout, match=r"<test feed> got no change within 0s"):
        next(feed)


def test_changes_held_behind_a_gap_reach_the_feed_in_seq_order_once_it_fills(pair):
    writer, replica = pair
    feed = watch(replica)
    replica.calls.call_started()
    own = writer.insert({"id": "own"})  # this client's own change: it comes by deposit, after the others
    replica.published(*writer.insert({"id": "later"}))
    assert feed.queued == 0  # held: nothing is yielded out of order
    replica.calls.call_finished()
    replica.deposit(EPOCH, *own)
    assert drain(feed) == [(1, "put", "t", "a", "own"), (2, "put", "t", "a", "later")]


def test_one_write_of_several_records_is_one_change_per_record_at_one_seq(pair):
    writer, replica = pair
    feed = watch(replica)
    replica.published(*writer.insert({"id": "a"}, {"id": "b"}, {"id": "c"}))
    batch = _table.Batch(
        (
            Put("t", "a", (_table.freeze({"id": "d", "created": 1}),)),
            _table.Delete("t", "a", "a"),
            Put("u", "b", (_table.freeze({"id": "e", "created": 1}), _table.freeze({"id": "f", "created": 1}))),
        )
    )
    replica.published(*writer.commit(batch))
    assert drain(feed) == [
        (1, "put", "t", "a", "a"),
        (1, "put", "t", "a", "b"),
        (1, "put", "t", "a", "c"),
        (2, "put", "t", "a", "d"),
        (2, "delete", "t", "a", "a"),
        (2, "put", "u", "b", "e"),
        (2, "put", "u", "b", "f"),
    ]


def test_filters_take_their_table_and_namespace_and_every_clear_that_covers_them(pair):
    writer, replica = pair
    plans_a = watch(replica, tables=["plans"], namespace="a")
    every_table_in_b = watch(replica, namespace="b")
    everything = watch(replica)
    replica.published(*writer.insert({"id": "p1"}, table="plans", namespace="a"))
    replica.published(*writer.insert({"id": "p2"}, table="plans", namespace="b"))
    replica.published(*writer.insert({"id": "o1"}, table="other", namespace="a"))
    replica.published(*writer.commit(_table.ClearNamespace("plans", "b")))  # 4
    replica.published(*writer.commit(_table.Clear("plans")))  # 5: every namespace
    replica.published(*writer.commit(_table.DropNamespace("a")))  # 6: every table
    replica.published(*writer.commit(_table.DropNamespace("b")))  # 7
    assert drain(plans_a) == [(1, "put", "plans", "a", "p1"), (5, "clear", "plans", None, None), (6, "clear", None, "a", None)]
    assert drain(every_table_in_b) == [
        (2, "put", "plans", "b", "p2"),
        (4, "clear", "plans", "b", None),
        (5, "clear", "plans", None, None),
        (7, "clear", None, "b", None),
    ]
    assert [c[0] for c in drain(everything)] == [1, 2, 3, 4, 5, 6, 7]


def test_tigers_own_tables_never_appear(pair):
    writer, replica = pair
    feed = watch(replica)
    replica.published(*writer.insert({"id": "key"}, table=_table.ONCE_TABLE, namespace="global"))
    replica.published(*writer.commit(_table.Delete(_table.ONCE_TABLE, "global", "key")))
    replica.published(*writer.insert({"id": "mine"}))
    assert drain(feed) == [(3, "put", "t", "a", "mine")]


def test_a_full_feed_drops_its_queue_and_says_so_on_the_next_read_without_slowing_the_replica(pair):
    writer, replica = pair
    slow = watch(replica, max_queued=3)
    other = watch(replica)
    for i in range(3):
        replica.published(*writer.insert({"id": f"r{i}"}))
    assert slow.queued == 3
    replica.published(*writer.insert({"id": "r3"}))  # one too many: never blocks, never grows
    assert slow.queued == 0
    message = r"<test feed> overflowed at seq 4: 3 changes were queued unread \(max_queued=3\).*Open a new feed and re-read"
    with pytest.raises(tiger.FeedOverflow, match=message):
        next(slow)
    with pytest.raises(tiger.FeedOverflow):  # and so on: it yields nothing more
        next(slow)
    replica.published(*writer.insert({"id": "r4"}))
    assert replica.feeds == [other._sub]  # the replica no longer hands it anything
    assert [c[4] for c in drain(other)] == ["r0", "r1", "r2", "r3", "r4"]
    fresh = watch(replica, max_queued=3)
    replica.published(*writer.insert({"id": "r5"}))
    assert drain(fresh) == [(6, "put", "t", "a", "r5")]


def test_a_write_of_more_records_than_max_queued_overflows_at_once(pair):
    writer, replica = pair
    feed = watch(replica, max_queued=2)
    replica.published(*writer.insert({"id": "a"}, {"id": "b"}, {"id": "c"}))
    with pytest.raises(tiger.FeedOverflow, match="overflowed at seq 1: 0 changes were queued"):
        next(feed)


def test_a_snapshot_load_gives_every_feed_one_reset_then_the_changes_after_it(pair):
    writer, replica = pair
    plans = watch(replica, tables=["plans"], namespace="elsewhere")
    replica.published(*writer.insert({"id": "before"}))
    replica.loading = True  # a resync: the snapshot holds changes the feed never saw
    for i in range(3):
        writer.insert({"id": f"missed{i}"})
    replica.store.load_rows({"t": {"a": dict(writer.store.rows("t", "a"))}})
    replica.reset(EPOCH, writer.seq)
    replica.published(*writer.insert({"id": "after"}, table="plans", namespace="elsewhere"))
    assert drain(plans) == [(4, "reset", None, None, None), (5, "put", "plans", "elsewhere", "after")]


def test_a_collected_or_closed_feed_is_dropped_by_the_replica_at_its_next_change(pair):
    writer, replica = pair
    closed, collected = watch(replica), watch(replica)
    assert len(replica.feeds) == 2
    closed.close()
    with pytest.raises(StopIteration):
        next(closed)
    del collected
    gc.collect()
    replica.published(*writer.insert({"id": "x"}))
    assert replica.feeds == []  # no cost left behind


def test_since_yields_the_remembered_changes_then_the_live_ones(pair):
    writer, replica = pair
    for i in range(5):
        replica.published(*writer.insert({"id": f"r{i}"}))
    feed = watch(replica, since=2)
    replica.published(*writer.insert({"id": "live"}))
    assert [(c[0], c[4]) for c in drain(feed)] == [(3, "r2"), (4, "r3"), (5, "r4"), (6, "live")]
    assert drain(watch(replica, since=6)) == []
    with pytest.raises(ValueError, match=r"since=7 is ahead of this replica, at seq 6"):
        watch(replica, since=7)


def test_since_older_than_the_history_names_the_oldest_seq_it_can_give(pair):
    writer, replica = pair
    for i in range(History.MAX_SEQS + 10):
        replica.published(*writer.insert({"id": f"r{i}"}))
    too_old = r"since=9 is older than this replica remembers: the oldest seq a feed can start after is 10"
    with pytest.raises(ValueError, match=too_old):
        watch(replica, since=9)
    assert len(drain(watch(replica, since=10))) == History.MAX_SEQS


def test_the_history_keeps_at_most_its_records_and_nothing_before_a_snapshot(pair):
    writer, replica = pair
    big = [{"id": f"r{i}"} for i in range(History.MAX_RECORDS // 4)]
    for _ in range(5):  # 5 writes of 25,000 records: the oldest ones are forgotten
        replica.published(*writer.insert(*big))
    with pytest.raises(ValueError, match="the oldest seq a feed can start after is 2"):
        watch(replica, since=1)
    assert [c.seq for c in watch(replica, since=2, max_queued=10**6)._sub.queue][:: len(big)] == [3, 4, 5]
    replica.reset(EPOCH, writer.seq)  # a snapshot load: remembered from its seq on
    with pytest.raises(ValueError, match="the oldest seq a feed can start after is 5"):
        watch(replica, since=4)


def test_a_blocked_reader_wakes_when_another_thread_applies_a_change(pair):
    writer, replica = pair
    feed = watch(replica, timeout=10)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(next(feed).id))
    reader.start()
    wait_for_state(lambda: feed._sub.sleepers == 1, "the reader waiting")
    replica.published(*writer.insert({"id": "x"}))
    reader.join(5)
    assert got == ["x"]


def test_an_async_reader_awaits_without_a_thread_and_survives_a_cancelled_await(pair):
    writer, replica = pair
    feed = watch(replica, timeout=None)

    async def main() -> list[str]:
        threads = threading.active_count()
        waiting = asyncio.ensure_future(feed.__anext__())
        await until(lambda: feed._sub.waiters)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert feed._sub.waiters == []  # nothing left behind by the cancelled await
        # applied from another thread (as the replica thread does), while this task waits
        later = threading.Timer(0.05, lambda: replica.published(*writer.insert({"id": "a"}, {"id": "b"})))
        later.start()
        got = [(await feed.__anext__()).id]
        assert threading.active_count() <= threads + 1  # the Timer's thread at most: none per await
        later.join()
        async for change in feed:  # the one queued meanwhile, then the end once closed
            got.append(change.id)
            feed.close()
        return got

    assert asyncio.run(main()) == ["a", "b"]


def test_an_async_read_times_out_naming_the_feed_and_stays_usable(pair):
    writer, replica = pair
    feed = watch(replica, timeout=0.05)

    async def main() -> str | None:
        with pytest.raises(tiger.Timeout, match=r"<test feed> got no change within 0.05s"):
            await feed.__anext__()
        replica.published(*writer.insert({"id": "x"}))
        return (await feed.__anext__()).id

    assert asyncio.run(main()) == "x"


def wait_for_state(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll a state another thread brings about, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        time.sleep(0.001)  # sleep-ok: polling another thread's state, not a socket


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0)
