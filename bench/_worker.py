"""Child processes of the benchmarks: ``python -m bench._worker COMMAND ARGS``.

Each speaks JSON lines: it prints ``{"ready": ...}`` once set up, reads its
orders on stdin, prints its figures, and exits when its stdin closes (so a
parent that dies never leaves one behind).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from typing import Any


def _say(message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _order() -> Any:
    line = sys.stdin.readline()
    if not line:
        raise SystemExit(0)  # the parent closed our stdin: stop
    return json.loads(line)


def _exit_on_eof() -> None:
    """For workers whose main thread blocks elsewhere: exit as soon as stdin closes."""

    def watch() -> None:
        while sys.stdin.readline():
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def echo(url: str, kind: str = "REP") -> None:
    """The echo side of the raw round-trip floors: receive one message, send it back. ``kind`` REP (the REQ/REP
    floor) or ROUTER (the DEALER floors: tiger's clients talk to its writer over DEALER/ROUTER)."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(getattr(zmq, kind))
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    _say({"ready": True, "url": sock.getsockopt_string(zmq.LAST_ENDPOINT)})
    _exit_on_eof()
    if kind == "ROUTER":  # its message is the sender's id, then the payload
        recv_message, send_message = sock.recv_multipart, sock.send_multipart
        while True:
            send_message(recv_message())
    recv, send = sock.recv, sock.send  # a REP's: one frame, as it always was (the REQ/REP floor unchanged)
    while True:
        send(recv())


def _serving(kind: int, url: str, pub_url: str, pub_hwm: int | None = None) -> tuple[Any, Any]:
    """A floor server's sockets: ``kind`` (REP or ROUTER) bound at ``url``, and a PUB (its send high-water
    mark ``pub_hwm`` if given, else libzmq's) bound at ``pub_url``."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(url)
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    if pub_hwm is not None:
        pub.setsockopt(zmq.SNDHWM, pub_hwm)
    pub.bind(pub_url)
    return sock, pub


def publish_echo(url: str, pub_url: str) -> None:
    """The REP side of the write floor with tiger's least work: decode the request (frozen, as tiger's
    writer does), encode it again, publish it on a PUB socket under a 3-byte topic, send it back."""
    import zmq

    from tiger import _protocol as p

    sock, pub = _serving(zmq.REP, url, pub_url)
    topic = p.topic_of(p.new_client_id())  # the caller's topic: its own SUB filters these out, as tiger's replica does
    _say(
        {
            "ready": True,
            "url": sock.getsockopt_string(zmq.LAST_ENDPOINT),
            "pub_url": pub.getsockopt_string(zmq.LAST_ENDPOINT),
            "topic": topic.hex(),
        }
    )
    _exit_on_eof()
    recv, send, publish, pack, unpack = sock.recv, sock.send, pub.send_multipart, p.pack, p.unpack_frozen
    while True:
        change = pack(unpack(recv()))
        publish([topic, change])  # as tiger's writer: publish, then answer
        send(change)


def fanout_echo(url: str, pub_url: str) -> None:
    """The server of the fan-out floor: a ROUTER that, for each request, publishes its bytes as one frame
    (a 3-byte topic + the payload, as tiger's writer does) on a PUB, then answers it with them (echo)."""
    import zmq

    from tiger import _protocol as p

    sock, pub = _serving(zmq.ROUTER, url, pub_url, pub_hwm=200_000)  # tiger's writer's PUB_HWM
    _say({"ready": True, "url": sock.getsockopt_string(zmq.LAST_ENDPOINT), "pub_url": pub.getsockopt_string(zmq.LAST_ENDPOINT)})
    _exit_on_eof()
    recv, send, publish, topic = sock.recv_multipart, sock.send_multipart, pub.send, p.EVERYONE
    while True:
        frames = recv()
        publish(topic + frames[-1])  # as tiger's writer: publish, then answer
        send(frames)


def manager(authkey: str) -> None:
    """The server of the Manager peer: one dict, served to every client process by address."""
    from bench._peers import TableManager

    server = TableManager(address=("127.0.0.1", 0), authkey=bytes.fromhex(authkey)).get_server()
    _say({"ready": True, "address": list(server.address)})
    _exit_on_eof()
    server.serve_forever()


def writer(kind: str, spec_json: str, index: str) -> None:
    """One of N processes writing at once: single writes of fresh records for the given duration."""
    from bench._common import fresh_records
    from bench._peers import KINDS

    client = KINDS[kind].connect(json.loads(spec_json))
    fresh = fresh_records(f"plan_w{int(index):02x}", tag=f"w{int(index):02x}")

    if kind in ("echo", "fanout_echo"):  # the floors send what tiger would send for the same insert
        from bench._peers import tiger_insert_bytes

        items: list[Any] = [tiger_insert_bytes([fresh()], i) for i in range(20_000)]
    else:
        items = [fresh() for _ in range(20_000)]  # made before the clock starts; reused (as upserts) if exhausted
    write = client.put_function()
    write(items[-1])  # warm-up
    _say({"ready": True})
    duration = _order()["go"]
    n = 0
    clock = time.perf_counter
    cpu = time.process_time()  # this process's CPU (every thread: a tiger client's replica thread too)
    t0 = clock()
    end = t0 + duration
    now = t0
    while now < end:
        for item in items:
            write(item)
            n += 1
            if not n & 63:
                now = clock()
                if now >= end:
                    break
    _say({"writes": n, "seconds": now - t0, "cpu_s": time.process_time() - cpu})
    client.close()
    _order()


def replica(url: str, count: str) -> None:
    """A tiger replica for the fanout scenario: when did each record appear here?"""
    import tiger

    client = tiger.connect(url, timeout=30.0)
    table = client.table("plans", prefix="plan")
    _say({"ready": True})
    order = _order()
    prefix = order["prefix"]
    seen = []
    clock = time.monotonic_ns
    for i in range(int(count)):
        table.wait_for(f"{prefix}{i:08x}", timeout=30.0)
        seen.append(clock())
    _say({"seen": seen})
    _order()  # stay attached (applying changes) until told: the writer's throughput is measured meanwhile
    client.close()


def feed_replica(url: str) -> None:
    """A tiger replica for the feed scenario: when did each record appear here, seen one of three ways?

    Each order ``{"how", "prefix", "count"}`` names the way for the next ``count`` records (ids ``prefix``
    + 8 hex digits, inserted in that order by another process): ``"wait_for"`` (Table.wait_for of each id,
    as the fanout replica), ``"feed"`` (``for change in table.watch()``) or ``"async feed"`` (``async for``
    over the same feed in a running asyncio loop). The feed is open, and the loop running, before it says
    ``{"ready": how}``; it says every stamp (``time.monotonic_ns()``) once all ``count`` came."""
    import asyncio

    import tiger

    client = tiger.connect(url, timeout=30.0)
    table = client.table("plans", prefix="plan")
    _say({"ready": True})
    while True:
        order = _order()
        how, prefix = order["how"], order["prefix"]
        ids = [f"{prefix}{i:08x}" for i in range(int(order["count"]))]
        gc.collect()
        if how == "wait_for":
            _say({"ready": how})
            seen = _waited_for(table, ids)
        elif how == "feed":
            with table.watch(timeout=30.0) as feed:
                _say({"ready": how})
                seen = _fed(feed, ids)
        elif how == "async feed":
            seen = asyncio.run(_fed_async(table, ids, how))
        else:
            raise ValueError(f"unknown way to follow: {how!r}")
        _say({"seen": seen})


def _waited_for(table: Any, ids: list[str]) -> list[int]:
    """When each id reached this replica, by Table.wait_for (as the fanout replica)."""
    seen, clock, wait_for = [], time.monotonic_ns, table.wait_for
    for id in ids:
        wait_for(id, timeout=30.0)
        seen.append(clock())
    return seen


def _fed(feed: Any, ids: list[str]) -> list[int]:
    """When a blocking feed yielded each id's change."""
    seen: list[int] = []
    clock = time.monotonic_ns
    for change in feed:
        if change.id == ids[len(seen)]:
            seen.append(clock())
            if len(seen) == len(ids):
                break
    return seen


async def _fed_async(table: Any, ids: list[str], how: str) -> list[int]:
    """When a feed read with ``async for`` in this running loop yielded each id's change (opened here: ready)."""
    seen: list[int] = []
    clock = time.monotonic_ns
    with table.watch(timeout=30.0) as feed:
        _say({"ready": how})
        async for change in feed:
            if change.id == ids[len(seen)]:
                seen.append(clock())
                if len(seen) == len(ids):
                    break
    return seen


def sub(url: str, count: str) -> None:
    """The lag floor: a raw SUB that decodes what one PUB hop delivers."""
    import msgpack
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(url)
    _exit_on_eof()
    unpack = msgpack.unpackb
    while True:  # pings until the subscription is live (the slow joiner)
        if unpack(sock.recv())[0] == -1:
            break
    _say({"ready": True})
    seen: dict[int, int] = {}
    clock = time.monotonic_ns
    while len(seen) < int(count):
        m = unpack(sock.recv())
        if m[0] >= 0:
            seen[m[0]] = clock()
    _say({"seen": [seen[i] for i in range(int(count))]})
    sock.close(linger=0)
    ctx.term()
    while True:
        time.sleep(3600)  # _exit_on_eof ends us


def join(url: str, expected: str) -> None:
    """A late joiner: how long until a fresh process holds the full replica, and its RSS cost."""
    import tiger
    from bench._common import rss_bytes

    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    client = tiger.connect(url, timeout=120.0)
    seconds = time.perf_counter() - t0
    held = client.table("plans", prefix="plan").count()
    gc.collect()
    after = rss_bytes()
    _say({"seconds": seconds, "records": held, "expected": int(expected), "rss_before": before, "rss_after": after})
    client.close()


def dictmem(path: str) -> None:
    """The memory floor: the same records, decoded from one msgpack blob, in a plain dict."""
    import msgpack

    from bench._common import rss_bytes

    with open(path, "rb") as f:
        blob = f.read()
    gc.collect()
    before = rss_bytes()
    gc.disable()  # the floor: no cyclic GC passes over the new objects while they are made
    t0 = time.perf_counter()
    records = msgpack.unpackb(blob, raw=False)
    table = {r["id"]: r for r in records}
    seconds = time.perf_counter() - t0
    gc.enable()
    del records, blob
    gc.collect()
    after = rss_bytes()
    _say({"seconds": seconds, "records": len(table), "rss_before": before, "rss_after": after})


def ultrajoin(name: str, expected: str) -> None:
    """UltraDict's late joiner: attach to the shared memory and load its full dump."""
    import logging

    from UltraDict import UltraDict

    from bench._common import rss_bytes

    logging.getLogger("UltraDict").setLevel(logging.ERROR)
    gc.collect()
    before = rss_bytes()
    t0 = time.perf_counter()
    ud = UltraDict(name=name, create=False)
    held = len(ud)
    seconds = time.perf_counter() - t0
    gc.collect()
    after = rss_bytes()
    _say({"seconds": seconds, "records": held, "expected": int(expected), "rss_before": before, "rss_after": after})
    ud.close()


def joiner(url: str, expected: str) -> None:
    """A fresh process told when to join: its join (connect until the replica holds the snapshot) on one clock.

    Started and imported ahead, so several can be told to go at once; stays attached until told to close."""
    import tiger

    _say({"ready": True})
    _order()
    c0, t0 = time.process_time(), time.monotonic_ns()
    client = tiger.connect(url, timeout=300.0)
    t1, c1 = time.monotonic_ns(), time.process_time()
    held = client.table("plans", prefix="plan").count()
    said = {
        "start_ns": t0,
        "end_ns": t1,
        "seconds": (t1 - t0) / 1e9,
        "cpu_s": c1 - c0,
        "records": held,
        "expected": int(expected),
    }
    _say(said)
    _order()
    client.close()


def inserter(url: str, baseline: str) -> None:
    """Single inserts back to back, each one's start and latency on CLOCK_MONOTONIC (the join-stall scenario).

    Says ``{"baseline": ...}`` once it has inserted for ``baseline`` seconds, and goes on until told
    ``{"stop_after": SECONDS}``; then says every start and latency."""
    from array import array

    import tiger
    from bench._common import fresh_records

    client = tiger.connect(url, timeout=60.0)
    insert = client.table("plans", prefix="plan").insert
    fresh = fresh_records("plan_i", tag="i")

    insert(fresh())  # warm-up
    _say({"ready": True})
    _order()
    stop_at = [1 << 62]  # monotonic ns; moved by the order that comes on stdin meanwhile

    def watch() -> None:
        line = sys.stdin.readline()
        if line:
            stop_at[0] = time.monotonic_ns() + int(json.loads(line)["stop_after"] * 1e9)
        while line:
            line = sys.stdin.readline()
        os._exit(0)  # stdin closed: the parent is done with us (or gone)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    starts, latencies = array("q"), array("q")
    clock = time.monotonic_ns
    announce = clock() + int(float(baseline) * 1e9)
    while True:
        record = fresh()  # made before the clock starts
        t0 = clock()
        insert(record)
        t1 = clock()
        starts.append(t0)
        latencies.append(t1 - t0)
        if t1 >= announce:
            _say({"baseline": len(starts)})
            announce = 1 << 62
        if t1 >= stop_at[0]:
            break
    _say({"starts_ns": starts.tolist(), "latencies_ns": latencies.tolist()})
    client.close()
    watcher.join()


def decoder(path: str) -> None:
    """The CPU floor of a join: decode snapshot chunks (msgpack bytes, as the writer sent them) into a plain dict."""
    import msgpack

    with open(path, "rb") as f:
        frames = msgpack.unpackb(f.read(), raw=False)
    unpack = msgpack.unpackb
    _say({"ready": True})
    _order()
    gc.disable()  # the floor: no cyclic GC passes over the new objects (tiger's replica does the same)
    c0, t0 = time.process_time(), time.monotonic_ns()
    rows: dict[str, Any] = {}
    for frame in frames:
        for _table, _namespace, records in unpack(frame, raw=False)[2]:
            rows.update({r["id"]: r for r in records})
    t1, c1 = time.monotonic_ns(), time.process_time()
    gc.enable()
    _say({"start_ns": t0, "end_ns": t1, "seconds": (t1 - t0) / 1e9, "cpu_s": c1 - c0, "records": len(rows)})
    _order()


COMMANDS = {
    "manager": manager,
    "echo": echo,
    "publish_echo": publish_echo,
    "fanout_echo": fanout_echo,
    "writer": writer,
    "replica": replica,
    "feed_replica": feed_replica,
    "sub": sub,
    "join": join,
    "dictmem": dictmem,
    "ultrajoin": ultrajoin,
    "joiner": joiner,
    "inserter": inserter,
    "decoder": decoder,
}

if __name__ == "__main__":
    COMMANDS[sys.argv[1]](*sys.argv[2:])
