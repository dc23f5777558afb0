"""A client process's local replica: a Store fed by the writer's PUB socket.

A background thread owns the SUB socket (and a DEALER of its own for
snapshots and heartbeats). It applies each published change in seq order; on
a gap, a heartbeat ahead of it, or a new epoch it resynchronises from a fresh
snapshot. Readers in other threads read ``store`` directly without a lock (see
the table rules' Rule 4).

The changes this client's own calls make are not published to it (its SUB
skips their topic): the writing thread deposits each from its reply, and a
``Sequencer`` applies deposits and published changes in one seq order. While
an own call is in flight (``PendingCalls``), a gap is its change on the way,
not a loss.

Joining: subscribe, ask the writer to publish a heartbeat until one arrives
(the subscription is then live, so nothing published after the snapshot can
be missed), then fetch the snapshot in chunks and apply what the SUB queued
with a seq above the snapshot's.
"""

from __future__ import annotations

import collections
import gc
import itertools
import logging
import math
import operator
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from tiger import _protocol as p
from tiger._calls import PendingCalls, Unanswered, WaitDeadline
from tiger._clock import mark, monotonic, overslept, paused_since
from tiger._errors import ProtocolError, TigerError, Timeout, Unavailable
from tiger._feed import (
    History,
    Owner,
    Subscription,
    Waking,
    deliver,
    deliver_reset,
    hold_wakes,
    running_loop,
    send_held_wakes,
    subscribe,
    woken,
)
from tiger._lookup import Endpoint, connect_socket
from tiger._process import OUT_OF_DESCRIPTORS, memory_limit, wait_gone
from tiger._table import Change, Put, Rows, Store

log = logging.getLogger("tiger.replica")

SHORT_SNAPSHOTS = 3  # snapshots in a row that came short of records (a chunk unreadable): then the join fails

SUB_HWM = 200_000
# changes an answer may be ahead of the replica; beyond, and beyond a quarter of its records, it reloads (a snapshot
# costs 3-6 us a record here, replaying 8-10 us a change, 25 with a feed open: a user trial's 195k changes behind
# 400k records took over 5 s to replay with a feed)
CATCH_UP_MIN = 10_000
SNDHWM = 1000  # messages the replica's DEALER queues for a writer not taking them; past it, dropped (_send)
_ID = operator.itemgetter("id")


class _Resync(Exception):
    """The replica has lost track of the writer's changes and must reload."""


class _Refused(Unavailable):
    """The writer answered a snapshot request with an error: joining again at once would fail the same way."""


class _Unreadable(_Refused):
    """Snapshots came short of records ``SHORT_SNAPSHOTS`` times in a row: a running replica stops on it (asked
    again once a heartbeat, each time pulling that many snapshots for nothing)."""


class _Stopped(Exception):
    """The client is closing: leave the thread now."""


class Sequencer:
    """Applies numbered changes to a Store in seq order: published ones and this client's own.

    No sockets, no threads, no clock: the replica calls it holding its lock, and passes the
    time. ``calls`` knows this client's calls whose change may still come: in flight, or
    raised without an answer and asked again (the writer may have applied them); their
    changes arrive by ``deposit`` (from the answer), never published. A published change
    ahead of a gap is held while any is; ``lost()`` says why the replica must resync once
    none is, or once the gap is older than any call can be (its answer is not coming).
    """

    MAX_HELD = 100_000  # published changes held behind a gap, at most; then resync

    def __init__(self, store: Store, calls: PendingCalls, patience: float) -> None:
        self.store = store
        self.calls = calls
        self.epoch: str | None = None
        self.seq = -1
        self.loading = False  # a snapshot is on its way: nothing is applied until ``reset``
        self._patience = patience  # seconds a call can stay in flight (the client's timeout)
        self._own: dict[tuple[str, int], Change] = {}  # (epoch, seq) -> this client's change, from its reply
        self._held: dict[int, Change] = {}  # seq -> published change waiting for the gap before it
        self._announced = -1  # the highest seq a heartbeat of this epoch announced
        self._behind_since: float | None = None  # when a gap (or a heartbeat ahead) was first seen
        self.history = History()  # the last changes applied, for feeds opened since a seq
        self.feeds: list[Subscription] = []  # the open change feeds, each handed every change applied

    def reset(self, epoch: str, seq: int) -> None:
        """A snapshot of (epoch, seq) was loaded into the store."""
        if epoch != self.epoch:
            self._held.clear()
        for stale in [s for s in self._held if s <= seq]:  # the snapshot holds them already
            del self._held[stale]
        for key in [k for k in self._own if k[0] != epoch or k[1] <= seq]:
            del self._own[key]
        self.epoch, self.seq, self._announced = epoch, seq, seq
        self._behind_since = None
        self.loading = False
        self.history.restart()
        if self.feeds:  # changes may have been skipped: every feed is told so, before the ones that follow
            deliver_reset(self.feeds, seq)
        self._fill()

    def deposit(self, epoch: str, seq: int, change: Change) -> None:
        """This client's own change; applied now if it is next (and no snapshot is loading)."""
        if epoch != self.epoch or seq > self.seq:
            self._own[(epoch, seq)] = change
        if not self.loading:
            self._fill()

    def published(self, seq: int, change: Change) -> None:
        """A published change of the current epoch."""
        if seq > self.seq:
            self._held[seq] = change
            self._fill()

    def reached(self, epoch: str, seq: int) -> bool:
        """Whether the store holds ``seq`` of ``epoch`` (an answer's), or never will and holds a later
        writer's instead: its epoch started after that one (``_protocol.epoch_started``). The writer that
        answered was replaced (a restart) before the store caught up with it: its seqs will never come."""
        if self.epoch == epoch:
            return self.seq >= seq
        if self.epoch is None:
            return False
        mine, theirs = p.epoch_started(self.epoch), p.epoch_started(epoch)
        return mine is not None and theirs is not None and mine > theirs

    def behind(self, seq: int) -> int:
        """How many changes up to ``seq`` (of this epoch) the store has neither applied nor received."""
        return seq - self.seq - len(self._held)

    def heartbeat(self, seq: int) -> None:
        """The writer is at ``seq`` (current epoch): every change up to it was published or answered."""
        self._announced = max(self._announced, seq)

    def watch(self, sub: Subscription, since: int | None) -> Subscription:
        """Open the change feed ``sub`` (see ``tiger._feed.subscribe``): fed every change applied from now on,
        after the remembered ones since ``since`` (``ValueError`` if not remembered); returns it."""
        return subscribe(self.feeds, self.history, self.seq, sub, since)

    def _fill(self) -> None:
        recent = self.history.changes
        while True:
            nxt = self.seq + 1
            own = self._own.pop((self.epoch, nxt), None) if self._own else None  # type: ignore[arg-type]
            change = self._held.pop(nxt, own)  # both, while joining: a join subscribes to every topic
            if change is None:
                break
            self.store.apply(change)
            self.seq += 1
            recent.append(change)  # the history: O(1), and only a change of several records is weighed
            if type(change) is not Put or len(change.records) != 1:
                self.history.weigh(self.seq, change)
            if self.feeds:  # the cost of feeds while none is open: this test
                deliver(self.feeds, self.seq, change)

    def lost(self, now: float) -> str | None:
        """Why the store cannot catch up without a snapshot (None: it can, or a call in flight may fill the gap)."""
        if not self._held and self._announced <= self.seq:
            self._behind_since = None
            return None
        if self._behind_since is None:
            self._behind_since = now
        if len(self._held) > self.MAX_HELD:
            return f"{len(self._held)} published changes held behind a gap at seq {self.seq + 1}"
        if self.calls.in_flight and now - self._behind_since <= self._patience:
            return None
        if self._held:
            return f"gap: got seq {min(self._held)} after {self.seq}"
        return f"heartbeat at seq {self._announced}, replica at {self.seq}"


