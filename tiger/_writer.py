"""The writer process: owns the authoritative Store, applies commands one at a time.

Loop: receive a command on the ROUTER, turn it into a change with the table
rules, apply it, publish it (PUB) and only then reply, so a client that gets
the reply can count on the change being on its way to every replica. The
change is published under the caller's topic, which the caller's own replica
does not subscribe to: the caller applies its change from the reply.
Heartbeats on the PUB tell replicas the writer is alive and how far it is.

The writer never dies of what a client sends: every request is decoded and
checked before anything changes, and a refused one gets an error reply and one
log line.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from tiger import _protocol as p
from tiger import _table
from tiger._errors import AlreadyExists, NotFound, ProtocolError
from tiger._log import COMPACT_BYTES, Corrupt, DataDir, Locked
from tiger._process import ProcessWatch

log = logging.getLogger("tiger.writer")

HEARTBEAT = 0.5  # seconds between published heartbeats
SNAPSHOT_CHUNK = 2000  # records per snapshot message
PUB_HWM = 200_000  # published messages queued per subscriber before PUB drops (replicas resync)
MAX_ENVELOPE = 100  # frames before the payload (ROUTER identity, REQ delimiter, a peer's extras)
MAX_ENVELOPE_BYTES = 1024 * 1024  # their total size: the answer echoes them, so they are capped
ANSWERS_KEPT = 32  # answers kept per client, to answer a resent call without applying it twice
ANSWERS_FORGOTTEN = 60.0  # seconds of silence after which a client's kept answers are dropped
MAX_ERROR = 500  # characters of an error message the writer logs and sends back
CLIENT_SILENCE = 3.0  # seconds: a client not heard from for this long is gone (its once claims are released)
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
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable) and not os.read(fd, 4096)


class _Interrupted(Exception):
    """Raised by the signal handler out of the blocking receive (only there: nothing is half done)."""


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


LOOPBACK_HOSTS = ("localhost", "::1", "[::1]")


def is_loopback(url: str) -> bool:
    """Whether a tcp URL binds only this machine's loopback (wildcards are not loopback)."""
    host = url[len("tcp://") :].rsplit(":", 1)[0]
    return host in LOOPBACK_HOSTS or (host.startswith("127.") and host.replace(".", "").isdigit() and host.count(".") == 3)


def read_secret_key(path: str) -> bytes:
    """The z85 secret key from a file ``tiger keygen`` wrote."""
    with open(path, encoding="ascii") as f:
        for line in f:
            if line.startswith("secret:"):
                key = line.split(":", 1)[1].strip().encode()
                if len(key) == 40:
                    return key
    raise ValueError(f"{path} holds no 'secret: <40 z85 characters>' line (make one with tiger keygen)")


def publish_endpoint(url: str) -> str:
    """Where the writer binds its PUB socket, given its command URL."""
    if url.startswith("ipc://"):
        return url + ".pub"
    if url.startswith("tcp://"):
        host = url[len("tcp://") :].rsplit(":", 1)[0]
        return f"tcp://{host}:*"
    raise ValueError(f"url must start with tcp:// or ipc://, got {url!r}")


