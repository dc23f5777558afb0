"""Faults injected for real: killed and stopped writers, torn and corrupt logs, stuck readers, retries, access."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq
from _util import held_to_modes, read_line, wait_stopped

import tiger
from tiger import _log
from tiger import _protocol as p
from tiger._table import Put, freeze

TIGER = [sys.executable, "-m", "tiger"]


def kill(server: tiger.Server) -> None:
    """SIGKILL a writer we started, and reap it."""
    os.kill(server.pid, signal.SIGKILL)
    server._process.wait(10)
    server.stop()


def wait(condition, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll a condition another process brings about, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.02)  # sleep-ok: polling a state another process changes, not a socket


def connect_in_thread(url: str, timeout: float) -> tuple[threading.Thread, list[tiger.Client | BaseException]]:
    """``tiger.connect()`` on a thread of its own, started: its client, or what it raised, lands in the list."""
    joined: list[tiger.Client | BaseException] = []

    def join() -> None:
        try:
            joined.append(tiger.connect(url, timeout=timeout))
        except BaseException as e:
            joined.append(e)

    joiner = threading.Thread(target=join, daemon=True)
    joiner.start()
    return joiner, joined


def cli_serve(*args: str) -> tuple[subprocess.Popen[str], str]:
    owner = ["--owner-pid", str(os.getpid())]  # it exits if this test process dies before stopping it
    proc = subprocess.Popen([*TIGER, "serve", *owner, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = read_line(proc, 30)
    assert line.startswith("tiger writer serving at"), line + proc.stderr.read()  # type: ignore[union-attr]
    return proc, line.strip().rsplit(" ", 1)[-1]


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM a writer we started and return its stderr; one that does not stop within 10 s is killed (and
    the test fails), never left running (two hung writers outlived their test that way)."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"the writer did not stop within 10 s of SIGTERM; its stderr: {err[-2000:]}") from None
    return err


# -- durability ------------------------------------------------------------------------------


def test_fsync_always_loses_no_acknowledged_write_to_sigkill(tmp_path):
    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    server = tiger.serve(url, data=data, fsync="always")
    client = tiger.connect(url)
    plans = client.table("plans", prefix="plan")
    acked = [plans.insert({"n": i})["id"] for i in range(300)]
    plans.update(acked[0], {"changed": True})
    plans.delete(acked[1])
    with tiger.namespace("other"):
        plans.insert({"id": "plan_elsewhere"})
    before = client.stats()["checksum"]
    kill(server)
    client.close()
    with tiger.serve(url, data=data) as again, tiger.connect(again.url) as fresh:
        stored = fresh.table("plans")
        assert {r["id"] for r in stored.all()} == set(acked) - {acked[1]}
        assert stored[acked[0]]["changed"] is True
        assert fresh.stats()["checksum"] == before  # order included
        with tiger.namespace("other"):
            assert "plan_elsewhere" in stored


def test_a_torn_tail_is_cut_at_its_offset_and_reported(tmp_path):
    data = tmp_path / "data"
    with tiger.serve(data=data, fsync="always") as server, tiger.connect(server.url) as client:
        client.table("t").insert_many([{"n": i} for i in range(10)])
    log_file = data / "log.0"
    valid = log_file.stat().st_size
    with open(log_file, "ab") as f:
        f.write(_log.frame(b"x" * 100)[:57])  # a crash in the middle of an append
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w2", "--data", str(data))
    with tiger.connect(url) as client:
        assert client.table("t").count() == 10
        client.table("t").insert({"id": "after-the-cut"})
    err = stop(proc)
    assert f"cut a torn tail of 57 bytes at byte {valid} of {log_file}" in err
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w3", "--data", str(data))
    with tiger.connect(url) as client:  # later appends followed valid data
        assert client.table("t").count() == 11
    stop(proc)


def test_corruption_in_the_middle_refuses_to_start_and_changes_nothing(tmp_path):
    data = tmp_path / "data"
    with tiger.serve(data=data, fsync="always") as server, tiger.connect(server.url) as client:
        for i in range(10):
            client.table("t").insert({"n": i})
    log_file = data / "log.0"
    damaged = bytearray(log_file.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    log_file.write_bytes(damaged)
    listing = sorted(os.listdir(data))
    out = subprocess.run(
        [*TIGER, "serve", "--url", f"ipc://{tmp_path}/w2", "--data", str(data)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 3
    assert re.search(r"damaged entry at byte \d+ followed by a valid one at byte \d+", out.stderr)
    assert "nothing on disk was changed" in out.stderr
    assert log_file.read_bytes() == damaged
    assert sorted(os.listdir(data)) == listing


OLD_MARKER, OLD_HEADER = b"TGR\x01", struct.Struct("<4sII")  # an earlier version's entries: no guard, no CRC of the header


def _old_entry(payload: bytes) -> bytes:
    """An entry as an earlier version framed it."""
    return OLD_HEADER.pack(OLD_MARKER, len(payload), zlib.crc32(payload)) + payload


def _holding_frames(log: bytes) -> bytes:
    """Bytes a record may hold that hold whole log entries: a frame, an earlier version's, a copy of ``log``."""
    return b"\x00" * 100 + _log.frame(b"anything") + _old_entry(b"anything else") + log


def test_a_torn_last_entry_whose_record_held_a_log_frame_was_taken_for_corruption(tmp_path):
    """A record holding a copy of a log, its last append torn just after that copy: the restart took the
    copy's entries for valid ones after a damaged entry, and refused to start (exit 3, "damaged entry at
    byte 53 followed by a valid one"), where the same cut of any other record was cut off as torn."""
    data = tmp_path / "data"
    log_file = data / "log.0"
    with tiger.serve(data=data, fsync="always") as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "a", "n": 1})
        valid = log_file.stat().st_size
        blob = _holding_frames(log_file.read_bytes()) + b"\x00" * 5000
        client.table("t").insert({"id": "backup", "blob": blob})
    raw = log_file.read_bytes()
    cut = raw.index(blob) + len(_holding_frames(raw[:valid]))  # right after the copy: valid entries to the end
    os.truncate(log_file, cut)
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w2", "--data", str(data))
    with tiger.connect(url) as client:
        assert [r["id"] for r in client.table("t").all()] == ["a"]
    err = stop(proc)
    assert f"cut a torn tail of {cut - valid} bytes at byte {valid} of {log_file}" in err
    assert log_file.stat().st_size == valid


def test_a_torn_last_entry_is_cut_wherever_it_was_cut_whatever_entries_its_payload_held():
    log = _log.frame(_change(1)) + _old_entry(_change(2)) + _log.frame(_change(3))  # (an earlier version's too)
    torn = _log.frame(_holding_frames(log) + _holding_frames(log))
    for cut in range(1, len(torn)):
        assert _log.scan(log + torn[:cut]) == ([_change(1), _change(2), _change(3)], len(log)), cut


def test_a_damaged_last_entry_whose_payload_held_a_frame_was_taken_for_corruption():
    """A power loss may leave a last entry of its whole length with a page of it never written (zeros):
    its header says where it ends, so the frames its payload holds are no entries after it."""
    log = _log.frame(_change(1))
    payload = _holding_frames(log) + bytes(4096)
    last = bytearray(_log.frame(payload))
    last[-4096:] = b"\x01" * 4096
    assert _log.scan(log + bytes(last)) == ([_change(1)], len(log))


def test_a_damaged_entry_followed_by_valid_ones_is_corruption_whatever_byte_of_it_was_damaged():
    """Not weakened by reading torn tails whatever they hold: any byte of an entry damaged, its header's
    too, with a valid entry after it, is refused; damage within its payload names the entry after it (not
    an entry its payload holds: it used to)."""
    first, third = _log.frame(_change(1)), _log.frame(_change(3))
    middle = _log.frame(_holding_frames(first) + b"\x00" * 50)
    for i in range(len(middle)):
        damaged = bytearray(middle)
        damaged[i] ^= 0x40
        after = rf"followed by a valid one at byte {len(first) + len(middle)}$" if i >= _log.HEADER.size else ""
        with pytest.raises(_log.Corrupt, match=rf"^damaged entry at byte {len(first)} {after}"):
            _log.scan(first + bytes(damaged) + third)
    for length in (2**31, len(middle) + 9):  # its length made to run past the end of the file: not torn
        damaged = bytearray(middle)
        damaged[_log.HEADER.size - 8 : _log.HEADER.size - 4] = length.to_bytes(4, "little")
        with pytest.raises(_log.Corrupt, match=rf"^damaged entry at byte {len(first)} followed by a valid one"):
            _log.scan(first + bytes(damaged) + third)


