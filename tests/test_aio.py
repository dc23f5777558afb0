"""tiger.aio (issue 13): asyncio clients against real writers and real processes.

Each test runs its coroutine with ``asyncio.run`` (no async test plugin needed); the pytest fixture
``tiger_aclient`` is tested in inner pytest runs under pytest-asyncio and anyio.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import pytest
import zmq
from _util import read_line

import tiger
import tiger.aio
from tiger import _protocol as p
from tiger._once import once_record
from tiger._server import request_once

# A child process that builds once key KEY for BUILD seconds (its factory says when it started).
BUILDER = textwrap.dedent(
    """
    import sys, time, tiger
    url, key, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with tiger.connect(url) as client:
        def build():
            print("building", flush=True)
            time.sleep(seconds)  # sleep-ok: the slow build this test is about
            return {"built_by": "child"}
        print(client.once(key, build), flush=True)
    """
)


def run(coroutine: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coroutine())  # type: ignore[arg-type]


class Heartbeat:
    """A task ticking every 10 ms while the code under test awaits: the longest gap between ticks is how long
    the event loop was blocked (plus scheduling noise)."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.gaps.append(now - last)
            last = now

    async def __aenter__(self) -> Heartbeat:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def assert_responsive(self) -> None:
        """Ticking within 50 ms (issue 13): 95% of the gaps, and none past 0.25 s. A loop the wait blocked
        shows one gap as long as the wait itself (0.5 s and more in these tests); a loaded machine (the
        other xdist worker, CI) may not schedule this process for a tick or two, which says nothing of
        tiger."""
        gaps = sorted(self.gaps)
        assert gaps, "the heartbeat never ticked"
        p95 = gaps[int(0.95 * (len(gaps) - 1))]
        assert p95 < 0.05 and gaps[-1] < 0.25, (
            f"the event loop was blocked: 95% of gaps under {p95:.3f}s, longest {gaps[-1]:.3f}s"
        )


def test_async_writes_are_in_the_local_replica_when_they_return(tiger_url, ns):
    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            plans = client.table("plans", prefix="plan")
            plan = await plans.insert({"amount": 500})
            assert plan["id"].startswith("plan_") and plans[plan["id"]] == plan
            many = await plans.insert_many([{"amount": i} for i in range(3)])
            assert [plans[r["id"]] for r in many] == many
            assert (await plans.update(plan["id"], {"amount": 600}))["amount"] == 600 == plans[plan["id"]]["amount"]
            created = await plans.create({"id": "plan_fixed", "amount": 1})
            assert plans.get("plan_fixed") == created
            with pytest.raises(tiger.AlreadyExists):
                await plans.create({"id": "plan_fixed"})
            await plans.delete(plan["id"])
            assert plan["id"] not in plans
            assert plans.count() == 4
            await plans.clear_namespace(ns)
            assert plans.count() == 0

    run(main)


def test_a_generator_factory_whose_client_closed_as_it_built_was_never_torn_down(tiger_url, ns):
    """A user trial: close() as an async generator factory built its value (a mock server started) returned at
    once, the once call then raised "this client is closed", and the factory's teardown never ran: the close
    ran the teardowns it had then, without this one, and nothing later would. It runs as the call fails now."""
    said: list[str] = []
    started = asyncio.Event()

    async def server() -> Any:
        said.append("started")
        started.set()
        await asyncio.sleep(0.3)  # sleep-ok: the build, during which the client is closed
        try:
            yield {"port": 1234}
        finally:
            said.append("stopped")

    async def main() -> None:
        client = await tiger.aio.connect(tiger_url)
        building = asyncio.ensure_future(client.once(f"server-{ns}", server, timeout=30))
        await started.wait()
        await client.close()
        with pytest.raises(tiger.TigerError, match="closed"):
            await building

    run(main)
    assert said == ["started", "stopped"]


def test_an_async_clients_repr_named_a_class_tiger_does_not_have(tiger_url, ns):
    # a user's trial: repr(client) said <tiger.AsyncClient ...>, and there is no tiger.AsyncClient to look up
    import importlib

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            for obj in (client, client.table("plans")):
                where, name = repr(obj)[1:].split(" ", 1)[0].rsplit(".", 1)
                assert (where, name) == ("tiger.aio", type(obj).__name__)
                assert getattr(importlib.import_module(where), name) is type(obj)

    run(main)


def test_async_and_blocking_clients_share_one_writer(tiger_url, connect, ns):
    blocking = connect()

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            plan = await client.table("plans", prefix="plan").insert({"amount": 5})
            assert blocking.table("plans").wait_for(plan["id"]) == plan  # (a thread, the test's own: not the loop)
            other = blocking.table("plans", prefix="plan").insert({"amount": 6})
            assert await client.table("plans").wait_for(other["id"], timeout=5.0) == other

    run(main)


def test_async_errors_are_the_blocking_clients(tiger_url, ns):
    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            plans = client.table("plans", prefix="plan")
            with pytest.raises(tiger.NotFound):
                await plans.update("plan_absent", {"amount": 1})
            with pytest.raises(ValueError, match="prefix"):
                await plans.insert({"id": "price_1"})
            with pytest.raises(TypeError, match=r"record\['when'\]"):
                await plans.insert({"when": object()})
            with pytest.raises(tiger.Timeout, match="plan_never"):
                await plans.wait_for("plan_never", timeout=0.05)
            assert plans.count() == 0  # nothing of the refused writes was applied

    run(main)


def test_the_namespace_follows_each_task(tiger_url, ns):
    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            plans = client.table("plans", prefix="plan")

            async def write_in(name: str) -> str:
                with tiger.namespace(name):
                    await asyncio.sleep(0)  # the other task runs in between, in its own namespace
                    return (await plans.insert({"amount": 1}))["id"]

            a, b = await asyncio.gather(write_in(ns + "-a"), write_in(ns + "-b"))
            with tiger.namespace(ns + "-a"):
                assert a in plans and b not in plans
            with tiger.namespace(ns + "-b"):
                assert b in plans and a not in plans
            await client.drop_namespace(ns + "-a")
            await client.drop_namespace(ns + "-b")

    run(main)


def test_the_event_loop_keeps_running_while_wait_for_waits(tiger_url, connect, ns):
    writer_client = connect()

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            async with Heartbeat() as beat:
                waiting = asyncio.get_running_loop().create_task(client.table("plans").wait_for("plan_later", timeout=10))
                await asyncio.sleep(0.5)  # sleep-ok: the heartbeat must keep ticking for a while meanwhile
                assert not waiting.done()
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: writer_client.table("plans", prefix="plan").insert({"id": "plan_later"})
                )
                assert (await waiting)["id"] == "plan_later"
            beat.assert_responsive()

    run(main)


def test_the_event_loop_keeps_running_while_once_waits_for_a_build_in_another_process(tiger_url, tmp_path):
    key = f"slow-{tmp_path.name}"
    child = subprocess.Popen([sys.executable, "-c", BUILDER, tiger_url, key, "2"], stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(child).strip() == "building"

        async def main() -> Any:
            async with await tiger.aio.connect(tiger_url) as client:
                async with Heartbeat() as beat:
                    value = await client.once(key, lambda: pytest.fail("built twice"), timeout=10)
                beat.assert_responsive()
                assert sum(beat.gaps) > 1.0  # it did wait for the build, ticking all along
                return value

        assert run(main) == {"built_by": "child"}
        assert read_line(child).strip() == "{'built_by': 'child'}"
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]


def test_an_async_factory_builds_once_and_its_teardown_is_awaited_at_close(tiger_url, ns):
    events: list[str] = []

    async def resource() -> Any:
        events.append("setup")
        await asyncio.sleep(0)
        yield {"dsn": "sqlite://"}
        await asyncio.sleep(0)
        events.append("teardown")

    async def coroutine_factory() -> int:
        await asyncio.sleep(0)
        return 42

    async def main() -> None:
        client = await tiger.aio.connect(tiger_url)
        other = await tiger.aio.connect(tiger_url)
        try:
            assert await client.once(f"res-{ns}", resource) == {"dsn": "sqlite://"}
            assert await other.once(f"res-{ns}", resource) == {"dsn": "sqlite://"}  # built once: stored value
            assert await client.once(f"co-{ns}", coroutine_factory) == 42
            assert client.has_teardown(f"res-{ns}") and events == ["setup"]
        finally:
            await other.close()
            await client.close()
        assert events == ["setup", "teardown"]

    run(main)


def test_two_async_clients_closing_together_each_waited_its_whole_timeout_for_the_other_to_let_go(tiger_url, ns, caplog):
    # A user trial: a built A, b built B (async generator factories), each got the other's; ``await
    # asyncio.gather(a.close(), b.close())`` waited the clients' whole timeout, each close for the other to let
    # go ("still hold it"), which it did only with its goodbye, after its own wait. A closing client now lets go
    # of the values it got as it tears its own down.
    timeout = 20.0  # (the assertion is about waiting it out, not speed)
    key = {name: f"{name}-{ns}" for name in "AB"}
    torn: list[tuple[str, float]] = []

    def noted(name: str) -> Callable[[], Any]:
        async def resource() -> Any:
            yield name
            await asyncio.sleep(0)
            torn.append((name, time.monotonic()))

        return resource

    async def main() -> tuple[dict[str, float], dict[str, float]]:
        a = await tiger.aio.connect(tiger_url, timeout=timeout)
        b = await tiger.aio.connect(tiger_url, timeout=timeout)
        began: dict[str, float] = {}
        took: dict[str, float] = {}

        async def close(name: str, client: tiger.aio.AsyncClient) -> None:
            began[name] = time.monotonic()
            await client.close()
            took[name] = time.monotonic() - began[name]

        try:
            assert await a.once(key["A"], noted("A")) == "A" and await b.once(key["B"], noted("B")) == "B"
            assert await b.once(key["A"], noted("A")) == "A" and await a.once(key["B"], noted("B")) == "B"
        finally:
            await asyncio.gather(close("a", a), close("b", b))
        return began, took

    began, took = run(main)
    assert max(took.values()) < timeout / 2, took
    assert sorted(name for name, _ in torn) == ["A", "B"]  # each torn down once, by its builder
    assert dict(torn)["A"] >= began["b"] and dict(torn)["B"] >= began["a"]  # after its other holder let go: closing
    assert "still hold it" not in caplog.text


def test_a_cancelled_write_is_applied_or_not_and_the_next_write_is_not_held_up(tiger_url, connect, ns):
    other = connect()

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url, timeout=5.0) as client:
            plans = client.table("plans", prefix="plan")
            for i in range(20):  # cancelled at every point of its round trip, as the loop lets it run
                task = asyncio.get_running_loop().create_task(plans.insert({"id": f"plan_c{i}"}))
                for _ in range(i % 4):
                    await asyncio.sleep(0)
                if task.cancel():  # (False: it had already returned, applied: fine too)
                    with pytest.raises(asyncio.CancelledError):
                        await task
                started = time.monotonic()
                after = await plans.insert({"id": f"plan_after{i}"})
                # its change follows the cancelled one's seq: held behind it, it would wait for the
                # replica to ask the writer again, after the client's 5 s timeout
                assert time.monotonic() - started < 2.0
                assert plans[after["id"]] == after
            # with no write after it: a record another client writes is not held behind the cancelled seq either
            for _ in range(100):
                task = asyncio.get_running_loop().create_task(plans.insert({"id": "plan_last_cancelled"}))
                await asyncio.sleep(0)
                if task.cancel():  # (else it had already returned, applied: again)
                    break
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.get_running_loop().run_in_executor(None, lambda: other.table("plans").insert({"id": "plan_other"}))
            started = time.monotonic()
            await plans.wait_for("plan_other", timeout=10.0)
            assert time.monotonic() - started < 2.0
            # a cancelled call may reach the writer after plan_other (its bytes were on their way): its change
            # then comes to this replica later, in an answer (seen once in .ci/run on 3.13): settle first
            await client.sync()
            cancelled = [f"plan_c{i}" for i in range(20) if f"plan_c{i}" in plans] + ["plan_last_cancelled"] * (
                "plan_last_cancelled" in plans
            )
            fresh = await tiger.aio.connect(tiger_url)
            try:
                await fresh.sync()  # every write the writer applied, whichever the cancelled ones were
                assert sorted(r["id"] for r in fresh.table("plans").all() if "_c" in r["id"] or "cancelled" in r["id"]) == sorted(
                    cancelled
                )
            finally:
                await fresh.close()

    run(main)


