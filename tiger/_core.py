"""Every decision of the writer, with no sockets and no clock (h11's shape; ``Sequencer`` is the replica's).

``WriterCore`` takes the bytes of requests and the time, and leaves in its ``outbox`` what the
process around it must do: the answers to send (each after its ROUTER envelope), the messages to
publish (each after its topic) and the snapshots to stream. The data directory is a port
(:class:`Disk`): the core appends each change to it before applying the change, as the log's rule
asks, and the writer process passes the real ``DataDir`` (tests pass a list, or one that fails).

Group commit: ``handle`` applies one request at a time, in arrival order, and ``commit`` ends a
group: one fsync of everything the group appended (``--fsync always``) before anything of it is
published or answered. The writer process takes every request already waiting on its socket as one
group, so N clients writing at once cost one fsync, not N.

Rules kept here (each was a fault once; see tests/test_core.py):
- a call is answered once: a resent call (same client id and request id) gets its first answer,
  for the last ``ANSWERS_KEPT`` calls of each client (and more, up to ``ANSWERS_KEPT_MAX``, while they
  hold at most ``ANSWERS_KEPT_BYTES``), kept ``ANSWERS_FORGOTTEN`` seconds after the
  client fell silent (a call the writer no longer remembers is applied again: Lazy Pirate, ZeroMQ
  guide ch. 4);
- a call that arrives after its expiry (the client's wall clock) is refused, never applied late;
- a client silent for ``CLIENT_SILENCE`` seconds is gone, unless its connection is still up (``reach``: a
  process whose Python threads cannot run, a factory holding the GIL in one long C call, keeps its socket
  and answers ZeroMQ's heartbeats; a dead or stopped one does not; a dead one's is closed at once, so a
  client that spoke is asked from ``GONE_PROBE`` seconds of silence on): the once keys it was building are then
  released, the values it built with a teardown of its own retired if it is dead (its connection closed
  before ZeroMQ's heartbeat would: ``KILLED_WITHIN``; a claim of such a key asks at once, ``CLAIM_PROBE``),
  else with its leases (that teardown will not run; a stopped builder that resumes still runs it, on its
  own value), and the namespaces it leased dropped (once no
  other client leases them) ``lease_grace`` seconds later unless it is heard again meanwhile (a goodbye:
  at once; a writer started on stored content gives each leasing client ``CLIENT_SILENCE`` to be heard, as
  it gives builders, then the grace); a writer that was itself paused does not count the pause as its
  clients' silence;
- a full or failing disk refuses writes (``DiskFault``), keeps reads and snapshots going, and is
  tried again (a compaction) with a backoff of 0.5 s doubling to 10 s; a data directory, log or snapshot
  removed, moved or replaced under the writer (``DataDirLost``) refuses writes the same way, for good: nothing
  it appended since is answered, and it never writes to that path again (another writer may own it);
- work over the whole store never stops the writer: a compaction starts a fresh log at once and writes
  its snapshot a step at a time, and a ``Stats`` checksum is taken a step at a time, over a view of the
  store as it was (``work_step``, run by the process around the core between groups); ``Compact`` is answered
  when the snapshot is in place, and only a compaction begun during a disk fault ends it (its snapshot
  holds everything the fault held back).
"""

from __future__ import annotations

import logging
import operator
import os
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from tiger import _protocol as p
from tiger import _table
from tiger._calls import BIG_CALL
from tiger._errors import ROOM_ERRNOS, AlreadyExists, DataDirLost, NotFound, ProtocolError

log = logging.getLogger("tiger.writer")

MAX_ENVELOPE = 100  # frames before the payload (ROUTER identity, REQ delimiter, a peer's extras)
MAX_ENVELOPE_BYTES = 1024 * 1024  # their total size: the answer echoes them, so they are capped
SPLICE_MIN = 4096  # bytes of a call from which its records are reused, not packed again (cutting them costs ~2 us)
ANSWERS_KEPT = 32  # answers kept per client, whatever their size, to answer a resent call without applying it twice
ANSWERS_KEPT_MAX = 1024  # and more of them, up to this many, while they hold at most ANSWERS_KEPT_BYTES
ANSWERS_KEPT_BYTES = 256 * 1024  # (a storm of signals interrupting hundreds of calls within a client's timeout
# outran 32: the calls asked again after their deadline were refused as expired, and the replica resynchronised)
ANSWERS_FORGOTTEN = 60.0  # seconds of silence after which a client's kept answers are dropped
MAX_ERROR = 500  # characters of an error message the writer logs and sends back
GROUP_BYTES = 1 << 20  # bytes of changes published as one message, at most
RECENT = 256  # changes kept packed to send again in answers (``Ok.before``)
RECENT_BYTES = 4 << 20  # and their bytes, at most (a change bigger than MAX_BEFORE_BYTES is kept as a gap)
MAX_BEFORE = 64  # changes an answer carries for the caller's replica, at most
MAX_BEFORE_BYTES = 256 * 1024  # and their packed bytes
CLIENT_SILENCE = 3.0  # seconds: a client not heard from for this long is gone (its once claims are released)
# seconds: a client not heard from for this long (two of its beats missed) whose connection is closed is gone: a
# killed process's kernel closes its sockets at once (a stopped one's are closed by ZeroMQ's heartbeat timeout,
# CLIENT_SILENCE). At CLIENT_SILENCE, a pytest-xdist worker started in place of a crashed builder was handed the
# dead builder's value before the writer retired it (a user trial, 4 of 4: it asked 1.8 to 2.8 s after the
# kill). A killed client is now gone in 1.0 to 1.4 s (3.0 to 3.3 before).
GONE_PROBE = 1.0
# seconds: a builder this silent is asked at once by a claim of its key (``WriterCore._dead``): a pytest-xdist
# worker started in place of a crashed builder asked 0.5 to 0.65 s after the kill on a quiet machine (a trial)
CLAIM_PROBE = 0.1
# seconds of silence within which a connection found closed was closed by its peer's kernel: dead (ZeroMQ's heartbeat
# closes a stopped process's at CLIENT_SILENCE; a writer busy for a moment read its last beat late)
KILLED_WITHIN = 2.0
# seconds a client taken for gone by its silence keeps its leases: a process stopped for a while (Ctrl-Z,
# SIGSTOP) finds its namespaces when it resumes; a dead one's are dropped this much later (a goodbye: at once)
LEASE_GRACE = 600.0
DISK_RETRY_FIRST = 0.5  # seconds before a failed data directory is tried again; doubles each time
DISK_RETRY_MAX = 10.0  # seconds: the longest wait between two tries
# A write the disk had no room for (its log whole: the failed append left nothing of itself): the fault it
# starts ends at the first write that fits, with no snapshot of everything. (A fault that needed one held
# writes back until the disk had room for the whole store: freeing room for a few records took none.)
# Which errnos are a write with no room: ``ROOM_ERRNOS`` (tiger._errors: tiger's own small files use it too).
# seconds before a compaction that failed for room is tried again (the writer goes on meanwhile); doubles each time
COMPACTION_RETRY_FIRST = 5.0
COMPACTION_RETRY_MAX = 300.0


class _CallKey(NamedTuple):
    """A call, as its client names it (a resend is the same call): a request answered after its group."""

    client_id: str
    req_id: int


STEP_BYTES = 512 * 1024  # bytes of records a step of a Stats checksum packs (a few ms)


class _Waiter(NamedTuple):
    """A request answered after the group it came in (Compact, Stats), and how to answer it."""

    key: object  # its _CallKey, or (envelope, req id) for a bare request
    envelope: list[bytes]  # the newest socket it came from (a resend's)
    req_id: int
    deadline: float | None  # monotonic seconds past which its caller has given up (a call's expiry); None: never


