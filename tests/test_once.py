"""once keys: the pure rules, then Client.once against a real writer."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from _util import read_line

import tiger
from tiger import _table as t
from tiger._once import once_record
from tiger.aio import AsyncClient


def test_claim_rules():
    store = t.Store()
    verdict, change = t.prepare_once_claim(store, "k", "c1", "gw0", live={"c1"}, now=5)
    assert verdict == "build" and change is not None
    store.apply(change)
    verdict, change = t.prepare_once_claim(store, "k", "c2", "gw1", live={"c1", "c2"}, now=6)
    assert verdict == "wait"
    store.apply(change)  # c2 holds the value from now on (a teardown waits for it)
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k")["holders"] == ["c2"]
    assert t.prepare_once_claim(store, "k", "c2", "gw1", live={"c1", "c2"}, now=6) == ("wait", None)  # held already
    # the builder went silent: the next caller takes the key over
    verdict, change = t.prepare_once_claim(store, "k", "c2", "gw1", live={"c2"}, now=7)
    assert verdict == "build"
    store.apply(change)
    assert t.claims_of(store, "c2") == [("global", "k")]
    assert t.prepare_once_finish(store, "k", "c1", 1, None) == ("superseded", None)  # c1 lost the key
    verdict, change = t.prepare_once_finish(store, "k", "c2", {"v": [1]}, None)
    assert verdict == "stored"
    store.apply(change)
    # a value without a teardown: who has it is not tracked (no change per caller)
    assert t.prepare_once_claim(store, "k", "c3", "gw2", live=set(), now=8) == ("done", None)
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k")["holders"] == []
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k")["value"] == {"v": [1]}
    assert t.claims_of(store, "c2") == []
    store.check()


def test_holders_leave_and_a_torn_down_value_is_retired():
    store = t.Store()
    store.apply(t.prepare_once_claim(store, "k", "b", "gw0", live={"b"}, now=1)[1])
    store.apply(t.prepare_once_finish(store, "k", "b", 1, None, teardown=True)[1])
    for client in ("h1", "h2"):
        store.apply(t.prepare_once_claim(store, "k", client, "gw1", live={"b"}, now=2)[1])
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k")["holders"] == ["h1", "h2"]
    [left] = t.prepare_once_leave(store, "h1")
    store.apply(left)
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k")["holders"] == ["h2"]
    assert t.prepare_once_leave(store, "h1") == []
    assert t.prepare_once_retire(store, "k", "h2", t.GLOBAL) is None  # only its builder retires it
    store.apply(t.prepare_once_retire(store, "k", "b", t.GLOBAL))
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k") is None
    store.check()


def test_finish_with_an_error_and_release():
    store = t.Store()
    store.apply(t.prepare_once_claim(store, "k", "c1", "me", live=set(), now=1)[1])
    assert t.prepare_once_release(store, "k", "c2") is None  # not the owner
    store.apply(t.prepare_once_release(store, "k", "c1"))
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k") is None
    store.apply(t.prepare_once_claim(store, "k", "c1", "me", live=set(), now=1)[1])
    with pytest.raises(TypeError, match="error"):
        t.prepare_once_finish(store, "k", "c1", None, ["only one"])
    verdict, change = t.prepare_once_finish(store, "k", "c1", None, ["ValueError", "boom", "gw0 (pid 1)", ""])
    assert verdict == "stored"
    store.apply(change)
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k")["state"] == "failed"


def test_a_late_release_of_an_earlier_claim_leaves_the_same_clients_newer_claim():
    # A review: an async client's release goes on in a task after its caller was cancelled, and could reach
    # the writer after a new claim of the key by the same client id (AsyncClient.sharing: another socket):
    # it gave that newer claim up, and another process then built the key a second time. A release names
    # the claims of its call, [first, last] (request ids): another claim of the client's is left alone.
    store = t.Store()
    store.apply(t.prepare_once_claim(store, "k", "c1", "me", live={"c1"}, now=1, claim=7)[1])
    store.apply(t.prepare_once_claim(store, "k", "c1", "me", live={"c1"}, now=2, claim=9)[1])  # handed back
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k")["claim"] == 9
    assert t.prepare_once_release(store, "k", "c1", claims=[5, 7]) is None
    for bad in (9, ["9", 9], [9], [9, 5], "x"):
        with pytest.raises(TypeError, match="payload of a release"):
            t.prepare_once_release(store, "k", "c1", claims=bad)  # type: ignore[arg-type]
    store.apply(t.prepare_once_release(store, "k", "c1", claims=[9, 9]))
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k") is None
    store.apply(t.prepare_once_claim(store, "k", "c1", "me", live={"c1"}, now=3, claim=11)[1])
    store.apply(t.prepare_once_release(store, "k", "c1"))  # no claims named (a silent client's): whichever it holds
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k") is None
    store.check()


def test_a_release_gives_up_its_calls_first_claim_when_that_was_the_one_applied():
    # A review of the claim names: a call that claimed twice (its first claim applied, the answer lost; its
    # second never applied: expired, or given up) released only "its last claim", and the key stayed claimed
    # by its live client, every other process timing out on it. Any claim of the call's is given up.
    store = t.Store()
    store.apply(t.prepare_once_claim(store, "k", "c1", "me", live={"c1"}, now=1, claim=20)[1])
    store.apply(t.prepare_once_release(store, "k", "c1", claims=[20, 23]))
    assert store.get(t.ONCE_TABLE, t.GLOBAL, "k") is None
    store.check()


def test_drop_namespace_removes_it_from_every_table():
    store = t.Store()
    for table in ("a", "b"):
        for ns in ("n1", "n2"):
            store.apply(t.prepare_insert(store, table, ns, None, [{"id": "x"}], create=False, now=1, token=lambda n: "0" * n))
    store.apply(t.prepare_drop_namespace(store, "n1"))
    assert store.counts() == {"a": {"n2": 1}, "b": {"n2": 1}}
    assert t.prepare_drop_namespace(store, "n1") is None
    store.check()


def unique(name: str) -> str:
    """A once key of this test's own (keys live at the writer for the whole run: a rerun must not find it)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_once_in_one_process_builds_once_and_returns_the_stored_value(tiger_client):
    calls = []
    key = unique("one-process")

    def factory():
        calls.append(1)
        return {"token": "abc", "list": [1, 2]}

    first = tiger_client.once(key, factory)
    second = tiger_client.once(key, factory)
    assert first == second == {"token": "abc", "list": [1, 2]}
    assert calls == [1]
    with pytest.raises(TypeError, match="read-only"):
        first["token"] = "x"


