"""Namespace leases with real processes: a client that leased a namespace dies without a goodbye (SIGKILL),
and the writer drops the namespace once it takes the client for gone. Each test is named after what broke."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest
import zmq
from _util import read_line, script_process

import tiger
import tiger.aio
from tiger import _protocol as p
from tiger._cli import format_stats

GONE_WITHIN = 20.0  # seconds: CLIENT_SILENCE (3 s), the writers' lease grace here (1 s) and a loaded machine's slack
GRACE = 1.0  # seconds: the lease grace of the writers these tests start to see a dead client's lease end

LEASING_CLIENT = """
import sys
import tiger

with tiger.connect(sys.argv[1]) as client, tiger.namespace("job-1"):
    client.lease_namespace()
    client.table("plans").insert_many([{"n": i} for i in range(100)])
    client.table("prices").insert({"n": 1})
    print("leased", flush=True)
    sys.stdin.readline()  # killed here
"""


def wait_gone(client: tiger.Client, namespace: str) -> None:
    """Poll the replica, with a deadline, until ``namespace`` holds nothing in any table."""
    deadline = time.monotonic() + GONE_WITHIN
    while namespace in client.namespaces():
        assert time.monotonic() < deadline, f"{namespace!r} still held {GONE_WITHIN:g}s after its client died"
        time.sleep(0.05)  # sleep-ok: polling another process's doing, with a deadline


def test_a_namespace_whose_client_was_killed_stayed_in_the_writer_for_good():
    with tiger.serve(lease_grace=GRACE) as server, tiger.connect(server.url) as client:
        with script_process(LEASING_CLIENT, server.url) as proc:
            assert read_line(proc, 30) == "leased\n"
            client.sync()
            assert client.table("plans").count() == 0  # (in "global")
            assert len(client.table("plans").all(namespace="job-1")) == 100
            with tiger.namespace("other"):
                client.table("plans").insert({"n": 0})  # another client's namespace: it stays
            proc.kill()
            proc.wait(10)
            wait_gone(client, "job-1")
            assert client.namespaces() == ["other"]


def test_a_namespace_leased_by_a_client_that_closed_stayed_in_the_writer():
    with tiger.serve() as server, tiger.connect(server.url) as watcher:
        with tiger.connect(server.url) as client:
            client.lease_namespace("job-2")
            client.lease_namespace("job-2")  # again: nothing changes
            with tiger.namespace("job-2"):
                client.table("plans").insert({"n": 1})
        watcher.sync()  # the goodbye came before this call: no silence to wait for
        assert watcher.namespaces() == []


def test_an_async_client_leases_a_namespace_as_the_blocking_one_does():
    async def lease(url: str) -> None:
        async with await tiger.aio.connect(url) as client:
            with tiger.namespace("job-3"):
                await client.lease_namespace()
                await client.table("plans").insert({"n": 1})
            assert client.namespaces() == ["job-3"]

    with tiger.serve() as server, tiger.connect(server.url) as watcher:
        asyncio.run(lease(server.url))
        watcher.sync()
        assert watcher.namespaces() == []


LOST = r"lease of namespace 'job-5' had ended before it was dropped, and what was written there before that end was lost"


def test_a_client_whose_lease_had_ended_dropped_its_namespace_without_a_word(recwarn):
    # A process stopped past the writer's lease grace lost its namespace, and its drop at the end said nothing
    # (test_plugin_runs has the real stop). Here another client's drop ends the lease: the leaser's own drop
    # warns, once; a drop of a namespace whose lease it still held, or never held, does not.
    with tiger.serve() as server, tiger.connect(server.url) as leaser, tiger.connect(server.url) as other:
        leaser.lease_namespace("job-5")
        leaser.lease_namespace("job-6")
        with tiger.namespace("job-5"):
            leaser.table("plans").insert({"n": 1})
        other.drop_namespace("job-5")
        with pytest.warns(RuntimeWarning, match=LOST):
            leaser.drop_namespace("job-5")
        leaser.drop_namespace("job-5")  # (said once)
        leaser.drop_namespace("job-6")  # its own lease, ended by its own drop
        leaser.drop_namespace("job-7")  # never leased
        assert [str(w.message) for w in recwarn.list] == []

        async def leased_and_lost(url: str) -> None:
            async with await tiger.aio.connect(url) as client:
                await client.lease_namespace("job-5")
                other.drop_namespace("job-5")
                with pytest.warns(RuntimeWarning, match=LOST):
                    await client.drop_namespace("job-5")

        asyncio.run(leased_and_lost(server.url))


def test_a_writer_of_an_older_tiger_made_every_drop_of_a_leased_namespace_warn_of_a_lost_lease(recwarn):
    # A review: a writer of the previous version answers a drop with no result (None), which was read as "no
    # lease ended with it": on a shared writer not yet upgraded, every leased test's teardown failed.
    with tiger.serve() as server, tiger.connect(server.url) as client:
        client.lease_namespace("job-8")
        older = p.Ok(1, client.epoch, 1, None, None, ())  # (what that writer answers)
        assert client._dropped("job-8", True, older) is None
        client.drop_namespace("job-8")
        assert recwarn.list == []


@pytest.mark.parametrize("bad", ["", "x" * 201, 5, b"ns"])
def test_a_bad_namespace_to_lease_raises_naming_the_field_and_sends_nothing(bad):
    with tiger.serve() as server, tiger.connect(server.url) as client:
        seq = client.stats()["seq"]
        with pytest.raises((TypeError, ValueError), match="namespace"):
            client.lease_namespace(bad)
        assert client.stats()["seq"] == seq


def test_a_lease_taken_outside_any_namespace_block_leased_global_and_its_close_dropped_everyones_records():
    # A user trial: lease_namespace() with no argument, outside a namespace block, leased "global"; when that
    # client closed, every table's "global" went, seeds and other clients' records with it.
    with tiger.serve() as server, tiger.connect(server.url) as keeper:
        keeper.table("shared").insert({"id": "important"})
        with tiger.connect(server.url) as leaser:
            for call in (leaser.lease_namespace, lambda: leaser.lease_namespace("global")):
                with pytest.raises(ValueError, match=r"^namespace 'global' cannot be leased"):
                    call()
        raw = p.encode_call(p.Call("c" * 16, 1e12, p.Lease(1, "global", "c" * 16), -1))  # a client that does not check
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
            sock.connect(server.url)
            sock.send(raw)
            assert sock.poll(10_000), "no answer"
            answer = p.decode_reply(sock.recv())
        assert type(answer) is p.Failed and answer.kind == "value" and "cannot be leased" in answer.message
        keeper.sync()
        assert keeper.table("shared").get("important") is not None
        assert keeper.replica.store.tables.get("tiger.lease", {}) == {}


STOPPED_CLIENT = """
import sys
import tiger

