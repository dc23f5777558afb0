"""Promises under hostile conditions (issue 11): signals, paused processes, bad strings, checks the
client can make first. Real writer processes, real signals; each test is named after what broke."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest
from _util import script_process

import tiger
from tiger._once import once_record

SCRIPT_TIMEOUT = 60


def python(script: str, *args: str) -> subprocess.Popen[str]:
    """``python -c SCRIPT ARGS`` with pipes to talk to it line by line."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], say: str | None = None) -> tuple[str, str]:
    """Tell the script ``say`` (a line), wait for it to end, return its output; it never outlives the test."""
    try:
        return proc.communicate(None if say is None else say + "\n", timeout=SCRIPT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def own_writer():
    """A writer of this test's own (the test stops or pauses it), always resumed and stopped after it."""
    server = tiger.serve()
    try:
        yield server
    finally:
        if server.running:
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


# -- 1. deadlines under signals ------------------------------------------------------------------------

SIGNALLED_CALLS = """
import signal, sys, time, tiger

signal.signal(signal.SIGALRM, lambda *_: None)  # a watchdog, a progress bar, a profiler
signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
client = tiger.connect(sys.argv[1], timeout=1.0)
table = client.table("t")
print("ready", flush=True)
sys.stdin.readline()  # the writer is stopped now
calls = [("insert", lambda: table.insert({"id": "a"})), ("sync", client.sync), ("stats", client.stats),
         ("once", lambda: client.once("k", lambda: 1)), ("connect", lambda: tiger.connect(sys.argv[1], timeout=1.0))]
for name, call in calls:
    started = time.monotonic()
    try:
        call()
        print(name, "returned", flush=True)
    except tiger.Unavailable:
        print(name, "unavailable", round(time.monotonic() - started, 2), flush=True)
"""


def test_a_call_under_a_busy_signal_timer_hung_until_the_writer_resumed(own_writer):
    """pyzmq restarts a receive interrupted by a signal with its whole RCVTIMEO: a process taking a signal
    every 0.1 s never timed out while the writer was stopped. Every call ends by its deadline."""
    proc = python(SIGNALLED_CALLS, own_writer.url)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(own_writer.pid, signal.SIGSTOP)
    out, err = finish(proc, "go")
    results = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert set(results) == {"insert", "sync", "stats", "once", "connect"}, (out, err)
    for name, (outcome, *took) in results.items():
        assert outcome == "unavailable", (name, out, err)
        assert float(took[0]) < 4.0, (name, out)  # a 1 s timeout (and later calls fail at once: a silent writer)


def test_calls_that_got_the_socket_after_they_expired_were_sent_and_refused_as_late(own_writer):
    """A user trial (tiger.aio; the blocking client's threads the same): calls waiting for the client's
    socket behind one the paused writer held got it past their expiry (a little before their deadline),
    were still sent, and the writer refused each, "the call arrived after its deadline". Such a call now
    raises before sending, saying the client's other calls held the socket."""
    with tiger.connect(own_writer.url, timeout=1.0) as client:
        table = client.table("late")
        table.insert({"id": "warm"})
        errors: list[str] = []

        def write(i: int) -> None:
            try:
                table.insert({"id": f"w{i}"})
            except tiger.Unavailable as e:
                errors.append(str(e))

        os.kill(own_writer.pid, signal.SIGSTOP)
        threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.9)  # sleep-ok: the writer's pause is the condition under test (the calls expire at 0.8 s)
        os.kill(own_writer.pid, signal.SIGCONT)
        for t in threads:
            t.join(10)
    # The one holding the socket was sent in time, and is not judged (as in test_aio's twin): its answer, due
    # between the SIGCONT (0.9 s) and its 1.0 s deadline, may come too late under load ("did not answer within
    # 1s"), or the writer may read it late ("arrived after its deadline"). Every other error says why it was
    # not sent: the fault had them sent and refused as late.
    held = [e for e in errors if "held its socket until too late" in e]
    assert len(errors) - len(held) <= 1, errors
    assert len(held) >= 1, errors


# what a call holds (a once key, the command socket, an async client's event loop) and which client
LOCKS = [("once", "blocking"), ("once", "async"), ("socket", "blocking"), ("socket", "async"), ("loop", "async")]


def run_script(script: str, *args: str, timeout: float = SCRIPT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """``python -c SCRIPT ARGS``, run to its end (at most ``timeout`` seconds), its output captured."""
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)


def script_lines(script: str, *args: str) -> list[str]:
    """What ``python -c SCRIPT ARGS`` printed, by line (its stderr appended, for the assertion's message)."""
    child = run_script(script, *args)
    return child.stdout.splitlines() + ([child.stderr] if child.returncode else [])


SIGNAL_AS_A_LOCK_IS_TAKEN = """
import asyncio, signal, sys, threading
import tiger, tiger.aio
from tiger._owned import OwnedAsyncLock, OwnedLock

what, driver = sys.argv[1:]
main = threading.main_thread().ident


class Alarm(Exception):
    pass


def alarm(*_):
    raise Alarm  # a handler that raises (Ctrl-C's KeyboardInterrupt, a watchdog, pytest-timeout's signal method)


signal.signal(signal.SIGALRM, alarm)
armed = [False]


def aimed(me):  # once's tokens are (thread, task) tuples; the command socket's are plain objects
    return armed[0] and isinstance(me, tuple) == (what == "once")


def signalled():  # Python runs the handler at the next bytecode: just after the lock was taken
    armed[0] = False
    signal.pthread_kill(main, signal.SIGALRM)


take, take_async = OwnedLock.take, OwnedAsyncLock.take


waiter = []  # once: another caller of the key, waiting for it as the signal lands (a lock no caller
# refers to is dropped: ``Once`` holds its keys' locks weakly)


def take_then_signal(self, me, deadline):
    taken = take(self, me, deadline)
    if aimed(me):
        if what == "once":
            waiter.append(threading.Thread(target=lambda: waiter.append(client.once("k", lambda: "the other's", timeout=5))))
            waiter[0].start()
            while not self._queue:
                threading.Event().wait(0.001)  # (until the other caller waits for the key)
        signalled()
    return taken


async def take_async_then_signal(self, me, deadline):
    taken = await take_async(self, me, deadline)
    if aimed(me):
        if what == "once":
            waiter.append(asyncio.ensure_future(client.once("k", lambda: "the other's", timeout=5)))
            while not self._queue:
                await asyncio.sleep(0.001)
        signalled()
    return taken


OwnedLock.take, OwnedAsyncLock.take = take_then_signal, take_async_then_signal
serve = tiger.aio.AsyncClient._serve


def serve_then_signal(self, me):  # an async client's call marks its loop as the one using the socket
    serve(self, me)
    if armed[0] and what == "loop":
        signalled()


tiger.aio.AsyncClient._serve = serve_then_signal


def blocking(url):
    global client
    with tiger.connect(url, timeout=2.0) as client:
        table = client.table("t")
        armed[0] = True
        try:
            client.once("k", lambda: "built") if what == "once" else table.insert({"id": "a"})
        except Alarm:
            print("interrupted", flush=True)
        try:
            if what == "once":
                waiter[0].join(10)
                print("after", waiter[1] if len(waiter) > 1 else "the other caller raised")
            else:
                print("after", table.insert({"id": "b"})["id"])
        except tiger.TigerError as e:
            print(type(e).__name__, e)


async def in_a_task(url):
    global client
    async with await tiger.aio.connect(url, timeout=2.0) as client:
        table = client.table("t")
        armed[0] = True
        try:
            await (client.once("k", lambda: "built") if what == "once" else table.insert({"id": "a"}))
        except Alarm:
            print("interrupted", flush=True)
        try:
            if what == "once":
                print("after", await waiter[0])
            elif what == "loop":  # a call from an event loop of another thread, this one still running
                print("after", (await asyncio.to_thread(asyncio.run, table.insert({"id": "b"})))["id"])
            else:
                print("after", (await table.insert({"id": "b"}))["id"])
        except tiger.TigerError as e:
            print(type(e).__name__, e)


with tiger.serve() as server:
    blocking(server.url) if driver == "blocking" else asyncio.run(in_a_task(server.url))
"""


