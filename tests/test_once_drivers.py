"""Once's logic is written once, as generators of effects; two drivers run it. Here: the logic driven by
hand with no I/O, the async driver (tiger.aio's) on an in-test client over a blocking Client and a real
writer, and the blocking driver refusing the factories only the async one can run."""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
import types
import uuid
from collections.abc import Callable, Generator
from typing import Any

import pytest

import tiger
import tiger.aio
from tiger import _protocol as p
from tiger import _table as t
from tiger._once import INTERRUPTIONS, Build, Once, Write, once_record


def unique(name: str) -> str:
    """A once key of this test's own (keys live at the writer for the whole run: a rerun must not find it)."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


class AsyncClient:
    """``AsyncOnceClient`` over a blocking ``tiger.Client``: test code only. Its writes block the event
    loop for their round trip, after one suspension (the point is the driver's logic, not the transport); its waits poll the
    replica in 10 ms slices and let the loop run between them. ``once``/``tear_down`` call the async
    driver as ``tiger.aio``'s client would."""

    def __init__(self, client: tiger.Client) -> None:
        self.blocking = client
        self.client_id = client.client_id
        self.label = client.label
        self._req_ids = client._req_ids
        self.replica = client.replica
        self.heartbeat_timeout = client.heartbeat_timeout
        self.url = client.url
        self.timeout = client.timeout
        self._closed = False
        self._heard_again = client._heard_again
        self.keys = Once()

    async def _write(self, request: p.Request, deadline: float | None = None) -> p.Ok:
        await asyncio.sleep(0)  # a write suspends its caller, as over a socket
        return self.blocking._write(request, deadline)

    def _write_later(self, request: p.Request) -> asyncio.Future[p.Ok]:
        return asyncio.ensure_future(self._write(request))

    async def _until(self, predicate: Callable[[], bool], deadline: float, what: Callable[[], str]) -> None:
        while True:
            try:
                self.replica.wait_until(predicate, min(deadline, time.monotonic() + 0.01), str)
                return
            except tiger.Timeout:
                if time.monotonic() >= deadline:
                    raise tiger.Timeout(what()) from None
            await asyncio.sleep(0)

    async def sync(self, timeout: float) -> None:
        self.blocking.sync(timeout)

    async def once(self, key: str, factory: Callable[[], Any], timeout: float | None = None, namespace: str | None = None) -> Any:
        scope = "global" if namespace is None else namespace
        return await self.keys.value_async(self, key, scope, factory, timeout, in_scope=namespace is not None)

    async def tear_down(self, wait: float = 0.0) -> list[tuple[str, BaseException]]:
        return await self.keys.tear_down_async(self, wait)


@pytest.fixture
def aconnect(connect: Callable[..., tiger.Client]) -> Callable[[], AsyncClient]:
    """``aconnect()`` -> an AsyncClient on a fresh blocking Client (closed after the test)."""
    return lambda: AsyncClient(connect())


# -- the logic, with no I/O -------------------------------------------------------------------------


class InMemory:
    """A client and its writer in one object, no sockets: once requests answered by the ``_table`` rules."""

    def __init__(self, store: t.Store, client_id: str) -> None:
        self.client_id = client_id
        self.label = f"test {client_id}"
        self._req_ids = iter(range(1, 1000))
        self.replica = types.SimpleNamespace(store=store, silent_for=lambda: 0.0)  # (its writer always heard)
        self.timeout = 5.0  # (a delivery's budget: the client's timeout at least)
        self._closed = False
        self.heartbeat_timeout = 2.0
        self.url = "ipc:///nowhere"  # (named by a ``Probe`` step; the test answers it)

    def answer(self, request: p.Request) -> p.Ok:
        store = self.replica.store
        if type(request) is p.OnceClaim:
            result, change = t.prepare_once_claim(store, request.key, request.client_id, request.by, live=set(), now=1)
        else:
            assert type(request) is p.OnceFinish and request.outcome in ("value", "error")
            value, error = (None, request.payload) if request.outcome == "error" else (request.payload, None)
            result, change = t.prepare_once_finish(store, request.key, request.client_id, value, error)
        if change is not None:
            store.apply(change)
        return p.Ok(request.req_id, "epoch", 0, change, result)


def test_the_logic_needs_no_io_a_build_and_a_failure_driven_by_hand():
    store = t.Store()
    builder, later = InMemory(store, "c1"), InMemory(store, "c2")
    factory = lambda: 1  # noqa: E731
    steps = Once()._value(builder, "k", "global", factory, None, (math.inf, 0.0), False, INTERRUPTIONS)
    claim = next(steps)
    assert type(claim) is Write and type(claim.request) is p.OnceClaim
    assert steps.send(builder.answer(claim.request)) == Build(factory, None)  # the driver runs it, not the logic
    finish = steps.send(({"v": 1}, None))
    assert type(finish) is Write and (finish.request.outcome, finish.request.payload) == ("value", {"v": 1})
    with pytest.raises(StopIteration) as done:
        steps.send(builder.answer(finish.request))
    assert done.value.value == {"v": 1}
    steps = Once()._value(later, "k", "global", lambda: 2, None, (math.inf, 0.0), False, INTERRUPTIONS)
    with pytest.raises(StopIteration) as done:  # done already: no Build asked for
        steps.send(later.answer(next(steps).request))
    assert done.value.value == {"v": 1}

    steps = Once()._value(builder, "f", "global", lambda: 1, None, (math.inf, 0.0), False, INTERRUPTIONS)
    steps.send(builder.answer(next(steps).request))
    failure = steps.throw(KeyError("no such fixture"))  # what the factory raised, at the Build
    assert type(failure) is Write and failure.request.outcome == "error"
    with pytest.raises(tiger.OnceFailed, match="KeyError") as failed:
        steps.send(builder.answer(failure.request))
    assert isinstance(failed.value.__cause__, KeyError)
    store.check()


def test_a_tear_down_with_a_deadline_stops_at_it_and_retires_within_it_driven_by_hand():
    # The run's tiger_teardown_timeout (``until``): each teardown carries it (the driver stops one still
    # running then), the retires come after every teardown (a paused writer held the end of the run for the
    # client's whole timeout per key, before the next teardown), each waiting at most RELEASE_WAIT past it,
    # and once one failed (or the writer is silent) the others are best effort; no teardown begins after it.
    from tiger._once import RELEASE_WAIT, TearDown

    store = t.Store()
    client = InMemory(store, "c1")
    once = Once()

    def teardown(name: str) -> Generator[None, None, None]:
        yield

    for name in ("old", "new"):
        generator = teardown(name)
        next(generator)
        once._teardowns["global", name] = (generator, False)
    until = time.monotonic() + 1.0
    steps = once._tear_down(client, 0.0, until)
    first = next(steps)
    assert type(first) is TearDown and (first.key, first.deadline) == ("new", until)  # newest first
    second = steps.send(None)
    assert type(second) is TearDown and second.key == "old"  # the retires after every teardown
    retire = steps.send(None)
    assert type(retire) is Write and retire.request.key == "new" and retire.request.outcome == "retire" and retire.waited
    assert retire.deadline is not None and until <= retire.deadline <= until + RELEASE_WAIT  # (until: in 1 s)
    retire = steps.throw(tiger.Unavailable("the writer is paused"))  # that retire failed
    assert retire.request.key == "old" and retire.waited is False  # the rest: best effort, the run is ending
    with pytest.raises(StopIteration):
        steps.send(None)

    late = Once()
    generator = teardown("late")
    next(generator)
    late._teardowns["global", "late"] = (generator, False)
    steps = late._tear_down(client, 0.0, time.monotonic() - 1)  # past it: nothing begins
    with pytest.raises(StopIteration) as done:
        next(steps)
    assert done.value.value == [] and late.not_torn_down() == [("global", "late")]


def test_a_closing_client_lets_go_of_what_it_got_after_its_own_value_before_waiting_for_its_holders_driven_by_hand():
    # A user trial: two clients closing together, each holding the other's value, each waited its whole timeout
    # for the other to let go, which it did only with its goodbye, after its own wait. Closing (``leaving``),
    # a client unwinds what it got as a stack: what it got after a value it built is let go of before the
    # wait for that value's holders; what it got before (what that value's factory may have used) it keeps
    # (its goodbye lets go of it). A plain tear-down (``tear_down_once_values``) lets go of nothing.
    from tiger._once import Sync, TearDown, Until, _first_value

    store = t.Store()
    a, c = InMemory(store, "a"), InMemory(store, "c")

    def resource() -> Generator[str, None, None]:
        yield "up"

    def answer(client: InMemory, request: p.Request) -> p.Ok:
        if type(request) is p.OnceFinish and request.outcome == "resource":
            result, change = t.prepare_once_finish(store, request.key, request.client_id, request.payload, None, teardown=True)
        elif type(request) is p.OnceFinish and request.outcome == "leave":
            result, change = "left", t.prepare_once_let_go(store, request.key, request.client_id)
        else:
            return client.answer(request)
        if change is not None:
            store.apply(change)
        return p.Ok(request.req_id, "epoch", 0, change, result)

    def got(once: Once, client: InMemory, key: str) -> Any:
        steps = once._value(client, key, "global", resource, None, (math.inf, 0.0), False, INTERRUPTIONS)
        reply: Any = None
        try:
            while True:
                effect = steps.send(reply)
                reply = answer(client, effect.request) if type(effect) is Write else _first_value(effect.factory())
        except StopIteration as done:
            return done.value

    others, mine = Once(), Once()
    assert got(others, c, "before") == "up" and got(others, c, "after") == "up"  # c builds both
    assert got(mine, a, "before") == "up"  # a gets "before",
    assert got(mine, a, "mine") == "up"  # builds "mine",
    assert got(others, c, "mine") == "up"  # (which c gets)
    assert got(mine, a, "after") == "up"  # and gets "after"

    def holders(key: str) -> list[str]:
        return store.get(t.ONCE_TABLE, t.GLOBAL, key)["holders"]

    assert (holders("before"), holders("mine"), holders("after")) == (["a"], ["c"], ["a"])
    plain = mine._tear_down(a, 10.0)
    assert type(next(plain)) is Sync and type(plain.send(None)) is Until  # not leaving: straight to the wait
    plain.close()
    steps = mine._tear_down(a, 10.0, leaving=True)
    assert type(next(steps)) is Sync
    leave = steps.send(None)
    assert type(leave) is Write and (leave.request.key, leave.request.outcome, leave.request.payload) == ("after", "leave", None)
    wait = steps.send(answer(a, leave.request))
    assert type(wait) is Until and holders("after") == [] and holders("before") == ["a"]  # "before" still held
    assert not wait.predicate()  # c still holds "mine": waited for
    store.apply(t.prepare_once_let_go(store, "mine", "c"))
    assert wait.predicate()
    assert t.prepare_once_let_go(store, "mine", "c") is None  # (let go of already: nothing)
    assert type(steps.send(None)) is TearDown
    retire = steps.send(None)
    assert type(retire) is Write and retire.request.outcome == "retire"
    with pytest.raises(StopIteration) as done:
        steps.send(None)
    assert done.value.value == [] and holders("before") == ["a"]  # let go of with the goodbye


def test_a_call_whose_first_claim_was_applied_unanswered_gives_that_claim_up_driven_by_hand():
    # A review: a claim applied by the writer whose answer was lost, then a second claim that never reached
    # it (interrupted, expired): the release named only the last claim, the writer kept the first, and the
    # key stayed claimed by a live client, every other process timing out on it. The release names the call's
    # first and last claims.
    from tiger._once import Probe, Until

    store = t.Store()
    client = InMemory(store, "c1")
    client.heartbeat_timeout = 2.0  # type: ignore[attr-defined]
    client._heard_again = lambda unavailable, deadline, refused: ((lambda: True), deadline, lambda: str(unavailable))  # type: ignore[attr-defined]
    steps = Once()._value(client, "k", "global", lambda: 1, 10.0, (time.monotonic() + 10, time.monotonic()), False, INTERRUPTIONS)
    first = next(steps)
    client.answer(first.request)  # applied; its answer lost:
    assert type(steps.throw(tiger.Unavailable("no answer"))) is Probe  # (the url: a writer gone is not waited for)
    assert type(steps.send(None)) is Until
    second = steps.send(None)
    assert type(second.request) is p.OnceClaim and second.request.req_id > first.request.req_id
    release = steps.throw(KeyboardInterrupt())  # never sent
    assert release.request.outcome == "release" and release.waited is False
    assert release.request.payload == [first.request.req_id, second.request.req_id]
    store.apply(t.prepare_once_release(store, "k", "c1", claims=release.request.payload))
    assert once_record(client, "global", "k") is None
    with pytest.raises(KeyboardInterrupt):
        steps.send(None)


def test_a_ctrl_c_at_a_keys_retire_keeps_the_teardowns_errors_and_runs_no_other_driven_by_hand():
    # A review: a Ctrl-C while a key's retire waited (a paused writer) escaped the tear-down: the errors of the
    # teardowns run before it were lost (the run reported them as finished, and ended 0), and the rest ran
    # at close() with no bound. It now ends the tear-down like a Ctrl-C in a teardown, the errors kept.
    from tiger._once import TearDown

    store = t.Store()
    client = InMemory(store, "c1")
    once = Once()

    def teardown() -> Generator[None, None, None]:
        yield

    for name in ("old", "new"):
        generator = teardown()
        next(generator)
        once._teardowns["global", name] = (generator, False)
    steps = once._tear_down(client, 0.0, math.inf, stop_on=(KeyboardInterrupt,))
    assert type(next(steps)) is TearDown
    failed = ValueError("the teardown of new failed")
    retire = steps.send(failed)
    assert type(retire) is Write and retire.request.outcome == "retire"
    again = steps.throw(KeyboardInterrupt())  # Ctrl-C while it waits
    assert type(again) is Write and again.request == retire.request and again.waited is False  # best effort, once more
    with pytest.raises(StopIteration) as done:
        steps.send(None)
    errors = done.value.value
    assert [(key, type(e)) for key, e in errors] == [("new", ValueError), ("new", KeyboardInterrupt)]
    assert once.not_torn_down() == [("global", "old")]  # not run

    # raised by the driver around a teardown (an async one's loop let a second Ctrl-C through): the same
    steps = once._tear_down(client, 0.0, math.inf, stop_on=(KeyboardInterrupt,))
    assert type(next(steps)) is TearDown
    with pytest.raises(StopIteration) as done:
        steps.throw(KeyboardInterrupt())
    assert [(key, type(e)) for key, e in done.value.value] == [("old", KeyboardInterrupt)]


def test_an_async_teardown_past_its_deadline_is_cancelled_in_its_own_loop_not_stopped_inside_the_loop():
    # A review: SIGALRM raised PastDeadline inside asyncio's own code while an async generator's teardown ran
    # in a loop of its own: the loop was closed with the teardown pending (its finally half run, "Task was
    # destroyed but it is pending!"). Its task is cancelled instead, again at each stop, and it ends cleanly.
    import signal

    from tiger._once import PastDeadline, _adopted_by_no_loop, _finish_async_generator_here, _stopped_at

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGALRM handlers run in the main thread only")
    seen: list[str] = []

    async def resource() -> Any:
        yield 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("body cancelled")
            raise
        finally:
            try:
                await asyncio.sleep(10)  # a finally that awaits (closing a connection)
            except asyncio.CancelledError:
                seen.append("finally cancelled")
                raise

    generator = resource()

    async def first() -> Any:
        return await _adopted_by_no_loop(generator)

    asyncio.run(first())
    handler = signal.getsignal(signal.SIGALRM)
    with _stopped_at(time.monotonic() + 0.05, "k") as alarm:
        error = _finish_async_generator_here("k", generator, None, alarm)
    assert isinstance(error, PastDeadline) and alarm.fired
    assert seen == ["body cancelled", "finally cancelled"] and generator.ag_frame is None  # ended, not pending
    assert signal.getsignal(signal.SIGALRM) is handler


def test_an_async_teardowns_own_cancellation_is_its_error_not_a_ctrl_c():
    # A review: an async teardown that raised CancelledError itself (awaiting a task a library cancelled) was
    # reported as a Ctrl-C: the run said "interrupted", skipped the other teardowns and ended 2. Only a
    # cancellation from outside (asyncio.run's Ctrl-C handler, the deadline's) is taken for one.
    from tiger._once import _adopted_by_no_loop, _finish_async_generator_here

    async def resource() -> Any:
        yield 1
        cancelled = asyncio.get_running_loop().create_future()
        cancelled.cancel()
        await cancelled  # a library's task, cancelled

    generator = resource()

    async def first() -> Any:
        return await _adopted_by_no_loop(generator)

    asyncio.run(first())
    error = _finish_async_generator_here("k", generator, None)
    assert type(error) is asyncio.CancelledError


def test_the_teardown_alarm_puts_back_the_timer_handler_and_interval_it_found():
    # A review of the teardown timeout's SIGALRM: a timer set before was put back without its interval, one
    # due before the teardown's deadline was delayed past it, and a handler not set from Python (None) made
    # the restore raise TypeError. Each is now left as it was.
    import signal

    from tiger._once import STOP_EVERY, PastDeadline, _finish_generator, _stopped_at

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("SIGALRM handlers run in the main thread only")
    saved = signal.getsignal(signal.SIGALRM), signal.getitimer(signal.ITIMER_REAL)
    fired: list[int] = []

    def theirs(signum: int, frame: object) -> None:
        fired.append(signum)

    def stubborn() -> Generator[None, None, None]:
        yield
        try:
            time.sleep(5)  # sleep-ok: the teardown the alarm must stop
        finally:
            time.sleep(5)  # sleep-ok: and its finally, stopped again (it ran on unbounded: a review)

    try:
        signal.signal(signal.SIGALRM, theirs)
        signal.setitimer(signal.ITIMER_REAL, 50.0, 30.0)  # due after the teardown's deadline, repeating
        teardown = stubborn()
        next(teardown)
        started = time.monotonic()
        with _stopped_at(time.monotonic() + 0.05, "k") as alarm:
            error = _finish_generator("k", teardown, None)
        assert isinstance(error, PastDeadline) and alarm.fired
        assert time.monotonic() - started < 0.05 + STOP_EVERY + 1
        assert signal.getsignal(signal.SIGALRM) is theirs
        due, interval = signal.getitimer(signal.ITIMER_REAL)
        assert 44 < due <= 50 and interval == pytest.approx(30.0)

        signal.setitimer(signal.ITIMER_REAL, 0.05)  # due before the teardown's deadline: it stays first
        with _stopped_at(time.monotonic() + 30, "k") as alarm:
            time.sleep(0.2)  # sleep-ok: their timer fires meanwhile
        assert fired == [signal.SIGALRM] and not alarm.fired
        assert signal.getsignal(signal.SIGALRM) is theirs
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved[0])
        if saved[1][0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *saved[1])