def test_async_batch_applies_all_or_none(tiger_url, ns):
    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            async with client.batch() as b:
                plan = b.table("plans", prefix="plan").insert({"amount": 1})
                price = b.table("prices", prefix="price").insert({"plan": "x"})
            assert client.table("plans")[plan.result["id"]] == plan.result
            assert client.table("prices")[price.result["id"]] == price.result
            with pytest.raises(tiger.NotFound, match="operation 1"):
                async with client.batch() as b:
                    b.table("plans", prefix="plan").insert({"id": "plan_no"})
                    b.table("plans").update("plan_absent", {"amount": 1})
            assert "plan_no" not in client.table("plans")
            with pytest.raises(TypeError, match="async with"):
                with client.batch():
                    pass

    run(main)


def test_a_closed_async_client_refuses_calls_and_close_is_idempotent(tiger_url):
    async def main() -> None:
        client = await tiger.aio.connect(tiger_url)
        plans = client.table("plans", prefix="plan")
        await client.close()
        await client.close()
        with pytest.raises(tiger.TigerError, match="closed"):
            await plans.insert({"amount": 1})

    run(main)


def test_connect_without_a_writer_raises_unavailable_without_blocking_the_loop(tmp_path):
    async def main() -> None:
        async with Heartbeat() as beat:
            with pytest.raises(tiger.Unavailable):
                await tiger.aio.connect(f"ipc://{tmp_path}/nobody", timeout=0.5)
        beat.assert_responsive()

    run(main)


@pytest.mark.parametrize("bad", [{"url": 5}, {"url": "http://x"}, {"timeout": 0}, {"timeout": "1"}])
def test_connect_arguments_are_checked_naming_the_field(bad):
    field = next(iter(bad))
    arguments: dict[str, Any] = {"url": "ipc:///tmp/x", **bad}
    with pytest.raises((TypeError, ValueError), match=field):
        run(lambda: tiger.aio.connect(**arguments))


FIXTURE_TESTS = """
import asyncio
import contextlib
import pytest
import zmq
import tiger


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.asyncio
async def test_writes_with_pytest_asyncio(tiger_aclient):
    plans = tiger_aclient.table("plans", prefix="plan")
    assert plans.count() == 0  # a namespace of its own
    plan = await plans.insert({"amount": 1})
    assert plans[plan["id"]] == plan and tiger.current_namespace() != "global"


@pytest.mark.asyncio
async def test_a_second_test_gets_a_fresh_namespace(tiger_aclient, tiger_client):
    plans = tiger_aclient.table("plans", prefix="plan")
    assert plans.count() == 0
    plan = await plans.insert({"amount": 2})
    assert tiger_client.table("plans")[plan["id"]] == plan  # the same replica


@pytest.mark.anyio
async def test_writes_with_anyio(tiger_aclient):
    plan = await tiger_aclient.table("plans", prefix="plan").insert({"amount": 3})
    assert await tiger_aclient.table("plans").wait_for(plan["id"]) == plan
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_tiger_aclient_serves_pytest_asyncio_and_anyio_tests(pytester, monkeypatch, mode, workers):
    for name in ("TIGER_URL", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini(f"[pytest]\ntiger_isolate = true\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_fixture=FIXTURE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", *workers, timeout=60)
    result.assert_outcomes(passed=3)


def test_async_wait_until_returns_a_stored_record_or_the_first_to_arrive(tiger_url, connect, ns):
    other = connect()

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            invoices = client.table("invoices", prefix="in")
            now = await invoices.insert({"customer": "cus_1", "amount": 5})
            assert await invoices.wait_until(lambda r: r["customer"] == "cus_1", timeout=1.0) == now
            async with Heartbeat() as beat:
                cus_2 = invoices.wait_until(lambda r: r["customer"] == "cus_2", timeout=10)
                waiting = asyncio.get_running_loop().create_task(cus_2)
                await asyncio.sleep(0.5)  # sleep-ok: waiting a while before the record is written, the loop ticking
                later = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: other.table("invoices", prefix="in").insert({"customer": "cus_2"})
                )
                assert await waiting == later
            beat.assert_responsive()
            with pytest.raises(tiger.Timeout, match=r"matched the predicate within 0\.1s"):
                await invoices.wait_until(lambda r: r["customer"] == "cus_3", timeout=0.1)
            with pytest.raises(TypeError, match="predicate"):
                await invoices.wait_until("cus_3")  # type: ignore[arg-type]

    run(main)


def test_an_async_feed_yields_another_processes_changes_in_seq_order(connect_own, ns):
    other = connect_own()  # a writer of its own: the seqs compared move with no other xdist worker's writes

    async def main() -> None:
        async with await tiger.aio.connect(other.url) as client:
            with client.table("plans").watch(timeout=10) as feed:
                written = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: other.table("plans", prefix="plan").insert_many([{"n": i} for i in range(5)])
                )
                await asyncio.get_running_loop().run_in_executor(None, lambda: other.table("plans").delete(written[0]["id"]))
                seen = [await feed.__anext__() for _ in range(6)]
            assert [(c.op, c.id) for c in seen] == [("put", r["id"]) for r in written] + [("delete", written[0]["id"])]
            assert [c.record for c in seen[:5]] == written and len({c.seq for c in seen[:5]}) == 1
            assert seen[5].seq == seen[0].seq + 1 and {c.namespace for c in seen} == {ns}

    run(main)


RESOURCE_TESTS = """
import os
import pathlib
import pytest
import zmq

LOG = pathlib.Path(os.environ["PLUGIN_RUNS_DIR"]) / "log"


def note(line):
    with LOG.open("a") as f:
        f.write(line + "\\n")


async def resource():
    note("setup")
    yield {"dsn": "x"}
    note("teardown")


@pytest.mark.asyncio
async def test_1_builds(tiger_aclient):
    assert await tiger_aclient.once("res", resource) == {"dsn": "x"}
    note("test 1")


@pytest.mark.asyncio
async def test_2_uses(tiger_aclient):
    assert await tiger_aclient.once("res", resource) == {"dsn": "x"}
    note("test 2")
