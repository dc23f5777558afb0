"""Host names of writers' URLs are looked up by tiger, within the caller's timeout, never by libzmq.

libzmq looked a host name up in its I/O thread with no bound, on every connect and reconnect, and a
context's end waited for it: with a name server that does not answer, ``tiger.connect(url, timeout=1)``
raised after 20 s and a client's ``close()`` took 13 s (a new user's trial). The unit tests below drive
``tiger._lookup`` with a resolver of their own (its ``getaddrinfo`` replaced); the last one runs real
clients against a real name server that stops answering, in a network namespace of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

import tiger
import tiger.aio
from tiger import _lookup

# the port of the urls below: nothing binds or connects there (their names never resolve, or resolve through a
# resolver of the test's own), so no test here holds a port another could need
PORT = 7710


class Resolver:
    """``socket.getaddrinfo`` for the hosts of a test: answers what ``answers`` holds for a host (a list of
    addresses, or an exception to raise), once ``released`` is set; counts the lookups of each host."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str] | BaseException] = {}
        self.released = threading.Event()
        self.released.set()
        self.calls: dict[str, int] = {}

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls[host] = self.calls.get(host, 0) + 1
        assert self.released.wait(10), "a test's resolver was never released"
        answer = self.answers.get(host, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, BaseException):
            raise answer
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 0)) for a in answer]


@pytest.fixture
def resolver(monkeypatch):
    fake = Resolver()
    monkeypatch.setattr(_lookup, "getaddrinfo", fake)  # (tiger looks up through the C socket module: tiger._unpatched)
    monkeypatch.setattr(_lookup, "_lookups", {})
    monkeypatch.setattr(_lookup, "_found", {})
    monkeypatch.setattr(_lookup, "_failed", {})
    yield fake
    fake.released.set()  # (a lookup thread left waiting ends)
    for lookup in list(_lookup._lookups.values()):  # here: ended later, it stored its address in the next test's
        lookup.done.wait(5)


def test_lookups_of_one_host_asked_for_at_once_share_one_resolver_call(resolver):
    # each probe of a silent name server left a thread waiting out the resolver (4 a command): one at a time now
    resolver.answers["w.test"] = ["10.0.0.7"]
    resolver.released.clear()
    for _ in range(3):
        with pytest.raises(TimeoutError, match=r"the lookup of the host 'w\.test' took longer than 0s"):
            _lookup.addresses("w.test", 0)
    resolver.released.set()
    assert _lookup.addresses("w.test", 5) == ["10.0.0.7"]
    assert resolver.calls == {"w.test": 1}


def test_a_lookup_that_takes_too_long_gives_the_address_found_before(resolver, monkeypatch):
    # a client's fresh socket (a resend, a snapshot) must not wait for a name server that stopped answering
    monkeypatch.setattr(_lookup, "LOOKUP_KEPT", 0.0)  # (each call looks up again)
    resolver.answers["w.test"] = ["10.0.0.7"]
    assert _lookup.endpoint(f"tcp://w.test:{PORT}", 5) == f"tcp://10.0.0.7:{PORT}"
    resolver.released.clear()
    started = time.monotonic()
    assert _lookup.endpoint(f"tcp://w.test:{PORT}", 0.2) == f"tcp://10.0.0.7:{PORT}"
    assert time.monotonic() - started < 1
    with pytest.raises(TimeoutError):  # (never found: nothing to fall back on)
        _lookup.endpoint(f"tcp://other.test:{PORT}", 0.1)


