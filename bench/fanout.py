"""fanout: replication lag (write acknowledged in A -> visible in B) with 1-8 replicas; the writer's throughput with them."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import HIGHER, Children, Result, make_records, progress, receive_all, send, step, summary, try_receive
from bench._peers import Context

NAME = "fanout"


def run(ctx: Context) -> Result:
    counts = ctx.pick([1, 2, 4, 8], [1, 4])
    samples = ctx.pick(1_000, 150)
    pace = 0.001
    duration = ctx.pick(1.5, 0.3)
    res = Result(
        NAME,
        "replication lag (insert acknowledged in process A -> visible in replica process B) and A's writes/s with N replicas",
        f"A (this process, a tiger client) inserts {samples} records one at a time, sleeping {pace * 1000:g} ms between them, "
        "and stamps time.monotonic_ns() when each insert returns (acknowledged; A's own replica already holds it). Each "
        "replica B is its own process running Table.wait_for(id) for every id in order and stamps time.monotonic_ns() when "
        "it returns; CLOCK_MONOTONIC is one clock for every process on the machine. lag = B's stamp - A's stamp, over every "
        "record and every replica (p50/p99/max). A negative lag means B saw the change before A's reply arrived (the writer "
        "publishes before it replies). 'from call start' is B's stamp - the time A called insert. The floor: one raw pyzmq "
        "PUB -> SUB hop of a msgpack record to N subscriber processes that decode it, same pacing. Throughput: A inserts "
        f"back to back for {duration} s with the N replicas attached, and just before with none attached (paired: the machine is "
        "shared and noisy).",
        params={"replicas": counts, "samples": samples, "pace_s": pace, "throughput_s": duration},
    )
    import tiger

    records = make_records(samples, tag="f")
    with tiger.serve() as server, tiger.connect(server.url) as client:
        table = client.table("plans", prefix="plan")
        res.params["url"] = server.url.split(":")[0]
        bases = []
        for n in counts:
            with step(NAME, "writer throughput with no replica attached (paired with the next step)"):
                base = _throughput(table, duration, f"n{n}b")
                bases.append(base)
            with Children() as children:
                with step(NAME, f"tiger: {n} replica process{'es' if n > 1 else ''}: connect"):
                    procs = [children.worker("replica", server.url, str(samples)) for _ in range(n)]
                    receive_all(procs, 120.0)
                prefix = f"plan_n{n}r"
                for proc in procs:
                    send(proc, {"prefix": prefix})
                with step(NAME, f"tiger: {n} replicas: lag of {samples} paced inserts"):
                    start, ack = _paced_inserts(table, records, prefix, pace)
                    seen = [r["seen"] for r in receive_all(procs, 120.0)]
                lag = [(s[i] - ack[i]) / 1000 for s in seen for i in range(samples)]
                from_start = [(s[i] - start[i]) / 1000 for s in seen for i in range(samples)]
                per_replica = [summary([(s[i] - ack[i]) / 1000 for i in range(samples)])["median"] for s in seen]
                case = f"lag, {n} replica{'s' if n > 1 else ''}"
                res.row(case, "tiger", "tiger", "us", summary(lag), per_replica_p50=per_replica)
                res.row(
                    f"lag from the insert call, {n} replica{'s' if n > 1 else ''}", "tiger", "tiger", "us", summary(from_start)
                )
                with step(NAME, f"tiger: {n} replicas attached: writer throughput"):
                    rate = _throughput(table, duration, f"n{n}t")
                case = f"writes/s, {n} replica{'s' if n > 1 else ''}"
                res.row(case, "tiger", "tiger", "writes/s", {"median": rate}, better=HIGHER)
                res.row(case, "tiger, no replica", "floor", "writes/s", {"median": base}, better=HIGHER)
        res.row(
            "writes/s, 0 replicas", "tiger", "tiger", "writes/s", {"median": statistics.median(bases)}, better=HIGHER, runs=bases
        )
    for n in counts:
        with step(NAME, f"floor: raw PUB/SUB to {n} subscriber process{'es' if n > 1 else ''}"):
            lag = _pubsub(ctx.tmp, n, records, pace)
        res.row(f"lag, {n} replica{'s' if n > 1 else ''}", "pyzmq PUB/SUB one hop", "floor", "us", summary(lag))

    lines = {"tiger": ("lag, ", "tiger"), "tiger, from the insert call": ("lag from the insert call, ", "tiger")}
    lines["pyzmq PUB/SUB one hop"] = ("lag, ", "pyzmq PUB/SUB one hop")
    res.series["lag_us"] = {
        name: {
            r["case"][len(prefix) :].split()[0]: {k: r[k] for k in ("median", "p99", "max")}
            for r in res.rows
            if r["case"].startswith(prefix) and r["subject"] == subject
        }
        for name, (prefix, subject) in lines.items()
    }
    res.series["writes_per_s"] = {
        r["case"].split()[1]: r["median"] for r in res.rows if r["unit"] == "writes/s" and r["role"] == "tiger"
    }

    four = res.find("lag, 4 replicas", "tiger")
    why = None if four else "4 replicas not measured in this run"
    res.target(
        "replication lag p50 under 150 us with 4 replicas",
        four["median"] if four else None,
        150,
        "us",
        at_most=True,
        detail=why or "",
    )
    res.target(
        "replication lag p99 under 2 ms with 4 replicas",
        four["p99"] / 1000 if four else None,
        2,
        "ms",
        at_most=True,
        detail=why or "",
    )
    return res


def _paced_inserts(table: Any, records: list[dict[str, Any]], prefix: str, pace: float) -> tuple[list[int], list[int]]:
    clock = time.monotonic_ns
    start, ack = [], []
    for i, record in enumerate(records):
        r = dict(record)
        r["id"] = f"{prefix}{i:08x}"
        t0 = clock()
        table.insert(r)
        t1 = clock()
        start.append(t0)
        ack.append(t1)
        time.sleep(pace)
    return start, ack


def _throughput(table: Any, duration: float, tag: str) -> float:
    pool = make_records(2_000, tag=tag)
    insert = table.insert
    n = 0
    t0 = time.perf_counter()
    end = t0 + duration
    now = t0
    while now < end:
        insert(pool[n % len(pool)])
        n += 1
        now = time.perf_counter()
    return n / (now - t0)


def _pubsub(tmp: Path, n: int, records: list[dict[str, Any]], pace: float) -> list[float]:
    import msgpack
    import zmq

    directory = tempfile.mkdtemp(dir=tmp, prefix="pub-")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(f"ipc://{directory}/pub")
    url = pub.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        with Children() as children:
            procs = [children.worker("sub", url, str(len(records))) for _ in range(n)]
            ping = msgpack.packb([-1])
            pending = list(procs)
            deadline = time.monotonic() + 60
            while pending:  # publish pings until every subscriber has one: its subscription is live
                pub.send(ping)
                pending = [p for p in pending if try_receive(p, 0.01) is None]
                if time.monotonic() > deadline:
                    raise RuntimeError("subscribers did not get a ping within 60 s")
            sent = []
            clock = time.monotonic_ns
            for i, record in enumerate(records):
                payload = msgpack.packb([i, record])
                sent.append(clock())
                pub.send(payload)
                time.sleep(pace)
            seen = [r["seen"] for r in receive_all(procs, 60.0)]
    finally:
        pub.close(linger=0)
        ctx.term()
    progress(NAME, f"floor: {n} subscribers received {len(records)} messages each")
    return [(s[i] - sent[i]) / 1000 for s in seen for i in range(len(records))]