"""


@pytest.mark.parametrize("workers", [["-p", "no:xdist"], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_an_async_generator_once_value_of_tiger_aclient_is_torn_down_after_the_run_not_with_its_tests_loop(
    pytester, monkeypatch, tmp_path, workers
):
    """pytest-asyncio closes each test's event loop, and a loop closes the async generators it adopted
    (shutdown_asyncgens): the value's teardown ran (skipped, in truth: GeneratorExit at its yield) right after
    the test that built it, while other tests still used the value. tiger keeps the generator from the
    loop and runs its teardown at the end of the run, in a loop of its own."""
    for name in ("TIGER_URL", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PLUGIN_RUNS_DIR", str(tmp_path))
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_resource=RESOURCE_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", *workers, timeout=60)
    result.assert_outcomes(passed=2)
    log = (tmp_path / "log").read_text().splitlines()
    assert log.count("setup") == 1 and log.count("teardown") == 1
    assert log[-1] == "teardown" and {"test 1", "test 2"} <= set(log)


# -- regressions from review, each named after what broke ---------------------------------------------


def test_closing_a_blocking_client_while_an_async_client_shares_it_does_not_hang(tiger_url):
    """The sharing async client's socket was in the blocking client's zmq context, whose term() waits for every
    socket in it: close() never returned."""
    blocking = tiger.connect(tiger_url)
    shared = tiger.aio.AsyncClient.sharing(blocking)
    done = threading.Event()
    closer = threading.Thread(target=lambda: (blocking.close(), done.set()), daemon=True)
    closer.start()
    assert done.wait(10), "closing the blocking client hung"

    async def main() -> None:
        with pytest.raises(tiger.TigerError, match="closed"):
            await shared.table("plans", prefix="plan").insert({"amount": 1})
        await shared.close()

    run(main)
    with pytest.raises(tiger.TigerError, match="closed"):
        tiger.aio.AsyncClient.sharing(blocking)


def test_a_cancelled_writes_answer_lost_to_a_resend_does_not_fail_the_writes_after_it(tmp_path):
    """A cancelled write's late answer was awaited holding the request lock until its deadline; when another call
    had meanwhile resent on a fresh socket (the writer stalled), that answer went with the old socket: the
    later writes, applied by the writer, raised Timeout and then Unavailable against a healthy writer."""
    with tiger.serve(f"ipc://{tmp_path}/w") as server:

        async def main() -> None:
            client = await tiger.aio.connect(server.url, timeout=5.0, heartbeat_timeout=10.0)
            table = client.table("t")
            await table.insert({"id": "warm"})
            os.kill(server.pid, signal.SIGSTOP)
            try:
                a = asyncio.get_running_loop().create_task(table.insert({"id": "a"}))
                await asyncio.sleep(0)
                b = asyncio.get_running_loop().create_task(table.insert({"id": "b"}))
                await asyncio.sleep(0.2)  # sleep-ok: a and b are sent to the stopped writer meanwhile
                a.cancel()
                await asyncio.sleep(0.1)  # sleep-ok: a's cancellation goes through first
                c = asyncio.get_running_loop().create_task(table.insert({"id": "c"}))
                await asyncio.sleep(1.2)  # sleep-ok: b resends on a fresh socket (every timeout/3 s)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            with pytest.raises(asyncio.CancelledError):
                await a
            assert (await b)["id"] == "b" and (await c)["id"] == "c"
            started = time.monotonic()
            await table.insert({"id": "d"})
            assert time.monotonic() - started < 1.0
            await client.sync()
            assert "a" in table and client.replica.resyncs == 0  # its answer came on the fresh socket
            await client.close()

        run(main)


def test_an_awaited_call_on_a_full_command_socket_ends_by_its_deadline(tmp_path):
    """Regression: a write cancelled after sending leaves its bytes queued on the command socket; with the
    writer away, about 1000 of them (its SNDHWM) fill the queue, and the next call awaited room there for
    ever, past its deadline, holding the client. The queue is filled directly here."""
    server = tiger.serve(f"ipc://{tmp_path}/w")

    async def main() -> None:
        client = await tiger.aio.connect(server.url, timeout=1)
        try:
            os.kill(server.pid, signal.SIGKILL)
            server._process.wait(10)
            with pytest.raises(zmq.Again):
                while True:  # what cancelled calls leave queued (before the writer's silence is noticed)
                    client._socket.sock.send(b"cancelled call", zmq.NOBLOCK)
            with pytest.raises(tiger.Unavailable):
                await asyncio.wait_for(client.table("t").insert({"id": "a"}), 30)
        finally:
            await client.close()

    try:
        run(main)
    finally:
        server.stop()


def test_a_cancelled_close_still_closes_and_keeps_the_teardown_not_run(tiger_url, ns):
    """close() cancelled while it waited for another holder of a once value: the client stayed open (its
    replica thread running) and the teardown it had taken off its list never ran."""
    ran: list[str] = []

    async def resource() -> Any:
        yield 1
        ran.append("teardown")

    async def main() -> None:
        holder = await tiger.aio.connect(tiger_url)
        builder = await tiger.aio.connect(tiger_url)
        try:
            assert await builder.once(f"held-{ns}", resource) == 1
            assert await holder.once(f"held-{ns}", resource) == 1
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(builder.close(), 0.5)  # waits for the holder, then is cancelled
            assert builder._closed and not builder.replica._thread.is_alive()
            assert builder.has_teardown(f"held-{ns}") and ran == []  # kept, not lost half-way
        finally:
            await holder.close()

    run(main)


def test_a_write_in_flight_when_the_client_closes_raises_a_tiger_error_not_cancelled_error(tmp_path):
    """Closing the pyzmq asyncio socket cancels its pending poll: a write in flight got a CancelledError it
    never asked for (its task ended 'cancelled'); the blocking client raises TigerError."""
    with tiger.serve(f"ipc://{tmp_path}/w") as server:

        async def main() -> None:
            client = await tiger.aio.connect(server.url, timeout=0.5, heartbeat_timeout=10.0)
            await client.table("t").insert({"id": "warm"})
            os.kill(server.pid, signal.SIGSTOP)
            try:
                write = asyncio.get_running_loop().create_task(client.table("t").insert({"id": "x"}))
                await asyncio.sleep(0.05)  # sleep-ok: the write is sent and waits for the stopped writer
                await client.close()
            finally:
                os.kill(server.pid, signal.SIGCONT)
            with pytest.raises(tiger.TigerError):
                await write
            assert not write.cancelled()

        run(main)


def test_a_feed_reader_cancelled_as_a_change_arrives_is_cancelled(tiger_url, ns):
    """asyncio.wait_for (before Python 3.12) returns the result and swallows the cancel when its future is
    resolved at the moment of cancelling: the feed reader went on reading, its task never cancelled."""

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            for _ in range(20):
                feed = client.watch(namespace=None, timeout=10)
                got: list[Any] = []

                async def reader(feed: Any = feed, got: list[Any] = got) -> None:
                    async for change in feed:
                        got.append(change)

                task = asyncio.get_running_loop().create_task(reader())
                await asyncio.sleep(0.01)  # sleep-ok: the reader waits on the feed
                feed._sub.offer([tiger.Change(10**9, "put", "t", ns, "x", None)])  # as the replica thread offers
                await asyncio.sleep(0)  # the waiter's future resolves in this iteration...
                task.cancel()  # ...and the task is cancelled in the same one
                await asyncio.gather(task, return_exceptions=True)
                assert task.cancelled()
                feed.close()

    run(main)


def test_waiting_tasks_leave_no_futures_behind_on_a_quiet_replica(tiger_url, ns):
    """Each wait registered a fresh future every 0.5 s and never took back one that timed out or was
    cancelled: on a quiet replica they piled up (each holding its event loop) until the next change."""

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            waiters = [asyncio.get_running_loop().create_task(client.table("t").wait_for(f"x{i}", 30)) for i in range(20)]
            await asyncio.sleep(1.2)  # sleep-ok: each wait re-checks every 0.5 s
            assert len(client.replica.changed._futures) <= 20
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            assert client.replica.changed._futures == []

    run(main)


@pytest.mark.parametrize(("bad", "error"), [(float("nan"), ValueError), (-1.0, ValueError), ("1", TypeError), (True, TypeError)])
def test_a_nan_or_bad_timeout_is_refused_naming_it_not_waited_forever(tiger_url, bad, error):
    """wait_for(id, timeout=nan) waited forever (NaN < 0 is False: it passed the check), blocking and async."""
    with tiger.connect(tiger_url) as client:
        with pytest.raises(error, match="timeout"):
            client.table("t").wait_for("x", timeout=bad)
        with pytest.raises(error, match="timeout"):
            client.sync(timeout=bad)

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            with pytest.raises(error, match="timeout"):
                await client.table("t").wait_for("x", timeout=bad)

    run(main)


def test_one_async_client_serves_successive_event_loops_and_leaves_none_watching_its_socket(tiger_url, ns):
    # A suite's loops come and go (pytest-asyncio makes one per test): the command socket's file descriptor moves
    # to the loop running the call, and closing the client takes it off the loop, which runs on without it.
    with tiger.connect(tiger_url) as blocking:
        client = tiger.aio.AsyncClient.sharing(blocking)
        plans = client.table("plans", prefix="plan")
        kept_open = asyncio.new_event_loop()
        try:
            first = kept_open.run_until_complete(plans.insert({"n": 1}))
            second = asyncio.run(plans.insert({"n": 2}))  # another loop, the first one still open
            third = kept_open.run_until_complete(plans.insert({"n": 3}))  # and back
            assert [r["n"] for r in (first, second, third)] == [1, 2, 3]
            assert [plans[r["id"]]["n"] for r in (first, second, third)] == [1, 2, 3]
            watched = kept_open._selector.get_map()  # type: ignore[attr-defined]
            fd = client._socket.sock.get(zmq.FD)
            # a loop is made to watch the socket when a call must wait for its answer (not when the answer
            # is in already: under load it can be, the calling thread having lost the GIL for a while)
            assert kept_open.run_until_complete(client._socket.wait(int(zmq.POLLIN), 0.01)) is False
            assert fd in watched
            kept_open.run_until_complete(client.close())
            assert fd not in watched
            assert kept_open.run_until_complete(asyncio.sleep(0, "runs on")) == "runs on"
        finally:
            kept_open.close()


class _NoReaders(asyncio.SelectorEventLoop):
    def add_reader(self, *args: Any) -> None:  # as Windows' ProactorEventLoop
        raise NotImplementedError


def test_a_loop_that_cannot_watch_file_descriptors_gets_a_clear_error_not_a_hang(tiger_url, ns):
    with tiger.connect(tiger_url) as blocking:
        client = tiger.aio.AsyncClient.sharing(blocking)
        loop = _NoReaders()
        try:
            with pytest.raises(tiger.TigerError, match=r"needs an event loop that watches file descriptors .*_NoReaders"):
                loop.run_until_complete(client.table("plans").insert({"id": "x"}))
            loop.run_until_complete(client.close())  # closing needs no watching
        finally:
            loop.close()
        blocking.sync()
        assert blocking.table("plans").get("x") is None  # refused before anything was sent


def test_closing_a_client_whose_call_was_left_waiting_on_a_closed_loop_closes_it(tiger_url, ns):
    # A loop closed with a call still waiting on it (run_until_complete, then close(), as a hand-rolled
    # per-test loop does): closing the client from another loop must still close its socket, not raise
    # "Event loop is closed" half way and leave the socket and its context open.
    with tiger.connect(tiger_url) as blocking:
        client = tiger.aio.AsyncClient.sharing(blocking)
        abandoned = asyncio.new_event_loop()
        for _ in range(100):  # until one is still waiting after the loop's first turn (its answer not in yet)
            task = abandoned.create_task(client.table("plans").insert({"n": 1}))
            abandoned.run_until_complete(asyncio.sleep(0))  # sent, waiting for its answer
            if not task.done():
                break
        assert not task.done()
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # left pending on purpose: no "Task was destroyed" at exit
        abandoned.close()
        asyncio.run(client.close())
        assert client._socket.sock.closed
        assert client._ctx.closed


def test_a_call_left_waiting_on_a_paused_loop_goes_on_without_a_resend_after_another_loop_used_the_client(tiger_url, ns):
    with tiger.connect(tiger_url, timeout=3.0) as blocking:
        client = tiger.aio.AsyncClient.sharing(blocking)
        plans = client.table("plans", prefix="plan")
        paused = asyncio.new_event_loop()
        try:
            for i in range(3):
                task = paused.create_task(plans.insert({"id": f"plan_a{i}"}))
                paused.run_until_complete(asyncio.sleep(0))  # sent, waiting on the paused loop
                asyncio.run(plans.insert({"id": f"plan_b{i}"}))  # another loop uses the client meanwhile
                started = time.monotonic()
                paused.run_until_complete(task)
                assert time.monotonic() - started < 0.5  # not its resend, 1 s later
            assert client.resends == 0
            assert sorted(r["id"] for r in plans.all()) == ["plan_a0", "plan_a1", "plan_a2", "plan_b0", "plan_b1", "plan_b2"]
            paused.run_until_complete(client.close())
        finally:
            paused.close()


HUGE_TIMEOUTS = [float("inf"), 1e12, 10**400, 86_400.5]


@pytest.mark.parametrize("bad", HUGE_TIMEOUTS, ids=["inf", "1e12", "10**400", "a-day-and-a-half-second"])
def test_an_infinite_or_huge_timeout_is_refused_naming_it_not_an_overflow_error(tiger_url, bad):
    # connect(timeout=inf) passed the check, then raised OverflowError from the clock (and again from close(),
    # leaking the replica thread); 1e9 overflowed zmq_poll; wait_until and watch overflowed the lock's wait.
    # Every timeout tiger takes is at most a day (None is no limit where a wait allows it).
    threads = threading.active_count()
    message = "must be a number of seconds .* to 86400 .a day."
    for connect in (lambda: tiger.connect(tiger_url, timeout=bad), lambda: tiger.connect(tiger_url, heartbeat_timeout=bad)):
        with pytest.raises(ValueError, match=message):
            connect()
    with pytest.raises(ValueError, match=f"timeout {message}"):
        tiger.serve(timeout=bad)
    with pytest.raises(ValueError, match=f"timeout {message}"):
        request_once(tiger_url, p.Stats(1), timeout=bad)  # (tiger stats, the plugin's cleanup)
    with tiger.connect(tiger_url) as client:
        plans = client.table("plans")
        calls = [
            lambda: client.sync(timeout=bad),
            lambda: plans.wait_for("x", timeout=bad),
            lambda: plans.wait_until(bool, timeout=bad),
            lambda: plans.watch(timeout=bad),
            lambda: client.watch(timeout=bad),
            lambda: client.once("k", dict, timeout=bad),
        ]
        for call in calls:
            with pytest.raises(ValueError, match=f"timeout {message}"):
                call()
        with pytest.raises(ValueError, match=f"wait {message}"):
            client.tear_down_once_values(wait=bad)

    async def main() -> None:
        with pytest.raises(ValueError, match=f"timeout {message}"):
            await tiger.aio.connect(tiger_url, timeout=bad)
        async with await tiger.aio.connect(tiger_url) as client:
            plans = client.table("plans")
            for call in (
                lambda: client.sync(timeout=bad),
                lambda: plans.wait_for("x", timeout=bad),
                lambda: plans.wait_until(bool, timeout=bad),
                lambda: client.once("k", dict, timeout=bad),
                lambda: client.tear_down_once_values(wait=bad),
            ):
                with pytest.raises(ValueError, match=message):
                    await call()
            with pytest.raises(ValueError, match=message):
                plans.watch(timeout=bad)

    run(main)
    assert threading.active_count() == threads  # no replica thread left behind


def test_one_async_client_used_from_two_threads_loops_at_once_refuses_rather_than_hangs(tiger_url, ns):
    # A new user's trial: one AsyncClient driven by event loops of two threads at once (outside "one loop at a
    # time") hung an insert past its timeout, even after close(), or raised a stray CancelledError. The socket
    # is now refused to a loop while a loop running in another thread uses it; the calls that go on complete.
    with tiger.connect(tiger_url) as blocking:
        client = tiger.aio.AsyncClient.sharing(blocking)
        plans = client.table("plans", prefix="plan")
        refused: list[str] = []
        done = threading.Event()

        async def hammer(tag: str) -> int:
            written, deadline = 0, time.monotonic() + 3.0
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(plans.insert({"by": tag}), timeout=10.0)
                    written += 1
                except tiger.TigerError as e:
                    refused.append(str(e))
                    done.set()
            return written

        counts: dict[str, int] = {}
        other = threading.Thread(target=lambda: counts.update(a=asyncio.run(hammer("a"))))
        other.start()
        counts["b"] = asyncio.run(hammer("b"))
        other.join(30.0)
        assert not other.is_alive()
        assert refused and all("in use by an event loop running in another thread" in m for m in refused)
        assert counts["a"] + counts["b"] > 0
        blocking.sync()
        assert len(plans.all()) == counts["a"] + counts["b"]  # each written once, nothing half sent
        assert asyncio.run(plans.insert({"by": "after"}))["by"] == "after"  # one loop at a time: fine again
        client._close_now()


def test_tear_down_once_values_wait_none_is_refused_naming_wait_not_taken_for_zero(tiger_url):
    with tiger.connect(tiger_url) as client:
        with pytest.raises(TypeError, match=r"wait must be a number of seconds \(an int or a float\), not None"):
            client.tear_down_once_values(wait=None)  # type: ignore[arg-type]


RUN_ONCE_TESTS = """
import os
import pathlib
import pytest
import tiger