class Changes(Waking):  # type: ignore[misc]
    """The replica's lock and its signal that something changed (a change applied, the replica ready,
    stopped or failed), for threads (``wait``) and asyncio tasks (``future``): ``notify_all`` wakes both
    (see ``Waking``). A task never blocks on the lock for long: it is held only while a change is applied
    or a predicate checked."""


class Replica:
    """A Store kept equal to the writer's by a background thread."""

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: Endpoint,
        pub_url: str,
        client_id: str,
        *,
        heartbeat: float,
        timeout: float,
        secure: Callable[[zmq.Socket[Any]], None] = lambda sock: None,
    ) -> None:
        self._secure = secure
        self.store = Store()
        self._calls = PendingCalls(timeout)  # guarded by ``changed``
        self._seq = Sequencer(self.store, self._calls, patience=2 * timeout)
        self.changed = Changes()  # guards applying; notified after each
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.resyncs = 0
        self._rejoined_at = -math.inf  # when ``_rejoin`` last began (they are a heartbeat apart at least)
        self._reload: str | None = None  # set by a caller far behind (``take_answer``): why the thread should reload
        self.join_error: Unavailable | None = None  # why the last attempt to join failed (then it tries again)
        self.chunk_at: float | None = None  # when the last chunk of this attempt's snapshot came (``joined_by``)
        self._join_began = math.inf  # when the attempt to join under way began
        self.unsent = 0  # messages to the writer dropped: its queue was full (the writer gone or paused long)
        self.changes_received = 0  # published changes that reached this replica (its own calls' never do)
        self.last_heard = monotonic()
        self.last_awake = self.last_heard  # the replica thread's last wake-up: it was listening until then
        self._ctx = ctx
        self._url = endpoint.url
        self._endpoint = endpoint  # where its sockets connect for the url (the host name looked up by tiger)
        self._pub_url = pub_url
        self._client_id = client_id
        self._topic = p.topic_of(client_id)
        self._everything = False  # subscribed to every topic, this client's own too (while joining)
        self._heartbeat = heartbeat
        self._timeout = timeout
        # The replica's own requests have negative ids: positive ones are the client's calls, whose
        # answers this DEALER gets when it asks for them again (see call_failed).
        self._req_ids = itertools.count(1)
        self._stopping = False  # set by stop() called on this thread (a dropped client's finalizer)
        self._later: collections.deque[Callable[[], object]] = collections.deque()  # see ``later``
        self._closed = False  # the client closed it (else a failure is the replica's own)
        self._term_context = False  # then this thread ends the context too, once its sockets are closed
        self._stop_url = f"inproc://tiger-replica-stop-{id(self)}"
        self._stop_rx = ctx.socket(zmq.PAIR)
        self._stop_rx.bind(self._stop_url)
        self._thread = threading.Thread(target=self._run, name="tiger-replica", daemon=True)

    # -- called from user threads -----------------------------------------------------

    def start(self, timeout: float | None = None, deadline: float | None = None) -> None:
        """Start the thread; with a ``timeout`` (seconds), return once the replica holds a full snapshot
        (else stop it and raise ``Unavailable``), or raise what stopped it; ``deadline``
        (``time.monotonic()``): when that timeout ends, if it began before (a client's connect). Without a
        timeout, return at once: ``ready`` is set, and ``changed`` notified, when the snapshot is loaded or
        the thread stopped."""
        self._thread.start()
        if timeout is None:
            return
        end = monotonic() + timeout if deadline is None else deadline
        try:
            self.wait_until(self.joined_or_failed, end, str, extend=self.joining_by)
        except Timeout:
            self.stop()
            raise self.no_snapshot(timeout) from None
        if self.failure is not None:
            raise self.failure

    def joined_by(self, deadline: float) -> float:
        """When a join begun to be done by ``deadline`` (``time.monotonic()``) is given up: at ``deadline``, or
        later while its snapshot's chunks keep coming, each within the timeout of the one before. A store
        whose snapshot takes longer than the timeout to send and load (300k records in a ``pytest -n 4``
        start on 2 busy cores) is joined all the same: before, connect raised "no snapshot within 5s"
        halfway through it, and every test of that worker failed. A writer that stops sending is given up
        a timeout after its last chunk; only the chunks of an attempt begun by ``deadline`` count (a writer
        failing part-way through every snapshot, restarted over and over, kept a connect waiting for ever)."""
        chunk_at, began = self.chunk_at, self._join_began
        return deadline if chunk_at is None or began > deadline else max(deadline, chunk_at + self._timeout)

    def joined_or_failed(self) -> bool:
        """The join is over: the snapshot loaded (``ready``), or the thread stopped with ``failure`` (which the
        connect raises: set a moment before ``ready``, a wait for ``ready`` alone could take it for a stop)."""
        return self.ready.is_set() or self.failure is not None

    def joining_by(self, deadline: float) -> float | None:
        """A join past ``deadline`` (``extend`` of a wait for ``ready``): the later deadline while its snapshot's
        chunks keep coming (``joined_by``), else None."""
        later = self.joined_by(deadline)
        return later if later > monotonic() else None

    @property
    def closed(self) -> bool:
        """Whether its client (or the client's finalizer, at exit) stopped it."""
        return self._closed

    def no_snapshot(self, timeout: float) -> Unavailable:
        """What connecting raises when this replica held no snapshot within ``timeout`` seconds."""
        from tiger._server import why_refused  # (here: _server is not needed on any other path of a replica)

        why = "" if self.join_error is None else f" (last attempt: {self.join_error})"
        chunk_at = self.chunk_at
        if chunk_at is not None:
            why += f" (its last chunk came {monotonic() - chunk_at:.1f}s ago)"
        gone = why_refused(self._url, 0.1)  # a writer that is gone, not only slow
        why += f": {gone}" if gone else ""
        return Unavailable(f"no snapshot from the tiger writer at {self._url} within {timeout}s{why}")

    def stop(self) -> bool:
        """Stop the thread and wait for it (at most 5 s).

        False if called on the thread itself (a client collected there): it stops as soon as this
        returns, and its waiters learn it then; nothing here may take ``changed``, which it may hold.
        """
        if self._thread is threading.current_thread():
            self._stopping = self._closed = True
            return False
        was_alive = self._thread.is_alive()
        if was_alive:
            try:
                tx = self._ctx.socket(zmq.PAIR)
            except zmq.ZMQError:  # no descriptor left for it ("Too many open files": every close failed so, and
                self._stopping = self._closed = True  # freed nothing): seen at the thread's next wake-up
                self._thread.join(5.0)
            else:
                try:
                    tx.connect(self._stop_url)
                    tx.send(b"stop")
                    self._thread.join(5.0)
                finally:
                    tx.close(linger=0)
        if not self._thread.is_alive():  # else it still polls this socket: it closes it as it ends
            self._stop_rx.close(linger=0)
            if was_alive and self._thread.native_id is not None:  # (its stack taken until it is gone: the next
                wait_gone([self._thread.native_id])  # client's threads; not for one ended long ago: a tid reused)
        with self.changed:  # whoever waits on this replica (once, wait_for, sync, a feed) learns it is closed
            if self.failure is None:
                self._closed = True
                self.failure = TigerError("the client was closed")
            self._end_feeds()
            self.changed.notify_all()
        return True

    def term_context_when_stopped(self) -> None:
        """After ``stop()`` returned False: the thread ends the context once it has closed its sockets."""
        self._term_context = True

    @property
    def epoch(self) -> str | None:
        return self._seq.epoch

    @property
    def seq(self) -> int:
        return self._seq.seq

    def call_started(self, req_id: int, ended: Callable[[], bool] | None = None) -> None:
        """The call ``req_id`` of this client is about to be sent: its change will come by ``catch_up(...,
        own=True)``. Its caller says ``call_failed(req_id)`` however it ends (said again after the answer
        was taken, it changes nothing), so that a signal landing anywhere leaves no call in flight.

        ``ended``: whether the caller can no longer take the answer (an asyncio call: its event loop's
        ``is_closed``); this thread then finishes the call at its next turn, asking it again at once if it
        was sent (``call_sent``): see ``PendingCalls``' Rule 6."""
        with self.changed:
            self._calls.call_started(req_id, ended)

    def call_sent(self, req_id: int, payload: bytes, deadline: float) -> None:
        """The call ``req_id``, started with ``ended``, is being sent (its bytes and deadline)."""
        with self.changed:
            self._calls.call_sent(req_id, payload, deadline)

    def call_failed(self, req_id: int, unanswered: Unanswered | None = None) -> None:
        """The call ``req_id`` announced by ``call_started`` raised: after an error answer, nothing to deposit.

        ``unanswered`` (its request id, bytes and deadline) when it raised with no answer: the writer
        may have applied it (its answer came too late). Once the deadline has passed, which is after
        the call's expiry, this thread sends it again: the writer answers a repeat from the answers it
        keeps, or refuses it as expired if it never applied it: never applied late.
        """
        if not self._calls.writing_call(req_id):  # ended already, or never started (a forked child's call,
            return  # refused before it started: the lock it inherited may be held for good)
        with self.changed:
            self._calls.call_finished(req_id, unanswered)

    def later(self, work: Callable[[], object]) -> None:
        """Have this replica's thread run ``work`` (what a call closed on its way out left to do: say
        ``call_failed``) at the start of its next turn, outside its lock. For an async call's coroutine
        being closed (``GeneratorExit``): the garbage collector closes the coroutine of a task whose event
        loop was closed under it at any allocation of any thread, even inside this replica's own work under
        ``changed`` (a lock the thread holds again freely), whose state that work would change under it. A
        deque's ``append`` takes no lock."""
        self._later.append(work)

    def _do_later(self) -> None:
        """Run the work ``later`` queued (on this replica's thread, outside ``changed``)."""
        while self._later:
            work = self._later.popleft()
            try:
                work()
            except Exception:  # (one client's leftover must not stop the replica of every call)
                log.debug("work left by a closed call raised", exc_info=True)

    def answer_left(self, req_id: int, answer: p.Ok | None) -> None:
        """The write ``req_id`` of this client raised on its way out (a signal): its ``answer``, if it had
        one and its change was not taken yet, is taken now (else the gap its seq leaves waits the whole
        timeout before a resync, and this client's writes meanwhile time out: a review); with none, the
        call is ended (``call_failed``). A call ended already: nothing."""
        if not self._calls.writing_call(req_id):
            return
        if answer is not None:
            self.take_answer(answer, own=True)
        else:
            self.call_failed(req_id)

    def catch_up(self, answer: p.Ok, deadline: float, own: bool = False, since: float | None = None) -> None:
        """Return once the replica has applied the answer's (epoch, seq), or has since loaded the snapshot
        of a later writer (see ``reaching``); past ``deadline`` (``time.monotonic()`` seconds; moved by the
        pauses ``since``, as ``wait_until``), or past the last chunk of a resync under way then (``joined_by``),
        raise ``Timeout``."""
        if self.take_answer(answer, own):
            return
        self.wait_until(*self.reaching(answer, deadline), extend=self.caught_up_by, since=since)

    def caught_up_by(self, deadline: float) -> float | None:
        """A wait for an answered seq (``catch_up``) past ``deadline``: the later deadline while a resync begun
        by then keeps loading the snapshot (``joined_by``: each chunk within the timeout of the one before),
        else None (``Timeout``). A write answered as a big store's resync began (a gap, a writer restarted)
        raised ``Timeout`` at the client's timeout, though applied, halfway through the snapshot. ``deadline``
        is the wait's first: a resync begun after it (a writer replaced mid-snapshot, again and again) counts
        no more, nor one done (a review: both kept a write waiting on)."""
        return self.joining_by(deadline) if self._seq.loading else None

    def reaching(self, answer: p.Ok, deadline: float) -> tuple[Callable[[], bool], float, Callable[[], str]]:
        """What waiting for the answer's (epoch, seq) is: the predicate, the deadline, the message past it.

        Reached when the replica holds that seq of that epoch, or the snapshot of a writer started after
        the one that answered (``Sequencer.reached``): that one was replaced (a restart) before the replica
        caught up with it, and its seqs will never come; the replica holds what the writer after it has
        (the answered write too, if that writer kept it: ``--data``)."""
        epoch, seq = answer.epoch, answer.seq

        def what() -> str:
            where = "it is loading a snapshot of the store" if self._seq.loading else f"it holds seq {self._seq.seq}"
            return f"the local replica did not reach seq {seq} in time ({where}); the writer answered at that seq"

        return lambda: self._seq.reached(epoch, seq), deadline, what

    def take_answer(self, answer: p.Ok, own: bool = False) -> bool:
        """Apply what an answer carries; True when the replica then holds its (epoch, seq).

        ``own``: the answer to a call announced by ``call_started()``; its change (never published to
        this replica) is applied here, in seq order. ``answer.before``: published changes the answer
        carried, applied here too, so that the calling thread need not wait for the replica thread to
        receive them.
        """
        epoch, seq, change, before = answer.epoch, answer.seq, answer.change, answer.before
        with self.changed:
            # only when they follow on from what the replica holds: ahead of a gap they would be held, and
            # a held change with no call of ours in flight reads as a loss (a needless snapshot reload)
            if before and epoch == self.epoch and not self._seq.loading:
                first = answer.first_before()
                if first <= self._seq.seq + 1:
                    for i, other in enumerate(before):
                        self._seq.published(first + i, other)
            if own and change is not None:
                self._seq.deposit(epoch, seq, change)
            if own:  # after the deposit: a signal landing before it leaves the call in flight, and the
                # caller's ``answer_left`` takes the answer again (finished first, the change was lost)
                self._calls.call_finished(answer.req_id)
            if (own and change is not None) or before:
                self.changed.notify_all()
            behind = self._seq.behind(seq) if epoch == self._seq.epoch and not self._seq.loading else 0
            if behind > CATCH_UP_MIN and behind > len(self.store) // 4:
                # (a paused process with a backlog in its SUB queue) replaying it would take longer than a
                # snapshot of the store: the replica thread reloads, so that this call ends in its time
                self._reload = f"{behind} changes behind an answer: a snapshot is quicker than replaying them"
            return self.epoch == epoch and self.seq >= seq

    def late_answer(self, reply: p.Reply) -> None:
        """An answer to a call of this client that raised unanswered (``call_failed``): to this replica's
        own asking, or come late on the client's command socket (the caller was interrupted or cancelled
        after sending it). Its change is deposited, filling the gap it left (a stale one is ignored)."""
        with self.changed:
            self._calls.answered(reply.req_id)  # type: ignore[arg-type]
            if type(reply) is p.Ok and reply.change is not None:
                self._seq.deposit(reply.epoch, reply.seq, reply.change)
            self.changed.notify_all()

    def watch(self, sub: Subscription, since: int | None) -> Subscription:
        """Open the change feed ``sub`` on this replica (``Sequencer.watch``), atomically with respect to the
        changes applied; it ends with the client ``sub.owner`` (``end_owner``). ``TigerError`` if that client
        is closed (``"this client is closed"``) or this replica stopped."""
        with self.changed:
            if self.failure is not None:
                raise self._stopped()
            if sub.owner is not None and sub.owner.closed:  # (checked under the lock ``end_owner`` sets it in)
                raise TigerError("this client is closed")
            return self._seq.watch(sub, since)

    def end_owner(self, owner: Owner) -> None:
        """The client ``owner`` closed while this replica goes on for another client sharing it
        (``tiger.aio.AsyncClient.sharing``): each feed opened through it ends (its reader, a thread or a
        task, gets ``TigerError("<feed> ended: the client was closed")`` after the changes queued), and each
        of its waits (``until`` given ``owner``) raises ``TigerError("the client was closed")``,
        as they would if this replica stopped; the other client's feeds and waits go on. Idempotent."""
        with self.changed:
            owner.closed = True
            mine = [feed for feed in self._seq.feeds if feed.owner is owner]
            for feed in mine:
                feed.end(TigerError, f"{feed.name} ended: the client was closed")
            if mine:
                self._seq.feeds[:] = [feed for feed in self._seq.feeds if feed.owner is not owner]
            self.changed.notify_all()

    def _failure_of(self, error: BaseException) -> BaseException:
        """What the replica thread's ``error`` is said as to its callers: out of memory (``ulimit -v``, a
        container's limit), a ``TigerError`` saying so; connect raised a bare ``MemoryError`` from msgpack,
        or blamed the writer ("no snapshot ... within 5s") (a user trial)."""
        if not isinstance(error, MemoryError):
            return error
        doing = "loading the snapshot of the store" if self._seq.loading or not self.ready.is_set() else "applying changes"
        failure = TigerError(
            f"the local replica of {self._url} ran out of memory {doing} (this process's `ulimit -v` is {memory_limit()}; "
            "a container's memory limit ends the same way): every client holds a full replica of the store"
        )
        failure.__cause__ = error
        return failure

    def _stopped(self) -> TigerError:
        """What a wait on this replica raises once it has stopped (``failure`` set)."""
        if self._closed:
            return TigerError("the client was closed")
        return Unavailable(f"the replica of {self._url} stopped: {self.failure}")

    def _end_feeds(self) -> None:
        """Holding ``changed``, once stopped: every open feed ends, its reader told why after what it queued."""
        error = self._stopped()
        for feed in self._seq.feeds:
            feed.end(type(error), f"{feed.name} ended: {error}")
        self._seq.feeds.clear()

    def wait_until(
        self,
        predicate: Callable[[], bool],
        deadline: float,
        what: Callable[[], str],
        extend: Callable[[float], float | None] | None = None,
        since: float | None = None,
    ) -> None:
        """Block until ``predicate()`` (checked holding the lock, after each change) is true; past
        ``deadline`` (``time.monotonic()`` seconds) raise ``Timeout(what())``, unless ``extend(first)`` then
        gives a later deadline (work that grows with the store still going on: a join's or a resync's
        snapshot; ``first``: ``deadline``, moved by pauses only); if the replica stopped, ``Unavailable``
        (``TigerError("the client was closed")`` if its client closed it). Time this process was not running
        (``overslept``: SIGSTOP, Ctrl-Z) does not count: the deadline moves by it. ``since``: when the call
        this wait is a step of began (``time.monotonic()``; ``deadline`` is the call's, unmoved): every pause
        found since counts, also one the replica thread finds only after this wait began (a write stopped 10 s
        as it waited for its answer raised Timeout "loading a snapshot" though applied: its wait for the
        replica began past the deadline, the stop not yet found). ``tiger.aio`` awaits the same with
        ``until``. (A blocking client never shares its replica: its close stops it.)"""
        wait = WaitDeadline(deadline, monotonic() if since is None else since)  # (pauses found by any thread)
        with self.changed:
            while not predicate():
                if self.failure is not None:
                    raise self._stopped()
                now = monotonic()
                remaining = wait.at(now) - now
                if remaining <= 0:
                    later = None if extend is None else extend(wait.first)
                    if later is None:
                        raise Timeout(what())
                    wait.moved, remaining = later, later - now
                slept = mark()
                self.changed.wait(min(remaining, 0.5))
                overslept(slept, min(remaining, 0.5))

    async def until(
        self,
        predicate: Callable[[], bool],
        deadline: float,
        what: Callable[[], str],
        owner: Owner | None = None,
        extend: Callable[[float], float | None] | None = None,
        since: float | None = None,
    ) -> None:
        """``wait_until`` for an asyncio task (the same errors, ``extend``, ``since`` and pauses as there), of the client
        ``owner``: once it is closed (``end_owner``), ``TigerError("the client was closed")``. The event loop
        runs on while it waits (no thread). One future per check, forgotten when the check ends whatever ends
        it; awaited by ``_feed.woken`` (one turn of the loop, and never swallowing a cancellation that comes
        as it resolves)."""
        loop = running_loop()
        wait = WaitDeadline(deadline, monotonic() if since is None else since)  # (a loop held by a task is no pause)
        while True:
            with self.changed:
                if predicate():
                    return
                if self.failure is not None:
                    raise self._stopped()
                if owner is not None and owner.closed:
                    raise TigerError("the client was closed")
                future = self.changed.future(loop)
            try:
                now = monotonic()
                remaining = wait.at(now) - now
                if remaining <= 0:
                    later = None if extend is None else extend(wait.first)
                    if later is None:
                        raise Timeout(what())
                    wait.moved, remaining = later, later - now
                await woken(future, min(remaining, 0.5))
            except GeneratorExit:  # closed by the garbage collector (its loop closed under it), maybe inside
                raise  # the replica's work holding ``changed``: taking it again and letting it go (``Waking``
                # lets go at every level) left that work unlocked. Listed, it goes at the next notify_all.
            except BaseException:
                with self.changed:
                    self.changed.forget(future)
                raise
            else:
                with self.changed:
                    self.changed.forget(future)

    # -- the thread ------------------------------------------------------------------

    def silent_for(self) -> float:
        """Seconds the writer went unheard on the PUB socket while this replica was listening: from its
        last message to the moment the replica thread last began to listen (at least every 0.5 s). A
        process that was not running (SIGSTOP, a debugger, a suspended laptop) did not listen meanwhile:
        after it resumes, until its replica thread has read what was queued, the writer is not blamed
        for that time."""
        return max(0.0, self.last_awake - self.last_heard)

    def _subscriber(self) -> zmq.Socket[Any]:
        """The SUB socket, subscribed to every topic but this client's own changes, connected to the PUB."""
        sub: zmq.Socket[Any] = self._ctx.socket(zmq.SUB)
        try:  # (closed on any error, as every socket made here: one left open holds the context's term() for ever)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVHWM, SUB_HWM)
            # subscriptions are messages the SUB sends, resent in full at each reconnection: past SNDHWM libzmq
            # drops them silently (the topics they covered then never arrive), so no limit (765 + a few per
            # reconnection)
            sub.setsockopt(zmq.SNDHWM, 0)
            # ZeroMQ heartbeats of its own, upstream: the writer closes a subscriber it hears nothing from for 3 s
            # (a stopped process), and its own PING waits behind what is queued for this one, so a live
            # subscriber on a slow link, or one whose queue is full, was cut off; any frame from here tells it
            # this one lives. No timeout of its own (the writer's silence is the replica's to judge: heartbeats)
            sub.setsockopt(zmq.HEARTBEAT_IVL, 1000)
            sub.setsockopt(zmq.HEARTBEAT_TIMEOUT, 86_400_000)
            for prefix in p.subscriptions(self._topic):  # every topic but this client's own changes
                sub.setsockopt(zmq.SUBSCRIBE, prefix)
            self._everything = False
            self._secure(sub)
            connect_socket(sub, self._pub_url)
        except BaseException:
            sub.close(linger=0)
            raise
        return sub

    def _run(self) -> None:
        sub: zmq.Socket[Any] | None = None
        dealer: zmq.Socket[Any] | None = None
        try:
            try:
                # made here, inside: sockets that cannot be made (out of file descriptors: "Too many open
                # files") end this thread with that error, which connect raises at once (made before, they
                # ended the thread unseen, and connect waited its whole timeout and blamed the writer)
                sub = self._subscriber()
                dealer = self._dealer()
                poller = zmq.Poller()
                poller.register(sub, zmq.POLLIN)
                poller.register(self._stop_rx, zmq.POLLIN)
                poller.register(dealer, zmq.POLLIN)
                while True:
                    try:
                        queued = self._resync(sub, dealer)
                        break
                    except _Refused:  # connect() raises it (the outer handler records it)
                        raise
                    except Unavailable as e:  # the writer went away while this replica joined: join the next one
                        # (until connect() gives up: it stops this thread at its timeout, naming this error)
                        log.info("replica waiting for the writer to join: %s", e)
                        self.join_error = e
                        sub = self._rejoin(poller, sub, dealer)
            except BaseException as e:
                if type(e) is not _Stopped:  # (before ``ready``: connect, woken by it, raises this failure)
                    self.failure = self._failure_of(e)
                raise
            finally:
                self.ready.set()
                with self.changed:  # (an asyncio task awaits this, not the event)
                    self.changed.notify_all()
            must_resync = False
            next_beat, beat_cpu = monotonic(), time.process_time()
            hold_wakes()  # tasks are woken as this thread waits again, not while it goes on applying
            while True:
                try:
                    if must_resync:
                        send_held_wakes()
                        queued = self._resync(sub, dealer)
                        must_resync = False
                    for data in queued:
                        if self._reload is not None:
                            break
                        self._receive(data)
                    queued = []
                    self._reload_if_asked()
                    # a short client timeout polls more often: a call to ask again goes soon after its deadline
                    interval = min(self._heartbeat, 0.5, self._timeout / 4)
                    # listening from here: set before the poll, so that after a pause it still says when
                    # the thread began to listen, until the messages queued meanwhile have been read
                    now = monotonic()
                    if self._calls.asking:  # and at once when one is due: the writes after it wait for its change
                        with self.changed:
                            due = self._calls.next_due()
                        if due is not None:
                            interval = max(0.0, min(interval, due - now))
                    paused = now - self.last_awake - interval - 0.5  # longer than a poll and its work: not running
                    if paused > 0:  # (libzmq may not have handed over what came meanwhile yet: do not blame the writer)
                        self.last_heard = min(now, self.last_heard + paused)
                    self.last_awake = now
                    send_held_wakes()
                    p.poll_on_a_real_clock()
                    events = dict(poller.poll(int(interval * 1000)))
                    # (for the waits of ``paused_since``; the CPU time read once a beat: 0.7 us a read)
                    overslept((now, beat_cpu), interval)
                    if self._stop_rx in events or self._stopping:
                        return
                    if self._later:
                        self._do_later()
                    if sub in events:
                        for _ in range(10_000):
                            if self._reload is not None:
                                break
                            try:
                                self._receive(sub.recv(zmq.NOBLOCK))
                            except zmq.Again:
                                break
                            if not p.waiting(sub):  # (most wake-ups bring one message)
                                break
                        self._reload_if_asked()
                    if dealer in events:
                        self._answer(sub, dealer.recv())
                    if self._calls.asking:
                        self._ask_again(dealer)
                    if monotonic() >= next_beat:
                        next_beat = monotonic() + min(self._heartbeat, 0.5)
                        beat_cpu = time.process_time()
                        if self._calls.ending and self._abandon_ended():  # (a dict's truth, read unlocked)
                            self._ask_again(dealer)
                        with self.changed:
                            lost = self._seq.lost(monotonic())  # a gap no call in flight can fill
                        if lost is not None:
                            raise _Resync(lost)
                        self._send(dealer, p.encode_request(p.Beat(self._client_id)))
                        if self.silent_for() > self._heartbeat * 3:
                            # the writer may be gone, or back with a new epoch and PUB endpoint: ask it
                            self._ask_hello(dealer)
                except _Resync as why:
                    log.info("replica resynchronising: %s", why)
                    self.resyncs += 1
                    must_resync = True
                except _Unreadable:  # (reported to every waiting caller, below)
                    raise
                except Unavailable as e:  # the writer went away during a resync: try again once it answers
                    log.info("replica waiting for the writer: %s", e)
                    must_resync = True
                    queued = []
                    send_held_wakes()
                    sub = self._rejoin(poller, sub, dealer)
        except _Stopped:
            return
        except BaseException as e:  # reported to every waiting caller
            self.failure = self._failure_of(e)
            log.debug("replica thread stopped: %r", e)
        finally:
            send_held_wakes(stop=True)
            with self.changed:
                if self._stopping and self.failure is None:
                    self.failure = TigerError("the client was closed")
                if self.failure is not None:
                    self._end_feeds()
                self.changed.notify_all()
            if sub is not None:
                sub.close(linger=0)
            if dealer is not None:
                dealer.close(linger=0)
            self._stop_rx.close(linger=0)  # here too: a stop() that gave up waiting left it open
            if self._term_context:
                self._ctx.term()

    def _reload_if_asked(self) -> None:
        """``_Resync`` if a caller found the replica too far behind its answer (``take_answer``)."""
        if self._reload is None:
            return
        with self.changed:
            why, self._reload = self._reload, None
        if why is not None:
            raise _Resync(why)

    def _rejoin(self, poller: zmq.Poller, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> zmq.Socket[Any]:
        """After a resync the writer did not finish: a fresh SUB in place of ``sub`` (a writer back on the same
        ipc path was once seen to publish to the old one nothing ever again), then wait until a writer
        answers (``_await_writer``), at most once a heartbeat (a writer refusing snapshots is not asked again
        and again at once). Returns the new SUB."""
        pause = self._rejoined_at + self._heartbeat - monotonic()
        p.poll_on_a_real_clock()
        if self._stopping or (pause > 0 and self._stop_rx.poll(max(1, int(pause * 1000)))):
            raise _Stopped
        self._rejoined_at = monotonic()
        try:  # (made before the old one is closed: out of file descriptors, the old one is kept and reconnects
            fresh = self._subscriber()  # by itself; the thread died of ZeroMQ's "Too many open files")
        except zmq.ZMQError as e:
            if e.errno not in OUT_OF_DESCRIPTORS:
                raise
            log.warning("replica keeps its SUB socket: this process is out of file descriptors (%s)", e)
        else:
            poller.unregister(sub)
            sub.close(linger=0)
            sub = fresh
            poller.register(sub, zmq.POLLIN)
        self._await_writer(sub, dealer)
        return sub

    def _abandon_ended(self) -> int:
        """Finish the calls whose callers can no longer take their answers (their event loop closed under
        them), those sent to be asked again now (``PendingCalls``' Rule 6): not when the garbage collector
        gets to their coroutines, if ever, and then after their deadline, the writes after them held until
        then (a blocking client's sharing this replica too). Once a heartbeat at most: it looks at every
        such call in flight. Returns how many were finished."""
        with self.changed:
            return self._calls.abandon_ended(monotonic())

    def _ask_again(self, dealer: zmq.Socket[Any]) -> None:
        """Send again the calls of this client that raised with no answer (``call_failed``), once
        their deadline has passed; forget those asked longer ago than an answer can take."""
        with self.changed:
            due = self._calls.due(monotonic())
        for payload in due:
            self._send(dealer, payload)  # unsent: forgotten once asked too long ago, then a gap left is a resync

    def _answer(self, sub: zmq.Socket[Any], data: bytes) -> None:
        """A reply on the replica's own DEALER: a call asked again, a late sync answer, or a Hello's."""
        try:
            reply = p.decode_reply(data)
        except ProtocolError:
            return
        if reply.req_id is not None and reply.req_id > 0:  # a call of the client's, asked again
            self.late_answer(reply)
            return
        if type(reply) is not p.Ok or not isinstance(reply.result, dict) or "pub" not in reply.result:
            return
        if reply.epoch != self.epoch:
            pub_url = _reachable(self._endpoint.now(), reply.result["pub"])
            if pub_url != self._pub_url:
                sub.disconnect(self._pub_url)
                connect_socket(sub, pub_url)
                self._pub_url = pub_url
            raise _Resync(f"the writer answers with a new epoch {reply.epoch}")

    def _await_writer(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> None:
        """Ask Hello until the writer answers (or stop), following it to a new PUB endpoint; then resync."""
        while True:
            self._ask_hello(dealer)
            if self._wait(dealer, self._heartbeat):
                try:
                    self._answer(sub, dealer.recv())
                except _Resync:
                    pass
                return

    def _wait(self, sock: zmq.Socket[Any], timeout: float) -> bool:
        """Poll ``sock`` for up to ``timeout`` seconds; ``_Stopped`` if the client closes meanwhile."""
        if self._stopping:
            raise _Stopped
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._stop_rx, zmq.POLLIN)
        p.poll_on_a_real_clock()
        events = dict(poller.poll(max(1, int(timeout * 1000))))
        if self._stop_rx in events:
            raise _Stopped
        return sock in events

    def _ask_hello(self, dealer: zmq.Socket[Any]) -> None:
        """Ask the writer hello (its answer, read by ``_answer``, names its epoch and PUB endpoint); a negative
        request id, as all of the replica's own requests."""
        self._send(dealer, p.encode_request(p.Hello(-next(self._req_ids), self._client_id)))

    def _send(self, dealer: zmq.Socket[Any], payload: bytes) -> bool:
        """Queue ``payload`` for the writer without blocking; False (counted in ``unsent``) if the DEALER's
        queue is full. A DEALER with no writer to take its messages queues them, up to ``SNDHWM``, then a
        blocking send waits for one: the replica thread would stop listening (and answering ``stop()``)
        until a writer came back. A heartbeat or hello dropped is sent again at the next tick, a sync call
        at the next round of ``_confirm_subscription``; a call to ask again is not (it is forgotten after the
        client's timeout, and the gap it may leave is a snapshot reload)."""
        try:
            dealer.send(payload, zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.unsent += 1
            return False

    def _dealer(self) -> zmq.Socket[Any]:
        dealer: zmq.Socket[Any] = self._ctx.socket(zmq.DEALER)
        try:
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.RCVHWM, 0)  # a snapshot is many messages: never drop one
            dealer.setsockopt(zmq.SNDHWM, SNDHWM)
            self._secure(dealer)
            connect_socket(dealer, self._endpoint.now())
        except BaseException:
            dealer.close(linger=0)
            raise
        return dealer

    def _receive(self, frame: bytes) -> None:
        """One published frame: the topic (``p.TOPIC_SIZE`` bytes), then the message."""
        self.last_heard = monotonic()
        if len(frame) <= p.TOPIC_SIZE:
            raise _Resync(f"a published frame of {len(frame)} bytes: no message after the topic")
        data = frame[p.TOPIC_SIZE :]
        head = p.peek_published(data)
        if head is not None:
            self.changes_received += 1
        if head is not None and head[0] == self.epoch and head[1] <= self.seq:
            return  # applied already (from the snapshot): not worth decoding
        try:
            m = p.decode_published(data)
        except ProtocolError as e:
            raise _Resync(f"undecodable published message: {e}") from None
        with self.changed:
            if m.epoch != self.epoch:
                raise _Resync(f"the writer's epoch changed from {self.epoch} to {m.epoch}")
            before = self._seq.seq
            if type(m) is p.Heartbeat:
                self._seq.heartbeat(m.seq)
            elif type(m) is p.PublishedGroup:
                first = m.seq - len(m.changes) + 1
                self.changes_received += (head is None) + len(m.changes) - 1
                for i, change in enumerate(m.changes):
                    self._seq.published(first + i, change)
            else:
                self.changes_received += head is None  # counted above when the header could be read
                self._seq.published(m.seq, m.change)  # type: ignore[union-attr]
            lost = self._seq.lost(monotonic())
            if lost is not None:
                raise _Resync(lost)
            if self._seq.seq != before:
                self.changed.notify_all()

    def _resync(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> list[bytes]:
        """Load a fresh snapshot; return the published messages received meanwhile, to apply next."""
        self.chunk_at, self._join_began = None, monotonic()  # an attempt begins: an earlier one's chunks count no more
        # millions of new dicts would trigger repeated full collections (quadratic); none of them form cycles
        collecting = gc.isenabled()
        gc.disable()
        try:
            queued = self._load_snapshot(sub, dealer)
            if gc.get_freeze_count() == 0:  # a process that froze objects itself keeps them frozen
                # The records are here to stay: file them with the oldest generation at once, instead of
                # letting the next young-generation collections walk every one of them twice first.
                # (Not atomic: another thread calling gc.freeze() between these lines would see it undone.)
                gc.freeze()
                gc.unfreeze()
            return queued
        finally:
            if collecting:
                gc.enable()

    def _load_snapshot(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> list[bytes]:
        with self.changed:
            self._seq.loading = True
        if not self._everything:
            # The PUB applies subscriptions as they arrive: a heartbeat matching one of the 765 prefixes
            # proves nothing about the others. Subscribe to everything (sent after them) meanwhile, and drop
            # that after the snapshot, when every prefix sent before it has been applied by the PUB.
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._everything = True
        queued = self._confirm_subscription(sub, dealer)
        # the writer asked for the snapshot: the one whose heartbeat (this client's topic) confirmed
        epoch = next((_epoch_of(f) for f in reversed(queued) if f.startswith(self._topic)), None)
        req_id = -next(self._req_ids)
        if not self._send(dealer, p.encode_request(p.SnapshotRequest(req_id))):
            raise Unavailable(f"the tiger writer at {self._url} takes no requests: {SNDHWM} queued for it already")
        content: dict[str, dict[str, Rows]] = {}
        received = 0  # records in the chunks of request ``req_id`` (its end says how many it sent)
        short, unread = 0, None  # snapshots that came short of records, and why the last chunk missed was
        # No chunk for the client's timeout: the writer stopped sending it (gone, or it dropped this joiner).
        # A writer replaced meanwhile (a restart on the same url) is seen sooner: hello is asked at every
        # heartbeat without a chunk, and an answer of another epoch ends the wait, so that the join is tried
        # again on the next writer well within connect()'s timeout.
        # A pause of this process (SIGSTOP, Ctrl-Z: ``overslept``, by any of its threads) does not count, and
        # the snapshot is asked again at once (a new request replaces the old at the writer), then at every
        # heartbeat until a chunk of the new one comes: the writer's ZeroMQ heartbeat may have closed the
        # connection meanwhile, with the rest of the chunks. Chunks that came before the connection closed
        # still arrive after the pause (the socket's buffers): taken for the snapshot going on, they stopped
        # at their end and the join timed out (CI, a worker stopped 4.5 s halfway through 50k records).
        chunk_at = asked_at = monotonic()
        counted = 0.0  # pauses since it was asked, counted already
        asked_again: float | None = None  # when asked again after a pause, while no chunk of that request came

        def anew() -> tuple[dict[str, dict[str, Rows]], int, ProtocolError | None, int]:
            """Ask for the snapshot again (a new request replaces the old at the writer; unsent: the join's
            timeout); what is kept of the old one is dropped: (content, received, unread, req_id) afresh."""
            fresh = -next(self._req_ids)
            self._send(dealer, p.encode_request(p.SnapshotRequest(fresh)))
            return {}, 0, None, fresh

        again_every = self._heartbeat  # and then again this long after, doubled each time (a slow first chunk)
        while True:
            began = mark()
            got = self._wait(dealer, self._heartbeat)
            overslept(began, self._heartbeat)
            paused = paused_since(asked_at)
            if paused > counted:
                chunk_at += paused - counted
                self.chunk_at = None if self.chunk_at is None else self.chunk_at + paused - counted
                counted = paused
                if asked_again is None:  # (else asked again already, a moment ago: a pause found in parts)
                    asked_again, again_every = -math.inf, self._heartbeat
            if asked_again is not None and monotonic() - asked_again >= again_every:
                # (again a heartbeat later, then two, four...: sent on a connection that was closing, it is lost
                # with it; each request replaces the one before at the writer, so not too often: a slow writer)
                if asked_again > -math.inf:
                    again_every *= 2
                content, received, unread, req_id = anew()
                asked_again = monotonic()
            if monotonic() - chunk_at > self._timeout:  # (every turn: an earlier request's chunks may keep coming)
                raise Unavailable(f"the tiger writer at {self._url} stopped sending its snapshot")
            if not got:
                self._ask_hello(dealer)
                continue
            data = dealer.recv()
            if p.chunk_req_id(data) not in (None, req_id):  # a chunk of a request asked before: skipped undecoded
                continue  # (decoding each, a pause's backlog took longer than the writer took to send a new one)
            try:
                reply = p.decode_reply(data, hooks=p.WALKED)  # filed with the oldest generation after
            except ProtocolError as e:  # skipped as ``_answer`` does (it ended this thread, and the client with it):
                unread = e  # a chunk lost so is missed by the count at its end, and the snapshot asked again
                continue
            if reply.req_id != req_id:
                if type(reply) is p.Ok and epoch is not None and reply.epoch != epoch:
                    raise Unavailable(f"the tiger writer at {self._url} was replaced during the snapshot")
                continue
            chunk_at = self.chunk_at = monotonic()
            asked_again = None
            if type(reply) is p.SnapshotChunk:
                for table, ns, records in reply.segments:
                    if records:  # decoded frozen, each checked for a str id: into the rows in C, no per-record Python
                        content.setdefault(table, {}).setdefault(ns, {}).update(zip(map(_ID, records), records, strict=True))
                        received += len(records)
            elif type(reply) is p.SnapshotEnd:
                if received == reply.records:
                    break
                # a chunk missed (undecodable): loaded, the replica would lack its records for good
                short += 1
                why = "" if unread is None else f" ({unread})"
                if short == SHORT_SNAPSHOTS:  # the same each time: what the writer sends, not the way
                    raise _Unreadable(
                        f"the tiger writer at {self._url} sent {SHORT_SNAPSHOTS} snapshots this client could not read "
                        f"whole: {received} of {reply.records} records{why}"
                    )
                log.warning("snapshot %d had %d of its %d records%s: asked again", -req_id, received, reply.records, why)
                content, received, unread, req_id = anew()
            else:
                raise _Refused(f"the tiger writer at {self._url} refused a snapshot: {reply}")
        with self.changed:
            self.store.load_rows(content)
            self._seq.reset(reply.epoch, reply.seq)  # then this client's own changes deposited meanwhile
            self._reload = None  # (asked for meanwhile: this is it)
            self._calls.reset()  # asked before the snapshot: it covers what they applied
            self.changed.notify_all()
        sub.setsockopt(zmq.UNSUBSCRIBE, b"")  # back to every topic but this client's own
        self._everything = False
        return queued

    def _confirm_subscription(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> list[bytes]:
        """Ask for heartbeats until one with this client's topic arrives: from then on nothing published is missed.

        Returns every message received meanwhile (applied after the snapshot, which covers them).
        """
        deadline = monotonic() + self._timeout
        wait = 0.01
        queued: list[bytes] = []
        while True:
            # a call: its heartbeat has this client's topic, which only the catch-all prefix b"" matches here;
            # that prefix went after the others, so once the heartbeat arrives every prefix is live. (A negative
            # request id: the writer keeps answers by client id and request id, and the client counts up from 1.)
            self._send(dealer, p.encode_call(p.Call(self._client_id, math.inf, p.Sync(-next(self._req_ids)))))
            began = mark()
            until = began[0] + wait
            while self._wait(sub, until - monotonic()):
                self.last_heard = monotonic()
                confirmed = False
                while True:
                    try:
                        frame = sub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    queued.append(frame)
                    confirmed = confirmed or frame.startswith(self._topic)
                if confirmed:
                    return queued
                if monotonic() >= until:
                    break
            deadline += overslept(began, wait)  # (a pause of this process does not count)
            if monotonic() >= deadline:
                raise Unavailable(f"no published message from the tiger writer at {self._url} within {self._timeout}s")
            wait = min(wait * 2, 0.2)
            # No heartbeat yet: the writer may publish elsewhere now (restarted on tcp: a new port). A hello
            # says where; its answer, read here, moves the SUB there (``_answer``), as the running loop does.
            self._follow_answers(sub, dealer)
            if wait == 0.2:
                self._ask_hello(dealer)

    def _follow_answers(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> None:
        """Read the answers waiting on the replica's DEALER (``_answer``): a hello's of a new epoch moves the SUB
        to where that writer publishes; the rest (syncs, stale ones) are dropped."""
        while True:
            try:
                data = dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._answer(sub, data)
            except _Resync:  # (followed: the caller goes on confirming, now on the new endpoint)
                pass


def _epoch_of(frame: bytes) -> str | None:
    """The epoch of a published frame (topic, then message); None if it cannot be read."""
    try:
        return p.decode_published(frame[p.TOPIC_SIZE :]).epoch
    except ProtocolError:
        return None


def _reachable(url: str, pub: str) -> str:
    """The writer's PUB endpoint as a client of ``url`` can reach it (the writer may have bound a wildcard)."""
    if url.startswith("tcp://") and pub.startswith("tcp://"):
        host = url[len("tcp://") :].rsplit(":", 1)[0]
        port = pub.rsplit(":", 1)[1]
        return f"tcp://{host}:{port}"
    return pub