def test_an_endpoint_follows_a_name_that_moved_without_waiting(resolver, monkeypatch):
    monkeypatch.setattr(_lookup, "LOOKUP_KEPT", 0.0)
    resolver.answers["w.test"] = ["10.0.0.7"]
    where = _lookup.Endpoint(f"tcp://w.test:{PORT}", _lookup.wait_for_endpoint(f"tcp://w.test:{PORT}", 5))
    assert where.address == f"tcp://10.0.0.7:{PORT}"
    resolver.answers["w.test"] = ["10.0.0.8"]
    deadline = time.monotonic() + 5
    while where.now() != f"tcp://10.0.0.8:{PORT}":  # each now() starts a lookup and takes what the last one found
        assert time.monotonic() < deadline, "the new address was never taken"
        time.sleep(0.01)  # sleep-ok: a lookup thread of our own resolver, no socket
    resolver.answers["w.test"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    for _ in range(5):
        assert where.now() == f"tcp://10.0.0.8:{PORT}"  # a failing name server keeps the address it had


@pytest.mark.parametrize(
    ("url", "found", "expected"),
    [
        (f"tcp://w.test:{PORT}", ["fe80::1", "10.0.0.7"], f"tcp://10.0.0.7:{PORT}"),  # IPv4 first, as libzmq looked
        (f"tcp://w.test:{PORT}", ["fe80::1"], f"tcp://[fe80::1]:{PORT}"),
        (f"tcp://10.0.0.1;w.test:{PORT}", ["10.0.0.7"], f"tcp://10.0.0.1;10.0.0.7:{PORT}"),  # ZeroMQ's SOURCE;HOST
        (f"tcp://localhost:{PORT}", None, f"tcp://127.0.0.1:{PORT}"),
        (f"tcp://127.0.0.1:{PORT}", None, f"tcp://127.0.0.1:{PORT}"),
        (f"tcp://[::1]:{PORT}", None, f"tcp://[::1]:{PORT}"),
        ("ipc:///tmp/tiger/w", None, "ipc:///tmp/tiger/w"),
    ],
)
def test_an_endpoint_is_an_address_libzmq_need_not_look_up(resolver, url, found, expected):
    if found is not None:
        resolver.answers["w.test"] = found
    assert _lookup.endpoint(url, 5) == expected
    assert resolver.calls == ({"w.test": 1} if found is not None else {})


def test_a_client_waits_within_its_timeout_for_a_name_that_resolves_late(resolver, monkeypatch):
    # a writer's container may get its name after its clients start, as a writer may start after them
    monkeypatch.setattr(_lookup, "LOOKUP_KEPT", 0.0)
    threading.Timer(0.3, lambda: resolver.answers.__setitem__("late.test", ["10.0.0.9"])).start()
    assert _lookup.wait_for_endpoint(f"tcp://late.test:{PORT}", 5) == f"tcp://10.0.0.9:{PORT}"


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("unknown.test", "the host 'unknown.test' does not resolve"),
        ("slow.test", "the lookup of the host 'slow.test' took longer than that (a name server that does not answer?)"),
    ],
)
def test_a_name_not_resolved_within_the_timeout_is_named_in_the_error(resolver, host, why):
    # (a host of its own per test: a lookup thread of the test before may end in this one)
    if host == "slow.test":
        resolver.released.clear()
    started = time.monotonic()
    with pytest.raises(tiger.Unavailable) as raised:
        tiger.connect(f"tcp://{host}:{PORT}", timeout=0.5)
    assert str(raised.value) == f"the tiger writer at tcp://{host}:{PORT} did not answer within 0.5s: {why}"
    assert time.monotonic() - started < 0.5 + 1.0


def test_a_name_that_does_not_resolve_was_told_as_a_slow_name_server_when_the_timeout_ended_in_a_new_lookup(
    resolver, monkeypatch
):
    # the full suite: connect(timeout=0.5) to a mistyped host, its first lookup refused at once, looked the name
    # up again (LOOKUP_KEPT 0.5 s after) just before its deadline and said the name server did not answer
    with pytest.raises(socket.gaierror):
        _lookup.endpoint(f"tcp://refused-then-slow.test:{PORT}", 5)
    monkeypatch.setattr(_lookup, "LOOKUP_KEPT", 0.0)  # (every call looks again)
    resolver.released.clear()  # (and every lookup from now on is still going when the deadline comes)
    with pytest.raises(tiger.Unavailable, match=r"the host 'refused-then-slow\.test' does not resolve$"):
        tiger.connect(f"tcp://refused-then-slow.test:{PORT}", timeout=0.3)
    monkeypatch.setattr(_lookup, "LOOKUP_WAIT", 0.1)  # a lookup going on this long is the news: a slow name server
    with pytest.raises(tiger.Unavailable, match=r"took longer than that \(a name server that does not answer\?\)$"):
        tiger.connect(f"tcp://refused-then-slow.test:{PORT}", timeout=0.3)


