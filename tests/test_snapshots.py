"""Snapshots that do not stop the world (issue 12): tiger._snapshots, then a real writer.

First ``Outgoing`` and ``View`` in memory: a fake ROUTER (``Pipes``: per peer, a queue of
``PEER_HWM`` messages that the test empties as the peer would read) and a fake clock. Then real
writer processes: a joiner that asks and never reads costs the writer its bound and is dropped
after the stall timeout; writes keep flowing while joiners join a large store; answers to a peer
being sent a snapshot all arrive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from _util import read_line

import tiger
import tiger.aio
from tiger import _protocol as p
from tiger import _replica, _snapshots
from tiger._snapshots import PEER_HWM, Outgoing, PeerGone, Runs, View
from tiger._table import Put, Store

EPOCH = "e" * 16
T0 = 1000.0


def store_of(tables: dict[str, dict[str, int]], size: int = 40) -> Store:
    """A store with the given number of records of about ``size`` bytes in each (table, namespace)."""
    store = Store()
    for table, namespaces in tables.items():
        for ns, count in namespaces.items():
            records = [{"id": f"{ns}-{i}", "created": i, "pad": "x" * size} for i in range(count)]
            for start in range(0, count, 1000):
                store.apply(Put(table, ns, records[start : start + 1000]))
    return store


class Pipes:
    """The ROUTER as ``Outgoing`` sees it: per peer, at most ``hwm`` messages queued; ``take`` reads them."""

    def __init__(self, hwm: int = PEER_HWM) -> None:
        self.hwm = hwm
        self.queued: dict[bytes, list[bytes]] = {}
        self.gone: set[bytes] = set()
        self.skipped = 0  # replies to another request, skipped by receive_snapshot

    def send(self, envelope: list[bytes], message: bytes) -> bool:
        peer = envelope[0]
        if peer in self.gone:
            raise PeerGone("Host unreachable")
        queue = self.queued.setdefault(peer, [])
        if len(queue) >= self.hwm:
            return False
        queue.append(message)
        return True

    def take(self, peer: bytes, n: int | None = None) -> list[p.Reply]:
        queue = self.queued.get(peer, [])
        n = len(queue) if n is None else n
        taken, self.queued[peer] = queue[:n], queue[n:]
        return [p.decode_reply(m) for m in taken]

    def queued_bytes(self, peer: bytes) -> int:
        return sum(map(len, self.queued.get(peer, [])))


def receive_snapshot(out: Outgoing, pipes: Pipes, peer: bytes, req_id: int) -> tuple[dict[Any, Any], p.SnapshotEnd]:
    """Pump and read as a joiner does until its SnapshotEnd (skipping replies to other requests, as a
    replica does); the content as (table, ns) -> [ids]."""
    content: dict[Any, Any] = {}
    for _ in range(100_000):
        out.pump(T0)
        for reply in pipes.take(peer):
            if reply.req_id != req_id:
                pipes.skipped += 1
            elif type(reply) is p.SnapshotEnd:
                return content, reply
            else:
                assert type(reply) is p.SnapshotChunk
                for table, ns, records in reply.segments:
                    content.setdefault((table, ns), []).extend(r["id"] for r in records)
    raise AssertionError("no SnapshotEnd")


def ids_of(store: Store) -> dict[Any, Any]:
    return {(t, ns): list(rows) for t, namespaces in store.tables.items() for ns, rows in namespaces.items()}


# -- in memory -----------------------------------------------------------------------


def test_chunk_bytes_is_the_encoded_snapshot_chunk():
    segments = [("t", "ns", [{"id": "a", "created": 1, "v": [1, 2]}]), ("u", "n2", [])]
    body = p.segments_bytes([p.pack(s) for s in segments])
    assert p.chunk_bytes(-7, body) == p.encode_reply(p.SnapshotChunk(-7, segments))  # type: ignore[arg-type]


def test_a_snapshot_is_the_store_at_its_seq_whatever_changes_while_it_is_sent():
    store = store_of({"a": {"n1": 3000, "n2": 5}, "b": {"n1": 1, "n3": 700}})
    expected = ids_of(store)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=8 * 1024)
    out.snapshot([b"joiner"], -3, store, EPOCH, 42, T0)
    store.apply(Put("a", "n1", [{"id": "late", "created": 1}]))  # in place, into a namespace the view holds
    store.apply(Put("c", "new", [{"id": "late", "created": 1}]))
    content, end = receive_snapshot(out, pipes, b"joiner", -3)
    assert content == expected
    assert (end.epoch, end.seq, end.records) == (EPOCH, 42, 3706)
    assert out.waiting() == (0, 0, 0)


def test_a_snapshot_the_writer_runs_out_of_memory_building_refuses_that_join_and_the_writer_goes_on(monkeypatch):
    """A user trial (the writer under ``ulimit -v``): building a chunk raised MemoryError out of the
    writer's loop, and the writer died with the whole store. Now that join is refused, saying why, and the
    other joiners are served."""
    store = store_of({"a": {"n1": 3000}})
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=8 * 1024)
    real = View.chunk
    failures = iter([True])

    def chunk(self: View, i: int) -> bytes | None:
        if i == 1 and next(failures, False):
            raise MemoryError
        return real(self, i)

    monkeypatch.setattr(View, "chunk", chunk)
    out.snapshot([b"first"], -1, store, EPOCH, 1, T0)
    out.snapshot([b"second"], -2, store, EPOCH, 1, T0)
    content, end = receive_snapshot(out, pipes, b"second", -2)
    assert content == ids_of(store) and end.records == 3000
    refused = [r for r in pipes.take(b"first") if type(r) is p.Failed]
    assert [(r.req_id, r.kind, r.message) for r in refused] == [
        (-1, "internal", "the writer could not build the snapshot (out of memory)")
    ]
    assert out.waiting() == (0, 0, 0)


def test_chunks_are_sized_by_bytes_not_records():
    store = Store()
    store.apply(Put("t", "small", [{"id": f"s{i}", "created": i} for i in range(5000)]))
    store.apply(Put("t", "big", [{"id": f"b{i}", "created": i, "pad": "x" * 20_000} for i in range(40)]))
    view = View(store, EPOCH, 1, Runs(), chunk_bytes=64 * 1024)
    sizes = []
    for i in range(10_000):
        body = view.chunk(i)
        if body is None:
            break
        sizes.append(len(body))
    assert max(sizes) <= 2 * 64 * 1024 + 20_100  # about the target; one record over at most
    assert len(sizes) >= 40 * 20_000 // (2 * 64 * 1024)


def test_a_peer_that_never_reads_holds_at_most_its_queue_and_one_chunk():
    store = store_of({"t": {"ns": 20_000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=32 * 1024)
    out.snapshot([b"sleeper"], -1, store, EPOCH, 1, T0)
    for _ in range(100):
        out.pump(T0)
    assert len(pipes.queued[b"sleeper"]) == PEER_HWM
    assert out.waiting() == (1, 1, 1)  # one chunk made and refused: it goes first once the queue takes it
    assert pipes.queued_bytes(b"sleeper") <= PEER_HWM * (2 * 32 * 1024)
    assert out.wait(T0) == _snapshots.RETRY
    assert out.wait(T0 + 1) == _snapshots.RETRY_IDLE  # nothing taken for a while: tried less often


def test_answers_wait_behind_a_full_queue_and_go_in_order():
    store = store_of({"t": {"ns": 5000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024)
    out.snapshot([b"joiner"], -1, store, EPOCH, 1, T0)
    out.pump(T0)
    assert len(pipes.queued[b"joiner"]) == PEER_HWM  # full of chunks
    for req_id in range(1, 30):
        out.answer([b"joiner", p.ok_bytes(req_id, EPOCH, 1, None)], T0)
        out.answer([b"other", p.ok_bytes(req_id, EPOCH, 1, None)], T0)  # another peer: not held up
        pipes.take(b"other")
    assert out.waiting() == (1, 1, 30)
    answers, chunks, end = [], 0, None
    while end is None:
        out.pump(T0)
        for reply in pipes.take(b"joiner", 3):  # a slow reader
            if type(reply) is p.Ok:
                answers.append(reply.req_id)
            elif type(reply) is p.SnapshotChunk:
                chunks += 1
            else:
                end = reply
    assert answers == list(range(1, 30))  # every one, in order
    assert end.records == 5000 and chunks > PEER_HWM


def test_a_turn_sends_at_most_its_budget_shared_round_robin():
    store = store_of({"t": {"ns": 20_000}}, size=200)
    pipes = Pipes(hwm=10_000)
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024, turn_bytes=64 * 1024)
    peers = [b"j%d" % i for i in range(6)]
    for i, peer in enumerate(peers):
        out.snapshot([peer], -1 - i, store, EPOCH, 1, T0)
    assert out.wait(T0) == 0
    for turn in range(1, 4):
        out.pump(T0)
        total = sum(pipes.queued_bytes(peer) for peer in peers)
        assert total <= turn * (64 * 1024 + 2 * 16 * 1024)
    counts = [len(pipes.queued.get(peer, [])) for peer in peers]
    assert max(counts) - min(counts) <= 1  # each served in turn


def read_all(out: Outgoing, pipes: Pipes, peers: dict[bytes, int]) -> dict[bytes, tuple[list[str], p.SnapshotEnd]]:
    """Pump and read every peer's snapshot to its end (the last peer reads one message a turn, the
    others all they can); each peer's record ids and SnapshotEnd."""
    ids: dict[bytes, list[str]] = {peer: [] for peer in peers}
    ends: dict[bytes, p.SnapshotEnd] = {}
    slow = list(peers)[-1]
    while len(ends) < len(peers):
        out.pump(T0)
        for peer, req_id in peers.items():
            for reply in pipes.take(peer, 1 if peer == slow else None):
                assert reply.req_id == req_id
                if type(reply) is p.SnapshotEnd:
                    ends[peer] = reply
                else:
                    ids[peer].extend(r["id"] for _, _, records in reply.segments for r in records)  # type: ignore[union-attr]
    return {peer: (ids[peer], ends[peer]) for peer in peers}