@pytest.mark.parametrize(("what", "driver"), LOCKS)
def test_a_signal_just_after_a_lock_was_taken_left_it_held_for_good(what, driver):
    # A once key's lock (one builder per process) and a client's command socket lock were taken, then the
    # ``try`` that lets them go was entered: a signal's exception (Ctrl-C) landing between the two left the
    # lock held, and every later once of the key timed out, or every later call was "busy". They are held
    # by a token now, stored inside the ``try`` (``tiger._owned``). Likewise an async client's count of
    # its loop's calls using the socket: left one too high, every call of another thread's loop was
    # refused as "in use by an event loop running in another thread"; calls are named now, not counted.
    after = "the other's" if what == "once" else "b"
    assert script_lines(SIGNAL_AS_A_LOCK_IS_TAKEN, what, driver) == ["interrupted", f"after {after}"]


SIGNAL_AS_A_LOCK_IS_LET_GO = """
import asyncio, signal, sys, threading
import tiger, tiger.aio

what, driver = sys.argv[1:]
main = threading.main_thread().ident


class Alarm(Exception):
    pass


def alarm(*_):
    raise Alarm


signal.signal(signal.SIGALRM, alarm)
armed = [False]
letting_go = "_served" if what == "loop" else "let_go"


def hook(frame, event, arg):  # a signal landing at the first bytecode of the call that lets the lock go
    if armed[0] and event == "call" and frame.f_code.co_name == letting_go:
        me = frame.f_locals.get("me")
        if what == "loop" or isinstance(me, tuple) == (what == "once"):
            armed[0] = False
            signal.pthread_kill(main, signal.SIGALRM)


def call(client, table, id):
    return client.once("k", lambda: id) if what == "once" else table.insert({"id": id})


def blocking(url):
    with tiger.connect(url, timeout=2.0) as client:
        table = client.table("t")
        sys.setprofile(hook)
        armed[0] = True
        try:
            call(client, table, "first")
            print("returned", flush=True)
        except Alarm:
            print("interrupted", flush=True)
        sys.setprofile(None)
        try:
            after = call(client, table, "second")
            print("after", after if what == "once" else after["id"], flush=True)
        except tiger.TigerError as e:
            print(type(e).__name__, e, flush=True)


async def in_a_task(url):
    async with await tiger.aio.connect(url, timeout=2.0) as client:
        table = client.table("t")
        sys.setprofile(hook)
        armed[0] = True
        try:
            await call(client, table, "first")
            print("returned", flush=True)
        except Alarm:
            print("interrupted", flush=True)
        sys.setprofile(None)
        try:
            if what == "loop":  # a call from an event loop of another thread, this one still running
                after = await asyncio.to_thread(asyncio.run, table.insert({"id": "second"}))
            else:
                after = await call(client, table, "second")
            print("after", after if what == "once" else after["id"], flush=True)
        except tiger.TigerError as e:
            print(type(e).__name__, e, flush=True)


with tiger.serve() as server:
    blocking(server.url) if driver == "blocking" else asyncio.run(in_a_task(server.url))
"""


@pytest.mark.parametrize(("what", "driver"), LOCKS)
def test_a_signal_as_a_call_let_its_lock_go_left_it_held_for_good(what, driver):
    # A user trial: a signal landing at the first bytecode of the call in a ``finally`` that lets a lock go
    # (Python checks for signals as it enters a function) ended the ``finally`` there: the once key stayed
    # marked as built by this thread (every later once of it "re-entered"), the socket held ("busy"). The
    # lock is let go twice now, the second in a ``finally`` of the first; the once key's holder is its lock.
    # (a once whose value was stored before the signal: the second call gets it)
    after = "first" if what == "once" else "second"
    assert script_lines(SIGNAL_AS_A_LOCK_IS_LET_GO, what, driver) == ["interrupted", f"after {after}"]


LOCK_STORM = """
import asyncio, math, random, signal, sys, threading, time
from tiger._owned import DriversLock, OwnedLock

lock = DriversLock() if sys.argv[1] == "drivers" else OwnedLock()
stop = threading.Event()
rng = random.Random(int(sys.argv[2]))


def contend():  # another thread's caller, taking and holding it in turn
    while not stop.is_set():
        me = object()
        try:
            if lock.take(me, time.monotonic() + 1):
                time.sleep(0.0005)  # sleep-ok: holding it a while
        finally:
            try:
                lock.let_go(me)
            finally:
                lock.let_go(me)


async def contend_async():  # a task on another thread's loop (the drivers' lock takes both kinds)
    while not stop.is_set():
        me = object()
        try:
            if await lock.take_async(me, time.monotonic() + 1):
                await asyncio.sleep(0.0005)  # sleep-ok: holding it a while
        finally:
            try:
                lock.let_go(me)
            finally:
                lock.let_go(me)


def interrupt(*_):
    raise KeyboardInterrupt


def one():
    me = object()
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, rng.random() * 0.001)  # one signal, anywhere in the take
            lock.take(me, math.inf)
        finally:
            try:
                lock.let_go(me)
            finally:
                lock.let_go(me)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def storm(takes, interrupted):
    done = 0
    while done < takes:
        try:
            done += 1
            one()
        except KeyboardInterrupt:
            interrupted.append(done)


others = [threading.Thread(target=contend)]
if sys.argv[1] == "drivers":
    others.append(threading.Thread(target=lambda: asyncio.run(contend_async())))
for t in others:
    t.start()
signal.signal(signal.SIGALRM, interrupt)
interrupted = []
try:
    storm(2000, interrupted)
except KeyboardInterrupt:  # (one landing between two takes, outside them)
    pass
signal.setitimer(signal.ITIMER_REAL, 0)
stop.set()
for t in others:
    t.join(10)
me = object()
took = lock.take(me, time.monotonic() + 3)
lock.let_go(me)
print("interrupted", len(interrupted) > 100, file=sys.stderr)
print("ok", took, lock.holder is None, len(lock._queue), flush=True)
"""