LOG = pathlib.Path(__file__).parent / "log"


@pytest.fixture
async def catalog(tiger_aclient, tiger_once):
    async def build():
        await tiger_aclient.table("products").insert({"id": "prod_1"})
        return {"ns": tiger.current_namespace()}

    return await tiger_once("catalog", build)


@pytest.fixture
async def server(tiger_once):
    async def start():
        with open(LOG, "a") as f:
            f.write(f"start {os.getpid()}\\n")
        yield {"pid": os.getpid()}
        with open(LOG, "a") as f:
            f.write(f"stop {os.getpid()}\\n")

    return await tiger_once("server", start)


@pytest.mark.parametrize("i", range(4))
async def test_catalog(tiger_client, catalog, server, i):
    assert catalog["ns"].startswith("tiger-run:")
    with tiger.namespace(catalog["ns"]):  # what the factory wrote outlives the test that asked first
        assert tiger_client.table("products").get("prod_1") is not None
    with open(LOG, "a") as f:
        f.write(f"used {catalog['ns']}\\n")
"""


def test_an_async_factory_is_awaited_through_tiger_once_with_the_runs_key_namespace_and_teardown(pytester, monkeypatch):
    # tiger_once refused async factories and sent users to tiger_aclient.once, a plain Client.once: its factory ran
    # in the namespace of the test that asked first (what it wrote was dropped with that test), under a key that was
    # not the run's (a second run on the same writer got the first run's value), torn down when its client closed
    for name in ("TIGER_URL", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_run_once=RUN_ONCE_TESTS)
    with tiger.serve() as server:
        for _ in range(2):
            result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", "--tiger-url", server.url, timeout=60)
            result.assert_outcomes(passed=4)
    log = (pytester.path / "log").read_text().split("\n")
    runs = [line.split()[1] for line in log if line.startswith("used")]
    assert len(runs) == 8 and len(set(runs[:4])) == 1 and len(set(runs[4:])) == 1 and runs[0] != runs[4]
    starts = [i for i, line in enumerate(log) if line.startswith("start")]
    stops = [i for i, line in enumerate(log) if line.startswith("stop")]
    assert len(starts) == len(stops) == 2  # built once per run, torn down once per run, after its tests
    assert stops[0] > max(i for i, line in enumerate(log[: starts[1]]) if line.startswith("used"))


def test_async_wait_until_refuses_an_async_predicate_rather_than_take_its_coroutine_for_true(tiger_url, ns):
    async def is_paid(record):
        return record["paid"]

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            invoices = client.table("invoices", prefix="in")
            await invoices.insert({"paid": False})
            with pytest.raises(TypeError, match=r"not the coroutine function .*is_paid"):
                await invoices.wait_until(is_paid, timeout=0.1)
            with pytest.raises(TypeError, match="returned coroutine"):
                await invoices.wait_until(lambda r: is_paid(r), timeout=0.1)

    run(main)


def test_an_awaited_call_with_no_asyncio_loop_running_says_tiger_aio_runs_on_asyncio(tiger_url, ns):
    # under trio (or anyio's trio backend) every awaited call raised asyncio's bare "no running event loop"
    client = run(lambda: tiger.aio.connect(tiger_url))
    plans = client.table("plans", prefix="plan")
    feed = plans.watch(timeout=1)
    calls = {
        "connect": lambda: tiger.aio.connect(tiger_url),
        "insert": lambda: plans.insert({"amount": 1}),
        "wait_for": lambda: plans.wait_for("plan_nothing", timeout=1),
        "wait_until": lambda: plans.wait_until(lambda r: True, timeout=1),
        "sync": lambda: client.sync(),
        "once": lambda: client.once(f"k-{ns}", lambda: 1),
        "feed": lambda: feed.__anext__(),
    }
    try:
        for name, call in calls.items():
            coroutine = call()  # driven by hand, as another async library's scheduler would: no asyncio loop
            with pytest.raises(tiger.TigerError, match=r"tiger\.aio runs on asyncio, and no asyncio event loop runs"):
                coroutine.send(None)
                pytest.fail(f"{name} did not raise")
            coroutine.close()
    finally:
        feed.close()
        run(client.close)


def test_a_call_given_up_names_its_own_timeout_and_sync_refuses_one_of_0(tmp_path):
    # sync(timeout=0.5) against a stopped writer said "did not answer within 5s" (the client's timeout), and
    # sync(timeout=0), which can never be answered in time, raised Unavailable against a healthy writer
    with tiger.serve(f"ipc://{tmp_path}/w") as server:
        blocking = tiger.connect(server.url, timeout=5.0, heartbeat_timeout=30.0)

        async def main() -> None:
            async with await tiger.aio.connect(server.url, timeout=5.0, heartbeat_timeout=30.0) as client:
                for sync in (client.sync, blocking.sync):
                    with pytest.raises(ValueError, match="timeout must be a number of seconds above 0"):
                        result = sync(timeout=0)
                        await result if asyncio.iscoroutine(result) else None
                os.kill(server.pid, signal.SIGSTOP)
                try:
                    with pytest.raises(tiger.Unavailable, match=r"did not answer within 0\.4s$"):
                        await client.sync(timeout=0.4)
                    with pytest.raises(tiger.Unavailable, match=r"did not answer within 0\.3s$"):
                        blocking.sync(timeout=0.3)
                finally:
                    os.kill(server.pid, signal.SIGCONT)
                await client.sync()

        try:
            run(main)
        finally:
            blocking.close()


@pytest.mark.parametrize("scope", ["anyio.move_on_after", "asyncio.wait_for"])
def test_a_close_cancelled_by_a_scope_still_runs_the_once_teardowns_then_the_key_is_built_anew(tiger_url, ns, scope):
    # anyio cancels again at every await: close() ran under a cancelled scope logged the teardowns as not run and
    # kept the key, so a later caller got the value of a resource nobody would tear down
    import anyio

    events: list[str] = []
    key = f"server-{scope}-{ns}"

    async def server():
        events.append("up")
        yield {"port": 1}
        await asyncio.sleep(0)  # the teardown awaits: under a cancelled anyio scope each await was cancelled
        events.append("down")

    async def main() -> None:
        async def built_then_cancelled() -> None:
            async with await tiger.aio.connect(tiger_url) as client:
                assert await client.once(key, server) == {"port": 1}
                await asyncio.sleep(30)

        if scope.startswith("anyio"):
            with anyio.move_on_after(0.3):
                await built_then_cancelled()
        else:
            with pytest.raises(asyncio.TimeoutError):  # (asyncio.timeout is 3.11's; wait_for cancels once as well)
                await asyncio.wait_for(built_then_cancelled(), 0.3)
        assert events == ["up", "down"]
        async with await tiger.aio.connect(tiger_url) as later:
            assert await later.once(key, lambda: {"port": 2}) == {"port": 2}  # retired: built anew

    anyio.run(main)


def test_a_teardown_run_by_a_close_under_anyio_keeps_its_task_context_and_a_hung_one_is_bounded(tiger_url, ns):
    # a review of the first fix (teardowns run in a task of their own, awaited through every cancellation): a
    # teardown resetting a contextvar failed ("created in a different Context"), and a hung one hung close() past
    # any timeout around it
    import contextvars

    import anyio

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="out")
    events: list[str] = []

    async def in_context():
        token = var.set("in")
        events.append("up")
        yield 1
        await anyio.sleep(0)
        var.reset(token)
        events.append("down")

    async def hung():
        yield 2
        await anyio.Event().wait()
        events.append("never")

    async def main() -> None:
        with anyio.move_on_after(0.3):
            async with await tiger.aio.connect(tiger_url) as client:
                assert await client.once(f"cv-{ns}", in_context) == 1
                await anyio.sleep(30)
        assert events == ["up", "down"] and var.get() == "out"
        started = time.monotonic()
        with anyio.move_on_after(0.3):
            async with await tiger.aio.connect(tiger_url, timeout=0.5) as client:
                assert await client.once(f"hung-{ns}", hung) == 2
                await anyio.sleep(30)
        assert client._closed and time.monotonic() - started < 10  # the shield lasts at most twice the timeout
        assert "never" not in events

    anyio.run(main)


def test_tiger_once_given_an_async_factory_outside_an_event_loop_says_to_await_it(pytester, monkeypatch):
    # a sync fixture calling tiger_once with an async factory got a coroutine, never awaited, as its value
    for name in ("TIGER_URL", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile(
        test_sync_fixture="""
        import pytest

        class Server:
            async def __call__(self):
                return {"port": 1}

        @pytest.fixture
        def server(tiger_once, request):
            return tiger_once("server", request.param)

        @pytest.mark.parametrize("server", [Server(), lambda: None], indirect=True, ids=["instance", "plain"])
        def test_uses(server):
            pass

        async def build():
            return 1

        def test_direct(tiger_once):
            tiger_once("direct", build)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=60)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    text = result.stdout.str()
    assert "tiger_once('server', Server): an async factory is awaited, `await tiger_once(key, factory)`" in text
    assert "tiger_once('direct', build): an async factory is awaited" in text
    assert "under trio, or anyio's trio backend, async factories are not supported" in text  # (a user trial: it
    # said only "this call runs in no event loop" to an awaiting caller under trio)


def test_a_second_task_of_one_client_gets_its_own_once_timeout_and_reentering_a_key_fails(tiger_url, ns):
    # A user trial: two tasks of one AsyncClient, the first building a key for 6 s, the second calling once(key,
    # timeout=1): it waited 5.5 s. And an async factory awaiting once of its own key would wait for itself.
    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            release = asyncio.Event()

            async def slow() -> str:
                await release.wait()
                return "slow"

            key = f"same-client-{ns}"
            building = asyncio.ensure_future(client.once(key, slow))
            claimed = lambda: once_record(client, "global", key) is not None  # noqa: E731
            await client.replica.until(claimed, time.monotonic() + 10, lambda: "no claim")
            started = time.monotonic()
            with pytest.raises(tiger.Timeout, match=r"was not built by another caller within 0\.3s"):
                await client.once(key, slow, timeout=0.3)
            assert time.monotonic() - started < 3
            release.set()
            assert await building == "slow"

            async def reentering() -> int:
                return await client.once(f"again-{ns}", lambda: 1, timeout=2)  # type: ignore[no-any-return]

            with pytest.raises(tiger.OnceFailed, match="called again from inside its own factory"):
                await client.once(f"again-{ns}", reentering, timeout=3)

    run(main)


def counting_waits() -> tuple[list[int], Callable[..., Any], Callable[..., Any]]:
    """([count], an ``asyncio.wait`` that counts its calls in it, the real ``asyncio.wait``)."""
    waits = [0]
    wait = asyncio.wait

    async def counted(*args: Any, **kwargs: Any) -> Any:
        waits[0] += 1
        return await wait(*args, **kwargs)

    return waits, counted, wait


