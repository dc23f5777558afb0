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
import itertools
import multiprocessing
import re
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from test_faults import kill

import tiger
import tiger.aio
from tiger import _log, _table
from tiger import _protocol as p
from tiger._calls import PendingCalls
from tiger._feed import _EXPIRED, Alarm, Feed, History, Subscription, hold_wakes, send_held_wakes
from tiger._replica import Sequencer
from tiger._table import Put, Store

EPOCH = "e" * 16

NO_LIMIT_HINT = "timeout must be a number of seconds from 0 to 86400 .a day., got .*; None waits without limit"


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
    return Feed(replica.watch(Subscription(names, namespace, max_queued, "<test feed>"), since), timeout)


def drain(feed: Feed) -> list[tuple]:
    """Every change queued now, as (seq, op, table, namespace, id)."""
    out = []
    while feed.queued:
        c = next(feed)
        out.append((c.seq, c.op, c.table, c.namespace, c.id))
    return out


def test_feeds_closed_on_a_store_nobody_writes_to_stayed_listed_until_the_next_change(pair):
    # A user trial: a poller's wait_until that timed out, and each feed closed, stayed in the replica's list of
    # feeds (with its queue and lock) until a change came: on an idle store, some 2 KB each, for ever.
    _, replica = pair
    for _ in range(100):
        watch(replica).close()
    assert len(replica.feeds) <= 1


def test_wait_untils_that_timed_out_on_an_idle_store_were_kept_by_the_replica(client, ns):
    table = client.table("idle")
    for _ in range(50):
        with pytest.raises(tiger.Timeout):
            table.wait_until(lambda record: False, timeout=0.001)
    assert len(client.replica._seq.feeds) <= 1


@pytest.mark.parametrize("how", ["blocking", "aio"])
def test_a_feed_whose_client_nothing_else_referenced_ended_as_if_the_client_was_closed(tiger_url, connect, how):
    """A user trial (5 of 5, each client): a helper that connected and returned only a feed
    (``client = await tiger.aio.connect(url); return client.table(t).watch()``) had its client collected, and
    the feed's first read raised "ended: the client was closed", though nothing closed it. A feed keeps its
    client alive, as a table handle does; dropped with it, the client goes too."""
    table = f"t{uuid.uuid4().hex[:8]}"
    writer_side = connect()

    async def follow() -> tiger.Feed:
        return (await tiger.aio.connect(tiger_url)).table(table).watch(timeout=10)

    async def read(feed: tiger.Feed) -> tiger.Change:
        return await feed.__anext__()

    if how == "blocking":
        feed = tiger.connect(tiger_url).table(table).watch(timeout=10)
    else:
        loop = asyncio.new_event_loop()
        feed = loop.run_until_complete(follow())
    try:
        gc.collect()
        writer_side.table(table).insert({"id": "a"})
        with feed:
            change = next(feed) if how == "blocking" else loop.run_until_complete(read(feed))
        assert (change.op, change.id) == ("put", "a")
        client = weakref.ref(feed._client)  # type: ignore[attr-defined]
        del feed
        gc.collect()
        assert client() is None  # (dropped with its feed: closed by its finalizer)
    finally:
        if how == "aio":
            loop.close()


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
    replica.calls.call_started(1)
    own = writer.insert({"id": "own"})  # this client's own change: it comes by deposit, after the others
    replica.published(*writer.insert({"id": "later"}))
    assert feed.queued == 0  # held: nothing is yielded out of order
    replica.calls.call_finished(1)
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
    replica.published(*writer.commit(_table.Put(_table.ONCE_TABLE, "global", (_table.freeze({"id": "key"}),))))
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
    with pytest.raises(tiger.FeedOverflow, match="overflowed at seq 1: one write of 3 changes is more than max_queued=2"):
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


def test_a_feed_whose_replica_stopped_yields_what_it_queued_then_raises_why(pair):
    writer, replica = pair
    feed = watch(replica)
    replica.published(*writer.insert({"id": "queued"}))
    feed._sub.end(tiger.Unavailable, "<test feed> ended: the replica stopped")  # as Replica._end_feeds does
    assert next(feed).id == "queued"
    for _ in range(2):  # and on every read after
        with pytest.raises(tiger.Unavailable, match="<test feed> ended: the replica stopped"):
            next(feed)


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


def test_a_feed_opened_with_async_with_is_closed_at_its_end(pair):
    # a user trial: async code reached for `async with table.watch() as feed:` and got a TypeError
    writer, replica = pair
    feed = watch(replica, timeout=None)

    async def main() -> list[str]:
        replica.published(*writer.insert({"id": "a"}))
        async with feed as same:
            assert same is feed
            got = [(await feed.__anext__()).id]
        return got

    assert asyncio.run(main()) == ["a"]
    assert list(feed) == []  # closed: the iteration ends


