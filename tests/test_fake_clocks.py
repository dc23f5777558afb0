"""A test suite's fake clock (freezegun, time-machine) reaches the test's own process: tiger's calls and
waits there read clocks no faker patches (``tiger._clock``), so they work, time out and expire as
without it (a user's report: every write under ``freeze_time`` failed "the call arrived after its
deadline (470062846s late)", and a connect inside it did not connect)."""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import signal
import subprocess
import sys
import time
import uuid

import pytest
import time_machine
from freezegun import freeze_time

import tiger
import tiger.aio

# The fake clocks of the two libraries, each way: the past, the future, frozen or ticking.
FAKES = {
    "freezegun-2012": lambda: freeze_time("2012-01-14"),
    "freezegun-2040-ticking": lambda: freeze_time("2040-06-01", tick=True),
    "time-machine-1970": lambda: time_machine.travel(0, tick=False),
    "time-machine-2040": lambda: time_machine.travel(2_222_222_222),
}


@pytest.fixture(params=list(FAKES))
def fake_clock(request):
    return FAKES[request.param]


def _writes(client: tiger.Client, other: tiger.Client) -> None:
    """Each kind of call, and a write of another client reaching this one's replica (its thread polls)."""
    theirs = other.table("plans", prefix="plan").insert({"amount": 1})
    plans = client.table("plans", prefix="plan")
    assert plans.wait_for(theirs["id"], timeout=5.0) == theirs
    plan = plans.insert({"amount": 500})
    assert plans.get(plan["id"]) == plan  # read-your-writes
    assert plans.update(plan["id"], {"amount": 700})["amount"] == 700
    with client.batch() as b:
        more = b.table("plans", prefix="plan").insert({"amount": 1})
    assert plans.get(more.result["id"])["amount"] == 1
    assert plans.wait_for(plan["id"], timeout=1.0)["amount"] == 700
    plans.delete(plan["id"])
    assert plan["id"] not in plans
    key = f"fake-clock-{uuid.uuid4().hex[:8]}"
    assert client.once(key, lambda: 42, timeout=5.0) == 42
    client.sync(timeout=5.0)


def test_writes_under_a_fake_clock_were_refused_as_arrived_after_their_deadline(tiger_url, ns, fake_clock):
    with tiger.connect(tiger_url) as client, tiger.connect(tiger_url) as other, tiger.namespace(ns):
        with fake_clock():
            _writes(client, other)


def test_a_client_connected_under_a_fake_clock_could_not_connect_or_write_after_it(tiger_url, ns, fake_clock):
    with tiger.connect(tiger_url) as other:
        with fake_clock():
            client = tiger.connect(tiger_url, timeout=5.0)
        try:
            with tiger.namespace(ns):
                _writes(client, other)  # (its hello's clock sample was the fake one)
                with fake_clock():
                    _writes(client, other)
        finally:
            client.close()


def test_a_writer_started_and_stopped_under_a_fake_clock(fake_clock):
    with fake_clock(), tiger.serve() as server, tiger.connect(server.url) as client:
        assert client.table("plans").insert({"id": "plan_1"})["id"] == "plan_1"
    assert server.stop() is not None


@pytest.mark.parametrize("fake", ["freezegun-2040-ticking", "time-machine-2040"])
def test_a_write_that_raised_under_a_clock_in_the_future_was_applied_later(fake):
    """A call's expiry was on the fake clock: 2040 at the writer, so a write given up as unanswered (the
    writer paused) was applied when the writer went on, breaking "a write that raised is never applied later"."""
    with tiger.serve() as server, tiger.connect(server.url, timeout=1.0) as client:
        table = client.table("t")
        with FAKES[fake]():
            os.kill(server.pid, signal.SIGSTOP)
            try:
                with pytest.raises(tiger.Unavailable):
                    table.insert({"id": "raised"})
            finally:
                os.kill(server.pid, signal.SIGCONT)
            table.insert({"id": "after"})
            client.sync()
            assert "after" in table and "raised" not in table


def test_a_wait_under_a_frozen_clock_never_timed_out(tiger_url, ns):
    with tiger.connect(tiger_url) as client, tiger.namespace(ns), freeze_time("2012-01-14"):
        plans = client.table("plans", prefix="plan")
        for wait in (
            lambda: plans.wait_for("plan_never", timeout=0.3),
            lambda: plans.wait_until(lambda r: False, timeout=0.3),
            lambda: next(iter(plans.watch(timeout=0.3))),
        ):
            started = time.clock_gettime(time.CLOCK_MONOTONIC)  # (a clock freezegun leaves real)
            with pytest.raises(tiger.Timeout):
                wait()
            assert time.clock_gettime(time.CLOCK_MONOTONIC) - started < 3.0


ASYNC_FAKES = {  # freezegun's real_asyncio: asyncio's own timers on the real clock, as its docs advise
    "freezegun-2012": lambda: freeze_time("2012-01-14", real_asyncio=True),
    "freezegun-2040-ticking": lambda: freeze_time("2040-06-01", tick=True, real_asyncio=True),
    "time-machine-1970": lambda: time_machine.travel(0, tick=False),
}


