"""What the writer sends on its ROUTER: answers, and snapshots as each joiner takes them.

Theory of operation: the ROUTER queues at most ``PEER_HWM`` messages per peer (its SNDHWM) and
every send is non-blocking; a full queue (``send`` returns False) is the peer not taking what it
was sent, yet. ``Outgoing`` keeps what must wait, per peer, and the writer's loop calls ``pump``
between requests. No sockets and no clock here: the writer passes a ``send`` function and the
time, and tests pass a list and a fake clock.

Rule 1: an answer is never dropped because a queue is full. It waits in its peer's backlog, sent
  in order, before anything else to that peer, as soon as the queue takes it.
Rule 2: a snapshot is the store's content at one seq (``View``: lists of its frozen records, taken
  at the request: records are never changed in place, so the lists are a consistent copy at one
  pointer per record). It is encoded a chunk of about ``CHUNK_BYTES`` at a time, when its peer's
  queue can take one: the writer holds at most ``PEER_HWM`` + 1 messages of it per peer.
Rule 3: snapshots share the writer's time with requests: ``pump`` sends at most ``TURN_BYTES`` of
  chunks per turn of the loop, round-robin between the peers that can take one.
Rule 4: a peer that takes nothing for ``stall`` seconds while something waits for it loses it all
  (logged), and so does a peer that is gone; nothing of any other peer's is ever dropped. Time the
  writer itself was not running (``resumed``) is not the peer's: a writer stopped 30 s (Ctrl-Z on a
  pytest run) dropped every answer and snapshot it had waiting as it resumed.
Rule 5: a peer has one snapshot on its way at a time: a new request replaces it (a replica waits
  for the answer to its latest request only).
Rule 6: joiners share the packing: runs of records packed for one snapshot serve any other whose
  records at that place are the same objects (``Runs``; the last ``SHARED_BYTES`` are kept), so
  processes that join together pack a large store about once, even with writes going on between
  their requests (a write changes the runs of its namespace only). Joiners at one seq share the
  view itself.
"""

from __future__ import annotations

import contextlib
import logging
import operator
from collections import deque
from collections.abc import Callable

from tiger import _protocol as p
from tiger._table import Record, Store

log = logging.getLogger("tiger.writer")

PEER_HWM = 8  # messages the ROUTER queues per peer (its SNDHWM): a full queue is a peer not taking them
CHUNK_BYTES = 128 * 1024  # bytes of a snapshot chunk, about (one record over at most)
TURN_BYTES = 512 * 1024  # snapshot bytes sent per turn of the writer's loop, all joiners together
STALL = 30.0  # seconds a peer may take nothing while something waits for it; then that is dropped
SHARED_BYTES = 32 * 1024 * 1024  # packed runs of records kept for other joiners, at most
RETRY = 0.002  # seconds between two tries of peers whose queues were full (one took something lately)
RETRY_IDLE = 0.02  # the same once none of them took anything for RECENT seconds (it may never again)
RECENT = 0.1

Send = Callable[[list[bytes], bytes], bool]  # (envelope, message) -> sent (False: the peer's queue is full)


class PeerGone(Exception):
    """Raised by a ``Send``: the peer is not connected any more (EHOSTUNREACH)."""


Position = tuple[int, int]  # (segment index, record offset in it)
Run = tuple[int, int, int]  # (segment index, record offset, count): records packed as one segment


