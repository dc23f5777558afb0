"""batch: writes/s of 100 mixed writes over 3 tables as single calls vs one client.batch(); also 10 and 1000."""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from bench._common import HIGHER, SEED, Result, make_record, step, summary
from bench._peers import Client, Context, Tiger, ZmqEcho, opened

NAME = "batch"
SIZES = (10, 100, 1000)
TARGET_SIZE = 100  # issue 12's target is on batches of 100
TABLES = (("plans", "plan"), ("prices", "price"), ("events", "evt"))  # (name, prefix)
SINGLE, BATCH = "single calls", "client.batch()"

# one write: (Table / BatchTable method, index in TABLES, its arguments)
Op = tuple[str, int, tuple[Any, ...]]


def mix_counts(size: int) -> tuple[int, int, int]:
    """Inserts, updates, deletes in a unit of ``size`` writes: 60%, 30%, 10%."""
    inserts, updates = round(size * 0.6), round(size * 0.3)
    return inserts, updates, size - inserts - updates


class Mix:
    """Units of ``size`` mixed writes over the 3 tables, one after another, each needing the one before it applied.

    A unit: 60% inserts of fresh records (in turn plans, prices, events), 30% updates of records the previous unit
    inserted (so a third per table), 10% deletes of others of them; in one shuffled order, the same for every unit
    of this size. ``seed()`` is the unit before the first (its inserts only)."""

    def __init__(self, size: int, tag: str) -> None:
        self.size = size
        self.tag = tag
        self._rng = random.Random(f"{SEED}-{NAME}-{tag}")
        self._count = 0
        self._previous: list[tuple[int, str]] = []  # (table, id) inserted by the last unit made
        inserts, updates, deletes = mix_counts(size)
        kinds = ["insert"] * inserts + ["update"] * updates + ["delete"] * deletes
        random.Random(f"{SEED}-{NAME}-order-{size}").shuffle(kinds)
        self.kinds = kinds

    def seed(self) -> list[Op]:
        inserts = self._inserts()
        self._previous = [(t, record["id"]) for t, record in inserts]
        return [("insert", t, (record,)) for t, record in inserts]

    def next(self) -> list[Op]:
        older = iter(self._previous)  # each used once: updates and deletes never meet the same record
        inserts = self._inserts()
        self._previous = [(t, record["id"]) for t, record in inserts]
        fresh = iter(inserts)
        ops: list[Op] = []
        for kind in self.kinds:
            if kind == "insert":
                t, record = next(fresh)
                ops.append(("insert", t, (record,)))
            elif kind == "update":
                t, id = next(older)
                ops.append(("update", t, (id, self._changes(t))))
            else:
                t, id = next(older)
                ops.append(("delete", t, (id,)))
        return ops

    def _inserts(self) -> list[tuple[int, dict[str, Any]]]:
        inserts = mix_counts(self.size)[0]
        return [(i % len(TABLES), self._record(i % len(TABLES))) for i in range(inserts)]

    def _record(self, t: int) -> dict[str, Any]:
        """A fresh record of table ``t``: a plan (about 250 bytes as msgpack), a price or an event (about 150)."""
        n, rng = self._count, self._rng
        self._count += 1
        if t == 0:
            return make_record(n, rng, self.tag)
        if t == 1:
            return {
                "id": f"price_{self.tag}{n:016x}",
                "object": "price",
                "active": True,
                "currency": rng.choice(("usd", "eur", "gbp")),
                "unit_amount": rng.randrange(100, 100_000),
                "product": f"prod_{rng.getrandbits(56):014x}",
                "recurring": {"interval": rng.choice(("month", "year")), "interval_count": 1},
                "created": 1_700_000_000 + n,
            }
        return {
            "id": f"evt_{self.tag}{n:016x}",
            "object": "event",
            "type": rng.choice(("plan.created", "price.updated", "invoice.paid")),
            "data": {"object": f"plan_{self.tag}{n:016x}", "previous_attributes": {"amount": rng.randrange(100, 100_000)}},
            "pending_webhooks": rng.randrange(0, 3),
            "created": 1_700_000_000 + n,
        }

    def _changes(self, t: int) -> dict[str, Any]:
        rng = self._rng
        if t == 0:
            return {"amount": rng.randrange(100, 100_000), "active": rng.random() < 0.9}
        if t == 1:
            return {"unit_amount": rng.randrange(100, 100_000), "active": rng.random() < 0.9}
        return {"pending_webhooks": rng.randrange(0, 3)}


# -- the subjects: how a unit of writes is sent ----------------------------------------------------


def tiger_single(client: Any) -> Callable[[list[Op]], None]:
    """Each write as its own call: Table.insert / update / delete (read-your-writes, each)."""
    tables = [client.table(name, prefix) for name, prefix in TABLES]

    def send(ops: list[Op]) -> None:
        for kind, t, args in ops:
            getattr(tables[t], kind)(*args)

    return send