@pytest.mark.parametrize("fake", list(ASYNC_FAKES))
def test_async_writes_under_a_fake_clock_were_refused_as_arrived_after_their_deadline(tiger_url, ns, fake):
    async def main() -> None:
        async with await tiger.aio.connect(tiger_url) as client:
            with tiger.namespace(ns), tiger.connect(tiger_url) as other, ASYNC_FAKES[fake]():
                plans = client.table("plans", prefix="plan")
                plan = await plans.insert({"amount": 500})
                assert plans.get(plan["id"]) == plan
                assert (await plans.update(plan["id"], {"amount": 1}))["amount"] == 1
                theirs = other.table("plans", prefix="plan").insert({"amount": 2})
                assert await plans.wait_for(theirs["id"], timeout=5.0) == theirs
                with pytest.raises(tiger.Timeout):
                    await plans.wait_for("plan_never", timeout=0.3)
                assert await client.once(f"fake-{uuid.uuid4().hex[:8]}", lambda: 7) == 7
                await client.sync()

    asyncio.run(main())


FROZEN_SUITE = """
import pytest, tiger
from freezegun import freeze_time

@pytest.fixture(autouse=True)
def frozen():  # set up before tiger's fixtures: each test's namespace, its lease and its drop are frozen too
    with freeze_time({when!r}, tick={tick}):
        yield

@pytest.fixture(scope="session")
def shared(tiger_once):
    return tiger_once("shared-plan", lambda: {{"amount": 100}})

@pytest.mark.parametrize("n", range(6))
def test_frozen(n, frozen, shared, tiger_client):
    plans = tiger_client.table("plans", prefix="plan")
    plan = plans.insert({{"amount": n}})
    assert plans.get(plan["id"]) == plan
    assert shared == {{"amount": 100}}
    tiger_client.sync()
"""


@pytest.mark.parametrize("when, tick", [("2012-01-14", False), ("2040-06-01", True)], ids=["2012", "2040-ticking"])
def test_a_pytest_run_whose_tests_froze_the_clock_before_tigers_fixtures(pytester, when, tick):
    pytester.makepyfile(test_frozen=FROZEN_SUITE.format(when=when, tick=tick))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2", timeout=120)
    result.assert_outcomes(passed=6)


SHIM_SCRIPTS = {
    # zmq imported and a freeze used before tiger: freezegun kept the pyzmq module's clock globals by their
    # names and put its fake back over tiger's clock at the next freeze
    "a-freeze-before-tiger-was-imported": """
import zmq
from freezegun import freeze_time
with freeze_time("2012-01-14"):
    pass
import tiger
""",
    # tiger first used inside a freeze: freezegun's stop() put pyzmq's clock back as its start() found it
    "tiger-first-used-inside-a-freeze": """
import zmq
from freezegun import freeze_time
with freeze_time("2012-01-14"):
    import tiger
    with tiger.serve() as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "first"})
""",
}
SHIM_THEN = """
client = tiger.connect(SERVER_URL, timeout=5.0)
with freeze_time("2040-06-01", tick=True):
    with tiger.serve() as server, tiger.connect(server.url, timeout=5.0) as other:
        other.table("t").insert({"id": "a"})
    client.table("t").insert({"id": "b"})
    zmq.Poller().poll(10)  # the application's own polls too
client.close()
print("ok")
"""


@pytest.mark.parametrize("order", list(SHIM_SCRIPTS))
def test_a_clock_past_2038_failed_every_poll_after_freezegun_undid_tigers_clock_in_pyzmq(tiger_url, order, tmp_path):
    script = tmp_path / "order.py"
    script.write_text(SHIM_SCRIPTS[order] + f"SERVER_URL = {tiger_url!r}\n" + SHIM_THEN)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_stopping_a_writer_in_a_process_holding_over_1024_descriptors_raised():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
    fds: list[int] = []
    try:
        server = tiger.serve()
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the pidfd comes past 1024
        assert server.stop() == 0  # select.select: "filedescriptor out of range in select()", the writer left
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_async_feed_read_timed_out_early_when_a_ticking_freeze_moved_the_loops_clock_ahead(tiger_url, ns):
    real = functools.partial(time.clock_gettime, time.CLOCK_MONOTONIC)

    async def main() -> float:
        async with await tiger.aio.connect(tiger_url) as client:
            with tiger.namespace(ns):
                feed = client.table("t").watch(timeout=1.5)

                async def read() -> float:
                    started = real()
                    with pytest.raises(tiger.Timeout):
                        await feed.__anext__()
                    return real() - started

                reading = asyncio.create_task(read())
                await asyncio.sleep(0.1)  # (the feed's timer armed on the loop's real clock)
                with freeze_time("2040-06-01", tick=True):  # no real_asyncio: the loop's clock jumps 16 years
                    return await reading

    took = asyncio.run(main())
    assert took >= 1.4  # it raised Timeout after 0.1 s