# -- the async driver -------------------------------------------------------------------------------


def test_a_coroutine_factory_is_awaited_and_built_once_for_every_task_and_client(aconnect, connect):
    first, other = aconnect(), aconnect()
    key = unique("coroutine")
    calls = []

    async def build() -> dict[str, int]:
        calls.append(1)  # the other client's claim makes it a holder: it is waiting, not building
        await first._until(lambda: other.client_id in once_record(first, "global", key)["holders"], time.monotonic() + 10, str)
        return {"n": len(calls)}

    async def main() -> list[Any]:
        return await asyncio.gather(first.once(key, build), first.once(key, build), other.once(key, build))

    assert asyncio.run(main()) == [{"n": 1}] * 3
    assert calls == [1]
    assert connect().once(key, lambda: "other") == {"n": 1}  # a blocking client gets the same


def test_an_async_client_keeps_no_lock_for_each_once_key_it_ever_asked_for(aconnect):
    """The async driver's per-key locks, as the blocking one's: one kept per key ever asked for, for good."""
    client = aconnect()

    async def main() -> None:
        for i in range(50):
            assert await client.once(unique(f"alock-{i}"), lambda i=i: i) == i
        loop = asyncio.get_running_loop()
        assert len(client.keys._async_locks[loop]) == 0

    asyncio.run(main())


