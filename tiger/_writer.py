"""The writer process: sockets, signals and the data directory around ``WriterCore``.

Loop (group commit): wait for a request on the ROUTER, take every request already waiting
behind it (at most ``MAX_GROUP``), hand them to the core in arrival order, make what they
logged durable once, then publish their changes (PUB) and only then answer, so a client that
gets its answer can count on its change being on its way to every replica. A change is
published under the caller's topic, which the caller's own replica does not subscribe to: the
caller applies its change from the answer. Heartbeats on the PUB tell replicas the writer is
alive and how far it is. Between groups, the loop sends a turn's worth of the snapshots on their
way (``tiger._snapshots.Outgoing``: answers and snapshots as each peer takes them, never blocking).

Every decision (what to apply, what to answer, who is gone, when to retry a failed disk) is
the core's (``tiger._core``); this module only moves bytes between the sockets, the log and
the core, and reads the clock.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import resource
import select
import signal
import sys
import time
from typing import Any

import zmq

from tiger import _protocol as p
from tiger import _table
from tiger._clock import monotonic, wall
from tiger._core import CLIENT_SILENCE, LEASE_GRACE, WriterCore
from tiger._log import COMPACT_BYTES, Corrupt, DataDir, Locked
from tiger._paths import ipc_path_unusable, missing_secret_file
from tiger._process import ProcessWatch
from tiger._server import NOT_STARTED, accepting, bind_address
from tiger._snapshots import PEER_HWM, STALL, Outgoing, PeerGone

log = logging.getLogger("tiger.writer")

HEARTBEAT = 0.5  # seconds between published heartbeats
HEARTBEAT_IVL = 1.0  # seconds between ZeroMQ heartbeats (PING) to each connected peer
PUB_HWM = 200_000  # published messages queued per subscriber before PUB drops (replicas resync)
MAX_GROUP = 256  # requests taken off the socket as one group (one fsync, one publish burst)
_MORE = int(zmq.SNDMORE)
_NOW = int(zmq.NOBLOCK)
FILES_LOG_EVERY = 10.0  # seconds between two warnings that the writer nears its limit on open files
STOP_LINGER = 0.2  # seconds the answers to requests cut short by a stop may take to leave
PAUSED = 1.0  # seconds between two turns of the writer's loop (at most 0.1 s apart) that mean it was paused


class _Tokens:
    """Random hex for ids, from a pool refilled with os.urandom: one syscall per many ids, not per id."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def __call__(self, nbytes: int) -> str:
        if self._at + nbytes > len(self._pool):
            self._pool, self._at = os.urandom(8192), 0
        start = self._at
        self._at += nbytes
        return self._pool[start : self._at].hex()


def _closed(fd: int) -> bool:
    """Whether ``fd`` (the starter's end of a pipe) is at EOF: readable, and nothing to read."""
    poller = select.poll()  # (not select.select, which refuses a descriptor numbered past 1024)
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0)) and not os.read(fd, 4096)


class _Interrupted(Exception):
    """Raised by the signal handler out of the blocking receive (only there: nothing is half done)."""


LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")


def is_loopback(url: str) -> bool:
    """Whether a tcp URL binds only this machine's loopback (wildcards are not loopback)."""
    host = url[len("tcp://") :].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or (host.startswith("127.") and host.replace(".", "").isdigit() and host.count(".") == 3)


def _made_files(*endpoints: tuple[str, str]) -> list[tuple[str, int]]:
    """(path, inode) of the ipc socket files made by binding these (asked, bound) endpoints, so that a
    clean stop removes them and only them: none for tcp, Linux's abstract ``ipc://@name``, or a wildcard
    (``ipc://*``: libzmq made the file in a directory of its own, and removes both itself, the directory
    only if it removes the file)."""
    made = []
    for asked, bound in endpoints:
        path = bound.removeprefix("ipc://")
        if path != bound and not path.startswith("@") and "*" not in asked:
            with contextlib.suppress(OSError):
                made.append((path, os.stat(path).st_ino))
    return made


def read_secret_key(path: str) -> bytes:
    """The z85 secret key from a file ``tiger keygen`` wrote; ``OSError`` if it cannot be read, ``ValueError``
    naming it if it holds no such key (a binary file raised a bare UnicodeDecodeError)."""
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"secret:"):
                key = line.split(b":", 1)[1].strip()
                if len(key) == 40 and key.isascii():
                    return key
    raise ValueError(f"{path!r} holds no 'secret: <40 z85 characters>' line (make one with tiger keygen)")


