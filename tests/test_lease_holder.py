"""``NamespaceLease``: a lease held on a socket of its own, without a client (the pytest plugin's controller
holds its run's namespace so), with real writers and processes. Each test is named after what broke."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import zmq
from _util import read_line, script_process

import tiger
from tiger._core import CLIENT_SILENCE
from tiger._errors import Unavailable
from tiger._server import NamespaceLease, ping

GONE_WITHIN = 20.0  # seconds: CLIENT_SILENCE (3 s), the writer's lease grace here (1 s) and a loaded machine's slack


def namespaces(url: str) -> set[str]:
    """The namespaces the writer holds records in (tiger's own tables too)."""
    return {ns for spaces in ping(url)["tables"].values() for ns, n in spaces.items() if n}


def wait_gone(url: str, namespace: str) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    while namespace in namespaces(url):
        assert time.monotonic() < deadline, f"{namespace!r} still held {GONE_WITHIN:g}s after its holder went"
        time.sleep(0.05)  # sleep-ok: polling the writer, with a deadline


def write(url: str, namespace: str) -> None:
    with tiger.connect(url) as client, tiger.namespace(namespace):
        client.table("plans").insert({"n": 1})


HOLDER = """
import sys
from tiger._server import NamespaceLease

lease = NamespaceLease(sys.argv[1], "job-1")
print("leased", flush=True)
sys.stdin.readline()  # killed here
"""


def test_a_namespace_leased_by_a_holder_outlived_its_killed_or_closed_holder():
    with tiger.serve(lease_grace=1) as server:
        with script_process(HOLDER, server.url) as proc:
            assert read_line(proc, 30) == "leased\n"
            write(server.url, "job-1")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            wait_gone(server.url, "job-1")
        lease = NamespaceLease(server.url, "job-2")
        write(server.url, "job-2")
        lease.close()  # its goodbye: dropped at once, no silence to wait for
        lease.close()
        assert "job-2" not in namespaces(server.url)


def test_a_holder_never_read_by_its_process_lost_its_lease_and_a_restarted_writer_forgot_it(tmp_path):
    # The holder's socket is read (and beats) on a thread of its own: a DEALER left unread stops reading its
    # connection once its queue is full (the writer probes a silent client through it), answers no ZeroMQ
    # heartbeat then, and is taken for gone; a silent holder was also taken for gone by a writer restarted on
    # its data directory, which gives each leasing client CLIENT_SILENCE to be heard. Here the process does
    # nothing with the holder for a while, across a restart.
    url = f"ipc://{tmp_path}/w" if len(str(tmp_path)) < 90 else None
    server = tiger.serve(url, data=tmp_path / "data", lease_grace=0)  # (no grace: silence alone would end it)
    try:
        lease = NamespaceLease(server.url, "job-3")
        write(server.url, "job-3")
        url = server.url
        server.stop()
        server = tiger.serve(url, data=tmp_path / "data", lease_grace=0)
        assert "job-3" in namespaces(url)
        deadline = time.monotonic() + CLIENT_SILENCE + 2.5  # past the restarted writer's wait, and some probes
        while time.monotonic() < deadline:
            assert "job-3" in namespaces(url), "the lease ended while its holder lived"
            time.sleep(0.2)  # sleep-ok: watching that something does not happen, for a while
        lease.close()
        wait_gone(url, "job-3")
    finally:
        server.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_lease_that_could_not_be_taken_left_its_socket_and_thread_open(tmp_path):
    with pytest.raises(Unavailable, match="not there"):
        NamespaceLease(f"ipc://{tmp_path}/nothing", "job-4")
    with tiger.serve() as server:
        with pytest.raises(ValueError, match="'global' cannot be leased"):
            NamespaceLease(server.url, "global")
        with pytest.raises(ValueError, match="timeout"):
            NamespaceLease(server.url, "job-4", timeout=0)
    # something listens but never answers: the holder made its context, sockets and DEALER, then gave up
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as mute:
        mute.bind(f"ipc://{tmp_path}/mute")
        with pytest.raises(Unavailable, match="did not answer"):
            NamespaceLease(f"ipc://{tmp_path}/mute", "job-4", timeout=0.3)
        fds = open_fds()
        for _ in range(5):
            with pytest.raises(Unavailable, match="did not answer"):
                NamespaceLease(f"ipc://{tmp_path}/mute", "job-4", timeout=0.3)
        # (a leak is 5 or more descriptors a try: its context's, its socket pair, its DEALER; other tests'
        # clients closing meanwhile may close a few)
        assert open_fds() < fds + 5
    assert [t.name for t in threading.enumerate() if t.name.startswith("tiger lease")] == []