def test_an_async_generator_factory_is_set_up_and_torn_down_in_the_keys_namespace(aconnect, ns):
    client = aconnect()
    key, scope = unique("agen"), unique("scope")
    log: list[str] = []

    async def start():
        log.append(f"up in {tiger.current_namespace()}")
        await asyncio.sleep(0)
        yield {"port": 1234}
        await asyncio.sleep(0)
        log.append(f"down in {tiger.current_namespace()}")

    async def main() -> None:
        assert await client.once(key, start, namespace=scope) == {"port": 1234}
        assert await client.once(key, start, namespace=scope) == {"port": 1234}
        assert client.keys.has_teardown(key, scope)
        assert log == [f"up in {scope}"] and tiger.current_namespace() == ns
        assert await client.tear_down() == []
        assert log == [f"up in {scope}", f"down in {scope}"]
        assert not client.keys.has_teardown(key, scope)

    asyncio.run(main())
    assert once_record(client, scope, key) is None  # retired: a later caller builds anew


def test_a_sync_generator_factory_runs_through_the_async_driver(aconnect, ns):
    client = aconnect()
    key = unique("gen")
    log: list[str] = []

    def start():
        log.append(f"up in {tiger.current_namespace()}")
        yield 7
        log.append(f"down in {tiger.current_namespace()}")

    async def main() -> list[tuple[str, BaseException]]:
        assert await client.once(key, start) == 7
        return await client.tear_down()

    assert asyncio.run(main()) == []
    assert log == [f"up in {ns}", f"down in {ns}"]  # no namespace given: the caller's


