"""A client process's local replica: a Store fed by the writer's PUB socket.

A background thread owns the SUB socket (and a DEALER of its own for
snapshots and heartbeats). It applies each published change in seq order; on
a gap, a heartbeat ahead of it, or a new epoch it resynchronises from a fresh
snapshot. Readers in other threads read ``store`` directly without a lock (see
the table rules' Rule 4). A writing thread whose reply carries the change it
made applies that change itself when the replica is exactly one behind
(``catch_up``), so read-your-writes rarely waits on this thread.

Joining: subscribe, ask the writer to publish a heartbeat until one arrives
(the subscription is then live, so nothing published after the snapshot can
be missed), then fetch the snapshot in chunks and apply what the SUB queued
with a seq above the snapshot's.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from tiger import _protocol as p
from tiger._errors import ProtocolError, Timeout, Unavailable
from tiger._table import Change, Put, Store, freeze

log = logging.getLogger("tiger.replica")

SUB_HWM = 200_000


class _Resync(Exception):
    """The replica has lost track of the writer's changes and must reload."""


class Replica:
    """A Store kept equal to the writer's by a background thread."""

    def __init__(
        self, ctx: zmq.Context[Any], url: str, pub_url: str, client_id: str, *, heartbeat: float, timeout: float
    ) -> None:
        self.store = Store()
        self.epoch: str | None = None
        self.seq = -1
        self.changed = threading.Condition(threading.Lock())  # guards applying; notified after each
        self.ready = threading.Event()
        self.failure: BaseException | None = None
        self.resyncs = 0
        self._ctx = ctx
        self._url = url
        self._pub_url = pub_url
        self._client_id = client_id
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._req_ids = itertools.count(1)
        self._stop_url = f"inproc://tiger-replica-stop-{id(self)}"
        self._stop_rx = ctx.socket(zmq.PAIR)
        self._stop_rx.bind(self._stop_url)
        self._thread = threading.Thread(target=self._run, name="tiger-replica", daemon=True)

    # -- called from user threads -----------------------------------------------------

    def start(self, timeout: float) -> None:
        """Start the thread; return once the replica holds a full snapshot."""
        self._thread.start()
        if not self.ready.wait(timeout):
            self.stop()
            raise Unavailable(f"no snapshot from the tiger writer at {self._url} within {timeout}s")
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        if self._thread.is_alive():
            tx = self._ctx.socket(zmq.PAIR)
            tx.connect(self._stop_url)
            tx.send(b"stop")
            self._thread.join(5.0)
            tx.close(linger=0)
        self._stop_rx.close(linger=0)

    def catch_up(self, epoch: str, seq: int, change: Change | None, deadline: float) -> None:
        """Return once the replica has applied (epoch, seq); apply ``change`` here if it is the next one."""
        with self.changed:
            if self.epoch == epoch:
                if self.seq >= seq:
                    return
                if change is not None and self.seq == seq - 1:
                    self.store.apply(change)
                    self.seq = seq
                    self.changed.notify_all()
                    return
        self.wait_until(
            lambda: self.epoch == epoch and self.seq >= seq, deadline, lambda: f"the local replica did not reach seq {seq}"
        )

    def wait_until(self, predicate: Callable[[], bool], deadline: float, what: Callable[[], str]) -> None:
        with self.changed:
            while not predicate():
                if self.failure is not None:
                    raise Unavailable(f"the replica of {self._url} stopped: {self.failure}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Timeout(what())
                self.changed.wait(min(remaining, 0.5))

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, SUB_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self._pub_url)
        dealer = self._dealer()
        try:
            queued = self._resync(sub, dealer)
            self.ready.set()
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            poller.register(self._stop_rx, zmq.POLLIN)
            poller.register(dealer, zmq.POLLIN)
            next_beat = time.monotonic() + self._heartbeat
            while True:
                try:
                    for data in queued:
                        self._receive(data)
                    queued = []
                    events = dict(poller.poll(int(self._heartbeat * 1000)))
                    if self._stop_rx in events:
                        break
                    if dealer in events:
                        dealer.recv()  # a late answer to an earlier sync; nothing to do
                    if sub in events:
                        for _ in range(10_000):
                            try:
                                self._receive(sub.recv(zmq.NOBLOCK))
                            except zmq.Again:
                                break
                    if time.monotonic() >= next_beat:
                        dealer.send(p.encode_request(p.Beat(self._client_id)))
                        next_beat = time.monotonic() + self._heartbeat
                except _Resync as why:
                    log.info("replica resynchronising: %s", why)
                    self.resyncs += 1
                    queued = self._resync(sub, dealer)
        except BaseException as e:
            self.failure = e
            log.debug("replica thread stopped: %r", e)
            with self.changed:
                self.changed.notify_all()
            self.ready.set()
        finally:
            sub.close(linger=0)
            dealer.close(linger=0)

    def _dealer(self) -> zmq.Socket[Any]:
        dealer: zmq.Socket[Any] = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RCVHWM, 0)  # a snapshot is many messages: never drop one
        dealer.connect(self._url)
        return dealer

    def _receive(self, data: bytes) -> None:
        try:
            m = p.decode_published(data)
        except ProtocolError as e:
            raise _Resync(f"undecodable published message: {e}") from None
        with self.changed:
            if m.epoch != self.epoch:
                raise _Resync(f"the writer's epoch changed from {self.epoch} to {m.epoch}")
            if type(m) is p.Heartbeat:
                if m.seq > self.seq:
                    raise _Resync(f"heartbeat at seq {m.seq}, replica at {self.seq}")
                return
            if m.seq <= self.seq:
                return  # already applied: by a writing thread's catch_up or by the snapshot
            if m.seq != self.seq + 1:
                raise _Resync(f"gap: got seq {m.seq} after {self.seq}")
            self.store.apply(m.change)  # type: ignore[union-attr]
            self.seq = m.seq
            self.changed.notify_all()

    def _resync(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> list[bytes]:
        """Load a fresh snapshot; return the published messages received meanwhile, to apply next."""
        queued = self._confirm_subscription(sub, dealer)
        req_id = next(self._req_ids)
        dealer.send(p.encode_request(p.SnapshotRequest(req_id)))
        content: dict[str, dict[str, list[Any]]] = {}
        while True:
            if not dealer.poll(int(self._timeout * 1000)):
                raise Unavailable(f"the tiger writer at {self._url} stopped sending its snapshot")
            reply = p.decode_reply(dealer.recv())
            if reply.req_id != req_id:
                continue
            if type(reply) is p.SnapshotChunk:
                for table, ns, records in reply.segments:
                    content.setdefault(table, {}).setdefault(ns, []).extend(records)
            elif type(reply) is p.SnapshotEnd:
                break
            else:
                raise Unavailable(f"the tiger writer at {self._url} refused a snapshot: {reply}")
        with self.changed:
            self.store.load(content)
            self.epoch = reply.epoch
            self.seq = reply.seq
            self.changed.notify_all()
        return queued

    def _confirm_subscription(self, sub: zmq.Socket[Any], dealer: zmq.Socket[Any]) -> list[bytes]:
        """Ask for heartbeats until one arrives on the SUB: from then on nothing published is missed."""
        deadline = time.monotonic() + self._timeout
        wait = 0.01
        while True:
            dealer.send(p.encode_request(p.Sync(next(self._req_ids))))
            if sub.poll(int(wait * 1000)):
                queued = [sub.recv()]
                while True:
                    try:
                        queued.append(sub.recv(zmq.NOBLOCK))
                    except zmq.Again:
                        return queued
            if time.monotonic() >= deadline:
                raise Unavailable(f"no published message from the tiger writer at {self._url} within {self._timeout}s")
            wait = min(wait * 2, 0.2)


def frozen_change(change: Change) -> Change:
    """The change with its records frozen, so what a write returns is what the replica holds."""
    if type(change) is Put:
        return Put(change.table, change.namespace, tuple(freeze(r) for r in change.records))
    return change