@pytest.mark.parametrize("kind", ["owned", "drivers"])
def test_a_signal_as_a_waiter_left_the_lock_left_its_gate_queued_and_the_lock_held_by_nobody_for_good(kind):
    # A signal's exception landing at the first bytecode of the method a waiter called in its ``finally`` to
    # leave the queue (a refactor moved the leaving there) ended it before the gate was unqueued: the lock was
    # later handed to that gone waiter, and every take after waited for ever (so left in 4 runs of 4, of 3000
    # takes each under random signals; none before the refactor). The leaving is inline in the ``finally``
    # again, with no call before the unqueueing.
    for seed in ("1", "2"):
        child = run_script(LOCK_STORM, kind, seed)
        assert child.stdout.splitlines() == ["ok True True 0"], child.stdout + child.stderr
        assert "interrupted True" in child.stderr, child.stderr


SIGNAL_STORM = """
import signal, sys, threading
import tiger


class Alarm(KeyboardInterrupt):  # Ctrl-C's kind: a build it stops hands the key on (not a failed build)
    pass


armed = [False]  # (a plain store: a threading.Event's set() is itself a Condition a signal can land in)
done = [False]


def alarm(*_):  # a handler that raises (a watchdog, pytest-timeout's signal method), at any bytecode of a call
    if armed[0]:
        armed[0] = False  # once per call: it never lands outside the call's ``try``
        raise Alarm


def calls(client, name, interrupted):
    table = client.table("storm")
    for i in range(4000):
        if len(interrupted) >= 100 or done[0]:  # (a quick machine lands fewer alarms in 400 calls)
            break
        try:
            armed[0] = threading.get_ident() == main
            table.insert({"id": f"{name}-{i}"})
            client.once(f"{name}-{i % 5}", lambda: i, timeout=2)
            armed[0] = False
        except Alarm:
            interrupted.append(i)
        except tiger.TigerError as e:
            armed[0] = False  # (first: no signal lands before a plain store)
            errors.append(f"{type(e).__name__}: {e}")


signal.signal(signal.SIGALRM, alarm)
main = threading.get_ident()
errors = []  # what the calls raised besides the alarms
with tiger.connect(sys.argv[1], timeout=2.0) as client:
    others = [threading.Thread(target=calls, args=(client, f"t{n}", [])) for n in range(2)]  # contending for
    for t in others:  # the socket and the keys (Python runs the handler in the main thread only)
        t.start()
    interrupted = []
    signal.setitimer(signal.ITIMER_REAL, 0.0007, 0.0007)
    calls(client, "main", interrupted)
    done[0] = True  # (the other threads stop with it)
    signal.setitimer(signal.ITIMER_REAL, 0)
    armed[0] = False
    for t in others:
        t.join(60)
    # (a write interrupted after sending may leave a gap its replica waits for until the timeout: README)
    client.sync(timeout=10)
    client.table("storm").insert({"id": "after"})  # the socket is free
    for name in ("main", "t0", "t1"):
        for k in range(5):
            client.once(f"{name}-{k}", lambda: "late", timeout=1)  # every key is free
    print("interrupted", len(interrupted) >= 100, file=sys.stderr)
    print("errors", errors[:5], len(errors), file=sys.stderr)
    print("ok", client._socket_hold.holder is None, client.replica._calls.writing == 0, flush=True)
"""


def test_a_signal_storm_whose_handler_raises_left_no_lock_held_and_no_call_in_flight(own_writer):
    # A handler that raises, landing at any bytecode of hundreds of calls contending with other threads',
    # left (before tokens and named calls) a socket lock, a once key's lock or a call counted in flight:
    # every later call busy, every later once of the key timed out, every gap waiting the timeout.
    child = run_script(SIGNAL_STORM, own_writer.url, timeout=SCRIPT_TIMEOUT * 2)
    assert child.stdout.splitlines() == ["ok True True"], child.stdout + child.stderr
    assert "interrupted True" in child.stderr, child.stderr  # the storm did land in the calls


WATCHDOG_STORM = """
import random, signal, sys, time
import tiger


class Alarm(TimeoutError):  # what a watchdog's handler raises (signal.alarm, timeout-decorator): an Exception
    pass


armed = [False]
raised = [0]


def alarm(*_):
    if armed[0]:
        armed[0] = False  # once per call: it never lands outside the call's ``try``
        raised[0] += 1
        raise Alarm


RECORD = {"blob": "x" * 2000, "items": list(range(300)), "nested": {str(k): [k, {"k": k}] for k in range(100)}}
caught = [0]
reworded = []  # an Alarm that came out as one of tiger's errors


def outcome(error):
    if isinstance(error, Alarm):
        caught[0] += 1
    elif "Alarm" in repr(error) or isinstance(error, tiger.ProtocolError):
        reworded.append(f"{type(error).__name__}: {error}")


def calls(client, i):
    # (id first and a created: the writer stores them as sent, the client decodes them itself, fast paths)
    client.table("storm").insert_many([{"id": f"b-{i}-{k}", "created": 1, **RECORD} for k in range(20)])
    with client.batch() as b:
        b.table("storm").update(f"b-{i}-0", {"n": i})


signal.signal(signal.SIGALRM, alarm)
with tiger.connect(sys.argv[1], timeout=2.0) as client:
    started = time.perf_counter()
    for i in range(20):
        calls(client, f"warm-{i}")
    took = (time.perf_counter() - started) / 20  # seconds a call takes: each alarm lands anywhere in one
    for i in range(400):
        try:
            armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, random.uniform(0, took))
            calls(client, i)
            armed[0] = False
        except BaseException as e:
            armed[0] = False  # (first: no signal lands before a plain store)
            outcome(e)
    signal.setitimer(signal.ITIMER_REAL, 0)
    armed[0] = False
    print("raised", raised[0] > 100, file=sys.stderr)
    print("counts", raised[0], caught[0], file=sys.stderr)
    print("ok", raised[0] == caught[0], reworded[:3], flush=True)
"""