def test_a_teardown_that_raises_or_yields_again_is_reported_and_the_others_still_run(aconnect):
    client = aconnect()
    log: list[str] = []

    async def raises():
        yield 1
        raise RuntimeError("cannot stop the server")

    async def yields_twice():
        yield 2
        yield 3

    def fine():
        yield 4
        log.append("down")

    keys = {"raises": unique("raises"), "twice": unique("twice"), "fine": unique("fine")}

    async def main() -> list[tuple[str, BaseException]]:
        for name, factory in (("raises", raises), ("twice", yields_twice), ("fine", fine)):
            await client.once(keys[name], factory)
        return await client.tear_down()

    errors = dict(asyncio.run(main()))
    assert log == ["down"]
    assert sorted(errors) == sorted([keys["raises"], keys["twice"]])
    assert str(errors[keys["raises"]]) == "cannot stop the server"
    assert "yielded more than once" in str(errors[keys["twice"]])


def test_a_failing_factory_fails_the_caller_and_every_later_one(aconnect, connect):
    builder, later = aconnect(), aconnect()
    key = unique("failing")

    async def build() -> None:
        await asyncio.sleep(0)
        raise KeyError("no such fixture")

    async def never() -> int:
        raise AssertionError("a failed key is not built again")

    async def main() -> None:
        with pytest.raises(tiger.OnceFailed, match=rf"once '{key}' failed in \S+ \S+: KeyError: 'no such fixture'") as e:
            await builder.once(key, build)
        assert isinstance(e.value.__cause__, KeyError) and "in build" in e.value.frames
        with pytest.raises(tiger.OnceFailed, match="KeyError"):
            await later.once(key, never)

    asyncio.run(main())
    with pytest.raises(tiger.OnceFailed, match="KeyError"):
        connect().once(key, lambda: 1)