def test_a_log_and_a_snapshot_an_earlier_version_wrote_are_read_and_appended_to(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    content = {"t": {"global": [freeze({"id": "r0", "n": 0, "created": 1})]}}
    (data / "snapshot").write_bytes(_old_entry(p.pack({"generation": 1, "tables": content})))
    (data / "log.1").write_bytes(_old_entry(_change(1)) + _old_entry(_change(2)) + _old_entry(_change(9))[:20])
    d = _log.DataDir(str(data))
    d.load(p.unpack)  # the torn tail cut
    d.append(_change(3))
    d.close()
    assert _replayed(data) == ([0], [1, 2, 3], ["lock", "log.1", "snapshot"])


@pytest.mark.parametrize(
    "odd",
    [
        {"id": "k", "created": 1},
        {"id": "k", "created": 1, "state": "done", "owner": "c", "holders": [1]},
        {"id": "k", "created": 1, "state": "failed"},
    ],
)
def test_a_data_directory_holding_a_raw_record_in_tiger_once_stopped_every_writer_started_on_it(tmp_path, odd):
    # An earlier tiger took a client's insert of {"id": "k"} into tiger.once (it refuses it now): its data
    # directory then stopped every writer started on it (KeyError 'state', looking for the once builders it
    # awaits), and a client's end killed a running one. Such a record is read as no once key's. (The insert
    # gave it a created time; one without is refused at the start: the test after this one.)
    data = tmp_path / "data"
    data.mkdir()
    content = {"tiger.once": {"global": [freeze(odd)]}, "t": {"global": [freeze({"id": "r0", "created": 1})]}}
    (data / "snapshot").write_bytes(_log.frame(p.pack({"generation": 1, "tables": content})))
    with tiger.serve("tcp://127.0.0.1:*", data=data) as server:
        with tiger.connect(server.url, timeout=10) as first:
            assert first.once("k", lambda: 41 + 1) == 42  # the key is taken over, built once
            assert first.once("other", lambda: "v") == "v"
        with tiger.connect(server.url, timeout=10) as second:  # the first one's end passed the odd record by
            assert second.once("k", lambda: 0) == 42
            assert second.table("t")["r0"]["id"] == "r0"
    with tiger.serve("tcp://127.0.0.1:*", data=data) as again, tiger.connect(again.url, timeout=10) as third:
        assert third.once("k", lambda: 0) == 42


@pytest.mark.parametrize(
    ("odd", "says"),
    [
        ({"id": "k"}, "table 'tiger.once', namespace 'global', record 'k': 'created' must be an int"),
        ({"id": "k", "created": "1"}, "record 'k': 'created' must be an int"),
        ({"id": 7, "created": 1}, "table 'tiger.once', namespace 'global', record 0: must be a map with a str 'id'"),
        ("k", "record 0: must be a map with a str 'id'"),
    ],
)
def test_a_data_directory_holding_a_record_without_created_served_joiners_a_store_short_of_its_records(tmp_path, odd, says):
    # Regression: a record without an int 'created' in a data directory (written by hand, or by an earlier
    # tiger) was served; every joiner's snapshot chunk holding it did not decode, was skipped, and the joiner
    # connected to a store without that chunk's records (here: 'r0' too), with no error. The writer now refuses
    # to start on it, naming the record, and changes nothing on disk.
    data = tmp_path / "data"
    data.mkdir()
    content = {"tiger.once": {"global": [odd]}, "t": {"global": [freeze({"id": "r0", "created": 1})]}}
    snapshot = _log.frame(p.pack({"generation": 1, "tables": content}))
    (data / "snapshot").write_bytes(snapshot)
    with pytest.raises(tiger.TigerError) as raised:
        tiger.serve("tcp://127.0.0.1:*", data=data)
    message = str(raised.value)
    assert "exited with code 3" in message and says in message and "refusing to start (nothing on disk was changed)" in message
    # (the directory's lock file, made to take the directory before reading it, is all that was added)
    assert (data / "snapshot").read_bytes() == snapshot and sorted(os.listdir(data)) == ["lock", "snapshot"]


def _earlier_scan(data: bytes) -> tuple[list[bytes], int]:
    """``_log.scan`` as an earlier version had it (entries without a guard)."""
    payloads, offset = [], 0
    while offset < len(data):
        end = _earlier_entry_at(data, offset)
        if end is None:
            found = data.find(OLD_MARKER, offset + 1)
            while found != -1:
                if _earlier_entry_at(data, found) is not None:
                    raise _log.Corrupt(f"damaged entry at byte {offset} followed by a valid one at byte {found}")
                found = data.find(OLD_MARKER, found + 1)
            return payloads, offset
        payloads.append(data[offset + OLD_HEADER.size : end])
        offset = end
    return payloads, offset


def _earlier_entry_at(data: bytes, offset: int) -> int | None:
    if offset + OLD_HEADER.size > len(data):
        return None
    marker, length, crc = OLD_HEADER.unpack_from(data, offset)
    end = offset + OLD_HEADER.size + length
    if marker != OLD_MARKER or end > len(data) or zlib.crc32(data[offset + OLD_HEADER.size : end]) != crc:
        return None
    return end


def test_an_earlier_version_refuses_a_log_of_this_one_rather_than_cutting_it_as_torn():
    earlier = _old_entry(_change(1))
    assert _earlier_scan(earlier + _log.frame(_change(2))[:30]) == ([_change(1)], len(earlier))  # (a torn tail, to it)
    for log in (_log.frame(_change(2)), earlier + _log.frame(_change(2)) + _log.frame(_change(3))):
        with pytest.raises(_log.Corrupt):
            _earlier_scan(log)


def test_compaction_writes_a_snapshot_and_a_fresh_log(tmp_path):
    data = tmp_path / "data"
    with tiger.serve(data=data, fsync="everysec") as server, tiger.connect(server.url) as client:
        t = client.table("t")
        ids = [r["id"] for r in t.insert_many([{"n": i} for i in range(500)])]
        t.update(ids[3], {"x": 1})
        t.delete(ids[4])
        out = subprocess.run([*TIGER, "compact", "--url", server.url], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "snapshot of 499 records" in out.stdout
        assert sorted(os.listdir(data)) == ["lock", "log.1", "snapshot"]
        t.insert({"id": "after"})
        expected = client.stats()["checksum"]
    with tiger.serve(data=data) as server, tiger.connect(server.url) as client:
        assert client.stats()["checksum"] == expected
        assert client.table("t")[ids[3]]["x"] == 1 and "after" in client.table("t")


def test_the_log_compacts_itself_past_its_size(tmp_path):
    data = tmp_path / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--compact-bytes", "20000", "--heartbeat", "0.05")
    with tiger.connect(url) as client:
        client.table("t").insert_many([{"n": i, "pad": "x" * 50} for i in range(1000)])
        wait(lambda: (data / "snapshot").exists(), what="automatic compaction")
        assert client.stats()["data"]["log_bytes"] < 20000
    stop(proc)


@pytest.mark.parametrize("work", ["compact", "stats"])
def test_a_compaction_or_a_stats_checksum_no_longer_stops_the_writer_for_the_whole_store(tmp_path, work):
    """Both packed every record at once, the writer doing nothing else meanwhile: a compaction at 1.4M
    records held every client's write for 3 s, a Stats checksum for 0.8 s at 1M. Now they go a step at a
    time between the writer's other work: a write sent right after them on the same socket is answered
    first, and they are answered with the store as it was when they came."""
    with tiger.serve(data=tmp_path / "data") as server, tiger.connect(server.url) as client:
        t = client.table("t")
        for k in range(50):  # 100k records, about 22 MB packed: some 40 steps
            t.insert_many([{"n": k * 2000 + i, "pad": "x" * 200} for i in range(2000)])
        before = (client.replica.seq, client.checksum())
        with zmq.Context() as ctx:
            sock = ctx.socket(zmq.DEALER)
            try:
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(server.url)
                # both queued before the writer reads either (sent one after the other, the insert came after
                # the work's steps were done when this process was not scheduled between the two sends)
                os.kill(server.pid, signal.SIGSTOP)
                try:
                    sock.send(p.encode_request(p.Compact(1) if work == "compact" else p.Stats(1)))
                    sock.send(p.encode_request(p.Insert(2, "t", "global", None, [{"id": "meanwhile"}], False)))
                finally:
                    os.kill(server.pid, signal.SIGCONT)
                answers = []
                for _ in range(2):
                    assert sock.poll(30_000), f"no answer to {work} within 30 s"
                    answers.append(p.decode_reply(sock.recv()))
            finally:
                sock.close(linger=0)
        assert [type(a).__name__ for a in answers] == ["Ok", "Ok"] and [a.req_id for a in answers] == [2, 1]  # type: ignore[union-attr]
        done = answers[1]
        if work == "compact":
            # (it begins between groups: after the insert, when both came in one)
            assert done.result["records"] in (100_000, 100_001)  # type: ignore[union-attr]
        else:
            assert (done.seq, done.result["checksum"]) == before  # type: ignore[union-attr]
        expected = client.stats()["checksum"]
    with tiger.serve(data=tmp_path / "data") as server, tiger.connect(server.url) as client:
        assert client.stats()["checksum"] == expected and "meanwhile" in client.table("t")


def test_a_writer_stopped_during_a_compaction_answers_it_at_once(tmp_path):
    """A writer stopped (SIGTERM) while its compaction was under way answered nothing: `tiger compact`
    waited out its whole timeout (600 s). Now it is told the writer stopped, and the logs stand."""
    data = tmp_path / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data))
    with tiger.connect(url) as client:
        t = client.table("t")
        for k in range(100):  # 200k records, about 44 MB packed: some 0.3 s of compaction steps
            t.insert_many([{"n": k * 2000 + i, "pad": "x" * 200} for i in range(2000)])
    compact = subprocess.Popen([*TIGER, "compact", "--url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait(lambda: (data / "log.1").exists(), timeout=30, what="the compaction's start")
        proc.send_signal(signal.SIGTERM)
        out, err = compact.communicate(timeout=10)
    finally:
        compact.kill()
        proc.kill()
        proc.communicate(timeout=10)
    assert not (data / "snapshot").exists(), "the compaction ended before the stop: the test proves nothing"
    assert compact.returncode == 1 and "the writer stopped before the snapshot was in place" in err, (out, err)
    assert sorted(os.listdir(data)) == ["lock", "log.0", "log.1"]


def _change(n: int) -> bytes:
    return p.pack(p.change_to_wire(Put("t", "global", (freeze({"id": f"r{n}", "n": n, "created": 1}),))))


def _replayed(data) -> tuple[list[int], list[int], list[str]]:
    """(ids in the snapshot, ids of the logged changes after it, the listing after the start) of a fresh
    DataDir loading ``data``."""
    d = _log.DataDir(str(data))
    try:
        content, payloads = d.load(p.unpack)
        snapshot = [r["n"] for namespaces in content.values() for records in namespaces.values() for r in records]
        return snapshot, [p.change_from_wire(p.unpack(x)).records[0]["n"] for x in payloads], sorted(os.listdir(data))  # type: ignore[union-attr]
    finally:
        d.close()


def test_a_snapshot_written_in_steps_is_the_snapshot_packed_whole(tmp_path):
    content = {"t": {"global": [freeze({"id": f"r{i}", "pad": "x" * 200, "created": 1}) for i in range(5000)], "ns": []}}
    d = _log.DataDir(str(tmp_path / "data"))
    d.load(p.unpack)
    compaction = d.begin_compaction(p.pack, content)
    steps = 1
    while not compaction.step(budget=64 * 1024):
        steps += 1
    d.close()
    assert steps > 10 and compaction.records == 5000
    assert compaction.generation == 0  # (its log held nothing yet: kept, the snapshot of its generation)
    assert (tmp_path / "data" / "snapshot").read_bytes() == _log.frame(p.pack({"generation": 0, "tables": content}))


def test_a_crash_before_a_compaction_ended_replays_the_old_log_and_the_one_it_began(tmp_path):
    """A compaction starts the next generation's log at once; until its snapshot is in place, a start
    replays the snapshot before it with both logs, in order."""
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.append(_change(1))
    compaction = d.begin_compaction(p.pack, {"t": {"global": [freeze({"id": "r1", "n": 1, "created": 1})]}})
    d.append(_change(2))  # after the compaction began: in log.1
    compaction.step(budget=1)  # a step written, then the crash: the writer's end is abandon()
    d.close()
    assert _replayed(data) == ([], [1, 2], ["lock", "log.0", "log.1"])
    d = _log.DataDir(str(data))  # the next start appends to the newest log; its compaction ends it all
    d.load(p.unpack)
    d.append(_change(3))
    compaction = d.begin_compaction(p.pack, {"t": {"global": [freeze({"id": f"r{n}", "n": n, "created": 1}) for n in (1, 2, 3)]}})
    while not compaction.step():
        pass
    d.close()
    assert _replayed(data) == ([1, 2, 3], [], ["lock", "log.2", "snapshot"])


def test_a_torn_tail_of_a_log_with_a_later_log_after_it_refuses_to_start(tmp_path):
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.append(_change(1))
    d.begin_compaction(p.pack, {})
    d.append(_change(2))
    d.close()
    with open(data / "log.0", "ab") as f:
        f.write(_log.frame(b"x" * 100)[:30])
    listing = {name: (data / name).read_bytes() for name in os.listdir(data) if name != "lock"}
    with pytest.raises(_log.Corrupt, match=r"log\.0: damaged entry at byte \d+ with .*log\.1 after it"):
        _replayed(data)
    assert {name: (data / name).read_bytes() for name in os.listdir(data) if name != "lock"} == listing


def _failing_once(monkeypatch, module, name: str, calls: list[str], when: int) -> None:
    """Make ``module.name`` (an fsync) raise EIO on its ``when``-th call from now (counted from 1), as a
    failing disk does once; each call's argument is noted in ``calls``."""
    real = getattr(module, name)

    def fsync(target):
        calls.append(os.readlink(f"/proc/self/fd/{target}") if isinstance(target, int) else str(target))
        if len(calls) == when:
            raise OSError(errno.EIO, "Input/output error")
        return real(target)

    monkeypatch.setattr(module, name, fsync)


def test_an_old_log_is_synced_when_a_compaction_begins_whatever_the_fsync_policy(tmp_path, monkeypatch):
    """Under fsync=never the switch of logs left the old one unsynced while the new one's directory entry
    was: a power loss could then leave a torn or short log.0 with log.1 after it (a refusal to start, or
    log.1 replayed over a hole: a store that never was)."""
    d = _log.DataDir(str(tmp_path / "data"), fsync="never")
    d.load(p.unpack)
    d.append(_change(1))
    calls: list[str] = []
    _failing_once(monkeypatch, os, "fsync", calls, when=0)
    d.begin_compaction(p.pack, {})
    assert calls[0].endswith("/log.0")
    d.close()


def test_a_compaction_whose_new_log_cannot_be_made_durable_leaves_appends_on_the_old_log(tmp_path, monkeypatch):
    """The new log's fd was kept (and the old one leaked) when syncing the directory entry of the new log
    failed: appends went to a log.1 the start might never see."""
    d = _log.DataDir(str(tmp_path / "data"))
    d.load(p.unpack)
    d.append(_change(1))
    _failing_once(monkeypatch, _log, "_fsync_dir", [], when=1)
    with pytest.raises(OSError, match="Input/output error"):
        d.begin_compaction(p.pack, {})
    assert d.compaction is None and d.generation == 0
    d.append(_change(2))
    d.close()
    assert _replayed(tmp_path / "data")[:2] == ([], [1, 2]) and (tmp_path / "data" / "log.0").stat().st_size > 0


def test_compactions_that_kept_failing_on_a_full_disk_left_an_empty_log_behind_at_each_try(tmp_path, monkeypatch):
    # A user trial (a full tmpfs): each retry of a compaction began a new log, and its snapshot failed for
    # room; the directory held 14 files after 90 s, and a restart removed none. A log with nothing in it yet
    # is kept: the snapshot is then of its generation.
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.append(_change(1))
    content = {"t": {"global": [freeze({"id": "r1", "n": 1, "created": 1})]}}

    def no_room(self: Any, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(_log.Compaction, "_write", no_room)
        for _ in range(5):
            with pytest.raises(OSError, match="No space left"):
                d.begin_compaction(p.pack, content)
    assert sorted(os.listdir(data)) == ["lock", "log.0", "log.1"] and d.generation == 1
    compaction = d.begin_compaction(p.pack, content)  # room again
    while not compaction.step():
        pass
    d.append(_change(2))
    d.close()
    assert _replayed(data) == ([1], [2], ["lock", "log.1", "snapshot"])


def test_an_fsync_that_failed_left_the_logs_not_whole_until_a_compaction_begun_after_it_was_in_place(tmp_path, monkeypatch):
    # (what tells a write the disk had no room for, retried as is, from a fault only a snapshot of everything
    # ends: Linux drops the pages an fsync could not write back, and a later fsync succeeds)
    d = _log.DataDir(str(tmp_path / "data"), fsync="always")
    d.load(p.unpack)
    d.append(_change(1))
    d.commit()
    assert d.whole
    content = {"t": {"global": [freeze({"id": "r1", "n": 1, "created": 1})]}}
    early = d.begin_compaction(p.pack, content)  # begun before the failure: it does not mend it
    d.append(_change(2))
    _failing_once(monkeypatch, os, "fsync", [], when=1)
    with pytest.raises(OSError, match="Input/output error"):
        d.commit()
    assert not d.whole
    while not early.step():
        pass
    assert not d.whole
    later = d.begin_compaction(p.pack, content)
    while not later.step():
        pass
    assert d.whole
    d.close()


def test_a_compaction_whose_rename_cannot_be_made_durable_fails_and_keeps_the_older_logs(tmp_path, monkeypatch):
    """A failed fsync of the directory after the rename was ignored: the older logs were removed (and a
    disk fault ended) on a rename the disk had not made durable."""
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.append(_change(1))
    compaction = d.begin_compaction(p.pack, {"t": {"global": [freeze({"id": "r1", "n": 1, "created": 1})]}})
    _failing_once(monkeypatch, _log, "_fsync_dir", [], when=1)  # the one after the rename
    with pytest.raises(OSError, match="Input/output error"):
        while not compaction.step():
            pass
    assert d.compaction is None and sorted(os.listdir(data)) == ["lock", "log.0", "log.1", "snapshot"]
    d.close()
    assert _replayed(data) == ([1], [], ["lock", "log.1", "snapshot"])  # the snapshot was in place after all


def test_a_write_in_the_group_of_a_compact_is_not_answered_ok_after_its_fsync_failed(tmp_path, monkeypatch):
    """Linux reports a writeback error to one fsync, then lets the next one succeed: the compaction, begun
    inside the group, took the error, and the group's commit then answered the write Ok without it on
    disk. Now the group's commit takes it (the group is held) and a compaction of everything ends it."""
    from test_core import ALICE, BOB, Rig, insert  # the core's test rig, here over a real data directory

    d = _log.DataDir(str(tmp_path / "data"), fsync="always")
    d.load(p.unpack)
    rig = Rig(d)  # type: ignore[arg-type]
    calls: list[str] = []
    _failing_once(monkeypatch, os, "fsync", calls, when=1)
    outbox = rig.send(rig.encode(BOB, insert(1)), rig.encode(ALICE, p.Compact(2)), steps=0)
    assert outbox.replies == [] and outbox.published == [] and rig.core.disk_fault is not None  # held, not Ok
    answers = {p.decode_reply(a).req_id: p.decode_reply(a) for *_, a in rig.send().replies}  # type: ignore[union-attr]
    assert sorted(answers) == [1, 2] and rig.core.disk_fault is None  # released once a snapshot holds it
    d.close()
    assert _replayed(tmp_path / "data")[0] == [1]


def test_a_data_directory_where_no_file_can_be_made_is_refused_at_start(tmp_path):
    """A user trial: a data directory made read-only (0500) with its lock and log still writable started,
    took writes, and failed only at its first compaction. Refused at start now, naming why."""
    data = tmp_path / "data"
    with tiger.serve(data=data):
        pass
    drop = held_to_modes()
    data.chmod(0o500)
    try:
        command = [*drop, *TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--data", str(data)]
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    finally:
        data.chmod(0o700)
    assert out.returncode == 3, out.stderr
    assert f"cannot make files in {data} (Permission denied)" in out.stderr
    assert sorted(os.listdir(data)) == ["lock", "log.0"]


def test_a_second_writer_on_the_same_directory_is_refused_naming_the_pid(tmp_path):
    data = tmp_path / "data"
    with tiger.serve(data=data) as first:
        out = subprocess.run(
            [*TIGER, "serve", "--url", f"ipc://{tmp_path}/w2", "--data", str(data)], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 3
        assert f"in use by the tiger writer with pid {first.pid}" in out.stderr
        assert first.running


# -- retries and restarts ------------------------------------------------------------------------


def test_a_resent_call_is_answered_from_memory_not_applied_twice(writer):
    call = p.encode_call(p.Call("client-x", time.time() + 30, p.Insert(7, "t", "retry", None, [{"id": "once"}], True)))
    answers = []
    with zmq.Context() as ctx:
        for _ in range(3):  # a fresh socket each time, like Lazy Pirate
            sock = ctx.socket(zmq.DEALER)
            sock.connect(writer.url)
            sock.send(call)
            assert sock.poll(5000)
            answers.append(sock.recv())
            sock.close(linger=0)
    assert answers[0] == answers[1] == answers[2]
    assert type(p.decode_reply(answers[0])) is p.Ok  # create succeeded once, not AlreadyExists after
    with tiger.connect(writer.url) as client, tiger.namespace("retry"):
        assert client.table("t").count() == 1


def test_a_call_past_its_deadline_is_refused_unapplied(writer):
    call = p.encode_call(p.Call("client-y", time.time() - 1, p.Insert(8, "t", "expired", None, [{"id": "late"}], False)))
    with zmq.Context() as ctx:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(writer.url)
        sock.send(call)
        assert sock.poll(5000)
        reply = p.decode_reply(sock.recv())
        sock.close(linger=0)
    assert type(reply) is p.Failed and reply.kind == "expired"
    with tiger.connect(writer.url) as client, tiger.namespace("expired"):
        assert client.table("t").count() == 0


def test_a_write_to_a_stopped_writer_raises_in_time_and_is_never_applied_later():
    with tiger.serve() as server:
        client = tiger.connect(server.url, timeout=1.0)
        table = client.table("t")
        os.kill(server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(tiger.Unavailable, match=re.escape(server.url)):
                table.insert({"id": "raised"})
            assert time.monotonic() - started < 3.0, "the write hung past its timeout"
            assert client.resends >= 1  # it was resent on a fresh socket before giving up
        finally:
            os.kill(server.pid, signal.SIGCONT)
        table.insert({"id": "after"})
        client.sync()
        assert "after" in table and "raised" not in table
        client.close()


def test_clients_notice_a_dead_writer_and_fail_fast():
    server = tiger.serve()
    client = tiger.connect(server.url, heartbeat_timeout=0.5)
    kill(server)
    assert client.heartbeat_timeout == 2.0  # at least four of the writer's heartbeats (0.5 s)
    wait(lambda: client.replica.silent_for() > client.heartbeat_timeout + 0.1, what="silence noticed")
    resends = client.resends
    with pytest.raises(tiger.Unavailable, match="silent"):
        client.table("t").insert({})
    assert client.resends == resends  # failed at once, without trying
    client.close()


def test_a_restarted_writer_on_a_new_publish_port_is_followed():
    first = tiger.serve("tcp://127.0.0.1:*")
    try:
        url = first.url
        client = tiger.connect(url)
        client.table("t").insert({"id": "old"})
        old_epoch = client.epoch
    finally:
        kill(first)
    with tiger.serve(url) as second, tiger.connect(second.url) as other:
        other.table("t").insert({"id": "new"})
        client.replica.wait_until(lambda: client.epoch != old_epoch, time.monotonic() + 20, lambda: "no resync")
        client.sync()
        assert "new" in client.table("t") and "old" not in client.table("t")
        client.table("t").insert({"id": "mine"})
        other.sync()
        assert "mine" in other.table("t")
    client.close()


def test_a_replica_hears_every_client_after_writer_restarts(tmp_path, monkeypatch):
    """Regression: at each reconnection libzmq's SUB sends its subscriptions again (the replica has 765
    prefixes, every topic but its own), and silently drops those past its SNDHWM (1000 by default, counting
    ones sent before), so after a writer restart the last ~30 in its order (first topic bytes 0xe1-0xff here)
    were gone: every change of a client with such a topic was missed and cost a snapshot reload."""
    # the reader's topic sorts first, its writers' last
    monkeypatch.setattr(p, "new_client_id", iter(["010101" + "00" * 5]).__next__)
    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    server = tiger.serve(url, data=data)
    reader = tiger.connect(url, timeout=10)
    monkeypatch.undo()
    try:
        feed = reader.watch(namespace=None, timeout=30)
        for restart in range(3):  # the drops came at every other reconnection
            kill(server)
            server = tiger.serve(url, data=data)
            assert next(feed).op == "reset"  # the reader noticed the new writer and reloaded
            monkeypatch.setattr(p, "new_client_id", iter(["ffffff" + f"{restart:02x}" * 5]).__next__)
            with tiger.connect(url) as writer:
                monkeypatch.undo()
                writer.table("t").insert({"id": f"after-restart-{restart}"})
                change = next(feed)
                assert (change.op, change.id) == ("put", f"after-restart-{restart}"), "published, not reloaded"
    finally:
        reader.close()
        server.stop()


def test_a_replica_whose_writer_is_gone_longer_than_its_queue_still_listens_and_closes(tmp_path):
    """Regression: the replica thread sent a heartbeat (and a hello) to the writer at every tick with a
    blocking send; with the writer gone, its DEALER queued them until its SNDHWM (1000 messages, about four
    minutes at the default heartbeat), then the send blocked for good: the thread no longer listened, and
    close() waited for it in vain. A tick of 2 ms fills the queue within a second or two here."""
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--heartbeat", "0.002")
    client = tiger.connect(url, timeout=2)
    try:
        proc.kill()
        proc.communicate(timeout=10)
        # silent_for() grows only while the thread runs to listen: 5 s of it is 1000s of ticks (2 sends each)
        wait(lambda: client.replica.silent_for() > 5, timeout=60, what="the replica thread listening on, 5 s on")
        assert client.replica.unsent > 0  # (the queue was full: what it sent meanwhile was dropped)
    finally:
        client.close()
    assert not client.replica._thread.is_alive(), "the replica thread was left blocked"


def test_a_call_on_a_full_command_socket_ends_by_its_deadline(tmp_path):
    """Regression: a call interrupted after sending (Ctrl-C) leaves its bytes queued on the client's command
    socket; with the writer away, about 1000 of them (its SNDHWM) fill the queue, and the next call's
    blocking send then waited for the writer past the call's deadline. The queue is filled directly here."""
    server = tiger.serve(f"ipc://{tmp_path}/w")
    client = tiger.connect(server.url, timeout=1)
    outcome: list[BaseException | None] = []
    try:
        kill(server)
        with pytest.raises(zmq.Again):
            while True:  # what interrupted calls leave queued (before the writer's silence is noticed)
                client._socket.send(b"interrupted call", zmq.NOBLOCK)

        def call() -> None:
            try:
                client.table("t").insert({"id": "a"})
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(30)
        assert outcome, "the call blocked on the full queue"
        assert isinstance(outcome[0], tiger.Unavailable), outcome
    finally:
        client.close()


def test_a_write_answered_by_a_writer_replaced_before_the_replica_reached_it_returns(tmp_path):
    """Regression: a write answered by a restarted writer that was itself killed before the replica
    caught up with it waited for that writer's seq, which never came, and raised Timeout although it
    was applied; it returns once the replica holds the next writer's snapshot (which has it: --data)."""
    url, data = f"ipc://{tmp_path}/w", str(tmp_path / "data")
    first, _ = cli_serve("--url", url, "--data", data, "--heartbeat", "1")
    client = tiger.connect(url, timeout=30)
    outcome: list[BaseException | None] = []
    try:
        plans = client.table("plans")
        plans.insert({"id": "a"})
        first.kill()
        first.communicate(timeout=10)
        # a writer that publishes no heartbeat the client could hear before it dies: its replica stays behind
        second, _ = cli_serve("--url", url, "--data", data, "--heartbeat", "60")

        def call() -> None:
            try:
                plans.insert({"id": "b"})
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        wait(lambda: client.replica._calls.writing == 0, what="the second writer's answer")  # answered
        second.kill()
        second.communicate(timeout=10)
        third, _ = cli_serve("--url", url, "--data", data)
        try:
            caller.join(60)
            assert outcome == [None], outcome
            assert plans.get("b") is not None  # the third writer's snapshot had it
            # the replica follows the third writer (at once if the call waited for its snapshot; a replica
            # that had caught up with the second writer before its answer notices the third at its heartbeat)
            wait(lambda: client.epoch == client.stats()["epoch"], what="the replica following the third writer")
        finally:
            stop(third)
    finally:
        client.close()


def test_a_connect_whose_writer_dies_during_the_join_joins_the_next_writer(tmp_path):
    """Regression: a writer killed while a new client loaded its snapshot made connect() fail after its
    whole timeout ("no snapshot ... within 5s"), although a new writer was serving on the same url half
    a second later; the replica now joins the next writer, as a running replica follows one."""
    url, data = f"ipc://{tmp_path}/w", str(tmp_path / "data")
    first, _ = cli_serve("--url", url, "--data", data, "--log-level", "debug")
    admin = tiger.connect(url, timeout=30)
    try:
        for start in range(0, 100_000, 5_000):  # a snapshot that takes a while to load
            admin.table("big").insert_many([{"id": f"r{i}", "pad": "x" * 100} for i in range(start, start + 5_000)])
        joiner, joined = connect_in_thread(url, timeout=30)
        deadline = time.monotonic() + 30
        while "sending a snapshot of 100000 records" not in first.stderr.readline():  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no snapshot sent to the joiner"
        first.kill()  # while the joiner loads the snapshot
        first.communicate(timeout=10)
        second, _ = cli_serve("--url", url, "--data", data)
        try:
            joiner.join(60)
            assert joined and isinstance(joined[0], tiger.Client), joined
            client = joined[0]
            client.sync()
            assert client.table("big").count() == 100_000 and client.epoch == client.stats()["epoch"]
            client.close()
        finally:
            stop(second)
    finally:
        admin.close()


def test_a_connect_whose_writer_is_replaced_on_a_new_publish_port_before_its_subscription_is_live_follows_it():
    """Regression (a user trial): on tcp, a writer restarted while a new client waited for its subscription
    to be confirmed publishes on a new port; the joiner kept waiting on the old one and connect() failed
    after its whole timeout (4 of 20 joins through quick restarts). It now asks hello meanwhile and moves
    its subscription to where the answering writer publishes. Here the first writer is a stand-in that
    answers hello and nothing else, so that the join is held at that step until the real writer comes."""
    ctx = zmq.Context()
    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
    for sock in (router, pub):
        sock.setsockopt(zmq.LINGER, 0)
    url = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
    pub_url = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    joiner, joined = connect_in_thread(url, timeout=10)
    stand_in = p.new_epoch()
    deadline = time.monotonic() + 20
    confirming = False
    while not confirming:  # answer hello until the joiner asks for its subscription's heartbeat
        assert time.monotonic() < deadline and not joined, joined or "the joiner never asked for a heartbeat"
        if not router.poll(100):
            continue
        peer, data = router.recv_multipart()
        message = p.call_from(p.unpack(data))
        request = message.request if type(message) is p.Call else message
        if type(request) is p.Hello:
            hello = {"pub": pub_url, "pid": os.getpid(), "heartbeat": 0.5, "time": time.time()}
            router.send_multipart([peer, p.ok_bytes(request.req_id, stand_in, 0, None, hello)])
        confirming = type(request) is p.Sync
    router.close()
    pub.close()
    ctx.term()
    writer, _ = cli_serve("--url", url)
    try:
        joiner.join(30)
        assert joined and isinstance(joined[0], tiger.Client), joined
        client = joined[0]
        assert client.epoch != stand_in and client.epoch == client.stats()["epoch"]
        client.table("t").insert({"id": "mine"})
        with tiger.connect(url) as other:
            assert "mine" in other.table("t")
            other.table("t").insert({"id": "theirs"})
        client.sync()
        assert "theirs" in client.table("t")  # its subscription is live, on the writer's publish port
        client.close()
    finally:
        stop(writer)


PAUSED = """
import sys, tiger
from tiger import _replica
_replica.CATCH_UP_MIN = 1_000  # not 10,000 changes: this test's backlog is 10,000 exactly
client = tiger.connect(sys.argv[1], timeout=30)
print("ready", flush=True)
sys.stdin.readline()
client.table("t").insert({"id": "mine"})
print(client.replica.resyncs, client.table("t").count(), flush=True)
client.close()
"""


def test_a_write_far_ahead_of_a_paused_replica_reloads_it_instead_of_replaying_the_backlog():
    """Regression: a process paused while others wrote (SIGSTOP, a debugger) resumed with a backlog of
    changes in its SUB queue, and its first write waited for the replica to replay every one of them:
    it raised Timeout after 5 s although it was applied (a user trial, 150k to 315k changes with a feed
    open: 5 of 5). A replica that far behind an answer reloads a snapshot instead: here 10,000 changes
    behind a store of about as many records (the threshold, 10,000 changes, is lowered in the process).
    On resuming, the replica thread races the write's answer through the backlog: once in a while (seen
    in CI, 1 run in about 8; all 3 of 3 tries once, with another suite running on the 2 cores) it has
    replayed nearly all of it first, and nothing is far behind; so the scenario is tried up to 6 times, and
    one of them must reload. Every one must hold every record."""
    reloads = []
    for _attempt in range(6):
        with tiger.serve() as server, tiger.connect(server.url) as other:
            pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
            paused = subprocess.Popen([sys.executable, "-c", PAUSED, server.url], **pipes)  # type: ignore[call-overload]
            try:
                assert read_line(paused, 30).strip() == "ready"
                os.kill(paused.pid, signal.SIGSTOP)
                try:
                    for i in range(10_000):
                        other.table("t").insert({"id": f"r{i}"})
                    paused.stdin.write("go\n")  # type: ignore[union-attr]
                    paused.stdin.flush()  # type: ignore[union-attr]
                finally:
                    os.kill(paused.pid, signal.SIGCONT)  # its write goes at once, its replica 10,000 changes behind
                resyncs, count = read_line(paused, 30).split()
                assert int(count) == 10_001  # nothing missing
                assert paused.wait(30) == 0
                reloads.append(int(resyncs))
            finally:
                if paused.poll() is None:
                    paused.kill()
                paused.communicate(timeout=10)
        if reloads[-1] == 1:
            break
    assert reloads[-1] == 1, f"a snapshot reload in none of {len(reloads)} tries: {reloads}"  # reloaded, not replayed


def stop_for(pid: int, seconds: float) -> None:
    """Stop the process ``pid`` (SIGSTOP) for ``seconds``, then resume it (SIGCONT), whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # sleep-ok: how long the process is stopped
    finally:
        os.kill(pid, signal.SIGCONT)


def end_worker(worker: subprocess.Popen[str]) -> None:
    """Kill a test's worker process if it is still running, and reap it."""
    if worker.poll() is None:
        worker.kill()
    worker.communicate(timeout=10)


STOPPED_CONNECTING = """
import asyncio, sys, time, tiger, tiger.aio
url, kind, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
if kind == "again":  # a first join, timed: the parent stops the second halfway through its snapshot
    began = time.monotonic()
    tiger.connect(url, timeout=30).close()
    print("joined", time.monotonic() - began, flush=True)
    sys.stdin.readline()
try:
    if kind == "aio":
        async def main():
            print("connecting", flush=True)
            async with await tiger.aio.connect(url, timeout=timeout) as client:
                await client.table("t").insert({"id": "after"})
                return client.table("t").count()
        count = asyncio.run(main())
    else:
        print("connecting", flush=True)
        with tiger.connect(url, timeout=timeout) as client:
            client.table("t").insert({"id": "after"})
            count = client.table("t").count()
except tiger.Unavailable as e:
    print("failed:", e, flush=True)
else:
    print("connected", count, flush=True)
"""


@pytest.mark.parametrize("kind", ["blocking", "aio", "again"])
def test_a_worker_stopped_as_it_connected_failed_no_snapshot_within_its_timeout(kind):
    """Regression: a ``pytest -n 4`` worker stopped as it connected (Ctrl-Z on the run then fg, SIGSTOP, a
    debugger) failed "no snapshot ... within 5.0s" or "did not answer within 5s: the time was spent before
    the call could be sent", and the run was aborted (a user trial: 4 of 14 with a 5 s stop; a whole run
    stopped with Ctrl-Z for 5 s, 1 in 8). Connect's timeout counts only the time the process was running;
    a stop past 3 s (the writer's ZeroMQ heartbeat then closes the stopped client's connection, with the
    answer or the snapshot's chunks on it) is longer than the timeout here. Stopped as it begins
    (blocking and asyncio), and halfway through the snapshot of 50,000 records (``again``)."""
    stop_while_connecting(kind, 50_000 if kind == "again" else 10, 0.5)


def test_a_join_stopped_as_its_first_chunks_came_took_those_sent_before_the_stop_for_a_snapshot_going_on():
    """Regression (CI, the test above, ``again``): a worker stopped past the writer's ZeroMQ heartbeat early in
    its snapshot lost the connection, and the rest of the snapshot with it; but the chunks the writer sent
    before then waited in the worker's socket, and came after the stop: taken for the snapshot going on, the
    replica did not ask for it again, and connect failed "no snapshot within 2.0s (its last chunk came 2.0s
    ago)". A pause now asks for the snapshot again at once. A store of 200,000 records, the worker stopped a
    tenth of the way through its join (on the code before: 6 of 6 failed from 4% to 20% of the way)."""
    stop_while_connecting("again", 200_000, 0.1)


def stop_while_connecting(kind: str, records: int, where: float) -> None:
    """Run ``STOPPED_CONNECTING`` (``kind``: blocking, aio, again) on a store of ``records`` and stop it 4.5 s
    as it connects (``again``: ``where`` of the way through a join as long as its first); it must connect."""
    with tiger.serve() as server, tiger.connect(server.url, timeout=30) as loader:
        t = loader.table("t")
        for i in range(0, records, 1000):
            t.insert_many([{"id": f"r{i + j}", "pad": "x" * 50} for j in range(min(1000, records - i))])
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        worker = subprocess.Popen([sys.executable, "-c", STOPPED_CONNECTING, server.url, kind, "2"], **pipes)  # type: ignore[call-overload]
        try:
            if kind == "again":
                joined = float(read_line(worker, 60).split()[1])
                worker.stdin.write("go\n")  # type: ignore[union-attr]
                worker.stdin.flush()  # type: ignore[union-attr]
            assert read_line(worker, 30).strip() == "connecting"
            if kind == "again":
                time.sleep(joined * where)  # sleep-ok: where in its join the worker is stopped
            stop_for(worker.pid, 4.5)  # past the writer's 3 s ZeroMQ heartbeat
            assert read_line(worker, 30).strip() == f"connected {records + 1}"
            assert worker.wait(30) == 0
        finally:
            end_worker(worker)


STOPPED_WAITING = """
import sys, tiger
with tiger.connect(sys.argv[1]) as client:
    print("waiting", flush=True)
    try:
        print("found", client.table("t").wait_for("late", timeout=5.0)["id"], flush=True)
    except tiger.Timeout as e:
        print("timeout:", e, flush=True)
"""


def test_a_wait_stopped_midway_counted_the_time_the_process_was_stopped():
    """A wait's timeout (``wait_for``, ``once``, ``sync``, a write's catching up) counts only the time its
    process was running, as connect's does: a worker stopped 6 s into ``wait_for(timeout=5)``, its record
    written half a second after it resumed, finds it (before, its deadline had passed as it resumed: it
    raised Timeout 0.1 s later). (A timeout of 2 s left some 0.7 s for a loaded machine's scheduling.)"""
    with tiger.serve() as server, tiger.connect(server.url) as writer:
        pipes = {"stdout": subprocess.PIPE, "text": True}
        worker = subprocess.Popen([sys.executable, "-c", STOPPED_WAITING, server.url], **pipes)  # type: ignore[call-overload]
        try:
            assert read_line(worker, 30).strip() == "waiting"
            time.sleep(0.3)  # sleep-ok: the worker is stopped inside its wait
            stop_for(worker.pid, 6.0)  # past its whole timeout
            time.sleep(0.5)  # sleep-ok: the record comes after it resumed, within what is left of its timeout
            writer.table("t").insert({"id": "late"})
            assert read_line(worker, 30).strip() == "found late"
            assert worker.wait(30) == 0
        finally:
            end_worker(worker)


STOPPED_WRITING = """
import sys, tiger
with tiger.connect(sys.argv[1], timeout=2.0) as client:
    print("writing", flush=True)
    try:
        print("written", client.table("t").insert({"id": "w"})["id"], flush=True)
    except tiger.TigerError as e:
        print("raised:", type(e).__name__, e, flush=True)
    print("count", client.table("t").count(), flush=True)
"""


def test_a_write_in_flight_as_its_process_was_stopped_returns_its_answer():
    """Where else the kind of connect's fault (a timeout counting time the process was not running) could
    be: a worker stopped while its write was in flight (Ctrl-Z, SIGSTOP), the writer answering meanwhile,
    resumed past the write's timeout and past the writer's 3 s ZeroMQ heartbeat. The answer reached the
    worker's socket before the heartbeat closed it, and is read as it resumes (``PAUSE_GRACE``): the write
    returns it. (Not a fault found: this holds already; a write's expiry at the writer, on its clock,
    cannot move with the worker's pauses.)"""
    with tiger.serve() as server:
        pipes = {"stdout": subprocess.PIPE, "text": True}
        worker = subprocess.Popen([sys.executable, "-c", STOPPED_WRITING, server.url], **pipes)  # type: ignore[call-overload]
        try:
            assert read_line(worker, 30).strip() == "writing"
            os.kill(server.pid, signal.SIGSTOP)  # the write waits for it
            try:
                time.sleep(0.3)  # sleep-ok: the worker sends its write to the stopped writer
                os.kill(worker.pid, signal.SIGSTOP)
            finally:
                os.kill(server.pid, signal.SIGCONT)  # it applies the write, and answers a stopped worker
            stop_for(worker.pid, 4.5)  # past the writer's 3 s ZeroMQ heartbeat (stopped already)
            assert read_line(worker, 30).strip() == "written w"
            assert read_line(worker, 30).strip() == "count 1"
            assert worker.wait(30) == 0
        finally:
            end_worker(worker)


STOPPED_BEFORE_SENDING = """
import asyncio, os, signal, sys, threading, time, tiger, tiger.aio
from tiger import _protocol
url, kind = sys.argv[1], sys.argv[2]
records = [{"id": f"r{i}", "pad": "x" * 50, "n": i, "tags": ["a", "b", "c"]} for i in range(100)]

def report(write):
    try:
        print("written", write(), flush=True)
    except tiger.TigerError as e:
        print("raised:", type(e).__name__, e, flush=True)

if kind == "encoding":  # stopped as its write is encoded (its deadline taken), before it is sent
    with tiger.connect(url, timeout=5.0) as client:
        encode = _protocol.encode_request

        def stopping(request):
            if type(request) is _protocol.Insert:
                _protocol.encode_request = encode
                os.kill(os.getpid(), signal.SIGSTOP)  # (the test resumes it 6 s later)
            return encode(request)

        _protocol.encode_request = stopping
        print("writing", flush=True)
        report(lambda: len(client.table("t").insert_many(records)))
elif kind == "behind":  # stopped as its write waits for the socket, held by a call to a stopped writer
    with tiger.connect(url, timeout=4.0) as client:
        print("connected", flush=True)
        sys.stdin.readline()  # (the writer stopped meanwhile)
        first = threading.Thread(target=report, args=(lambda: client.table("t").insert({"id": "first"})["id"],))
        first.start()
        time.sleep(0.3)  # sleep-ok: the first call is sent (to a stopped writer) and holds the socket
        second = threading.Thread(target=report, args=(lambda: client.table("t").insert({"id": "second"})["id"],))
        second.start()
        time.sleep(0.3)  # sleep-ok: the second waits for the socket
        print("writing", flush=True)
        first.join(); second.join()
else:  # the same for two tasks of an asyncio client
    async def main():
        async with await tiger.aio.connect(url, timeout=4.0) as client:
            print("connected", flush=True)
            sys.stdin.readline()  # (the writer stopped meanwhile)

            async def write(id):
                try:
                    print("written", (await client.table("t").insert({"id": id}))["id"], flush=True)
                except tiger.TigerError as e:
                    print("raised:", type(e).__name__, e, flush=True)
            first = asyncio.create_task(write("first"))
            await asyncio.sleep(0.3)
            second = asyncio.create_task(write("second"))
            await asyncio.sleep(0.3)
            print("writing", flush=True)
            await first; await second
    asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["encoding", "behind", "aio-behind"])
def test_a_write_stopped_before_it_was_sent_raised_that_its_time_was_spent_before_it_could_be_sent(kind):
    """Regression (a user trial: 2 of 120 Ctrl-Z stops of 10 s on a whole ``pytest -n 4`` run): a worker
    stopped after its write took its deadline but before it was sent raised "did not answer within 5s: the
    time was spent before the call could be sent", and one stopped while its write waited for the socket
    behind another call "other calls of this client held its socket until too late". Nothing was sent: the
    call is made again with its deadline and expiry moved by the pause. Stopped 6 s (past the timeout and
    the writer's 3 s ZeroMQ heartbeat) as a write is encoded (it stops itself there: a sleep of the test
    landing in the encoding of 200,000 records missed it under load), and as a write waits for the socket
    held by a call to a stopped writer (blocking threads, asyncio tasks)."""
    with tiger.serve() as server:
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        worker = subprocess.Popen([sys.executable, "-c", STOPPED_BEFORE_SENDING, server.url, kind], **pipes)  # type: ignore[call-overload]
        try:
            if kind == "encoding":
                assert read_line(worker, 60).strip() == "writing"
                wait_stopped(worker.pid)  # (it stopped itself, its call's deadline taken)
                time.sleep(6.0)  # sleep-ok: how long it is stopped
                os.kill(worker.pid, signal.SIGCONT)
                assert read_line(worker, 60).strip() == "written 100"
            else:
                assert read_line(worker, 60).strip() == "connected"
                os.kill(server.pid, signal.SIGSTOP)  # the first call waits for it, the second for the socket
                try:
                    worker.stdin.write("go\n")  # type: ignore[union-attr]
                    worker.stdin.flush()  # type: ignore[union-attr]
                    assert read_line(worker, 60).strip() == "writing"
                    os.kill(worker.pid, signal.SIGSTOP)
                finally:
                    os.kill(server.pid, signal.SIGCONT)  # it answers the first call of the stopped worker
                stop_for(worker.pid, 6.0)  # (stopped already: past the second call's 4 s and the heartbeat)
                assert sorted(read_line(worker, 60).strip() for _ in range(2)) == ["written first", "written second"]
            assert worker.wait(30) == 0
        finally:
            end_worker(worker)


@pytest.mark.parametrize("stopped_after", [1.0, 5.0])
def test_a_probe_stopped_as_it_waited_for_the_writers_answer_said_it_did_not_answer(stopped_after):
    """Where else the kind was: the one-request waits of ``tiger stats``/``dump``/``compact``, of the pytest
    plugin's probes and its run lease (``_answer``) counted the time their process was stopped (Ctrl-Z on a
    ``pytest -n 4`` run as its controller starts): past its timeout, "did not answer within 3s", though the
    answer came soon after it resumed. ``tiger stats --timeout 8`` waits for a stopped writer; 1 s in (as it
    probes the peer's greeting), or 5 s in (its greeting probes done, it waits out the rest; a CI run: a stop
    landing there was counted only past the deadline, and it raised as it resumed), it is stopped 9 s itself;
    the writer is resumed half a second after it, and answers well within what was left of its timeout when
    it was stopped."""
    with tiger.serve() as server:
        command = [*TIGER, "stats", "--url", server.url, "--timeout", "8"]
        os.kill(server.pid, signal.SIGSTOP)
        try:
            stats = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(stopped_after)  # sleep-ok: the probe sends its request, and waits for the stopped writer
            stop_for(stats.pid, 9.0)
            time.sleep(0.5)  # sleep-ok: the probe runs on, its timeout not over (its stop does not count)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        try:
            out, _ = stats.communicate(timeout=30)
            assert stats.returncode == 0 and f"pid      {server.pid}" in out, out
        finally:
            end_worker(stats)


FEED_READER = """
import asyncio, sys, tiger, tiger.aio
url, table, how = sys.argv[1:]
if how == "blocking":
    with tiger.connect(url) as client:
        with client.watch(tables=[table], namespace=None, timeout=2.0) as feed:
            print("watching", flush=True)
            try:
                change = next(feed)
                while change.op == "reset":  # (stopped past 3 s: its replica reloads a snapshot)
                    change = next(feed)
                print("got", change.id, flush=True)
            except tiger.TigerError as e:
                print(type(e).__name__, e, flush=True)
else:
    async def main():
        async with await tiger.aio.connect(url) as client:
            with client.watch(tables=[table], namespace=None, timeout=2.0) as feed:
                print("watching", flush=True)
                try:
                    change = await feed.__anext__()
                    while change.op == "reset":  # (stopped past 3 s: its replica reloads a snapshot)
                        change = await feed.__anext__()
                    print("got", change.id, flush=True)
                except tiger.TigerError as e:
                    print(type(e).__name__, e, flush=True)
    asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["blocking", "async"])
def test_a_feed_read_stopped_as_it_waited_counted_the_stop_against_its_timeout(connect, how):
    """The same kind in a feed's read: it slept for all of its timeout at once, so a stop of its process begun
    within it was counted only past the deadline, and only if by more than 1 s. A read with a 2 s timeout,
    stopped 0.5 s in for 2.5 s (under the writer's 3 s heartbeat timeout, past which its replica reloads a
    snapshot, a reset the read returns); a change comes 0.5 s after it resumes, within what was left."""
    writer_side = connect()
    table = f"t{uuid.uuid4().hex[:8]}"
    pipes = {"stdout": subprocess.PIPE, "text": True}
    reader = subprocess.Popen([sys.executable, "-c", FEED_READER, writer_side.url, table, how], **pipes)  # type: ignore[call-overload]
    try:
        assert read_line(reader, 60).strip() == "watching"
        time.sleep(0.5)  # sleep-ok: the read waits, 0.5 s of its 2 s spent
        stop_for(reader.pid, 2.5)
        time.sleep(0.5)  # sleep-ok: it runs on, its timeout not over (its stop does not count)
        writer_side.table(table).insert({"id": "late"})
        assert read_line(reader, 30).strip() == "got late"
        assert reader.wait(30) == 0
    finally:
        end_worker(reader)


def stopped_past_the_heartbeat_timeout(pid: int, table: tiger.Table) -> None:
    """A process 0.5 s into a wait of 3 s stopped for 5 s, past the writer's 3 s heartbeat timeout; a write to
    ``table`` as it is stopped, and one after, which its replica finds a gap before: it reloads a snapshot (a
    feed's reset). Returns 0.5 s after it resumed: 1 s of its wait spent."""
    time.sleep(0.5)  # sleep-ok: the wait runs, 0.5 s of its 3 s spent
    os.kill(pid, signal.SIGSTOP)
    try:
        table.insert({"id": "missed"})  # (published as it is stopped: a gap to reload)
        time.sleep(5.0)  # sleep-ok: how long the process is stopped
    finally:
        os.kill(pid, signal.SIGCONT)
    table.insert({"id": "next"})
    time.sleep(0.5)  # sleep-ok: it runs on, its timeout not over (its stop does not count)


WAIT_UNTIL_READER = """
import asyncio, sys, tiger, tiger.aio
url, table, how = sys.argv[1:]
matches = lambda record: record.get("match", False)
if how == "blocking":
    with tiger.connect(url) as client:
        print("waiting", flush=True)
        try:
            print("got", client.table(table).wait_until(matches, timeout=3.0)["id"], flush=True)
        except tiger.TigerError as e:
            print(type(e).__name__, e, flush=True)
else:
    async def main():
        async with await tiger.aio.connect(url) as client:
            print("waiting", flush=True)
            try:
                print("got", (await client.table(table).wait_until(matches, timeout=3.0))["id"], flush=True)
            except tiger.TigerError as e:
                print(type(e).__name__, e, flush=True)
    asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["blocking", "async"])
def test_a_wait_until_stopped_past_the_heartbeat_timeout_raised_timeout_when_its_replica_reloaded(connect, how):
    """Found by a trial (5 of 5): ``wait_until(predicate, timeout=3)`` stopped 0.5 s in for 5 s raised
    ``Timeout`` as it resumed. Past the writer's 3 s heartbeat timeout its replica reloads a snapshot, and the
    wait's feed yields a reset: the wait scanned the table again and went on with its first deadline, the stop
    it had counted forgotten (and the async one began counting anew after the reset). A match stored 0.5 s
    after it resumes is within what is left of its 3 s."""
    writer_side = connect()
    table = f"t{uuid.uuid4().hex[:8]}"
    pipes = {"stdout": subprocess.PIPE, "text": True}
    reader = subprocess.Popen([sys.executable, "-c", WAIT_UNTIL_READER, writer_side.url, table, how], **pipes)  # type: ignore[call-overload]
    try:
        assert read_line(reader, 60).strip() == "waiting"
        stopped_past_the_heartbeat_timeout(reader.pid, writer_side.table(table))
        writer_side.table(table).insert({"id": "late", "match": True})
        assert read_line(reader, 30).strip() == "got late"
        assert reader.wait(30) == 0
    finally:
        end_worker(reader)


ONCE_WAITER = """
import asyncio, sys, tiger, tiger.aio
url, key, how = sys.argv[1:]
if how == "blocking":
    with tiger.connect(url) as client:
        print("waiting", flush=True)
        try:
            print("got", client.once(key, lambda: "mine", timeout=3.0), flush=True)
        except tiger.TigerError as e:
            print(type(e).__name__, e, flush=True)
else:
    async def main():
        async with await tiger.aio.connect(url) as client:
            print("waiting", flush=True)
            try:
                print("got", await client.once(key, lambda: "mine", timeout=3.0), flush=True)
            except tiger.TigerError as e:
                print(type(e).__name__, e, flush=True)
    asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["blocking", "async"])
def test_a_once_waiting_for_another_builder_stopped_midway_raised_timeout_as_it_resumed(connect, how):
    """The same kind in ``once``: a caller waiting (``timeout=3``) for another process's build, stopped 0.5 s in
    for 5 s, raised ``Timeout`` as it resumed. Its wait is made of 1 s slices, each moving its own deadline by
    the pause it found, and it judged the whole wait against the unmoved one. The build ends 0.5 s after it
    resumes, within what is left of its 3 s."""
    builder = connect()
    key = f"k{uuid.uuid4().hex[:8]}"
    building, release = threading.Event(), threading.Event()

    def build() -> str:
        building.set()
        assert release.wait(60)
        return "built"

    values: list[Any] = []
    thread = threading.Thread(target=lambda: values.append(builder.once(key, build, timeout=60)), daemon=True)
    thread.start()
    pipes = {"stdout": subprocess.PIPE, "text": True}
    waiter = None
    try:
        assert building.wait(30)
        waiter = subprocess.Popen([sys.executable, "-c", ONCE_WAITER, builder.url, key, how], **pipes)  # type: ignore[call-overload]
        assert read_line(waiter, 60).strip() == "waiting"
        stopped_past_the_heartbeat_timeout(waiter.pid, builder.table("noise"))
        release.set()
        assert read_line(waiter, 30).strip() == "got built"
        assert waiter.wait(30) == 0
    finally:
        release.set()
        thread.join(30)
        if waiter is not None:
            end_worker(waiter)
    assert values == ["built"]


STARTS_A_WRITER = """
import os, signal, sys, tiger
from tiger._server import start_writer
server = start_writer(timeout=2.0)  # (its start overlaps other work: serve() without its wait)
os.kill(os.getpid(), signal.SIGSTOP)  # Ctrl-Z in that other work; the writer, in a session of its own, runs on
try:
    server.wait_ready()
    with tiger.connect(server.url) as client:
        client.table("t").insert({"id": "x"})
    print("ready", flush=True)
except tiger.TigerError as e:
    print(type(e).__name__, e, flush=True)
finally:
    server.stop()
"""


def test_a_process_stopped_while_its_writer_started_stopped_a_ready_writer_as_it_resumed():
    """Where else a stop counted against a wait (a review): ``start_writer`` then other work, stopped 4 s,
    then ``wait_ready()``: it judged its 2 s deadline past before reading the "serving at" line the writer had
    printed meanwhile, raised "did not start within 2s" and stopped the writer. It reads what is there first."""
    pipes = {"stdout": subprocess.PIPE, "text": True}
    proc = subprocess.Popen([sys.executable, "-c", STARTS_A_WRITER], **pipes)  # type: ignore[call-overload]
    try:
        wait_stopped(proc.pid)
        time.sleep(4.0)  # sleep-ok: how long the process is stopped
        os.kill(proc.pid, signal.SIGCONT)
        assert read_line(proc, 30).strip() == "ready"
        assert proc.wait(30) == 0
    finally:
        end_worker(proc)


def test_a_stop_found_only_after_a_wait_began_was_counted_twice(connect):
    """A review: a wait that begins past its deadline, its process's stop not yet found (the replica thread
    finds most, a moment after the process resumed), is stretched by 0.1 s to look once more; the stop, found
    then, was added to the stretched deadline, counted twice. A call that began 3 s ago with 2 s to wait, of
    which 2.4 s its process was stopped, has 1.4 s left: the wait (one that cannot succeed) raised at 2.5 s.
    The stop is noted as the thread that finds it notes one (``overslept``), 0.05 s into the wait (within the
    0.1 s look)."""
    from tiger._clock import overslept

    replica = connect().replica
    since = time.monotonic() - 3.0

    def found_late() -> None:
        overslept((since + 0.5, time.process_time()), 0.0, now=since + 2.9)

    finder = threading.Timer(0.05, found_late)
    began = time.monotonic()
    finder.start()
    try:
        with pytest.raises(tiger.Timeout):
            replica.wait_until(lambda: False, since + 2.0, lambda: "never", since=since)
    finally:
        finder.join()
    assert 1.2 < time.monotonic() - began < 2.2  # (1.4 s left; counted twice: 2.5 s)


def test_an_async_feed_read_counted_a_stop_found_after_its_look_twice(connect):
    """The same in an async feed read (a review): its loop held 3 s as by a stop, the stop noted 0.05 s after (by
    the replica thread, as a thread notes one: ``overslept``), a read with a 0.5 s timeout raised 6.2 s in: the
    stop added to the deadline already stretched for one more look. 0.5 s of its own, and the stop: 3.5 s."""
    import asyncio

    from tiger._clock import overslept

    feed = connect().watch(tables=["quiet"], namespace=None, timeout=0.5)

    async def main() -> float:
        began = time.monotonic()
        read = asyncio.ensure_future(feed.__anext__())
        await asyncio.sleep(0)  # (the read waits, its timer set)
        held = time.monotonic()
        time.sleep(3.0)  # sleep-ok: the loop held, as by a stop of the process
        finder = threading.Timer(0.05, lambda: overslept((held, time.process_time()), 0.0, now=held + 3.0))
        finder.start()
        try:
            with pytest.raises(tiger.Timeout):
                await read
        finally:
            finder.join()
        return time.monotonic() - began

    assert 3.3 < asyncio.run(main()) < 5.0  # (counted twice: 6.2 s)


@pytest.mark.parametrize("wait", ["wait_for", "wait_until", "aio-wait_for"])
def test_a_wait_whose_writer_was_killed_timed_out_blaming_the_record(wait):
    """A user trial (2 of 2): ``wait_for(id, timeout=3)`` after the writer was killed said only "did not appear
    within 3s", where ``sync`` said the writer was silent and gone. A wait's ``Timeout`` says the writer went
    unheard past the heartbeat timeout."""
    import asyncio

    import tiger.aio

    async def main(server: tiger.Server) -> None:
        async with await tiger.aio.connect(server.url) as aclient:
            kill(server)
            await aclient.table("t").wait_for("zz", timeout=4)

    with tiger.serve() as server, tiger.connect(server.url) as client:
        with pytest.raises(tiger.Timeout) as raised:
            if wait == "aio-wait_for":
                asyncio.run(main(server))
            else:
                kill(server)
                if wait == "wait_for":
                    client.table("t").wait_for("zz", timeout=4)
                else:
                    client.table("t").wait_until(lambda record: False, timeout=4)
    assert re.search(rf"within 4s \(the tiger writer at {re.escape(server.url)} has been silent for [\d.]+s", str(raised.value))


def test_an_async_connect_whose_loop_was_held_past_its_timeout_spun_for_ever_instead_of_raising():
    """Review: ``tiger.aio.connect(timeout=1)`` to a stopped writer, its event loop held 3.5 s by another
    task, never returned: the watch of its pauses had ended (at its deadline and a second) but went on
    counting the time since its last look as a pause, and the hello was asked again and again at 100% CPU,
    the loop frozen. Not a pause of the process (the watch looked on meanwhile): it raises, in about that
    time."""
    import asyncio

    import tiger.aio

    async def main(url: str) -> float:
        async def hold() -> None:
            await asyncio.sleep(0.05)
            time.sleep(3.5)  # sleep-ok: a task that holds the loop (blocking work between awaits)

        holder = asyncio.ensure_future(hold())
        began = time.monotonic()
        with pytest.raises(tiger.Unavailable):
            await asyncio.wait_for(tiger.aio.connect(url, timeout=1.0), 30)
        await holder
        return time.monotonic() - began

    with tiger.serve() as server:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            assert asyncio.run(main(server.url)) < 10
        finally:
            os.kill(server.pid, signal.SIGCONT)


# -- stuck readers -----------------------------------------------------------------------------------

READER = """
import sys, tiger
client = tiger.connect(sys.argv[1], timeout=30)
print("ready", flush=True)
for line in sys.stdin:
    client.sync(timeout=30)
    print(client.table("t").count(), client.checksum(), client.replica.resyncs, flush=True)
"""


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def test_a_stopped_reader_neither_stalls_the_writer_nor_stays_behind(tmp_path):
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--pub-hwm", "200")
    writer_pid = tiger.connect(url).writer_pid
    reader = subprocess.Popen([sys.executable, "-c", READER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(reader, 30).strip() == "ready"
        before = rss_kib(writer_pid)
        os.kill(reader.pid, signal.SIGSTOP)
        with tiger.connect(url) as client:
            t = client.table("t")
            for i in range(30):
                t.insert_many([{"n": i * 100 + j, "pad": "x" * 200} for j in range(100)])
            for i in range(2000):
                t.insert({"n": i})  # each within the client's timeout: the writer is not held up
            grown = rss_kib(writer_pid) - before
            assert grown < 150_000, f"writer grew by {grown} KiB while a reader was stuck"
            os.kill(reader.pid, signal.SIGCONT)
            reader.stdin.write("check\n")  # type: ignore[union-attr]
            reader.stdin.flush()  # type: ignore[union-attr]
            count, checksum, resyncs = read_line(reader, 60).split()
            assert int(count) == 5000
            assert int(checksum) == client.stats()["checksum"]
            assert int(resyncs) >= 1  # it saw the gap PUB left and reloaded
    finally:
        os.kill(reader.pid, signal.SIGCONT)
        reader.kill()
        reader.communicate(timeout=10)
        stop(proc)


# -- access ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["tcp://0.0.0.0:*", "tcp://*:*", "tcp://192.0.2.1:*"])
def test_non_loopback_tcp_is_refused_without_curve(url):
    out = subprocess.run([*TIGER, "serve", "--url", url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"refusing to bind {url} without CurveZMQ" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_curve_clients_with_the_key_are_served_and_others_get_nothing(tmp_path):
    out = subprocess.run([*TIGER, "keygen", str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    public = out.stdout.strip().rsplit(" ", 1)[-1]
    assert oct((tmp_path / "tiger.key").stat().st_mode & 0o777) == "0o600"
    with tiger.serve("tcp://127.0.0.1:*", curve_secret=tmp_path / "tiger.key") as server:
        with tiger.connect(server.url, server_key=public) as client:
            with pytest.raises(tiger.Unavailable):
                tiger.connect(server.url, timeout=0.5)  # no key: never answered
            with zmq.Context() as ctx:
                spy = ctx.socket(zmq.SUB)
                spy.setsockopt(zmq.SUBSCRIBE, b"")
                spy.connect(client.replica._pub_url)
                client.table("t").insert({"id": "secret"})
                assert "secret" in client.table("t")
                assert not spy.poll(500)  # no published change reaches a SUB without the key
                spy.close(linger=0)


def keygen(directory) -> str:
    """``tiger keygen DIR``: the public key it printed (the secret is in DIR/tiger.key)."""
    out = subprocess.run([*TIGER, "keygen", str(directory)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().rsplit(" ", 1)[-1]


@pytest.fixture(scope="module")
def keyed_writers(tmp_path_factory):
    """{"curve": (url, its public key), "other": another public key, "plain": a writer's url without CurveZMQ}"""
    keys = tmp_path_factory.mktemp("keys")
    public, other = keygen(keys / "a"), keygen(keys / "b")
    with (
        tiger.serve("tcp://127.0.0.1:*", curve_secret=keys / "a" / "tiger.key") as curve,
        tiger.serve("tcp://127.0.0.1:*") as plain,
    ):
        yield {"curve": (curve.url, public), "other": other, "plain": plain.url}


# (writer, key the client gives, what the error says): a key another writer serves, none to a writer that
# needs one, one to a writer that serves without CurveZMQ
WRONG_KEYS = {
    "another-key": ("curve", "other", "it serves CurveZMQ with another key than the server key given"),
    "no-key": ("curve", None, "it serves CurveZMQ and no server key was given: "),
    "key-to-plain": ("plain", "curve", "it serves without CurveZMQ and a server key was given"),
}


def failed_with(case: str, url: str) -> str:
    """How the error of a handshake that failed (``WRONG_KEYS[case]``, with a writer of ``keyed_writers``) begins:
    the peer is said to be a tiger writer only once it answered a tiger request (made without the key, to a
    writer serving without CurveZMQ); a writer serving CurveZMQ is as any ZeroMQ peer serving it."""
    return f"the handshake with the {'tiger writer' if case == 'key-to-plain' else 'ZeroMQ peer'} at {url} failed: "


def wrong_key(keyed_writers, case: str) -> tuple[str, str | None, str]:
    writer, key, says = WRONG_KEYS[case]
    url = keyed_writers["plain"] if writer == "plain" else keyed_writers["curve"][0]
    given = {None: None, "other": keyed_writers["other"], "curve": keyed_writers["curve"][1]}[key]
    return url, given, says


@pytest.mark.parametrize("case", WRONG_KEYS)
@pytest.mark.parametrize("kind", ["blocking", "aio", "lease"])
def test_a_wrong_or_missing_curve_key_waited_out_the_timeout_and_said_only_that_nothing_answered(keyed_writers, case, kind):
    # A user trial: a client with a wrong CurveZMQ key (or none, or one for a writer without CurveZMQ) waited out
    # connect's whole timeout, then said "did not answer within 10s". Its handshake had failed in 2 ms: now said
    # at connect's first resend (a second), naming what is wrong with the key.
    import asyncio

    import tiger.aio

    url, key, says = wrong_key(keyed_writers, case)
    started = time.monotonic()
    with pytest.raises(tiger.Unavailable) as raised:
        if kind == "blocking":
            tiger.connect(url, timeout=10, server_key=key).close()
        elif kind == "lease":  # the plugin's controller holds its run's namespace with one
            from tiger._server import NamespaceLease

            NamespaceLease(url, "ns", timeout=10, server_key=key).close()
        else:
            asyncio.run(tiger.aio.connect(url, timeout=10, server_key=key))
    assert time.monotonic() - started < 8  # waiting it out takes 10 s
    assert failed_with(case, url) in str(raised.value)
    assert says in str(raised.value)
    curve_url, public = keyed_writers["curve"]
    with tiger.connect(curve_url, timeout=10, server_key=public) as client:  # the right key is served
        assert client.stats()["url"] == curve_url


@pytest.mark.parametrize("peer", [*WRONG_KEYS, "http"])
@pytest.mark.parametrize("kind", ["blocking", "aio"])
def test_connect_said_a_failed_handshake_only_at_its_first_resend_a_second_in(keyed_writers, not_zeromq, peer, kind, monkeypatch):
    # connect (and `tiger dump`/`load`, which connect) said a wrong CurveZMQ key, or a port that speaks no
    # ZeroMQ, at the hello's first resend: 1.0 s, where `tiger stats` said it in 0.25 s. The hello's handshake is
    # now probed once a quarter second in, before any resend. (The probe is given long enough to hear the
    # failure on a loaded machine: what is asserted is which step said it, not how fast.)
    import asyncio

    import tiger.aio
    from tiger import _calls, _client

    monkeypatch.setattr(_client, "HANDSHAKE_PROBE", 20.0)
    steps: list[int] = []

    class Recorded(_calls.Attempts):
        def wait(self, now: float) -> int:
            steps.append(super().wait(now))
            return steps[-1]

    monkeypatch.setattr(_client, "Attempts", Recorded)
    monkeypatch.setattr(tiger.aio, "Attempts", Recorded)
    if peer == "http":
        url, key, says = not_zeromq("http"), None, "does not speak ZeroMQ"
    else:
        url, key, says = wrong_key(keyed_writers, peer)
    with pytest.raises(tiger.HandshakeFailed, match=re.escape(says)):
        if kind == "blocking":
            tiger.connect(url, timeout=30, server_key=key).close()
        else:
            asyncio.run(tiger.aio.connect(url, timeout=30, server_key=key))
    assert _calls.PROBE in steps
    assert _calls.RESEND not in steps and _calls.GIVE_UP not in steps, steps


@pytest.mark.parametrize("case", WRONG_KEYS)
@pytest.mark.parametrize("command", [["stats", "--timeout", "60"], ["compact"], ["dump"], ["drop", "ns"]])
def test_a_command_with_a_wrong_or_missing_curve_key_waited_out_its_timeout_and_advised_a_longer_one(
    keyed_writers, case, command
):
    # tiger stats said "did not answer within 5s (... paused or busy ...; a longer --timeout waits for a busy
    # or paused one)" after 5 s; tiger compact waited 600 s. The handshake failed at once: said at once.
    url, key, says = wrong_key(keyed_writers, case)
    env = {k: v for k, v in os.environ.items() if k not in ("TIGER_URL", "TIGER_SERVER_KEY")}
    if key is not None:
        env["TIGER_SERVER_KEY"] = key
    started = time.monotonic()
    out = subprocess.run([*TIGER, *command, "--url", url], capture_output=True, text=True, timeout=50, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 45  # stats waited its --timeout, compact 600 s
    assert out.stderr.startswith(f"tiger {command[0]}: {failed_with(case, url)}"), out.stderr
    assert says in out.stderr
    assert "paused" not in out.stderr and "--timeout" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.fixture
def closer():
    """A tcp://127.0.0.1 url where a process that is no ZeroMQ peer accepts each connection and closes it."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopped.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


@pytest.fixture
def greeter():
    """Starts a tcp://127.0.0.1 listener speaking the first of ZMTP 3 as a writer serving ``mechanism`` would
    (``greeter(mechanism, silent)``, returns its url): it sends its greeting to each connection that sends
    bytes (a ZeroMQ socket, a greeting probe), except those whose count among them is in ``silent``, which it
    holds open unanswered (a writer paused, a machine too loaded to answer in time). A client's mechanism is
    not its own: the client's handshake fails on the greeting, as with a writer of the other kind.
    ``greeter.given_up[url]`` is set once a connection it greeted was closed by its peer."""
    import socket

    listeners: list[socket.socket] = []
    held: list[socket.socket] = []
    given_up: dict[str, threading.Event] = {}

    def start(mechanism: bytes, silent: range | set[int]) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        counted = [0]
        lock = threading.Lock()
        greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + mechanism.ljust(20, b"\0") + bytes(32)

        def one(conn: socket.socket) -> None:
            try:
                if not conn.recv(1):  # (a connection probe, closed unwritten: not counted)
                    return
                with lock:
                    counted[0] += 1
                    number = counted[0]
                if number not in silent:
                    conn.sendall(greeting)
                    while conn.recv(4096):
                        pass
                    given_up[url].set()
            except OSError:
                pass

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                held.append(conn)
                threading.Thread(target=one, args=(conn,), daemon=True).start()

        url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        given_up[url] = threading.Event()
        threading.Thread(target=serve, daemon=True).start()
        return url

    start.given_up = given_up  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for sock in listeners + held:
            sock.close()


@pytest.mark.parametrize("key", ["key-to-plain", "no-key"])
@pytest.mark.parametrize("kind", ["stats", "compact", "lease"])
def test_a_failed_handshake_whose_probe_heard_nothing_waited_out_the_whole_timeout(keyed_writers, greeter, key, kind):
    # CI: `tiger compact` with a server key to a writer without CurveZMQ waited more than 50 s (its timeout is
    # 600 s). libzmq ends a connection whose handshake failed on a protocol error (another mechanism) for good,
    # without a retry; the probe made to tell why heard nothing in its second on a loaded machine, and the
    # command went back to waiting for an answer that could no longer come. Here the writer greets the command's
    # socket and then holds every later connection (the probe's) unanswered.
    from tiger._server import NamespaceLease, ping

    server_key = keyed_writers["curve"][1] if key == "key-to-plain" else None
    url = greeter(b"NULL" if server_key else b"CURVE", range(2, 1000))
    says = WRONG_KEYS[key][2]
    started = time.monotonic()
    if kind == "compact":
        env = {k: v for k, v in os.environ.items() if k not in ("TIGER_URL", "TIGER_SERVER_KEY")}
        if server_key:
            env["TIGER_SERVER_KEY"] = server_key
        out = subprocess.run([*TIGER, "compact", "--url", url], capture_output=True, text=True, timeout=50, env=env)
        assert out.returncode == 1
        assert out.stderr.startswith(f"tiger compact: the handshake with the ZeroMQ peer at {url} failed: "), out.stderr
        assert says in out.stderr
    else:
        with pytest.raises(tiger.HandshakeFailed, match=re.escape(says)):
            if kind == "stats":
                ping(url, timeout=30, server_key=server_key)
            else:
                NamespaceLease(url, "ns", timeout=30, server_key=server_key).close()
    assert time.monotonic() - started < 20  # waiting it out takes 30 s (compact: 600 s)


@pytest.mark.parametrize("kind", ["stats", "lease"])
def test_a_handshake_that_failed_before_the_request_was_sent_hung_the_send(keyed_writers, greeter, monkeypatch, kind):
    # CI: `tiger stats --timeout 60` with no key to a writer serving CurveZMQ hung past 50 s in a blocking send.
    # A connection whose handshake fails on a protocol error (another mechanism) is not retried, and libzmq
    # then ends the DEALER's only pipe: a DEALER with no pipe blocks a send for ever. Here the request is sent
    # once the socket has no pipe (no longer writable); it was sent before it in most runs.
    from tiger import _server
    from tiger._server import NamespaceLease, ping

    server_key = keyed_writers["curve"][1]
    url = greeter(b"NULL", set())
    made = _server._monitored_dealer

    def given_up(*args: Any, **kwargs: Any) -> Any:
        sock, monitor = made(*args, **kwargs)
        assert greeter.given_up[url].wait(10)
        deadline = time.monotonic() + 10
        while sock.poll(50, zmq.POLLOUT) and time.monotonic() < deadline:  # (each poll takes libzmq's commands)
            pass
        assert not sock.poll(0, zmq.POLLOUT)
        return sock, monitor

    monkeypatch.setattr(_server, "_monitored_dealer", given_up)
    raised: list[BaseException] = []

    def request() -> None:
        try:
            if kind == "stats":
                ping(url, timeout=30, server_key=server_key)
            else:
                NamespaceLease(url, "ns", timeout=30, server_key=server_key).close()
        except BaseException as e:
            raised.append(e)

    thread = threading.Thread(target=request, daemon=True)  # (daemon: a send that hangs is never joined)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "its send still waits"
    assert isinstance(raised[0], tiger.HandshakeFailed), raised
    assert WRONG_KEYS["key-to-plain"][2] in str(raised[0])


@pytest.mark.parametrize("kind", ["blocking", "aio"])
def test_a_connect_whose_first_handshake_probe_heard_nothing_waited_out_its_timeout(keyed_writers, greeter, kind):
    # The same load, at connect: its first probe heard nothing in its half second, and no probe was made again;
    # a wrong key waited out connect's whole timeout and was said as "did not answer". Here the writer holds the
    # probe's connection unanswered and greets every other.
    import asyncio

    import tiger.aio

    server_key = keyed_writers["curve"][1]
    url = greeter(b"NULL", {2})
    started = time.monotonic()
    with pytest.raises(tiger.HandshakeFailed, match=re.escape(WRONG_KEYS["key-to-plain"][2])):
        if kind == "blocking":
            tiger.connect(url, timeout=30, server_key=server_key).close()
        else:
            asyncio.run(tiger.aio.connect(url, timeout=30, server_key=server_key))
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("key", [None, "curve"])
def test_a_listener_that_closes_connections_is_said_to_be_no_tiger_writer_not_a_key_to_fix(keyed_writers, closer, key):
    # Its handshake fails as a writer serving another CurveZMQ key does (libzmq: the connection closed): a first
    # cut said "it serves CurveZMQ and no server key was given" of a port where no ZeroMQ peer listens. The
    # peer's ZMTP greeting tells them apart.
    server_key = keyed_writers["curve"][1] if key else None
    env = {k: v for k, v in os.environ.items() if k not in ("TIGER_URL", "TIGER_SERVER_KEY")}
    if server_key:
        env["TIGER_SERVER_KEY"] = server_key
    command = [*TIGER, "stats", "--url", closer, "--timeout", "60"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=50, env=env)
    assert out.returncode == 1
    said = f"the handshake with the peer at {closer} failed: it answers no ZeroMQ greeting: it is no tiger writer"
    assert said in out.stderr, out.stderr
    with pytest.raises(tiger.Unavailable, match="it answers no ZeroMQ greeting: it is no tiger writer"):
        tiger.connect(closer, timeout=10, server_key=server_key)


def without_key_env(key: str | None = None) -> dict[str, str]:
    """This process's environment without TIGER_URL, with TIGER_SERVER_KEY set to ``key`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TIGER_URL", "TIGER_SERVER_KEY")}
    if key is not None:
        env["TIGER_SERVER_KEY"] = key
    return env


# what a user may give as the server key that holds a secret key: tiger keygen's DIR/tiger.key, its secret
# line alone, a ZeroMQ (CZMQ) secret certificate
SECRET_FORMS = {
    "tiger.key": lambda public, secret: f"public: {public}\nsecret: {secret}\n",
    "secret line": lambda public, secret: f"secret: {secret}",
    "zcert": lambda public, secret: (
        "#   ****  Generated by zcert  ****\n#   ZeroMQ CURVE **Secret** Certificate\n\nmetadata\ncurve\n"
        f'    public-key = "{public}"\n    secret-key = "{secret}"\n'
    ),
}


@pytest.mark.parametrize("form", SECRET_FORMS)
def test_a_secret_key_given_as_the_server_key_was_printed_in_the_error(keyed_writers, form):
    # A user trial: TIGER_SERVER_KEY="$(cat keys/tiger.key)" (the secret file, by mistake) made `tiger stats`
    # print "got 'public: ...\nsecret: ...'": the secret key, to the terminal and CI logs. The error says the
    # length and shape of what was given, that it is a secret key file, and that the public key is wanted;
    # tiger serve --curve-secret given a key file's content in place of its path did the same.
    import asyncio

    import tiger.aio
    from tiger._server import NamespaceLease

    url = keyed_writers["curve"][0]
    public, secret = (key.decode() for key in zmq.curve_keypair())
    given = SECRET_FORMS[form](public, secret)
    said: list[str] = []
    for command in (["stats"], ["dump"], ["compact"], ["drop", "ns"]):
        out = subprocess.run(
            [*TIGER, *command, "--url", url], capture_output=True, text=True, timeout=60, env=without_key_env(given)
        )
        assert out.returncode == 1, out.stdout + out.stderr
        assert out.stderr.startswith(f"tiger {command[0]}: TIGER_SERVER_KEY must be the 40-character z85 public key"), out.stderr
        said.append(out.stderr)
    for connect in (
        lambda: tiger.connect(url, timeout=10, server_key=given),
        lambda: asyncio.run(tiger.aio.connect(url, timeout=10, server_key=given)),
        lambda: NamespaceLease(url, "ns", timeout=10, server_key=given),
    ):
        with pytest.raises(ValueError, match=r"^server_key must be the 40-character z85 public key") as raised:
            connect()
        said.append(str(raised.value))
    out = subprocess.run(
        [*TIGER, "serve", "--url", "tcp://127.0.0.1:*", "--owner-pid", str(os.getpid()), "--curve-secret", given.rstrip("\n")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and out.stderr.startswith("tiger serve: --curve-secret must be the path of the key file")
    said.append(out.stderr)
    with pytest.raises(ValueError, match=r"^curve_secret must be the path of the key file") as raised:
        tiger.serve("tcp://127.0.0.1:*", curve_secret=given)
    said.append(str(raised.value))
    for text in said:
        assert secret not in text and secret[:8] not in text, text
        assert "secret key file's content" in text, text
    for text in said[:-2]:  # (given as the server key: the public one is wanted)
        assert f"got {len(given)} characters" in text, text
        assert "give the PUBLIC key, DIR/tiger.pub's" in text, text


# a test's call given a secret key file's content (read from a file, so the test's own locals never hold
# it), or TIGER_SERVER_KEY holding it
KEY_IN_A_CALL = {
    "env": "tiger.connect('tcp://127.0.0.1:9', timeout=1)",
    "connect": "tiger.connect('tcp://127.0.0.1:9', timeout=1, server_key=open('key').read())",
    "aio": "asyncio.run(tiger.aio.connect('tcp://127.0.0.1:9', timeout=1, server_key=open('key').read()))",
    "serve": "tiger.serve(curve_secret=open('key').read())",
    "serve-quoted": "tiger.serve(curve_secret=repr(open('key').read().split()[-1]))",
}


@pytest.mark.parametrize("call", KEY_IN_A_CALL)
def test_a_secret_key_given_to_a_call_was_printed_by_a_traceback_with_locals(tmp_path, call):
    # A review, then a user trial: pytest -l (--showlocals) showed the locals of tiger's frames, the key given
    # among them (check_server_key's stripped text, connect's server_key, serve's curve_secret): a secret key
    # file given by mistake reached the test run's output after all.
    public, secret = (key.decode() for key in zmq.curve_keypair())
    (tmp_path / "key").write_text(f"public: {public}\nsecret: {secret}\n")
    (tmp_path / "test_key.py").write_text(
        f"import asyncio\nimport tiger, tiger.aio\n\ndef test_call():\n    {KEY_IN_A_CALL[call]}\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "test_key.py", "-l", "--tb=long", "-p", "no:cacheprovider", "-p", "no:tiger"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=without_key_env((tmp_path / "key").read_text() if call == "env" else None),
    )
    assert "1 failed" in out.stdout, out.stdout
    assert re.search(r"(server_key|curve_secret)\b.* (must|no file)", out.stdout, re.IGNORECASE), out.stdout
    assert secret not in out.stdout + out.stderr and secret[5:25] not in out.stdout + out.stderr


# a secret key given where the key file's path goes, near enough to a key's shape to pass for a path
NEAR_MISSES = {
    "quoted": lambda secret: f'"{secret}"',
    "assigned": lambda secret: f"secret={secret}",
    "one more": lambda secret: secret + "x",
    "one less": lambda secret: secret[:-1],
    "spaced": lambda secret: f"secret:  {secret[:20]} {secret[20:]}",
    # '/' is a z85 character: a key beginning with it was a path in the root, a directory that exists, and
    # shown (the random key of "one less" began with it once in a full run)
    "slash first": lambda secret: "/" + secret[1:],
    "slash first, one less": lambda secret: "/" + secret[1:-1],
    "dot slash first, one less": lambda secret: "./" + secret[2:-1],  # (a review: shown in the directory ".")
}


@pytest.mark.parametrize("form", NEAR_MISSES)
def test_a_secret_key_near_a_keys_shape_given_as_the_curve_secret_path_was_printed_in_the_error(form, tmp_path):
    # A review: a secret key quoted (from a .env file), assigned, a character off or split passed for a path,
    # and `tiger serve` said "cannot read --curve-secret <the key>: No such file", tiger.serve() a bare
    # FileNotFoundError holding it. A path where no file is is not shown, only its length.
    secret = zmq.curve_keypair()[1].decode()
    given = NEAR_MISSES[form](secret)
    out = subprocess.run(
        [*TIGER, "serve", "--url", "tcp://127.0.0.1:*", "--owner-pid", str(os.getpid()), f"--curve-secret={given}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode != 0
    with pytest.raises((FileNotFoundError, ValueError), match=r"^curve_secret[: ]") as raised:
        tiger.serve("tcp://127.0.0.1:*", curve_secret=given)
    for text in (out.stdout + out.stderr, str(raised.value)):
        assert f"{len(given)} characters" in text and "not shown" in text, text
        assert secret[5:25] not in text, text


@pytest.mark.parametrize("key", ["{cC@d?{y(gPPS2izbRRzpW6ODP6Ypp@glNYqc8i=", "=cC@d?{y(gPPS2izbRRzpW6ODP6Ypp@glNYqc8i:"])
def test_a_key_beginning_or_ending_in_equals_was_printed_by_the_usage_error(key):
    # CI (1 run in about 20): the usage error's words were stripped of "=" before being checked as keys, and "="
    # is one of z85's characters: a public key ending in it was printed whole
    for argv in ([key], [f"--url={key}", "extra"], [f"--curve-secret={key}:", "extra"]):
        out = subprocess.run([*TIGER, "serve", *argv], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert key.strip("=:")[1:-1] not in out.stderr, out.stderr


def test_a_key_file_given_unquoted_to_tiger_serve_was_printed_by_the_usage_error(keyed_writers, tmp_path):
    # A review: `tiger serve --curve-secret $(cat keys/tiger.key)`, unquoted, splits the file into words, and
    # argparse said "unrecognized arguments: <public key> secret: <secret key>". Words that look like a key,
    # and the one after "secret:", are not shown.
    public, secret = (key.decode() for key in zmq.curve_keypair())
    words = f"public: {public}\nsecret: {secret}\n".split()
    for argv in (["--curve-secret", *words], [f"--curve-secret={words[0]}", *words[1:]]):
        out = subprocess.run([*TIGER, "serve", "--url", "tcp://127.0.0.1:*", *argv], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert "unrecognized arguments: <not shown: a key?>" in out.stderr, out.stderr
        assert "give --curve-secret the key file's path" in out.stderr, out.stderr  # (what to do: a user trial)
        assert secret not in out.stderr and public not in out.stderr, out.stderr


def test_key_mistakes_a_user_trial_met_were_said_as_bare_os_errors(tmp_path):
    # A user trial: tiger keygen into a directory holding a key said "[Errno 17] File exists", and a key
    # directory given as --curve-secret (or curve_secret) "[Errno 21] Is a directory". Each says what to do.
    keys = tmp_path / "keys"
    assert subprocess.run([*TIGER, "keygen", str(keys)], capture_output=True, timeout=60).returncode == 0
    before = (keys / "tiger.key").read_bytes()
    again = subprocess.run([*TIGER, "keygen", str(keys)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1
    assert "tiger.key exists already: tiger keygen never overwrites a key" in again.stderr, again.stderr
    assert (keys / "tiger.key").read_bytes() == before
    out = subprocess.run(
        [*TIGER, "serve", "--url", "tcp://127.0.0.1:*", "--owner-pid", str(os.getpid()), "--curve-secret", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert f"is a directory: give the key file tiger keygen wrote in it ('{keys}/tiger.key')" in out.stderr, out.stderr
    with pytest.raises(IsADirectoryError, match=r"^curve_secret: .* is a directory: give the key file"):
        tiger.serve("tcp://127.0.0.1:*", curve_secret=keys)


# (key given, writer): a key that is no key, none to a writer serving CurveZMQ, one to a writer without it
KEY_MISTAKES = {"bad-key": ("abc", "curve"), "no-key": (None, "curve"), "key-to-plain": ("curve", "plain")}


@pytest.mark.parametrize("mistake", KEY_MISTAKES)
@pytest.mark.parametrize("command", [["stats"], ["dump"], ["compact"], ["drop", "ns"], ["load", "seed.jsonl"]])
def test_commands_given_the_key_by_tiger_server_key_said_to_pass_server_key(
    keyed_writers, tmp_path, monkeypatch, mistake, command
):
    # A user trial: the tiger commands take the key from TIGER_SERVER_KEY only, yet said "server_key must be the
    # 40-character z85 public key", "pass server_key or set TIGER_SERVER_KEY", "(server_key, TIGER_SERVER_KEY)".
    # A command names TIGER_SERVER_KEY only; the Python API names where its key came from.
    (tmp_path / "seed.jsonl").write_text('{"table": "t", "record": {"id": "a"}}\n')
    key, writer = KEY_MISTAKES[mistake]
    url = keyed_writers["plain"] if writer == "plain" else keyed_writers["curve"][0]
    given = keyed_writers["curve"][1] if key == "curve" else key
    out = subprocess.run(
        [*TIGER, *command, "--url", url], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=without_key_env(given)
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "server_key" not in out.stderr and "TIGER_SERVER_KEY" in out.stderr, out.stderr
    said = {
        "bad-key": "TIGER_SERVER_KEY must be the 40-character z85 public key tiger keygen printed",
        "no-key": "it serves CurveZMQ and no server key was given: set TIGER_SERVER_KEY to the public key",
        "key-to-plain": "it serves without CurveZMQ and a server key was given (TIGER_SERVER_KEY): give none",
    }[mistake]
    assert said in out.stderr, out.stderr
    if command == ["stats"]:  # the Python API: the server_key argument, or TIGER_SERVER_KEY when it came from there
        for origin in ("server_key", "TIGER_SERVER_KEY"):
            monkeypatch.delenv("TIGER_SERVER_KEY", raising=False)
            if origin == "TIGER_SERVER_KEY" and given is not None:
                monkeypatch.setenv("TIGER_SERVER_KEY", given)
            with pytest.raises((ValueError, tiger.HandshakeFailed)) as raised:
                tiger.connect(url, timeout=10, server_key=given if origin == "server_key" else None).close()
            if mistake == "bad-key":
                assert str(raised.value).startswith(f"{origin} must be the 40-character z85 public key"), raised.value
            elif mistake == "key-to-plain":
                assert f"a server key was given ({origin}): give none" in str(raised.value), raised.value
            else:  # (no key at all: either way to give one)
                assert "pass server_key or set TIGER_SERVER_KEY to the public key" in str(raised.value), raised.value


@pytest.fixture
def not_zeromq():
    """Starts a tcp://127.0.0.1 listener that is no ZeroMQ peer (``not_zeromq(kind)``, returns its url): "http",
    Python's HTTP server (it says nothing until it is sent a line: a ZeroMQ greeting holds none), or "banner", a
    server that speaks first (as SSH does) and then reads what comes."""
    import http.server
    import socketserver

    stops: list[Any] = []

    def start(kind: str) -> str:
        if kind == "http":

            class Quiet(http.server.BaseHTTPRequestHandler):
                def log_message(self, format: str, *args: object) -> None:  # (its "400 -" lines went to stderr)
                    pass

            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            stops.append(lambda: (server.shutdown(), server.server_close()))
            return f"tcp://127.0.0.1:{server.server_address[1]}"

        class Banner(socketserver.BaseRequestHandler):  # speaks first, as SSH and SMTP do
            def handle(self) -> None:
                try:
                    self.request.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                    while self.request.recv(4096):
                        pass
                except OSError:
                    pass

        banner = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Banner)
        banner.daemon_threads = True
        threading.Thread(target=banner.serve_forever, daemon=True).start()
        stops.append(lambda: (banner.shutdown(), banner.server_close()))
        return f"tcp://127.0.0.1:{banner.server_address[1]}"

    try:
        yield start
    finally:
        for stop_it in stops:
            stop_it()


@pytest.mark.parametrize("kind", ["http", "banner"])
def test_a_command_to_a_port_that_speaks_no_zeromq_waited_out_its_timeout_and_said_did_not_answer(not_zeromq, kind):
    # A user trial: `tiger stats --url tcp://127.0.0.1:PORT` with `python -m http.server PORT` there waited its whole
    # timeout and said "did not answer", though the README says it tells that what answers is no ZeroMQ peer:
    # libzmq's handshake waits for the server's greeting, the server for a line, and no monitor event comes. A
    # probe that sends the start of a greeting and an empty line is answered with what is no ZeroMQ greeting.
    import asyncio

    import tiger.aio
    from tiger._server import NamespaceLease, ping

    url = not_zeromq(kind)
    said = f"the peer at {url} does not speak ZeroMQ: it answered the start of a ZeroMQ greeting with "
    lines = {}
    for command in (["stats"], ["dump"], ["compact"], ["drop", "ns"]):
        started = time.monotonic()
        out = subprocess.run(
            [*TIGER, *command, "--url", url, "--timeout", "10"], capture_output=True, text=True, timeout=60, env=without_key_env()
        )
        assert time.monotonic() - started < 6, out.stderr  # waiting it out takes 10 s
        assert out.returncode == 1 and out.stderr.startswith(f"tiger {command[0]}: {said}"), out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
        lines[command[0]] = out.stderr.split(": ", 1)[1]
    assert lines["dump"] == lines["stats"]  # the same words, the same advice
    for connect in (
        lambda: tiger.connect(url, timeout=10).close(),
        lambda: asyncio.run(tiger.aio.connect(url, timeout=10)),
        lambda: ping(url, timeout=10),
        lambda: NamespaceLease(url, "ns", timeout=10).close(),
    ):
        started = time.monotonic()
        with pytest.raises(tiger.HandshakeFailed, match=f"^{re.escape(said)}"):
            connect()
        assert time.monotonic() - started < 5


def test_tiger_dump_to_a_silent_listener_said_less_than_tiger_stats():
    # What cannot be told (a listener that says nothing whatever it is sent, as a paused writer does): tiger dump
    # said only "did not answer within 1s", where tiger stats says what may be there and what to do.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        lines = {}
        for command in ("stats", "dump"):
            out = subprocess.run(
                [*TIGER, command, "--url", url, "--timeout", "1"],
                capture_output=True,
                text=True,
                timeout=60,
                env=without_key_env(),
            )
            assert out.returncode == 1, out.stderr
            lines[command] = out.stderr.split(": ", 1)[1]
    assert lines["dump"] == lines["stats"], lines
    assert "did not answer within 1s" in lines["dump"] and "a longer --timeout waits for a busy or paused one" in lines["dump"]


def test_a_bare_zeromq_router_given_a_server_key_was_said_to_be_a_tiger_writer_without_curve(keyed_writers):
    # A bare ZeroMQ ROUTER (no tiger writer) with a server key given was said to be "the tiger writer at URL" that
    # "serves without CurveZMQ": its greeting is a writer's. A peer is a tiger writer once it answers a tiger
    # request (made without the key); else it is "the ZeroMQ peer at URL".
    from tiger._server import ping

    key = keyed_writers["curve"][1]
    with zmq.Context() as ctx:
        router = ctx.socket(zmq.ROUTER)
        try:
            url = f"tcp://127.0.0.1:{router.bind_to_random_port('tcp://127.0.0.1')}"
            said = f"the handshake with the ZeroMQ peer at {url} failed: it serves without CurveZMQ and a server key was given"
            out = subprocess.run(
                [*TIGER, "stats", "--url", url], capture_output=True, text=True, timeout=60, env=without_key_env(key)
            )
            assert out.returncode == 1 and out.stderr.startswith(f"tiger stats: {said}"), out.stderr
            for connect in (lambda: tiger.connect(url, timeout=10, server_key=key), lambda: ping(url, 10, key)):
                with pytest.raises(tiger.HandshakeFailed, match=f"^{re.escape(said)}"):
                    connect()
        finally:
            router.close(linger=0)
    plain = keyed_writers["plain"]  # a tiger writer serving without CurveZMQ is said to be one
    with pytest.raises(
        tiger.HandshakeFailed, match=f"^the handshake with the tiger writer at {re.escape(plain)} failed: it serves"
    ):
        ping(plain, 10, key)


# -- fuzz -------------------------------------------------------------------------------------------------


def test_fuzzed_messages_change_nothing(writer):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = (
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
    )
    values = st.recursive(
        scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4), max_leaves=10
    )
    tags = st.sampled_from(["insert", "update", "delete", "clear", "drop_ns", "once_claim", "once_finish", "call", "hello", "x"])
    # a known command with arguments of random types: an integer where a table name goes, etc.
    shaped = st.builds(lambda tag, rest: [tag, *rest], tags, st.lists(values, max_size=7)).filter(lambda m: not _valid(m))
    garbage = st.binary(max_size=300) | shaped.map(p.pack)

    with tiger.connect(writer.url) as client, zmq.Context() as ctx:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(writer.url)
        before = client.stats()["checksum"]

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(garbage, min_size=1, max_size=5))
        def fuzz(messages: list[bytes]) -> None:
            for message in messages:
                sock.send(message)
            sock.send(p.encode_request(p.Stats(999_999)))  # answered after all of them, in order
            while True:
                assert sock.poll(5000), "the writer stopped answering"
                reply = p.decode_reply(sock.recv())
                if reply.req_id == 999_999:
                    assert type(reply) is p.Ok and reply.result["checksum"] == before
                    return

        fuzz()
        sock.close(linger=0)
    assert writer.running


def _valid(message: list[object]) -> bool:
    try:
        p.call_from(message)
    except Exception:
        return False
    return True


def _limited(soft: int, hard: int):
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return limit


def test_a_writer_raises_its_open_file_limit_itself(tmp_path):
    """Each client holds two connections: the usual soft limit of 1024 files capped a writer near 500 clients,
    and libzmq 4.3.5 aborts a writer on ipc that runs out (``Too many open files (src/ipc_listener.cpp:297)``,
    a user trial). The writer raises its soft limit to its hard one (at most 65536)."""
    proc = subprocess.Popen(
        [*TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--owner-pid", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limited(64, 4096),
    )
    try:
        assert read_line(proc, 30).startswith("tiger writer serving at")
        with open(f"/proc/{proc.pid}/limits") as f:
            line = next(line for line in f if line.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        stop(proc)


def test_connections_a_writer_cannot_accept_are_logged_not_silent(tmp_path):
    """A writer out of file descriptors (here its hard limit is 40) refused clients without a word (a user
    trial, tcp: libzmq retries the accept silently). It says so at start, and when it nears the limit."""
    proc = subprocess.Popen(
        [*TIGER, "serve", "--url", "tcp://127.0.0.1:*", "--owner-pid", str(os.getpid()), "--heartbeat", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limited(40, 40),
    )
    clients = []
    try:
        url = read_line(proc, 30).strip().rsplit(" ", 1)[-1]
        refused = 0
        for _ in range(12):  # about 4 to 7 get in
            try:
                clients.append(tiger.connect(url, timeout=1.0))
            except tiger.Unavailable:
                refused += 1
        assert refused > 0 and clients
    finally:
        for client in clients:
            client.close()
        err = stop(proc)
    assert "this writer may open only 40 files (ulimit -n): about 6 clients can connect" in err
    near = r"this writer holds about \d+ of the 40 files it may open \(ulimit -n\): clients beyond cannot connect"
    assert re.search(near, err), err


@contextlib.contextmanager
def reply_proxy(
    open_socket: Any, url: str, writer_url: str, tamper: Callable[[p.Reply, list[bytes]], list[list[bytes]]]
) -> Iterator[None]:
    """A proxy at ``url`` between clients and the writer at ``writer_url``: requests pass as they are; each
    reply goes to its client as the frame lists ``tamper(reply, frames)`` returns (``[frames]``: as
    it is). A DEALER to the writer per socket of a client, for as long as the block runs."""
    front = open_socket(zmq.ROUTER, None)
    front.bind(url)
    backs: dict[bytes, zmq.Socket] = {}
    stop = threading.Event()

    def proxy() -> None:
        poller = zmq.Poller()
        poller.register(front, zmq.POLLIN)
        while not stop.is_set():
            for sock, _ in poller.poll(50):
                if sock is front:
                    identity, *frames = front.recv_multipart()
                    if identity not in backs:
                        backs[identity] = open_socket(zmq.DEALER, writer_url)
                        poller.register(backs[identity], zmq.POLLIN)
                    backs[identity].send_multipart(frames)
                    continue
                identity = next(i for i, back in backs.items() if back is sock)
                frames = sock.recv_multipart()
                for sent in tamper(p.decode_reply(frames[-1]), frames):
                    front.send_multipart([identity, *sent])

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def test_a_garbled_answer_as_a_replica_loaded_its_snapshot_ended_the_replica_and_its_client(open_socket, tmp_path):
    # A review: an undecodable message on the replica's socket while it loaded the snapshot was not skipped
    # as a stray answer, as at any other time, but ended the replica's thread: connect() raised
    # ProtocolError. A proxy between the client and the writer sends one before the snapshot's first chunk.
    garbled: list[bool] = []

    def garble_once(reply: p.Reply, frames: list[bytes]) -> list[list[bytes]]:
        if garbled or type(reply) is not p.SnapshotChunk:
            return [frames]
        garbled.append(True)
        return [[b"\xc1 not msgpack"], frames]

    with tiger.serve() as server:
        with tiger.connect(server.url) as seeder:
            seeder.table("t").insert_many([{"id": f"r{i}"} for i in range(100)])
        with reply_proxy(open_socket, f"ipc://{tmp_path}/proxy", server.url, garble_once):
            with tiger.connect(f"ipc://{tmp_path}/proxy", timeout=5.0) as client:
                assert garbled  # (the proxy did send it)
                assert len(client.table("t").list(limit=100).data) == 100
                client.table("t").insert({"id": "after"})  # the replica goes on
                assert client.replica.failure is None


def test_a_snapshot_chunk_lost_on_the_way_was_loaded_without_its_records(open_socket, tmp_path):
    # Found with the CI fault of a join stopped early: a chunk that did not decode was skipped, and the snapshot
    # loaded without its records when its end came (the comment said the join would time out and be tried
    # again): a replica short of records for good, with no error. The snapshot's end says how many records
    # it sent; short of them, the replica asks for it again. A proxy garbles the second chunk of the first.
    chunks: list[int] = []

    def garble_second_chunk(reply: p.Reply, frames: list[bytes]) -> list[list[bytes]]:
        if type(reply) is p.SnapshotChunk:
            chunks.append(reply.req_id)
            if len(chunks) == 2:
                return [[b"\xc1 not msgpack"]]
        return [frames]

    with tiger.serve() as server:
        with tiger.connect(server.url) as seeder:  # about 400 kB: several chunks of about 128 kB
            seeder.table("t").insert_many([{"id": f"r{i}", "pad": "x" * 1000} for i in range(400)])
        with reply_proxy(open_socket, f"ipc://{tmp_path}/proxy", server.url, garble_second_chunk):
            with tiger.connect(f"ipc://{tmp_path}/proxy", timeout=5.0) as client:
                assert len(set(chunks)) == 2  # the snapshot was asked again
                assert client.table("t").count() == 400
                assert sorted(r["id"] for r in client.table("t").all()) == sorted(f"r{i}" for i in range(400))


def test_a_running_replica_whose_resync_snapshots_all_came_short_stopped_naming_why(open_socket, tmp_path):
    # Left untested by the session that made it: a replica that joined whole, then resynchronised (here: its
    # writer restarted on its data directory, a new epoch) and got snapshots short of records 3 times in a row
    # (a chunk garbled on the way each time), asked again at every heartbeat for ever, pulling the whole store
    # each time. It stops instead, and what waits on it says why: the writer's snapshots, read short.
    garbled: list[int] = []  # the request ids of the snapshots a chunk of which was garbled
    resyncing = threading.Event()

    def garble_each_snapshots_first_chunk(reply: p.Reply, frames: list[bytes]) -> list[list[bytes]]:
        if type(reply) is p.SnapshotChunk and resyncing.is_set() and reply.req_id not in garbled:
            garbled.append(reply.req_id)
            return [[b"\xc1 not msgpack"]]
        return [frames]

    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    with tiger.serve(url, data=data) as first:
        with tiger.connect(url) as seeder:  # about 400 kB: several chunks of about 128 kB
            seeder.table("t").insert_many([{"id": f"r{i}", "pad": "x" * 1000} for i in range(400)])
        with reply_proxy(open_socket, f"ipc://{tmp_path}/proxy", url, garble_each_snapshots_first_chunk):
            client = tiger.connect(f"ipc://{tmp_path}/proxy", timeout=5.0)
            try:
                assert client.table("t").count() == 400  # joined whole
                resyncing.set()
                first.stop()
                with tiger.serve(url, data=data):  # a new epoch: the replica asks for the store again
                    said = r"sent 3 snapshots this client could not read whole: \d+ of 400 records \(not a msgpack message"
                    with pytest.raises(tiger.Unavailable, match=said):
                        client.sync(timeout=10.0)
                    assert len(garbled) == 3  # asked 3 times, then stopped: not once a heartbeat for ever
                    with pytest.raises(tiger.Unavailable, match="could not read whole"):
                        client.table("t").insert({"id": "after"})
                    assert len(garbled) == 3
            finally:
                client.close()


def test_an_async_connects_key_probe_waited_behind_the_applications_jobs_in_the_default_executor(keyed_writers):
    # A review: tiger.aio made its probes (the handshake, a silent writer's url) with asyncio.to_thread, in the
    # loop's default executor. An application whose blocking jobs (run_in_executor) held every thread of it had
    # a wrong key said only when they ended: here 15 s, against a second with the executor free. tiger's
    # probes now run in threads of its own.
    import asyncio
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import tiger.aio

    url, key, says = wrong_key(keyed_writers, "another-key")
    release = threading.Event()

    async def main() -> float:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(1))
        job = loop.run_in_executor(None, release.wait, 15)  # the application's job, holding the executor's thread
        started = time.monotonic()
        try:
            with pytest.raises(tiger.HandshakeFailed, match=says):
                await tiger.aio.connect(url, timeout=10, server_key=key)
            return time.monotonic() - started
        finally:
            release.set()
            await job

    assert asyncio.run(main()) < 8  # waiting behind the job took 15 s


def test_a_forked_child_makes_its_own_probe_threads(keyed_writers):
    # tiger's probe threads (tiger._feed.off_loop) are the parent's: a pool carried over by fork counts threads
    # the child does not have, and a probe given to it would never run. The child's async connect still says
    # a wrong key within seconds.
    import asyncio
    import warnings

    import tiger.aio
    from tiger import _feed

    url, key, says = wrong_key(keyed_writers, "another-key")
    with pytest.raises(tiger.HandshakeFailed, match=says):
        asyncio.run(tiger.aio.connect(url, timeout=10, server_key=key))  # the parent's pool, its threads started
    assert _feed._off_loop is not None
    threads = _feed._off_loop[1]
    deadline = time.monotonic() + 10
    # every thread of it idle (as a pool counts them, concurrent.futures' own semaphore): such a pool carried over
    # by fork takes the child's probe for one of them, and starts no thread (busy, it would start one)
    while threads._idle_semaphore._value < len(threads._threads):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the probe threads never went idle"
        time.sleep(0.01)  # sleep-ok: a thread pool's bookkeeping, no socket
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: what this test is about
        pid = os.fork()
    if pid == 0:  # the child: reports by exit code only
        code = 1
        try:
            asyncio.run(asyncio.wait_for(tiger.aio.connect(url, timeout=10, server_key=key), 8))
        except tiger.HandshakeFailed:
            code = 0
        except asyncio.TimeoutError:  # (the probe never ran: it waits for good)
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30  # (the child ends within its 8 s; killed past 30, not left to hang the run)
    while (ended := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)  # sleep-ok: waiting for a child process to end, no socket
    assert os.waitstatus_to_exitcode(ended[1]) == 0


SLOW_HOST = "tiger-slow-lookup.test"  # (.test: reserved, RFC 2606; its lookups are made slow here)


@pytest.fixture
def slow_resolver(monkeypatch):
    """Python's lookups of SLOW_HOST take 5 s, as glibc's with a name server that does not answer (5 s per try)."""
    import socket

    from tiger import _lookup

    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW_HOST:
            time.sleep(5)  # sleep-ok: a resolver that does not answer, no socket of tiger's
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(_lookup, "getaddrinfo", getaddrinfo)  # (tiger looks up through the C socket module)
    monkeypatch.setattr(_lookup, "_lookups", {})  # (not joined to a slow lookup an earlier test left in flight)
    monkeypatch.setattr(_lookup, "_found", {})
    monkeypatch.setattr(_lookup, "_failed", {})


@pytest.mark.parametrize("kind", ["connect", "command", "greeting"])
def test_a_lookup_of_a_writers_host_name_took_the_resolvers_whole_time_past_the_timeout(slow_resolver, kind, capsys):
    # A review: what tiger tells of a url at a call's end (does its host resolve?) and its greeting probe looked
    # the host up with no bound: with a name server that does not answer, a connect(timeout=1) took 6 s, and
    # `tiger stats` 5 s before it even tried. A lookup now has LOOKUP_WAIT (1 s); then nothing is said of the name.
    import socket

    from tiger import _cli, _server

    with socket.socket() as free:  # a port no one listens on (nothing connects there: the name never resolves)
        free.bind(("127.0.0.1", 0))
        url = f"tcp://{SLOW_HOST}:{free.getsockname()[1]}"
    started = time.monotonic()
    if kind == "connect":
        slow = f"did not answer within 1s: the lookup of the host '{SLOW_HOST}' took longer than that"
        with pytest.raises(tiger.Unavailable, match=re.escape(slow)):
            tiger.connect(url, timeout=1)
        bound = 1.0  # (the lookup is tiger's, within the timeout: libzmq's own took the resolver's 5 s per try)
    elif kind == "command":
        assert _cli.main(["stats", "--url", url, "--timeout", "1"]) != 0
        assert f"the lookup of the host '{SLOW_HOST}' took longer than that" in capsys.readouterr().err
        bound = 1.0  # looked up within the timeout; not again in what it says of the silence (4 s, 4 threads)
    else:
        assert _server.zmtp_mechanism(_server.greet(url, 0.5)) is None
        bound = 2 * 0.5
    assert time.monotonic() - started < bound + 1.5  # the resolver's 5 s each, before
