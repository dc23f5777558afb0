"""README promises that had no test behind them (issue 11), each proved with real writer processes and real signals.

Every test is named after the promise it proves: "Durability and faults" (what each --fsync loses to a
SIGKILL, a crash in the middle of compaction, the answers kept for resent calls, TIGER_SERVER_KEY,
CurveZMQ on a non-loopback address), "With pytest-xdist" (TIGER_URL) and the namespace size limit.
Two promises this file found broken (a snapshot.tmp left by a crash; answers dropped from a client back
after silence) were fixed with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from _util import read_line

import tiger
from tiger import _core, _log
from tiger import _protocol as p
from tiger._server import request_once

TIGER = [sys.executable, "-m", "tiger"]
RUN_TIMEOUT = 60


def cli_serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``tiger serve ARGS`` owned by this test process; returns the process and the URL it bound."""
    owner = ["--owner-pid", str(os.getpid())]  # it exits if this test process dies before stopping it
    proc = subprocess.Popen([*TIGER, "serve", *owner, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(proc, 30)
        assert line.startswith("tiger writer serving at"), line + proc.stderr.read()  # type: ignore[union-attr]
    except BaseException:
        stop(proc)
        raise
    return proc, line.strip().rsplit(" ", 1)[-1]


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM a writer we started (SIGKILL if it does not go); returns its stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    return err


def kill(server: tiger.Server) -> None:
    """SIGKILL a writer we started (a crash of the writer process), and reap it."""
    if server.running:
        os.kill(server.pid, signal.SIGKILL)
    server._process.wait(10)
    server.stop()


def keygen(directory: Path) -> str:
    out = subprocess.run([*TIGER, "keygen", str(directory)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().rsplit(" ", 1)[-1]


def snapshot_generation(data: Path) -> int:
    raw = (data / "snapshot").read_bytes()
    return int(p.unpack(raw[_log.HEADER.size :])["generation"])


# -- 1. --fsync everysec and never across a SIGKILL of the writer ----------------------------------------


@pytest.mark.parametrize("fsync", ["everysec", "never"])
def test_fsync_everysec_and_never_lose_no_acknowledged_write_to_a_crash_of_the_writer_process(tmp_path, fsync):
    """everysec: "a crash of the writer process loses nothing"; never: "it is in the OS" (so a process
    crash loses nothing either). Every write below was acknowledged; the writer is SIGKILLed right after
    the last one, with no request in between, well inside the everysec interval."""
    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    server = tiger.serve(url, data=data, fsync=fsync)
    try:
        with tiger.connect(url) as client:
            plans = client.table("plans", prefix="plan")
            acked = [plans.insert({"n": i})["id"] for i in range(200)]
            acked += [r["id"] for r in plans.insert_many([{"n": 200 + i} for i in range(100)])]
            plans.update(acked[0], {"changed": True})
            plans.delete(acked[1])
            with tiger.namespace("other"):
                plans.insert({"id": "plan_elsewhere"})
            last = plans.insert({"n": "last"})["id"]  # acknowledged ...
            kill(server)  # ... and the writer dies at once
            expected = client.checksum()  # the client's replica: every acknowledged write, in order
        assert not (data / "snapshot").exists()  # everything comes back from the log alone
        with tiger.serve(url, data=data, fsync=fsync) as again, tiger.connect(again.url) as fresh:
            stored = fresh.table("plans")
            assert {r["id"] for r in stored.all()} == {*acked, last} - {acked[1]}
            assert stored[acked[0]]["changed"] is True
            with tiger.namespace("other"):
                assert "plan_elsewhere" in stored
            assert fresh.stats()["checksum"] == expected  # order included
    finally:
        kill(server)


# -- 2. a crash in the middle of compaction ---------------------------------------------------------------


def _compact(url: str) -> dict:
    return request_once(url, p.Compact(1), timeout=30).result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compaction_states(tmp_path_factory) -> dict[str, object]:
    """A data directory at generation 1 (snapshot + log.1 holding changes after it), its checksum, and the
    snapshot the next compaction writes (generation 2), made by compacting a copy of it."""
    base = tmp_path_factory.mktemp("compaction")
    data = base / "data"
    with tiger.serve(f"ipc://{base}/w", data=data) as server, tiger.connect(server.url) as client:
        t = client.table("t")
        ids = [r["id"] for r in t.insert_many([{"n": i, "pad": "x" * 40} for i in range(300)])]
        _compact(server.url)
        t.insert_many([{"n": 300 + i} for i in range(50)])
        t.update(ids[0], {"after": "the snapshot"})
        t.delete(ids[1])
        with tiger.namespace("elsewhere"):
            t.insert({"id": "late"})
        checksum = client.stats()["checksum"]
        records = client.stats()["records"]
    assert sorted(os.listdir(data)) == ["lock", "log.1", "snapshot"] and (data / "log.1").stat().st_size > 0
    ahead = base / "ahead"
    shutil.copytree(data, ahead)
    with tiger.serve(f"ipc://{base}/w2", data=ahead) as server:
        assert _compact(server.url)["records"] == records
    assert snapshot_generation(data) == 1 and snapshot_generation(ahead) == 2
    return {"data": data, "checksum": checksum, "new_snapshot": (ahead / "snapshot").read_bytes()}


def _start_and_check(tmp_path: Path, data: Path, checksum: int) -> list[str]:
    """Start a writer on ``data``: it holds every record; a write after it survives a restart. The
    listing of ``data`` right after the start."""
    with tiger.serve(f"ipc://{tmp_path}/w", data=data) as server, tiger.connect(server.url) as client:
        assert client.stats()["checksum"] == checksum
        assert client.table("t").get("late") is None
        with tiger.namespace("elsewhere"):
            assert "late" in client.table("t")
        listing = sorted(os.listdir(data))
        client.table("t").insert({"id": "after-restart"})
        expected = client.stats()["checksum"]
    with tiger.serve(f"ipc://{tmp_path}/w", data=data) as server, tiger.connect(server.url) as client:
        assert client.stats()["checksum"] == expected
    return listing


@pytest.mark.parametrize("whole", [False, True], ids=["torn-tmp", "whole-tmp-not-renamed"])
def test_a_crash_before_the_new_snapshot_is_renamed_leaves_the_old_snapshot_with_its_log(tmp_path, compaction_states, whole):
    data = tmp_path / "data"
    shutil.copytree(compaction_states["data"], data)
    new = compaction_states["new_snapshot"]
    assert isinstance(new, bytes)
    (data / "snapshot.tmp").write_bytes(new if whole else new[: len(new) // 2])
    old = (data / "snapshot").read_bytes()
    listing = _start_and_check(tmp_path, data, compaction_states["checksum"])  # type: ignore[arg-type]
    assert "log.1" in listing and (data / "snapshot").read_bytes() == old  # the old snapshot and its log stand


@pytest.mark.parametrize("new_log", [False, True], ids=["before-the-new-log", "before-the-old-log-is-removed"])
def test_a_crash_after_the_new_snapshot_is_renamed_leaves_the_new_one_and_the_old_log_is_removed(
    tmp_path, compaction_states, new_log
):
    data = tmp_path / "data"
    shutil.copytree(compaction_states["data"], data)
    (data / "snapshot").write_bytes(compaction_states["new_snapshot"])  # type: ignore[arg-type]
    if new_log:
        (data / "log.2").touch()
    listing = _start_and_check(tmp_path, data, compaction_states["checksum"])  # type: ignore[arg-type]
    assert listing == ["lock", "log.2", "snapshot"]  # log.1 (already in the new snapshot) is gone
    assert snapshot_generation(data) == 2


def test_a_snapshot_tmp_left_by_a_crash_is_removed_when_the_writer_starts(tmp_path, compaction_states):
    data = tmp_path / "data"
    shutil.copytree(compaction_states["data"], data)
    new = compaction_states["new_snapshot"]
    assert isinstance(new, bytes)
    (data / "snapshot.tmp").write_bytes(new[: len(new) // 2])
    with tiger.serve(f"ipc://{tmp_path}/w", data=data):
        assert not (data / "snapshot.tmp").exists()


def test_a_writer_killed_in_the_middle_of_compaction_restarts_with_every_record(tmp_path):
    """Real SIGKILLs: a big store, `Compact` sent, the writer killed the moment snapshot.tmp appears
    (the new snapshot is being written), then restarted on the same directory."""
    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    server = tiger.serve(url, data=data)
    try:
        with tiger.connect(url, timeout=30) as client:
            t = client.table("t")
            for k in range(30):
                t.insert_many([{"n": k * 2000 + i, "pad": "x" * 100} for i in range(2000)])
            _compact(url)
            ids = [r["id"] for r in t.insert_many([{"n": -i} for i in range(1000)])]
            t.update(ids[0], {"after": "the snapshot"})
            t.delete(ids[1])
            expected = client.stats()["checksum"]
            records = client.stats()["records"]
        assert records == 60_999 and sorted(os.listdir(data)) == ["lock", "log.1", "snapshot"]
        landed = None  # the generation of the snapshot standing when a kill landed mid-compaction
        with zmq.Context() as ctx:
            for attempt in range(1, 6):
                sock = ctx.socket(zmq.DEALER)
                try:
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(url)
                    generation = snapshot_generation(data)  # read before: the kill must follow the file at once
                    sock.send(p.encode_request(p.Compact(attempt)))
                    deadline = time.monotonic() + 30
                    while not (data / "snapshot.tmp").exists():  # spin: the file lives some ms
                        if sock.poll(0):  # the compaction ended before we saw it
                            break
                        assert time.monotonic() < deadline, "the compaction neither wrote snapshot.tmp nor answered"
                    else:
                        kill(server)
                        if (data / "snapshot.tmp").exists():  # killed before the rename
                            landed = generation
                finally:
                    sock.close(linger=0)
                if landed is not None:
                    break
                if not server.running:  # killed just after the rename: a crash point too; check it, go on
                    server = tiger.serve(url, data=data)
                    assert request_once(url, p.Stats(1)).result["checksum"] == expected
        assert landed is not None, "no SIGKILL landed while the new snapshot was being written in 5 compactions"
        # the old snapshot and its log stand, with the log the compaction had begun (empty here)
        assert snapshot_generation(data) == landed and {f"log.{landed}", f"log.{landed + 1}"} <= set(os.listdir(data))
        server = tiger.serve(url, data=data)
        with tiger.connect(url, timeout=30) as client:
            assert client.stats()["checksum"] == expected
            assert client.table("t")[ids[0]]["after"] == "the snapshot" and ids[1] not in client.table("t")
            assert _compact(url)["records"] == records  # and it compacts again over the leftover
        # (the log the killed compaction began holds nothing: kept, the new snapshot is of its generation)
        assert snapshot_generation(data) == landed + 1 and sorted(os.listdir(data)) == ["lock", f"log.{landed + 1}", "snapshot"]
    finally:
        kill(server)


# -- 3. answers kept for resent calls -------------------------------------------------------------------------


class _Caller:
    """One client id's calls over a raw DEALER socket: a fresh socket per send, as the client's resend does."""

    def __init__(self, ctx: zmq.Context, url: str, namespace: str) -> None:
        self.ctx, self.url, self.namespace = ctx, url, namespace
        self.client_id = f"promises-{uuid.uuid4().hex}"
        self.sent: dict[int, bytes] = {}

    def call(self, req_id: int, table: str = "t", pad: int = 0) -> bytes:
        """A call inserting one record with no id (each application makes a new record; ``pad``: with so many
        bytes more, in its answer too); its answer."""
        record = {"req": req_id, "pad": "x" * pad} if pad else {"req": req_id}
        call = p.Call(self.client_id, time.time() + 3600, p.Insert(req_id, table, self.namespace, None, [record], False))
        self.sent[req_id] = p.encode_call(call)
        return self.resend(req_id)

    def resend(self, req_id: int) -> bytes:
        sock = self.ctx.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.url)
            sock.send(self.sent[req_id])
            assert sock.poll(5000), "the writer did not answer"
            return sock.recv()
        finally:
            sock.close(linger=0)


def _seq(answer: bytes) -> int:
    reply = p.decode_reply(answer)
    assert type(reply) is p.Ok, reply
    return reply.seq


def test_a_resent_call_is_answered_with_its_first_answer_and_applied_once(writer):
    ns = f"resent-{uuid.uuid4().hex}"
    with zmq.Context() as ctx, tiger.connect(writer.url) as client, tiger.namespace(ns):
        caller = _Caller(ctx, writer.url, ns)
        first = caller.call(1)
        assert caller.resend(1) == first and caller.resend(1) == first
        client.sync()
        assert [r["req"] for r in client.table("t").all()] == [1]


@pytest.mark.parametrize("answers", ["big", "small"])
def test_a_clients_last_answers_are_kept_and_an_older_call_resent_is_applied_again(writer, answers):
    """A client's last ANSWERS_KEPT (32) answers are kept whatever their size, and more, up to ANSWERS_KEPT_MAX
    (1024), while they hold at most ANSWERS_KEPT_BYTES: with big answers, after 31 later calls the first
    call's resend is still answered from memory; after the 32nd it is forgotten, and the resend (still
    within its deadline) is applied a second time. Small ones: the same at 1024."""
    assert (_core.ANSWERS_KEPT, _core.ANSWERS_KEPT_MAX, _core.ANSWERS_KEPT_BYTES) == (32, 1024, 256 * 1024)
    kept, pad = (32, _core.ANSWERS_KEPT_BYTES // 32 + 1000) if answers == "big" else (1024, 0)
    ns = f"kept-{uuid.uuid4().hex}"
    with zmq.Context() as ctx, tiger.connect(writer.url) as client, tiger.namespace(ns):
        caller = _Caller(ctx, writer.url, ns)
        first = caller.call(1, pad=pad)
        for req_id in range(2, kept + 1):  # kept - 1 later calls
            caller.call(req_id, table="later", pad=pad)
        assert caller.resend(1) == first  # the first is one of those kept
        client.sync()
        assert len(client.table("t").all()) == 1
        caller.call(kept + 1, table="later", pad=pad)  # one more later call pushes the first answer out
        again = caller.resend(1)
        assert again != first and _seq(again) > _seq(first)  # applied again: a new change
        client.sync()
        assert sorted(r["req"] for r in client.table("t").all()) == [1, 1]
        assert len(client.table("later").all()) == kept


def test_a_restarted_writer_does_not_remember_the_answers_so_a_resent_call_is_applied_again(tmp_path):
    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    ns = "restarted"
    server = tiger.serve(url, data=data)
    try:
        with zmq.Context() as ctx:
            caller = _Caller(ctx, url, ns)
            first = caller.call(1)
            assert caller.resend(1) == first
            kill(server)
            server = tiger.serve(url, data=data)
            again = caller.resend(1)
            assert p.decode_reply(again).epoch != p.decode_reply(first).epoch  # type: ignore[union-attr]
        with tiger.connect(url) as client, tiger.namespace(ns):
            assert [r["req"] for r in client.table("t").all()] == [1, 1]
    finally:
        kill(server)


# "for a minute" (ANSWERS_FORGOTTEN) and the silence rules are tested on the writer's core with a fake
# clock: tests/test_core.py.


# -- 4. TIGER_SERVER_KEY -----------------------------------------------------------------------------------------


@pytest.fixture
def curve_writer(tmp_path) -> Iterator[tuple[str, str]]:
    """A `tiger serve --curve-secret` on loopback tcp: (url, public key)."""
    public = keygen(tmp_path / "keys")
    proc, url = cli_serve("--url", "tcp://127.0.0.1:*", "--curve-secret", str(tmp_path / "keys" / "tiger.key"))
    try:
        yield url, public
    finally:
        stop(proc)


@pytest.mark.parametrize("form", ["{}", "public: {}\n", " {} "], ids=["as-printed", "the-pub-files-line", "spaced"])
def test_tiger_server_key_lets_a_client_without_server_key_reach_a_curve_writer(curve_writer, monkeypatch, form):
    # A user trial: TIGER_SERVER_KEY="$(cat DIR/tiger.pub)" ('public: KEY') and a key pasted with a space were
    # refused; no z85 key holds whitespace or 'public:', so both are taken as the key.
    url, public = curve_writer
    monkeypatch.setenv("TIGER_SERVER_KEY", form.format(public))
    with tiger.connect(url) as one, tiger.connect(url) as other:
        one.table("t").insert({"id": "through-the-env-key"})
        assert other.table("t").wait_for("through-the-env-key")  # published changes reach it too


@pytest.mark.parametrize("key", [None, "wrong"])
def test_without_tiger_server_key_a_curve_writer_never_answers(curve_writer, monkeypatch, key):
    url, _ = curve_writer
    if key is None:
        monkeypatch.delenv("TIGER_SERVER_KEY", raising=False)
    else:
        monkeypatch.setenv("TIGER_SERVER_KEY", zmq.curve_keypair()[0].decode())  # another writer's key
    started = time.monotonic()
    with pytest.raises(tiger.Unavailable, match=re.escape(url)):
        tiger.connect(url, timeout=0.5)
    assert time.monotonic() - started < 3.0, "connect did not give up within its timeout"


MALFORMED_KEY = """
import asyncio, sys, tiger, tiger.aio

url, key = sys.argv[1], eval(sys.argv[2])
for name, connect in [("blocking", lambda: tiger.connect(url, timeout=1, server_key=key)),
                      ("async", lambda: asyncio.run(tiger.aio.connect(url, timeout=1, server_key=key)))]:
    try:
        connect()
        print(name, "connected")
    except (TypeError, ValueError) as e:
        print(name, type(e).__name__, "server_key" in str(e))
"""


@pytest.mark.parametrize(
    "key",
    ["'not-a-key'", "'public: ' + 'x' * 39", "'~' * 40", "'#' * 40", "'é' * 40", "b'\\x00' * 40", "12345"],
    ids=["short", "a-pub-files-line-cut-short", "not-z85", "z85-past-32-bits", "not-ascii", "bytes", "an-int"],
)
def test_a_malformed_server_key_hung_connect_for_ever(curve_writer, key):
    # A user trial: server_key=open("tiger.pub").read() ('public: KEY') raised ValueError as the command socket
    # was configured, with the socket left open: closing the context waited for it for ever, and connect()
    # (a whole pytest run with TIGER_SERVER_KEY set so) hung. Every malformed key is refused at once, named.
    url, _ = curve_writer
    child = subprocess.run([sys.executable, "-c", MALFORMED_KEY, url, key], capture_output=True, text=True, timeout=30)
    kind = "TypeError" if key == "12345" else "ValueError"
    assert child.stdout.splitlines() == [f"blocking {kind} True", f"async {kind} True"], child.stdout + child.stderr


# -- 5. CurveZMQ on a non-loopback address -------------------------------------------------------------------------


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine outside 127.0.0.0/8, or None."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            fields = line.split()
            if "inet" in fields:
                address = fields[fields.index("inet") + 1].split("/")[0]
                if not address.startswith("127."):
                    return address
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


def test_a_non_loopback_address_is_refused_without_curve_and_served_with_it(tmp_path):
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    url = f"tcp://{address}:*"
    command = [*TIGER, "serve", "--url", url, "--owner-pid", str(os.getpid())]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and f"refusing to bind {url} without CurveZMQ" in out.stderr

    public = keygen(tmp_path / "keys")
    proc, bound = cli_serve("--url", url, "--curve-secret", str(tmp_path / "keys" / "tiger.key"))
    try:
        assert bound.startswith(f"tcp://{address}:")
        with tiger.connect(bound, server_key=public) as client, zmq.Context() as ctx:
            with pytest.raises(tiger.Unavailable):
                tiger.connect(bound, timeout=0.5, server_key=None)  # a keyless client: never answered
            spy = ctx.socket(zmq.SUB)
            try:
                spy.setsockopt(zmq.LINGER, 0)
                spy.setsockopt(zmq.SUBSCRIBE, b"")
                spy.connect(client.replica._pub_url)
                assert client.replica._pub_url.startswith(f"tcp://{address}:")
                with tiger.connect(bound, server_key=public) as other:
                    other.table("t").insert({"id": "secret"})
                    assert client.table("t").wait_for("secret")  # a keyed replica gets the change ...
                assert not spy.poll(500)  # ... a keyless SUB gets nothing: not the change, not a heartbeat
            finally:
                spy.close(linger=0)
    finally:
        stop(proc)


# -- 6. the plugin reading TIGER_URL -------------------------------------------------------------------------------

INNER_USES_TIGER_URL = """
import os

import pytest

import tiger


@pytest.mark.parametrize("mark", ["a", "b"])
def test_writes_to_the_named_writer(tiger_client, tiger_url, mark):
    assert tiger_url == os.environ["EXPECTED_URL"]
    assert tiger_client.writer_pid == int(os.environ["EXPECTED_PID"])
    with tiger.namespace("from-inner"):
        tiger_client.table("marks").insert({"id": "mark_" + mark})
"""


@pytest.fixture
def inner_env(monkeypatch, tmp_path) -> None:
    """Inner runs do not think they are xdist workers of this run, and use no key or options of ours."""
    for name in ("TIGER_URL", "TIGER_SERVER_KEY", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PLUGIN_RUNS_DIR", str(tmp_path))


@pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_the_plugin_uses_the_writer_tiger_url_names_and_never_stops_it(pytester, monkeypatch, inner_env, mode):
    with tiger.serve() as server, tiger.connect(server.url) as client:
        epoch = client.stats()["epoch"]
        monkeypatch.setenv("TIGER_URL", server.url)
        monkeypatch.setenv("EXPECTED_URL", server.url)
        monkeypatch.setenv("EXPECTED_PID", str(server.pid))
        pytester.makepyfile(test_inner=INNER_USES_TIGER_URL)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *mode, timeout=RUN_TIMEOUT)
        result.assert_outcomes(passed=2)
        client.sync()
        with tiger.namespace("from-inner"):
            assert sorted(r["id"] for r in client.table("marks").all()) == ["mark_a", "mark_b"]
        assert server.running  # the run did not stop the writer it was given
        assert request_once(server.url, p.Stats(1)).result["epoch"] == epoch  # nor restart it


# -- 7. namespace names over 200 characters ---------------------------------------------------------------------------


def test_a_namespace_over_200_characters_is_refused_naming_namespace():
    with tiger.namespace("x" * 200) as name:  # 200 is allowed
        assert tiger.current_namespace() == name
    with pytest.raises(ValueError, match="namespace"):
        with tiger.namespace("x" * 201):
            pass  # pragma: no cover - never entered
    assert tiger.current_namespace() == "global"


LONG_IDS = ["x" * 296 + "-one", "x" * 296 + "-two"]


@pytest.mark.parametrize("n", [1], ids=LONG_IDS[:1])
def test_a_node_id_over_200_characters_gets_a_working_namespace_of_at_most_200(tiger_client, tiger_namespace, request, n):
    assert len(request.node.nodeid) > 300
    assert len(tiger_namespace) <= 200 and tiger.current_namespace() == tiger_namespace
    assert request.node.nodeid[:40] in tiger_namespace  # the start of the node id, then a hash of the rest
    t = tiger_client.table("long")
    t.insert({"id": "here", "n": n})
    assert [r["id"] for r in t.all()] == ["here"]
    assert [r["id"] for r in t.all(namespace=tiger_namespace)] == ["here"]


INNER_LONG_IDS = f"""
import os

import pytest

import tiger


@pytest.mark.parametrize("i", [0, 1], ids={LONG_IDS!r})
def test_long(tiger_client, tiger_namespace, request, i):
    assert len(request.node.nodeid) > 300
    assert tiger.current_namespace() == tiger_namespace
    t = tiger_client.table("t")
    t.create({{"id": "mine"}})
    assert [r["id"] for r in t.all()] == ["mine"]
    with open(os.path.join(os.environ["PLUGIN_RUNS_DIR"], f"ns-{{i}}"), "w") as f:
        f.write(tiger_namespace)
"""


def test_two_node_ids_alike_for_200_characters_get_distinct_namespaces_of_at_most_200(pytester, inner_env, tmp_path):
    pytester.makepyfile(test_inner=INNER_LONG_IDS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", timeout=RUN_TIMEOUT)
    result.assert_outcomes(passed=2)
    names = [(tmp_path / f"ns-{i}").read_text() for i in (0, 1)]
    assert all(len(name) <= 200 for name in names), names
    assert names[0] != names[1]