def test_cancelling_the_build_releases_the_key_for_another_caller(aconnect, connect):
    builder, other = aconnect(), aconnect()
    key = unique("cancelled")

    async def main() -> None:
        started = asyncio.Event()

        async def forever() -> None:
            started.set()
            await asyncio.Event().wait()

        build = asyncio.create_task(builder.once(key, forever))
        await started.wait()
        build.cancel()
        with pytest.raises(asyncio.CancelledError):
            await build
        assert once_record(builder, "global", key) is None  # released, in the builder's replica at once
        assert await other.once(key, lambda: "other") == "other"

    asyncio.run(main())
    assert connect().once(key, lambda: "third") == "other"


def test_an_async_waiter_lets_the_loop_run_while_another_client_builds(aconnect, connect):
    builder, waiter = connect(), aconnect()
    key = unique("slow")
    release = threading.Event()
    built: list[Any] = []
    thread = threading.Thread(target=lambda: built.append(builder.once(key, lambda: release.wait(30) and "slow")))
    thread.start()
    try:

        async def main() -> int:
            await waiter._until(lambda: once_record(waiter, "global", key) is not None, time.monotonic() + 10, str)
            with pytest.raises(tiger.Timeout, match=f"once '{key}' was not built by another process within 0.05s"):
                await waiter.once(key, lambda: "other", timeout=0.05)
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    if ticks == 20:
                        release.set()
                    await asyncio.sleep(0.001)

            ticking = asyncio.create_task(tick())
            assert await waiter.once(key, lambda: "other", timeout=10) == "slow"  # a blocked loop: Timeout
            ticking.cancel()
            return ticks

        assert asyncio.run(main()) >= 20
    finally:
        release.set()
        thread.join(30)
    assert built == ["slow"]