def tiger_batch(client: Any) -> Callable[[list[Op]], None]:
    """The same writes in one ``with client.batch() as b:`` block (its table handles made in the block, as a user
    would); the clock stops when the block has returned (the batch applied, the local replica holding it)."""

    def send(ops: list[Op]) -> None:
        with client.batch() as b:
            tables = [b.table(name, prefix) for name, prefix in TABLES]
            for kind, t, args in ops:
                getattr(tables[t], kind)(*args)

    return send


def _request(kind: str, t: int, args: tuple[Any, ...], req_id: int) -> Any:
    from tiger import _protocol as p

    name, prefix = TABLES[t]
    if kind == "insert":
        return p.Insert(req_id, name, "global", prefix, [args[0]], False)
    if kind == "update":
        return p.Update(req_id, name, "global", args[0], dict(args[1]))
    return p.Remove(req_id, name, "global", args[0])


def wire_bytes(ops: Sequence[Op], batched: bool) -> list[bytes]:
    """The bytes tiger's client sends for ``ops``: one call per write, or one BatchWrite (the floor sends these)."""
    from tiger import _protocol as p

    client_id, expires = secrets.token_hex(8), time.time() + 5.0
    if batched:
        requests = [p.BatchWrite(1, [_request(kind, t, args, 0) for kind, t, args in ops])]
    else:
        requests = [_request(kind, t, args, i + 1) for i, (kind, t, args) in enumerate(ops)]
    return [p.encode_call(p.Call(client_id, expires, r)) for r in requests]


def _wire_units(mix: Mix, batched: bool) -> Callable[[], list[bytes]]:
    return lambda: wire_bytes(mix.next(), batched)


def echo(client: Client) -> Callable[[list[bytes]], None]:
    """The floor: one raw REQ/REP round trip per message, to a peer that echoes it and does nothing else."""
    round_trip = client.write

    def send(messages: list[bytes]) -> None:
        for m in messages:
            round_trip(m)  # type: ignore[arg-type]

    return send