def _refuse_a_live_ipc_path(url: str) -> None:
    """``EADDRINUSE`` (as tcp's bind raises for a port in use) when some process accepts connections at an
    ipc URL's path. libzmq binds ipc by unlinking whatever file is there: a second writer on the URL of a
    running one took its path (new clients reached the second, the first ran on unreachable, and the
    writes the second acknowledged were lost with it). A stale file (connection refused) is left to
    libzmq, which replaces it; an abstract name (``@``) the kernel refuses by itself."""
    unusable = ipc_path_unusable(url)  # (a directory: libzmq said "Address already in use"; a file: it would unlink it)
    if unusable is not None:
        raise zmq.ZMQError(*unusable)
    path = url[len("ipc://") :] if url.startswith("ipc://") else ""
    if path and not path.startswith("@") and not path.endswith("*") and accepting(url) == "yes":
        raise zmq.ZMQError(errno.EADDRINUSE, f"Address already in use: a process accepts connections at {path} (a tiger writer?)")


def publish_endpoint(url: str) -> str:
    """Where the writer binds its PUB socket, given its command URL."""
    if url.startswith("ipc://"):
        return url + ".pub"
    if url.startswith("tcp://"):
        host = url[len("tcp://") :].rsplit(":", 1)[0]
        return f"tcp://{host}:*"
    raise ValueError(f"url must start with tcp:// or ipc://, got {url!r}")