class FailingDelivery(AsyncClient):
    """Its deliveries of a value fail as if the writer did not answer (Unavailable), until ``failing`` is cleared."""

    failing = True

    async def _write(self, request: p.Request, deadline: float | None = None) -> p.Ok:
        if type(request) is p.OnceFinish and request.outcome == "value" and self.failing:
            raise tiger.Unavailable("the writer did not answer")
        return await super()._write(request, deadline)


def test_a_value_whose_delivery_failed_is_sent_again_without_rebuilding(connect):
    client = FailingDelivery(connect())
    key = unique("redelivered")
    calls = []

    async def build() -> int:
        calls.append(1)
        return 5

    async def main() -> None:
        with pytest.raises(tiger.Unavailable):
            await client.once(key, build, timeout=0.3)  # tried again until its deadline (the writer is heard)
        assert once_record(client, "global", key) is None  # released: nobody waits on it
        client.failing = False
        assert await client.once(key, build) == 5

    asyncio.run(main())
    assert calls == [1]


class CancelledAfterClaim(AsyncClient):
    """Its first claim is applied at the writer, then the call is cancelled before the answer comes back."""

    cancelled = False

    async def _write(self, request: p.Request, deadline: float | None = None) -> p.Ok:
        reply = await super()._write(request, deadline)
        if type(request) is p.OnceClaim and not self.cancelled:
            self.cancelled = True
            raise asyncio.CancelledError
        return reply


def test_a_call_cancelled_as_its_claim_was_answered_releases_the_key(connect, aconnect):
    client = CancelledAfterClaim(connect())
    key = unique("cancelled-claim")

    async def main() -> None:
        with pytest.raises(asyncio.CancelledError):
            await client.once(key, lambda: "never")
        assert once_record(client, "global", key) is None  # not left "building" by a caller that has gone
        assert await aconnect().once(key, lambda: "other") == "other"

    asyncio.run(main())


class _Suspend:
    """An awaitable that suspends its coroutine once, outside any event loop's knowledge."""

    def __await__(self) -> Generator[None, None, None]:
        yield


def test_a_call_closed_mid_build_ends_without_awaiting_anything(aconnect):
    client = aconnect()
    key = unique("closed")

    building: list[int] = []

    async def build() -> int:
        building.append(1)
        await _Suspend()
        return 1

    async def main() -> None:
        call = client.once(key, build)
        while not building:  # the claim's write suspends too
            call.send(None)
        call.close()  # as when a pending task is garbage-collected: GeneratorExit at an await
        record = once_record(client, "global", key)
        assert (record["state"], record["owner"]) == ("building", client.client_id)  # its release gave up
        await client._write(p.OnceFinish(next(client._req_ids), key, client.client_id, "release", None))

    asyncio.run(main())


# -- the blocking driver refuses what only the async one can run --------------------------------


async def _coroutine_function() -> int:
    return 1


async def _async_generator_function():
    yield 1