def test_thousands_of_writes_at_once_on_one_client_each_looked_for_its_socket_every_50_ms(tiger_url, monkeypatch):
    """A user trial: every call waiting for the client's socket woke every 50 ms to look again, so the loop's
    work grew with the square of the calls waiting (23.7 waits per write at 4000 writes at once; 6000 then
    took longer than the timeout and 1184 raised Unavailable). Only the first waiter looks every slice now;
    the others wait to be handed the socket."""
    waits, counted, wait = counting_waits()

    async def main() -> None:
        async with await tiger.aio.connect(tiger_url, timeout=60.0) as client:
            table = client.table("crowd")
            await table.insert({"id": "first"})
            monkeypatch.setattr(asyncio, "wait", counted)
            resent = client.resends
            started = time.monotonic()
            written = await asyncio.gather(*[table.insert({"id": f"r{i}"}) for i in range(3000)])
            took = time.monotonic() - started
            resent = client.resends - resent
            monkeypatch.setattr(asyncio, "wait", wait)
            assert len(written) == 3000 and all(f"r{i}" in table for i in range(3000))
        # (13.4 per write before, on a quick machine; the first waiter's 50 ms slices grow with the time taken
        # on a loaded machine: a full run under load counted 6396, 2.1 per write; alone on this machine when
        # it ran 2.4x slower than usual, 6148 to 6512 in 3 s, over 2 per write, in the code before this bound.
        # The full suite on both cores counted 9920 in 5.6 s and 12017 in 7.1 s, 3.3 and 4 per write, with no
        # change to the client: 6 per write, under half of the bug's 13.4, is the bound; and a write not answered
        # within its resend interval (1 s) is resent and waits again, a few waits more per resend.)
        assert waits[0] <= 6 * 3000 + took / 0.05 + 3 * resent, (waits[0], took, resent)

    run(main)


def test_tasks_waiting_for_a_held_socket_each_looked_again_every_second(monkeypatch):
    """A user trial: 30,000 writes gathered on one client got 25 through in time (2,000 a second when fewer
    waited): every waiting task but the first woke every ``LATE_SLICE`` (1 s) to look again, work growing
    with their number each second. Only the second waiter keeps that backstop now; the rest wait to be woken."""
    from tiger import _owned

    monkeypatch.setattr(_owned, "LATE_SLICE", 0.1)  # (the slices of a 1 s slice, in a tenth of the time)
    waits, counted, wait = counting_waits()

    async def main() -> None:
        lock, holder = _owned.OwnedAsyncLock(), object()
        assert await lock.take(holder, time.monotonic() + 60)
        monkeypatch.setattr(asyncio, "wait", counted)
        waiters = [asyncio.ensure_future(lock.take(object(), time.monotonic() + 60)) for _ in range(300)]
        started = time.monotonic()
        await asyncio.sleep(0.45)  # sleep-ok: the time the lock is held, over 4 slices of the waiters' backstop
        held = time.monotonic() - started
        lock.let_go(holder)
        assert await waiters[0]  # handed on in order (the first, then each as the one before lets go)
        monkeypatch.setattr(asyncio, "wait", wait)
        for task in waiters[1:]:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        # each waiter's first wait, the first's 50 ms slices and the second's: 1200 more waits before
        assert waits[0] <= 300 + held / _owned.WAKE_SLICE + 2 * held / 0.1 + 10, (waits[0], held)

    run(main)


def test_a_task_woken_for_the_socket_it_was_not_handed_lost_its_place_in_the_queue():
    """A task waiting first for the socket, woken to look again (a waiter behind it gave up at its deadline)
    and not handed it, waited on a fresh future put at the back of the queue: the tasks behind it went first."""
    from tiger import _owned

    async def main() -> None:
        lock, holder = _owned.OwnedAsyncLock(), object()
        assert await lock.take(holder, time.monotonic() + 60)
        order: list[str] = []

        async def write(name: str, seconds: float) -> None:
            me = object()
            if await lock.take(me, time.monotonic() + seconds):
                order.append(name)
                lock.let_go(me)

        tasks = [asyncio.ensure_future(write(name, 60)) for name in "abc"]
        impatient = asyncio.ensure_future(write("d", 0.05))
        await impatient  # gave up at its deadline, waking the first to look again
        for _ in range(5):  # turns of the loop: the first looks, and waits again
            await asyncio.sleep(0)
        lock.let_go(holder)
        await asyncio.gather(*tasks)
        assert order == ["a", "b", "c"]

    run(main)


def test_a_write_whose_socket_a_cancelled_close_closed_raised_a_raw_zmq_error(tiger_url):
    """A user trial: close() cancelled (a shutdown deadline) closes the sockets anyway; a write whose answer
    had just arrived then read the closed socket: ``zmq.error.ZMQError: Socket operation on non-socket``."""

    async def one_round(client: tiger.aio.Client, n: int) -> bool:
        """False when the moment was missed: the answer came before the write waited (under load)."""
        write = asyncio.create_task(client.table("z").insert({"id": f"z{n}"}))
        await asyncio.sleep(0)  # sent, and waiting for its answer, unless the answer was already there
        if write.done():
            write.result()
            await client.close()
            return False
        # its answer arrives: the socket's FD signals it (not read through zmq, which would clear the signal)
        assert select.select([client._socket._fd], [], [], 10.0)[0], "no answer"
        closing = asyncio.create_task(client.close())  # (asyncio.timeout(0) on 3.11+: cancelled as it waits)
        await asyncio.sleep(0)
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(tiger.TigerError, match="this client is closed"):
            await write
        return True

    async def main() -> None:
        tries = 0
        while not await one_round(await tiger.aio.connect(tiger_url), tries):
            tries += 1
            assert tries < 50, "the write never waited for its answer"

    for _ in range(3):
        run(main)


def test_an_async_client_serving_a_loop_per_test_kept_every_closed_loop(tiger_url):
    """A user trial: a client made once and used by a loop per test (pytest-asyncio's default) kept, in the
    tasks awaiting the answers of writes cancelled as each loop ended, every one of those closed loops (327
    after 1000 runs). They are dropped as the next loop makes its first call, their writes left to the
    replica; none is lost."""
    client = run(lambda: tiger.aio.connect(tiger_url))
    table = client.table("loops")

    async def a_test(i: int) -> None:
        writes = [asyncio.create_task(table.insert({"id": f"{i}-{k}"})) for k in range(5)]  # in flight as the loop ends
        await asyncio.sleep(0)
        assert len(writes) == 5

    try:
        for i in range(100):
            run(lambda i=i: a_test(i))

        async def check() -> None:
            await table.insert({"id": "last"})
            assert not [t for t in client._late if t.get_loop().is_closed()]
            await client.sync()

        run(check)
        with tiger.connect(tiger_url) as fresh:  # what was applied reached this replica too
            applied = {r["id"] for r in fresh.table("loops").all()}
        deadline = time.monotonic() + 10  # (those asked again after their deadline land then)
        while {r["id"] for r in table.all()} != applied and time.monotonic() < deadline:
            run(lambda: asyncio.sleep(0.05))
        assert {r["id"] for r in table.all()} == applied
    finally:
        run(client.close)


EXIT_WITH_A_LOOP_CLOSED_UNDER_ITS_CALLS = """
import asyncio, sys, tiger, tiger.aio
loop = asyncio.new_event_loop()
client = loop.run_until_complete(tiger.aio.connect(sys.argv[1]))
table = client.table("exit")
for i in range(50):
    loop.create_task(table.insert({"id": f"a{i}"}))
loop.create_task(table.wait_until(lambda r: False))
loop.run_until_complete(asyncio.sleep(0.001))
loop.close()  # the calls pending, the client open: the process ends so
"""


def test_a_process_ending_with_a_loop_closed_under_its_calls_printed_exceptions_ignored(tiger_url):
    """A user trial: the calls' coroutines, collected at exit, let go of the client's socket lock and of
    their feed's future: resolving or cancelling a future of the closed loop raised "Event loop is closed",
    printed as "Exception ignored" (97 times for 50 writes and a wait)."""
    child = subprocess.run(
        [sys.executable, "-c", EXIT_WITH_A_LOOP_CLOSED_UNDER_ITS_CALLS, tiger_url], capture_output=True, text=True, timeout=60
    )
    assert "Exception ignored" not in child.stderr, child.stderr[-3000:]


def test_writes_that_got_the_socket_after_they_expired_were_sent_and_refused_as_late(tmp_path):
    """A user trial: with the event loop blocked while writes waited for the client's socket, each one that
    got it past its expiry (a little before its deadline) was still sent, and the writer refused it, "the
    call arrived after its deadline": the error blamed the writer. Such a write now raises before sending,
    saying the client's other calls held the socket.

    The writer is stopped while the loop is blocked, so that the first write holds the socket for certain
    (CI, on an idle writer: each answer came before its write waited for it, and all 20 were done before
    the loop blocked)."""
    with tiger.serve(f"ipc://{tmp_path}/w") as server:

        async def main() -> None:
            async with await tiger.aio.connect(server.url, timeout=1.0, heartbeat_timeout=10.0) as client:
                table = client.table("late")
                await table.insert({"id": "warm"})
                os.kill(server.pid, signal.SIGSTOP)
                try:
                    writes = [asyncio.create_task(table.insert({"id": f"w{i}"})) for i in range(20)]
                    await asyncio.sleep(0)  # the first is sent, the others wait for the socket
                    assert not any(write.done() for write in writes)
                    time.sleep(0.9)  # sleep-ok: a blocked event loop is the condition under test (expiry at 0.8 s)
                finally:
                    os.kill(server.pid, signal.SIGCONT)
                outcomes = await asyncio.gather(*writes, return_exceptions=True)
            errors = [str(e) for e in outcomes[1:] if isinstance(e, BaseException)]  # (the first held the socket)
            assert len(errors) == 19, outcomes[1:]
            assert not [e for e in errors if "arrived after its deadline" in e], errors[:3]
            assert all("held its socket until too late" in e for e in errors), errors[:3]

        run(main)


def left_on_a_closed_loop(start: Callable[[], Awaitable[Any]], writer: tiger.Server | None = None) -> Coroutine[Any, Any, Any]:
    """The coroutine of a call started on an event loop that is then closed, the call waiting (its
    answer, the socket, a build): what the garbage collector closes when it collects it. ``writer``: stopped
    (SIGSTOP) while the call starts, so that its answer is not in after the loop's first turn (CI, 3.10: a
    quick writer answered each of 100 tries within it)."""
    loop = asyncio.new_event_loop()
    try:
        if writer is not None:
            os.kill(writer.pid, signal.SIGSTOP)
        try:
            for _ in range(100):  # until one still waits after the loop's first turn (its answer not in yet)
                task = loop.create_task(start())  # type: ignore[arg-type]
                loop.run_until_complete(asyncio.sleep(0))
                if not task.done():
                    break
        finally:
            if writer is not None:
                os.kill(writer.pid, signal.SIGCONT)
        assert not task.done()
        task._log_destroy_pending = False  # type: ignore[attr-defined]  # left pending on purpose
    finally:
        loop.close()
    return task.get_coro()  # type: ignore[return-value]


def close_holding(lock: Any, coroutine: Coroutine[Any, Any, Any]) -> None:
    """Close ``coroutine`` holding ``lock``, as the collector does when it runs inside code holding it,
    in a thread: a hang fails the test instead of the run."""
    closed = threading.Event()

    def collect() -> None:
        with lock:
            coroutine.close()
        closed.set()

    threading.Thread(target=collect, daemon=True).start()
    assert closed.wait(10), "closing the call's coroutine hung: it took the lock its collector held"


