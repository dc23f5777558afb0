"""Several client processes (multiprocessing, spawn) against one real writer."""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Callable
from typing import Any

import pytest

import tiger

SPAWN = multiprocessing.get_context("spawn")
DEADLINE = 60.0


def run_workers(target: Callable[..., None], args_per_worker: list[tuple[Any, ...]]) -> list[Any]:
    """Run one spawned process per args tuple; each puts its result on the queue (its first argument).

    Returns the results in worker order; asserts every worker exited with code 0.
    """
    results: Any = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(results, i, *args)) for i, args in enumerate(args_per_worker)]
    for proc in procs:
        proc.start()
    collected: dict[int, Any] = {}
    try:
        for _ in procs:
            index, result = results.get(timeout=DEADLINE)
            collected[index] = result
    except queue.Empty:
        pytest.fail(f"workers did not report within {DEADLINE}s: got {sorted(collected)}")
    finally:
        for proc in procs:
            proc.join(DEADLINE)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0] * len(procs)
    for index, result in collected.items():
        if isinstance(result, BaseException):
            raise AssertionError(f"worker {index} failed") from result
    return [collected[i] for i in range(len(procs))]


def _report(results: Any, index: int, body: Callable[[], Any]) -> None:
    try:
        results.put((index, body()))
    except BaseException as e:  # reported to the test, which raises it
        results.put((index, e))


# -- workers (module level: spawn imports them) -----------------------------------------


def read_your_writes(results: Any, index: int, url: str, ns: str, rounds: int) -> None:
    def body() -> int:
        with tiger.connect(url) as client, tiger.namespace(ns):
            plans = client.table("plans", prefix="plan")
            for i in range(rounds):
                plan = plans.insert({"worker": index, "i": i})
                assert plans[plan["id"]]["i"] == i, "own insert not visible at once"
                updated = plans.update(plan["id"], {"i": -i})
                assert plans[plan["id"]] == updated, "own update not visible at once"
            return plans.count()

    _report(results, index, body)


def update_own_field(results: Any, index: int, url: str, ns: str, rounds: int) -> None:
    def body() -> None:
        with tiger.connect(url) as client, tiger.namespace(ns):
            plans = client.table("plans", prefix="plan")
            for i in range(rounds):
                plans.update("plan_shared", {f"field_{index}": i})

    _report(results, index, body)


def create_race(results: Any, index: int, url: str, ns: str, ids: list[str], barrier: Any) -> None:
    def body() -> list[str]:
        won = []
        with tiger.connect(url) as client, tiger.namespace(ns):
            plans = client.table("plans", prefix="plan")
            for id in ids:
                barrier.wait(DEADLINE)
                try:
                    plans.create({"id": id, "winner": index})
                    won.append(id)
                except tiger.AlreadyExists:
                    pass
        return won

    _report(results, index, body)


def write_then_signal(results: Any, index: int, url: str, ns: str, acknowledged: Any) -> None:
    def body() -> None:
        with tiger.connect(url) as client, tiger.namespace(ns):
            plans = client.table("plans", prefix="plan")
            for i in range(100):
                plans.insert({"id": f"plan_{index}_{i}"})
                acknowledged.put((index, i))

    _report(results, index, body)


def sync_and_check(results: Any, index: int, url: str, ns: str, acknowledged: Any, expected: int) -> None:
    def body() -> int:
        checked = 0
        with tiger.connect(url) as client, tiger.namespace(ns):
            plans = client.table("plans", prefix="plan")
            while checked < expected:
                writer, i = acknowledged.get(timeout=DEADLINE)
                client.sync()
                assert f"plan_{writer}_{i}" in plans, f"plan_{writer}_{i} acknowledged but not visible after sync()"
                checked += 1
        return checked

    _report(results, index, body)


def join_and_summarise(results: Any, index: int, url: str, ns: str) -> None:
    def body() -> tuple[int, list[Any]]:
        with tiger.connect(url, timeout=30) as client, tiger.namespace(ns):
            plans = client.table("plans", prefix="plan")
            return plans.count(), [dict(r) for r in plans.list(limit=100).data]

    _report(results, index, body)


# -- tests -------------------------------------------------------------------------------


def test_read_your_writes_in_three_processes(tiger_url, client, ns):
    counts = run_workers(read_your_writes, [(tiger_url, ns, 200)] * 3)
    client.sync()
    assert client.table("plans").count() == 600
    assert all(200 <= c <= 600 for c in counts)


def test_concurrent_updates_of_different_fields_all_win(tiger_url, client, ns):
    plans = client.table("plans", prefix="plan")
    plans.insert({"id": "plan_shared"})
    run_workers(update_own_field, [(tiger_url, ns, 100)] * 3)
    client.sync()
    record = plans["plan_shared"]
    assert {k: record[k] for k in ("field_0", "field_1", "field_2")} == {"field_0": 99, "field_1": 99, "field_2": 99}


def test_concurrent_create_of_one_id_has_exactly_one_winner(tiger_url, client, ns):
    ids = [f"plan_race_{i}" for i in range(30)]
    barrier = SPAWN.Barrier(3)
    won = run_workers(create_race, [(tiger_url, ns, ids, barrier)] * 3)
    winners = [id for per_worker in won for id in per_worker]
    assert sorted(winners) == sorted(ids), "every id is created exactly once"
    client.sync()
    plans = client.table("plans")
    for index, per_worker in enumerate(won):
        for id in per_worker:
            assert plans[id]["winner"] == index


def test_acknowledged_writes_are_visible_in_other_processes_after_sync(tiger_url, ns):
    acknowledged = SPAWN.Queue()
    args: list[tuple[Any, ...]] = [(tiger_url, ns, acknowledged), (tiger_url, ns, acknowledged)]
    # two writers and one checker: the checker syncs after each acknowledgement it hears of
    results: Any = SPAWN.Queue()
    procs = [SPAWN.Process(target=write_then_signal, args=(results, i, *a)) for i, a in enumerate(args)]
    checker = SPAWN.Process(target=sync_and_check, args=(results, 2, tiger_url, ns, acknowledged, 200))
    for proc in [checker, *procs]:
        proc.start()
    got = dict(results.get(timeout=DEADLINE) for _ in range(3))
    for proc in [checker, *procs]:
        proc.join(DEADLINE)
    assert [p.exitcode for p in [checker, *procs]] == [0, 0, 0]
    for value in got.values():
        if isinstance(value, BaseException):
            raise value
    assert got[2] == 200


def test_late_joiner_receives_a_100k_snapshot(tiger_url, client, ns):
    plans = client.table("plans", prefix="plan")
    record = {f"field_{i}": i for i in range(8)}
    for start in range(0, 100_000, 2000):
        plans.insert_many([{**record, "n": n, "created": n} for n in range(start, start + 2000)])
    assert plans.count() == 100_000
    [(count, first_page)] = run_workers(join_and_summarise, [(tiger_url, ns)])
    assert count == 100_000
    assert first_page == [dict(r) for r in plans.list(limit=100).data]
    assert [r["n"] for r in first_page] == list(range(99_999, 99_899, -1))