def test_a_writer_binds_the_address_tiger_looked_up_for_its_host_name(resolver):
    from tiger._server import bind_address

    resolver.answers["w.test"] = ["10.0.0.7"]
    assert bind_address(f"tcp://w.test:{PORT}") == f"tcp://10.0.0.7:{PORT}"
    for url in (f"tcp://*:{PORT}", f"tcp://lo:{PORT}", "tcp://127.0.0.1:*", f"tcp://[::1]:{PORT}", "ipc:///tmp/tiger/w"):
        assert bind_address(url) == url  # (a wildcard, an interface name, an address: libzmq needs no lookup)
    with pytest.raises(ValueError, match=rf"^url: cannot bind 'tcp://nowhere\.test:{PORT}': the host 'nowhere\.test' does"):
        bind_address(f"tcp://nowhere.test:{PORT}")
    resolver.answers["again.test"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with pytest.raises(ValueError, match=r"the lookup of the host 'again\.test' failed for now \(a name server"):
        bind_address(f"tcp://again.test:{PORT}")  # (it said "does not resolve", as connect did)
    assert resolver.calls == {"w.test": 1, "nowhere.test": 1, "again.test": 1}


def test_a_resolver_that_failed_for_now_was_told_as_a_host_that_does_not_resolve(resolver):
    # a user's trial: glibc answers EAI_AGAIN once no name server answered (5 s a try); connect(timeout=5.5)
    # then said "the host 'fresh.example.com' does not resolve"
    resolver.answers["again.test"] = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    with pytest.raises(tiger.Unavailable) as raised:
        tiger.connect(f"tcp://again.test:{PORT}", timeout=0.3)
    assert str(raised.value).endswith("the lookup of the host 'again.test' failed for now (a name server that does not answer?)")


@pytest.mark.parametrize(
    ("check", "url", "said"),
    [
        ("connect", f"tcp://127.0.0.1;localhost:{PORT}", "the SOURCE of a tcp://SOURCE;HOST:PORT url needs a port too"),
        ("connect", f"tcp://:{PORT}", "a tcp url needs a host"),
        ("bind", f"tcp://:{PORT}", "a tcp url needs a host"),
        ("bind", f"tcp://127.0.0.1:0;localhost:{PORT}", "tcp://SOURCE;HOST:PORT is ZeroMQ's form for connecting"),
    ],
)
def test_a_url_libzmq_retried_for_ever_or_said_of_as_an_empty_host_is_refused_naming_it(check, url, said):
    from tiger._server import check_bind_url, check_connect_url

    with pytest.raises(ValueError, match=f"^url: {re.escape(said)}"):
        (check_connect_url if check == "connect" else check_bind_url)(url)


def test_the_commands_took_the_source_of_a_source_host_url_for_part_of_its_host(capsys):
    # a user's trial: tiger.connect took tcp://127.0.0.1:0;localhost:PORT; `tiger stats` and the pytest plugin
    # said "the host '127.0.0.1:0;localhost' does not resolve"
    from tiger import _cli
    from tiger._server import unresolved_host

    with tiger.serve("tcp://127.0.0.1:*") as server:
        port = server.url.rsplit(":", 1)[1]
        for host in ("localhost", "127.0.0.1"):
            url = f"tcp://127.0.0.1:0;{host}:{port}"
            assert unresolved_host(url) is None
            assert _cli.main(["stats", "--url", url, "--timeout", "5"]) == 0, capsys.readouterr().err
            assert f"url      {server.url}" in capsys.readouterr().out


@pytest.fixture
def silent_listener():
    """A tcp port that accepts connections and never answers (no ZeroMQ greeting): a writer paused, as far as a
    client can tell. Yields its port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("aio", [False, True], ids=["connect", "aio connect"])
def test_connect_probed_the_handshake_again_at_its_deadline(silent_listener, monkeypatch, aio):
    # a user's trial: connect(timeout=0.2) to a writer that does not answer took 0.3 to 0.4 s: the handshake
    # probe made at its first resend was made again at its deadline, past it
    from tiger import _client

    probes = []
    real = _client.handshake_failure
    monkeypatch.setattr(_client, "handshake_failure", lambda *args: probes.append(args) or real(*args))
    url = f"tcp://127.0.0.1:{silent_listener}"
    with pytest.raises(tiger.Unavailable, match=r"did not answer within 0\.3s"):
        asyncio.run(tiger.aio.connect(url, timeout=0.3)) if aio else tiger.connect(url, timeout=0.3)
    assert len(probes) == 1


@pytest.mark.parametrize("call", ["connect", "aio connect", "request_once", "lease", "dump", "load"])
@pytest.mark.parametrize(("lookup", "timeout"), [("never answers", 0.4), ("answers after 0.8s", 1.0)])
def test_a_command_waited_for_the_lookup_before_its_timeout_began(
    resolver, silent_listener, call, lookup, timeout, tmp_path, capsys
):
    # request_once (every `tiger` command), a NamespaceLease and `tiger dump`/`tiger load` probed the url's host
    # (up to LOOKUP_WAIT, 1 s, whatever the call's timeout) before their own timeout began, then waited it whole
    # again for the answer: `tiger stats --timeout 0.5` to a writer by name took 1.5 s, by a slow name server.
    # `tiger dump`/`tiger load` took no --timeout at all (connect's 5 s). tiger.connect and tiger.aio.connect
    # looked up within their timeout, then waited it whole again for the hello (and again for the snapshot).
    from tiger import _cli
    from tiger import _protocol as p
    from tiger._server import NamespaceLease, request_once

    resolver.answers["w.test"] = ["127.0.0.1"]
    resolver.released.clear()
    if lookup != "never answers":
        threading.Timer(0.8, resolver.released.set).start()
    url = f"tcp://w.test:{silent_listener}"
    said = f"the tiger writer at {url} did not answer within {timeout:g}s"
    started = time.monotonic()
    if call in ("dump", "load"):
        seed = tmp_path / "seed.jsonl"
        seed.write_text('{"table": "plans", "record": {"id": "plan_1"}}\n')
        args = ["dump"] if call == "dump" else ["load", str(seed)]
        assert _cli.main([*args, "--url", url, "--timeout", str(timeout)]) == 1
        assert said in capsys.readouterr().err
    else:
        with pytest.raises(tiger.Unavailable, match=f"^{re.escape(said)}"):
            if call == "connect":
                tiger.connect(url, timeout=timeout)
            elif call == "aio connect":
                asyncio.run(tiger.aio.connect(url, timeout=timeout))
            elif call == "request_once":
                request_once(url, p.Stats(1), timeout)
            else:
                NamespaceLease(url, "leased", timeout)
    # (0.2 s past it at most: the handshake probe at the deadline, and its greeting probe)
    assert time.monotonic() - started < timeout + 0.45


def test_serve_waited_a_whole_lookup_before_its_timeout_began(resolver):
    # tiger.serve(url, timeout=0.4) checked the url's host name for up to LOOKUP_WAIT (1 s) first, then began
    # its timeout; and it gave the first ping the whole timeout again once the writer said it served
    # (a user's trial, then: under 1 s it said "did not start within the timeout", nothing started, the lookup the cause)
    resolver.released.clear()  # (this process's lookups of w.test never end)
    started = time.monotonic()
    with pytest.raises(ValueError, match=r"the lookup of the host 'w\.test' took too long"):
        tiger.serve("tcp://w.test:0", timeout=0.4)
    assert time.monotonic() - started < 0.4 + 0.45


def test_stats_with_a_short_timeout_took_a_slow_name_server_for_a_paused_writer(resolver, capsys):
    # a user's trial: `tiger stats --timeout 0.5` said the lookup took too long, then advised waiting longer for
    # "a writer paused or busy"; only from 1 s (LOOKUP_WAIT) on did it say to see to the name server
    from tiger import _cli

    resolver.released.clear()
    assert _cli.main(["stats", "--url", "tcp://w.test:1", "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err
    assert "took longer than that" in err and "see to the name server" in err and "paused" not in err


def test_a_command_whose_probe_spent_its_timeout_blamed_other_calls_of_the_client(capsys):
    # a user's trial: `tiger dump --timeout 0.5` to a port whose accept queue is full (nothing answers, not even
    # the kernel) said "other calls of this client held its socket": its probe had spent the timeout
    from tiger import _cli

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
            started = time.monotonic()
            assert _cli.main(["dump", "--url", url, "--timeout", "0.5"]) == 1
            assert time.monotonic() - started < 0.5 + 0.45
        finally:
            for filler in fillers:
                filler.close()
    err = capsys.readouterr().err
    assert f"the tiger writer at {url} did not answer within 0.5s" in err and "other calls" not in err


# Runs inside a network namespace whose only name server (127.0.0.1:53) is this script: it answers
# writer.test with 127.0.0.1 (no IPv6) and any other name with NXDOMAIN, and answers nothing while muted.
NAME_SERVER_STOPS = """
import asyncio, json, os, signal, socket, struct, tempfile, threading, time
import tiger, tiger.aio
from tiger import _cli

SILENT_URL = "tcp://silent.test:" + str(PORT)  # (PORT: the test module's, set on the line before this script)

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 53))
muted = threading.Event()