def test_a_watchdogs_timeout_raised_during_a_decode_was_swallowed_or_reworded_as_a_protocol_error(own_writer):
    # A review: decoding ran in ``except Exception`` blocks: one that reworded any exception as a
    # ProtocolError (which a blocking call then skipped as a stray answer), fast paths that took any
    # exception for bytes they could not read and decoded again the slow way. An exception a signal
    # handler raised there (a watchdog's TimeoutError) was reworded or lost, and the call went on.
    # Every one raised must reach the caller, as raised.
    child = run_script(WATCHDOG_STORM, own_writer.url, timeout=SCRIPT_TIMEOUT * 2)
    assert child.stdout.splitlines() == ["ok True []"], child.stdout + child.stderr
    assert "raised True" in child.stderr, child.stderr  # the storm did land in the calls


SIGNAL_AS_A_WRITE_IS_SENT = """
import sys, tiger
from tiger._client import Client


class Alarm(Exception):
    pass


send = Client._send_call
armed = [False]


def send_then_interrupted(self, payload):
    send(self, payload)
    if armed[0]:
        armed[0] = False
        raise Alarm  # a handler that raises, landing as the send returns (Python 3.12+ runs it after a C call)


Client._send_call = send_then_interrupted
with tiger.connect(sys.argv[1], timeout=2.0) as client:
    table = client.table("t")
    armed[0] = True
    try:
        table.insert({"id": "a"})
    except Alarm:
        print("interrupted", flush=True)
    table.wait_for("a", timeout=10)  # applied by the writer: it reaches the replica
    print("resyncs", client.replica.resyncs, flush=True)
"""


def test_a_signal_as_a_write_was_sent_made_its_replica_reload_the_whole_store(own_writer):
    # Last session's review: a call counted as sent only after its send returned; a signal landing in
    # between left a write the writer applied unknown to its replica, which took the gap its seq left for
    # one no call can fill and reloaded a whole snapshot. Now it is asked for again, past its deadline.
    child = run_script(SIGNAL_AS_A_WRITE_IS_SENT, own_writer.url)
    assert child.stdout.splitlines() == ["interrupted", "resyncs 0"], child.stdout + child.stderr


WRITE_AFTER_AN_INTERRUPTED_ONE = """
import asyncio, sys, threading, tiger, tiger.aio
from tiger import _protocol as p
from tiger._client import _Connection


class Alarm(Exception):
    pass


armed = [False]
interrupted = [0]
INTERRUPTED = 70  # more changes than an answer carries for its caller's replica (MAX_BEFORE)


def landing(function):  # function, with a handler that raises landing (once armed, main thread) as it returns

    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        if armed[0] and threading.current_thread() is threading.main_thread():
            armed[0] = False
            raise Alarm
        return result

    return wrapper


def outcome(client, table, wrote_b):
    held = sum(f"a{i}" in table for i in range(INTERRUPTED))
    print("b", wrote_b, "held", held, "resyncs", client.replica.resyncs, flush=True)


def blocking(url):
    with tiger.connect(url, timeout=30.0) as client:
        table = client.table("t")
        for i in range(INTERRUPTED):
            armed[0] = True
            try:
                table.insert({"id": f"a{i}"})
            except Alarm:
                interrupted[0] += 1
        print("interrupted", interrupted[0], flush=True)
        client.timeout = 3.0  # those are asked again only past their deadline, 30 s on
        try:
            table.insert({"id": "b"})  # its answer comes after theirs: its replica needs their changes first
            outcome(client, table, True)
        except tiger.Timeout as e:
            outcome(client, table, repr(e))


async def awaited(url):
    async with await tiger.aio.connect(url, timeout=30.0) as client:
        table = client.table("t")
        for i in range(INTERRUPTED):
            armed[0] = True
            try:
                await table.insert({"id": f"a{i}"})
            except Alarm:
                interrupted[0] += 1
        print("interrupted", interrupted[0], flush=True)
        client.timeout = 3.0
        try:
            await table.insert({"id": "b"})
            outcome(client, table, True)
        except tiger.Timeout as e:
            outcome(client, table, repr(e))


where = sys.argv[3]
if where == "as it was sent":
    _Connection._send_call = landing(_Connection._send_call)
elif where == "as it decoded its answer":
    p.decode_reply = landing(p.decode_reply)
else:  # "once it had its answer"
    _Connection._outcome = landing(_Connection._outcome)
blocking(sys.argv[1]) if sys.argv[2] == "blocking" else asyncio.run(awaited(sys.argv[1]))
"""


@pytest.mark.parametrize("where", ["as it was sent", "as it decoded its answer", "once it had its answer"])
@pytest.mark.parametrize("driver", ["blocking", "async"])
def test_a_write_after_writes_a_signal_interrupted_raised_timeout_though_applied(own_writer, driver, where):
    # A storm of signals, each interrupting a write: the answer of one interrupted as it was sent was read
    # by the next write, and dropped (the blocking client ignored any other answer; the async one took only
    # a cancelled write's); the answer of one interrupted as it decoded it, or just after, was lost with
    # the exception. Past the few changes an answer carries for its caller's replica, the next write's own
    # change then waited behind the gaps they left, which the replica asks the writer for only past their
    # deadline (or never: a resync): the next write raised Timeout, though applied. Each is now taken.
    lines = script_lines(WRITE_AFTER_AN_INTERRUPTED_ONE, own_writer.url, driver, where)
    assert lines == ["interrupted 70", "b True held 70 resyncs 0"]


@pytest.mark.parametrize("driver", ["blocking", "async"])
def test_a_signal_as_the_once_driver_took_its_next_step_left_the_key_claimed_by_a_live_client(own_writer, monkeypatch, driver):
    # A review: the drivers of once's logic caught what each effect raised, but not what landed in their own
    # steps between two effects: a watchdog's exception there left the logic suspended, the key claimed for a
    # build never made by a client still alive, and every other caller waited for it past its timeout. (Then
    # a second review: thrown into the logic at the build, it failed the key for every caller as if the
    # factory had raised, though the factory never ran.) The key is handed on.
    import asyncio

    import tiger.aio
    from tiger import _once

    class Alarm(TimeoutError):  # a watchdog's
        pass

    resume = _once._Outcome.resume

    def resume_then_interrupted(self, steps):
        effect = resume(self, steps)
        if isinstance(effect, _once.Build):
            raise Alarm  # landing as the driver takes the step to the build
        return effect

    def the_second_builds_it():
        monkeypatch.setattr(_once._Outcome, "resume", resume)
        with tiger.connect(own_writer.url, timeout=2.0) as second:
            return second.once("k", lambda: "the second's", timeout=1)

    async def in_a_task():
        async with await tiger.aio.connect(own_writer.url, timeout=2.0) as first:  # alive throughout
            monkeypatch.setattr(_once._Outcome, "resume", resume_then_interrupted)
            with pytest.raises(Alarm):
                await first.once("k", lambda: "the first's")
            return await asyncio.to_thread(the_second_builds_it)

    if driver == "blocking":
        with tiger.connect(own_writer.url, timeout=2.0) as first:  # alive throughout
            monkeypatch.setattr(_once._Outcome, "resume", resume_then_interrupted)
            with pytest.raises(Alarm):
                first.once("k", lambda: "the first's")
            assert the_second_builds_it() == "the second's"
    else:
        assert asyncio.run(in_a_task()) == "the second's"