def test_a_client_keeps_no_lock_for_each_once_key_it_ever_asked_for(connect):
    """Each key's lock stayed in the client for good: a long run whose tests each ask for keys of their own
    namespace grew every worker's memory by a lock per key."""
    client = connect()
    keys = [unique(f"lock-{i}") for i in range(50)]
    for key in keys:
        assert client.once(key, lambda key=key: key) == key
    assert client.once(keys[0], lambda: "again") == keys[0]  # asked again: the value stored
    assert len(client._once._locks) == 0
    assert len(client._once._drivers) == 0


def test_once_from_threads_and_clients_builds_once(connect):
    clients = [connect(), connect(), connect()]
    calls = []
    started = threading.Barrier(6)
    key = unique("threads")

    def factory():
        calls.append(1)
        return len(calls)

    results = []

    def call(client):
        started.wait(10)
        results.append(client.once(key, factory))

    threads = [threading.Thread(target=call, args=(c,)) for c in clients * 2]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert calls == [1]
    assert results == [1] * 6


def _call_once(driver: str, client: tiger.Client, key: str, factory, timeout: float, ns: str):
    """``once`` through ``client`` itself ("blocking"), or through an ``AsyncClient.sharing(client)`` of this
    thread's own, on an event loop of its own ("async"), as the README advises: one client per thread."""
    if driver == "blocking":
        return client.once(key, factory, timeout=timeout, namespace=ns)

    async def main():
        shared = AsyncClient.sharing(client)
        try:
            return await shared.once(key, factory, timeout=timeout, namespace=ns)
        finally:
            await shared.close()

    return asyncio.run(main())


def _waiting_for(client: tiger.Client, scope: str, key: str) -> bool:
    """Whether a caller of ``client``'s once keys waits for ``key`` (it queued for the key's lock)."""
    lock = getattr(client._once, "_drivers", {}).get((scope, key))  # (none before the fix: read as not waiting)
    return lock is not None and bool(lock._queue)


@pytest.mark.parametrize("drivers", [("blocking", "async"), ("async", "async")], ids=["blocking+async", "async+async"])
def test_clients_sharing_one_connection_in_two_threads_built_one_key_twice(tiger_url, ns, drivers):
    """Clients sharing one connection (``AsyncClient.sharing``: a blocking client and its async client, or two
    async clients each on its own ``asyncio.run``), one per thread as the README advises, called ``once`` on
    one key at once: the locks of their one ``Once`` kept out only callers of one driver (one event loop),
    the writer handed the key back to their one client id, both built it, and one of them often got a raw
    ``KeyError`` of tiger's internals (a review)."""
    key = unique("sharing")
    builds: list[str] = []
    building, built_twice, hold = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def factory(name: str) -> str:
        builds.append(name)
        (built_twice if len(builds) > 1 else building).set()
        assert hold.wait(10)  # the build held open until the other caller waits for it (or builds it too)
        return f"built by {name}"

    with tiger.connect(tiger_url, timeout=5.0) as client:

        def call(driver: str, name: str) -> None:
            try:
                results[name] = _call_once(driver, client, key, lambda: factory(name), 10, ns)
            except BaseException as e:
                results[name] = e

        first = threading.Thread(target=call, args=(drivers[0], "first"))
        second = threading.Thread(target=call, args=(drivers[1], "second"))
        first.start()
        try:
            assert building.wait(10)
            second.start()
            deadline = time.monotonic() + 10
            while not built_twice.wait(0.01) and not _waiting_for(client, ns, key) and time.monotonic() < deadline:
                pass
        finally:
            hold.set()
            first.join(10)
            if second.ident is not None:
                second.join(10)
        assert builds == ["first"]
        assert results == {"first": "built by first", "second": "built by first"}
        assert len(client._once._drivers) == 0