def test_a_write_collected_with_its_closed_loop_while_the_client_held_its_serving_lock_hung_the_process():
    """CI, Python 3.13: a client serving a loop per test hung for good. The garbage collector closed the
    coroutine of a write left waiting on a closed loop while the client's own code held the lock of its
    loops' registry (the collector runs at any allocation), and the coroutine's ``finally`` took that
    lock again. Nothing is lost either: the write, left to the replica, lands in it."""
    with tiger.serve() as writer:
        write_collected_holding_the_serving_lock(writer)


def write_collected_holding_the_serving_lock(writer: tiger.Server) -> None:
    client = run(lambda: tiger.aio.connect(writer.url, timeout=1.0))
    try:
        table = client.table("collected")
        coroutine = left_on_a_closed_loop(lambda: table.insert({"id": "left"}), writer)
        close_holding(client._serving_lock, coroutine)

        async def landed() -> None:
            await table.wait_for("left", timeout=10.0)
            await table.insert({"id": "after"})  # the client goes on

        run(landed)
    finally:
        run(client.close)


def test_a_write_collected_inside_the_replicas_own_work_changed_its_state_under_it():
    """The same collection, inside the replica's lock (its thread applying a change, or a caller's
    deposit): the write's ``finally`` told the replica of the unanswered call there and then, changing
    its pending calls under the work that held the lock. It is now told at the replica's next turn,
    and nothing is lost."""
    with tiger.serve() as writer:
        write_collected_inside_the_replicas_work(writer)


def write_collected_inside_the_replicas_work(writer: tiger.Server) -> None:
    client = run(lambda: tiger.aio.connect(writer.url, timeout=1.0))
    try:
        table = client.table("collected")
        coroutine = left_on_a_closed_loop(lambda: table.insert({"id": "left-in-replica"}), writer)
        with client.replica.changed:  # (re-entrant: the collector's close takes it again freely)
            # (copied holding it: the replica's thread finishes a call of a closed loop under it)
            calls = {name: copy.copy(value) for name, value in client.replica._calls.__dict__.items()}
            coroutine.close()
            assert client.replica._calls.__dict__ == calls, "changed under the replica's own work"

        async def landed() -> None:
            await table.wait_for("left-in-replica", timeout=10.0)

        run(landed)
    finally:
        run(client.close)


def test_an_async_once_collected_with_its_closed_loop_while_the_client_held_its_keys_guard_hung(tiger_url, ns):
    """The same collection for an async ``once`` waiting for its build: its ``finally`` gives back the
    key's lock under the client's guard of its keys' locks, which the collector's thread may hold."""
    client = run(lambda: tiger.aio.connect(tiger_url, timeout=1.0))
    try:

        async def forever() -> None:
            await asyncio.Event().wait()

        coroutine = left_on_a_closed_loop(lambda: client.once(f"collected-{ns}", forever))
        close_holding(client._once._locks_guard, coroutine)

        async def built_again() -> None:  # the key was released: another call builds it
            assert await client.once(f"collected-{ns}", lambda: 42, timeout=10.0) == 42

        run(built_again)
    finally:
        run(client.close)


def test_a_wait_collected_inside_the_replicas_own_work_let_go_of_its_lock(tiger_url, ns):
    """A ``wait_for`` left waiting on a closed loop, collected inside the replica's work (which holds its
    lock ``changed``): its ``finally`` took the lock again to unlist its future and, letting it go,
    let go of every level (``Waking``'s rule), so the work went on unlocked."""
    client = run(lambda: tiger.aio.connect(tiger_url))
    try:
        table = client.table("collected")
        coroutine = left_on_a_closed_loop(lambda: table.wait_for(f"never-{ns}", timeout=30.0))
        with client.replica.changed:
            coroutine.close()
            assert client.replica.changed._is_owned(), "the replica's work went on without its lock"
        with tiger.connect(tiger_url) as other:  # a change notifies the waiters: the leftover goes
            other.table("collected").insert({"id": f"wake-{ns}"})
        run(lambda: table.wait_for(f"wake-{ns}", timeout=10.0))
        assert not client.replica.changed._futures
    finally:
        run(client.close)


def test_a_feed_read_collected_inside_its_delivery_let_go_of_the_feeds_lock(tiger_url, ns):
    """The same for an ``async for`` over a feed: collected inside the delivery of a change to that feed
    (the replica's thread holding the feed's lock), it let go of that lock."""
    client = run(lambda: tiger.aio.connect(tiger_url))
    try:
        feed = client.watch(tables=["collected"], namespace=None)
        coroutine = left_on_a_closed_loop(feed.__anext__)
        cond = feed._sub.cond
        with cond:
            coroutine.close()
            assert cond._is_owned(), "the delivery went on without the feed's lock"
        feed.close()
    finally:
        run(client.close)


def applied_and_buried(other: tiger.Client, table: str, predicate: Callable[[Any], bool]) -> None:
    """Once the writer applied the write ``predicate`` finds (seen by ``other``, a client of its own), a
    change from ``other`` larger than an answer carries of the changes before it (``Ok.before``): a later
    write's answer does not fill the gap that write's change leaves in its own client's replica."""
    other.table(table).wait_until(predicate, timeout=10.0)
    other.table("buried").insert({"pad": "x" * 300_000})


def test_a_write_left_on_a_closed_loop_held_the_blocking_clients_writes_behind_it_their_whole_timeout(ns):
    """A user trial (pytest-asyncio's loop per test, an async client sharing the blocking one's replica):
    a test's loop closed with a write sent and its answer not read. The replica held the gap that write's
    change left until the garbage collector closed its coroutine, if ever, then asked the writer after
    its deadline: every later write of the replica, the blocking client's too, waited its whole timeout
    behind it (when its answer could not carry that change: after a large one). The replica now finishes
    a call whose loop closed, asking the writer for it at once."""
    with tiger.serve() as writer, tiger.connect(writer.url, timeout=3.0) as blocking, tiger.connect(writer.url) as other:
        client = tiger.aio.AsyncClient.sharing(blocking)
        written: list[int] = []  # (the writes that were done after the loop's first turn are in too)

        def write() -> Awaitable[Any]:
            written.append(len(written) + 1)
            return client.table("left", prefix="left").insert({"n": written[-1]})

        try:
            left = left_on_a_closed_loop(write, writer)
            applied_and_buried(other, "left", lambda r: r["n"] == written[-1])
            after = blocking.table("after", prefix="after").insert({"n": 0})  # (Timeout: held behind the gap)
            assert blocking.table("after")[after["id"]] == after
            assert sorted(r["n"] for r in blocking.table("left").all()) == written
            left.close()  # (collected now: nothing changes)
            blocking.sync()
            assert sorted(r["n"] for r in blocking.table("left").all()) == written
        finally:
            client._close_now()


def test_tiger_aclients_write_in_flight_as_its_loop_ended_made_the_namespace_drop_wait_its_whole_timeout(tmp_path):
    """The user trial itself (pytest-asyncio, tiger_aclient, tiger_isolate): a test ended with writes in
    flight; its loop's end cancelled them, and the one sent unanswered was left to a task awaiting its
    answer, which the closed loop never ran; the fixture then closed the async client, its socket with
    that answer. The plugin's drop of the test's namespace, a write of the blocking client sharing the
    replica, waited behind the gap its whole timeout (5 s; about 1 run in 40, when the other worker's
    writes kept the drop's answer from carrying that change). The writer is paused here so that the
    answer comes after the loop's end for certain."""
    with tiger.serve(f"ipc://{tmp_path}/w") as server:
        with tiger.connect(server.url, timeout=3.0, heartbeat_timeout=10.0) as blocking, tiger.connect(server.url) as other:
            client = tiger.aio.AsyncClient.sharing(blocking)
            table = client.table("left", prefix="left")
            run(lambda: table.insert({"n": -1}))

            async def a_test() -> None:
                for k in range(5):  # in flight as the test ends: the first sent, the others waiting for the socket
                    asyncio.get_running_loop().create_task(table.insert({"n": k}))
                await asyncio.sleep(0)

            os.kill(server.pid, signal.SIGSTOP)
            try:
                run(a_test)  # (asyncio.run cancels them, as pytest-asyncio's runner does)
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert client._unanswered, "no write left awaiting its answer on the closed loop"
            client._close_now()  # as the tiger_aclient fixture does after the test
            applied_and_buried(other, "left", lambda r: r["n"] == 0)
            blocking.drop_namespace("tiger-test")  # (Timeout: held behind the gap)
            blocking.sync()
            assert sorted(r["n"] for r in blocking.table("left").all()) == [-1, 0]


def test_a_write_left_waiting_on_a_paused_loop_as_its_client_closed_held_the_blocking_clients_writes_its_whole_timeout(
    tiger_url, ns
):
    """The same with a loop kept from test to test (pytest-asyncio's session loop scope): not running as
    tiger_aclient closed, its write waiting for an answer that went with the closed socket; it raises only
    when the loop runs again. The replica finishes a call of a closed client, asking the writer at once."""
    with tiger.connect(tiger_url, timeout=3.0) as blocking, tiger.connect(tiger_url) as other:
        client = tiger.aio.AsyncClient.sharing(blocking)
        kept = asyncio.new_event_loop()
        try:
            for n in range(1, 101):  # until one still waits after the loop's first turn (its answer not in yet)
                task = kept.create_task(client.table("left", prefix="left").insert({"n": n}))
                kept.run_until_complete(asyncio.sleep(0))
                if not task.done():
                    break
            assert not task.done()
            client._close_now()  # as the tiger_aclient fixture does after the test
            applied_and_buried(other, "left", lambda r: r["n"] == n)
            blocking.table("after", prefix="after").insert({"n": 0})  # (Timeout: held behind the gap)
            with pytest.raises(tiger.TigerError, match="closed"):
                kept.run_until_complete(task)  # the loop runs again (the next test)
            blocking.sync()
            assert sorted(r["n"] for r in blocking.table("left").all()) == list(range(1, n + 1))
        finally:
            kept.close()


def test_a_write_ended_by_its_clients_close_was_asked_again_only_after_its_deadline(tiger_url, ns):
    """A write waiting for its answer as its (sharing) client closed, on a running loop: it raised "closed"
    and left itself to the replica to ask again after its deadline, though its answer had gone with the
    closed socket: the blocking client's writes waited behind its gap until then (here the async client's
    timeout is the longer, so that they time out first). Asked at once now."""
    with tiger.connect(tiger_url, timeout=3.0) as blocking, tiger.connect(tiger_url) as other:
        client = tiger.aio.AsyncClient.sharing(blocking)
        client.timeout = 10.0
        written = 0

        async def closed_under_a_write() -> None:
            nonlocal written
            for _ in range(100):  # until one still waits after a turn of the loop (its answer not in yet)
                written += 1
                task = asyncio.get_running_loop().create_task(client.table("left", prefix="left").insert({"n": written}))
                await asyncio.sleep(0)
                if not task.done():
                    break
            assert not task.done()
            client._close_now()  # (another task of the loop closes it)
            with pytest.raises(tiger.TigerError, match="closed"):
                await task

        run(closed_under_a_write)
        applied_and_buried(other, "left", lambda r: r["n"] == written)
        blocking.table("after", prefix="after").insert({"n": 0})  # (Timeout: held behind the gap)
        blocking.sync()
        assert sorted(r["n"] for r in blocking.table("left").all()) == list(range(1, written + 1))