@pytest.mark.parametrize("driver", ["blocking", "async"])
def test_a_signal_as_a_batch_block_ended_left_the_batch_open_and_every_later_batch_refused_as_nested(
    own_writer, monkeypatch, driver
):
    # A user trial (a watchdog's SIGALRM raising TimeoutError, 1 batch in about 1000): a handler's exception
    # landing as the with statement called ``__exit__``, before its first line, left the batch open for good,
    # and every later batch of the client in that thread raised "already open here". A batch whose block was
    # left so is closed, unsent, when the next one opens; a batch inside a batch is still refused.
    import asyncio

    import tiger.aio
    from tiger._batch import AsyncBatch, Batch

    class Alarm(Exception):
        pass

    exit_name = "__exit__" if driver == "blocking" else "__aexit__"
    real_exit = getattr(AsyncBatch if driver == "async" else Batch, exit_name)

    async def interrupted_aexit(self, *exc):
        raise Alarm

    def interrupted_exit(self, *exc):  # what a handler raising at the exit's first bytecode does
        raise Alarm

    interrupted = interrupted_exit if driver == "blocking" else interrupted_aexit

    def blocking(client):
        outcomes = []
        for i in range(3):  # the same with statement, again
            monkeypatch.setattr(Batch, exit_name, interrupted if i == 0 else real_exit)
            try:
                with client.batch() as b:
                    b.table("t").insert({"id": f"loop-{i}"})
                outcomes.append("sent")
            except Alarm:
                outcomes.append("interrupted")

        def left_in_a_function():
            monkeypatch.setattr(Batch, exit_name, interrupted)
            with pytest.raises(Alarm), client.batch() as b:
                b.table("t").insert({"id": "in-a-function"})
            monkeypatch.setattr(Batch, exit_name, real_exit)

        left_in_a_function()
        with client.batch() as b:  # a frame the left one is not on
            b.table("t").insert({"id": "after"})
            with pytest.raises(tiger.TigerError, match="already open here"), client.batch():
                pass

            def nested():
                with client.batch():
                    pass

            with pytest.raises(tiger.TigerError, match="already open here"):
                nested()

        @contextlib.contextmanager
        def in_a_batch():  # (a second review: a generator suspended inside the block is on no stack)
            with client.batch() as outer:
                outer.table("t").insert({"id": "generator-1"})
                yield
                outer.table("t").insert({"id": "generator-2"})

        with in_a_batch():
            with pytest.raises(tiger.TigerError, match="already open here"), client.batch():
                pass
        with contextlib.ExitStack() as stack:  # (nor is the call that entered an ExitStack's, returned since)
            stack.enter_context(client.batch()).table("t").insert({"id": "exit-stack"})
            with pytest.raises(tiger.TigerError, match="already open here"), client.batch():
                pass
        return outcomes

    async def in_a_task(client):
        outcomes = []
        for i in range(3):
            monkeypatch.setattr(AsyncBatch, exit_name, interrupted if i == 0 else real_exit)
            try:
                async with client.batch() as b:
                    b.table("t").insert({"id": f"loop-{i}"})
                outcomes.append("sent")
            except Alarm:
                outcomes.append("interrupted")
        async with client.batch() as b:
            b.table("t").insert({"id": "after"})
            with pytest.raises(tiger.TigerError, match="already open here"):
                async with client.batch():
                    pass

            async def in_a_child_task():  # (it inherits the context: the open batch, its block running)
                async with client.batch():
                    pass

            with pytest.raises(tiger.TigerError, match="already open here"):
                await asyncio.create_task(in_a_child_task())
            b.table("t").insert({"id": "after-the-child"})
        return outcomes

    async def run_async():
        async with await tiger.aio.connect(own_writer.url, timeout=2.0) as client:
            return await in_a_task(client), client.table("t")

    if driver == "blocking":
        with tiger.connect(own_writer.url, timeout=2.0) as client:
            outcomes, table = blocking(client), client.table("t")
            assert "in-a-function" not in table
            assert all(i in table for i in ("generator-1", "generator-2", "exit-stack"))  # sent, whole
    else:
        outcomes, table = asyncio.run(run_async())
    assert outcomes == ["interrupted", "sent", "sent"]
    assert "loop-0" not in table and "loop-1" in table and "after" in table  # (the block left: nothing sent)
    assert driver == "blocking" or "after-the-child" in table


@pytest.mark.parametrize("driver", ["blocking", "async"])
def test_a_signal_landing_as_a_once_call_dropped_its_keys_lock_was_lost(own_writer, driver):
    # A user trial ("Exception ignored in: ... WeakValueDictionary...remove", 2 or 3 of 700 watchdog alarms):
    # a key's lock was dropped by a WeakValueDictionary's callback, Python code the interpreter runs as the
    # last reference goes, where an exception (a signal handler's) cannot be raised to anyone. No such code
    # runs in a once call now: every Python function it calls is seen by a profiler, none is weakref's.
    import asyncio

    import tiger.aio

    called: set[tuple[str, str]] = set()

    def profiler(frame, event, arg):
        if event == "call":
            called.add((os.path.basename(frame.f_code.co_filename), frame.f_code.co_name))

    async def in_a_task():
        async with await tiger.aio.connect(own_writer.url) as client:
            await client.once("built", lambda: 1)
            sys.setprofile(profiler)
            try:
                await client.once("built", lambda: 1)
            finally:
                sys.setprofile(None)

    if driver == "blocking":
        with tiger.connect(own_writer.url) as client:
            client.once("built", lambda: 1)
            sys.setprofile(profiler)
            try:
                client.once("built", lambda: 1)
            finally:
                sys.setprofile(None)
    else:
        asyncio.run(in_a_task())
    assert ("_once.py", "value") in called or ("_once.py", "value_async") in called  # (the profiler saw the call)
    callbacks = {("weakref.py", "remove"), ("_weakrefset.py", "_remove")}  # a weak dict's, a weak set's
    assert not called & callbacks, sorted(called)


# -- 2. a paused client blames the writer -----------------------------------------------------------------

PAUSED_CLIENT = """
import os, signal, sys, tiger

client = tiger.connect(sys.argv[1], timeout=5.0)
table = client.table("paused")
failures = 0
for i in range(4):
    table.insert({"id": f"before-{i}"})
    os.kill(os.getpid(), signal.SIGSTOP)  # a debugger, a laptop lid: the test resumes it 2.5 s later
    try:
        table.insert({"id": f"after-{i}"})  # at once after the pause
    except tiger.Unavailable as e:
        failures += 1
        print("failed", e, flush=True)
print("failures", failures, flush=True)
"""


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(") ", 1)[1][0] == "T"


