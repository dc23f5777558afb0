"""aio: us per single insert (read-your-writes) awaited with tiger.aio vs the blocking Table.insert, paired rounds,
with the DEALER round trip each way of waiting allows as floors."""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import Children, Result, fresh_records, receive, step, summary
from bench._peers import Context, tiger_insert_bytes

NAME = "aio"
BLOCKING, ASYNCIO, RATIO, DIFFERENCE = "blocking", "asyncio", "asyncio / blocking", "asyncio - blocking"
TIGER = "tiger: Table.insert"
TIGER_AIO = "tiger.aio: await AsyncTable.insert"
FLOOR = "pyzmq DEALER: send, poll, recv (as tiger's client)"
FLOOR_AIO = "pyzmq DEALER, its FD watched by the loop: send, await readable, recv (as tiger.aio)"
FLOOR_AIO_RECV = "pyzmq asyncio DEALER (zmq.asyncio): await send, recv"


class _Subject:
    """One way of doing a single insert (or its round trip), timed op by op in rounds."""

    def __init__(
        self,
        name: str,
        case: str,
        role: str,
        make: Callable[[], Any],
        call: Callable[[Any], Any] | None = None,
        acall: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> None:
        self.name, self.case, self.role = name, case, role
        self.make = make  # one fresh item (a record, or the bytes tiger sends for it)
        self.call, self.acall = call, acall
        self.us: list[float] = []
        self.round_medians: list[float] = []

    async def take(self, ops: int, warmup: int) -> None:
        """One round: ``warmup`` uncounted ops, then ``ops`` ops, each timed alone with perf_counter_ns, GC off."""
        items = [self.make() for _ in range(warmup + ops)]  # made before the clock starts
        clock = time.perf_counter_ns
        ns: list[int] = []
        collecting = gc.isenabled()
        gc.disable()
        try:
            if self.acall is not None:
                acall = self.acall
                for item in items:
                    t0 = clock()
                    await acall(item)
                    ns.append(clock() - t0)
            else:
                assert self.call is not None
                call = self.call
                for item in items:
                    t0 = clock()
                    call(item)
                    ns.append(clock() - t0)
        finally:
            if collecting:
                gc.enable()
        counted = [v / 1000 for v in ns[warmup:]]
        self.us += counted
        self.round_medians.append(statistics.median(counted))


def run(ctx: Context) -> Result:
    rounds = ctx.pick(8, 2)
    ops = ctx.pick(300, 100)  # single inserts per round and subject
    res = Result(
        NAME,
        "us per single insert (read-your-writes) awaited with tiger.aio vs the blocking Table.insert, paired",
        "One process, one tiger client (tiger.connect) and an async client over its connection "
        "(tiger.aio.AsyncClient.sharing(client): its own command socket, the same replica, so the process "
        "holds one replica as any process does; a second client would have a second replica, which applies every write "
        "of the other subject and slows both). Everything runs inside one running asyncio event loop (plain asyncio, "
        "asyncio.run: no uvloop); the blocking calls are made from it too. Each op inserts a fresh record (the same "
        "sequence of records for both, each with a new id), is timed alone with time.perf_counter_ns (ops take over 50 "
        "us) with GC off during the round, and returns once the local replica holds the record. The subjects alternate "
        f"in {rounds} rounds of {ops} ops (the order rotated each round; paired: the machine is shared and noisy), "
        "after uncounted warm-up ops (3 in the first round, 1 in the others). Floors: a raw pyzmq DEALER round trip of "
        "the very bytes tiger's client sends for each insert to a ROUTER echo in its own process, waited for the way "
        "tiger's blocking client waits (send, poll, recv NOBLOCK), the way tiger.aio does (send NOBLOCK, await the "
        "socket's FD, watched by the loop with add_reader, showing ZMQ_EVENTS POLLIN, recv NOBLOCK), and through "
        "pyzmq's own asyncio layer (zmq.asyncio: await send, await recv): the least each way of waiting costs. "
        "median/p99/max over every timed op; 'asyncio / blocking' is the ratio of the medians.",
        params={"rounds": rounds, "ops_per_round": ops, "event_loop": "asyncio (default selector loop)"},
    )
    import tiger

    with tiger.serve() as server, tiger.connect(server.url, timeout=30.0) as client, Children() as children:
        res.params["url"] = server.url.split(":")[0]
        echo = children.worker("echo", f"ipc://{ctx.tmp}/echo", "ROUTER")
        echo_url = receive(echo, 20.0)["url"]
        asyncio.run(_measure(res, client, server.url, echo_url, rounds, ops))

    def median(case: str, subject: str) -> float:
        row = res.find(case, subject)
        assert row is not None
        return float(row["median"])

    blocking, awaited = res.find(BLOCKING, TIGER), res.find(ASYNCIO, TIGER_AIO)
    assert blocking is not None and awaited is not None
    res.target(
        "tiger.aio single insert median within 1.2x the blocking Table.insert's",
        median(RATIO, TIGER_AIO),
        1.2,
        "x blocking",
        at_most=True,
        detail=(
            f"tiger.aio {awaited['median']:.0f} us (p99 {awaited['p99']:.0f}), blocking {blocking['median']:.0f} us "
            f"(p99 {blocking['p99']:.0f}): awaiting adds {median(DIFFERENCE, TIGER_AIO):.0f} us, 1.2x allows "
            f"{0.2 * blocking['median']:.0f}. The DEALER round trip floor: awaited as tiger.aio does (its FD "
            f"watched by the loop), {median(ASYNCIO, FLOOR_AIO):.0f} us = {median(RATIO, FLOOR_AIO):.2f}x the blocking "
            f"{median(BLOCKING, FLOOR):.0f} us (+{median(DIFFERENCE, FLOOR_AIO):.0f} us); through zmq.asyncio "
            f"{median(RATIO, FLOOR_AIO_RECV):.2f}x (+{median(DIFFERENCE, FLOOR_AIO_RECV):.0f} us)"
        ),
        issue=13,
    )
    return res


async def _measure(res: Result, client: Any, url: str, echo_url: str, rounds: int, ops: int) -> None:
    import zmq
    import zmq.asyncio

    import tiger.aio
    from tiger.aio import _AwaitedSocket

    aclient = tiger.aio.AsyncClient.sharing(client)
    ctx = zmq.Context()
    actx = zmq.asyncio.Context.shadow(ctx)
    dealer, wdealer, adealer = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER), actx.socket(zmq.DEALER)
    watched = _AwaitedSocket(wdealer)
    try:
        for sock in (dealer, wdealer, adealer):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(echo_url)
        table = client.table("plans", prefix="plan")
        atable = aclient.table("plans", prefix="plan")
        # the same records for each subject, in the same order; ids of the same length, one prefix each
        records = {name: fresh_records(f"plan_a{i}", tag="a") for i, name in enumerate((TIGER, TIGER_AIO, "floors"))}
        floor_bytes = records["floors"]

        def payload() -> bytes:
            return tiger_insert_bytes([floor_bytes()])

        def round_trip(data: bytes) -> None:
            dealer.send(data)
            dealer.poll(5000, zmq.POLLIN)
            dealer.recv(zmq.NOBLOCK)

        async def around_trip_watched(data: bytes) -> None:
            wdealer.send(data, zmq.NOBLOCK)  # as tiger.aio queues a call: never waiting for room
            await watched.recv(5.0)

        async def around_trip(data: bytes) -> None:
            await adealer.send(data)
            await adealer.recv()

        subjects = [
            _Subject(TIGER, BLOCKING, "tiger", records[TIGER], call=table.insert),
            _Subject(TIGER_AIO, ASYNCIO, "tiger", records[TIGER_AIO], acall=atable.insert),
            _Subject(FLOOR, BLOCKING, "floor", payload, call=round_trip),
            _Subject(FLOOR_AIO, ASYNCIO, "floor", payload, acall=around_trip_watched),
            _Subject(FLOOR_AIO_RECV, ASYNCIO, "floor", payload, acall=around_trip),
        ]
        for r in range(rounds):
            order = subjects[r % len(subjects) :] + subjects[: r % len(subjects)]
            with step(NAME, f"round {r + 1}/{rounds}: {ops} single inserts (or round trips) each, {len(subjects)} ways"):
                for subject in order:
                    await subject.take(ops, warmup=3 if r == 0 else 1)
        for subject in subjects:
            res.row(subject.case, subject.name, subject.role, "us", summary(subject.us), round_medians=subject.round_medians)
        pairs = ((TIGER_AIO, TIGER), (FLOOR_AIO, FLOOR), (FLOOR_AIO_RECV, FLOOR))
        by_name = {s.name: s for s in subjects}
        for awaited, blocking in pairs:
            a, b = by_name[awaited], by_name[blocking]
            res.row(
                RATIO,
                awaited,
                a.role,
                "x",
                statistics.median(a.us) / statistics.median(b.us),
                per_round=[x / y for x, y in zip(a.round_medians, b.round_medians, strict=True)],
            )
        for awaited, blocking in pairs:
            a, b = by_name[awaited], by_name[blocking]
            res.row(DIFFERENCE, awaited, a.role, "us", statistics.median(a.us) - statistics.median(b.us))
        res.series["round_medians_us"] = {s.name: s.round_medians for s in subjects}
        res.series["ratio_per_round"] = {
            awaited: [x / y for x, y in zip(by_name[awaited].round_medians, by_name[blocking].round_medians, strict=True)]
            for awaited, blocking in pairs
        }
    finally:
        dealer.close(linger=0)
        watched.close(linger=0)
        adealer.close(linger=0)
        ctx.term()
        await aclient.close()