def test_an_async_client_waiting_on_its_blocking_clients_build_keeps_its_loop_and_its_own_timeout(tiger_url, ns):
    """The wait for a build of another thread's driver (rule 5) blocks no event loop, and ends at the
    waiter's own timeout; the value is then there for it."""
    key = unique("sharing-timeout")
    builds: list[str] = []
    building, hold = threading.Event(), threading.Event()

    def factory() -> str:
        builds.append("blocking")
        building.set()
        assert hold.wait(10)
        return "built"

    async def waits(shared: AsyncClient) -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)  # sleep-ok: a heartbeat's tick, counted
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        try:
            with pytest.raises(tiger.Timeout, match=r"not built by another caller within 0\.3s"):
                await shared.once(key, lambda: builds.append("async"), timeout=0.3, namespace=ns)
        finally:
            ticker.cancel()
        return ticks

    with tiger.connect(tiger_url, timeout=5.0) as client:
        outcome: list[object] = []
        builder = threading.Thread(target=lambda: outcome.append(client.once(key, factory, timeout=10, namespace=ns)))
        builder.start()
        try:
            assert building.wait(10)

            async def main() -> tuple[int, object]:
                shared = AsyncClient.sharing(client)
                try:
                    ticks = await waits(shared)
                    hold.set()
                    return ticks, await shared.once(key, lambda: builds.append("async"), timeout=10, namespace=ns)
                finally:
                    await shared.close()

            ticks, value = asyncio.run(main())
        finally:
            hold.set()
            builder.join(10)
        assert ticks >= 5  # the loop ran on while its caller waited (about 30 ticks)
        assert (value, outcome, builds) == ("built", ["built"], ["blocking"])


def test_a_failing_factory_fails_every_caller(tiger_client, connect):
    def factory():
        raise KeyError("no such fixture")

    key = unique("failing")
    with pytest.raises(tiger.OnceFailed, match=rf"once '{key}' failed in \S+ \(pid \d+\): KeyError: 'no such fixture'") as e:
        tiger_client.once(key, factory)
    assert isinstance(e.value.__cause__, KeyError)
    assert (e.value.type_name, e.value.key) == ("KeyError", key)
    with pytest.raises(tiger.OnceFailed, match="KeyError"):
        connect().once(key, lambda: 1)  # never runs: the key failed
    again = pickle.loads(pickle.dumps(e.value))
    assert str(again) == str(e.value)


def test_a_value_that_cannot_be_stored_fails_the_key(tiger_client):
    with pytest.raises(tiger.OnceFailed, match="TypeError: value: set is not storable"):
        tiger_client.once(unique("unstorable"), lambda: {1, 2})


def test_an_interrupted_builder_releases_the_key(tiger_client):
    def interrupted():
        raise KeyboardInterrupt

    key = unique("interrupted")
    with pytest.raises(KeyboardInterrupt):
        tiger_client.once(key, interrupted)
    assert tiger_client.once(key, lambda: "built") == "built"


def test_waiting_for_a_live_builder_times_out(connect):
    builder, waiter = connect(), connect()
    release = threading.Event()
    done = []
    key = unique("slow")

    def slow():
        release.wait(30)
        return "slow"

    th = threading.Thread(target=lambda: done.append(builder.once(key, slow)))
    th.start()
    # the builder's claim reaches the waiter's replica through the writer
    waiter.replica.wait_until(lambda: once_record(waiter, "global", key) is not None, time.monotonic() + 10, lambda: "no claim")
    with pytest.raises(tiger.Timeout, match=f"once '{key}'"):
        waiter.once(key, lambda: "other", timeout=0.3)
    release.set()
    th.join(30)
    assert done == ["slow"]
    assert waiter.once(key, lambda: "other") == "slow"


def test_once_arguments_are_checked(tiger_client):
    with pytest.raises(TypeError, match="key"):
        tiger_client.once(5, lambda: 1)
    with pytest.raises(TypeError, match="factory"):
        tiger_client.once("k", 5)
    with pytest.raises(ValueError, match="reserved"):
        tiger_client.table("tiger.once")


def _resource(log: list[str]):
    def start():
        log.append("up")
        yield {"port": 1234}
        log.append(f"down {time.monotonic()}")

    return start


def test_a_generator_factory_whose_client_closed_as_it_built_was_never_torn_down(connect, ns):
    # A user trial (tiger.aio's, and the same here): the client closed by another thread as the factory built its
    # value; the once call then raised "this client is closed", and the teardown never ran (the garbage collector
    # finalized the generator at the interpreter's exit, failing there). It runs as the call fails now.
    client = connect()
    said: list[str] = []
    started = threading.Event()

    def server() -> Iterator[dict[str, int]]:
        said.append("started")
        started.set()
        time.sleep(0.3)  # sleep-ok: the build, during which the client is closed
        try:
            yield {"port": 1234}
        finally:
            said.append("stopped")

    closer = threading.Thread(target=lambda: (started.wait(10), client.close()))
    closer.start()
    with pytest.raises(tiger.TigerError, match="closed"):
        client.once(f"server-{ns}", server, timeout=30)
    closer.join(10)
    assert said == ["started", "stopped"]