def test_a_paused_client_blamed_the_writer_for_its_own_pause(own_writer):
    """A client process paused longer than heartbeat_timeout took the writer, which heartbeated all along,
    for gone: silence is judged only over time the client was able to listen."""
    proc = python(PAUSED_CLIENT, own_writer.url)
    try:
        for _ in range(4):
            deadline = time.monotonic() + 30
            while not _stopped(proc.pid):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "not paused"
                time.sleep(0.01)  # sleep-ok: polling the script's state, with a deadline
            time.sleep(2.5)  # sleep-ok: the pause under test (longer than the 2 s heartbeat_timeout)
            os.kill(proc.pid, signal.SIGCONT)
    finally:
        out, err = finish(proc)
    assert "failures 0" in out, (out, err)


def test_a_paused_writer_took_its_clients_for_gone_and_released_their_once_keys(own_writer):
    """A writer paused longer than its client silence (3 s) forgot every client on resuming, before
    reading their queued heartbeats, and gave a live builder's once key to the next caller."""
    builder, waiter = tiger.connect(own_writer.url), tiger.connect(own_writer.url)
    release = threading.Event()
    built: list[object] = []
    thread = threading.Thread(target=lambda: built.append(builder.once("paused-key", lambda: release.wait(30) and "v")))
    try:
        thread.start()
        waiter.replica.wait_until(lambda: once_record(waiter, "global", "paused-key") is not None, time.monotonic() + 10, str)
        os.kill(own_writer.pid, signal.SIGSTOP)
        time.sleep(3.5)  # sleep-ok: the pause under test (longer than the writer's 3 s client silence)
        os.kill(own_writer.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while waiter.replica.silent_for() > 0.5 or waiter.replica.last_heard < waiter.replica.last_awake - 0.5:
            assert time.monotonic() < deadline, "the waiter never heard the resumed writer"
            time.sleep(0.05)  # sleep-ok: polling the replica's state, with a deadline
        waiter.sync()
        time.sleep(1.0)  # sleep-ok: a second of the writer's heartbeats after resuming, in which it must not release
        waiter.sync()
        record = once_record(waiter, "global", "paused-key")
        assert record is not None and record["state"] == "building" and record["owner"] == builder.client_id
    finally:
        release.set()
        thread.join(30)
        builder.close()
        waiter.close()
    assert built == ["v"]


# -- 5. bad strings -------------------------------------------------------------------------------------

BAD = os.fsdecode(b"report-\xff.pdf")  # a file name that is not UTF-8, as os.listdir gives it


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.table("files").insert({"id": "f1", "meta": {"path": BAD}}), "record['meta']['path']"),
        (lambda c: c.table("files").insert({"id": "f1", BAD: 1}), "record: key"),
        (lambda c: c.table("files").insert_many([{"id": "a"}, {"id": "b", "tags": ["x", BAD]}]), "records[1]['tags'][1]"),
        (lambda c: c.table("files").update("f0", {"path": BAD}), "changes['path']"),
        (lambda c: c.table(BAD).insert({"id": "f1"}), "name"),  # (refused by table(), its parameter named)
        (lambda c: c.once(BAD, lambda: 1), "key"),
    ],
    ids=["value", "key", "batch", "update", "table", "once-key"],
)
def test_a_non_utf8_str_raised_a_bare_unicode_error_naming_no_field(own_writer, ns, call, field):
    # a writer of its own: the seq it compares is the run's shared writer's too, moved by the other worker
    with tiger.connect(own_writer.url) as client:
        files = client.table("files")
        files.insert({"id": "f0"})
        before = client.stats()["seq"]
        with pytest.raises(ValueError, match=rf"^{__import__('re').escape(field)}.*UTF-8 cannot encode"):
            call(client)
        assert client.stats()["seq"] == before  # nothing was applied
        assert files.count() == 1


def test_a_once_value_with_a_non_utf8_str_failed_naming_no_field(client, ns):
    with pytest.raises(tiger.OnceFailed, match=r"value\['path'\]: a str UTF-8 cannot encode"):
        client.once(f"bad-value-{ns}", lambda: {"path": BAD})


@pytest.mark.parametrize("given", ["str", "bytes"])
def test_a_non_utf8_data_path_killed_the_writer_at_its_first_stats(tmp_path, given):
    """A user trial: serve(data=...) of a directory whose name is not UTF-8 (as os.listdir gives it) started a
    writer that died at its first stats (the path went into the answer, which msgpack could not encode), and
    serve() waited out its timeout for an answer; data=b"..." the same. Such a directory is served (the os
    functions take it), and stats shows its name with the undecodable bytes escaped."""
    raw = os.fsencode(tmp_path) + b"/data-\xff"
    data = raw if given == "bytes" else os.fsdecode(raw)
    url = f"ipc://{tmp_path}/w"
    for turn in ("written", "kept"):
        with tiger.serve(url, timeout=5.0, data=data) as server, tiger.connect(url) as client:
            assert client.stats()["data"]["path"] == f"{tmp_path}/data-\\xff"
            if turn == "written":
                client.table("t").insert({"id": "a"})
            else:
                assert [r["id"] for r in client.table("t").all()] == ["a"]
            assert server.running
    assert os.path.isdir(raw)


@pytest.mark.parametrize("field", ["data", "curve_secret"])
def test_a_path_beginning_with_a_dash_was_read_as_an_option_of_the_writers_command_line(tmp_path, monkeypatch, field):
    """serve(data="-foo") handed the path to the writer's command line as a word of its own, which the writer
    read as an unknown option ("expected one argument"), and the same of every other value: each is joined to
    its option by "=" now."""
    from tiger._cli import keygen

    monkeypatch.chdir(tmp_path)
    if field == "data":
        with tiger.serve(f"ipc://{tmp_path}/w", timeout=5.0, data="-data") as server, tiger.connect(server.url) as client:
            client.table("t").insert({"id": "a"})
        assert (tmp_path / "-data" / "log.0").is_file()
    else:
        public = keygen(str(tmp_path))
        os.rename(tmp_path / "tiger.key", tmp_path / "-key")
        with tiger.serve("tcp://127.0.0.1:*", timeout=5.0, curve_secret="-key") as server:
            with tiger.connect(server.url, server_key=public) as client:
                client.table("t").insert({"id": "a"})