class Writer:
    """The writer's sockets around its core. ``run()`` serves until stopped."""

    def __init__(
        self,
        url: str,
        *,
        heartbeat: float = HEARTBEAT,
        owner_pid: int | None = None,
        pub_hwm: int = PUB_HWM,
        data: str | None = None,
        fsync: str = "everysec",
        curve_secret: bytes | None = None,
        compact_bytes: int = COMPACT_BYTES,
        snapshot_stall: float | None = None,
        freeze_long_lived: bool = False,
        lease_grace: float = LEASE_GRACE,
    ) -> None:
        """``lease_grace``: seconds a client taken for gone by its silence keeps its leases.
        ``snapshot_stall``: seconds a peer may take nothing of what waits for it (default ``STALL``; tests
        shorten it, ``tiger serve`` does not offer it). ``freeze_long_lived``: the process is this writer's
        own (``tiger serve``), and its garbage collector is run as ``_freeze_long_lived`` says."""
        if url.startswith("tcp://") and not is_loopback(url) and curve_secret is None:
            raise ValueError(
                f"refusing to bind {url} without CurveZMQ: other machines could read and change the store; "
                "bind 127.0.0.1, or pass --curve-secret FILE (tiger keygen makes one)"
            )
        self.heartbeat = heartbeat
        self.owner = None if owner_pid is None else ProcessWatch(owner_pid)
        self.orphaned = False  # stopped because the process that started it is gone
        self.started = wall()
        self._running = True
        self._receiving = False  # in the blocking receive: a stop signal may interrupt it at once
        self.data: DataDir | None = None
        store = _table.Store()
        if data is not None:  # before any socket: a directory that cannot be used stops the start
            self.data = DataDir(data, fsync, compact_bytes)
            try:
                data_path = self.data.path

                def restore(content: dict[str, Any], changes: list[bytes]) -> None:
                    try:
                        store.load(content)
                        for payload in changes:
                            store.apply(p.change_from_wire(p.unpack(payload)))
                    except ValueError as e:  # (shapes the store and every replica rely on; ProtocolError, msgpack's)
                        why = f"{p.wire_text(data_path)} holds what tiger cannot serve: {e}"
                        raise Corrupt(f"{why}; refusing to start (nothing on disk was changed)") from None

                _, changes = self.data.load(p.unpack, restore)
            except BaseException:
                self.data.remove_made()  # (a directory this start made holds nothing yet: it goes)
                self.data.close()
                raise
            log.info("loaded %d records from %s (%d logged changes)", len(store), p.wire_text(self.data.path), len(changes))
        self.core = WriterCore(
            p.new_epoch(),
            heartbeat=heartbeat,
            now=monotonic(),
            store=store,
            disk=self.data,
            token=_Tokens(),
            lease_grace=lease_grace,
            wall_clock=wall,
        )
        self.core.reach = self._reach
        self._ctx = zmq.Context()
        self.router = self._ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        # raise, not drop, when a peer is gone (EHOSTUNREACH) or its queue is full (EAGAIN: every send is
        # non-blocking, and what a full queue refuses waits in ``outgoing``)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # ZeroMQ's own heartbeats (ZMTP 3.1 PING/PONG): a peer whose libzmq I/O thread does not answer for
        # CLIENT_SILENCE seconds has its connection closed. A client whose Python threads cannot run (a once
        # factory holding the GIL) still answers; a dead process, a stopped one, a host gone without closing
        # its connections, or a forked child holding copies of a dead process's sockets (no I/O thread
        # survives fork) does not. ``WriterCore.reach`` then finds the peer gone.
        self.router.setsockopt(zmq.HEARTBEAT_IVL, int(HEARTBEAT_IVL * 1000))
        self.router.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(CLIENT_SILENCE * 1000))
        self.router.setsockopt(zmq.SNDHWM, PEER_HWM)
        self.router.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE)
        self.pub = self._ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, pub_hwm)
        # the same heartbeats on the publishing socket: PUB bounds a subscriber's queue in messages (``pub_hwm``),
        # not bytes, and a subscriber whose I/O thread does not answer never leaves, so what it is sent piles up
        # in the writer (a stopped process, and a forked child holding a closed client's socket: 1 GB in 15 s of
        # 100 KB batches, a user trial); its connection is closed after CLIENT_SILENCE, its queue freed (the
        # replica, resumed, connects again and reloads a snapshot at the gap, as ``WriterCore.reach`` already
        # took the client for gone)
        self.pub.setsockopt(zmq.HEARTBEAT_IVL, int(HEARTBEAT_IVL * 1000))
        self.pub.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(CLIENT_SILENCE * 1000))
        if "[" in url:
            for sock in (self.router, self.pub):
                sock.setsockopt(zmq.IPV6, 1)
        if curve_secret is not None:
            public = zmq.curve_public(curve_secret)
            for sock in (self.router, self.pub):
                sock.curve_secretkey = curve_secret
                sock.curve_publickey = public
                sock.curve_server = True
        try:
            _refuse_a_live_ipc_path(url)
            address = bind_address(url)  # (a host name looked up by tiger, within a bound)
            self.router.bind(address)
            self.pub.bind(publish_endpoint(address))
        except BaseException:
            if self.data is not None:  # a failed start leaves no data directory it made behind: removed while
                self.data.remove_made()  # it is locked still, so no writer that takes it after loses files to it
            self.close()
            raise
        self._files_logged = -FILES_LOG_EVERY  # when the writer last said it was near its limit on open files
        self.outgoing = Outgoing(self._send, stall=STALL if snapshot_stall is None else snapshot_stall)
        self.url = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_url = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._ipc_files = _made_files((url, self.url), (publish_endpoint(url), self.pub_url))
        self.core.info.update(url=self.url, pub=self.pub_url, pid=os.getpid())
        self.freeze_long_lived = freeze_long_lived
        self._frozen_at = -1  # the seq at the last freeze
        if freeze_long_lived:
            self._freeze_long_lived()

    @property
    def epoch(self) -> str:
        return self.core.epoch

    @property
    def seq(self) -> int:
        return self.core.seq

    @property
    def store(self) -> _table.Store:
        return self.core.store

    # -- the loop ----------------------------------------------------------------

    def run(self, watch_fd: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT (unless SIGINT was ignored when the process started), ``stop()``, the owner
        process dying, or EOF on ``watch_fd``.

        A blocking receive with a timeout, not poll + receive: on this path every system call and
        wake-up counts (a poll loop cost a ROUTER echo about 20 us more per round trip here). The
        timeout (at most 0.1 s) bounds how late a heartbeat, a signal or the owner's end is noticed;
        while snapshots are on their way it is 0 (a chunk can go) or 2-20 ms (queues are full).
        (pyzmq restarts a receive interrupted by a signal with its whole timeout: safe here, where the
        only handled signals stop the loop, and no other signal wakes the process without ending it.
        Clients, which live in processes with signal handlers of their own, poll instead.)
        """
        # SIGINT ignored when this process started stays ignored (a shell starts a background job, `tiger serve &`
        # in a script, so that the script's Ctrl-C leaves it running; Python itself then raises no KeyboardInterrupt)
        handled = [signal.SIGTERM] + ([] if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else [signal.SIGINT])
        old_handlers = {s: signal.signal(s, self._on_signal) for s in handled}
        router, outgoing = self.router, self.outgoing
        idle = max(1, int(min(self.heartbeat, 0.1) * 1000))
        router.setsockopt(zmq.RCVTIMEO, idle)
        waits = idle  # ms the receive waits: less while something waits to be sent (see below)
        next_beat = awake = monotonic()
        awake_cpu = time.thread_time()
        try:
            while self._running:
                now, cpu = monotonic(), time.thread_time()
                if now - awake > PAUSED:  # not listening: not running (SIGSTOP, a debugger), or busy with a big call
                    self.core.resumed(now - awake, cpu - awake_cpu)
                    outgoing.resumed(now - awake)  # (nor is it its peers' stall: they could take nothing)
                awake, awake_cpu = now, cpu
                if now >= next_beat:
                    self.tick()
                    next_beat = monotonic() + self.heartbeat
                    if watch_fd is not None and _closed(watch_fd):
                        log.info("the process that started this writer is gone; stopping")
                        self.orphaned = True
                        break
                # Snapshots go out between requests, a turn's worth at a time; a full queue is tried again
                # soon. (ROUTER has no per-peer POLLOUT: a short receive timeout is the wake-up.)
                if outgoing.wait(now) is not None:
                    now = monotonic()
                    outgoing.pump(now)
                # Work over the whole store (a compaction, a Stats checksum) goes a step (512 KiB) at a time,
                # between groups: no wait while some is under way.
                if self.core.pending_work:
                    self.core.work_step(now)
                    self._send_outbox()
                wait = 0.0 if self.core.pending_work else outgoing.wait(now)
                ms = idle if wait is None else int(wait * 1000)
                if ms != waits:
                    router.setsockopt(zmq.RCVTIMEO, ms)
                    waits = ms
                try:
                    self._receiving = True
                    if not self._running:  # a signal that came before the line above: seen here
                        break
                    frames = p.receive(router)
                except zmq.Again:  # quiet for the timeout
                    continue
                finally:
                    self._receiving = False
                group = [frames]
                while len(group) < MAX_GROUP and p.waiting(router):  # group commit: every request already waiting
                    try:
                        group.append(p.receive(router, zmq.NOBLOCK))
                    except zmq.Again:
                        break
                self.handle_group(group)
        except _Interrupted:  # SIGTERM/SIGINT while waiting for a request: stop now, not at the timeout
            pass
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            linger = 0.0
            if self.core.pending_work or self.core.holding:  # what waits (tiger compact, stats, a held write) is told
                self.core.stop_work()
                self._send_outbox()
                linger = STOP_LINGER
            self.close(linger)

    def handle_group(self, group: list[list[bytes]]) -> None:
        """Requests taken off the socket together: applied in arrival order, made durable once, then
        their changes published and their answers sent."""
        now = monotonic()
        for frames in group:  # the wall clock per request: a call is judged expired when its turn comes
            self.core.handle(frames, now, wall())
        self.core.commit(monotonic())
        self._send_outbox()

    def tick(self) -> None:
        """About every heartbeat: the core's timed work, and whether the owner process is gone."""
        now = monotonic()
        self.core.tick(now)
        self.core.commit(now)  # once keys released for gone clients: durable before they are published
        self._send_outbox()
        self._check_open_files(now)
        if self.owner is not None and self.owner.ended():
            log.info("owner process %d is gone; stopping", self.owner.pid)
            self.orphaned = True
            self._running = False
        if self.freeze_long_lived and self.core.seq != self._frozen_at:
            self._freeze_long_lived()

    def _check_open_files(self, now: float) -> None:
        """Say (at most every 10 s) when this process holds nearly as many files as it may open: libzmq then
        retries the connections it cannot accept without a word (a user trial saw clients time out and
        nothing logged). (libzmq's monitor of failed accepts cannot serve: its queue fills as fast as the
        accept is retried, and its I/O thread then blocks, holding the lock ``disable_monitor`` needs.)"""
        if now - self._files_logged < FILES_LOG_EVERY:
            return
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:  # the lowest free descriptor: about how many are open (a listing of /proc/self/fd took 5 ms at 10k)
            free = os.open(os.devnull, os.O_RDONLY)
        except OSError as e:
            if e.errno != errno.EMFILE:
                return
            held = limit
        else:
            os.close(free)
            held = free
        if held >= 0.9 * limit:
            log.warning(
                "this writer holds about %d of the %d files it may open (ulimit -n): clients beyond cannot connect", held, limit
            )
            self._files_logged = now

    def _freeze_long_lived(self) -> None:
        """The garbage collector of the writer's own process: at start and after each heartbeat with writes
        since, collect the young generations (cheap: what came since) and freeze what survives
        (``gc.freeze``: the collector never walks it again; reference counting still frees a record that is
        deleted). A stored record lives until it is replaced or deleted and forms no reference cycle, nor
        does anything else the writer keeps (``test_the_writer_core_leaves_no_cyclic_garbage``), yet every
        full collection walked every record: about 4 us of the writer's CPU per batched write at 100k
        records (bench batch). A Writer run inside another process leaves that process's collector alone."""
        gc.collect(1)
        gc.freeze()
        self._frozen_at = self.core.seq
        # counted here, not by gc.get_freeze_count(), which walks every frozen object (30 ms at 2M records)
        self.core.info["gc_freezes"] = self.core.info.get("gc_freezes", 0) + 1

    def stop(self) -> None:
        self._running = False

    def close(self, linger: float = 0) -> None:
        """Close the data directory and the sockets (``linger``: seconds the answers queued may still take
        to leave; 0: dropped)."""
        if self.owner is not None:
            self.owner.close()
        if self.data is not None:
            self.data.close()
            self.data = None
            self.core.disk = None
        for path, inode in getattr(self, "_ipc_files", ()):  # before closing: no later writer's file is removed
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)  # (libzmq leaves it: clients connecting after the stop find nothing there)
        self.router.close(linger=int(linger * 1000))
        self.pub.close(linger=0)
        self._ctx.term()

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self._running = False
        if self._receiving:  # pyzmq runs this handler inside the interrupted receive: leave it
            raise _Interrupted

    def _send_outbox(self) -> None:
        outbox = self.core.take_outbox()
        pub, outgoing, now = self.pub, self.outgoing, monotonic()
        for topic, message in outbox.published:  # published first: an answer promises its change is on its way
            pub.send(topic + message)
        for frames in outbox.replies:
            outgoing.answer(frames, now)
        if outbox.snapshots:
            core = self.core
            for envelope, req_id in outbox.snapshots:  # the store now, at the seq just published
                log.debug("sending a snapshot of %d records at seq %d to a joining client", len(core.store), core.seq)
                outgoing.snapshot(envelope, req_id, core.store, core.epoch, core.seq, now)

    def _reach(self, frames: list[bytes]) -> bool:
        """``WriterCore.reach``: send ``frames`` (an envelope, then a message the peer ignores) at once;
        False if the peer is not connected (ROUTER_MANDATORY's EHOSTUNREACH). A full queue is a peer
        that is there."""
        try:
            self._send(frames[:-1], frames[-1])
        except PeerGone:
            return False
        return True

    def _send(self, envelope: list[bytes], message: bytes) -> bool:
        """One message to a peer, never blocking: False if its queue is full (only the first frame can
        find it full: the ROUTER takes the rest of a message it has begun); ``PeerGone`` if it left."""
        router = self.router
        sent = 0  # frames of this message the ROUTER took
        try:
            for frame in envelope:
                router.send(frame, _MORE | _NOW)
                sent += 1
            router.send(message, _NOW)
        except zmq.Again:
            if sent:  # (a later frame refused: only out of memory) end the begun message, lest the next
                self._end_message()  # one's frames join it and reach its peer as one garbled message
            return False
        except zmq.ZMQError as e:  # EHOSTUNREACH: the client left (ENOMEM: the writer near its memory limit)
            if sent:
                self._end_message()
            raise PeerGone(str(e)) from None
        return True

    def _end_message(self) -> None:
        """End a message whose last frames could not be sent, best effort, with the answer to request 0 that
        every client's reader ignores (what ``WriterCore.reach`` sends): an empty frame raised
        ProtocolError in the call, or the snapshot load, that read it."""
        with contextlib.suppress(zmq.ZMQError):
            self.router.send(p.ok_bytes(0, self.core.epoch, self.core.seq, None, None), _NOW)