class Runs:
    """Runs of a namespace's records packed as segments, shared by every view: a run packed for one
    view serves another whose records at the same place are the same objects (records are frozen:
    the same objects pack to the same bytes), so joiners taken at different seqs share the packing of
    whatever did not change between them. The runs packed last are kept, ``limit`` bytes of them
    (processes that join together are a few hundred milliseconds apart at most, about 60 MB of a
    snapshot here: the one ahead packs, those behind find most of it kept)."""

    def __init__(self, limit: int = SHARED_BYTES) -> None:
        self.limit = limit
        self.packed = 0  # runs packed so far (tests count them)
        self._runs: dict[tuple[str, str, int], tuple[list[Record], bytes]] = {}  # (table, ns, offset) -> run
        self._bytes = 0

    def find(self, table: str, ns: str, records: list[Record], off: int) -> tuple[int, bytes] | None:
        """A kept run of exactly these records from ``off``: (its length, its packed bytes)."""
        run = self._runs.get((table, ns, off))
        if run is None:
            return None
        kept, packed = run
        if len(records) - off < len(kept) or not all(map(operator.is_, kept, records[off : off + len(kept)])):
            return None
        return len(kept), packed

    def pack(self, table: str, ns: str, records: list[Record], off: int, n: int) -> bytes:
        run = records[off : off + n]
        packed = p.pack((table, ns, run))
        self.packed += 1
        key = (table, ns, off)
        old = self._runs.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._runs[key] = (run, packed)
        self._bytes += len(packed)
        while self._bytes > self.limit:
            self._bytes -= len(self._runs.pop(next(iter(self._runs)))[1])
        return packed

    def clear(self) -> None:
        self._runs.clear()
        self._bytes = 0


