"""write: us per single insert (read-your-writes) vs the raw REQ/REP floor and each peer; insert_many records/s by batch size."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from bench._common import BATCH_NS, HIGHER, TIMING_METHOD, Result, Sampler, make_records, step, summary, time_calls
from bench._peers import (
    PEERS,
    Client,
    Context,
    PlainDict,
    Subject,
    Tiger,
    ZmqEcho,
    ZmqPublishEcho,
    opened,
    skip_failed,
    tiger_insert_bytes,
)

NAME = "write"
BATCH_SIZES = (1, 10, 100, 1000)


def _fresh(tag: str) -> Callable[[int], list[dict[str, Any]]]:
    """n -> n records never written before (the pool's fields, a new id each)."""
    pool = make_records(1000, tag=tag)
    counter = itertools.count()

    def make(n: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(n):
            i = next(counter)
            r = dict(pool[i % len(pool)])
            r["id"] = f"plan_{tag}{i:016x}"
            out.append(r)
        return out

    return make


class _Bulk:
    """insert_many (or the subject's own bulk write) of ``size`` records per call, timed per call over rounds."""

    def __init__(self, client: Client, echo: bool, fresh: Callable[[int], list[dict[str, Any]]], size: int) -> None:
        self.size = size
        self.fresh = fresh
        self.echo = echo
        self.call = client.write if echo else client.write_many
        self.seconds: list[float] = []
        self.call(self._work(1)[0])  # warm-up

    def _work(self, calls: int) -> list[Any]:
        batches = [self.fresh(self.size) for _ in range(calls)]
        return [tiger_insert_bytes(b) for b in batches] if self.echo else batches

    def take(self, records: int, budget: float) -> None:
        queue = iter(self._work(max(2, min(400, records // self.size))))  # made before the clock starts
        self.seconds += time_calls(lambda: self.call(next(queue)), count=max(2, min(400, records // self.size)), budget=budget)

    def row(self) -> dict[str, Any]:
        return {"median": self.size * len(self.seconds) / sum(self.seconds), "calls": len(self.seconds)}


CODEC = "msgpack codec only"


def _codec_floor(fresh: Callable[[int], list[dict[str, Any]]], size: int, budget: float) -> dict[str, Any]:
    """records/s if a write cost nothing but its msgpack work: the client packs a batch of ``size``, the
    writer decodes it (frozen, as tiger's does) and packs it again, the client decodes the answer (frozen)."""
    from tiger import _protocol as p

    records = fresh(size)

    def trip() -> None:
        p.unpack_frozen(p.pack(p.unpack_frozen(p.pack(records))))

    collecting = gc.isenabled()
    gc.disable()  # the codec's own cost: not the collections this process's heap would add
    try:
        seconds = time_calls(trip, count=max(5, 20_000 // len(records)), budget=budget)
    finally:
        if collecting:
            gc.enable()
    return {"median": len(records) * len(seconds) / sum(seconds), "calls": len(seconds)}  # as _Bulk.row


RULES = "codec + rules, one process"
CODEC_LABEL = "pack + frozen unpack + pack + frozen unpack of the batch in one process, GC off: no socket, no rules"
RULES_LABEL = (
    "the client's checks and packing, the writer's frozen decode, table rules, store and packing, "
    "the client's answer decode and replica store, of the batch in one process, GC off: no socket"
)


def _rules_floor(fresh: Callable[[int], list[dict[str, Any]]], size: int, budget: float) -> dict[str, Any]:
    """records/s of the work on an ``insert_many`` call's critical path, in one process, with no socket:
    the client checks ``size`` fresh records and packs the call; the writer's core (``WriterCore``, as the
    writer runs it) decodes it, applies the table rules (checks, ids, ``created``), stores the records,
    packs the change (or reuses the call's bytes, as it does for these records) and its publication and
    answer; the client decodes the answer (the records it sent taken from its own copy, decoded
    beforehand: in tiger that overlaps the writer's work) and applies it to its replica's store. What
    tiger adds to this is its sockets, its two processes and their scheduling."""
    import tiger._table as t
    from tiger import _protocol as p
    from tiger._core import WriterCore

    tokens = itertools.count()
    core = WriterCore("e" * 16, heartbeat=0.5, now=0.0, token=lambda n: f"{next(tokens):0{2 * n}x}", info={"pid": 0})
    replica = t.Store()
    count = max(5, 20_000 // size)
    calls = []  # made before the clock starts: fresh records, and the client's copy of them (decoded while the writer works)
    for req_id in range(1, count + 1):
        records = fresh(size)
        insert = p.Insert(req_id, "plans", "ns", "plan", records, False)
        calls.append((records, req_id, p.own_records_of(insert, p.encode_call(p.Call("c" * 16, 1e12, insert, -1)))))
    queue = iter(calls)

    def trip() -> None:
        records, req_id, own = next(queue)
        t.check_records(records, "plans", "plan", single=False)
        payload = p.encode_call(p.Call("c" * 16, 1e12, p.Insert(req_id, "plans", "ns", "plan", records, False), -1))
        core.handle([b"peer", payload], 1.0, 100.0)
        core.commit(1.0)
        reply = p.decode_reply(core.take_outbox().replies[-1][-1], own)
        replica.apply(reply.change)  # type: ignore[union-attr]

    collecting = gc.isenabled()
    gc.disable()  # as the codec floor: the work, not this process's collections
    try:
        seconds = time_calls(trip, count=count, budget=budget)
    finally:
        if collecting:
            gc.enable()
    return {"median": len(seconds) * size / sum(seconds), "calls": len(seconds)}


def run(ctx: Context) -> Result:
    rounds = ctx.pick(5, 2)
    batches = ctx.pick(400, 150)  # single writes per round (one per batch: they take more than 50 us)
    budget = ctx.pick(0.4, 0.2)  # seconds per round, at most
    many_records = ctx.pick(4_000, 1_500)  # per round and batch size, at most
    many_budget = ctx.pick(0.3, 0.15)
    res = Result(
        NAME,
        "us per single write (read-your-writes for tiger), and records/s by batch size",
        TIMING_METHOD.format(batch_us=BATCH_NS // 1000)
        + " Bulk writes: each call timed alone with perf_counter_ns; records/s = records written / the sum of the call times.",
        params={
            "rounds": rounds,
            "single_batches_per_round": batches,
            "budget_s_per_round": budget,
            "bulk_records_per_round_and_size": many_records,
            "batch_sizes": list(BATCH_SIZES),
        },
    )
    res.notes.append(
        "tiger insert returns once the writer applied, published and answered it and the local replica holds it; "
        "the pyzmq floor sends the very bytes tiger's client sends for the same insert and gets them echoed back."
    )
    with ExitStack() as stack:
        ready: list[tuple[type[Subject], Subject, Client, Sampler, dict[int, _Bulk]]] = []
        for cls in [Tiger, ZmqEcho, ZmqPublishEcho, PlainDict, *PEERS]:
            got = stack.enter_context(opened(cls, ctx, res))
            if got is None:
                continue
            subject, client = got
            fresh = _fresh("w")  # every subject has its own store: the same ids everywhere
            echo = cls is ZmqEcho

            def items(n: int, fresh: Callable[[int], list[dict[str, Any]]] = fresh, echo: bool = echo) -> list[Any]:
                records = fresh(n)
                return [tiger_insert_bytes([r]) for r in records] if echo else records

            try:
                single = Sampler(client.write_stmt, client.write, items)
                # the codec + publish floor is a single-write floor: it has no bulk write of its own
                bulk = {} if cls is ZmqPublishEcho else {size: _Bulk(client, echo, fresh, size) for size in BATCH_SIZES}
            except Exception as e:
                skip_failed(cls, res, e)
                continue
            ready.append((cls, subject, client, single, bulk))
        for r in range(rounds):
            with step(NAME, f"round {r + 1}/{rounds}: single writes, then batches of {', '.join(map(str, BATCH_SIZES))}"):
                for _, _, _, single, _ in ready:
                    single.take(batches, budget, warmup=3 if r == 0 else 1)
                for size in BATCH_SIZES:
                    for _, _, _, _, bulk in ready:
                        if size in bulk:
                            bulk[size].take(many_records, many_budget)
        series: dict[str, dict[str, float]] = {}
        for cls, subject, client, single, bulk in ready:
            label = subject.label or cls.name
            res.row("single write", cls.name, cls.role, "us", single.summary(scale=1000), label=label, stmt=client.write_stmt)
            for size, b in bulk.items():
                row = res.row(f"batch {size}", cls.name, cls.role, "records/s", b.row(), better=HIGHER, label=label)
                row["call_us"] = summary([s * 1e6 for s in b.seconds])
                series.setdefault(cls.name, {})[str(size)] = row["median"]
    floors = (
        (CODEC, _codec_floor, "c", "the msgpack codec alone", CODEC_LABEL),
        (RULES, _rules_floor, "r", "the codec and the table rules on the critical path", RULES_LABEL),
    )
    for subject, floor, tag, what, label in floors:
        with step(NAME, f"floor: {what}, per batch size (in this process)"):
            for size in BATCH_SIZES:
                measured = floor(_fresh(tag), size, ctx.pick(0.3, 0.1))
                row = res.row(f"batch {size}", subject, "floor", "records/s", measured, better=HIGHER, label=label)
                series.setdefault(subject, {})[str(size)] = row["median"]
    res.series["records_per_s"] = series

    tiger = res.find("single write", role="tiger")
    floor = res.find("single write", ZmqEcho.name)
    least = res.find("single write", ZmqPublishEcho.name)
    assert tiger is not None
    detail = f"tiger {tiger['median']:.0f} us, REQ/REP {floor['median']:.0f} us" if floor else "the floor did not run"
    if floor and least:
        detail += (
            f"; REQ/REP + msgpack + PUB (no rules, store or replica) {least['median']:.0f} us "
            f"= {least['median'] / floor['median']:.2f}x REQ/REP"
        )
        rules, codec = res.find("batch 1", RULES), res.find("batch 1", CODEC)
        if rules and codec:  # the contract's own work, without the codec work the floor above does already
            work = 1e6 / rules["median"] - 1e6 / codec["median"]
            detail += (
                f"; with the rules and stores of one insert timed warm in one process ({RULES} less {CODEC}, "
                f"batch 1: {work:.1f} us) {least['median'] + work:.0f} us = {(least['median'] + work) / floor['median']:.2f}x"
            )
    res.target(
        "single insert median at most 1.3x the raw pyzmq REQ/REP round trip",
        tiger["median"] / floor["median"] if floor else None,
        1.3,
        "x REQ/REP",
        at_most=True,
        detail=detail,
    )
    big = res.find("batch 1000", role="tiger")
    rules = res.find("batch 1000", RULES)
    res.target(
        "insert_many at least 250,000 records/s in batches of 1000",
        big["median"] if big else None,
        250_000,
        "records/s",
        at_most=False,
        detail=f"the work on its critical path alone, in one process with no socket ({RULES}): {rules['median']:,.0f} records/s"
        if rules
        else "",
    )
    return res