class _Checksum:
    """The checksum Stats requests wait for, taken a step at a time over the store as it was at ``seq``."""

    __slots__ = ("crc", "pieces", "seq", "waiters")

    def __init__(self, seq: int, pieces: Iterator[bytes]) -> None:
        self.seq = seq
        self.pieces = pieces
        self.crc = 0
        self.waiters: list[tuple[_Waiter, dict[str, Any]]] = []  # each with the figures it was asked at

    def step(self, budget: int) -> bool:
        """Take about ``budget`` more bytes into the checksum; True once it is whole (``crc``)."""
        taken = 0
        for piece in self.pieces:
            self.crc = zlib.crc32(piece, self.crc)
            taken += len(piece)
            if taken >= budget:
                return False
        return True


def _message_of(error: BaseException) -> str:
    """What an answer says of an error: never empty (``MemoryError()`` says nothing by itself)."""
    if isinstance(error, MemoryError):
        return "the writer is out of memory; nothing was applied"
    return p.wire_text(str(error) or type(error).__name__)  # (an OSError's own message may hold the data path)


_HELD = b""  # a kept answer whose group is held (its fsync failed): a resend gets no answer yet


class _Answers(dict[int, bytes]):
    """One client's kept answers (req id -> answer), oldest first, and ``size``: their bytes."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        super().__init__()
        self.size = 0


class _BigPart(ValueError):
    """A part of a batch's change (its index: ``part``) holds a record over the size limit."""

    def __init__(self, part: int, message: str) -> None:
        super().__init__(message)
        self.part = part


def _in_batch(op: p.Insert | p.Update | p.Remove, error: Exception) -> str:
    """The message of ``error``, raised by a batch's ``op``: named by its index (its ``req_id``: see
    ``p.BatchWrite``), as the README promises."""
    return f"operation {op.req_id} ({_op_name(op)} {op.table}): {error}; nothing in the batch was applied"


class Expired(ValueError):
    """A call that arrived after its deadline: the client has given up on it."""


class DiskFault(Exception):
    """The data directory cannot take writes now (full, read-only, failing): writes are refused until
    it works again; reads and snapshots go on."""


_ERROR_KINDS: list[tuple[type[BaseException], str]] = [
    (DiskFault, "disk"),
    (Expired, "expired"),
    (NotFound, "not_found"),
    (AlreadyExists, "already_exists"),
    (ProtocolError, "protocol"),
    (TypeError, "type"),
    (ValueError, "value"),
]


class Disk(Protocol):
    """The data directory as the core uses it (``tiger._log.DataDir``). Each method may raise ``OSError``."""

    path: str
    fsync: str
    size: int
    # no failure since the last snapshot put in place could have torn or lost an entry of the logs (a failed
    # fsync, a failed append that could not be cut off): False, only a snapshot of everything mends them
    whole: bool

    def append(self, payload: bytes) -> None:
        """Write one change (fsync: ``commit``); on OSError nothing of it stays."""

    def commit(self) -> None:
        """End of a group: with fsync=always, what was appended is on disk when this returns."""

    def tick(self) -> None:
        """About twice a second: fsync=everysec syncs what was appended."""

    def needs_compaction(self) -> bool:
        """The log has grown enough to compact (and no compaction is under way)."""

    def begin_compaction(self, pack: Callable[[Any], bytes], content: dict[str, dict[str, list[Any]]]) -> Compaction:
        """Start a fresh log now and a snapshot of ``content`` (table -> namespace -> records), written by the
        returned compaction's steps."""


class Compaction(Protocol):
    """A snapshot being written a step at a time (``tiger._log.Compaction``)."""

    records: int  # in the snapshot
    size: int  # bytes written so far

    def step(self) -> bool:
        """Write a few hundred KiB more; True once the snapshot is in place. ``OSError``: abandoned."""

    def abandon(self) -> None: ...


@dataclass
class Outbox:
    """What the process around the core must do, in this order: publish, then answer, then stream."""

    published: list[tuple[bytes, bytes]] = field(default_factory=list)  # (topic, message)
    replies: list[list[bytes]] = field(default_factory=list)  # envelope frames + the answer
    snapshots: list[tuple[list[bytes], int]] = field(default_factory=list)  # (envelope, req id)