class Writer:
    """The writer's sockets and state. ``run()`` serves until stopped."""

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
    ) -> None:
        if url.startswith("tcp://") and not is_loopback(url) and curve_secret is None:
            raise ValueError(
                f"refusing to bind {url} without CurveZMQ: other machines could read and change the store; "
                "bind 127.0.0.1, or pass --curve-secret FILE (tiger keygen makes one)"
            )
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self.store = _table.Store()
        self.heartbeat = heartbeat
        self.owner = None if owner_pid is None else ProcessWatch(owner_pid)
        self.started = time.time()
        self.clients: dict[str, float] = {}  # client id -> monotonic time last heard
        self._answered: dict[str, dict[int, bytes]] = {}  # client id -> req id -> the answer sent
        self._answers_heard: dict[str, float] = {}  # forgotten client id -> when; its answers go later
        self._running = True
        self._receiving = False  # in the blocking receive: a stop signal may interrupt it at once
        self._tokens = _Tokens()
        self.data: DataDir | None = None
        self.disk_fault: str | None = None  # why the data directory cannot take writes now (None: it can)
        self._disk_retry_at = 0.0
        self._disk_retry_every = 0.5
        if data is not None:  # before any socket: a directory that cannot be used stops the start
            self.data = DataDir(data, fsync, compact_bytes)
            try:
                content, changes = self.data.load(p.unpack)
                self.store.load(content)
                for payload in changes:
                    self.store.apply(p.change_from_wire(p.unpack(payload)))
            except BaseException:
                self.data.close()
                raise
            log.info("loaded %d records from %s (%d logged changes)", len(self.store), self.data.path, len(changes))
            # builders of once keys get a heartbeat's grace to find the restarted writer before others take over
            for rows in self.store.tables.get(_table.ONCE_TABLE, {}).values():
                for record in rows.values():
                    if record["state"] == "building":
                        self.clients[record["owner"]] = time.monotonic()
        self._ctx = zmq.Context()
        self.router = self._ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # raise, not drop, when a peer is gone
        self.router.setsockopt(zmq.SNDHWM, 0)  # a snapshot is many messages: never drop one
        self.router.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE)
        self.pub = self._ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, pub_hwm)
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
            self.router.bind(url)
            self.pub.bind(publish_endpoint(url))
        except BaseException:
            self.close()
            raise
        self.url = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_url = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self._handlers: dict[type, Callable[[Any], tuple[_table.Change | None, Any]]] = {
            p.Insert: self._insert,
            p.Update: self._update,
            p.Remove: self._remove,
            p.ClearTable: self._clear,
            p.Drop: self._drop,
            p.OnceClaim: self._once_claim,
            p.OnceFinish: self._once_finish,
        }

    # -- the loop ----------------------------------------------------------------

    def run(self, watch_fd: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT, ``stop()``, the owner process dying, or EOF on ``watch_fd``.

        A blocking receive with a timeout, not poll + receive: on this path every system call and
        wake-up counts (a poll loop cost a ROUTER echo about 20 us more per round trip here). The
        timeout (at most 0.1 s) bounds how late a heartbeat, a signal or the owner's end is noticed.
        (pyzmq restarts a receive interrupted by a signal with its whole timeout: safe here, where the
        only handled signals stop the loop, and no other signal wakes the process without ending it.
        Clients, which live in processes with signal handlers of their own, poll instead.)
        """
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        router = self.router
        router.setsockopt(zmq.RCVTIMEO, max(1, int(min(self.heartbeat, 0.1) * 1000)))
        next_beat = awake = time.monotonic()
        try:
            while self._running:
                now = time.monotonic()
                if now - awake > PAUSED:  # this process was not running (SIGSTOP, a debugger): nor listening
                    self._resumed(now - awake)
                awake = now
                if now >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + self.heartbeat
                    if watch_fd is not None and _closed(watch_fd):
                        log.info("the process that started this writer is gone; stopping")
                        break
                try:
                    self._receiving = True
                    if not self._running:  # a signal that came before the line above: seen here
                        break
                    frames = p.receive(router)
                except zmq.Again:  # quiet for the timeout
                    continue
                finally:
                    self._receiving = False
                self.handle(frames)
        except _Interrupted:  # SIGTERM/SIGINT while waiting for a request: stop now, not at the timeout
            pass
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            self.close()

    def stop(self) -> None:
        self._running = False

    def _resumed(self, paused: float) -> None:
        """The writer was paused for ``paused`` seconds: its clients' silence is judged only over time it
        listened, so none is taken for gone (nor its once keys released) for the writer's own pause."""
        log.info("resumed after %.1fs without running", paused)
        for client_id in self.clients:
            self.clients[client_id] += paused
        for client_id in self._answers_heard:
            self._answers_heard[client_id] += paused

    def close(self) -> None:
        if self.owner is not None:
            self.owner.close()
        if self.data is not None:
            self.data.close()
            self.data = None
        self.router.close(linger=0)
        self.pub.close(linger=0)
        self._ctx.term()

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        self._running = False
        if self._receiving:  # pyzmq runs this handler inside the interrupted receive: leave it
            raise _Interrupted

    def _publish(self, topic: bytes, message: bytes) -> None:
        """One published message: its topic frame (who may skip it), then the message."""
        p.send(self.pub, [topic, message])

    def _heartbeat(self, topic: bytes = p.EVERYONE) -> None:
        self._publish(topic, p.encode_published(p.Heartbeat(self.epoch, self.seq)))

    def _beat(self) -> None:
        self._heartbeat()
        if self.data is not None:
            if self.disk_fault is not None:
                if time.monotonic() >= self._disk_retry_at:
                    self._recover()
            else:
                try:
                    self.data.tick()
                    if self.data.needs_compaction():
                        self.compact()
                except OSError as e:  # the everysec fsync
                    self._fault(str(e))
                except DiskFault:  # the compaction (already a fault)
                    pass
        if self.owner is not None and self.owner.ended():
            log.info("owner process %d is gone; stopping", self.owner.pid)
            self._running = False
        silent = time.monotonic() - max(CLIENT_SILENCE, 6 * self.heartbeat)
        for client_id in [c for c, seen in self.clients.items() if seen < silent]:
            self._forget(client_id)
        stale = time.monotonic() - ANSWERS_FORGOTTEN
        for client_id in [c for c, seen in self._answers_heard.items() if seen < stale]:
            del self._answers_heard[client_id]
            self._answered.pop(client_id, None)

    # -- one request ---------------------------------------------------------------

    def handle(self, frames: list[bytes]) -> None:
        """Answer one request (``frames``: the ROUTER's envelope, then one payload frame)."""
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
            obj = p.unpack_frozen(data)  # records arrive in their stored form: no copy to freeze them
            req_id = p.request_id_of(obj)
            request = p.call_from(obj)
            if type(request) is p.Call:
                call = request
                first = self._answered.get(call.client_id, {}).get(request.request.req_id)  # type: ignore[union-attr]
                if first is not None:  # a resent call: its first answer, not a second application
                    self._send(envelope, first)
                    return
                self._heard(call.client_id)
                topic = p.topic_of(call.client_id)  # its reply carries the change: its replica is not sent it
                if time.time() > call.expires:
                    raise Expired(f"the call arrived after its deadline ({time.time() - call.expires:.3f}s late); not applied")
                request = call.request
            reply = self._dispatch(envelope, request, topic)  # type: ignore[arg-type]
        except Exception as e:  # the writer never dies of what a client sends
            kind = next((k for cls, k in _ERROR_KINDS if isinstance(e, cls)), "internal")
            message = str(e)
            if len(message) > MAX_ERROR:  # a huge bad argument must not make a huge log line and reply
                message = f"{message[:MAX_ERROR]}... ({len(message)} characters)"
            if kind == "internal":
                log.exception("internal error on a request")
            elif kind in ("not_found", "already_exists", "expired", "disk"):  # answers (a disk fault: logged once)
                log.debug("answered a request with %s: %s", kind, message)
            else:
                log.warning("refused a request (%s): %s", kind, message)
            reply = p.encode_reply(p.Failed(req_id, kind, message))
        if reply is None:
            return
        if call is not None and req_id is not None and type(call.request) is not p.Sync:  # a sync may just run again
            answered = self._answered.setdefault(call.client_id, {})
            answered[req_id] = reply
            if len(answered) > ANSWERS_KEPT:
                del answered[next(iter(answered))]
        self._send(envelope, reply)

    def _dispatch(self, envelope: list[bytes], request: p.Request, topic: bytes) -> bytes | None:
        """Carry out one request; returns its reply (None: no reply, or already sent)."""
        t = type(request)
        handler = self._handlers.get(t)
        if handler is not None:
            change, result = handler(request)
            packed = None if change is None else self._commit(change, topic)
            return p.ok_bytes(request.req_id, self.epoch, self.seq, packed, result)  # type: ignore[union-attr]
        if t is p.Beat:
            self._heard(request.client_id)  # type: ignore[union-attr]
            return None
        if t is p.Sync:
            # with the caller's topic: a joining replica gets it only once its catch-all subscription is live
            self._heartbeat(topic)
            return p.ok_bytes(request.req_id, self.epoch, self.seq, None)  # type: ignore[union-attr]
        if t is p.SnapshotRequest:
            self._snapshot(envelope, request.req_id)  # type: ignore[union-attr]
            return None
        if t is p.Hello:
            self._heard(request.client_id)  # type: ignore[union-attr]
            result = {"pub": self.pub_url, "heartbeat": self.heartbeat, "pid": os.getpid(), "time": time.time()}
            return p.ok_bytes(request.req_id, self.epoch, self.seq, None, result)  # type: ignore[union-attr]
        if t is p.Bye:
            self._forget(request.client_id)  # type: ignore[union-attr]
            return None
        if t is p.Compact:
            return p.ok_bytes(request.req_id, self.epoch, self.seq, None, self.compact())  # type: ignore[union-attr]
        if t is p.Stats:
            return p.ok_bytes(request.req_id, self.epoch, self.seq, None, self.stats())  # type: ignore[union-attr]
        raise ProtocolError(f"no handler for {t.__name__}")  # pragma: no cover - call_from returns only the above

    def _commit(self, change: _table.Change, topic: bytes = p.EVERYONE) -> bytes:
        """Apply a change, number it and publish it; returns it packed (for the reply).

        ``DiskFault`` while the data directory cannot take it: nothing changes."""
        packed = p.pack_change(change)  # before applying: a change that cannot be sent changes nothing
        if type(change) is _table.Put:
            p.check_record_sizes(change.records, len(packed))
        if self.data is not None:
            if self.disk_fault is None:
                try:
                    self.data.append(packed)  # logged before it is applied, published and answered
                except OSError as e:
                    self._fault(str(e))
            if self.disk_fault is not None:
                raise DiskFault(
                    f"the writer cannot keep writes now ({self.disk_fault}); nothing was applied; "
                    "reads go on, and writes are taken again once the data directory works"
                )
        self.store.apply(change)
        self.seq += 1
        self._publish(topic, p.published_bytes(self.epoch, self.seq, packed))  # the caller's replica is not sent it
        return packed

    def _heard(self, client_id: str) -> None:
        """A client spoke: it is live, and the answers kept for it stay (a client once taken for gone,
        back now, keeps them as any live client does)."""
        self.clients[client_id] = time.monotonic()
        if client_id in self._answers_heard:
            del self._answers_heard[client_id]

    def _forget(self, client_id: str) -> None:
        """A client left (goodbye or silence): release the once keys it was building and held. While the
        data directory cannot take those changes, the client is kept (as silent) to be forgotten later."""
        seen = self.clients.pop(client_id, None)
        self._answers_heard[client_id] = time.monotonic()
        try:
            for namespace, key in _table.claims_of(self.store, client_id):
                change = _table.prepare_once_release(self.store, key, client_id, namespace)
                if change is not None:
                    self._commit(change)
                    log.info("released once key %r (namespace %r): its builder %s is gone", key, namespace, client_id)
            for held in _table.prepare_once_leave(self.store, client_id):
                self._commit(held)
        except DiskFault:
            self.clients[client_id] = seen if seen is not None else time.monotonic() - CLIENT_SILENCE

    def _fault(self, why: str) -> None:
        """The data directory failed (full, read-only, an I/O error): refuse writes until it works again."""
        if self.disk_fault is None:
            assert self.data is not None
            log.error("cannot write to %s (%s): writes are refused until it can again; reads go on", self.data.path, why)
            self._disk_retry_every = 0.5
        self.disk_fault = why
        self._disk_retry_at = time.monotonic() + self._disk_retry_every

    def _recover(self) -> None:
        """Try the data directory again: a compaction writes everything the writer holds (so nothing
        acknowledged depends on what failed) and starts a fresh log. Tried again later, less often."""
        try:
            self.compact()
        except DiskFault:
            self._disk_retry_every = min(10.0, self._disk_retry_every * 2)
            self._disk_retry_at = time.monotonic() + self._disk_retry_every
            return
        assert self.data is not None
        log.warning("%s works again: every record is in a new snapshot; writes are taken again", self.data.path)
        self.disk_fault = None

    def _send(self, envelope: list[bytes], payload: bytes) -> None:
        try:
            p.send(self.router, [*envelope, payload])
        except zmq.ZMQError as e:  # EHOSTUNREACH: the client left before its answer
            log.warning("could not answer a client: %s", e)

    def _snapshot(self, envelope: list[bytes], req_id: int) -> None:
        count = 0
        try:
            for chunk in self.store.snapshot(SNAPSHOT_CHUNK):
                p.send(self.router, [*envelope, p.encode_reply(p.SnapshotChunk(req_id, chunk))])
                count += sum(len(records) for _, _, records in chunk)
            p.send(self.router, [*envelope, p.encode_reply(p.SnapshotEnd(req_id, self.epoch, self.seq, count))])
        except zmq.ZMQError as e:
            log.warning("snapshot abandoned, its client left: %s", e)

    def compact(self) -> dict[str, Any]:
        """Write a snapshot of the whole store and start a fresh log."""
        if self.data is None:
            raise ValueError("this writer keeps no data: start it with --data DIR")
        started = time.monotonic()
        try:
            size = self.data.compact(p.pack, self.store.content())
        except OSError as e:
            self._fault(f"compacting: {e}")
            raise DiskFault(f"the compaction failed ({e}); the snapshot and log before it stand") from e
        log.info("compacted %s: snapshot of %d records, %d bytes", self.data.path, len(self.store), size)
        return {"records": len(self.store), "bytes": size, "seconds": time.monotonic() - started}

    def stats(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "pid": os.getpid(),
            "epoch": self.epoch,
            "seq": self.seq,
            "uptime": time.time() - self.started,
            "clients": len(self.clients),
            "records": len(self.store),
            "tables": self.store.counts(),
            "checksum": p.checksum(self.store),
            "data": None
            if self.data is None
            else {"path": self.data.path, "fsync": self.data.fsync, "log_bytes": self.data.size, "fault": self.disk_fault},
        }

    # -- writes: command -> change ------------------------------------------------------

    def _insert(self, r: p.Insert) -> tuple[_table.Change | None, Any]:
        now = int(time.time())
        change = _table.prepare_insert(
            self.store, r.table, r.namespace, r.prefix, r.records, create=r.create, now=now, token=self._tokens
        )
        return change, None

    def _update(self, r: p.Update) -> tuple[_table.Change | None, Any]:
        return _table.prepare_update(self.store, r.table, r.namespace, r.id, r.changes), None

    def _remove(self, r: p.Remove) -> tuple[_table.Change | None, Any]:
        return _table.prepare_delete(self.store, r.table, r.namespace, r.id), None

    def _clear(self, r: p.ClearTable) -> tuple[_table.Change | None, Any]:
        if r.namespace is None:
            return _table.prepare_clear(self.store, r.table), None
        return _table.prepare_clear_namespace(self.store, r.table, r.namespace), None

    def _drop(self, r: p.Drop) -> tuple[_table.Change | None, Any]:
        return _table.prepare_drop_namespace(self.store, r.namespace), None

    def _once_claim(self, r: p.OnceClaim) -> tuple[_table.Change | None, Any]:
        self._heard(r.client_id)
        verdict, change = _table.prepare_once_claim(
            self.store, r.key, r.client_id, r.by, self.clients, now=int(time.time()), namespace=r.namespace
        )
        return change, verdict

    def _once_finish(self, r: p.OnceFinish) -> tuple[_table.Change | None, Any]:
        self._heard(r.client_id)
        if r.outcome == "release":
            return _table.prepare_once_release(self.store, r.key, r.client_id, r.namespace), "released"
        if r.outcome == "retire":
            return _table.prepare_once_retire(self.store, r.key, r.client_id, r.namespace), "retired"
        value, error = (None, r.payload) if r.outcome == "error" else (r.payload, None)
        verdict, change = _table.prepare_once_finish(
            self.store, r.key, r.client_id, value, error, r.namespace, teardown=r.outcome == "resource"
        )
        return change, verdict


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
) -> int:
    """Run a writer in this process (``tiger serve``). Prints the URL, then serves; returns an exit code."""
    logging.basicConfig(level=log_level, format=f"tiger[{os.getpid()}] %(levelname)s %(message)s", stream=sys.stderr)
    try:
        secret = None if curve_secret is None else read_secret_key(curve_secret)
        writer = Writer(
            url,
            heartbeat=heartbeat,
            owner_pid=owner_pid,
            pub_hwm=pub_hwm,
            data=data,
            fsync=fsync,
            curve_secret=secret,
            compact_bytes=compact_bytes,
        )
    except zmq.ZMQError as e:
        print(f"tiger: cannot bind {url}: {e}", file=sys.stderr)
        return 2
    except (Corrupt, Locked, OSError) as e:
        print(f"tiger: cannot use the data directory: {e}", file=sys.stderr)
        return 3
    except ValueError as e:
        print(f"tiger: {e}", file=sys.stderr)
        return 2
    print(f"tiger writer serving at {writer.url}", flush=True)
    log.info("epoch %s, publishing at %s", writer.epoch, writer.pub_url)
    writer.run(watch_fd=sys.stdin.fileno() if watch_stdin else None)
    log.info("stopped at seq %d", writer.seq)
    return 0