def test_an_async_read_times_out_naming_the_feed_and_stays_usable(pair):
    writer, replica = pair
    feed = watch(replica, timeout=0.05)

    async def main() -> str | None:
        with pytest.raises(tiger.Timeout, match=r"<test feed> got no change within 0.05s"):
            await feed.__anext__()
        replica.published(*writer.insert({"id": "x"}))
        return (await feed.__anext__()).id

    assert asyncio.run(main()) == "x"


class _LockWatchingLoop(asyncio.SelectorEventLoop):
    """A real event loop noting, each time another thread wakes one of its tasks, whether ``lock`` was free."""

    def __init__(self, lock: Any) -> None:
        super().__init__()
        self.lock = lock
        self.lock_was_free: list[bool] = []
        self.self_pipe_from_its_thread = 0  # call_soon_threadsafe from the loop's own thread

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
        if threading.current_thread() is not threading.main_thread():
            free = self.lock.acquire(blocking=False)
            if free:
                self.lock.release()
            self.lock_was_free.append(free)
        elif asyncio._get_running_loop() is self:
            self.self_pipe_from_its_thread += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def _woken_by_another_thread(loop: _LockWatchingLoop, wait: Any, wake: Callable[[], object], waiting: Callable[[], object]):
    async def main() -> Any:
        task = asyncio.ensure_future(wait())
        await until(waiting)
        waker = threading.Thread(target=wake)
        waker.start()
        try:
            return await asyncio.wait_for(task, 10)
        finally:
            waker.join(10)

    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def test_a_feed_wakes_its_task_once_it_has_let_go_of_the_feeds_lock(pair):
    # woken while the applying thread still held the feed's lock, the task's first step blocked its
    # loop on that lock (seen with py-spy: the loop thread in Condition.__enter__ after each change)
    writer, replica = pair
    feed = watch(replica, timeout=None)
    loop = _LockWatchingLoop(feed._sub.cond)
    got = _woken_by_another_thread(
        loop, feed.__anext__, lambda: replica.published(*writer.insert({"id": "x"})), lambda: feed._sub.waiters
    )
    assert got.id == "x"
    assert loop.lock_was_free == [True]


class _QueueWatchingLoop(asyncio.SelectorEventLoop):
    """A real event loop noting how many changes ``feed`` had queued each time another thread woke one of its tasks."""

    def __init__(self, feed: Feed) -> None:
        super().__init__()
        self.feed = feed
        self.queued_at_wake: list[int] = []

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
        if threading.current_thread() is not threading.main_thread():
            self.queued_at_wake.append(self.feed.queued)
        return super().call_soon_threadsafe(callback, *args, context=context)


def test_a_task_was_woken_while_the_replica_thread_went_on_applying_what_came_with_its_change(pair):
    # the replica thread woke a feed's task at the first change of those that came together, then went
    # on applying the rest holding the interpreter lock: the task's thread woke, found the lock held and
    # slept again until the replica thread waited (two wake-ups where one does: about 15 us of CPU more
    # per change in each of 4 async feed readers, /tmp/afeed.py). The replica thread holds its wakes
    # (hold_wakes) and sends them as it waits again (send_held_wakes, before each poll).
    writer, replica = pair
    feed = watch(replica, timeout=None)
    loop = _QueueWatchingLoop(feed)

    def apply_what_came() -> None:
        hold_wakes()
        try:
            for i in range(3):
                replica.published(*writer.insert({"id": f"x{i}"}))
            assert loop.queued_at_wake == []  # held: nothing woken while applying
            send_held_wakes()
        finally:
            send_held_wakes(stop=True)

    got = _woken_by_another_thread(loop, feed.__anext__, apply_what_came, lambda: feed._sub.waiters)
    assert got.id == "x0"
    assert loop.queued_at_wake == [3]


def test_a_thread_was_woken_while_the_replica_thread_went_on_applying_what_came_with_its_change(pair):
    # the same for a blocked reader thread: woken at the first change, it found the replica thread still
    # holding the interpreter lock (and the feed's lock) and slept again; its wake is held as a task's is
    writer, replica = pair
    feed = watch(replica, timeout=10.0)
    returned = threading.Event()
    got: list[Any] = []

    def read() -> None:
        change = next(feed)
        got.append((change.id, feed.queued))
        returned.set()

    reader = threading.Thread(target=read)
    reader.start()
    wait_for_state(lambda: feed._sub.sleepers, "the reader waiting")
    hold_wakes()
    try:
        replica.published(*writer.insert({"id": "x0"}))
        assert not returned.wait(0.3)  # held: the reader sleeps on while the applying thread goes on
        replica.published(*writer.insert({"id": "x1"}))
    finally:
        send_held_wakes(stop=True)
    reader.join(10)
    assert got == [("x0", 1)]