def test_joiners_at_one_seq_share_one_view_and_its_packing():
    store = store_of({"t": {"ns": 3000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024)
    alone = Outgoing(Pipes(hwm=10_000).send, chunk_bytes=16 * 1024)
    alone.snapshot([b"x"], -1, store, EPOCH, 5, T0)
    for _ in range(1000):
        alone.pump(T0)
    out.snapshot([b"a"], -1, store, EPOCH, 5, T0)
    out.snapshot([b"b"], -2, store, EPOCH, 5, T0)
    got = read_all(out, pipes, {b"a": -1, b"b": -2})
    assert got[b"a"][0] == got[b"b"][0] == ids_of(store)[("t", "ns")]
    assert got[b"a"][1].seq == got[b"b"][1].seq == 5
    assert out.runs.packed <= alone.runs.packed + 2  # packed once for both (b reads far slower than a)
    assert out._view is None and out.waiting() == (0, 0, 0)


def test_joiners_at_different_seqs_share_the_packing_of_what_did_not_change():
    store = store_of({"big": {"ns": 3000}, "small": {"a": 10}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024)
    out.snapshot([b"first"], -1, store, EPOCH, 1, T0)
    out.pump(T0)
    first = ids_of(store)
    store.apply(Put("small", "a", [{"id": "new", "created": 1}]))  # a write between the two requests
    store.apply(Put("big", "ns", [{"id": "ns-2999", "created": 2, "pad": "changed"}]))  # in place, the last record
    out.snapshot([b"second"], -1, store, EPOCH, 3, T0)
    got = read_all(out, pipes, {b"first": -1, b"second": -1})
    assert got[b"first"][0] == first[("big", "ns")] + first[("small", "a")]
    assert got[b"second"][0] == first[("big", "ns")] + [*first[("small", "a")], "new"]
    assert (got[b"first"][1].seq, got[b"second"][1].seq) == (1, 3)
    alone = Outgoing(Pipes(hwm=10_000).send, chunk_bytes=16 * 1024)
    alone.snapshot([b"x"], -1, store, EPOCH, 3, T0)
    for _ in range(1000):
        alone.pump(T0)
    assert out.runs.packed <= alone.runs.packed + 3  # the unchanged runs packed once for both


def test_a_run_kept_for_records_since_replaced_is_not_used():
    store = store_of({"t": {"ns": 50}}, size=10)
    runs = Runs()
    before = View(store, EPOCH, 1, runs)
    old = before.chunk(0)
    store.apply(Put("t", "ns", [{"id": "ns-10", "created": 10, "pad": "changed"}]))
    after = View(store, EPOCH, 2, runs)
    assert p.unpack(after.chunk(0))[0][2][10]["pad"] == "changed"  # type: ignore[arg-type]
    assert p.unpack(old)[0][2][10]["pad"] == "x" * 10  # type: ignore[arg-type]
    assert View(store, EPOCH, 2, runs).chunk(0) == after.chunk(0)


def test_a_peer_that_takes_nothing_is_dropped_after_the_stall_and_only_it():
    store = store_of({"t": {"ns": 5000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024, stall=30.0)
    out.snapshot([b"sleeper"], -1, store, EPOCH, 1, T0)
    out.snapshot([b"reader"], -1, store, EPOCH, 1, T0)
    out.pump(T0)
    out.answer([b"sleeper", p.ok_bytes(1, EPOCH, 1, None)], T0)
    now = T0
    while now < T0 + 29.5:  # the reader reads on; the sleeper takes nothing
        now += 0.5
        out.pump(now)
        pipes.take(b"reader")
    assert out.waiting()[0] == 1  # the reader is done; the sleeper still waits
    out.pump(T0 + 30.5)
    assert out.waiting() == (0, 0, 0)
    assert out._view is None  # nothing holds the view any more
    woke = pipes.take(b"sleeper")  # it wakes up: what its queue held, and no more
    assert len(woke) == PEER_HWM and all(type(r) is p.SnapshotChunk for r in woke)
    out.answer([b"sleeper", p.ok_bytes(2, EPOCH, 1, None)], T0 + 31)  # a later answer goes as any other
    assert [r.req_id for r in pipes.take(b"sleeper")] == [2]


def test_a_writer_stopped_past_the_stall_dropped_every_peers_answers_and_snapshots_as_it_resumed():
    """Regression: the writer's own pause (Ctrl-Z on a pytest run for over 30 s, SIGSTOP, a debugger) was
    counted as its peers taking nothing: as it resumed, every answer waiting for a full queue and every
    snapshot on its way was dropped (Rule 4), though no peer had been given a chance to read. The time the
    writer did not run (``resumed``) is not the peers'; a peer that then takes nothing is still dropped."""
    store = store_of({"t": {"ns": 5000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024, stall=30.0)
    out.snapshot([b"joiner"], -1, store, EPOCH, 1, T0)
    out.pump(T0)
    pipes.take(b"joiner", 1)  # it took one chunk: its queue has room for one more, and the snapshot goes on
    out.pump(T0 + 0.1)
    out.resumed(60.0)  # the writer was stopped from T0 + 0.1 to T0 + 60.1
    out.pump(T0 + 60.1)
    assert out.waiting()[1] == 1  # kept: the joiner had no chance to read
    end = None
    now = T0 + 60.1
    while end is None:
        now += 0.1
        out.pump(now)
        for reply in pipes.take(b"joiner"):
            end = reply if type(reply) is p.SnapshotEnd else None
    assert end.records == 5000
    out.snapshot([b"sleeper"], -1, store, EPOCH, 1, now)
    out.pump(now)
    out.resumed(10.0)
    out.pump(now + 40.5)  # 30.5 s of the writer running, and nothing taken: dropped as before
    assert out.waiting() == (0, 0, 0)


def test_a_slow_reader_is_not_dropped_while_it_takes_something():
    store = store_of({"t": {"ns": 5000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=4 * 1024, stall=1.0)
    out.snapshot([b"slow"], -1, store, EPOCH, 1, T0)
    now, end = T0, None
    while end is None:
        now += 0.9
        out.pump(now)
        for reply in pipes.take(b"slow", 1):
            if type(reply) is p.SnapshotEnd:
                end = reply
    assert end.records == 5000


def test_a_new_request_replaces_the_peers_snapshot_on_its_way():
    store = store_of({"t": {"ns": 3000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024)
    out.snapshot([b"j"], -1, store, EPOCH, 1, T0)
    out.pump(T0)
    pipes.take(b"j")
    out.snapshot([b"j"], -2, store, EPOCH, 2, T0)
    content, end = receive_snapshot(out, pipes, b"j", -2)
    assert end.seq == 2 and content == ids_of(store)
    assert pipes.skipped <= 1  # at most the chunk of the old request already made


def test_a_peer_that_left_loses_what_waits_for_it_and_no_one_else(caplog):
    caplog.set_level(logging.INFO, logger="tiger")
    store = store_of({"t": {"ns": 3000}}, size=200)
    pipes = Pipes()
    out = Outgoing(pipes.send, chunk_bytes=16 * 1024)
    out.snapshot([b"gone"], -1, store, EPOCH, 1, T0)
    out.snapshot([b"here"], -1, store, EPOCH, 1, T0)
    out.pump(T0)
    out.answer([b"gone", p.ok_bytes(1, EPOCH, 1, None)], T0)
    pipes.gone.add(b"gone")
    _, end = receive_snapshot(out, pipes, b"here", -1)
    assert end.records == 3000
    assert out.waiting() == (0, 0, 0)
    out.answer([b"gone", p.ok_bytes(2, EPOCH, 1, None)], T0)  # logged, not raised
    # and not as a warning: a client gives a call up (its timeout, a cancellation) or closes in the normal run
    # of things; `tiger.serve()` printed it on the user's stderr as "WARNING could not send an answer ..."
    left = [r for r in caplog.records if "a client that left" in r.getMessage()]
    assert left and {r.levelno for r in left} == {logging.INFO}


# -- a real writer ---------------------------------------------------------------------


def rss(pid: int) -> int:
    """A process's resident memory in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def fill(table: tiger.Table, count: int, pad: int) -> None:
    for start in range(0, count, 1000):
        table.insert_many([{"id": f"r{i}", "pad": "x" * pad} for i in range(start, min(count, start + 1000))])


@pytest.fixture
def short_stall_writer() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A writer whose peers may take nothing for 3 s (``_writer.STALL``, set in its process), its log piped."""
    script = (
        "import sys; from tiger import _writer; _writer.STALL = 3.0; "
        "sys.exit(_writer.serve_forever('tcp://127.0.0.1:*', owner_pid=int(sys.argv[1]), log_level='INFO'))"
    )
    command = [sys.executable, "-c", script, str(os.getpid())]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:  # closes its pipes
        try:
            line = read_line(proc, 30)
            assert line.startswith("tiger writer serving at"), line
            yield proc, line.strip().rsplit(" ", 1)[-1]
        finally:
            proc.terminate()
            proc.wait(10)


def log_lines(proc: subprocess.Popen[str], containing: str | tuple[str, ...], count: int, timeout: float) -> list[str]:
    """Read the process's stderr until ``count`` lines hold ``containing`` (or one of them; at most ``timeout`` s).
    (With os.read: a text stream's readline buffers lines that select() then no longer reports.)"""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    found: list[str] = []
    text = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(found) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(found)} of {count} log lines with {containing!r} within {timeout}s: {found}"
            if sel.select(remaining):
                data = os.read(fd, 65536).decode()
                assert data, "the writer's log ended"
                *lines, text = (text + data).split("\n")
                wanted = (containing,) if isinstance(containing, str) else containing
                found += [line for line in lines if any(w in line for w in wanted)]
    return found


def test_joiners_that_never_read_cost_the_writer_their_bound_and_are_dropped_after_the_stall(short_stall_writer, open_socket):
    """20 peers ask for a 60k-record snapshot (about 15 MB packed) and read nothing: the writer held
    every one whole before (about 300 MB); now at most its bound per peer, and it answers meanwhile."""
    proc, url = short_stall_writer
    with tiger.connect(url, timeout=30) as client:
        fill(client.table("big"), 60_000, 200)
        small = client.table("small")
        before = rss(proc.pid)
        sleepers = []
        for _ in range(20):
            sock = open_socket(zmq.DEALER, None)
            sock.setsockopt(zmq.RCVHWM, 1)  # its own process holds next to nothing either
            sock.connect(url)
            sock.send(p.encode_request(p.SnapshotRequest(-1)))
            sleepers.append(sock)
        peak = before
        for i in range(300):  # the writer answers while their snapshots are on their way
            small.insert({"id": f"s{i}"})
            peak = max(peak, rss(proc.pid))
        bound = 20 * (PEER_HWM + 1) * 2 * _snapshots.CHUNK_BYTES
        print(f"the writer grew by {(peak - before) / 2**20:.1f} MB (bound {bound / 2**20:.0f} MB)")
        assert peak - before < bound + 40 * 2**20, f"the writer grew by {(peak - before) / 2**20:.0f} MB"
        # dropped after the stall, or sooner: a peer whose queue is full reads no ZeroMQ heartbeat either, and
        # the writer closes its connection after 3 s without one (its next send finds it gone)
        assert len(log_lines(proc, ("for a peer that took nothing", "to a client that left"), 20, timeout=30)) == 20
        assert small.count() == 300 and client.table("big").count() == 60_000
    woken = sleepers[0]  # it wakes up: what its queue held, and no end
    replies = []
    while woken.poll(1000):
        replies.append(p.decode_reply(woken.recv()))
    assert replies and all(type(r) is p.SnapshotChunk for r in replies)  # its queue and the kernel's buffers: no end
    assert sum(len(records) for r in replies for _, _, records in r.segments) < 60_000  # type: ignore[union-attr]


def test_answers_to_a_peer_being_sent_a_snapshot_all_arrive_in_order(short_stall_writer, open_socket):
    """A replica's DEALER gets its snapshot and answers (Hello, calls asked again) on one queue: while
    the queue is full of chunks, answers wait (the reverted attempt of 3aef1b0 dropped them). The
    peer asks 10 more each time it reads a chunk, so most are asked while its queue is full."""
    _, url = short_stall_writer
    with tiger.connect(url, timeout=30) as client:
        fill(client.table("big"), 40_000, 200)
    sock = open_socket(zmq.DEALER, None)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.connect(url)
    sock.send(p.encode_request(p.SnapshotRequest(-1)))
    asked, answers, records, end = 0, [], 0, None
    while end is None or len(answers) < asked:
        assert sock.poll(10_000), f"nothing more after {len(answers)} of {asked} answers, {records} records"
        reply = p.decode_reply(sock.recv())
        if type(reply) is p.Ok:
            answers.append(reply.req_id)
        elif type(reply) is p.SnapshotChunk:
            records += sum(len(r) for _, _, r in reply.segments)
            for req_id in range(asked + 1, asked + 11):
                sock.send(p.encode_request(p.Hello(req_id, "a-client")))
            asked += 10
        else:
            assert type(reply) is p.SnapshotEnd
            end = reply
    assert asked > 100 and answers == list(range(1, asked + 1))
    assert records == end.records == 40_000


def test_writes_keep_flowing_while_four_processes_join_a_large_store(tmp_path):
    """Each joiner is a fresh process; meanwhile this one inserts: no insert waits a second (before,
    an insert waited for every snapshot asked before it to be packed and queued whole)."""
    script = (
        "import sys, tiger\n"
        "with tiger.connect(sys.argv[1], timeout=60) as c:\n"
        "    t = c.table('mine')\n"
        "    t.insert({'id': sys.argv[2]})\n"  # a write right after the join: read back at once
        "    print(c.table('big').count(), t.get(sys.argv[2]) is not None, flush=True)\n"
    )
    with tiger.serve() as server, tiger.connect(server.url, timeout=30) as client:
        fill(client.table("big"), 100_000, 150)
        writes = client.table("writes")
        joiners = [
            subprocess.Popen([sys.executable, "-c", script, server.url, f"j{i}"], stdout=subprocess.PIPE, text=True)
            for i in range(4)
        ]
        try:
            longest, count = 0.0, 0
            while any(j.poll() is None for j in joiners):
                started = time.monotonic()
                writes.insert({"id": f"w{count}"})
                longest = max(longest, time.monotonic() - started)
                count += 1
            outputs = [j.communicate(timeout=60)[0].split() for j in joiners]
        finally:
            for j in joiners:
                j.kill()
                j.wait()
        assert all(j.returncode == 0 for j in joiners)
        assert outputs == [["100000", "True"]] * 4
        assert longest < 1.0, f"an insert took {longest:.2f}s while 4 processes joined"
        assert writes.count() == count and count > 4


@pytest.fixture(scope="module")
def big_store() -> Iterator[tuple[tiger.Server, float]]:
    """A writer of this module's own holding 300k records, and how long a lone join of it took (seconds)."""
    with tiger.serve() as server, tiger.connect(server.url, timeout=60) as client:
        plans = client.table("plans")
        for start in range(0, 300_000, 20_000):
            plans.insert_many([{"id": f"plan_{i}", "n": i, "name": "x" * 40} for i in range(start, start + 20_000)])
        began = time.monotonic()
        with tiger.connect(server.url, timeout=60):
            lone = time.monotonic() - began
        yield server, lone


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_joining_a_store_whose_snapshot_took_longer_than_the_timeout_gave_up_halfway_through_it(big_store, kind):
    # connect's timeout bounded the whole join: a seeded store of 300k records that took longer than it to
    # send and load (a pytest -n 4 start on 2 busy cores) raised "no snapshot within 5s" halfway through,
    # and every test of that worker failed. Now the join goes on while its chunks keep coming.
    server, lone = big_store
    timeout = max(0.05, lone / 3)  # the first chunk comes well within it; the whole snapshot does not
    began = time.monotonic()
    if kind == "blocking":
        with tiger.connect(server.url, timeout=timeout) as client:
            assert client.table("plans").count() == 300_000
    else:

        async def join() -> int:
            async with await tiger.aio.connect(server.url, timeout=timeout) as client:
                return client.table("plans").count()

        assert asyncio.run(join()) == 300_000
    print(f"joined in {time.monotonic() - began:.2f}s with a timeout of {timeout:.2f}s (a lone join: {lone:.2f}s)")


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_a_write_answered_as_a_big_stores_resync_began_raised_timeout_though_applied(big_store, kind):
    # The same kind past connect: a write answered while the replica reloaded the snapshot of a big store (a gap,
    # a writer restarted, a process far behind) waited for the replica to reach its seq within the client's
    # timeout, and raised Timeout halfway through the snapshot, though the writer had applied it. It waits on
    # while the snapshot's chunks keep coming, as a join does.
    server, lone = big_store
    timeout = max(0.5, lone / 3)  # the first chunk comes well within it, the write's answer too; the snapshot does not

    def reloading(replica: _replica.Replica) -> None:
        replica._reload = "a test: the replica reloads the snapshot"  # (as a caller far behind its answer asks)
        deadline = time.monotonic() + 30
        while not replica._seq.loading:
            assert time.monotonic() < deadline, "the replica did not begin to reload"
            time.sleep(0.001)  # sleep-ok: polling the replica thread's state, with a deadline

    if kind == "blocking":
        with tiger.connect(server.url, timeout=timeout) as client:
            reloading(client.replica)
            began = time.monotonic()
            record = client.table("plans").insert({"n": -1})
            assert client.table("plans").get(record["id"]) == record
            client.table("plans").delete(record["id"])  # (the store is the module's: 300k records)
    else:

        async def write() -> None:
            async with await tiger.aio.connect(server.url, timeout=timeout) as client:
                await asyncio.get_running_loop().run_in_executor(None, reloading, client.replica)
                record = await client.table("plans").insert({"n": -1})
                assert client.table("plans").get(record["id"]) == record
                await client.table("plans").delete(record["id"])

        began = time.monotonic()
        asyncio.run(write())
    print(f"written in {time.monotonic() - began:.2f}s with a timeout of {timeout:.2f}s (a lone join: {lone:.2f}s)")


def test_a_writer_stopped_in_the_middle_of_a_snapshot_is_given_up_a_timeout_after_its_last_chunk(big_store, monkeypatch):
    # the other side of the join going on past its timeout: a writer that stops sending (SIGSTOP) is not waited
    # for longer than the timeout after the last chunk that came
    server, _ = big_store
    replicas: list[_replica.Replica] = []
    made = _replica.Replica.__init__

    def watched(self: _replica.Replica, *args: Any, **kwargs: Any) -> None:  # (a spy: the joining replica, to
        made(self, *args, **kwargs)  # see its first chunk come)
        replicas.append(self)

    monkeypatch.setattr(_replica.Replica, "__init__", watched)
    outcome: list[BaseException | None] = []
    ended = threading.Event()

    def join() -> None:
        try:
            tiger.connect(server.url, timeout=2.0).close()  # (the first chunk comes well within it)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)
        finally:
            ended.set()

    threading.Thread(target=join, daemon=True).start()
    deadline = time.monotonic() + 30
    while not (replicas and replicas[0].chunk_at is not None):
        assert time.monotonic() < deadline and not ended.is_set(), f"no chunk came: {outcome}"
        ended.wait(0.001)
    os.kill(server.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        assert ended.wait(10), "the join waited on for a writer that stopped sending"
    finally:
        os.kill(server.pid, signal.SIGCONT)
    waited = time.monotonic() - stopped
    assert isinstance(outcome[0], tiger.Unavailable), outcome
    assert "its last chunk came" in str(outcome[0])
    assert waited < 2.0 + 3.0, f"given up {waited:.2f}s after the writer stopped"


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_a_writer_failing_part_way_through_every_snapshot_kept_connect_waiting_for_ever(writer, monkeypatch, kind):
    # (a review of the join going on past its timeout) each attempt's chunks extended the wait, and the next
    # attempt, begun past the deadline, counted the last one's: a writer restarted over and over, failing each
    # snapshot part-way, kept connect waiting for ever. Each attempt here gets a chunk, then fails.
    def failing_part_way(self: _replica.Replica, sub: Any, dealer: Any) -> list[bytes]:
        time.sleep(0.2)  # sleep-ok: the fake attempt's own time
        self.chunk_at = time.monotonic()  # a chunk of this attempt came
        time.sleep(0.1)  # sleep-ok: the fake attempt's own time
        raise tiger.Unavailable(f"the tiger writer at {self._url} was replaced during the snapshot")

    monkeypatch.setattr(_replica.Replica, "_load_snapshot", failing_part_way)
    began = time.monotonic()
    with pytest.raises(tiger.Unavailable, match="no snapshot from the tiger writer"):
        if kind == "blocking":
            tiger.connect(writer.url, timeout=1.0).close()
        else:

            async def join() -> None:
                await (await tiger.aio.connect(writer.url, timeout=1.0)).close()

            asyncio.run(join())
    assert time.monotonic() - began < 1.0 + 2.5, "connect waited on past its timeout for attempts begun after it"