def answer():
    while True:
        query, peer = udp.recvfrom(512)
        if muted.is_set():
            continue
        end, labels = 12, []
        while query[end]:
            labels.append(query[end + 1 : end + 1 + query[end]].decode())
            end += 1 + query[end]
        ours = ".".join(labels).lower() == "writer.test"
        a = struct.unpack("!H", query[end + 1 : end + 3])[0] == 1
        record = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + socket.inet_aton("127.0.0.1") if ours and a else b""
        header = struct.pack("!HHHHH", 0x8180 if ours else 0x8183, 1, 1 if record else 0, 0, 0)
        udp.sendto(query[:2] + header + query[12 : end + 5] + record, peer)

threading.Thread(target=answer, daemon=True).start()
seen = {}

def took(name, started):
    seen[name] = time.monotonic() - started

muted.set()
started = time.monotonic()
try:
    tiger.connect(SILENT_URL, timeout=1)
except tiger.Unavailable as e:
    seen["connect error"] = str(e)
took("connect", started)
muted.clear()

keys = tempfile.mkdtemp()
_cli.main(["keygen", keys])
muted.set()
started = time.monotonic()
try:
    tiger.serve(SILENT_URL, timeout=2, curve_secret=os.path.join(keys, "tiger.key"))
except ValueError as e:
    seen["serve error"] = str(e)
