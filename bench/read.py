"""read: ns per read of an existing id and of a missing id, tiger's replica vs the floor and each peer."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from bench._common import BATCH_NS, TIMING_METHOD, Result, Sampler, empty_loop, make_records, missing_ids, shuffled, step
from bench._peers import PEERS, Client, Context, PlainDict, PythonMethod, Subject, Tiger, opened, skip_failed

NAME = "read"
READ_BATCH = 100  # ops per timed batch, the same for every subject (a batch's fixed cost weighs alike on all)
HOT = "hot hit"  # the same 100 ids read again and again: every cache warm


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
        "ns per read of one ~10-field record (hit: an existing id; miss: an absent id; hot hit: the same 100 ids again)",
        TIMING_METHOD.format(batch_us=BATCH_NS // 1000)
        + f" Here every subject's batch is {READ_BATCH} reads, after one uncounted batch per round; 'hit' and 'miss' "
        "go once through the ids per round at most (a read meets memory the other subjects' rounds since used), "
        f"'{HOT}' reads the same {READ_BATCH} ids in every batch (memory warm).",
        params={
            "records": records_n,
            "rounds": rounds,
            "batches_per_round": batches,
            "budget_s_per_round": budget,
            "keys": "every id, shuffled (seed fixed), as new str objects equal to the stored ids",
        },
    )
    loop = empty_loop(hits, 200, batch=READ_BATCH)
    res.params["empty_loop_ns"] = loop["median"]
    res.notes.append(
        f"An empty loop over the same ids costs {loop['median']:.1f} ns per item; "
        "it is included in every figure (as timeit does)."
    )
    res.notes.append(
        "tiger: Table.get(id) on the local replica; dict: d[id] (hit) and d.get(id) (miss); "
        "Python method: obj.get(id), a method whose body is one dict lookup (the floor of any read API that is a Python call)."
    )

    with ExitStack() as stack:
        ready: list[tuple[type[Subject], Subject, Client, dict[str, Sampler]]] = []
        for cls in [Tiger, PlainDict, PythonMethod, *PEERS]:
            got = stack.enter_context(opened(cls, ctx, res))
            if got is None:
                continue
            subject, client = got
            try:
                with step(NAME, f"{cls.name}: load {records_n} records"):
                    _load(cls, client, records, hits[0], misses[0])
                    own = [_copy(k) for k in hits]  # each subject its own key objects: no subject warms another's
                    samplers = {
                        "hit": Sampler(client.read_stmt, client.read, own, batch=READ_BATCH),
                        "miss": Sampler(client.miss_stmt, client.read, [_copy(k) for k in misses], batch=READ_BATCH),
                        HOT: Sampler(client.read_stmt, client.read, own[:READ_BATCH], batch=READ_BATCH, again=True),
                    }
            except Exception as e:
                skip_failed(cls, res, e)
                continue
            ready.append((cls, subject, client, samplers))
        for r in range(rounds):
            with step(NAME, f"round {r + 1}/{rounds}: hits, misses and hot hits, every subject in turn"):
                for _, _, _, samplers in ready[r % len(ready) :] + ready[: r % len(ready)]:  # each subject first in turn
                    for sampler in samplers.values():
                        sampler.take(batches, budget, warmup=1)
        for cls, subject, client, samplers in ready:
            label = subject.label or cls.name
            for case, sampler in samplers.items():
                stmt = client.miss_stmt if case == "miss" else client.read_stmt
                res.row(case, cls.name, cls.role, "ns", sampler.summary(), label=label, stmt=stmt)

    # Each target twice: memory warm ('hot hit': the reference figure, UltraDict about 0.36 us,
    # is UltraDict's warm read) and memory cold ('hit'), with the one-lookup method floor beside it.
    for case in (HOT, "hit"):
        label = f"({case})" if case == HOT else "(hit: memory cold)"
        tiger_row, floor = res.find(case, role="tiger"), res.find(case, PlainDict.name)
        assert tiger_row is not None
        res.target(
            f"get median within 5x of a bare dict[key] lookup {label}",
            tiger_row["median"] / floor["median"] if floor else None,
            5.0,
            "x dict",
            at_most=True,
            detail=f"tiger {tiger_row['median']:.0f} ns, dict[key] {floor['median']:.0f} ns" if floor else "no floor",
        )
        peers = [r for r in res.rows if r["case"] == case and r["role"] == "peer"]
        fastest = min(peers, key=lambda r: r["median"]) if peers else None
        detail = "no peer ran"
        if fastest:
            detail = f"fastest peer {fastest['subject']} {fastest['median']:.0f} ns, tiger {tiger_row['median']:.0f} ns"
            method = res.find(case, PythonMethod.name)
            if method:
                detail += (
                    f"; a Python method whose body is one dict lookup: {method['median']:.0f} ns, "
                    f"{fastest['median'] / method['median']:.2f}x faster than {fastest['subject']}"
                )
        res.target(
            f"get median at least 3x faster than the fastest peer {label}",
            fastest["median"] / tiger_row["median"] if fastest else None,
            3.0,
            "x faster",
            at_most=False,
            detail=detail,
        )
    return res


def _load(cls: type[Subject], client: Client, records: list[dict[str, Any]], hit: str, miss: str) -> None:
    """Write every record, then check one is there and a missing id is not.

    Each subject is given copies (its id str too), as any store holds its own: in-process subjects
    holding the same objects would warm each other's memory (the next one reading records the
    previous one just touched).
    """
    for i in range(0, len(records), 1000):
        client.write_many([{**r, "id": _copy(r["id"])} for r in records[i : i + 1000]])
    probe = client.lookup(hit)
    if probe is None or probe["amount"] != next(r for r in records if r["id"] == hit)["amount"]:
        raise RuntimeError(f"{cls.name} does not hold what was written")
    if client.lookup(miss) is not None:
        raise RuntimeError(f"{cls.name} returned a record for a missing id")


def _copy(key: str) -> str:
    """An equal str that is a different object."""
    return (key + "_")[:-1]