def test_a_generator_factory_is_torn_down_in_the_builders_close_after_every_holder_closed(connect, ns):
    key = f"server-{ns}"
    log: list[str] = []
    builder, holder = connect(), connect()
    assert builder.once(key, _resource(log)) == {"port": 1234}
    assert holder.once(key, _resource(log)) == {"port": 1234}
    assert log == ["up"]
    closing = threading.Thread(target=builder.close)
    closing.start()
    closing.join(0.5)  # the builder waits for its holder (up to its 5 s timeout): not torn down meanwhile
    assert closing.is_alive() and log == ["up"] and builder.has_teardown(key)  # (kept until it runs)
    holder_closed = time.monotonic()
    holder.close()
    closing.join(10)
    assert len(log) == 2 and float(log[1].split()[1]) >= holder_closed
    with connect() as later:  # the key is retired with its value: a later caller builds anew
        assert later.once(key, _resource(log)) == {"port": 1234}
    assert log[2:] == ["up", log[3]] and log[3].startswith("down")


def test_a_resource_built_as_a_test_runner_stopped_the_build_was_never_torn_down(connect, ns, monkeypatch):
    # A review: a stop from outside (pytest-timeout) landing after a generator factory yielded, as its value
    # was checked, handed the key on with the resource's teardown still registered; the key built again in
    # the same client replaced it, and the first resource (a server process) was never torn down.
    from tiger import _errors, _once

    class Stopped(BaseException):  # as pytest-timeout's failure
        pass

    monkeypatch.setattr(_errors, "STOPS_FROM_OUTSIDE", [lambda e: isinstance(e, Stopped)])
    checked = _once.check_value

    def stopped_once(value, where="value"):
        monkeypatch.setattr(_once, "check_value", checked)
        raise Stopped

    monkeypatch.setattr(_once, "check_value", stopped_once)
    made, torn = [], []

    def server():
        n = len(made) + 1
        made.append(n)
        yield f"server-{n}"
        torn.append(n)

    key = f"stopped-{ns}"
    with connect() as builder:
        with pytest.raises(Stopped):
            builder.once(key, server)
        assert torn == [1]  # torn down at once: the key went to the next caller
        assert builder.once(key, server) == "server-2"
    assert torn == [1, 2]


def test_a_teardown_waits_for_holders_only_the_clients_timeout(connect, ns, caplog):
    key = f"held-{ns}"
    log: list[str] = []
    builder, holder = connect(timeout=1.0), connect()
    builder.once(key, _resource(log))
    holder.once(key, _resource(log))
    started = time.monotonic()
    builder.close()
    assert 0.9 < time.monotonic() - started < 5
    assert log[0] == "up" and log[1].startswith("down")
    assert "still hold it" in caplog.text


def _noted(name: str, log: list[tuple[str, float]]):
    """A generator factory whose value is ``name`` and whose teardown notes (name, when)."""

    def start():
        yield name
        log.append((name, time.monotonic()))

    return start