def test_probing_a_silent_writers_url_blocked_the_event_loop():
    """A review: while the writer was silent, tiger.aio probed its url on the event loop (a plain connect, up to
    0.1 s where connections are neither taken nor refused: a dead host dropping them, or, as here, a stopped
    writer whose backlog is full) at every resend, at a write's end (and a DNS lookup, which no timeout bounds),
    before each call to a writer silent past heartbeat_timeout, between a sync's tries and a once claim's. Every
    task of the process stood still meanwhile. Each probe is now made in a thread; what they find is said as before."""
    import socket

    from tiger._server import accepting, tcp_host_port

    with tiger.serve("tcp://127.0.0.1:*") as server:
        filling: list[Any] = []

        async def main() -> None:
            client = await tiger.aio.connect(server.url, timeout=2.5, heartbeat_timeout=1.0)
            table = client.table("t")
            await table.insert({"id": "before"})
            os.kill(server.pid, signal.SIGSTOP)
            try:
                port = int(tcp_host_port(server.url)[1])
                for _ in range(300):  # the stopped writer's backlog (100), filled: a probe's connect waits its 0.1 s
                    stream = socket.socket()
                    stream.setblocking(False)
                    filling.append(stream)
                    stream.connect_ex(("127.0.0.1", port))
                started = time.monotonic()
                assert accepting(server.url, 0.1) is None and time.monotonic() - started >= 0.09  # (the premise)
                async with Heartbeat() as beat:
                    with pytest.raises(tiger.Unavailable, match=r"did not answer within 2\.5s"):
                        await table.insert({"id": "lost"})  # resends, then gives up
                    with pytest.raises(tiger.Unavailable, match="has been silent for"):
                        await table.insert({"id": "refused"})  # silent past heartbeat_timeout: not sent
                    with pytest.raises(tiger.Unavailable):
                        await client.sync(timeout=2.5)  # tries again each time the writer may be heard
                    with pytest.raises(tiger.Unavailable):
                        await client.once("k", lambda: 1, timeout=2.5)  # the claim, tried again likewise
                blocked = [gap for gap in beat.gaps if gap >= 0.09]
                assert len(blocked) <= 2, f"the event loop stood still {len(blocked)} times: {blocked}"
                beat.assert_responsive()
            finally:
                os.kill(server.pid, signal.SIGCONT)
                for stream in filling:
                    stream.close()
            await client.sync(timeout=10.0)  # the writer back: the client goes on
            assert (await table.insert({"id": "after"}))["id"] == "after" and "refused" not in table
            await client.close()

        run(main)


def test_a_write_cancelled_during_its_resends_probe_reached_its_replica_only_at_its_deadline(tmp_path, monkeypatch):
    """A review: the resend made its fresh socket, then awaited the probes of the url (in a thread), then sent.
    A write cancelled during that await had its bytes on neither socket (the old one closed, the new one not yet
    given them): its late answer never came, and its change reached the replica only when the replica asked
    the writer at the call's deadline. The probes now come first, the fresh socket and the send with no await
    between them."""
    from tiger import _client

    probing = threading.Event()
    real = _client.recently_refused

    def slow_probe(url: str) -> str | None:  # (the probe of a host that drops connections takes its 0.1 s and more)
        probing.set()
        time.sleep(0.5)  # sleep-ok: a slow probe, the window the cancellation lands in
        return real(url)

    monkeypatch.setattr(_client, "recently_refused", slow_probe)
    with tiger.serve(f"ipc://{tmp_path}/w") as server:

        async def main() -> None:
            client = await tiger.aio.connect(server.url, timeout=6.0, heartbeat_timeout=30.0)
            table = client.table("t")
            await table.insert({"id": "warm"})
            os.kill(server.pid, signal.SIGSTOP)
            try:
                write = asyncio.get_running_loop().create_task(table.insert({"id": "cancelled"}))
                deadline = time.monotonic() + 10
                while not probing.is_set():  # the resend, a second in: its probe under way
                    assert time.monotonic() < deadline, "the write never resent"
                    await asyncio.sleep(0.01)  # sleep-ok: polled with a deadline, the probe's thread sets it
                write.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await write
            finally:
                os.kill(server.pid, signal.SIGCONT)
            started = time.monotonic()
            await table.wait_for("cancelled", timeout=10.0)
            assert time.monotonic() - started < 2.5, "the cancelled write reached the replica only at its deadline"
            await client.close()

        run(main)


@pytest.mark.parametrize("wait", ["wait_for", "wait_until", "feed", "once"])
def test_waits_on_a_loop_that_kept_waking_late_never_timed_out(tiger_url, ns, wait):
    # a task computing for 0.15 s between awaits made every wake-up of the loop late by more than
    # PAUSE_GRACE (0.1 s): each was taken for a paused process and the deadline stretched again, for
    # ever (a wait with timeout=0.5 still waited when an outer asyncio.wait_for cancelled it at 8 s)
    async def main() -> float:
        async with await tiger.aio.connect(tiger_url) as client, await tiger.aio.connect(tiger_url) as other:
            plans = client.table("plans", prefix="plan")
            building, never = asyncio.Event(), asyncio.Event()

            async def build_for_ever() -> int:
                building.set()
                await never.wait()
                return 1

            builder = asyncio.ensure_future(other.once("held", build_for_ever))  # the key the waiter waits for
            await asyncio.wait_for(building.wait(), 10.0)  # (claimed by the other client)
            waits = {
                "wait_for": lambda: plans.wait_for("plan_never", timeout=0.5),
                "wait_until": lambda: plans.wait_until(lambda r: False, timeout=0.5),
                "feed": lambda: plans.watch(timeout=0.5).__anext__(),
                "once": lambda: client.once("held", lambda: 2, timeout=0.5),
            }
            computing_stops = asyncio.Event()

            async def compute() -> None:
                while not computing_stops.is_set():
                    time.sleep(0.15)  # sleep-ok: stands for another task's CPU-bound step between awaits
                    await asyncio.sleep(0)

            computing = asyncio.ensure_future(compute())
            started = time.monotonic()
            try:
                with pytest.raises(tiger.Timeout):
                    await asyncio.wait_for(waits[wait](), 8.0)  # (the outer bound: asyncio.TimeoutError fails)
                return time.monotonic() - started
            finally:
                computing_stops.set()
                await computing
                builder.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await builder

    assert run(main) < 4.0