def test_wakes_held_by_a_thread_that_stops_holding_them_are_sent_and_none_held_after(pair):
    # the replica thread's end (a stop, a failure) sends what it held: a task awaiting a feed whose
    # replica stopped must wake to raise why
    writer, replica = pair
    feed = watch(replica, timeout=None)
    loop = _QueueWatchingLoop(feed)

    def apply_then_stop() -> None:
        hold_wakes()
        replica.published(*writer.insert({"id": "x0"}))
        send_held_wakes(stop=True)

    got = _woken_by_another_thread(loop, feed.__anext__, apply_then_stop, lambda: feed._sub.waiters)
    assert got.id == "x0"
    assert loop.queued_at_wake == [1]
    send_held_wakes()  # a thread holding none (this one): nothing to send, nothing raised


def test_a_task_awaiting_the_replica_is_woken_once_the_replicas_lock_is_let_go():
    from tiger._replica import Changes

    changes = Changes()
    loop = _LockWatchingLoop(changes)
    with changes:
        future = changes.future(loop)

    def notify() -> None:
        with changes:
            changes.notify_all()

    _woken_by_another_thread(loop, lambda: future, notify, lambda: True)
    assert loop.lock_was_free == [True]


def test_a_change_applied_on_the_feeds_own_loop_wakes_its_reader_without_the_self_pipe(pair):
    # an asyncio client applies its own writes' changes on its loop's thread: a task of that loop
    # reading a feed was woken through call_soon_threadsafe, a self-pipe write and one more wake-up
    writer, replica = pair
    feed = watch(replica, timeout=None)
    loop = _LockWatchingLoop(feed._sub.cond)

    async def main() -> str:
        reader = asyncio.ensure_future(feed.__anext__())
        await until(lambda: feed._sub.waiters)
        replica.published(*writer.insert({"id": "x"}))
        return (await asyncio.wait_for(reader, 10)).id

    try:
        assert loop.run_until_complete(main()) == "x"
    finally:
        loop.close()
    assert loop.self_pipe_from_its_thread == 0


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


# -- real writers and clients ---------------------------------------------------------------------

SPAWN = multiprocessing.get_context("spawn")
PROCESSES = 3
WRITES = 150


def unique_table() -> str:
    """A table no other test of the run touches (the run's writer is shared): clearing it is safe."""
    return f"feed_{secrets.token_hex(6)}"


def shown(change: tiger.Change) -> tuple:
    return (change.op, change.table, change.namespace, change.id)


def read(feed: Feed, n: int) -> list[tiger.Change]:
    return [next(feed) for _ in range(n)]


def mixed_writes(url: str, index: int, barrier: Any) -> None:
    """One of the writing processes: every kind of write, in two namespaces of its own and one shared."""
    with tiger.connect(url, timeout=10) as client:
        plans, prices = client.table("plans"), client.table("prices")
        barrier.wait(60)
        for i in range(WRITES):
            with tiger.namespace(f"p{index}" if i % 3 else "shared"):
                record = plans.insert({"id": f"p{index}-{i}", "i": i})
                if i % 5 == 0:
                    plans.update(record["id"], {"updated": True})
                if i % 7 == 0:
                    prices.insert_many([{"id": f"q{index}-{i}-{k}"} for k in range(3)])
                if i % 11 == 0:
                    plans.delete(record["id"])
                if i % 13 == 0:
                    with client.batch() as b:
                        b.table("plans").insert({"id": f"b{index}-{i}"})
                        b.table("prices").delete(f"q{index}-{i - i % 7}-0")
        prices.clear_namespace(f"p{index}")
        client.drop_namespace(f"p{index}")


def expected_changes(seq: int, change: _table.Change) -> list[tuple]:
    """What a feed of every table and namespace yields for one logged change (written here again, not
    taken from tiger._feed, so that the test checks it)."""
    out: list[tuple] = []
    for part in change.changes if type(change) is _table.Batch else (change,):
        if type(part) is Put:
            out += [(seq, "put", part.table, part.namespace, r["id"], r) for r in part.records]
        elif type(part) is _table.Delete:
            out.append((seq, "delete", part.table, part.namespace, part.id, None))
        elif type(part) is _table.Clear:
            out.append((seq, "clear", part.table, None, None, None))
        elif type(part) is _table.ClearNamespace:
            out.append((seq, "clear", part.table, part.namespace, None, None))
        else:
            out.append((seq, "clear", None, part.namespace, None, None))  # type: ignore[union-attr]
    return out