class Runner:
    """Units of ``size`` writes sent one way, each unit timed alone (time.perf_counter_ns), over rounds."""

    def __init__(self, size: int, send: Callable[[Any], None], make: Callable[[], Any]) -> None:
        self.size = size
        self.send = send
        self.make = make
        self.seconds: list[float] = []
        self.send(self.make())  # warm-up, not counted

    def take(self, writes: int, budget: float) -> None:
        """One round: units until ``writes`` writes were sent or ``budget`` s went by (at least 3 units); each
        unit's writes are made (fresh records, their bytes) before its clock starts."""
        deadline = time.monotonic() + budget
        for i in range(max(3, writes // self.size)):
            work = self.make()
            t0 = time.perf_counter_ns()
            self.send(work)
            self.seconds.append((time.perf_counter_ns() - t0) / 1e9)
            if i >= 2 and time.monotonic() > deadline:
                break

    def stats(self) -> dict[str, Any]:
        """writes/s of the median unit, with each unit's ms (median/p99/max) and the unit count."""
        unit_ms = summary([s * 1000 for s in self.seconds])
        return {"median": self.size / (unit_ms["median"] / 1000), "unit_ms": unit_ms, "units": len(self.seconds)}


def run(ctx: Context) -> Result:
    rounds = ctx.pick(5, 2)
    writes = ctx.pick(3_000, 300)  # per round, size and way of sending, at most
    budget = ctx.pick(0.4, 0.05)  # seconds per round, size and way of sending, at most
    inserts, updates, deletes = mix_counts(TARGET_SIZE)
    res = Result(
        NAME,
        f"writes/s of {TARGET_SIZE} mixed writes over 3 tables: one call each vs one client.batch() (and batches of "
        f"{', '.join(str(s) for s in SIZES if s != TARGET_SIZE)})",
        f"One tiger client in the bench process, a writer from tiger.serve() (memory only). A unit of N writes (N in "
        f"{', '.join(map(str, SIZES))}) over 3 tables (plans, prices, events): {inserts}% inserts of fresh records "
        f"(in turn to each table; a plan is about 250 bytes as msgpack, a price or an event about 150), {updates}% "
        f"updates (2 fields) of records the previous unit inserted, {deletes}% deletes of others of them, in one "
        "shuffled order (the same for every unit of that size). Each unit is sent either as N single calls "
        "(Table.insert/update/delete, each returning once applied and in the local replica) or as one "
        "`with client.batch() as b:` block (the 3 b.table() handles made inside it, the clock stopping when the block "
        "has returned: applied and in the local replica). Both ways of one size draw units from one chain, so each "
        "unit's updates and deletes find the records the unit before inserted. Each unit is timed alone with "
        "time.perf_counter_ns, its records made before the clock starts (GC left on, as a user has it); writes/s = N "
        "/ the median unit's time. The floor: a raw pyzmq REQ/REP round trip, to an echo peer in its own process, of "
        "the very bytes tiger's client sends: N messages (one per write), or one BatchWrite of the N. Rounds: for "
        f"each size, single calls, then the batch, then the two floors, {rounds} times; at most {writes:,} writes or "
        f"{budget:g} s (at least 3 units) per round, size and way; one unit of each, first, as warm-up.",
        params={
            "sizes": list(SIZES),
            "mix_percent": {"insert": inserts, "update": updates, "delete": deletes},
            "tables": [name for name, _ in TABLES],
            "rounds": rounds,
            "writes_per_round_at_most": writes,
            "budget_s_per_round": budget,
        },
    )
    with ExitStack() as stack:
        got = stack.enter_context(opened(Tiger, ctx, res))
        assert got is not None  # tiger failing to start stops the run
        tiger, tiger_client = got
        client = tiger_client.client  # type: ignore[attr-defined]
        floor = stack.enter_context(opened(ZmqEcho, ctx, res))
        runners: dict[int, dict[str, Runner]] = {}
        with step(NAME, "warm-up: one unit of each size, each way"):
            for size in SIZES:
                mix = Mix(size, f"s{size}x")
                single, batch = tiger_single(client), tiger_batch(client)
                single(mix.seed())  # the records the first unit updates and deletes
                runners[size] = {SINGLE: Runner(size, single, mix.next), BATCH: Runner(size, batch, mix.next)}
                if floor is not None:
                    bytes_mix = Mix(size, f"f{size}x")
                    bytes_mix.seed()
                    one_each = echo(floor[1])
                    runners[size][f"{ZmqEcho.name}, {SINGLE}"] = Runner(size, one_each, _wire_units(bytes_mix, False))
                    runners[size][f"{ZmqEcho.name}, batch"] = Runner(size, one_each, _wire_units(bytes_mix, True))
        for r in range(rounds):
            with step(NAME, f"round {r + 1}/{rounds}: sizes {', '.join(map(str, SIZES))}, each way in turn"):
                for size in SIZES:
                    for runner in runners[size].values():
                        runner.take(writes, budget)
        _report(res, runners, tiger.label, floor[0].label if floor is not None else "")
        res.params["records_at_end"] = sum(len(client.table(name)) for name, _ in TABLES)
    return res


def _report(res: Result, runners: dict[int, dict[str, Runner]], tiger_label: str, floor_label: str) -> None:
    series: dict[str, dict[str, float]] = {}
    for size, ways in runners.items():
        single, batch = ways[SINGLE], ways[BATCH]
        floor_single, floor_batch = ways.get(f"{ZmqEcho.name}, {SINGLE}"), ways.get(f"{ZmqEcho.name}, batch")
        rows = (
            (f"{size} writes, one call each", "tiger", single, floor_single),
            (f"{size} writes in one client.batch()", "tiger", batch, floor_batch),
        )
        for case, subject, runner, floor in rows:
            label = "Table.insert/update/delete, one call per write" if runner is single else "one with client.batch() block"
            res.row(case, subject, "tiger", "writes/s", runner.stats(), better=HIGHER, label=f"{tiger_label}: {label}")
            if floor is not None:
                res.row(case, ZmqEcho.name, "floor", "writes/s", floor.stats(), better=HIGHER, label=floor_label)
        ratio = batch.stats()["median"] / single.stats()["median"]
        res.row(f"{size} writes: client.batch() / single calls", "tiger", "tiger", "x", ratio, better=HIGHER)
        if floor_single is not None and floor_batch is not None:
            floor_ratio = floor_batch.stats()["median"] / floor_single.stats()["median"]
            res.row(f"{size} writes: client.batch() / single calls", ZmqEcho.name, "floor", "x", floor_ratio, better=HIGHER)
        for name, runner in ways.items():
            series.setdefault(name, {})[str(size)] = runner.stats()["median"]
    res.series["writes_per_s"] = series
    one_each, batched = runners[TARGET_SIZE][SINGLE].stats(), runners[TARGET_SIZE][BATCH].stats()
    res.notes.append(
        f"{TARGET_SIZE} writes took {one_each['unit_ms']['median']:.2f} ms as single calls (median unit; p99 "
        f"{one_each['unit_ms']['p99']:.2f} ms) and {batched['unit_ms']['median']:.2f} ms in one client.batch() (p99 "
        f"{batched['unit_ms']['p99']:.2f} ms)."
    )
    single, batch = one_each["median"], batched["median"]
    floors = series.get(f"{ZmqEcho.name}, {SINGLE}"), series.get(f"{ZmqEcho.name}, batch")
    detail = f"{batch:,.0f} vs {single:,.0f} writes/s"
    if floors[0] and floors[1]:
        f1, fb = floors[0][str(TARGET_SIZE)], floors[1][str(TARGET_SIZE)]
        detail += f"; the REQ/REP floor: {fb / f1:.1f}x ({fb:,.0f} vs {f1:,.0f} writes/s)"
    res.target(
        f"client.batch() of {TARGET_SIZE} mixed writes over 3 tables: at least 10x the writes/s of the same writes "
        "as single calls",
        batch / single,
        10.0,
        "x single calls",
        at_most=False,
        detail=detail,
        issue=12,
    )