def _closed_together(*clients: tiger.Client) -> tuple[dict[int, float], dict[int, float]]:
    """Close ``clients`` at the same time, each in a thread of its own: (when each close began, how long it
    took), by index."""
    began: dict[int, float] = {}
    took: dict[int, float] = {}
    together = threading.Barrier(len(clients))

    def close(i: int, client: tiger.Client) -> None:
        together.wait(10)
        began[i] = time.monotonic()
        client.close()
        took[i] = time.monotonic() - began[i]

    threads = [threading.Thread(target=close, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(took) == list(range(len(clients)))
    return began, took


def test_two_clients_closing_together_each_waited_its_whole_timeout_for_the_other_to_let_go(connect, ns, caplog):
    # A user trial: a built A, b built B, each got the other's. Closed at the same time (two threads), each close
    # waited its whole timeout for the other to let go ("still hold it"), which the other did only with its
    # goodbye, after its own wait. A closing client now lets go of the values it got as it tears its own down.
    timeout = 20.0  # (the assertion is about waiting it out, not speed)
    a, b = connect(timeout=timeout), connect(timeout=timeout)
    log: list[tuple[str, float]] = []
    key = {name: f"{name}-{ns}" for name in "AB"}
    assert a.once(key["A"], _noted("A", log)) == "A" and b.once(key["B"], _noted("B", log)) == "B"
    assert b.once(key["A"], _noted("A", log)) == "A" and a.once(key["B"], _noted("B", log)) == "B"
    began, took = _closed_together(a, b)
    assert max(took.values()) < timeout / 2, took
    assert sorted(name for name, _ in log) == ["A", "B"]  # each torn down once, by its builder
    torn = dict(log)
    assert torn["A"] >= began[1] and torn["B"] >= began[0]  # after its other holder let go: as it closed
    assert "still hold it" not in caplog.text
    with connect() as later:  # each key retired with its value
        assert later.once(key["A"], lambda: "anew") == "anew" and later.once(key["B"], lambda: "anew") == "anew"


def test_a_value_got_before_one_built_from_it_stays_up_through_that_ones_teardown_as_both_builders_close_together(
    connect, ns, caplog
):
    # The same trial, the other way round for a: a got B inside A's factory (A is built from B), and b got A.
    # Closed together, b lets go of A (got after it built B) and waits for a; a tears A down while it still holds
    # B (what A's teardown may use), then lets go of it with its goodbye; only then is B torn down. (Each
    # waited its whole timeout before; letting go of every value at the start of close would tear B down first.)
    timeout = 20.0
    a, b = connect(timeout=timeout), connect(timeout=timeout)
    log: list[tuple[str, float]] = []
    key = {name: f"{name}-{ns}" for name in "AB"}
    assert b.once(key["B"], _noted("B", log)) == "B"

    def built_from_b():
        used = a.once(key["B"], _noted("B", log))
        yield f"A on {used}"
        assert [name for name, _ in log] == [], "B was torn down before A, which uses it"
        log.append(("A", time.monotonic()))

    assert a.once(key["A"], built_from_b) == "A on B" and b.once(key["A"], built_from_b) == "A on B"
    began, took = _closed_together(a, b)
    assert max(took.values()) < timeout / 2, took
    assert [name for name, _ in log] == ["A", "B"]
    assert dict(log)["A"] >= began[1]
    assert "still hold it" not in caplog.text


CLOSING_TOGETHER = """
import asyncio, sys, time
import tiger, tiger.aio

url, driver, mine, other, timeout = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])


def say(*words):
    print(*words, flush=True)


def go(step):  # the test's go-ahead, a line on stdin
    assert sys.stdin.readline().strip() == step


def resource(name):
    def blocking():
        yield name
        say("teardown", name, time.monotonic())

    async def awaited():
        yield name
        say("teardown", name, time.monotonic())

    return awaited if driver == "async" else blocking


def blocking():
    client = tiger.connect(url, timeout=timeout)
    client.once(mine, resource(mine))
    say("built")
    go("get")
    client.once(other, resource(other), timeout=timeout)
    say("got")
    go("close")
    began = time.monotonic()
    say("closing", began)
    client.close()
    say("closed", time.monotonic() - began)


async def awaited():
    client = await tiger.aio.connect(url, timeout=timeout)
    await client.once(mine, resource(mine))
    say("built")
    go("get")
    await client.once(other, resource(other), timeout=timeout)
    say("got")
    go("close")
    began = time.monotonic()
    say("closing", began)
    await client.close()
    say("closed", time.monotonic() - began)


asyncio.run(awaited()) if driver == "async" else blocking()
"""


@pytest.mark.parametrize("driver", ["blocking", "async"])
def test_two_client_processes_closing_together_each_waited_its_whole_timeout_for_the_other_to_let_go(tiger_url, ns, driver):
    # The user trial across processes: each builds one value and gets the other's; told to close at the same
    # moment, each close waited its whole timeout for the other process, and logged "still hold it".
    timeout = 20.0
    key = {"A": f"A-{driver}-{ns}", "B": f"B-{driver}-{ns}"}
    children = {
        name: subprocess.Popen(
            [sys.executable, "-c", CLOSING_TOGETHER, tiger_url, driver, key[name], key[other], str(timeout)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, other in (("A", "B"), ("B", "A"))
    }
    try:
        for step, heard in (("get", "built"), ("close", "got")):
            for child in children.values():
                assert read_line(child, 30).split() == [heard]
            for child in children.values():
                assert child.stdin is not None
                child.stdin.write(step + "\n")
                child.stdin.flush()
        said = {name: child.communicate(timeout=60) for name, child in children.items()}
    finally:
        for child in children.values():
            child.kill()
            child.wait()
    lines = {name: [line.split() for line in out.splitlines()] for name, (out, _) in said.items()}
    for name, (_, err) in said.items():
        assert children[name].returncode == 0, err
        assert "still hold it" not in err, err
    began = {name: float(next(w[1] for w in words if w[0] == "closing")) for name, words in lines.items()}
    took = {name: float(next(w[1] for w in words if w[0] == "closed")) for name, words in lines.items()}
    torn = {name: [(w[1], float(w[2])) for w in words if w[0] == "teardown"] for name, words in lines.items()}
    assert max(took.values()) < timeout / 2, took
    assert [k for k, _ in torn["A"]] == [key["A"]] and [k for k, _ in torn["B"]] == [key["B"]]  # once each, by its builder
    assert torn["A"][0][1] >= began["B"] and torn["B"][0][1] >= began["A"]  # after the other holder let go, closing


LEFT_OPEN_AT_EXIT = """
import sys, threading, time
import tiger

url, timeout, a_key, b_key = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]


def resource(name):
    def start():
        yield name
        main = threading.current_thread() is threading.main_thread()
        sys.stdout.write(f"teardown {name} {time.monotonic()} {main}\\n")
        sys.stdout.flush()

    return start


a, b = tiger.connect(url, timeout=timeout), tiger.connect(url, timeout=timeout)
a.once(a_key, resource("A")), b.once(b_key, resource("B")), b.once(a_key, resource("A")), a.once(b_key, resource("B"))
print("exiting", time.monotonic(), flush=True)  # a and b left open: closed at exit
"""


def test_two_clients_left_open_at_exit_were_closed_one_after_the_other_the_first_waiting_its_whole_timeout(tiger_url, ns):
    # The same kind at a process's exit: the clients it left open were closed one after another, and the first,
    # holding the second's value and building one the second held, waited its whole timeout for the second,
    # which was about to close too. Every client open at exit is closing: each lets go first of what its own
    # teardowns cannot use, then they close in turn, in the main thread (a review: closed in threads of their
    # own, a teardown closing a sqlite connection made in the main thread failed 1 time in 4).
    timeout = 20.0
    child = subprocess.run(
        [sys.executable, "-c", LEFT_OPEN_AT_EXIT, tiger_url, str(timeout), f"A-exit-{ns}", f"B-exit-{ns}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    words = [line.split() for line in child.stdout.splitlines()]
    exiting = float(next(w[1] for w in words if w[0] == "exiting"))
    torn = sorted((w[1], float(w[2])) for w in words if w[0] == "teardown")
    assert [name for name, _ in torn] == ["A", "B"], child.stdout  # once each
    assert all(w[3] == "True" for w in words if w[0] == "teardown"), child.stdout  # in the main thread
    assert max(when for _, when in torn) - exiting < timeout / 2, child.stdout
    assert "still hold it" not in child.stderr, child.stderr


WRITES_THROUGH_ANOTHER_CLIENT_AT_EXIT = """
import sys
import tiger

url, key, ns = sys.argv[1], sys.argv[2], sys.argv[3]
tiger.namespace(ns).__enter__()  # (the test's: it reads what the teardown wrote there)
older = [tiger.connect(url) for _ in range(3)]
builder = tiger.connect(url)
newer = [tiger.connect(url) for _ in range(3)]


def resource():
    yield "made"
    for n, other in enumerate(older + newer):  # the teardown writes through every other client left open
        other.table("audit").insert({"torn_down": key, "by": n})
    print("torn down", flush=True)


builder.once(key, resource, namespace=ns)
"""  # every client left open at exit


def test_a_teardown_writing_through_another_client_left_open_at_exit_found_it_closed(tiger_url, connect, ns):
    # A user trial: two clients left open at exit, a teardown of the first's once value writing through the
    # second: 1 run in 2, the second was closed first (the clients closed in the order of a set, each running
    # its own teardowns) and the teardown raised "this client is closed: tiger closed it as the interpreter
    # exits". Every client's teardowns run first, every client still open; then they close.
    key = f"audited-{ns}"
    child = subprocess.run(
        [sys.executable, "-c", WRITES_THROUGH_ANOTHER_CLIENT_AT_EXIT, tiger_url, key, ns],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines() == ["torn down"], child.stdout + child.stderr
    assert "closed" not in child.stderr, child.stderr
    reader = connect()
    reader.sync()
    assert sorted(r["by"] for r in reader.table("audit").find(torn_down=key)) == list(range(6))
    assert once_record(reader, ns, key) is None  # retired: a later caller builds anew


MULTIPROCESSING_CHILD_LEFT_OPEN = """
import multiprocessing, os, sys
import tiger


CLIENTS = []  # a worker's clients, as a pool's initializer keeps them


def child(url, key, log):
    client = tiger.connect(url)
    CLIENTS.append(client)  # left open: the child returns without closing it

    def resource():
        yield "made"
        with open(log, "a") as f:
            f.write(f"teardown {os.getpid()}\\n")

    client.once(key, resource)


if __name__ == "__main__":
    url, key, log, method = sys.argv[1:]
    process = multiprocessing.get_context(method).Process(target=child, args=(url, key, log))
    process.start()
    process.join(60)
    print("exitcode", process.exitcode, flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_multiprocessing_child_left_its_clients_open_and_its_once_teardowns_never_ran(tiger_url, connect, tmp_path, method):
    # A user trial: a child multiprocessing started by fork or forkserver ends with os._exit after its own exit
    # hooks, and no atexit handler runs: its clients left open were never closed, the teardowns of its once values
    # never ran (4 of 4), their keys held by a client gone silent (the parent got the dead child's value at once,
    # and its own teardowns waited for it). multiprocessing's exit hooks close them too.
    script = tmp_path / "child.py"
    script.write_text(MULTIPROCESSING_CHILD_LEFT_OPEN)
    key, log = f"child-{method}-{uuid.uuid4().hex[:8]}", tmp_path / "log"
    command = [sys.executable, str(script), tiger_url, key, str(log), method]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and done.stdout.splitlines() == ["exitcode 0"], done.stdout + done.stderr
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["teardown"], done.stderr
    reader = connect()
    reader.sync()
    assert once_record(reader, "global", key) is None  # retired: a later caller builds anew


POOL_TERMINATED = """
import multiprocessing, os, sys, time
import tiger

CLIENT = None
BUSY = multiprocessing.get_context("fork").Event()


def start(url):
    global CLIENT
    CLIENT = tiger.connect(url)


def server():
    yield f"server of {os.getpid()}"
    print("teardown", flush=True)


def build(key):
    return CLIENT.once(key, server)


def hold():
    BUSY.set()
    time.sleep(60)  # sleep-ok: keeps the worker busy until terminate() kills it


if __name__ == "__main__":
    url, key = sys.argv[1:]
    with multiprocessing.get_context("fork").Pool(1, initializer=start, initargs=(url,)) as pool:
        print(pool.apply(build, (key,)), flush=True)
        # The worker busy as the block ends, so terminate()'s SIGTERM is what ends it: an idle worker may take the
        # pool's stop sentinel first and end cleanly, its teardowns run (multiprocessing's finalizers).
        pool.apply_async(hold)
        if not BUSY.wait(60):
            sys.exit("the worker never took the hold task")
"""


def test_a_pool_terminated_left_its_workers_once_values_handed_out_though_their_teardowns_never_ran(tiger_url, connect, tmp_path):
    # A user trial: `with Pool(...)` ends by terminate(): SIGTERM, so a worker's once teardowns never ran, and the
    # value it built (a server of its own) stayed stored and was handed to every later caller (8 of 9), though
    # it ended with the worker. The writer retires it once it takes the worker for gone; a later caller builds.
    script = tmp_path / "pool.py"
    script.write_text(POOL_TERMINATED)
    key = f"pool-{uuid.uuid4().hex[:8]}"
    done = subprocess.run([sys.executable, str(script), tiger_url, key], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0 and done.stdout.startswith("server of "), done.stdout + done.stderr
    assert "teardown" not in done.stdout  # (what the fix cannot give back: the worker was killed)
    reader = connect()
    deadline = time.monotonic() + 30
    while once_record(reader, "global", key) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # sleep-ok: polls the local replica; the writer takes the killed worker for gone in about 1 s
    assert reader.once(key, lambda: "built anew") == "built anew"


STOPPED_BUILDER = """
import itertools, sys
import tiger

url, key = sys.argv[1:]
builds = itertools.count(1)


def server():
    n = next(builds)
    print("build", n, flush=True)
    yield f"server #{n}"
    print("teardown", n, flush=True)


client = tiger.connect(url)
print("got", client.once(key, server), flush=True)
sys.stdin.readline()  # (stopped and resumed meanwhile)
print("got", client.once(key, server), flush=True)
client.close()
"""


def test_a_stopped_builder_taken_for_gone_built_its_value_again_and_never_tore_down_the_first(ns):
    # A user trial of the retirement of a gone builder's values: a builder stopped (SIGSTOP) past its silence
    # (and its lease grace, here 0), resumed, asked for its key again: the writer had retired its value, and it
    # built a second one; the first was never torn down (its generator dropped: "ResourceWarning: subprocess N
    # is still running"). It gives its own value again.
    key = f"stopped-{ns}"
    with tiger.serve(lease_grace=0) as writer, tiger.connect(writer.url) as reader:
        _stop_then_ask_again(writer.url, reader, key)


def _stop_then_ask_again(url: str, reader: tiger.Client, key: str) -> None:
    """Stop a builder of `key` (STOPPED_BUILDER) until the writer retires its value, resume it, let it ask again."""
    builder = subprocess.Popen(
        [sys.executable, "-c", STOPPED_BUILDER, url, key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert [read_line(builder, 30).strip(), read_line(builder, 30).strip()] == ["build 1", "got server #1"]
        reader.sync()
        assert once_record(reader, "global", key) is not None
        os.kill(builder.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + 30
            while once_record(reader, "global", key) is not None and time.monotonic() < deadline:
                time.sleep(0.05)  # sleep-ok: polls the local replica; a stopped builder is gone after about 3 s
            assert once_record(reader, "global", key) is None
        finally:
            os.kill(builder.pid, signal.SIGCONT)
        out, err = builder.communicate("go\n", timeout=60)
    finally:
        builder.kill()
        builder.wait()
    assert builder.returncode == 0, err
    assert out.splitlines() == ["got server #1", "teardown 1"], out + err
    assert "given again" in err and "ResourceWarning" not in err, err


def test_tear_down_once_values_on_a_forked_copy_ran_the_parents_teardowns_and_the_parent_ran_them_again(connect, ns):
    # A user trial: close() on a client copied by os.fork() runs nothing, and its writes raise TigerError, but its
    # tear_down_once_values() ran the parent's teardowns in the child; the parent then ran them again
    client = connect()
    read, write = os.pipe()

    def resource():
        yield "made"
        os.write(write, f"teardown {os.getpid()}\n".encode())

    client.once(f"forked-{ns}", resource)
    pid = os.fork()
    if pid == 0:  # the child: report what tear_down_once_values did, and end without running anything else
        try:
            client.tear_down_once_values()
            os.write(write, b"child: returned\n")
        except BaseException as e:
            os.write(write, f"child: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    client.close()
    os.close(write)
    with os.fdopen(read) as said:
        lines = said.read().splitlines()
    assert lines == [
        f"child: TigerError: this client was connected in process {os.getpid()}; connect again in this process "
        "(tiger.connect(), or tiger.aio.connect())",
        f"teardown {os.getpid()}",
    ]


def test_a_teardown_that_raises_is_raised_by_close(connect, ns):
    def start():
        yield 1
        raise RuntimeError("cannot stop the server")

    builder = connect()
    assert builder.once(f"raises-{ns}", start) == 1
    with pytest.raises(RuntimeError, match="cannot stop the server"):
        builder.close()
    assert builder._closed


def test_a_generator_that_yields_nothing_fails_the_key(connect, ns):
    def start():
        return
        yield

    with pytest.raises(tiger.OnceFailed, match="returned without yielding"):
        connect().once(f"empty-{ns}", start)


def test_a_second_caller_in_the_same_client_gets_its_own_timeout(tiger_client):
    # A user trial: thread A of a client built a key for 6 s; thread B of the same client called
    # once(key, timeout=1) and waited 5.5 s, for A's build (a second client timed out after 1 s).
    key = unique("same-client")
    release = threading.Event()
    builder = threading.Thread(target=lambda: tiger_client.once(key, lambda: release.wait(30) and "slow"))
    builder.start()
    try:
        tiger_client.replica.wait_until(
            lambda: once_record(tiger_client, "global", key) is not None, time.monotonic() + 10, lambda: "no claim"
        )
        started = time.monotonic()
        with pytest.raises(tiger.Timeout, match=f"once '{key}' was not built by another caller within 0.3s"):
            tiger_client.once(key, lambda: "other", timeout=0.3)
        assert time.monotonic() - started < 3
    finally:
        release.set()
        builder.join(30)
    assert tiger_client.once(key, lambda: "other", timeout=0.3) == "slow"


def test_once_of_its_own_key_from_inside_a_factory_fails_instead_of_waiting_for_itself(tiger_client):
    # A user trial: c.once("rec", lambda: c.once("rec", ..., timeout=2), timeout=3) hung for good (the key's
    # lock is not reentrant, and its own build would have waited for itself).
    key = unique("reentered")
    with pytest.raises(tiger.OnceFailed, match="called again from inside its own factory"):
        tiger_client.once(key, lambda: tiger_client.once(key, lambda: 1, timeout=2), timeout=3)
    other = unique("other")  # another key from inside a factory is fine
    assert tiger_client.once(key + "-2", lambda: tiger_client.once(other, lambda: 1) + 1) == 2


def test_once_of_its_own_key_through_a_sharing_async_client_inside_a_factory_fails(tiger_client, ns):
    """Re-entering a key is found across the drivers of one ``Once`` (rule 5): a blocking build whose factory
    runs ``asyncio.run`` over the client's sharing async client, calling the key again."""
    key = unique("reentered-shared")

    def factory() -> int:
        async def again() -> int:
            shared = AsyncClient.sharing(tiger_client)
            try:
                return await shared.once(key, lambda: 1, timeout=2, namespace=ns)
            finally:
                await shared.close()

        return asyncio.run(again())

    with pytest.raises(tiger.OnceFailed, match="called again from inside its own factory"):
        tiger_client.once(key, factory, timeout=3, namespace=ns)


def test_a_build_abandoned_with_its_event_loop_does_not_hold_the_key_from_the_other_drivers(tiger_client):
    """A sharing async client's build whose event loop was closed under it (its task pending: it never runs
    again) is taken for gone by a caller of another driver, which builds the key (the writer hands it back
    to their one client id) rather than waiting for it until the garbage collector comes."""
    key = unique("abandoned")
    building = threading.Event()
    tasks: list[asyncio.Task[object]] = []

    async def never_done() -> str:
        building.set()
        await asyncio.Event().wait()
        return "never"

    def abandon() -> None:  # in a thread of its own: a caller of another driver than the blocking one
        loop = asyncio.new_event_loop()
        tasks.append(loop.create_task(AsyncClient.sharing(tiger_client).once(key, never_done, timeout=10)))
        loop.run_until_complete(asyncio.wait((loop.create_task(asyncio.to_thread(building.wait, 10)),)))
        loop.close()  # the build pending, for good

    thread = threading.Thread(target=abandon)
    thread.start()
    thread.join(10)
    assert building.is_set() and not tasks[0].done()
    try:
        assert tiger_client.once(key, lambda: "built again", timeout=5) == "built again"
    finally:
        tasks[0].get_coro().close()  # (its finally, as the garbage collector would run it)
        tasks[0]._log_destroy_pending = False  # type: ignore[attr-defined]


def test_a_caller_left_waiting_with_its_event_loop_closed_held_the_key_from_every_later_caller(tiger_client):
    """A sharing async client's task *waiting* for another driver's build, its event loop closed under it
    (the task pending: it never runs again), no longer stays first in the key's queue: the build's value
    goes to a later caller at once (it waited out its whole timeout, and with timeout=None for ever)."""
    key = unique("abandoned-waiter")
    building, hold = threading.Event(), threading.Event()
    tasks: list[asyncio.Task[object]] = []

    def factory() -> str:
        building.set()
        assert hold.wait(10)
        return "built"

    outcome: list[object] = []
    builder = threading.Thread(target=lambda: outcome.append(tiger_client.once(key, factory, timeout=10)))
    builder.start()
    try:
        assert building.wait(10)

        def abandon() -> None:  # in a thread of its own: a caller of another driver than the blocking one
            loop = asyncio.new_event_loop()
            tasks.append(loop.create_task(AsyncClient.sharing(tiger_client).once(key, lambda: "other", timeout=None)))

            async def queued() -> None:  # until the task waits in the key's queue
                deadline = time.monotonic() + 10
                while not any(lock._queue for lock in tiger_client._once._drivers._locks.values()):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)  # sleep-ok: polled with a deadline; nothing to wait on

            loop.run_until_complete(queued())
            loop.close()  # the wait pending, for good

        thread = threading.Thread(target=abandon)
        thread.start()
        thread.join(10)
        assert tasks and not tasks[0].done()
    finally:
        hold.set()
        builder.join(10)
    try:
        assert outcome == ["built"]
        assert tiger_client.once(key, lambda: "built again", timeout=3) == "built"
    finally:
        tasks[0].get_coro().close()  # (its finally, as the garbage collector would run it)
        tasks[0]._log_destroy_pending = False  # type: ignore[attr-defined]