def test_three_processes_writing_at_once_reach_a_feed_in_the_writers_log_order_none_lost_none_twice(tmp_path):
    data = tmp_path / "data"
    with tiger.serve(data=data, fsync="never") as server, tiger.connect(server.url) as watcher:
        feed = watcher.watch(namespace=None, timeout=30, max_queued=1_000_000)
        start = watcher.seq
        barrier = SPAWN.Barrier(PROCESSES)
        procs = [SPAWN.Process(target=mixed_writes, args=(server.url, i, barrier)) for i in range(PROCESSES)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
        assert [proc.exitcode for proc in procs] == [0] * PROCESSES
        watcher.sync()  # every change the writers were answered for is applied, so queued in the feed
        got = [(c.seq, c.op, c.table, c.namespace, c.id, c.record) for c in read(feed, feed.queued)]
        payloads, _ = _log.scan((data / "log.0").read_bytes())  # the writer's own history, seq 1 first
    logged = [p.change_from_wire(p.unpack_frozen(payload)) for payload in payloads]
    expected = [c for seq, change in enumerate(logged, 1) if seq > start for c in expected_changes(seq, change)]
    assert len(logged) > PROCESSES * WRITES
    assert got == expected


def test_a_table_feed_follows_its_table_in_the_current_namespace_and_the_clears_that_cover_it(connect, ns):
    author, reader = connect(), connect()
    name = unique_table()
    feed = reader.table(name).watch(timeout=10)
    table = author.table(name)
    table.insert({"id": "mine"})
    author.table(f"{name}_other").insert({"id": "other table"})
    with tiger.namespace(f"{ns}-other"):
        table.insert({"id": "other namespace"})
    table.update("mine", {"n": 1})
    table.delete("mine")
    table.insert({"id": "again"})  # (a clear of an empty namespace or table is no change at all)
    table.clear_namespace(f"{ns}-other")  # not this namespace
    table.clear_namespace(ns)
    table.insert({"id": "again"})
    table.clear()  # every namespace: this one too
    author.drop_namespace(f"{ns}-other")  # not this namespace
    author.drop_namespace(ns)  # every table (the other table's record): this one too
    assert [shown(c) for c in read(feed, 8)] == [
        ("put", name, ns, "mine"),
        ("put", name, ns, "mine"),
        ("delete", name, ns, "mine"),
        ("put", name, ns, "again"),
        ("clear", name, ns, None),
        ("put", name, ns, "again"),
        ("clear", name, None, None),
        ("clear", None, ns, None),
    ]
    with pytest.raises(tiger.Timeout):
        feed._next(0.05)  # nothing else came
    feed.close()


def test_a_feed_of_some_tables_in_every_namespace(connect_own):
    author, reader = connect_own(), connect_own()
    feed = reader.watch(tables=["plans", "prices"], namespace=None, timeout=10)
    author.table("plans").insert({"id": "p"})
    author.table("events").insert({"id": "e"})
    with tiger.namespace("elsewhere"):
        author.table("prices").insert({"id": "q"})
    author.drop_namespace("elsewhere")
    author.table("plans").insert({"id": "last"})
    assert [shown(c) for c in read(feed, 4)] == [
        ("put", "plans", "global", "p"),
        ("put", "prices", "elsewhere", "q"),
        ("clear", None, "elsewhere", None),
        ("put", "plans", "global", "last"),
    ]


def test_insert_many_and_a_batch_are_one_change_per_record_at_the_writes_seq(connect_own):
    author, reader = connect_own(), connect_own()
    feed = reader.watch(namespace=None, timeout=10)
    plans = author.table("plans")
    stored = plans.insert_many([{"id": "a"}, {"id": "b"}, {"id": "c"}])
    first = author.seq
    with author.batch() as b:
        b.table("plans").update("a", {"n": 1})
        b.table("plans").delete("b")
        with tiger.namespace("other"):
            b.table("prices").insert({"id": "x"})
    changes = read(feed, 6)
    assert [(c.seq, *shown(c)) for c in changes] == [
        (first, "put", "plans", "global", "a"),
        (first, "put", "plans", "global", "b"),
        (first, "put", "plans", "global", "c"),
        (first + 1, "put", "plans", "global", "a"),
        (first + 1, "delete", "plans", "global", "b"),
        (first + 1, "put", "prices", "other", "x"),
    ]
    assert [c.record for c in changes[:3]] == stored
    assert changes[3].record is reader.table("plans")["a"]  # the stored record itself, frozen


def test_tigers_once_keys_never_appear_in_a_feed(connect_own):
    client = connect_own()
    feed = client.watch(namespace=None, timeout=10)
    assert client.once("key", lambda: 42) == 42
    client.table("plans").insert({"id": "after"})
    assert shown(next(feed)) == ("put", "plans", "global", "after")


@pytest.mark.parametrize("how", ["for", "async for", "timeout"])
def test_a_feed_read_in_a_forked_child_waited_for_ever(connect, ns, how):
    # A user trial: a feed opened before os.fork() and read in the child (no timeout) waited for ever there,
    # where the client's writes, sync() and wait_for raise TigerError at once: no replica thread feeds it in the
    # child. Each read raises so too now, at once (before the feed's lock: the parent's thread may hold it).
    import os

    client = connect()
    feed = client.table("t").watch(timeout=None if how != "timeout" else 30.0)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what the read did, then end running nothing else
        try:
            if how == "async for":

                async def first() -> Any:
                    async for change in feed:
                        return change

                asyncio.run(first())
            else:
                next(feed)
            os.write(write, b"returned\n")
        except BaseException as e:
            feed.close()  # (takes no lock there: the parent's thread may have held it as the process forked)
            os.write(write, f"{type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        with os.fdopen(read) as said:  # (the read raised within the test's timeout, or the line never comes)
            line = said.readline().strip()
    finally:
        os.waitpid(pid, 0)
    assert line.startswith("TigerError: ") and f"opened in process {os.getpid()}" in line, line
    feed.close()


def test_an_unread_feed_overflows_then_a_new_feed_works(connect, ns):
    author, reader = connect(), connect()
    plans = reader.table("plans")
    slow = plans.watch(max_queued=5)
    for i in range(6):
        author.table("plans").insert({"id": f"r{i}"})
    reader.sync()
    with pytest.raises(tiger.FeedOverflow, match=r"overflowed at seq \d+: 5 changes were queued unread \(max_queued=5\)"):
        next(slow)
    fresh = plans.watch(timeout=10)
    author.table("plans").insert({"id": "after"})
    assert next(fresh).id == "after"


def test_since_gives_the_remembered_changes_then_live_ones_and_refuses_older(connect_own):
    client = connect_own()
    plans = client.table("plans")
    before = client.seq
    for i in range(3):
        plans.insert({"id": f"r{i}"})
    feed = plans.watch(since=before, timeout=10)
    plans.insert({"id": "live"})
    assert [(c.seq - before, c.id) for c in read(feed, 4)] == [(1, "r0"), (2, "r1"), (3, "r2"), (4, "live")]
    for i in range(History.MAX_SEQS):
        plans.insert({"id": f"more{i}"})
    oldest = client.seq - History.MAX_SEQS
    with pytest.raises(ValueError, match=rf"since={before} is older .* the oldest seq a feed can start after is {oldest}"):
        plans.watch(since=before)
    assert len(read(plans.watch(since=oldest, timeout=10), History.MAX_SEQS)) == History.MAX_SEQS


def test_a_writer_restart_gives_the_feed_one_reset_then_the_new_writers_changes(tmp_path):
    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    server = tiger.serve(url, data=data)
    with tiger.connect(url) as client:
        plans = client.table("plans")
        feed = client.watch(tables=["plans"], namespace="elsewhere", timeout=30)  # a reset passes any filter
        plans.insert({"id": "before"})
        kill(server)
        with tiger.serve(url, data=data) as again, tiger.connect(again.url) as other:
            reset = next(feed)  # the replica noticed the new writer and reloaded its snapshot
            assert (reset.op, reset.table, reset.namespace, reset.id, reset.record) == ("reset", None, None, None, None)
            assert reset.seq == other.stats()["seq"]  # the snapshot's seq, in the new writer's numbering
            assert plans.get("before") is not None  # re-read after a reset: the data directory kept it
            with tiger.namespace("elsewhere"):
                other.table("plans").insert({"id": "after"})
            assert shown(next(feed)) == ("put", "plans", "elsewhere", "after")


def test_a_read_waits_at_most_the_feeds_timeout_and_says_which_feed_and_how_long(connect, ns):
    feed = connect().table("plans").watch(timeout=0.2)
    started = time.monotonic()
    message = f"<tiger.Feed tables=['plans'] namespace={ns!r}> got no change within 0.2s"
    with pytest.raises(tiger.Timeout, match=re.escape(message)):
        next(feed)
    assert 0.2 <= time.monotonic() - started < 5


def test_closing_the_client_wakes_a_blocked_read_with_an_error(connect, ns):
    client = connect()
    feed = client.watch()
    raised: list[BaseException] = []

    def blocked() -> None:
        try:
            next(feed)
        except BaseException as e:
            raised.append(e)

    reader = threading.Thread(target=blocked)
    reader.start()
    wait_for_state(lambda: feed._sub.sleepers == 1, "the reader blocked")
    started = time.monotonic()
    client.close()
    reader.join(5)
    assert not reader.is_alive() and time.monotonic() - started < 5
    assert type(raised[0]) is tiger.TigerError and "ended: the client was closed" in str(raised[0])
    with pytest.raises(tiger.TigerError, match="this client is closed"):
        client.watch()


def test_async_for_over_a_feed_keeps_the_event_loop_running_and_a_cancelled_await_loses_nothing(connect, ns):
    author, reader = connect(), connect()
    feed = reader.table("plans").watch(timeout=10)

    async def main() -> tuple[list[str], float]:
        ticks: list[float] = []

        async def heartbeat() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        beating = asyncio.ensure_future(heartbeat())
        waiting = asyncio.ensure_future(feed.__anext__())
        await until(lambda: feed._sub.waiters)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        writes = threading.Timer(0.3, lambda: [author.table("plans").insert({"id": f"r{i}"}) for i in range(2)])
        writes.start()
        got = []
        async for change in feed:
            got.append(change.id)
            if len(got) == 2:
                break
        writes.join()
        beating.cancel()
        return got, max(b - a for a, b in itertools.pairwise(ticks))

    got, longest_gap = asyncio.run(main())
    assert got == ["r0", "r1"]  # the cancelled await consumed nothing
    assert longest_gap < 0.1  # the loop kept running while the feed waited


def test_wait_until_returns_a_record_stored_now_or_the_first_to_arrive(connect, ns):
    author, reader = connect(), connect()
    plans = reader.table("plans")
    author.table("plans").insert({"id": "now", "status": "paid"})
    reader.sync()
    assert plans.wait_until(lambda r: r.get("status") == "paid", timeout=0)["id"] == "now"
    with tiger.namespace(f"{ns}-other"):  # another namespace's record does not count
        author.table("plans").insert({"id": "elsewhere", "status": "open"})
    later = threading.Timer(0.2, lambda: author.table("plans").insert({"id": "later", "status": "open"}))
    later.start()
    try:
        assert plans.wait_until(lambda r: r.get("status") == "open", timeout=10)["id"] == "later"
    finally:
        later.join()
        author.drop_namespace(f"{ns}-other")


@pytest.mark.parametrize("kind", ["blocking", "aio"])
@pytest.mark.parametrize("stands", [True, False], ids=["one-stands", "none-stands"])
def test_wait_until_returned_a_record_its_batch_stored_and_removed_that_no_replica_ever_held(
    tiger_url, connect, ns, kind, stands
):
    # A user trial: a batch that inserted a matching record and deleted it (one atomic change) made a waiting
    # wait_until return that record, which no replica ever held. Now: the first match that the rest of its
    # write leaves stored. (The writes are made by the predicate, at its look at the record stored before:
    # the feed is open then, so the batch reaches the waiter through it.)
    import asyncio

    import tiger.aio

    author, reader = connect(), connect()
    author.table("p").insert({"id": "p_start"})
    reader.sync()

    def writes() -> None:
        with author.batch() as b:
            t = b.table("p")
            t.insert({"id": "p_gone", "flash": 1})
            if stands:
                t.insert({"id": "p_kept", "flash": 1})
            t.delete("p_gone")
            t.insert({"id": "p_changed", "flash": 1})
            t.update("p_changed", {"flash": 0})
        author.table("p").insert({"id": "p_later", "flash": 1})

    def predicate(record: dict[str, Any]) -> bool:
        if record["id"] == "p_start":
            writes()
            return False
        return record.get("flash") == 1

    if kind == "blocking":
        found = reader.table("p").wait_until(predicate, timeout=10)
    else:

        async def main() -> Any:
            async with await tiger.aio.connect(tiger_url) as client:
                return await client.table("p").wait_until(predicate, timeout=10)

        found = asyncio.run(main())
    assert found["id"] == ("p_kept" if stands else "p_later")


def test_wait_until_times_out_naming_the_table_and_namespace(connect, ns):
    plans = connect().table("plans")
    started = time.monotonic()
    message = f"no record of plans in namespace {ns!r} matched the predicate within 0.2s"
    with pytest.raises(tiger.Timeout, match=re.escape(message)):
        plans.wait_until(lambda r: False, timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda c: c.watch(tables="plans"), TypeError, "tables must be None or an iterable"),
        (lambda c: c.watch(tables=[""]), ValueError, r"tables\[0\] must be 1 to 200 characters"),
        (lambda c: c.watch(tables=["tiger.once"]), ValueError, r"tables\[0\]: table names starting with 'tiger.'"),
        (lambda c: c.watch(namespace=3), TypeError, "namespace must be a str"),
        (lambda c: c.watch(since="5"), TypeError, "since must be None or an int"),
        (lambda c: c.watch(since=-5), ValueError, r"since must be a seq \(an int from 0\), got -5"),
        (lambda c: c.table("plans").wait_for("plan_x", timeout="5"), TypeError, "timeout must be a number of seconds"),
        (
            lambda c: c.watch(timeout=-1),
            ValueError,
            NO_LIMIT_HINT,
        ),
        (lambda c: c.watch(max_queued=0), ValueError, "max_queued must be a positive int"),
        (lambda c: c.watch(max_queued=True), TypeError, "max_queued must be an int .changes., not bool True"),
        (
            lambda c: c.table("plans").watch(timeout="1"),
            TypeError,
            "timeout must be a number of seconds .an int or a float, or None for no limit., not str '1'",
        ),
        (lambda c: c.table("plans").wait_until("paid"), TypeError, "predicate must be callable, not str"),
        (
            lambda c: c.table("plans").wait_until(bool, timeout=-1),
            ValueError,
            "timeout must be a number of seconds from 0",
        ),
    ],
    ids=[
        "tables-a-str",
        "tables-an-empty-name",
        "tables-tigers-own",
        "namespace-not-a-str",
        "since-not-an-int",
        "since-negative",
        "wait-for-timeout-a-str",
        "timeout-negative",
        "max-queued-zero",
        "max-queued-a-bool",
        "table-watch-timeout-a-str",
        "predicate-not-callable",
        "wait-until-timeout-negative",
    ],
)
def test_bad_arguments_are_refused_naming_the_field(client, call, error, field):
    client.table("plans", prefix="plan").insert({"id": "plan_x"})  # wait_for checks its timeout even when found
    with pytest.raises(error, match=field):
        call(client)