@pytest.mark.parametrize(
    ("given", "error", "message"),
    [
        ({"data": "x\0y"}, ValueError, r"^data: a path cannot hold a NUL character"),  # Popen's bare "embedded null byte"
        ({"curve_secret": "k\0"}, ValueError, r"^curve_secret: a path cannot hold a NUL character"),
        ({"data": 5}, TypeError, r"^data must be a path \(str, bytes or os\.PathLike\), not int$"),
        ({"data": ""}, ValueError, r"^data must name a directory"),  # the writer refused it: TigerError
        ({"data": "d" * 256}, ValueError, r"^data: a path may be at most \d+ bytes .*its longest name 256"),  # the writer's
        # (a user trial: the missing file and the file holding no key were said without the field)
        ({"curve_secret": "missing.key"}, FileNotFoundError, r"^curve_secret: cannot read 'missing\.key' \(No such file"),
        ({"curve_secret": "binary.key"}, ValueError, r"^curve_secret: 'binary\.key' holds no 'secret: "),  # (UnicodeDecodeError)
        ({"curve_secret": "bad-z85.key"}, ValueError, r"^curve_secret: 'bad-z85\.key' holds no valid key"),  # (zmq's bare EINVAL)
    ],
    ids=["nul-data", "nul-secret", "data-int", "data-empty", "data-name-too-long", "secret-missing", "secret-binary", "z85"],
)
def test_a_bad_path_given_to_serve_raised_naming_no_field_or_left_its_temp_dir_behind(
    tmp_path, monkeypatch, given, error, message
):
    """Each raises in the caller, naming the field, before anything is made or started: a NUL raised Popen's bare
    ValueError, a secret that cannot be read the error of its own, and either left serve()'s temporary directory
    behind (made before they were looked at); a name too long, or none, started a writer to refuse it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where serve() makes its directory
    assert len(os.fsencode(tmp_path)) + len("/tiger-01234567/w0000") <= 103  # (else it would go to /tmp)
    (tmp_path / "binary.key").write_bytes(b"\xff\xfe not a key\n")
    (tmp_path / "bad-z85.key").write_text("secret: " + "~" * 40 + "\n")  # 40 characters, no z85 key
    with pytest.raises(error, match=message):
        tiger.serve(timeout=5.0, **given)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-z85.key", "binary.key"]


@pytest.mark.parametrize("path", ["/", "{tmp}/", "{tmp}", "@"], ids=["root", "slash", "directory", "abstract-empty"])
def test_an_ipc_url_naming_a_directory_was_refused_as_address_already_in_use(tmp_path, path):
    """ipc:/// started a writer that said "cannot bind ipc:///: Address already in use" (libzmq's word for a
    directory); such a url is refused in the caller now, naming it."""
    url = "ipc://" + path.format(tmp=tmp_path)
    what = "an abstract ipc name" if path == "@" else "an ipc path must name a socket file, not a directory"
    with pytest.raises(ValueError, match=rf"^url: {what}.*{re.escape(repr(url))}$"):
        tiger.serve(url, timeout=5.0)


def test_a_url_holding_a_nul_reached_the_writer_at_the_path_before_it(tmp_path):
    """ZeroMQ reads a url as a C string: connect("ipc://DIR/w\\0other") reached the writer at DIR/w; a tcp url
    not UTF-8 started a writer that refused it as not loopback. Both are refused in the caller, naming url."""
    with tiger.serve(f"ipc://{tmp_path}/w", timeout=5.0):
        with pytest.raises(ValueError, match=r"^url: a url cannot hold a NUL character"):
            tiger.connect(f"ipc://{tmp_path}/w\0other", timeout=1.0)
    with pytest.raises(ValueError, match=r"^url must be text UTF-8 can carry"):
        tiger.serve("tcp://127.0.0.\udcff:*", timeout=5.0)


def test_a_writer_that_could_not_bind_left_the_data_directory_it_made_behind(tmp_path):
    """A start that failed at its bind (the url in use) left the data directory it had made, with its lock and
    empty log: it removes what it made now; a directory that was there before stays."""
    url = f"ipc://{tmp_path}/w"
    (tmp_path / "there").mkdir()
    with tiger.serve(url, timeout=5.0):
        for data in (tmp_path / "new" / "data", tmp_path / "there"):
            with pytest.raises(tiger.TigerError, match="exited with code 2 before it was ready"):
                tiger.serve(url, timeout=5.0, data=data)
    assert not (tmp_path / "new").exists() and (tmp_path / "there").is_dir()


# -- 9. a check the client could make first ----------------------------------------------------------------


def test_an_update_of_created_was_refused_by_the_writer_not_before_sending(own_writer):
    """The client knows the record from its replica: the refusal needs no writer (shown by a stopped one)."""
    with tiger.connect(own_writer.url, timeout=1.0) as client:
        plans = client.table("plans")
        plans.insert({"id": "p1", "created": 5})
        own_writer.stop()
        started = time.monotonic()
        with pytest.raises(ValueError, match=r"changes\['created'\]: the created time of 'p1' cannot be changed"):
            plans.update("p1", {"created": 1})
        assert time.monotonic() - started < 0.5  # not after the 1 s timeout: nothing was sent


# -- 3. a check made after the expensive work -----------------------------------------------------------------

TOO_BIG = """
import os, sys, tiger

def build():
    with open(sys.argv[2], "a") as f:
        f.write(f"{os.getpid()}\\n")
    return "x" * (9 * 2**20)

with tiger.connect(sys.argv[1]) as client:
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        client.once(sys.argv[3], build)
    except tiger.OnceFailed as e:
        print("OnceFailed", e.key, e.type_name, flush=True)
"""


def test_a_once_value_over_the_limit_was_built_by_every_process(tiger_url, tmp_path, ns):
    """The writer refused the value after each build and the key went to the next caller: 3 builds, each
    caller a ValueError. The client checks the limit first; every caller gets OnceFailed after one build."""
    built = tmp_path / "built"
    key = f"too-big-{ns}"
    procs = [python(TOO_BIG, tiger_url, str(built), key) for _ in range(3)]
    outs = []
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
    finally:
        outs = [finish(proc) for proc in procs]
    assert len(built.read_text().splitlines()) == 1, outs
    assert all(out.strip() == f"OnceFailed {key} ValueError" for out, _ in outs), outs


# -- 8. hanging instead of failing --------------------------------------------------------------------------

UNDER_GEVENT = """
import sys, time
from gevent import monkey
monkey.patch_all(thread=sys.argv[2] == "threads")
import tiger

started = time.monotonic()
try:
    with tiger.connect(sys.argv[1], timeout=3.0) as client:
        client.table("g").insert({"id": "a"})
        print("worked", flush=True)
except tiger.TigerError as e:
    print("refused", round(time.monotonic() - started, 2), e, flush=True)