class View:
    """The store's content at one (epoch, seq), packed in chunks on demand.

    Chunk ``i`` holds the same records whoever asks for it: the first reader to reach it plans it
    (runs sized by the bytes records packed to so far, or the runs already kept); readers behind
    follow the plan, finding its runs kept or packing them again.
    """

    def __init__(self, store: Store, epoch: str, seq: int, runs: Runs, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.epoch, self.seq = epoch, seq
        self.segments: list[tuple[str, str, list[Record]]] = [
            (table, ns, list(rows.values()))
            for table, namespaces in store.tables.items()
            for ns, rows in namespaces.items()
            if rows
        ]
        self.records = sum(len(records) for _, _, records in self.segments)
        self.chunk_bytes = chunk_bytes
        self.readers: list[_Snapshot] = []
        self._runs = runs
        self._plans: list[list[Run]] = []  # chunk i: its runs
        self._at: Position = (0, 0)  # where the next chunk to plan begins
        self._per_record = 256.0  # packed bytes per record, as last seen

    def chunk(self, i: int) -> bytes | None:
        """Chunk ``i``'s packed segments (``p.chunk_bytes`` makes a message of them); None past the last."""
        if i < len(self._plans):
            return p.segments_bytes([self._run(*run) for run in self._plans[i]])
        assert i == len(self._plans), "a view is read in order"
        if self._at[0] >= len(self.segments):
            return None
        return self._plan_next()

    def _run(self, si: int, off: int, n: int) -> bytes:
        table, ns, records = self.segments[si]
        found = self._runs.find(table, ns, records, off)
        if found is not None and found[0] == n:
            return found[1]
        return self._runs.pack(table, ns, records, off, n)

    def _plan_next(self) -> bytes:
        """Plan and pack the next chunk: runs from where the last one ended until about ``chunk_bytes``."""
        parts, plan = [], []
        size = 0
        si, off = self._at
        while si < len(self.segments) and size < self.chunk_bytes * 3 // 4:
            table, ns, records = self.segments[si]
            found = self._runs.find(table, ns, records, off)
            if found is not None:
                n, packed = found
            else:
                want = self.chunk_bytes - size
                n = max(1, min(len(records) - off, int(want / self._per_record)))
                while True:
                    packed = self._runs.pack(table, ns, records, off, n)
                    if n == 1 or len(packed) <= 2 * want:
                        break
                    n = max(1, n * want // len(packed))  # bigger records than so far: fewer of them
                self._per_record = max(1.0, len(packed) / n)
            parts.append(packed)
            plan.append((si, off, n))
            size += len(packed)
            off += n
            if off >= len(records):
                si, off = si + 1, 0
        self._plans.append(plan)
        self._at = (si, off)
        return p.segments_bytes(parts)


class _Snapshot:
    """One peer's snapshot on its way: a view, the request it answers, and the next chunk to send."""

    __slots__ = ("envelope", "next", "req_id", "view")

    def __init__(self, view: View, envelope: list[bytes], req_id: int) -> None:
        self.view, self.envelope, self.req_id = view, envelope, req_id
        self.next = 0


class _Peer:
    __slots__ = ("backlog", "since", "snapshot")

    def __init__(self, now: float) -> None:
        self.backlog: deque[tuple[list[bytes], bytes]] = deque()  # (envelope, message) waiting for the queue
        self.snapshot: _Snapshot | None = None
        self.since = now  # when the peer last took a message (or first had one wait)


class Outgoing:
    """Answers and snapshots for the writer's ROUTER, per peer (see the rules above)."""

    def __init__(self, send: Send, *, stall: float = STALL, turn_bytes: int = TURN_BYTES, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._send = send
        self.stall = stall
        self.turn_bytes = turn_bytes
        self.chunk_bytes = chunk_bytes
        self._peers: dict[bytes, _Peer] = {}  # only peers something waits for; the longest unserved first
        self._view: View | None = None  # the newest view, while it is read: joiners at its seq share it
        self.runs = Runs()  # packed runs every view may use, while any snapshot is on its way

    def answer(self, frames: list[bytes], now: float) -> None:
        """Send one answer (envelope frames, then the answer), or keep it until its peer's queue takes it."""
        envelope, message = frames[:-1], frames[-1]
        peer = self._peers.get(envelope[0])
        if peer is None or not peer.backlog:
            try:
                if self._send(envelope, message):
                    if peer is not None:
                        peer.since = now
                    return
            except PeerGone as e:
                self._gone(envelope[0], e, "an answer")
                return
            if peer is None:
                peer = self._peers[envelope[0]] = _Peer(now)
        peer.backlog.append((envelope, message))

    def snapshot(self, envelope: list[bytes], req_id: int, store: Store, epoch: str, seq: int, now: float) -> None:
        """Start sending ``store`` as it is now, at (epoch, seq), to the peer that asked (``pump`` sends it)."""
        view = self._view
        if view is None or (view.epoch, view.seq) != (epoch, seq):
            view = self._view = View(store, epoch, seq, self.runs, self.chunk_bytes)
        peer = self._peers.get(envelope[0])
        if peer is None:
            peer = self._peers[envelope[0]] = _Peer(now)
        elif peer.snapshot is not None:  # asked again: only the latest request is awaited
            self._leave(peer.snapshot)
        peer.snapshot = _Snapshot(view, envelope, req_id)
        view.readers.append(peer.snapshot)

    def resumed(self, paused: float) -> None:
        """The writer did not run for ``paused`` seconds (SIGSTOP, a debugger; ``WriterCore.resumed``'s
        finding): no peer could take anything from it meanwhile, so that time is not counted as a stall."""
        for peer in self._peers.values():
            peer.since += paused

    def pump(self, now: float) -> None:
        """Send what waits: every backlog first, then snapshot chunks (``turn_bytes`` at most); drop
        what waits for a peer that took nothing for ``stall`` seconds."""
        peers = self._peers
        for key, peer in list(peers.items()):
            if peer.backlog:
                self._flush(key, peer, now)
        budget = self.turn_bytes
        ready = [key for key, peer in peers.items() if peer.snapshot is not None and not peer.backlog]
        while ready and budget > 0:
            for key in ready:
                budget -= self._send_chunk(key, peers[key], now)
                if key in peers:
                    peers[key] = peers.pop(key)  # served: to the back of the line
                if budget <= 0:
                    break
            ready = [key for key in ready if key in peers and peers[key].snapshot is not None and not peers[key].backlog]
        for key, peer in list(peers.items()):
            if not peer.backlog and peer.snapshot is None:
                del peers[key]
            elif now - peer.since > self.stall:
                snap = peer.snapshot
                log.warning(
                    "dropped %s for a peer that took nothing for %.0fs%s",
                    f"{len(peer.backlog)} waiting messages" if peer.backlog else "its snapshot",
                    now - peer.since,
                    "" if snap is None else f" (snapshot at chunk {snap.next}, seq {snap.view.seq})",
                )
                self._drop(key)

    def wait(self, now: float) -> float | None:
        """How long the writer may wait for requests before ``pump`` has work: 0 (a snapshot can go on
        now), ``RETRY`` or ``RETRY_IDLE`` (queues were full), or None (nothing waits)."""
        if not self._peers:
            return None
        if any(peer.snapshot is not None and not peer.backlog for peer in self._peers.values()):
            return 0.0
        return RETRY if any(now - peer.since < RECENT for peer in self._peers.values()) else RETRY_IDLE

    def waiting(self) -> tuple[int, int, int]:
        """(peers something waits for, snapshots on their way, messages in backlogs): for tests and logs."""
        peers = self._peers.values()
        return len(self._peers), sum(peer.snapshot is not None for peer in peers), sum(len(peer.backlog) for peer in peers)

    def _flush(self, key: bytes, peer: _Peer, now: float) -> None:
        backlog = peer.backlog
        try:
            while backlog:
                envelope, message = backlog[0]
                if not self._send(envelope, message):
                    return
                backlog.popleft()
                peer.since = now
        except PeerGone as e:
            self._gone(key, e, f"{len(backlog)} waiting messages")

    def _send_chunk(self, key: bytes, peer: _Peer, now: float) -> int:
        """Send the peer's next snapshot message; returns its size (0: it could not go, or the peer left)."""
        snap = peer.snapshot
        assert snap is not None
        view = snap.view
        try:
            body = view.chunk(snap.next)
            if body is None:
                message = p.encode_reply(p.SnapshotEnd(snap.req_id, view.epoch, view.seq, view.records))
            else:
                message = p.chunk_bytes(snap.req_id, body)
        except Exception as e:  # (MemoryError: a writer near its memory limit) this join fails, the writer goes on
            log.error("could not build a snapshot message (%r): that join is refused", e)
            self._leave(snap)
            peer.snapshot = None
            why = "out of memory" if isinstance(e, MemoryError) else repr(e)
            refusal = p.encode_reply(p.Failed(snap.req_id, "internal", f"the writer could not build the snapshot ({why})"))
            with contextlib.suppress(PeerGone):
                self._send(snap.envelope, refusal)  # best effort: else the joiner waits out its timeout
            return 0
        if body is None:
            self._leave(snap)
            peer.snapshot = None
        else:
            snap.next += 1
        try:
            if self._send(snap.envelope, message):
                peer.since = now
                return len(message)
        except PeerGone as e:
            self._gone(key, e, "a snapshot message")
            return 0
        peer.backlog.append((snap.envelope, message))  # made already: it goes first once the queue takes it
        return 0

    def _leave(self, snap: _Snapshot) -> None:
        view = snap.view
        view.readers.remove(snap)
        if not view.readers and self._view is view:
            self._view = None
            if not any(peer.snapshot is not None and peer.snapshot is not snap for peer in self._peers.values()):
                self.runs.clear()  # no snapshot on its way: nothing to share

    def _gone(self, key: bytes, e: PeerGone, what: str) -> None:
        peer = self._peers.get(key)
        snapshot = "" if peer is None or peer.snapshot is None else ", and the snapshot on its way"
        # a client that gave up a call (its timeout, a cancellation) or closed: its business, not a fault here.
        # Or one that resent the call on a fresh socket (Lazy Pirate, after ``resend`` seconds without an
        # answer: a call of the writer's that took longer), and is answered there: said so (a user trial read
        # the line after every big call as a fault)
        log.info("could not send %s to a client that left, or resent the call on a fresh socket (%s)%s", what, e, snapshot)
        self._drop(key)

    def _drop(self, key: bytes) -> None:
        peer = self._peers.pop(key, None)
        if peer is not None and peer.snapshot is not None:
            self._leave(peer.snapshot)