def test_a_watch_timeout_of_the_wrong_type_raised_value_error_where_since_raises_type_error(tiger_url, client):
    """A user trial: watch(timeout="1") raised ValueError and watch(since="3") TypeError. As tiger's other checks
    (a name, a prefix, a record, since): a wrong type is a TypeError naming the argument, a bad value a ValueError;
    the blocking and the async client alike."""

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as aclient:
            for c in (client, aclient):
                plans = c.table("plans")
                wrongs = ((plans.watch, {"timeout": "1"}), (c.watch, {"timeout": True}), (c.watch, {"max_queued": True}))
                for watch, wrong in wrongs:
                    with pytest.raises(TypeError, match=r"^(timeout|max_queued) must be .*, not (str '1'|bool True)$"):
                        watch(**wrong)
                with pytest.raises(TypeError, match=r"^since must be None or an int \(a seq\), not str$"):
                    plans.watch(since="3")
                for watch, bad in ((plans.watch, {"timeout": -1}), (c.watch, {"max_queued": 0}), (plans.watch, {"since": -1})):
                    with pytest.raises(ValueError, match=r"^(timeout|max_queued|since) must be "):
                        watch(**bad)

    asyncio.run(main())


def test_watch_tables_empty_was_accepted_and_yielded_nothing_for_ever(tiger_url, client):
    """A user trial: client.watch(tables=[]) opened a feed of no table, which never yields. Refused, naming the
    argument and saying that None follows every table; the blocking and the async client alike."""

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as aclient:
            for c in (client, aclient):
                for empty in ([], (), iter([])):
                    with pytest.raises(ValueError, match=r"^tables must name at least one table .*; None follows every table$"):
                        c.watch(tables=empty)

    asyncio.run(main())