class WriterCore:
    """The writer's state and rules: the Store, the seq, the clients heard from, the answers kept.

    ``now`` arguments are ``time.monotonic()`` seconds (silence, backoff); ``wall`` arguments are
    ``time.time()`` seconds (call expiry, ``created``, the Hello's clock sample).
    """

    def __init__(
        self,
        epoch: str,
        *,
        heartbeat: float,
        now: float,
        store: _table.Store | None = None,
        disk: Disk | None = None,
        token: Callable[[int], str],
        info: dict[str, Any] | None = None,
        lease_grace: float = LEASE_GRACE,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """``lease_grace``: seconds a client taken for gone by its silence keeps its leases (``LEASE_GRACE``).
        ``wall_clock``: ``time.time`` (or a test's clock), read once more before a call's change is logged and
        applied (after it is packed): a call that arrived in time but whose deadline passed while it was decoded,
        prepared and packed (an ``insert_many`` of 150k records took over 2 s; a writer stopped meanwhile) is
        refused, not applied after its caller raised ``Unavailable``. None: only the ``wall`` each request
        arrives with is judged."""
        self.wall_clock = wall_clock
        self.epoch = epoch
        self.lease_grace = lease_grace + 0.0  # (-0.0 is 0: stats said "grace -0 s")
        self.seq = 0
        self.store = store if store is not None else _table.Store()
        self.heartbeat = heartbeat
        self.disk = disk
        self.token = token
        self.info = dict(info or {})  # url, pub, pid: reported by Hello and Stats
        self.started = now
        self.clients: dict[str, float] = {}  # client id -> when last heard
        # client id -> the envelopes it spoke from last (its replica's socket, its command socket): a silent
        # client is asked through them whether it is still connected (``reach``) before it is taken for gone
        self._envelopes: dict[str, dict[bool, tuple[bytes, ...]]] = {}
        # Sends a message to a peer at once (the envelope, then the payload): False when the peer is not
        # connected. Set by the process around the core (the Writer); None: silence alone decides.
        self.reach: Callable[[list[bytes]], bool] | None = None
        self.answered: dict[str, _Answers] = {}  # client id -> req id -> the answer sent
        self.silent_since: dict[str, float] = {}  # client id taken for gone -> when; its answers go later
        # client id taken for gone by its silence, holding leases -> when they end (unless it is heard again)
        self.lease_ends: dict[str, float] = {}
        self._goodbyes_held: set[str] = set()  # clients whose goodbye the data directory could not take yet
        self.disk_fault: str | None = None  # why the data directory cannot take writes now (None: it can)
        self._disk_lost = False  # for good: the directory or its log is gone from its path (``DataDirLost``)
        self._disk_retry_at = 0.0
        self._disk_retry_every = DISK_RETRY_FIRST
        # the fault is a write the disk had no room for, the log whole: each write tries again, the first that
        # fits ends it (no snapshot of everything needed)
        self._fault_for_room = False
        self._compaction_retry_at: float | None = None  # a compaction that failed for room: tried again then
        self._compaction_retry_every = COMPACTION_RETRY_FIRST
        self.outbox = Outbox()
        self._pending: list[tuple[bytes, bytes]] = []  # (topic, packed change) applied, not yet published
        self._pending_bytes = 0
        self.publications = 0  # messages that published changes: a group commit of several changes is one
        self._recent: deque[tuple[int, bytes]] = deque()  # (seq, packed change or b"": too big), newest last
        self._recent_bytes = 0
        self._payload: bytes | None = None  # the bytes of the call being handled (an insert's records are spliced)
        self._appended = False  # this group appended to the data directory: commit() must make it durable
        self._group_answers: list[tuple[str, int]] = []  # (client id, req id) of the answers kept this group
        self._committed_seq = 0  # the seq of the last change made durable and published
        # a group whose fsync failed: its publications and answers, held until a compaction succeeds
        self._held: Outbox | None = None
        self._held_answers: dict[tuple[str, int], bytes] = {}
        # A compaction begins only between groups (``work_step``, after ``commit``): begun inside one, its
        # switch of logs would fsync the group's appends, and a failure there would go unheld.
        self._compaction_due = False  # one is to begin at the next work_step
        self._compaction: Compaction | None = None  # under way, written by work_step
        self._compaction_seq = 0  # the seq of the store its snapshot holds
        self._compaction_ends_fault = False  # begun during a disk fault: its snapshot holds all the fault held
        # Compact requests waiting for a snapshot holding the seq each came at: key -> (waiter, seq)
        self._compact_waiters: dict[object, tuple[_Waiter, int]] = {}
        self._checksums: list[_Checksum] = []  # the checksums Stats requests wait for, oldest first
        # builders of once keys and holders of leases get CLIENT_SILENCE to find a restarted writer: one never
        # heard from again is gone then (its keys handed over, its leases' grace begun)
        # (they are not counted as connected until heard: stats said the killed run's holders were connected)
        self.awaited = _table.clients_awaited(self.store)
        for client_id in self.awaited:
            self.clients[client_id] = now
        self._handlers: dict[type, Callable[[Any, float, float], tuple[_table.Change | None, Any]]] = {
            p.Insert: self._insert,
            p.Update: self._update,
            p.Remove: self._remove,
            p.ClearTable: self._clear,
            p.Drop: self._drop,
            p.Lease: self._lease,
            p.OnceClaim: self._once_claim,
            p.OnceFinish: self._once_finish,
            p.BatchWrite: self._batch,
        }

    def take_outbox(self) -> Outbox:
        """What to send since the last call, and a fresh outbox."""
        self._publish_pending()
        outbox, self.outbox = self.outbox, Outbox()
        return outbox

    def _publish_pending(self) -> None:
        """The changes applied since the last publication, as one message: a lone change as ``Published``,
        several as a ``PublishedGroup`` (one message for every replica to take and apply, instead of one
        each). Its topic is their callers' when they share one (that caller's replica has them from its
        answers), else everyone's: a replica given its own change ignores it by seq."""
        pending = self._pending
        if not pending:
            return
        if len(pending) == 1:
            topic, packed = pending[0]
            message = p.published_bytes(self.epoch, self.seq, packed)
        else:
            topic = pending[0][0]
            if any(t != topic for t, _ in pending):
                topic = p.EVERYONE
            message = p.group_bytes(self.epoch, self.seq, [packed for _, packed in pending])
        self.outbox.published.append((topic, message))
        self.publications += 1
        self._pending = []
        self._pending_bytes = 0

    # -- time ------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """About every ``heartbeat`` seconds: publish a heartbeat, keep the data directory (its
        everysec fsync, a compaction due, a retry after a fault), and forget clients silent too long."""
        self._heartbeat()
        if self.disk is not None:
            if self.disk_fault is not None and not self._fault_for_room:
                if now >= self._disk_retry_at and not self._disk_lost:
                    self._recover(now)
            else:  # (a fault for room: the log is whole, kept and synced as usual; writes end the fault)
                try:
                    self.disk.tick()
                except OSError as e:  # the everysec fsync, or the directory gone from its path
                    self._disk_failed(e, now)
                # (a compaction that failed for room waits for its retry, even with the log still past its size)
                retry_at = self._compaction_retry_at
                due = self.disk.needs_compaction() if retry_at is None else now >= retry_at
                if self.disk_fault is None and not self._compacting and due:
                    self._compaction_due = True
        silent, probed = now - max(CLIENT_SILENCE, 6 * self.heartbeat), now - GONE_PROBE
        for client_id in [c for c, seen in self.clients.items() if seen < probed]:
            # (from GONE_PROBE on when it can be asked: one restored with the store, never heard, gets its silence)
            askable = self.reach is not None and client_id in self._envelopes
            if (self.clients[client_id] < silent or askable) and not self._still_connected(client_id):
                # its connection closed before ZeroMQ's heartbeat would have closed it: by its kernel, dead (a
                # stopped process's is closed at CLIENT_SILENCE); one restored with the store: of a run gone
                dead = self.clients[client_id] >= now - KILLED_WITHIN or client_id in self.awaited
                self._forget(client_id, now, dead=dead)
        for client_id in [c for c, at in self.lease_ends.items() if at <= now]:
            self._end_leases(client_id, now)
        stale = now - ANSWERS_FORGOTTEN
        for client_id in [c for c, since in self.silent_since.items() if since < stale]:
            del self.silent_since[client_id]
            self.answered.pop(client_id, None)

    def resumed(self, paused: float, working: float = 0.0) -> None:
        """The writer did not listen for ``paused`` seconds, ``working`` of them (its main thread's CPU time)
        on work of its own (decoding a 10 MB call), the rest not running (SIGSTOP, a debugger, a machine
        starved of CPU): its clients' silence is judged only over time it listened, so none is taken for
        gone (nor its once keys released) for it. The log says which: a writer busy with a big call was
        logged as "resumed after 1.7s without running" (a user trial)."""
        if working >= paused / 2:
            log.info("a turn of %.1fs of its own work (%.1fs of CPU) without listening to its clients", paused, working)
        else:
            log.info("resumed after %.1fs without running (paused, or starved of CPU)", paused)
        for client_id in self.clients:
            self.clients[client_id] += paused
        for client_id in self.silent_since:
            self.silent_since[client_id] += paused
        for client_id in self.lease_ends:
            self.lease_ends[client_id] += paused

    # -- requests ----------------------------------------------------------------------

    def handle(self, frames: list[bytes], now: float, wall: float) -> None:
        """One request (``frames``: the ROUTER's envelope, then one payload frame); its answer, the
        change it published and any snapshot it asked for go to the outbox. Never raises for what a
        client sends."""
        if len(frames) < 2:
            log.warning("dropped a message with no payload frame")
            return
        envelope, data = frames[:-1], frames[-1]
        if len(envelope) > MAX_ENVELOPE or sum(map(len, envelope)) > MAX_ENVELOPE_BYTES:
            log.warning("dropped a message with %d envelope frames of %d bytes", len(envelope), sum(map(len, envelope)))
            return
        req_id: int | None = None
        call: p.Call | None = None
        topic = p.EVERYONE  # of the changes this request makes: a call's are its caller's
        try:
            # a big call is looked up (resent? past its deadline?) before it is decoded whole
            head = p.peek_call(data) if len(data) >= BIG_CALL else None
            if head is not None:
                req_id = head[2]
                if self._answered_before(head[0], head[2], envelope):
                    return
                if wall > head[1]:
                    self._heard(head[0], now, envelope)
                    raise Expired(f"the call arrived after its deadline ({wall - head[1]:.3f}s late); not applied")
            obj = p.unpack_frozen(data, p.WALKED)  # records arrive in their stored form: no copy to freeze them
            req_id = p.request_id_of(obj)
            request = p.call_from(obj)
            if type(request) is p.Call:
                call = request
                if head is None and self._answered_before(call.client_id, request.request.req_id, envelope):  # type: ignore[union-attr]
                    return
                self._heard(call.client_id, now, envelope)
                topic = p.topic_of(call.client_id)  # its reply carries the change: its replica is not sent it
                if wall > call.expires:
                    raise Expired(f"the call arrived after its deadline ({wall - call.expires:.3f}s late); not applied")
                request = call.request
            self._payload = data if call is not None else None
            try:
                reply, kept = self._dispatch(envelope, request, topic, now, wall, call)  # type: ignore[arg-type]
            finally:
                self._payload = None
        except Exception as e:  # the writer never dies of what a client sends
            kind = next((k for cls, k in _ERROR_KINDS if isinstance(e, cls)), "internal")
            message = _message_of(e)
            if len(message) > MAX_ERROR:  # a huge bad argument must not make a huge log line and reply
                message = f"{message[:MAX_ERROR]}... ({len(message)} characters)"
            if kind == "internal":
                log.exception("internal error on a request")
            elif kind in ("not_found", "already_exists", "expired", "disk"):  # answers (a disk fault: logged once)
                log.debug("answered a request with %s: %s", kind, message)
            else:
                log.warning("refused a request (%s): %s", kind, message)
            reply = kept = p.encode_reply(p.Failed(req_id, kind, message))
        if reply is None:
            return
        if call is not None and req_id is not None and type(call.request) is not p.Sync:  # a sync may just run again
            self._keep_answer(call.client_id, req_id, kept or reply)  # (without ``before``: see ``_missed``)
            self._group_answers.append((call.client_id, req_id))
        self.outbox.replies.append([*envelope, reply])

    def _answered_before(self, client_id: str, req_id: int, envelope: list[bytes]) -> bool:
        """Whether the call ``(client_id, req_id)`` came before (a resend): then its first answer goes again (or,
        applied in a held group, once that is durable), not a second application."""
        if (client_id, req_id) in self._held_answers:
            return True
        answers = self.answered.get(client_id)
        first = None if answers is None else answers.get(req_id)
        if first is None:
            return False
        if first != _HELD:  # (held: applied, not yet durable; answered once it is)
            self.outbox.replies.append([*envelope, first])
        return True

    def _keep_answer(self, client_id: str, req_id: int, answer: bytes) -> None:
        """Keep a call's answer for a resend of it: the last ``ANSWERS_KEPT`` of each client, and more up to
        ``ANSWERS_KEPT_MAX`` while they hold at most ``ANSWERS_KEPT_BYTES``; the oldest go first (one held
        for its group stays: see ``_hold``)."""
        answered = self.answered.get(client_id)
        if answered is None:
            answered = self.answered[client_id] = _Answers()
        answered.size += len(answer) - len(answered.get(req_id, _HELD))
        answered[req_id] = answer
        while len(answered) > ANSWERS_KEPT and (len(answered) > ANSWERS_KEPT_MAX or answered.size > ANSWERS_KEPT_BYTES):
            oldest = next((r for r, a in answered.items() if a != _HELD), None)
            if oldest is None:
                break
            answered.size -= len(answered.pop(oldest))

    def commit(self, now: float) -> None:
        """End a group of requests: make what they appended durable (``--fsync always``) before any of
        it is published or answered (even when a later request of the group found the disk full).

        A failed fsync puts the writer in the disk-fault state (later writes are refused) and holds
        the group: its changes stay applied (they are in the store and written to the log), but their
        publications and answers wait until a compaction, which writes everything held, succeeds; a
        resend of a held call is not answered meanwhile, and heartbeats announce the seq before it.
        Nothing is acknowledged before it is durable, and nothing applied is answered as refused."""
        appended, self._appended = self._appended, False
        answers, self._group_answers = self._group_answers, []
        if self.disk is not None and appended:
            try:
                self.disk.commit()
            except OSError as e:  # (DataDirLost: the group went to a log gone from its path)
                self._hold(answers)
                self._disk_failed(e, now, "fsync")
                if self._disk_lost:  # never to be answered Ok: answered now, saying so (``_lost`` did, unless lost before)
                    self._refuse_held(self._lost_write())
                elif self._held is not None:
                    count = len(self._held.replies)
                    log.error("holding %d answers until the data directory works again: their fsync failed", count)
                return
        if self._held is None:
            self._committed_seq = self.seq

    def _hold(self, answers: list[tuple[str, int]]) -> None:
        """Keep this group's publications and answers back (see ``commit``)."""
        self._publish_pending()
        held = self._held if self._held is not None else Outbox()
        held.published.extend(self.outbox.published)
        held.replies.extend(self.outbox.replies)
        self.outbox.published, self.outbox.replies = [], []
        self._held = held
        for client_id, req_id in answers:
            kept = self.answered.get(client_id)
            if kept is not None and req_id in kept:
                self._held_answers[(client_id, req_id)] = kept[req_id]
                kept.size -= len(kept[req_id])
                kept[req_id] = _HELD

    def _refuse_held(self, failure: str) -> None:
        """Answer the held calls now: they will never be answered Ok (the data directory is lost, or the
        writer stops). A call whose answer carried a change gets a ``disk`` failure saying ``failure`` (that
        its write may have been applied); one that changed nothing gets its answer as of the seq before
        the held changes (which its replica reaches); a failure stays as it was. A resend gets the same.
        The held changes stay held: never published, nor announced (the seq stays the one before them).
        Before, the writer held them for good, and their callers got only "did not answer within 5s"."""
        held = self._held
        if held is None:
            return
        replies, held.replies = held.replies, []
        refused = 0
        for frames in replies:
            answer = self._unheld(frames[-1], failure)
            refused += answer is not frames[-1]
            self.outbox.replies.append([*frames[:-1], answer])
        self._unhold_answers(lambda answer: self._unheld(answer, failure))
        if replies:
            log.error("answered %d held calls, %d of them refused: %s", len(replies), refused, failure)

    def _unheld(self, answer: bytes, failure: str) -> bytes:
        """A held answer as ``_refuse_held`` gives it."""
        reply = p.decode_reply(answer)
        if type(reply) is not p.Ok or (reply.change is None and reply.seq <= self._committed_seq):
            return answer
        if reply.change is None:  # (its ``before`` may hold held changes: left out)
            return p.encode_reply(p.Ok(reply.req_id, reply.epoch, self._committed_seq, None, reply.result))
        return p.encode_reply(p.Failed(reply.req_id, "disk", failure))  # (uncut: it must say "may have been applied")

    def _lost_write(self) -> str:
        """What a held write is answered once the data directory is lost (``_refuse_held``)."""
        return (
            f"the writer cannot keep writes now ({self.disk_fault}); this write may have been applied: it was applied in "
            "the writer's memory, and the log it went to was gone from its path before the write was durable, so it is "
            "never published (processes that join this writer see it; a restart may not have it); reads go on, and this "
            "writer takes no more writes: restart it (it starts from what is at that path then)"
        )

    def _release(self) -> None:
        """The held group is durable now (a compaction wrote everything): publish and answer it."""
        held, self._held = self._held, None
        if held is None:
            return
        self._publish_pending()
        self.outbox.published.extend(held.published)
        self.outbox.replies.extend(held.replies)
        self._unhold_answers(lambda answer: answer)
        self._committed_seq = self.seq

    def _unhold_answers(self, given: Callable[[bytes], bytes]) -> None:
        """The answers kept for resends of the held calls (``_HELD`` meanwhile) become ``given(answer)``."""
        for (client_id, req_id), held_answer in self._held_answers.items():
            kept = self.answered.get(client_id)
            if kept is not None and kept.get(req_id) == _HELD:
                kept[req_id] = answer = given(held_answer)
                kept.size += len(answer)
        self._held_answers.clear()

    def _dispatch(
        self, envelope: list[bytes], request: p.Request, topic: bytes, now: float, wall: float, call: p.Call | None = None
    ) -> tuple[bytes | None, bytes | None]:
        """Carry out one request; returns its answer (None: no answer, or it comes later) and the answer to
        keep for a resend (the same, without ``before``)."""
        t = type(request)
        handler = self._handlers.get(t)
        if handler is not None:
            change, result = handler(request, now, wall)
            try:
                packed = None if change is None else self._commit(change, now, topic, None if call is None else call.expires)
            except _BigPart as e:  # a batch's part: named by the op that made it (an update that grew a record)
                raise ValueError(_in_batch(request.ops[result.index(e.part)], e)) from None  # type: ignore[union-attr]
            # a write that changed nothing while a group is held promises the seq before it (as a sync does)
            seq = self.seq if packed is not None or self._held is None else self._committed_seq
            kept = p.ok_bytes(request.req_id, self.epoch, seq, packed, result)  # type: ignore[union-attr]
            before = self._missed(call, seq if packed is None else seq - 1)
            if not before:
                return kept, kept
            return p.ok_bytes(request.req_id, self.epoch, seq, packed, result, before), kept  # type: ignore[union-attr]
        if t is p.Beat:
            self._heard(request.client_id, now, envelope, beat=True)  # type: ignore[union-attr]
            return None, None
        if t is p.Sync:
            # with the caller's topic: a joining replica gets it only once its catch-all subscription is live
            self._heartbeat(topic)
            seq = self.seq if self._held is None else self._committed_seq  # a held group is not answered yet
            answer = p.ok_bytes(request.req_id, self.epoch, seq, None, None, self._missed(call, seq))  # type: ignore[union-attr]
            return answer, answer
        if t is p.SnapshotRequest:
            self.outbox.snapshots.append((envelope, request.req_id))  # type: ignore[union-attr]
            return None, None
        if t is p.Hello:
            self._heard(request.client_id, now)  # type: ignore[union-attr]
            result = {
                "pub": self.info.get("pub"),
                "pid": self.info.get("pid", os.getpid()),
                "heartbeat": self.heartbeat,
                "time": wall,
            }
            answer = p.ok_bytes(request.req_id, self.epoch, self.seq, None, result)  # type: ignore[union-attr]
            return answer, answer
        if t is p.Bye:
            self._forget(request.client_id, now, goodbye=True)  # type: ignore[union-attr]
            return None, None
        if t is p.Compact:
            if self.disk is None:
                raise ValueError("this writer keeps no data: start it with --data DIR")
            waiter = self._waiter(envelope, request.req_id, call, now, wall)  # type: ignore[union-attr]
            first = self._compact_waiters.get(waiter.key)  # a resend: the seq its first sending came at
            self._compact_waiters[waiter.key] = (waiter, self.seq if first is None else first[1])
            if not self._compacting:
                self._compaction_due = True
            return None, None  # answered once a snapshot holding this seq is in place (``work_step``)
        if t is p.Stats and not request.checksum:  # type: ignore[union-attr]
            answer = p.ok_bytes(request.req_id, self.epoch, self.seq, None, self.stats(now, checksum=False))  # type: ignore[union-attr]
            return answer, answer
        if t is p.Stats:
            # answered once its checksum is taken, a step at a time (``work_step``): packing every record at
            # once kept the writer from everything else for 0.8 s at 1M records
            waiter = self._waiter(envelope, request.req_id, call, now, wall)  # type: ignore[union-attr]
            for job in self._checksums:
                for i, (other, figures) in enumerate(job.waiters):
                    if other.key == waiter.key:  # a resend: answered once, through its newest socket
                        job.waiters[i] = (waiter, figures)
                        return None, None
            if not self._checksums or self._checksums[-1].seq != self.seq:  # (one of this seq is shared)
                self._checksums.append(_Checksum(self.seq, p.checksum_pieces(self.store.content())))
            self._checksums[-1].waiters.append((waiter, self.stats(now, checksum=False)))
            return None, None
        raise ProtocolError(f"no handler for {t.__name__}")  # pragma: no cover - call_from returns only the above

    def _missed(self, call: p.Call | None, upto: int) -> list[bytes]:
        """The packed changes after the seq the caller's replica held when it called (``Call.known``), up
        to ``upto``, if this writer still holds all of them and they are few (else none: its replica
        thread receives them as published)."""
        if call is None:
            return []
        known = call.known
        if known < 0 or known >= upto or upto - known > MAX_BEFORE or not self._recent:
            return []
        recent = self._recent
        if recent[0][0] > known + 1 or recent[-1][0] < upto:
            return []
        start = len(recent) - (recent[-1][0] - known)
        found = [packed for seq, packed in (recent[i] for i in range(start, len(recent))) if seq <= upto]
        if not all(found) or sum(map(len, found)) > MAX_BEFORE_BYTES:  # (b"": a change too big to keep)
            return []
        return found

    def _commit(self, change: _table.Change, now: float, topic: bytes = p.EVERYONE, expires: float | None = None) -> bytes:
        """Log a change, apply it, number it and publish it; returns it packed (for the answer).

        ``DiskFault`` while the data directory cannot take it: nothing changes. ``expires``: the wall-clock
        time (``Call.expires``) past which the call that made it must not be applied, judged again last
        thing before the change is logged (``Expired``: nothing changes)."""
        packed = p.pack_change(change)  # before applying: a change that cannot be sent changes nothing
        if type(change) is _table.Put:
            # records spliced as a client sent them may pack larger here: float32 (5 bytes) becomes float64 (9)
            total = len(packed) if change.packed is None else len(packed) * 9 // 5
            p.check_record_sizes(change.records, total, f"{change.table} record")
        elif type(change) is _table.Batch and len(packed) > p.MAX_RECORD:
            for i, part in enumerate(change.changes):
                if type(part) is _table.Put:
                    try:
                        p.check_record_sizes(part.records, len(p.pack_change(part)), f"{part.table} record")
                    except ValueError as e:
                        raise _BigPart(i, str(e)) from None
        if expires is not None and self.wall_clock is not None:
            # judged again, last: preparing and packing a big call takes a while, and a writer stopped meanwhile
            # (SIGSTOP) applied a 2000-record batch seconds after its caller had raised Unavailable (a user
            # trial); judged before the packing, a stop during it was not seen
            late = self.wall_clock() - expires
            if late > 0:
                raise Expired(f"the call's deadline passed while it was prepared ({late:.3f}s ago); not applied")
        if self.disk is not None:
            if (self.disk_fault is None or self._fault_for_room) and not self._disk_lost:  # (for room: each write tries)
                try:
                    self.disk.append(packed)  # logged before it is applied, published and answered
                    self._appended = True
                except OSError as e:
                    self._disk_failed(e, now, room=e.errno in ROOM_ERRNOS and self.disk.whole)
                else:
                    if self.disk_fault is not None:
                        self._room_again()
            if self.disk_fault is not None:
                if self._disk_lost:
                    then = "this writer takes no more writes: restart it (it starts from what is at that path then)"
                elif self._fault_for_room:
                    then = "each later write is tried again: one is taken once the data directory has room for it"
                else:
                    then = "writes are taken again once the data directory works"
                raise DiskFault(
                    f"the writer cannot keep writes now ({self.disk_fault}); nothing was applied; reads go on, and {then}"
                )
        self.store.apply(change)
        self.seq += 1
        kept = packed if len(packed) <= MAX_BEFORE_BYTES else b""
        self._recent.append((self.seq, kept))
        self._recent_bytes += len(kept)
        while len(self._recent) > RECENT or self._recent_bytes > RECENT_BYTES:
            self._recent_bytes -= len(self._recent.popleft()[1])
        self._pending.append((topic, packed))
        self._pending_bytes += len(packed)
        if self._pending_bytes >= GROUP_BYTES:
            self._publish_pending()
        return packed

    def _heartbeat(self, topic: bytes = p.EVERYONE) -> None:
        self._publish_pending()  # a heartbeat promises every change up to its seq was published before it
        seq = self.seq if self._held is None else self._committed_seq  # held changes are not announced
        self.outbox.published.append((topic, p.encode_published(p.Heartbeat(self.epoch, seq))))

    def _still_connected(self, client_id: str) -> bool:
        """Whether a silent client's process still holds a connection to this writer: a message it will
        ignore (an ok answer to request 0) is sent through each envelope it spoke from; one that is taken
        (or finds the peer's queue full) says the peer is there. A process that died has its sockets closed
        by its kernel, and the Writer's ROUTER closes a connection whose peer answers no ZeroMQ heartbeat
        for ``CLIENT_SILENCE`` seconds (a stopped process, a host gone, a forked child holding a dead
        process's sockets): only a live libzmq answers, as a process whose Python threads wait on its GIL
        (a long C call) does."""
        if self.reach is None:
            return False
        probe = p.ok_bytes(0, self.epoch, self._committed_seq if self._held is not None else self.seq, None, None)
        return any(self.reach([*envelope, probe]) for envelope in self._envelopes.get(client_id, {}).values())

    def _dead(self, client_id: str, now: float) -> bool:
        """Whether ``client_id`` (a builder a claim finds) is found dead at once: silent ``CLAIM_PROBE`` seconds
        and its connection closed (``reach``; a stopped process's stays open until ZeroMQ's
        heartbeat closes it, at CLIENT_SILENCE). A pytest-xdist worker started in place of a crashed builder
        asked within the tick's ``GONE_PROBE`` and was handed the dead builder's value (a review)."""
        seen = self.clients.get(client_id)
        if seen is None or not CLAIM_PROBE <= now - seen < KILLED_WITHIN or self.reach is None:
            return False  # (past KILLED_WITHIN a closed connection may be a stopped process's: the tick decides)
        if client_id not in self._envelopes:
            return False
        return not self._still_connected(client_id)

    def _heard(self, client_id: str, now: float, envelope: list[bytes] | None = None, beat: bool = False) -> None:
        """A client spoke (from ``envelope``: its replica's socket when ``beat``, else its command
        socket): it is live, and the answers kept for it stay (a client once taken for gone, back now,
        keeps them as any live client does)."""
        self.clients[client_id] = now
        self.awaited.discard(client_id)
        if envelope is not None:
            self._envelopes.setdefault(client_id, {})[beat] = tuple(envelope)
        if client_id in self.silent_since:
            del self.silent_since[client_id]
        if self.lease_ends.get(client_id, now) > now:  # back within its grace (a stopped process resumed): its
            del self.lease_ends[client_id]  # leases stay (not after its goodbye: a beat sent before it may come after)
            log.info("client %s is heard again: the namespaces it leases stay", client_id)

    def _forget(self, client_id: str, now: float, goodbye: bool = False, dead: bool = False) -> None:
        """A client left (``goodbye``, or silence): release the once keys it was building and held; retire the
        values it built and was to tear down itself (``prepare_once_orphans``) when it is ``dead`` (its
        connection closed by its kernel), else with its leases; and end its leases (a namespace no other client
        leases is dropped): at its goodbye at once, after its silence ``lease_grace`` seconds later unless it is
        heard again (``lease_ends``: a stopped process resumed keeps all of it). At a goodbye its values whose
        teardown did not run (a cancelled close) stay, as values with none (``prepare_once_kept``). While the
        data directory cannot take those changes, the client is kept (as silent) to be forgotten later."""
        goodbye = goodbye or client_id in self._goodbyes_held
        seen = self.clients.pop(client_id, None)
        awaited = client_id in self.awaited
        self.awaited.discard(client_id)
        envelopes = self._envelopes.pop(client_id, None)
        self.silent_since[client_id] = now
        try:
            for namespace, key in _table.claims_of(self.store, client_id):
                change = _table.prepare_once_release(self.store, key, client_id, namespace)
                if change is not None:
                    self._commit(change, now)
                    log.info("released once key %r (namespace %r): its builder %s is gone", key, namespace, client_id)
            for held in _table.prepare_once_leave(self.store, client_id):
                self._commit(held, now)
            for kept in _table.prepare_once_kept(self.store, client_id) if goodbye else ():
                self._commit(kept, now)
            if dead:
                self._retire_orphans(client_id, now)
        except DiskFault:
            self.clients[client_id] = seen if seen is not None else now - CLIENT_SILENCE
            if awaited:
                self.awaited.add(client_id)
            if envelopes is not None:  # (found dead later all the same)
                self._envelopes[client_id] = envelopes
            if goodbye:  # forgotten again later as after its goodbye: its values kept (a review)
                self._goodbyes_held.add(client_id)
                if _table.leases_of(self.store, client_id):
                    self.lease_ends[client_id] = now  # (at the next tick the disk takes them: a goodbye has no grace)
            return
        self._goodbyes_held.discard(client_id)
        if goodbye or self.lease_grace <= 0:
            self._end_leases(client_id, now)
        elif client_id not in self.lease_ends and (
            _table.leases_of(self.store, client_id) or _table.prepare_once_orphans(self.store, client_id)
        ):
            self.lease_ends[client_id] = now + self.lease_grace
            log.info(
                "client %s is silent: what it leases, and the once values it was to tear down, go in %gs unless it is heard",
                client_id,
                self.lease_grace,
            )

    def _retire_orphans(self, client_id: str, now: float) -> None:
        """Retire the once values ``client_id``, gone, was to tear down itself (``prepare_once_orphans``)."""
        for namespace, key, retire in _table.prepare_once_orphans(self.store, client_id):
            self._commit(retire, now)
            log.info("retired once key %r (namespace %r): builder %s gone, cannot tear it down", key, namespace, client_id)

    def _lease_stats(self, now: float) -> dict[str, Any]:
        """What ``Stats`` says of leases: the grace (seconds), how many namespaces are leased, and those whose
        every leasing client is silent, each with the seconds before it is dropped unless one is heard."""
        leased = self.store.tables.get(_table.LEASE_TABLE, {})
        ending = {
            namespace: round(max(0.0, max(self.lease_ends[c] for c in rows) - now), 1)
            for namespace, rows in leased.items()
            if rows and all(c in self.lease_ends for c in rows)
        }
        return {"grace": self.lease_grace, "namespaces": sum(1 for rows in leased.values() if rows), "ending": ending}

    def _end_leases(self, client_id: str, now: float) -> None:
        """End the leases of ``client_id``, gone, and retire the once values it was to tear down: a namespace no
        other client leases is dropped, with the once keys scoped to it that are settled and wait for no live
        builder's teardown (``prepare_lease_end``).
        While the data directory cannot take those changes, they are tried again at the next tick."""
        self.lease_ends[client_id] = now
        try:
            if client_id not in self._goodbyes_held:  # (none after a goodbye: ``prepare_once_kept``)
                self._retire_orphans(client_id, now)
            for namespace, end in _table.prepare_lease_end(self.store, client_id, self.clients):
                self._commit(end, now)
                if type(end) is _table.DropNamespace:
                    log.info("dropped namespace %r: %s, the last client leasing it, is gone", namespace, client_id)
        except DiskFault:
            return
        del self.lease_ends[client_id]

    # -- the data directory -------------------------------------------------------------

    def _disk_failed(self, error: OSError, now: float, doing: str = "", room: bool = False) -> None:
        """An operation on the data directory raised ``error`` (``doing``: which, for the message; ``room``:
        an append the disk had no room for, the log left whole)."""
        if isinstance(error, DataDirLost):
            self._lost(str(error))
        else:
            self._fault(f"{doing}: {error}" if doing else str(error), now, room)

    def _fault(self, why: str, now: float, room: bool = False) -> None:
        """The data directory failed (full, read-only, an I/O error): refuse writes until it works again.
        ``room``: only a write it had no room for, its log whole (``ROOM_ERRNOS``): each later write tries
        again, the first that fits ends the fault. Any other fault needs a snapshot of everything to end, and
        is never made one for room again."""
        if self._disk_lost:  # (what fails after that: the directory is gone, and that was said)
            return
        if self.disk_fault is None:
            assert self.disk is not None
            until = "each later write is tried again" if room else "writes are refused until it can again"
            log.error(  # (the log says it as the wire does: a name that is not UTF-8 broke strict log handlers)
                "cannot write to %s (%s): %s; reads go on", p.wire_text(self.disk.path), p.wire_text(why), until
            )
            self._disk_retry_every = DISK_RETRY_FIRST
            self._fault_for_room = room
        elif not room and self._fault_for_room:
            self._fault_for_room = False  # (worse now: its retries make a snapshot of everything)
            self._disk_retry_every = DISK_RETRY_FIRST
        self.disk_fault = p.wire_text(why)  # (stats and refusals say it: it may hold the data path)
        self._disk_retry_at = now + self._disk_retry_every

    def _room_again(self) -> None:
        """A write fitted after writes the disk had no room for: the fault ends (nothing was held by it)."""
        assert self.disk is not None and self._held is None and not self._disk_lost
        log.warning("%s has room again: writes are taken again", p.wire_text(self.disk.path))
        self.disk_fault = None
        self._fault_for_room = False

    def _lost(self, why: str) -> None:
        """The directory or its log is gone from its path (``DataDirLost``): writes are refused for good.
        Never tried again: a compaction would write into a directory no start will read, and the path may
        be another writer's by now."""
        if self._disk_lost:
            return
        log.error("%s: writes are refused until this writer is restarted; reads go on, from what it holds", p.wire_text(why))
        self._disk_lost = True
        self._fault_for_room = False  # (a write that fits would have ended it: a review)
        self.disk_fault = p.wire_text(why)
        self._refuse_held(self._lost_write())  # a group held since its fsync failed is never durable now

    def _recover(self, now: float) -> None:
        """Try the data directory again: a compaction writes everything the writer holds (so nothing
        acknowledged depends on what failed) and starts a fresh log; the fault ends once its snapshot
        is in place. Tried again later, less often, if it fails."""
        if not self._compacting:
            self._compaction_due = True
        self._disk_retry_at = now + self._disk_retry_every  # (one under way and begun before the fault chains one)

    @property
    def _compacting(self) -> bool:
        return self._compaction is not None or self._compaction_due

    @property
    def pending_work(self) -> bool:
        """Work is under way that goes a step at a time (a compaction, a Stats checksum): the process
        around the core calls ``work_step`` between groups until there is none."""
        return self._compacting or bool(self._checksums)

    def work_step(self, now: float) -> None:
        """A step of each kind of work under way, between groups: a compaction's (beginning it, or about 512
        KiB written) and the oldest Stats checksum's (about 512 KiB of records packed); each answers its
        requests when done. What goes wrong is answered to its requests: the writer goes on."""
        try:
            if self._compaction is None and self._compaction_due:
                self._compaction_due = False
                self._begin_compaction(now)
            if self._compaction is not None:
                self._compact_step(now)
        except Exception as e:  # not the disk's (OSError, handled there): a fault of the writer's own
            log.exception("internal error in a compaction; it is abandoned")
            self._abandon_compaction(p.Failed(0, "internal", f"the compaction failed: {_message_of(e)}"[:MAX_ERROR]))
        if self._checksums:
            self._checksum_step(now)

    @property
    def holding(self) -> bool:
        """Calls are held unanswered (their group's fsync failed): the process around the core calls
        ``stop_work`` when it stops, which answers them."""
        return self._held is not None and bool(self._held.replies)

    def stop_work(self) -> None:
        """The writer stops: the requests waiting for work under way are answered that it stopped, and the
        held calls that their writes may have been applied."""
        self._refuse_held(
            f"the writer stopped while this write was held, its fsync having failed ({self.disk_fault}): it may have been "
            "applied (it is in the log, and a restart has it if the log reached the disk)"
        )
        self._abandon_compaction(p.Failed(0, "stopped", "the writer stopped before the snapshot was in place"))
        checksums, self._checksums = self._checksums, []
        for job in checksums:
            for waiter, _ in job.waiters:
                self._answer(waiter, p.Failed(0, "stopped", "the writer stopped before the checksum was taken"))

    def _abandon_compaction(self, failed: p.Failed) -> None:
        compaction, self._compaction = self._compaction, None
        self._compaction_due = False
        if compaction is not None:
            compaction.abandon()
        waiters, self._compact_waiters = self._compact_waiters, {}
        for waiter, _ in waiters.values():
            self._answer(waiter, failed)

    def _begin_compaction(self, now: float) -> None:
        """Start a compaction of the store as it is now (a view: its records are frozen); its snapshot is
        written by ``work_step``."""
        assert self.disk is not None
        try:
            self._compaction = self.disk.begin_compaction(p.pack, self.store.content())
        except OSError as e:
            self._compaction_failed(e, now)
            return
        self._compaction_seq = self.seq
        # begun during a fault that refuses every write: its snapshot holds everything then, and nothing is
        # appended until it is in place. Not during a fault for room, which a write that fits ends while it
        # goes on: what comes after is in no snapshot (a review: a group held by a failed fsync then was
        # answered Ok when this compaction ended).
        self._compaction_ends_fault = self.disk_fault is not None and not self._fault_for_room
        log.info(
            "compacting %s: a snapshot of %d records, a step at a time", p.wire_text(self.disk.path), self._compaction.records
        )

    def _compact_step(self, now: float) -> None:
        """Write the next step of the compaction under way; once its snapshot is in place, answer the
        Compact requests it holds the seq of (another follows for the others) and end a disk fault it
        was begun in (releasing what the fault held)."""
        compaction = self._compaction
        assert compaction is not None and self.disk is not None
        try:
            done = compaction.step()
        except OSError as e:
            self._compaction = None
            self._compaction_failed(e, now)
            return
        if not done:
            return
        self._compaction = None
        self._compaction_retry_at, self._compaction_retry_every = None, COMPACTION_RETRY_FIRST
        log.info(
            "compacted %s: snapshot of %d records, %d bytes", p.wire_text(self.disk.path), compaction.records, compaction.size
        )
        result = {"records": compaction.records, "bytes": compaction.size}
        for key, (waiter, seq) in list(self._compact_waiters.items()):
            if seq <= self._compaction_seq:
                del self._compact_waiters[key]
                self._answer(waiter, p.ok_bytes(waiter.req_id, self.epoch, self._compaction_seq, None, result))
        if self.disk_fault is not None and self._compaction_ends_fault and not self._disk_lost:
            log.warning("%s works again: every record is in a new snapshot; writes are taken again", p.wire_text(self.disk.path))
            self.disk_fault = None
            self._fault_for_room = False
            self._release()
        # begun before a fault (the disk works again: one of everything ends it now), or before a Compact came
        full_fault = self.disk_fault is not None and not self._fault_for_room and not self._disk_lost
        self._compaction_due = full_fault or bool(self._compact_waiters)

    def _compaction_failed(self, error: OSError, now: float) -> None:
        """A compaction could not begin or was abandoned: the snapshot and logs before it stand. One that
        failed for room (``ROOM_ERRNOS``, the logs whole) is no fault: writes go on into the log, and it is
        tried again later (``COMPACTION_RETRY_FIRST``, doubling): a full store's snapshot needs room for all
        of it, and every write was refused until there was (a user trial: a 10-byte insert refused with 40%
        of the disk free). Any other failure is a fault (a failed fsync may have lost entries of the log)."""
        assert self.disk is not None
        in_fault = self.disk_fault is not None and not self._fault_for_room  # (a retry's: of everything)
        if not in_fault and not isinstance(error, DataDirLost) and error.errno in ROOM_ERRNOS and self.disk.whole:
            retry_in = self._compaction_retry_every
            self._compaction_retry_at = now + retry_in
            self._compaction_retry_every = min(COMPACTION_RETRY_MAX, retry_in * 2)
            log.warning(
                "the compaction of %s failed (%s): the snapshot and log before it stand, writes go on; tried again in %gs",
                p.wire_text(self.disk.path),
                p.wire_text(str(error)),
                retry_in,
            )
        else:
            self._disk_failed(error, now, "compacting")
        if in_fault:  # a retry that failed: the next one later
            self._disk_retry_every = min(DISK_RETRY_MAX, self._disk_retry_every * 2)
            self._disk_retry_at = now + self._disk_retry_every
        if isinstance(error, DataDirLost):
            message = f"the compaction failed ({error}); this writer writes nothing there any more"
        else:
            message = f"the compaction failed ({error}); the snapshot and log before it stand"
        self._abandon_compaction(p.Failed(0, "disk", message[:MAX_ERROR]))

    def _checksum_step(self, now: float) -> None:
        """A step of the oldest checksum; its requests answered when it is whole. Requests whose callers
        gave up are dropped (and the checksum, when none is left)."""
        job = self._checksums[0]
        job.waiters = [(w, figures) for w, figures in job.waiters if w.deadline is None or now <= w.deadline]
        try:
            done = not job.waiters or job.step(STEP_BYTES)
        except Exception as e:  # a fault of the writer's own: answered, the writer goes on
            log.exception("internal error taking a checksum")
            self._checksums.pop(0)
            for waiter, _ in job.waiters:
                self._answer(waiter, p.Failed(0, "internal", f"the checksum failed: {_message_of(e)}"[:MAX_ERROR]))
            return
        if done:
            self._checksums.pop(0)
            for waiter, figures in job.waiters:
                figures["checksum"] = job.crc
                try:
                    answer: bytes | p.Failed = p.ok_bytes(waiter.req_id, self.epoch, job.seq, None, figures)
                except Exception as e:  # the writer never dies of its own stats (it did of a data path not UTF-8)
                    log.exception("internal error answering stats")
                    answer = p.Failed(0, "internal", f"the stats could not be sent: {_message_of(e)}"[:MAX_ERROR])
                self._answer(waiter, answer)

    def _waiter(self, envelope: list[bytes], req_id: int, call: p.Call | None, now: float, wall: float) -> _Waiter:
        """A request to answer later: named by its call (a resend is the same), or by its socket and req id."""
        if call is None:
            return _Waiter((tuple(envelope), req_id), envelope, req_id, None)
        return _Waiter(_CallKey(call.client_id, req_id), envelope, req_id, now + max(0.0, call.expires - wall))

    def _answer(self, waiter: _Waiter, answer: bytes | p.Failed) -> None:
        """Answer a request later than its group (a call's answer kept for a resend, while its client is known)."""
        if type(answer) is p.Failed:
            answer = p.encode_reply(p.Failed(waiter.req_id, answer.kind, p.wire_text(answer.message)))
        assert type(answer) is bytes
        key = waiter.key
        if type(key) is _CallKey and (key.client_id in self.clients or key.client_id in self.answered):
            self._keep_answer(key.client_id, key.req_id, answer)
        self.outbox.replies.append([*waiter.envelope, answer])

    def stats(self, now: float, checksum: bool = True) -> dict[str, Any]:
        """What ``Stats`` answers. ``checksum=False``: its checksum left None (``work_step`` takes it)."""
        disk = self.disk
        return {
            "url": self.info.get("url"),
            "pid": self.info.get("pid", os.getpid()),
            "epoch": self.epoch,
            "seq": self.seq,
            "publications": self.publications,
            "uptime": now - self.started,
            "clients": len(self.clients) - len(self.awaited),  # heard from (the awaited are not, yet)
            "awaited": len(self.awaited),
            "records": len(self.store),
            "leases": self._lease_stats(now),
            "tables": self.store.counts(),
            "checksum": p.checksum(self.store) if checksum else None,
            "gc_freezes": self.info.get("gc_freezes", 0),  # times the writer's process froze what survived
            "data": None
            if disk is None
            else {
                "path": p.wire_text(disk.path),  # a name that is not UTF-8 escaped (the answer is text)
                "fsync": disk.fsync,
                "log_bytes": disk.size,
                "fault": self.disk_fault,
                # a compaction under way: the records of its snapshot, and the bytes of it written so far
                "compacting": None
                if self._compaction is None
                else {"records": self._compaction.records, "bytes_written": self._compaction.size},
            },
        }

    # -- writes: command -> change ------------------------------------------------------

    def _insert(self, r: p.Insert, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        change = _table.prepare_insert(
            self.store, r.table, r.namespace, r.prefix, r.records, create=r.create, now=int(wall), token=self.token
        )
        records, payload = change.records, self._payload
        if payload is not None and len(payload) >= SPLICE_MIN and len(records) == len(r.records):
            if all(map(operator.is_, records, r.records)):  # each stored as decoded: their bytes as they came
                change.packed = p.insert_records_bytes(payload)
        return change, None

    def _update(self, r: p.Update, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        return _table.prepare_update(self.store, r.table, r.namespace, r.id, r.changes), None

    def _remove(self, r: p.Remove, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        return _table.prepare_delete(self.store, r.table, r.namespace, r.id), None

    def _batch(self, r: p.BatchWrite, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        """Every op prepared in order against the store as the ops before it leave it (``Staged``), nothing
        applied until all are prepared: one failing op refuses the batch, naming its index."""
        staged = _table.Staged(self.store)
        parts: list[_table.Put | _table.Delete] = []
        where: list[int | None] = []  # for each op, the index of its part (None: a delete of nothing)
        for op in r.ops:
            try:
                if type(op) is p.Insert:
                    part: _table.Put | _table.Delete | None = _table.prepare_insert(
                        staged, op.table, op.namespace, op.prefix, op.records, create=op.create, now=int(wall), token=self.token
                    )
                elif type(op) is p.Update:
                    part = _table.prepare_update(staged, op.table, op.namespace, op.id, op.changes)
                else:
                    part = _table.prepare_delete(staged, op.table, op.namespace, op.id)  # type: ignore[union-attr]
            except (NotFound, AlreadyExists, ValueError, TypeError) as e:
                raise type(e)(_in_batch(op, e)) from None
            if part is None:
                where.append(None)
                continue
            staged.stage(part)
            where.append(len(parts))
            parts.append(part)
        return (_table.Batch(tuple(parts)) if parts else None), where

    def _clear(self, r: p.ClearTable, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        if r.namespace is None:
            return _table.prepare_clear(self.store, r.table), None
        return _table.prepare_clear_namespace(self.store, r.table, r.namespace), None

    def _drop(self, r: p.Drop, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        """Answers ``{"leases": [client ids]}``: the clients whose leases of the namespace end with it (one
        that leased it and is not named lost its lease before: ``Client.drop_namespace``)."""
        holders = sorted(self.store.rows(_table.LEASE_TABLE, r.namespace))
        return _table.prepare_drop_namespace(self.store, r.namespace), {"leases": holders}

    def _lease(self, r: p.Lease, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        self._heard(r.client_id, now)
        return _table.prepare_lease(self.store, r.namespace, r.client_id, now=int(wall)), None

    def _once_claim(self, r: p.OnceClaim, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        self._heard(r.client_id, now)
        owner = _table.once_owner(self.store, r.namespace, r.key)
        if owner is not None and owner != r.client_id and self._dead(owner, now):
            self._forget(owner, now, dead=True)  # (a killed builder's value: not handed out while the tick comes)
        verdict, change = _table.prepare_once_claim(
            self.store, r.key, r.client_id, r.by, self.clients, now=int(wall), namespace=r.namespace, claim=r.req_id
        )
        return change, verdict

    def _once_finish(self, r: p.OnceFinish, now: float, wall: float) -> tuple[_table.Change | None, Any]:
        self._heard(r.client_id, now)
        if r.outcome == "release":
            return _table.prepare_once_release(self.store, r.key, r.client_id, r.namespace, r.payload), "released"
        if r.outcome == "retire":
            return _table.prepare_once_retire(self.store, r.key, r.client_id, r.namespace), "retired"
        if r.outcome == "leave":
            return _table.prepare_once_let_go(self.store, r.key, r.client_id, r.namespace), "left"
        value, error = (None, r.payload) if r.outcome == "error" else (r.payload, None)
        verdict, change = _table.prepare_once_finish(
            self.store, r.key, r.client_id, value, error, r.namespace, teardown=r.outcome == "resource"
        )
        return change, verdict


def _op_name(op: p.Insert | p.Update | p.Remove) -> str:
    """An op of a batch as the client called it."""
    if type(op) is p.Insert:
        return "create" if op.create else "insert" if len(op.records) == 1 else "insert_many"
    return "update" if type(op) is p.Update else "delete"