took("serve", started)
muted.clear()

with tiger.serve("tcp://127.0.0.1:*") as server:
    url = "tcp://writer.test:" + server.url.rsplit(":", 1)[1]
    client = tiger.connect(url, timeout=1)
    client.table("t").insert({"n": 1})
    muted.set()
    os.kill(server.pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        client.table("t").insert({"n": 2})
    except tiger.Unavailable as e:
        seen["insert error"] = str(e)
    took("insert", started)
    started = time.monotonic()
    client.close()
    took("close", started)
    os.kill(server.pid, signal.SIGCONT)

    async def main():
        gaps = [0.0]

        async def beat():
            last = time.monotonic()
            while True:
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        heart = asyncio.create_task(beat())
        muted.set()
        started = time.monotonic()
        try:
            await tiger.aio.connect(SILENT_URL, timeout=1)
        except tiger.Unavailable:
            pass
        took("aio connect", started)
        muted.clear()
        client = await tiger.aio.connect(url, timeout=1)
        await client.table("t").insert({"n": 3})
        muted.set()
        os.kill(server.pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            await client.table("t").insert({"n": 4})
        except tiger.Unavailable:
            pass
        took("aio insert", started)
        started = time.monotonic()
        await client.close()
        took("aio close", started)
        os.kill(server.pid, signal.SIGCONT)
        heart.cancel()
        seen["loop gap"] = max(gaps)

    asyncio.run(main())
print(json.dumps(seen))
"""


def test_a_name_server_that_stopped_answering_held_connect_and_close_past_their_timeout(tmp_path):
    # A new user's trial, a name server that does not answer (glibc waits 5 s per try): connect(timeout=1)
    # raised after 20 s; serve(timeout=2) said only that the writer did not start, after 3.2 s; a client
    # connected by name whose writer then paused took 2 s to time out an insert of timeout=1 and 13 s to
    # close, as did tiger.aio's (libzmq looked the name up again for each fresh socket, and its context's
    # end waited for the lookups).
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare(1) and ip(8) for a network namespace with a name server of its own")
    if subprocess.run(["unshare", "-mn", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -mn is not allowed here (a container without CAP_SYS_ADMIN)")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:1\n")
    namespace = f'ip link set lo up && mount --bind "{resolv}" /etc/resolv.conf && exec "$0" -c "$1"'
    done = subprocess.run(
        ["unshare", "-mn", "sh", "-c", namespace, sys.executable, f"PORT = {PORT}\n" + textwrap.dedent(NAME_SERVER_STOPS)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["connect error"] == (
        f"the tiger writer at tcp://silent.test:{PORT} did not answer within 1s: the lookup of the host 'silent.test' "
        "took longer than that (a name server that does not answer?)"
    )
    assert seen["serve error"] == (  # (it said "did not start within the timeout", after 3.2 s)
        f"url: cannot bind 'tcp://silent.test:{PORT}': the lookup of the host 'silent.test' took too long "
        "(a name server that does not answer?)"
    )
    assert seen["serve"] < 2
    assert seen["insert error"].endswith("did not answer within 1s")  # (the writer's silence, not the name server's)
    assert seen["connect"] < 1 + 1.0  # 20 s before
    assert seen["aio connect"] < 1 + 1.0
    assert seen["insert"] < 1 + 0.75  # 2 s before: a lookup past the timeout, to tell of the name
    assert seen["aio insert"] < 1 + 0.75
    assert seen["close"] < 1.0  # 13 s before
    assert seen["aio close"] < 1.0
    assert seen["loop gap"] < 0.25  # the event loop ran throughout