# -- Alarm: the timeouts of awaited waits, one timer re-used (no socket) ---------------------------------------


def test_an_alarm_expires_a_wait_nobody_woke_and_leaves_a_woken_one_alone():
    async def main() -> tuple[Any, Any, float]:
        loop, alarm = asyncio.get_running_loop(), Alarm()
        woken = loop.create_future()
        assert alarm.set(woken, 0.05) is None
        loop.call_soon(woken.set_result, "change")
        first = await woken
        late = loop.create_future()
        started = time.monotonic()
        assert alarm.set(late, 0.05) is None
        return first, await late, time.monotonic() - started

    first, second, waited = asyncio.run(main())
    assert first == "change"
    assert second is _EXPIRED
    assert 0.04 <= waited < 2.0


def test_an_alarm_keeps_one_timer_across_many_prompt_waits_and_rings_on_time_for_a_shorter_one():
    # Its reason to be: a loop.call_later per wait cost some 8 us of CPU per change of an async feed.
    async def main() -> tuple[int, float]:
        loop, alarm = asyncio.get_running_loop(), Alarm()
        for _ in range(1000):
            future = loop.create_future()
            alarm.set(future, 30.0)
            loop.call_soon(future.set_result, None)
            await future
        timers = len(loop._scheduled)  # type: ignore[attr-defined]
        short = loop.create_future()
        started = time.monotonic()
        alarm.set(short, 0.05)  # earlier than the timer armed for 30 s: armed again, earlier
        assert await short is _EXPIRED
        return timers, time.monotonic() - started

    timers, waited = asyncio.run(main())
    assert timers == 1
    assert 0.04 <= waited < 2.0