"""


@pytest.mark.parametrize("patched", ["threads", "all-but-threads"])
def test_connect_under_gevent_monkey_patching_hung_forever(tiger_url, patched):
    """Under gevent.monkey.patch_all() tiger.connect never returned: it refuses at once, saying why; with
    threads left unpatched it works."""
    pytest.importorskip("gevent")
    out, err = finish(python(UNDER_GEVENT, tiger_url, patched))
    if patched == "threads":
        assert out.startswith("refused"), (out, err)
        assert float(out.split()[1]) < 1.0 and "gevent's monkey-patching of threads is not supported" in out
    else:
        assert out.strip() == "worked", (out, err)


def test_an_interrupt_while_the_client_renews_its_socket_leaves_it_usable(writer):
    """A resend renews the client's command socket; Ctrl-C landing in between (KeyboardInterrupt) left the
    old socket closed and in place, and every later call failed with 'Socket operation on non-socket'."""
    with tiger.connect(writer.url) as client:

        def interrupted() -> None:
            raise KeyboardInterrupt

        client._new_socket = interrupted  # type: ignore[method-assign]  # the interrupt lands while making it
        with pytest.raises(KeyboardInterrupt):
            client._fresh_socket()
        del client._new_socket
        assert client.table("hostile").insert({"id": "after"})["id"] == "after"


@pytest.mark.parametrize("driver", ["blocking", "async"])
def test_a_caller_writing_in_a_loop_starved_the_other_callers_of_its_client(writer, driver):
    # A review: the socket lock went to whoever looked first, and a task (or thread) writing in a loop let it
    # go and took it again before the callers it woke ran: each of their writes raised Unavailable after its
    # timeout. The lock is handed to the callers in the order they came.
    import asyncio

    import tiger.aio

    async def in_tasks() -> list[float]:
        async with await tiger.aio.connect(writer.url, timeout=2.0) as client:
            table, stop = client.table("starve"), asyncio.Event()

            async def hog() -> None:
                n = 0
                while not stop.is_set():
                    await table.insert({"id": f"hog-{n}"})
                    n += 1

            hogging = asyncio.create_task(hog())
            try:
                took = []
                for i in range(5):
                    started = time.monotonic()
                    await table.insert({"id": f"other-{i}"})
                    took.append(time.monotonic() - started)
                return took
            finally:
                stop.set()
                await hogging

    def in_threads() -> list[float]:
        with tiger.connect(writer.url, timeout=2.0) as client:
            table, stop = client.table("starve"), threading.Event()

            def hog() -> None:
                n = 0
                while not stop.is_set():
                    table.insert({"id": f"hog-{n}"})
                    n += 1

            hogging = threading.Thread(target=hog)
            hogging.start()
            try:
                took = []
                for i in range(5):
                    started = time.monotonic()
                    table.insert({"id": f"other-{i}"})
                    took.append(time.monotonic() - started)
                return took
            finally:
                stop.set()
                hogging.join(10)

    took = asyncio.run(in_tasks()) if driver == "async" else in_threads()
    assert max(took) < 1.0, took  # a write or two of the other caller's ahead of each, not the 2 s timeout


IN_A_SIGNAL_HANDLER = """
import os, signal, sys, threading, time
import tiger

client = tiger.connect(sys.argv[1], timeout=5)
plans = client.table("plans")
plans.insert({"n": 0})


def handler(*_):
    began = time.monotonic()
    held = client._held_by_this_thread()  # (the interrupted insert holds the socket)
    if sys.argv[2] in ("close", "close and return"):
        client.close()
        print(f"held={held} closed in {time.monotonic() - began:.2f}s", flush=True)
        if sys.argv[2] == "close and return":
            return  # the insert it interrupted goes on
    else:
        try:
            plans.insert({"n": 2})
            print("written", flush=True)
        except Exception as e:
            print(f"held={held} {type(e).__name__} in {time.monotonic() - began:.2f}s: {e}", flush=True)
    os._exit(0)


signal.signal(signal.SIGTERM, handler)
print("ready", flush=True)
sys.stdin.readline()
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()  # while the insert below waits
try:
    plans.insert({"n": 1})
except Exception as e:
    print(f"the interrupted insert: {type(e).__name__}: {e}", flush=True)
"""


@pytest.mark.parametrize("what", ["close", "write", "close and return"])
def test_a_signal_handler_closing_the_client_or_writing_waited_for_the_call_it_interrupted_until_the_timeout(what):
    # a SIGTERM handler's close() waited for the call in flight, the very one it interrupted, which cannot end
    # before the handler does: 5 s (the client's timeout) every time; a write there waited as long, then said
    # "other calls of this client (from other threads or tasks) held its socket"
    with tiger.serve() as writer, script_process(IN_A_SIGNAL_HANDLER, writer.url, what) as proc:
        assert proc.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        os.kill(writer.pid, signal.SIGSTOP)  # the next insert waits for an answer
        try:
            proc.stdin.write("\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            said = proc.stdout.readline().strip()  # type: ignore[union-attr]
        finally:
            os.kill(writer.pid, signal.SIGCONT)
        assert said.startswith("held=True"), said
        seconds = float(re.search(r" in ([0-9.]+)s", said).group(1))  # type: ignore[union-attr]
        assert seconds < 1.0, said
        if what == "write":
            assert "TigerError" in said and "signal handler" in said
        if what == "close and return":  # (a review: it raised ZeroMQ's "Socket operation on non-socket")
            assert proc.stdout.readline().strip() == "the interrupted insert: TigerError: this client is closed"  # type: ignore[union-attr]


AT_EXIT = """
import asyncio, atexit, sys


def at_exit():
    try:
        if sys.argv[2] == "asyncio":
            asyncio.run(S["plans"].insert({"at": "exit"}))
        else:
            S["plans"].insert({"at": "exit"})
        print("written at exit", flush=True)
    except Exception as e:
        print(f"at exit: {type(e).__name__}: {e}", flush=True)


atexit.register(at_exit)  # before tiger is first used: it runs after tiger's own exit handler
import tiger, tiger.aio

S = {}


async def main():
    client = await tiger.aio.connect(sys.argv[1])
    S["plans"] = client.table("plans", prefix="plan")
    await S["plans"].insert({"n": 1})


if sys.argv[2] == "asyncio":
    asyncio.run(main())
else:
    S["plans"] = tiger.connect(sys.argv[1]).table("plans", prefix="plan")
"""


@pytest.mark.parametrize("kind", ["asyncio", "blocking"])
def test_a_client_used_by_an_atexit_handler_after_tiger_closed_it_failed_with_bad_file_descriptor(tiger_url, kind):
    # a tiger.aio client left open was closed at exit by its finalizer, which left it open in name: the handler's
    # write failed with "OSError: [Errno 9] Bad file descriptor" from asyncio's selector; a blocking one said only
    # "this client is closed", not that tiger had closed it at exit, nor what to do
    done = subprocess.run([sys.executable, "-c", AT_EXIT, tiger_url, kind], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "at exit: TigerError: this client is closed: tiger closed it as the interpreter exits" in done.stdout, done.stdout
    assert "register the handler after" in done.stdout