@pytest.mark.parametrize(
    ("factory", "kind"),
    [
        (_coroutine_function, "a coroutine function"),
        (_async_generator_function, "an async generator function"),
        (lambda: _coroutine_function(), "it returned a coroutine"),
    ],
    ids=["coroutine-function", "async-generator-function", "returns-a-coroutine"],
)
def test_the_blocking_driver_refuses_an_async_factory_and_releases_the_key(client, factory, kind):
    key = unique("refused")
    with pytest.raises(TypeError, match=rf"^once {key!r}: factory \S+ is asynchronous \({kind}\); .* use tiger\.aio"):
        client.once(key, factory)  # the coroutine it made is closed: no "never awaited" warning (an error here)
    assert once_record(client, "global", key) is None
    assert client.once(key, lambda: "built") == "built"  # the key was not failed: a caller builds it


# -- regressions from review, each named after what broke ---------------------------------------------


def test_a_factory_error_utf8_cannot_carry_fails_every_caller_and_leaves_no_claim(connect_own):
    """A factory raising FileNotFoundError with a lone surrogate (os.fsdecode of a non-UTF-8 name): the error
    report could not be encoded, the ValueError went up without releasing the key, and the key stayed
    'building' for the builder's lifetime (others timed out waiting; the factory ran again in the builder)."""
    a, b = connect_own(), connect_own()
    runs: list[int] = []

    def factory() -> None:
        runs.append(1)
        raise FileNotFoundError("no such file: '/data/caf\udce9.csv'")

    for client in (a, a, b):
        with pytest.raises(tiger.OnceFailed, match=re.escape("FileNotFoundError: no such file: '/data/caf\\udce9.csv'")):
            client.once("k", factory, timeout=3)
    assert runs == [1]


def test_a_value_torn_down_after_its_delivery_failed_is_not_served_again(connect_own):
    """The value kept to re-send after a failed delivery (Unavailable) outlived its teardown: the next once()
    delivered the torn-down value (a dropped database) to every caller, and nothing was built anew."""
    from tiger import _protocol as p

    a, b = connect_own(), connect_own()
    made: list[str] = []

    def database() -> Any:
        made.append(f"db{len(made) + 1}")
        yield {"dsn": made[-1]}

    real = a._write
    failing = [True]

    def deliveries_lost(request: Any, deadline: float | None = None) -> Any:
        if type(request) is p.OnceFinish and request.outcome == "resource" and failing:
            raise tiger.Unavailable("the tiger writer did not answer within 5s")
        return real(request, deadline)

    a._write = deliveries_lost  # type: ignore[method-assign]
    with pytest.raises(tiger.Unavailable):
        a.once("db", database, timeout=0.3)  # tried again until its deadline (the writer is heard)
    failing.clear()
    assert a.tear_down_once_values() == []
    assert a.once("db", database) == {"dsn": "db2"} == b.once("db", database)


def test_a_claim_whose_answer_raised_is_released_for_the_other_callers(connect_own):
    """A claim applied by the writer whose call then raised Timeout (read-your-writes) or Unavailable was given
    up only on an interruption: the key stayed claimed by a live client, and others waited for its close."""
    from tiger import _protocol as p

    a, b = connect_own(), connect_own()
    real = a._write

    def slow_replica(request: Any, deadline: float | None = None) -> Any:
        answer = real(request, deadline)
        if type(request) is p.OnceClaim:
            raise tiger.Timeout(f"the local replica did not reach seq {answer.seq}")
        return answer

    a._write = slow_replica  # type: ignore[method-assign]
    with pytest.raises(tiger.Timeout):
        a.once("k", lambda: 1)
    assert b.once("k", lambda: 2, timeout=3) == 2


def test_a_feed_in_a_forked_child_refuses_instead_of_waiting_forever(connect):
    """A forked child has no replica thread: watch() opened a feed that never got a change (wait_until timed
    out misleadingly); calls already refused there."""
    import os

    client = connect()
    pid = os.fork()
    if pid == 0:  # the child: report by exit code only
        code = 1
        try:
            client.watch()
        except tiger.TigerError as e:
            code = 0 if "connected in process" in str(e) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_cancelled_async_close_raises_cancelled_error_not_a_teardowns_error(connect_own):
    """Teardowns run at close: one raised RuntimeError, the next was cancelled; close raised the RuntimeError
    and the cancellation was lost (task.cancelled() False, asyncio.timeout gave RuntimeError)."""
    import tiger.aio

    url = connect_own().url

    async def raising() -> Any:
        yield 1
        raise RuntimeError("teardown failed")

    slow_begun: list[asyncio.Event] = []

    async def slow() -> Any:
        yield 2
        slow_begun[0].set()
        await asyncio.sleep(30)  # sleep-ok: a teardown that is still running when the close is cancelled

    async def main() -> None:
        slow_begun.append(asyncio.Event())
        client = await tiger.aio.connect(url)
        assert await client.once("slow", slow) == 2
        assert await client.once("raising", raising) == 1  # newest: torn down first
        closing = asyncio.get_running_loop().create_task(client.close())
        await asyncio.wait_for(slow_begun[0].wait(), 10)  # the close reaches the slow teardown (a sleep stood for it)
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        assert closing.cancelled()

    asyncio.run(main())