@contextlib.contextmanager
def portal_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own (an anyio portal's, Starlette TestClient's app loop),
    stopped, joined and closed at the end."""
    portal = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=lambda: (portal.call_soon(started.set), portal.run_forever()), daemon=True)
    thread.start()
    try:
        assert started.wait(10.0)
        yield portal
    finally:
        portal.call_soon_threadsafe(portal.stop)
        thread.join(10.0)
        portal.close()


def test_a_client_used_in_turn_by_two_running_loops_waited_a_resend_on_every_switch_back(tiger_url, ns):
    # An async test calling an app that runs on a portal thread's loop (Starlette's TestClient, anyio's
    # portal: run_coroutine_threadsafe(...).result()), both loops running, their calls never at once. The
    # removal of the FD that the portal's loop queued to the test's loop as it took the socket ran after
    # the test's next call had registered it again: that call's answer never woke it, and from the second
    # round on each insert on the test's loop took ~1 s, its resend (8 rounds: an answer there
    # before its call waits needs no wake-up, so a round may pass).
    with portal_loop() as portal:

        async def main() -> tuple[list[float], int]:
            async with await tiger.aio.connect(tiger_url) as client:
                plans = client.table("plans", prefix="plan")
                took: list[float] = []
                for i in range(8):
                    begun = time.monotonic()
                    assert (await plans.insert({"id": f"plan_test{i}"}))["id"] == f"plan_test{i}"  # on this loop
                    took.append(time.monotonic() - begun)
                    begun = time.monotonic()
                    on_portal = asyncio.run_coroutine_threadsafe(plans.insert({"id": f"plan_app{i}"}), portal)
                    assert on_portal.result(10.0)["id"] == f"plan_app{i}"  # this loop's thread held meanwhile
                    took.append(time.monotonic() - begun)
                assert sorted(r["id"] for r in plans.all()) == sorted(
                    [f"plan_test{i}" for i in range(8)] + [f"plan_app{i}" for i in range(8)]
                )
                return took, client.resends

        took, resends = run(main)
    assert resends == 0, [round(t, 3) for t in took]
    assert max(took) < 0.5, [round(t, 3) for t in took]  # (a stalled call waits for its resend: 1 s)


def test_a_signal_of_the_registration_a_loop_gave_up_took_the_wake_up_of_the_loop_waiting_now():
    # A review of the two-loop work: the portal's loop, giving the socket up (the removal of its registration
    # queued to it, not run yet), took a signal of that registration; reading ZMQ_EVENTS there clears the FD's
    # edge (zmq_getsockopt(3), ZMQ_FD) that the test's loop, waiting for the answer now, waited on: its wait
    # ended only at its timer (a resend, 1 s). A stale registration's signal must read nothing. Real sockets
    # and loops; the stale signal is run on the portal's thread at the moment the race made it run.
    from tiger.aio import _POLLIN, _AwaitedSocket

    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        router.bind("tcp://127.0.0.1:*")
        dealer.connect(router.getsockopt_string(zmq.LAST_ENDPOINT))
        dealer.send(b"hello")
        assert router.poll(10_000)
        peer = router.recv_multipart()[0]
        awaited = _AwaitedSocket(dealer)
        with portal_loop() as portal:

            async def take() -> object:
                awaited.watch(asyncio.get_running_loop())
                return awaited._token

            stale = asyncio.run_coroutine_threadsafe(take(), portal).result(10.0)

            async def main() -> bool:
                waiting = asyncio.ensure_future(awaited.wait(_POLLIN, 10.0))  # the test's loop takes the socket
                await asyncio.sleep(0)
                assert not waiting.done() and awaited._token is not stale
                router.send_multipart([peer, b"answer"])
                assert select.select([awaited._fd], [], [], 10.0)[0]  # its edge is up (not read: that clears it)
                ran = asyncio.run_coroutine_threadsafe(_run_soon(awaited._signalled, portal, stale), portal)
                ran.result(10.0)  # the portal's loop took the stale registration's signal
                return await asyncio.wait_for(waiting, 5.0)  # (not woken: its timer ends it at 10 s)

            assert run(main) is True
            assert dealer.recv(zmq.NOBLOCK) == b"answer"
            awaited.close()
    finally:
        router.close(linger=0)
        dealer.close(linger=0)
        ctx.term()


async def _run_soon(call: Callable[..., Any], *args: Any) -> None:
    call(*args)


def test_a_client_closed_on_a_portal_loop_had_its_fds_removal_undo_the_next_clients_on_the_test_loop(ns):
    # The app's client closed on the portal's loop (its lifespan's end) while the test's loop, running but
    # held in .result(), still watched its FD: the removal queued to the test's loop ran after the test's
    # next client had registered its own socket under the same FD number (freed by the close), and the
    # selector still held the closed FD's registration under it, so that client's calls were not woken:
    # its connect waited for the resend of its hello (1 s), every round.
    # A writer of the test's own: the 0.5 s bound below times its connects, a join of the run's shared writer
    # (which the other xdist worker may have loaded with 100k records) took ~1 s under load.
    with tiger.serve() as server, portal_loop() as portal:

        async def main() -> tuple[list[float], int]:
            took: list[float] = []
            resends = 0
            for i in range(4):
                app = await tiger.aio.connect(server.url)
                await app.table("plans", prefix="plan").insert({"id": f"plan_app{i}"})  # on this loop
                asyncio.run_coroutine_threadsafe(app.close(), portal).result(10.0)  # closed on the portal's
                begun = time.monotonic()
                async with await tiger.aio.connect(server.url) as client:
                    took.append(time.monotonic() - begun)
                    begun = time.monotonic()
                    await client.table("plans", prefix="plan").insert({"id": f"plan_test{i}"})
                    took.append(time.monotonic() - begun)
                    resends += client.resends
            return took, resends

        took, resends = run(main)
    assert resends == 0, [round(t, 3) for t in took]
    assert max(took) < 0.5, [round(t, 3) for t in took]  # (a call not woken waits for its resend: 1 s)


# -- closing a client ends what was opened through it, on a replica it shares too ---------------------------------


async def _polled(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Return once ``condition()`` (state the replica's thread or another thread brings about), looked at every
    millisecond; fail naming ``what`` past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not reached within {timeout}s"
        await asyncio.sleep(0.001)


async def _open_and_close(client: tiger.aio.AsyncClient) -> dict[str, str]:
    """Through ``client``: a feed read (no timeout) and a ``wait_for`` and ``wait_until`` (30 s) in tasks, and a
    thread iterating a feed; then ``client.close()``. Returns what each raised (``"Type: message"``) within 5 s
    of the close."""
    plans = client.table("plans", prefix="plan")
    replica = client.replica
    feeds, futures = len(replica._seq.feeds), len(replica.changed._futures)
    threaded = client.watch(tables=["plans"])
    raised = {"thread": "still iterating 5 s after the close"}

    def read() -> None:
        try:
            for _ in threaded:
                pass
        except BaseException as e:
            raised["thread"] = f"{type(e).__name__}: {e}"

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    tasks = {
        "feed": asyncio.get_running_loop().create_task(plans.watch().__anext__()),
        "wait_for": asyncio.get_running_loop().create_task(plans.wait_for("plan_never", timeout=30)),
        "wait_until": asyncio.get_running_loop().create_task(plans.wait_until(lambda r: False, timeout=30)),
    }
    await _polled(
        lambda: len(replica._seq.feeds) == feeds + 3 and len(replica.changed._futures) > futures and threaded._sub.sleepers,
        "the waits waiting",
    )
    await client.close()
    await asyncio.wait(tasks.values(), timeout=5)
    for name, task in tasks.items():
        if not task.done():
            task.cancel()
            raised[name] = "still waiting 5 s after the close"
        else:
            error = task.exception()
            raised[name] = f"{type(error).__name__}: {error}"
    await asyncio.to_thread(reader.join, 5)
    return raised


def test_closing_a_sharing_async_client_left_its_feeds_and_waits_running(tiger_url, connect, ns):
    """A user trial: AsyncClient.sharing(client) (what tiger_aclient is) closed only its own socket. Its feeds and
    waits live on the replica it shares, so a pending wait_for and wait_until waited out their timeouts, a feed
    without one never ended and went on yielding the blocking client's writes, and a thread iterating it stayed
    alive. They end now as a plain client's close ends them, with its errors; the blocking client's own feed and
    waits go on."""
    base = connect()
    kept_feed = base.watch(tables=["plans"], timeout=10)  # opened through the blocking client: untouched

    ended = f"<tiger.Feed tables=['plans'] namespace={ns!r}> ended: the client was closed"
    closed = {
        "feed": f"TigerError: {ended}",
        "thread": f"TigerError: {ended}",
        "wait_for": "TigerError: the client was closed",
        "wait_until": f"TigerError: wait_until on plans in namespace {ns!r} ended: the client was closed",
    }

    async def main() -> None:
        assert await _open_and_close(await tiger.aio.connect(tiger_url)) == closed  # a plain client's close
        shared = tiger.aio.AsyncClient.sharing(base)
        kept_wait = asyncio.get_running_loop().create_task(asyncio.to_thread(base.table("plans").wait_for, "plan_kept", 10))
        await _polled(lambda: base.replica.changed._gates, "the blocking client's wait_for waiting")
        assert await _open_and_close(shared) == closed
        await asyncio.to_thread(base.table("plans", prefix="plan").insert, {"id": "plan_kept"})
        assert (await asyncio.wait_for(kept_wait, 10))["id"] == "plan_kept"
        with pytest.raises(tiger.TigerError, match=r"^this client is closed$"):
            shared.watch()

    run(main)
    assert next(kept_feed).id == "plan_kept"


def test_closing_a_sharing_async_client_left_its_once_wait_for_another_processes_build_running(tiger_url, connect, tmp_path):
    """The same for a ``once`` waiting through the sharing client for a build in another process: it waited on
    the shared replica until its own timeout; it raises as a plain client's close makes it raise."""
    key = f"slow-{tmp_path.name}"
    child = subprocess.Popen([sys.executable, "-c", BUILDER, tiger_url, key, "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(child).strip() == "building"
        base = connect()

        async def main() -> None:
            shared = tiger.aio.AsyncClient.sharing(base)
            waiting = asyncio.get_running_loop().create_task(shared.once(key, lambda: pytest.fail("built twice"), timeout=30))
            await _polled(lambda: base.replica.changed._futures, "the once call waiting for the build")
            await shared.close()
            with pytest.raises(tiger.TigerError) as raised:
                await asyncio.wait_for(waiting, 5)
            assert type(raised.value) is tiger.TigerError and str(raised.value) == "the client was closed"

        run(main)
        assert child.poll() is None  # (still building: the wait ended by the close, not by the build)
    finally:
        child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]


def test_a_sharing_async_client_dropped_unclosed_left_its_feeds_running(connect, ns):
    """Dropped without ``close()``, a sharing client's finalizer closed only its socket: a feed opened through it
    stayed open on the shared replica. A feed now keeps the client it was opened through alive (a user trial: a
    feed returned alone ended "the client was closed"), and dropped together they both go: the feed off the
    shared replica's list, the client's finalizer run; the blocking client's feed goes on."""
    base = connect()
    kept = base.watch(tables=["plans"], timeout=10)
    shared = tiger.aio.AsyncClient.sharing(base)
    feed = shared.watch(tables=["plans"], timeout=5)
    dropped = weakref.ref(shared)
    del shared
    gc.collect()
    assert dropped() is not None  # (kept by its feed)
    base.table("plans", prefix="plan").insert({"id": "plan_seen"})
    assert next(feed).id == "plan_seen"
    assert len(base.replica._seq.feeds) == 2
    del feed
    gc.collect()
    assert dropped() is None
    base.table("plans", prefix="plan").insert({"id": "plan_kept"})
    assert [next(kept).id, next(kept).id] == ["plan_seen", "plan_kept"]
    assert len(base.replica._seq.feeds) == 1  # (the kept one: the dropped feed was taken off)


LEFTOVER_READER_TESTS = """
import asyncio
import time

import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")
left = {}


async def test_1_leaves_a_reader(tiger_aclient):
    plans = tiger_aclient.table("plans", prefix="plan")
    seen = left["seen"] = []

    async def read():
        try:
            async for change in plans.watch():
                seen.append((change.op, change.id))
        except Exception as e:
            seen.append(("ended", f"{type(e).__name__}: {e}"))

    left["reader"] = asyncio.create_task(read())
    left["wait"] = asyncio.create_task(plans.wait_for("plan_never", timeout=60))
    await asyncio.sleep(0)  # the reader's feed open
    await plans.insert({"id": "plan_1"})
    deadline = time.monotonic() + 10
    while not seen:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)


async def test_2_finds_it_ended(tiger_aclient):
    deadline = time.monotonic() + 5
    while not (left["reader"].done() and left["wait"].done()) and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert left["reader"].done(), f"the reader of test 1's tiger_aclient still reads: {left['seen']}"
    assert left["wait"].done(), "the wait_for of test 1's tiger_aclient still waits"
    assert str(left["wait"].exception()) == "the client was closed"
    assert left["seen"][0] == ("put", "plan_1") and len(left["seen"]) == 2, left["seen"]
    assert left["seen"][1][1].startswith("TigerError: <tiger.Feed tables=['plans'] namespace="), left["seen"]
    assert left["seen"][1][1].endswith("> ended: the client was closed"), left["seen"]
"""


def test_a_feed_reader_and_a_wait_of_tiger_aclient_outlived_their_test(pytester, monkeypatch):
    """The user trial under pytest (a session-scoped loop): a task reading a feed opened through
    ``tiger_aclient`` in test 1 read on in test 2, and got test 1's namespace drop; its wait_for waited on.
    tiger_aclient is closed after each test: they end there, before the drop."""
    for name in ("TIGER_URL", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini("[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = session\n")
    pytester.makepyfile(test_leftover=LEFTOVER_READER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:xdist", timeout=60)
    result.assert_outcomes(passed=2)


AIO_LEFT_OPEN = """
import asyncio, sys
import tiger.aio

url, key, how = sys.argv[1], sys.argv[2], sys.argv[3]
kept = []


async def main():
    client = await tiger.aio.connect(url)

    async def session():  # an async generator factory: its teardown awaited
        yield "session"
        await asyncio.sleep(0)
        print("async teardown ran", flush=True)

    def pool():
        yield "pool"
        print("teardown ran", flush=True)

    assert await client.once(key + "-session", session) == "session"
    assert await client.once(key + "-pool", pool) == "pool"
    if how == "kept":
        kept.append(client)  # left open past the loop's end


asyncio.run(main())
print("exiting", flush=True)
"""


@pytest.mark.parametrize("how", ["dropped", "kept"])
def test_an_async_clients_once_teardowns_never_ran_when_it_was_left_open(tiger_url, connect, how):
    # A user trial: a tiger.aio client left open (kept, or dropped as its task ended) at the end of asyncio.run:
    # the teardowns of its once values never ran, and nothing said so. Kept, it closes at exit with every other
    # client: they run then (an async generator's in an event loop of its own), newest first, and their keys
    # are retired. Dropped, they cannot run (no call can be made as it is collected), and a warning names them
    # (kept until exit instead, a suite that never closed its clients leaked one per test: a review).
    key = f"left-{how}-{os.getpid()}-{time.monotonic_ns()}"
    child = subprocess.run([sys.executable, "-c", AIO_LEFT_OPEN, tiger_url, key, how], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    reader = connect()
    reader.sync()
    if how == "kept":
        assert child.stdout.splitlines() == ["exiting", "teardown ran", "async teardown ran"], child.stdout + child.stderr
        assert "not run" not in child.stderr, child.stderr
        assert once_record(reader, "global", key + "-session") is None and once_record(reader, "global", key + "-pool") is None
    else:
        assert child.stdout.splitlines() == ["exiting"], child.stdout + child.stderr
        dropped = "a tiger client was dropped without close(): the teardowns of its once values "
        dropped += f"['{key}-pool', '{key}-session'] do not run"
        assert dropped in child.stderr, child.stderr


CANCELLED_BUILD_WITH_THE_WRITER_GONE = """
import asyncio
import tiger, tiger.aio

writer = tiger.serve()  # (its own: stopped as the build runs)


async def never_done():
    await asyncio.sleep(30)


async def main():
    client = await tiger.aio.connect(writer.url)
    building = asyncio.create_task(client.once("k", never_done))
    while tiger._once.once_record(client, "global", "k") is None:  # claimed: the build runs
        await asyncio.sleep(0.01)
    writer.stop()
    # main returns: asyncio.run cancels the build, whose release of the key goes out in a task of its own


asyncio.run(main())
print("asyncio.run returned", flush=True)
"""


def test_a_cancelled_build_with_the_writer_gone_printed_task_was_destroyed_but_it_is_pending():
    # A user trial: asyncio.run ending while a once build ran, its writer just stopped: the build's release of
    # the key, sent in a task made as asyncio.run cancelled the others (never awaited), was still resending
    # when the loop closed: "Task was destroyed but it is pending!" (5 of 5). Its coroutine, closed, hands the
    # release to the replica, as a write's late answer's task does.
    script = CANCELLED_BUILD_WITH_THE_WRITER_GONE
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["asyncio.run returned"]
    assert "Task was destroyed" not in done.stderr, done.stderr
