"""feed: change-feed delivery lag (insert acknowledged in A -> yielded by a feed in B) vs the replica lag, 4 replicas."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from bench._common import Children, Result, make_records, percentile, receive_all, send, step, summary
from bench._peers import Context
from bench.fanout import _paced_inserts

NAME = "feed"
REPLICAS = 4
# how each replica process sees a record arrive: the reference first (fanout's replica lag), then the feeds
WAYS = {
    "wait_for": "replica (wait_for)",
    "feed": "feed (for change in table.watch())",
    "async feed": "feed (async for, asyncio)",
}
REFERENCE = WAYS["wait_for"]
QUANTILES = list(range(1, 100))


def run(ctx: Context) -> Result:
    rounds = ctx.pick(10, 2)  # the ways alternate round by round: a burst of noise on the shared machine lands on all
    per_round = ctx.pick(300, 60)  # records per round and way
    wakes = ctx.pick(1000, 100)  # wake-ups of each kind, the floor
    pace = 0.001  # as fanout's
    res = Result(
        NAME,
        f"change-feed delivery lag (insert acknowledged in process A -> yielded by a feed in replica process B) vs the "
        f"replica lag, {REPLICAS} replica processes",
        f"A (this process, a tiger client) inserts records one at a time, sleeping {pace * 1000:g} ms between them, and "
        f"stamps time.monotonic_ns() when each insert returns (acknowledged), as in the fanout scenario. {REPLICAS} "
        "replica processes B (python -m bench._worker feed_replica, each a tiger client) stamp time.monotonic_ns() when "
        "each record reaches them, one of three ways, told before each batch of records: Table.wait_for(id) for every id "
        "in order (fanout's replica lag: the reference), the next change of a blocking feed (for change in "
        "table.watch()), or of the same feed read with async for inside a running asyncio loop (plain asyncio, "
        "asyncio.run). A feed is opened, and its loop running, before the replica says it is ready; A starts inserting "
        "once all are. CLOCK_MONOTONIC is one clock for every process on the machine. lag = B's stamp - A's stamp, over "
        f"every record and every replica (p50/p99/max); a negative lag means B had the change before A's reply arrived "
        "(the writer publishes before it answers). 'from the insert call' is B's stamp - the time A called insert. "
        f"The ways alternate in {rounds} rounds of {per_round} records each (the order rotated each round; paired: the "
        "machine is shared and noisy), the same replica processes throughout. The floor (in this process, after the "
        f"rounds, the writer and the replicas stopped): {wakes} times, {pace * 1000:g} ms apart, a thread stamps "
        "time.monotonic_ns() and wakes a reader the way the replica's thread wakes a feed's: a thread waiting on a "
        "threading.Condition (notify_all), then an asyncio task awaiting a future (loop.call_soon_threadsafe); the "
        "reader stamps when it runs. It is the least a reader woken by another thread waits, each way.",
        params={"replicas": REPLICAS, "rounds": rounds, "records_per_round": per_round, "pace_s": pace, "ways": list(WAYS)},
    )
    import tiger

    lags: dict[str, list[float]] = {way: [] for way in WAYS}
    from_call: dict[str, list[float]] = {way: [] for way in WAYS}
    round_p50: dict[str, list[float]] = {way: [] for way in WAYS}
    with tiger.serve() as server, tiger.connect(server.url) as client:
        table = client.table("plans", prefix="plan")
        res.params["url"] = server.url.split(":")[0]
        with Children() as children:
            with step(NAME, f"start {REPLICAS} replica processes"):
                procs = [children.worker("feed_replica", server.url) for _ in range(REPLICAS)]
                receive_all(procs, 120.0)
            order = list(WAYS)
            for r in range(rounds):
                ways = order[r % len(order) :] + order[: r % len(order)]
                with step(NAME, f"round {r + 1}/{rounds}: {per_round} paced inserts each way ({', '.join(ways)})"):
                    for way in ways:
                        prefix = f"plan_r{r}w{order.index(way)}x"
                        for proc in procs:
                            send(proc, {"how": way, "prefix": prefix, "count": per_round})
                        receive_all(procs, 60.0)  # each is ready: its feed open
                        records = make_records(per_round, tag="f", start=r * per_round)
                        start, ack = _paced_inserts(table, records, prefix, pace)
                        seen = [m["seen"] for m in receive_all(procs, 120.0)]
                        lag = [(s[i] - ack[i]) / 1000 for s in seen for i in range(per_round)]
                        lags[way] += lag
                        from_call[way] += [(s[i] - start[i]) / 1000 for s in seen for i in range(per_round)]
                        round_p50[way].append(summary(lag)["median"])
    with step(NAME, f"floor: {wakes} wake-ups of a waiting thread, then of an awaiting asyncio task, by another thread"):
        woken, wake_cpu = _wake_floor(wakes, pace)
    case, from_case = f"lag, {REPLICAS} replicas", f"lag from the insert call, {REPLICAS} replicas"
    for way, subject in WAYS.items():
        before = sum(v < 0 for v in lags[way]) / len(lags[way])
        res.row(case, subject, "tiger", "us", summary(lags[way]), round_p50=round_p50[way], before_ack=before)
    for way, subject in WAYS.items():
        res.row(from_case, subject, "tiger", "us", summary(from_call[way]))
    for subject, values in woken.items():
        res.row(WAKE, subject, "floor", "us", summary(values))
    for subject, value in wake_cpu.items():
        res.row(WAKE_CPU, subject, "floor", "us", value)
    res.series["lag_quantiles_us"] = {
        WAYS[way]: [percentile(sorted(values), q) for q in QUANTILES] for way, values in lags.items()
    }
    res.series["quantiles"] = QUANTILES
    res.series["round_p50_us"] = {WAYS[way]: values for way, values in round_p50.items()}

    reference, reference_from = res.find(case, REFERENCE), res.find(from_case, REFERENCE)
    assert reference is not None and reference_from is not None
    res.notes.append(
        f"The lag from acknowledgement is bimodal around 0: B had the change before A's reply arrived for "
        f"{reference['before_ack']:.0%} of the records ({REFERENCE}), after it for the rest, so its median falls "
        "between the two modes, where it moves by a hundred microseconds with the share that comes first, and may be "
        "negative: a ratio of two such medians does not measure a delay. The p50 targets are therefore evaluated on "
        "the lag from the insert call (always positive: A's call, the writer, the publication, B), the p99 targets on "
        "the lag from acknowledgement, as the issue states them."
    )
    floor, floor_async = res.find(WAKE, WAKE_THREAD), res.find(WAKE, WAKE_TASK)
    assert floor is not None and floor_async is not None
    for way in ("feed", "async feed"):
        row, row_from = res.find(case, WAYS[way]), res.find(from_case, WAYS[way])
        assert row is not None and row_from is not None
        wake = f"the wake-up floor: a waiting thread {floor['median']:.0f} us (p99 {floor['p99']:.0f})"
        if way == "async feed":
            cpu_thread, cpu_task = res.find(WAKE_CPU, WAKE_THREAD), res.find(WAKE_CPU, WAKE_TASK)
            assert cpu_thread is not None and cpu_task is not None
            wake += (
                f", an awaiting task {floor_async['median']:.0f} us (p99 {floor_async['p99']:.0f}); CPU of the woken "
                f"reader per wake-up: a thread {cpu_thread['median']:.0f} us, a task {cpu_task['median']:.0f} us, in "
                f"each of the {REPLICAS} replica processes sharing 2 cores"
            )
        p50 = (
            f"p50 lag from the insert call within 1.2x the replica's ({REPLICAS} replicas)",
            row_from["median"] / reference_from["median"],
            f"{row_from['median']:.0f} vs {reference_from['median']:.0f} us; from acknowledgement {row['median']:.0f} vs "
            f"{reference['median']:.0f} us (B first for {row['before_ack']:.0%} vs {reference['before_ack']:.0%}): no ratio",
        )
        p99 = (
            f"p99 lag within 1.2x the replica lag's ({REPLICAS} replicas)",
            row["p99"] / reference["p99"],
            f"{row['p99']:.0f} vs {reference['p99']:.0f} us; {wake}",
        )
        for name, ratio, detail in (p50, p99):
            res.target(f"{WAYS[way]}: {name}", ratio, 1.2, "x replica lag", at_most=True, detail=detail, issue=13)
    return res


WAKE = "wake-up by another thread"
WAKE_CPU = "CPU of the woken reader per wake-up"
WAKE_THREAD = "threading.Condition: a waiting thread"
WAKE_TASK = "loop.call_soon_threadsafe: a task awaiting a future"


def _wake_floor(samples: int, pace: float) -> tuple[dict[str, list[float]], dict[str, float]]:
    """us from another thread's stamp to the woken reader's, ``samples`` times ``pace`` s apart: a thread waiting on
    a Condition (a blocking feed's reader), then an asyncio task awaiting a future the other thread resolves with
    call_soon_threadsafe (an async feed's): the least a reader woken by the replica's thread waits, each way; and
    the CPU the woken thread spends per wake-up (time.thread_time), each way."""
    import asyncio

    clock = time.monotonic_ns
    cond = threading.Condition()
    sent: deque[int] = deque()
    woken: list[float] = []

    cpu: dict[str, float] = {}  # us of the woken thread's CPU per wake-up, each way

    def read() -> None:
        started = time.thread_time()
        for _ in range(samples):
            with cond:
                while not sent:
                    cond.wait()
                stamp = sent.popleft()
            woken.append((clock() - stamp) / 1000)
        cpu[WAKE_THREAD] = (time.thread_time() - started) / samples * 1e6

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for _ in range(samples):
        with cond:
            sent.append(clock())
            cond.notify_all()
        time.sleep(pace)
    reader.join(30.0)

    async def read_async() -> list[float]:
        loop = asyncio.get_running_loop()
        lock = threading.Lock()
        stamps: deque[int] = deque()
        waiters: list[asyncio.Future[None]] = []
        out: list[float] = []

        def write() -> None:
            for _ in range(samples):
                with lock:
                    stamps.append(clock())
                    for future in waiters:
                        loop.call_soon_threadsafe(_resolve, future)
                    waiters.clear()
                time.sleep(pace)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        started = time.thread_time()
        for _ in range(samples):
            while True:
                with lock:
                    if stamps:
                        stamp = stamps.popleft()
                        break
                    future = loop.create_future()
                    waiters.append(future)
                await future
            out.append((clock() - stamp) / 1000)
        cpu[WAKE_TASK] = (time.thread_time() - started) / samples * 1e6
        await asyncio.to_thread(writer.join, 30.0)
        return out

    return {WAKE_THREAD: woken, WAKE_TASK: asyncio.run(read_async())}, cpu


def _resolve(future: Any) -> None:
    if not future.done():
        future.set_result(None)