def test_a_cancelled_async_close_runs_no_other_teardown_and_keeps_their_keys(connect_own, caplog):
    # A user trial cancelled an async close() during a slow teardown: every other teardown still ran and every
    # key was retired, logging nothing, where the README says those not run are logged and their keys stay.
    import tiger.aio

    other = connect_own()
    ran: list[str] = []

    def factory(name: str, seconds: float, begun: asyncio.Event | None = None) -> Any:
        async def build() -> Any:
            yield name
            if begun is not None:
                begun.set()
            await asyncio.sleep(seconds)  # sleep-ok: a teardown's own work
            ran.append(name)

        return build

    async def main() -> None:
        client = await tiger.aio.connect(other.url)
        slow_begun = asyncio.Event()
        assert await client.once("first", factory("first", 0)) == "first"
        assert await client.once("slow", factory("slow", 30, slow_begun)) == "slow"  # newest: torn down first
        closing = asyncio.get_running_loop().create_task(client.close())
        # The close reaches the slow teardown (after a round trip to the writer; a 0.2 s sleep stood for it)
        await asyncio.wait_for(slow_begun.wait(), 10)
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
        assert closing.cancelled()

    with caplog.at_level("WARNING", logger="tiger.client"):
        asyncio.run(main())
    assert ran == []  # "first" was not torn down after the cancellation
    assert "once teardowns not run: ['first']" in caplog.text
    assert other.once("first", lambda: "rebuilt") == "first"  # its key kept: the value still served


def test_a_delivery_refused_at_once_by_a_writer_still_heard_is_not_tried_in_a_loop(connect):
    # A review: a writer that answered a delivery at once with Unavailable (a call refused as expired: a clock
    # stepped forward) while it was still heard made once send 19,651 deliveries and probe its url as often in
    # 3 s. Tries are now at least half a second apart.
    client = connect(timeout=1.0)
    real, tries = client._write, []

    def refused(request: Any, deadline: float | None = None) -> Any:
        if type(request) is p.OnceFinish and request.outcome == "value":
            tries.append(time.monotonic())
            raise tiger.Unavailable("the call arrived after its deadline")
        return real(request, deadline)

    client._write = refused  # type: ignore[method-assign]
    with pytest.raises(tiger.Unavailable):
        client.once(unique("refused"), lambda: 1, timeout=0.5)  # delivered for the client's timeout (1 s) at least
    assert 2 <= len(tries) <= 4, tries


def test_a_blocking_once_of_its_own_key_inside_an_async_build_of_one_shared_client_raises(connect):
    # A review: tiger_aclient shares one client's once keys between the async and the blocking driver; a sync
    # factory of an async once calling the blocking once of the same key made the outer call fail with KeyError
    # (the inner one had dropped the outer's holder entry).
    client = connect()
    shared = tiger.aio.AsyncClient.sharing(client)
    key = unique("cross")

    async def main() -> Any:
        return await shared.once(key, lambda: client.once(key, lambda: "inner"))

    with pytest.raises(tiger.OnceFailed, match="called again from inside its own factory"):
        asyncio.run(main())
    assert client.once(unique("after"), lambda: "fine") == "fine"


def test_a_value_retired_before_its_builders_replica_looked_raised_a_bare_assertion_error(connect):
    # A user trial (a pytest-xdist worker stopped 5 s during a build, 2 of 11 runs): the builder's value was
    # stored, then retired (the builder taken for gone meanwhile) before its replica looked at the key: once
    # raised a bare AssertionError from tiger/_once.py. Its own value is still its to give and tear down.
    client = connect()
    scope, key, torn = unique("retired"), unique("key"), []
    real = client._write

    def retired_after_delivery(request: Any, deadline: float | None = None) -> Any:
        answer = real(request, deadline)
        if type(request) is p.OnceFinish and request.outcome == "resource":  # (the writer's retirement, as the
            real(p.OnceFinish(next(client._req_ids), key, client.client_id, "retire", None, scope))  # replica
        return answer  # then finds it: the key gone)

    def resource() -> Generator[dict[str, int], None, None]:
        yield {"port": 8001}
        torn.append(1)

    client._write = retired_after_delivery  # type: ignore[method-assign]
    assert client.once(key, resource, namespace=scope) == {"port": 8001}
    client._write = real  # type: ignore[method-assign]
    client.close()
    assert torn == [1]