OPEN_FILES_WANTED = 65536  # the soft limit on open files a writer of its own raises itself to, if allowed


def _raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files towards its hard limit (each client holds three
    connections, the writer about 20 descriptors of its own: ``ulimit -n`` 1024 caps a writer near 330
    clients); warn when it stays low. Returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    if soft < 1024:
        log.warning("this writer may open only %d files (ulimit -n): about %d clients can connect", soft, max(0, soft - 20) // 3)
    return soft


def serve_forever(
    url: str,
    *,
    heartbeat: float = HEARTBEAT,
    owner_pid: int | None = None,
    watch_stdin: bool = False,
    pub_hwm: int = PUB_HWM,
    log_level: str = "INFO",
    data: str | None = None,
    fsync: str = "everysec",
    curve_secret: str | None = None,
    compact_bytes: int = COMPACT_BYTES,
    made_dir: str | None = None,
    failure_on_stdout: bool = False,
    lease_grace: float = LEASE_GRACE,
) -> int:
    """Run a writer in this process (``tiger serve``). Prints the URL, then serves; returns an exit code.

    ``failure_on_stdout``: a failure to start is said on stdout too (``NOT_STARTED`` and the line it prints
    to stderr), where the process that started it (``tiger.serve()``) reads, and puts it in its exception.

    ``made_dir``: the directory ``tiger.serve()`` made for this writer's ipc socket: removed, if empty, when the
    writer stops because its owner is gone (killed: nobody else will); a writer stopped otherwise leaves it to
    its owner (which may start another writer on the same url)."""
    logging.basicConfig(level=log_level, format=f"tiger[{os.getpid()}] %(levelname)s %(message)s", stream=sys.stderr)
    _raise_open_file_limit()

    def refuse(line: str, code: int) -> int:
        p.say(line, sys.stderr)
        if failure_on_stdout:
            p.say(NOT_STARTED + line, flush=True)
        return code

    try:
        secret = None if curve_secret is None else read_secret_key(curve_secret)
    except FileNotFoundError as e:  # (the path not shown if it may be a key given in its place)
        hidden = missing_secret_file(curve_secret or "", "--curve-secret")
        return refuse(f"tiger: cannot read {hidden}" if hidden else f"tiger: cannot read --curve-secret {curve_secret}: {e}", 2)
    except (OSError, ValueError) as e:  # (not the data directory's: it was said to be, naming the wrong option)
        return refuse(f"tiger: cannot read --curve-secret {curve_secret}: {e}", 2)
    try:
        writer = Writer(
            url,
            heartbeat=heartbeat,
            owner_pid=owner_pid,
            pub_hwm=pub_hwm,
            data=data,
            fsync=fsync,
            curve_secret=secret,
            compact_bytes=compact_bytes,
            freeze_long_lived=True,
            lease_grace=lease_grace,
        )
    except zmq.ZMQError as e:
        return refuse(f"tiger: cannot bind {url}: {e}", 2)
    except (Corrupt, Locked, OSError) as e:
        return refuse(f"tiger: cannot use the data directory (--data): {e}", 3)
    except ValueError as e:
        return refuse(f"tiger: {e}", 2)
    try:
        p.say(f"tiger writer serving at {writer.url}", flush=True)
    except BaseException:  # (its output closed, ``tiger serve | true``: it ended, and left its ipc socket files;
        try:  # tiger.serve()'s directory too, when the process that made it is gone: nobody else removes it)
            writer.close()
            if made_dir is not None:
                os.rmdir(made_dir)
        except OSError:  # (what the print raised is what is said)
            pass
        raise
    log.info("epoch %s, publishing at %s", writer.epoch, writer.pub_url)
    try:
        writer.run(watch_fd=sys.stdin.fileno() if watch_stdin else None)
    finally:
        if made_dir is not None and writer.orphaned:
            with contextlib.suppress(OSError):  # (not empty, or removed by the owner already: left as it is)
                os.rmdir(made_dir)
    log.info("stopped at seq %d", writer.seq)
    return 0