def test_a_busy_alarm_gives_a_second_waiter_a_timer_of_its_own():
    async def main() -> list[Any]:
        loop, alarm = asyncio.get_running_loop(), Alarm()
        first, second = loop.create_future(), loop.create_future()
        assert alarm.set(first, 0.05) is None
        extra = alarm.set(second, 0.1)
        assert extra is not None
        return list(await asyncio.gather(first, second))

    assert asyncio.run(main()) == [_EXPIRED, _EXPIRED]


class _SlowCrossThreadCancelLoop(asyncio.SelectorEventLoop):
    """A loop whose timers, cancelled from another thread, are cancelled late: the other thread is
    preempted inside ``TimerHandle.cancel`` (the window of a race, held open)."""

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        if self._thread_id is not None and self._thread_id != threading.get_ident():  # type: ignore[attr-defined]
            time.sleep(0.7)  # sleep-ok: a preemption simulated, the race's window held open past the ring
        super()._timer_handle_cancelled(handle)  # type: ignore[misc]


class _ThreadCheckingLoop(asyncio.SelectorEventLoop):
    """A loop whose futures note each result set from another thread than the loop's (not thread-safe:
    the loop is not woken, and under debug its callbacks are never scheduled)."""

    def __init__(self) -> None:
        super().__init__()
        self.foreign: list[str] = []

    def create_future(self) -> asyncio.Future[Any]:
        loop = self

        class Checked(asyncio.Future):  # type: ignore[type-arg]
            def set_result(self, result: object) -> None:
                if threading.get_ident() != loop._thread_id:  # type: ignore[attr-defined]
                    loop.foreign.append(threading.current_thread().name)
                super().set_result(result)

        return Checked(loop=self)


