"""read: ns per read of an existing id and of a missing id, tiger's replica vs the floor and each peer."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from bench._common import BATCH_NS, TIMING_METHOD, Result, Sampler, empty_loop, make_records, missing_ids, shuffled, step
from bench._peers import PEERS, Client, Context, PlainDict, Subject, Tiger, opened, skip_failed

NAME = "read"


def run(ctx: Context) -> Result:
    records_n = ctx.pick(10_000, 2_000)
    rounds = ctx.pick(40, 6)
    batches = ctx.pick(50, 50)  # per round: short rounds, so a burst of noise hits every subject alike
    budget = ctx.pick(0.04, 0.05)  # seconds per round and case, at most
    records = make_records(records_n, tag="r")
    # equal to the stored ids but not the same objects, as a lookup key from elsewhere would be
    # (a dict compares an identical key by address and skips the string compare)
    hits = [_copy(k) for k in shuffled([r["id"] for r in records])]
    misses = missing_ids(len(hits))
    res = Result(
        NAME,
        "ns per read of one ~10-field record (hit: an existing id; miss: an absent id)",
        TIMING_METHOD.format(batch_us=BATCH_NS // 1000),
        params={
            "records": records_n,
            "rounds": rounds,
            "batches_per_round": batches,
            "budget_s_per_round": budget,
            "keys": "every id, shuffled (seed fixed), as new str objects equal to the stored ids",
        },
    )
    loop = empty_loop(hits, 200)
    res.params["empty_loop_ns"] = loop["median"]
    res.notes.append(
        f"An empty loop over the same ids costs {loop['median']:.1f} ns per item; "
        "it is included in every figure (as timeit does)."
    )
    res.notes.append("tiger: Table.get(id) on the local replica; dict: d[id] (hit) and d.get(id) (miss).")

    with ExitStack() as stack:
        ready: list[tuple[type[Subject], Subject, Client, Sampler, Sampler]] = []
        for cls in [Tiger, PlainDict, *PEERS]:
            got = stack.enter_context(opened(cls, ctx, res))
            if got is None:
                continue
            subject, client = got
            try:
                with step(NAME, f"{cls.name}: load {records_n} records"):
                    _load(cls, client, records, hits[0], misses[0])
                    hit = Sampler(client.read_stmt, client.read, hits)
                    miss = Sampler(client.miss_stmt, client.read, misses)
            except Exception as e:
                skip_failed(cls, res, e)
                continue
            ready.append((cls, subject, client, hit, miss))
        for r in range(rounds):
            with step(NAME, f"round {r + 1}/{rounds}: hits and misses, every subject in turn"):
                for _, _, _, hit, miss in ready:
                    hit.take(batches, budget)
                    miss.take(batches, budget)
        for cls, subject, client, hit, miss in ready:
            label = subject.label or cls.name
            res.row("hit", cls.name, cls.role, "ns", hit.summary(), label=label, stmt=client.read_stmt)
            res.row("miss", cls.name, cls.role, "ns", miss.summary(), label=label, stmt=client.miss_stmt)

    tiger_hit = res.find("hit", role="tiger")
    floor = res.find("hit", "dict")
    peers = [r for r in res.rows if r["case"] == "hit" and r["role"] == "peer"]
    assert tiger_hit is not None
    res.target(
        "get median within 5x of a bare dict[key] lookup",
        tiger_hit["median"] / floor["median"] if floor else None,
        5.0,
        "x dict",
        at_most=True,
        detail=f"tiger {tiger_hit['median']:.0f} ns, dict[key] {floor['median']:.0f} ns" if floor else "",
    )
    fastest = min(peers, key=lambda r: r["median"]) if peers else None
    res.target(
        "get median at least 3x faster than the fastest peer",
        fastest["median"] / tiger_hit["median"] if fastest else None,
        3.0,
        "x faster",
        at_most=False,
        detail=f"fastest peer {fastest['subject']} {fastest['median']:.0f} ns, tiger {tiger_hit['median']:.0f} ns"
        if fastest
        else "no peer ran",
    )
    return res


def _load(cls: type[Subject], client: Client, records: list[dict[str, Any]], hit: str, miss: str) -> None:
    """Write every record, then check one is there and a missing id is not."""
    for i in range(0, len(records), 1000):
        client.write_many(records[i : i + 1000])
    probe = client.lookup(hit)
    if probe is None or probe["amount"] != next(r for r in records if r["id"] == hit)["amount"]:
        raise RuntimeError(f"{cls.name} does not hold what was written")
    if client.lookup(miss) is not None:
        raise RuntimeError(f"{cls.name} returned a record for a missing id")


def _copy(key: str) -> str:
    """An equal str that is a different object."""
    return (key + "_")[:-1]