with tiger.connect(sys.argv[1]) as client, tiger.namespace("job-4"):
    client.lease_namespace()
    client.table("plans").insert_many([{"n": i} for i in range(10)])
    print("leased", flush=True)
    sys.stdin.readline()  # stopped (SIGSTOP) here, then resumed
    client.sync()
    plans = client.table("plans")
    print(plans.count(), flush=True)
    plans.insert({"n": 10})
    print(plans.count(), flush=True)
"""


def test_a_process_stopped_for_more_than_3_s_lost_its_leased_namespace():
    # Ctrl-Z on a test run against a writer of one's own (--tiger-url): 3 s later the writer took the stopped
    # process for gone (its ZeroMQ connection answered no heartbeat) and dropped the namespaces it leased;
    # resumed, its tests found their records gone. Now a silent client keeps its leases for the writer's
    # lease grace (600 s by default), and keeps them for good once it is heard again.
    with tiger.serve() as server, tiger.connect(server.url) as watcher:
        with script_process(STOPPED_CLIENT, server.url) as proc:
            assert read_line(proc, 30) == "leased\n"
            assert watcher.stats()["clients"] == 2
            proc.send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + GONE_WITHIN
            while watcher.stats()["clients"] != 1:  # the writer takes the stopped process for gone
                assert time.monotonic() < deadline, "the stopped client was never taken for gone"
                time.sleep(0.1)  # sleep-ok: polling the writer's view of another process, with a deadline
            watcher.sync()
            assert len(watcher.table("plans").all(namespace="job-4")) == 10
            leases = watcher.stats()["leases"]
            assert list(leases["ending"]) == ["job-4"] and 500 < leases["ending"]["job-4"] <= 600, leases
            assert "job-4 dropped in " in format_stats(watcher.stats())  # (tiger stats)
            proc.send_signal(signal.SIGCONT)
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert read_line(proc, 30) == "10\n"  # its records, as it left them
            assert read_line(proc, 30) == "11\n"
            assert proc.wait(30) == 0
            watcher.sync()  # its goodbye at the end dropped the namespace at once
            assert watcher.namespaces() == []


@pytest.mark.parametrize(
    ("bad", "error"), [(-1, ValueError), ("600", TypeError), (float("nan"), ValueError), (True, TypeError), (86401, ValueError)]
)
def test_a_bad_lease_grace_raises_naming_the_field_and_starts_nothing(bad, error):
    with pytest.raises(error, match="lease_grace"):
        tiger.serve(lease_grace=bad)


def test_tiger_serve_refuses_a_bad_lease_grace_naming_the_option():
    done = subprocess.run(
        [sys.executable, "-m", "tiger", "serve", "--url", "tcp://127.0.0.1:*", "--lease-grace", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 1 and "--lease-grace must be a number of seconds" in done.stderr, done.stderr