def test_a_feed_read_in_turn_by_two_running_loops_had_its_wait_ended_from_the_other_loops_thread(connect, ns):
    # An async test reading a feed that its app, on a portal thread's loop, read before (anyio's portal,
    # Starlette's TestClient). The feed's alarm, armed on the portal's loop, was cancelled and re-armed
    # from the test's thread; the portal's ring, running meanwhile, ended the test's wait from the portal's
    # thread: its loop was not woken, and under asyncio debug its task never was (a review saw the read
    # hang past its timeout for good).
    table = connect().table("plans", prefix="plan")
    feed = table.watch(timeout=0.5)  # (its alarm rings on the portal's loop 0.5 s after its read)
    portal = _SlowCrossThreadCancelLoop()
    thread = threading.Thread(target=portal.run_forever, name="portal", daemon=True)
    thread.start()
    try:

        async def portal_read() -> tiger.Change:
            asyncio.get_running_loop().run_in_executor(None, table.insert, {"id": "plan_1"})
            return await feed.__anext__()  # woken by the change, its alarm left armed on the portal's loop

        assert asyncio.run_coroutine_threadsafe(portal_read(), portal).result(10).id == "plan_1"

        async def test_read() -> float:
            feed.timeout = 0.3
            started = time.monotonic()
            with pytest.raises(tiger.Timeout, match=r"got no change within 0\.3s"):
                await asyncio.wait_for(feed.__anext__(), 5.0)
            return time.monotonic() - started

        test_loop = _ThreadCheckingLoop()
        try:
            waited = test_loop.run_until_complete(test_read())
        finally:
            test_loop.close()
        assert test_loop.foreign == []
        assert 0.3 <= waited < 4.0
    finally:
        portal.call_soon_threadsafe(portal.stop)
        thread.join(10)
        portal.close()


def test_a_feeds_timeout_set_after_watch_is_checked_as_watchs(connect, ns):
    # Feed.timeout is a public attribute: set to inf after watch() it reached the lock's wait unchecked.
    feed = connect().table("plans").watch()
    with pytest.raises(ValueError, match=NO_LIMIT_HINT):
        feed.timeout = float("inf")
    feed.timeout = 0.05
    with pytest.raises(tiger.Timeout, match=r"got no change within 0\.05s"):
        next(feed)
    feed.timeout = None
    assert feed.timeout is None


def test_wait_until_refuses_an_async_predicate_rather_than_take_its_coroutine_for_true(connect, ns):
    # an `async def` predicate returned a coroutine, truthy: wait_until returned the first record, unmatched
    invoices = connect().table("invoices", prefix="in")
    invoices.insert({"paid": False})

    async def is_paid(record):
        return record["paid"]

    class Paid:
        async def __call__(self, record):
            return record["paid"]

    for predicate in (is_paid, Paid()):
        with pytest.raises(TypeError, match="predicate must be a plain function, not the coroutine function"):
            invoices.wait_until(predicate, timeout=0.1)
    with pytest.raises(TypeError, match=r"predicate .*<lambda> returned coroutine: wait_until calls it"):
        invoices.wait_until(lambda r: is_paid(r), timeout=0.1)


def test_a_wait_ended_by_close_names_the_wait_and_a_closed_client_refuses_waits_alike(tiger_url, ns):
    # a wait_until pending at close said "<tiger.Feed tables=['invoices'] ...> ended", of a feed never opened; after
    # close, wait_for raised Unavailable ("the replica stopped") where every other call raises "this client is closed"
    client = tiger.connect(tiger_url)
    invoices = client.table("invoices", prefix="in")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            invoices.wait_until(lambda r: False, timeout=30)
        except BaseException as e:
            errors.append(e)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_for_state(lambda: client.replica._seq.feeds, "the wait's feed open")
    client.close()
    waiter.join(10)
    assert len(errors) == 1 and isinstance(errors[0], tiger.TigerError)
    assert str(errors[0]).startswith(f"wait_until on invoices in namespace {ns!r} ended: ")
    for call in (lambda: invoices.wait_for("in_x", timeout=1), lambda: invoices.wait_until(bool, timeout=1), client.watch):
        with pytest.raises(tiger.TigerError, match=r"^this client is closed$"):
            call()
