"""A data directory that fills up or turns read-only (issue 11, item 4), on a real, small tmpfs: the
writer stays up, refuses writes saying why, serves reads and snapshots, logs one line per state change,
takes writes again once the directory works, and loses nothing it acknowledged.

And one whose files are removed, moved or replaced under the running writer (``rm -rf`` of it, a log
unlinked or renamed over, the lock file removed): the writer refuses writes for good saying what became
of which path, acknowledges nothing that went to a file gone from its path, and never writes into a
directory made at that path since (a second writer's)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _util import read_line
from test_faults import TIGER, _change, _replayed, cli_serve, stop, wait

import tiger
from tiger import _log
from tiger import _protocol as p
from tiger._table import freeze

MIB = 1024 * 1024
RECORD = {"blob": "x" * 20_000}  # about 20 kB packed: a 1 MiB disk fills within about 50 of them


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs of this test's own (root and mount(8) needed), with a filler file to free later."""
    path = tmp_path / "disk"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        (path / "filler").write_bytes(b"\0" * (MIB // 2))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def insert_until_refused(table: tiger.Table, pace: float = 0.0, limit: int = 200) -> tuple[list[str], str]:
    """Insert until the writer refuses: the ids it acknowledged, and its refusal. ``pace``: seconds between
    writes, so that the writer's own work (a compaction due, twice a second) runs between them."""
    acked = []
    for i in range(limit):
        try:
            acked.append(table.insert({"id": f"r{i}", **RECORD})["id"])
        except tiger.TigerError as e:
            return acked, str(e)
        time.sleep(pace)  # sleep-ok: pacing the writes, not waiting for a socket
    pytest.fail(f"the disk never filled up ({len(acked)} records)")


def wait_until_taken(table: tiger.Table, record_id: str, timeout: float = 30.0) -> None:
    """Retry a write (the writer retries its directory every 0.5 to 10 s) until it is taken."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            table.insert({"id": record_id})
            return
        except tiger.TigerError:
            assert time.monotonic() < deadline, "writes were never taken again"
            time.sleep(0.2)  # sleep-ok: the writer retries its directory on its own clock


@pytest.mark.parametrize("compaction_due", [True, False], ids=["compaction-due", "no-compaction"])
def test_a_full_disk_ended_the_writer(small_disk, tmp_path, compaction_due):
    """With a compaction due, a full disk made the writer exit 1 ([Errno 28]) and every client lose it."""
    data = small_disk / "data"
    compact = ["--compact-bytes", "20000"] if compaction_due else []
    free = _free_bytes(small_disk)
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), *compact)
    try:
        with tiger.connect(url) as client:
            table = client.table("big")
            acked, refusal = insert_until_refused(table, pace=0.3 if compaction_due else 0.0)
            assert "No space left on device" in refusal and "nothing was applied" in refusal
            # A compaction short of room for its snapshot is no fault (a user trial: every write was refused
            # from then on, with 40% of the disk free): the writes go on until they find no room themselves.
            assert "compacting" not in refusal
            assert len(acked) * len(RECORD["blob"]) >= 0.8 * free, (len(acked), free)
            assert proc.poll() is None  # the writer is up
            for _ in range(5):  # more refused writes: no more log lines
                with pytest.raises(tiger.TigerError, match="No space left"):
                    table.insert({"id": "refused", **RECORD})
            with tiger.connect(url) as reader:  # reads and snapshots go on
                assert sorted(r["id"] for r in reader.table("big").all()) == sorted(acked)
            (small_disk / "filler").unlink()  # space freed
            wait_until_taken(table, "after")
            assert proc.poll() is None
    finally:
        err = stop(proc)
    assert err.count("cannot write to") == 1, err  # one line per state change, not per write
    assert err.count("has room again") == 1, err
    # nothing acknowledged was lost: a new writer on the same directory holds every record
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w2", "--data", str(data))
    try:
        with tiger.connect(url) as client:
            ids = {r["id"] for r in client.table("big").all()}
            assert set(acked) | {"after"} <= ids and "refused" not in ids
    finally:
        stop(proc)


def _free_bytes(path: Any) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_after_a_full_disk_writes_came_back_only_once_a_snapshot_of_the_whole_store_fitted(small_disk, tmp_path):
    """A user trial: once the disk had been full, the writer took no write until it had written a snapshot
    of every record (its fault's retry), so room freed for a few records brought none back. A write the disk
    had no room for ends its fault at the first later write that fits."""
    data = small_disk / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data))
    try:
        with tiger.connect(url) as client:
            table = client.table("big")
            acked, refusal = insert_until_refused(table)
            assert "each later write is tried again" in refusal
            store = sum(f.stat().st_size for f in data.iterdir())
            os.truncate(small_disk / "filler", MIB // 2 - 128 * 1024)  # room for a few records, not the store
            assert _free_bytes(small_disk) < store
            table.insert({"id": "after", **RECORD})  # taken at once: nothing waits for room for the store
            assert client.stats()["data"]["fault"] is None
    finally:
        err = stop(proc)
    assert err.count("cannot write to") == 1 and err.count("has room again") == 1, err
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w2", "--data", str(data))
    try:
        with tiger.connect(url) as client:
            assert {r["id"] for r in client.table("big").all()} == {*acked, "after"}
    finally:
        stop(proc)


def test_tiger_load_on_a_full_disk_loaded_part_of_the_seed_and_said_nothing_was_applied(small_disk, tmp_path):
    """A user trial: a seed of two tables, on a disk with room for one: `tiger load` loaded the first table
    (one write per table) and failed on the second saying "nothing was applied"; the README promises a seed
    loads whole or not at all. A seed that fits in one message now goes as one write."""
    import json

    data = small_disk / "data"
    seed = tmp_path / "seed.jsonl"
    rows = [{"table": t, "record": {"id": f"{t}_{i}", "pad": "x" * 1000}} for t in ("s1", "s2") for i in range(300)]
    seed.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert seed.stat().st_size > _free_bytes(small_disk) > seed.stat().st_size // 2  # room for one table
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "always")
    try:
        out = subprocess.run([*TIGER, "load", str(seed), "--url", url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "No space left on device" in out.stderr, out.stderr
        assert "nothing was applied" in out.stderr
        with tiger.connect(url) as client:
            assert len(client.table("s1")) == len(client.table("s2")) == 0
            client.table("t").insert({"id": "small"})  # a write that fits is taken
    finally:
        stop(proc)


def test_a_read_only_data_directory_is_refused_at_start_naming_why(small_disk, tmp_path):
    """A directory that is read-only when the writer starts: it cannot keep anything, so it does not start
    (exit 3), saying why. (One that turns read-only while the writer runs cannot be made here: the kernel
    refuses to remount a file system read-only while a file on it is open for writing.)"""
    (small_disk / "data").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    done = subprocess.run(
        [sys.executable, "-m", "tiger", "serve", "--url", f"ipc://{tmp_path}/w", "--data", str(small_disk / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert "cannot use the data directory" in done.stderr and "Read-only file system" in done.stderr


def test_serve_said_only_exited_with_code_3_of_a_data_directory_in_a_read_only_place(small_disk, tmp_path):
    """``tiger.serve(data=...)`` in a read-only place said "exited with code 3 ... (its log is above)"; the
    writer's reason is in the exception now (``tiger serve`` says it, naming ``--data``)."""
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    data = small_disk / "data"
    why = rf"the data directory \(--data\): \[Errno 30\] cannot make or open the directory {data} \(Read-only file system\)"
    with pytest.raises(tiger.TigerError, match=rf"exited with code 3 before it was ready: tiger: cannot use {why}$"):
        tiger.serve(data=data)
    done = subprocess.run([*TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--data", str(data)], capture_output=True, text=True)
    assert done.returncode == 3 and re.search(why, done.stderr), done.stderr


# -- the data directory's files removed, moved or replaced under the writer ----------------------------


def _refused_writes(table: tiger.Table, message: str) -> None:
    """Writes are refused, now and again, with an error holding ``message`` (a regular expression)."""
    for i in range(3):
        with pytest.raises(tiger.TigerError, match=message + ".*nothing was applied.*restart it"):
            table.insert({"id": f"refused{i}"})


def _ids(data, tmp_path) -> set[str]:
    """The ids a new writer started on ``data`` holds (the directory as it is on disk)."""
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/r", "--data", str(data))
    try:
        with tiger.connect(url) as client:
            return {r["id"] for r in client.table("t").all()}
    finally:
        stop(proc)


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_acknowledged_writes_were_lost_when_the_data_directory_was_removed(tmp_path, fsync):
    """A user trial: ``rm -rf`` of the data directory under a running writer (a test suite's tmp cleanup).
    Writes were acknowledged, under --fsync always too, while they went to an unlinked log: lost at the
    next start. Now they are refused, naming the path and what happened, under every policy (a write
    to an unlinked file is not even in the OS for a later start), and reads go on."""
    data = tmp_path / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", fsync)
    try:
        with tiger.connect(url) as client:
            table = client.table("t")
            table.insert({"id": "before"})
            shutil.rmtree(data)
            removed = f"the data directory {data} was removed while this writer ran"
            _refused_writes(table, re.escape(removed))
            assert client.stats()["data"]["fault"] == removed
            with tiger.connect(url) as reader:  # reads and joins go on, from what the writer holds
                assert [r["id"] for r in reader.table("t").all()] == ["before"]
            assert proc.poll() is None
    finally:
        err = stop(proc)
    assert err.count("was removed while this writer ran: writes are refused until this writer is restarted") == 1, err
    assert not data.exists()  # nor was it made again


def test_tiger_stats_did_not_show_the_data_directory_nor_its_fault(tmp_path):
    """A user trial: ``client.stats()`` said the data directory was removed; ``tiger stats`` said nothing of
    the data directory at all. It shows where it is, its fsync, its log and its fault."""
    data = tmp_path / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "always")
    try:

        def tiger_stats() -> str:
            out = subprocess.run([*TIGER, "stats", "--url", url], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            return out.stdout

        shown = tiger_stats()
        assert re.search(rf"^data\s+{re.escape(str(data))}$", shown, re.M) and re.search(r"^fsync\s+always$", shown, re.M)
        assert re.search(r"^log\s+0 bytes$", shown, re.M) and re.search(r"^fault\s+none$", shown, re.M), shown
        shutil.rmtree(data)
        with tiger.connect(url) as client:
            wait(lambda: client.stats()["data"]["fault"] is not None, what="the fault in stats")
        fault = f"the data directory {data} was removed while this writer ran: writes are refused"
        assert re.search(rf"^fault\s+{re.escape(fault)}$", tiger_stats(), re.M)
    finally:
        stop(proc)


def test_an_idle_writer_did_not_notice_its_data_directory_was_removed(tmp_path):
    """With no write coming, nothing checked the directory: ``stats`` said all was well. Its heartbeat checks
    it now (one stat, twice a second)."""
    data = tmp_path / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "never")
    try:
        with tiger.connect(url) as client:
            shutil.rmtree(data)
            wait(lambda: client.stats()["data"]["fault"] is not None, what="the fault in stats")
            assert client.stats()["data"]["fault"] == f"the data directory {data} was removed while this writer ran"
    finally:
        err = stop(proc)
    assert "was removed while this writer ran" in err, err


def test_a_compaction_of_a_writer_whose_directory_was_removed_wrote_over_a_second_writers_directory(tmp_path):
    """The directory removed, a second writer started on its path (nothing can keep it out: its lock is a new
    file in a new directory). The first writer's compaction, asked for or due, made its files by path: its
    snapshot replaced the second writer's, and the second's log (an older generation) was removed with
    every write it had acknowledged. Now every file is opened in the directory the writer opened, and the
    compaction fails saying what became of it."""
    data = tmp_path / "data"
    with writer_then_another_on_its_removed_directory(tmp_path, data) as (url1, url2):
        with tiger.connect(url2) as client:
            client.table("t").insert({"id": "second"})
            out = subprocess.run([*TIGER, "compact", "--url", url1], capture_output=True, text=True, timeout=30)
            assert out.returncode == 1 and f"the data directory {data} was removed" in out.stderr, out
            client.table("t").insert({"id": "second-after"})
    assert _ids(data, tmp_path) == {"second", "second-after"}


def test_two_writers_acknowledged_writes_for_one_path_after_its_data_directory_was_removed(tmp_path):
    """The second writer on the path of a removed directory cannot be kept out; the first refuses every write
    from then on (before: both acknowledged writes, and the first writer's were lost)."""
    data = tmp_path / "data"
    with writer_then_another_on_its_removed_directory(tmp_path, data) as (url1, url2):
        with tiger.connect(url1) as client1, tiger.connect(url2) as client2:
            client2.table("t").insert({"id": "second"})
            _refused_writes(client1.table("t"), "was removed while this writer ran")
            client2.table("t").insert({"id": "second-after"})
    assert _ids(data, tmp_path) == {"second", "second-after"}


@contextlib.contextmanager
def writer_then_another_on_its_removed_directory(tmp_path, data) -> Iterator[tuple[str, str]]:
    """A writer on ``data`` acknowledges a write ("first"); its directory is removed and a second writer
    started on the path. Yields both urls; both writers are stopped on the way out."""
    first, url1 = cli_serve("--url", f"ipc://{tmp_path}/w1", "--data", str(data), "--fsync", "always")
    second = None
    try:
        with tiger.connect(url1) as client:
            client.table("t").insert({"id": "first"})
        shutil.rmtree(data)
        second, url2 = cli_serve("--url", f"ipc://{tmp_path}/w2", "--data", str(data), "--fsync", "always")
        yield url1, url2
    finally:
        stop(first)
        if second is not None:
            stop(second)


def _start_refused(tmp_path, data) -> str:
    """Start a writer on ``data`` that must be refused: its stderr (one that starts fails the test)."""
    command = [*TIGER, "serve", "--owner-pid", str(os.getpid()), "--url", f"ipc://{tmp_path}/w2", "--data", str(data)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = read_line(proc, 30)
    if line.startswith("tiger writer serving at"):
        stop(proc)
        pytest.fail(f"a second writer started on {data}, whose first writer runs")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    return err


def test_a_second_writer_started_on_a_data_directory_whose_lock_file_was_removed(tmp_path):
    """``rm DIR/lock`` under a running writer: a second writer made a new lock file, locked it and started on
    the same directory (two writers appending to one log). The writer now also holds a lock on the directory
    itself, which no removal of a file inside it lets go, and makes the lock file again."""
    data = tmp_path / "data"
    first, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "always")
    try:
        with tiger.connect(url) as client:
            client.table("t").insert({"id": "before"})
            os.unlink(data / "lock")
            in_use = rf"{re.escape(str(data))} is in use by the tiger writer with pid ({first.pid}|unknown)"
            assert re.search(in_use, _start_refused(tmp_path, data))  # (unknown: the lock file is not made again yet)
            lock = data / "lock"
            wait(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), what="the lock file made again")
            assert f"is in use by the tiger writer with pid {first.pid}" in _start_refused(tmp_path, data)
            client.table("t").insert({"id": "after"})  # its own files are in place: it goes on
            assert client.stats()["data"]["fault"] is None
    finally:
        err = stop(first)
    assert f"{data / 'lock'} was removed or replaced while this writer ran: made again" in err, err
    assert _ids(data, tmp_path) == {"before", "after"}


@pytest.mark.parametrize("then", ["moved", "copied back"])
def test_acknowledged_writes_went_to_a_data_directory_moved_away_under_the_writer(tmp_path, then):
    """``mv DIR elsewhere`` (and perhaps a copy of it put back at DIR) under a running writer: its writes went
    on into the moved directory, acknowledged, and a start on DIR did not have them."""
    data, moved = tmp_path / "data", tmp_path / "moved"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "always")
    try:
        with tiger.connect(url) as client:
            table = client.table("t")
            table.insert({"id": "before"})
            os.rename(data, moved)
            what = f"the data directory {data} was moved to {moved} while this writer ran"
            if then == "copied back":
                shutil.copytree(moved, data, ignore=shutil.ignore_patterns("lock"))
                what += ", and another directory is at that path now"
            _refused_writes(table, re.escape(what))
    finally:
        stop(proc)
    assert _ids(moved, tmp_path) == {"before"}  # nothing more went there
    if then == "copied back":
        assert _ids(data, tmp_path) == {"before"}


@pytest.mark.parametrize("how", ["removed", "renamed", "replaced by another file"])
def test_acknowledged_writes_went_to_a_log_removed_or_replaced_under_the_writer(tmp_path, how):
    """The log alone unlinked, renamed, or replaced by a rename over it: writes were acknowledged into a file
    no start would read (or a start would read under another name)."""
    data = tmp_path / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "always")
    log0 = data / "log.0"
    try:
        with tiger.connect(url) as client:
            table = client.table("t")
            table.insert({"id": "before"})
            if how == "removed":
                os.unlink(log0)
            elif how == "renamed":
                os.rename(log0, data / "log.0.bak")
            else:
                (data / "log.new").write_bytes(log0.read_bytes())
                os.rename(data / "log.new", log0)
            _refused_writes(table, re.escape(f"the log {log0} was {how} while this writer ran"))
            assert proc.poll() is None
    finally:
        stop(proc)


def test_a_group_whose_log_was_removed_during_its_fsync_was_acknowledged(tmp_path, monkeypatch):
    """The directory removed between a group's appends and its fsync (here: during it): the fsync succeeds,
    on an unlinked file. It was answered Ok. Now the writer refuses writes, and the group's write is
    answered that it may have been applied (it is in the writer's memory), never published."""
    from test_core import ALICE, BOB, insert

    data = tmp_path / "data"
    rig, d = _rig_over(data)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        shutil.rmtree(data, ignore_errors=True)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    outbox = rig.send(rig.encode(ALICE, insert(2)), rig.encode(BOB, p.Sync(7)))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert rig.core.disk_fault == f"the data directory {data} was removed while this writer ran"
    answers = {r.req_id: r for r in (p.decode_reply(a) for *_, a in outbox.replies)}
    assert type(answers[2]) is p.Failed and _MAY_HAVE_BEEN_APPLIED in answers[2].message  # not Ok, nor "nothing applied"
    assert answers[7] == p.Ok(7, rig.core.epoch, 1, None)  # a sync in its group: the seq before it (its replica's)
    assert not [m for _, m in outbox.published if type(p.decode_published(m)) is not p.Heartbeat]  # never published
    assert type(rig.call(ALICE, insert(3))) is p.Failed
    d.close()


_MAY_HAVE_BEEN_APPLIED = "this write may have been applied"


def _rig_over(data) -> tuple[Any, _log.DataDir]:
    """The core's test rig over a real data directory (fsync always) that took ALICE's write 1; and the directory."""
    from test_core import ALICE, Rig, insert

    d = _log.DataDir(str(data), fsync="always")
    d.load(p.unpack)
    rig = Rig(d)  # type: ignore[arg-type]
    assert type(rig.call(ALICE, insert(1))) is p.Ok
    return rig, d


def _held_write(data, monkeypatch) -> tuple[Any, _log.DataDir]:
    """``_rig_over`` holding ALICE's write 2 too: its fsync failed once."""
    from test_core import ALICE, insert

    rig, d = _rig_over(data)
    real_fsync = os.fsync

    def failing(fd: int) -> None:
        monkeypatch.setattr(os, "fsync", real_fsync)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    assert rig.send(rig.encode(ALICE, insert(2))).replies == []  # held: the fault's retry may yet make it durable
    return rig, d


def test_a_held_write_was_never_answered_once_its_data_directory_was_removed(tmp_path, monkeypatch):
    """A group held (its fsync failed) when the directory is then removed can never be made durable, yet the
    writer went on holding it: its caller got "did not answer within 5s". It is answered when the loss is
    found, saying it may have been applied (it is in the writer's memory), and a resend gets the same."""
    from test_core import ALICE, insert

    rig, d = _held_write(tmp_path / "data", monkeypatch)
    shutil.rmtree(tmp_path / "data")
    rig.advance(1.0)
    [[_, answer]] = rig.tick().replies
    failed = p.decode_reply(answer)
    assert type(failed) is p.Failed and failed.kind == "disk" and _MAY_HAVE_BEEN_APPLIED in failed.message
    assert "was removed while this writer ran" in failed.message
    assert [p.decode_reply(a) for *_, a in rig.send(rig.encode(ALICE, insert(2))).replies] == [failed]  # a resend
    d.close()


def test_a_held_write_was_never_answered_when_the_writer_stopped(tmp_path, monkeypatch):
    """A writer stopped while it held a group (its fsync failed) left the callers to their timeout: they are
    answered as it stops, that their writes may have been applied (the log holds them)."""
    rig, d = _held_write(tmp_path / "data", monkeypatch)
    assert rig.core.holding
    rig.core.stop_work()
    [[_, answer]] = rig.core.take_outbox().replies
    failed = p.decode_reply(answer)
    assert type(failed) is p.Failed and "the writer stopped while this write was held" in failed.message
    assert "it may have been applied" in failed.message and not rig.core.holding
    d.close()


REMOVED_IN_FSYNC = """
import os, shutil, sys
from tiger import _writer

url, data, arm, owner = sys.argv[1:]
real_fsync = os.fsync


def fsync(fd):  # the directory removed during a group's fsync, once the test asks for it
    if os.path.exists(arm):
        os.unlink(arm)
        shutil.rmtree(data)
    real_fsync(fd)


os.fsync = fsync
sys.exit(_writer.serve_forever(url, data=data, fsync="always", owner_pid=int(owner)))
"""


def test_a_write_in_flight_when_the_data_directory_was_removed_got_only_a_timeout(tmp_path):
    """A user trial: the data directory removed while a write was in flight (after its group's first append,
    before its commit). The writer logged the loss and held the group for good: the write raised only
    "did not answer within 5s". It raises the writer's error now, at once, saying the write may have been
    applied; it is never published, and later writes are refused as before."""
    data, arm = tmp_path / "data", tmp_path / "arm"
    command = [sys.executable, "-c", REMOVED_IN_FSYNC, f"ipc://{tmp_path}/w", str(data), str(arm), str(os.getpid())]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(proc, 30)
        assert line.startswith("tiger writer serving at"), line
        url = line.strip().rsplit(" ", 1)[-1]
        with tiger.connect(url, timeout=5.0) as client, tiger.connect(url) as reader:
            table = client.table("t")
            table.insert({"id": "before"})
            arm.touch()
            started = time.monotonic()
            with pytest.raises(tiger.TigerError) as raised:
                table.insert({"id": "in-flight"})
            assert time.monotonic() - started < 2.0 and not isinstance(raised.value, tiger.Unavailable)
            message = str(raised.value)
            assert f"the data directory {data} was removed while this writer ran" in message
            assert _MAY_HAVE_BEEN_APPLIED in message and "nothing was applied" not in message
            _refused_writes(table, "was removed while this writer ran")
            reader.sync()
            client.sync()
            assert [r["id"] for r in reader.table("t").all()] == ["before"]  # never published
            assert [r["id"] for r in table.all()] == ["before"]
    finally:
        err = stop(proc)
    assert "answered 1 held calls, 1 of them refused" in err, err


def test_a_snapshot_tmp_replaced_during_a_compaction_was_put_in_place_as_the_snapshot(tmp_path):
    """Another file renamed over ``snapshot.tmp`` while a compaction wrote it (by fd): the rename put that file
    in place as the snapshot and removed the log it replaced (the next start: corrupt, or a store that never
    was). The compaction fails now, and the file is not its to remove."""
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.append(_change(1))
    compaction = d.begin_compaction(p.pack, {"t": {"global": [freeze({"id": "r1", "n": 1, "created": 1})]}})
    (data / "other").write_bytes(b"not a snapshot")
    os.rename(data / "other", data / "snapshot.tmp")
    with pytest.raises(OSError, match=r"snapshot\.tmp was removed or replaced while this writer wrote it"):
        while not compaction.step():
            pass
    assert d.compaction is None and (data / "snapshot.tmp").read_bytes() == b"not a snapshot"
    d.close()
    assert _replayed(data)[:2] == ([], [1])


def test_an_rm_rf_of_the_data_directory_failed_as_the_writer_made_its_lock_file_again(tmp_path):
    """A review: ``rm -rf`` unlinks the lock file, then the logs, then the directory; a writer's tick
    between the unlinks made the lock file again, and the rmdir failed (ENOTEMPTY: ``['lock']``). The
    lock file is made again only when a second tick still finds it gone with the log in place."""
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.append(_change(1))
    os.unlink(data / "lock")
    d.tick()  # between the removal's unlinks
    assert not (data / "lock").exists()
    shutil.rmtree(data)  # the rest of it: ENOTEMPTY when the lock was made again
    with pytest.raises(_log.DataDirLost, match="removed"):
        d.tick()
    d.close()


def test_a_lock_file_that_could_not_be_made_was_named_by_its_bare_name(tmp_path):
    # A user trial: a read-only data directory was refused with "[Errno 30] Read-only file system: 'lock'", and
    # a full one's lock file as "No space left on device" alone; the error now names the lock file's whole path.
    # (Here a directory stands where the lock file goes: the same open that a read-only or full one fails.)
    data = tmp_path / "data"
    (data / "lock").mkdir(parents=True)
    with pytest.raises(OSError, match=rf"^\[Errno {errno.EISDIR}\] cannot make the lock file {re.escape(str(data / 'lock'))} "):
        _log.DataDir(str(data))


def test_a_lock_file_removed_alone_is_made_again_at_the_next_tick(tmp_path):
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    os.unlink(data / "lock")
    d.tick()
    d.tick()
    assert (data / "lock").read_text().strip() == str(os.getpid())
    d.close()


# -- a start that failed after it made the data directory ------------------------------------------------------

FAILS_TO_BIND = """
import os, sys
from tiger import _writer

url, data, owner = sys.argv[1:]
real_unlink = os.unlink
gate = [True]


def unlink(path, *args, **kwargs):  # its first removal of a file it made waits for the test to go on
    if gate and os.path.basename(os.fsdecode(path)) in ("lock", "log.0"):
        gate.clear()
        print("removing", flush=True)
        sys.stdin.readline()
    return real_unlink(path, *args, **kwargs)


os.unlink = os.remove = unlink
sys.exit(_writer.serve_forever(url, data=data, owner_pid=int(owner)))
"""


def test_a_writer_that_could_not_bind_removed_the_files_of_the_writer_that_took_its_new_data_directory(tmp_path):
    """A start that made its data directory and failed at its bind (the url in use) removed what it made only
    after letting its locks go, by path: a second writer that took the directory in between had its lock and
    log removed, and its directory with them. The removal is done while the locks are held now: a writer
    started during it is refused (the directory is in use); one started after it finds no directory, and
    makes its own."""
    data = tmp_path / "data"
    with tiger.serve(f"ipc://{tmp_path}/w", timeout=5.0) as in_use:
        command = [sys.executable, "-c", FAILS_TO_BIND, in_use.url, str(data), str(os.getpid())]
        first = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        second = None
        try:
            assert read_line(first, 30) == "removing\n"  # its bind failed: it removes what it made, held at the first file
            command = [*TIGER, "serve", "--owner-pid", str(os.getpid()), "--url", f"ipc://{tmp_path}/w2", "--data", str(data)]
            second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started = read_line(second, 30).startswith("tiger writer serving at")
            first.stdin.write("\n")  # type: ignore[union-attr]
            first.stdin.flush()  # type: ignore[union-attr]
            _, err = first.communicate(timeout=30)
            assert first.returncode == 2 and "cannot bind" in err, err
            if started:  # it took the directory the first had let go: its files must stand
                left = sorted(os.listdir(data)) if data.exists() else "no directory"
                pytest.fail(f"the writer that could not bind removed the files of the writer that took {data} after it: {left}")
            _, err = second.communicate(timeout=30)
            assert second.returncode == 3 and f"{data} is in use by the tiger writer with pid {first.pid}" in err, err
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    stop(proc)
    assert not data.exists()  # what the failed start made is gone
    assert _ids(data, tmp_path) == set()  # and a writer started now makes the directory afresh


def test_a_failed_start_removed_the_files_of_another_directory_put_at_its_path(tmp_path):
    """What a failed start made was removed by path: another directory at that path by then (the one it made
    moved away, another made there) lost its lock and empty log, and was removed. It is removed through the
    directory the start opened, and a directory only if the path still names the one it made."""
    data, moved = tmp_path / "new" / "data", tmp_path / "moved"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    os.rename(data, moved)
    data.mkdir()
    (data / "lock").write_text("another writer's\n")
    (data / "log.0").write_bytes(b"")
    d.remove_made()
    d.close()
    assert sorted(os.listdir(data)) == ["lock", "log.0"] and os.listdir(moved) == []  # only its own files went


# -- the snapshot, or a log a start still reads, removed or replaced under the writer ---------------------------


@pytest.mark.parametrize("how", ["removed or renamed", "replaced by another file", "changed in place"])
def test_a_snapshot_removed_or_replaced_under_the_writer_went_unnoticed(tmp_path, how):
    """``rm DIR/snapshot`` (or another file put in its place) under a running writer: it went on taking writes,
    and a restart lost what the snapshot held (or read another store). It is found at the next tick, as the
    directory's loss is: writes refused for good, naming the file, in ``stats()`` and one log line."""
    data = tmp_path / "data"
    snapshot = data / "snapshot"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "always")
    try:
        with tiger.connect(url) as client:
            table = client.table("t")
            table.insert({"id": "before"})
            out = subprocess.run([*TIGER, "compact", "--url", url], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0 and snapshot.exists(), out
            table.insert({"id": "after-compaction"})
            size = snapshot.stat().st_size
            if how == "removed or renamed":
                os.unlink(snapshot)
            elif how == "replaced by another file":
                (data / "other").write_bytes(snapshot.read_bytes())
                os.rename(data / "other", snapshot)
            else:
                os.truncate(snapshot, 0)
                how = f"changed in place ({size} bytes, now 0)"
            lost = f"the snapshot {snapshot} was {how} while this writer ran"
            wait(lambda: client.stats()["data"]["fault"] is not None, what="the fault in stats")
            assert client.stats()["data"]["fault"] == lost
            _refused_writes(table, re.escape(lost))
            assert [r["id"] for r in table.all()] == ["after-compaction", "before"]  # reads go on
            assert proc.poll() is None
    finally:
        err = stop(proc)
    assert err.count(f"{lost}: writes are refused until this writer is restarted") == 1, err


def test_a_writer_restarted_on_a_directory_whose_snapshot_was_removed_started_empty_without_a_word(tmp_path):
    """A user trial: after the snapshot was removed (the running writer refused writes for it), a writer
    started on the directory found only the log after the compaction, said "loaded 0 records" and served an
    empty store: the records the snapshot held were gone without a word. A log after a compaction with no
    snapshot before it now refuses the start, naming both, and changes nothing."""
    data = tmp_path / "data"
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), "--fsync", "always")
    try:
        with tiger.connect(url) as client:
            client.table("t").insert({"id": "before"})
            out = subprocess.run([*TIGER, "compact", "--url", url], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out
    finally:
        stop(proc)
    os.unlink(data / "snapshot")
    files = sorted(os.listdir(data))
    out = subprocess.run(
        [*TIGER, "serve", "--url", f"ipc://{tmp_path}/w2", "--data", str(data)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 3, out
    assert f"follows a compaction, but {data / 'snapshot'}, which holds every record before it, is not there" in out.stderr
    assert sorted(os.listdir(data)) == files


def test_a_snapshot_put_in_a_data_directory_that_had_none_went_unnoticed(tmp_path):
    """Another store's snapshot copied into a directory whose writer has written none yet: a restart reads it
    (and the log after it, or not, by generation): another store than the one acknowledged."""
    data, other = tmp_path / "data", tmp_path / "other"
    d = _log.DataDir(str(other))
    d.load(p.unpack)
    d.begin_compaction(p.pack, {}).step()
    d.close()
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.tick()
    shutil.copy(other / "snapshot", data / "snapshot")
    with pytest.raises(_log.DataDirLost, match=rf"^the snapshot {re.escape(str(data / 'snapshot'))} was put there by another"):
        d.tick()
    d.close()


@pytest.mark.parametrize("when", ["compaction under way", "left by a crash"])
def test_an_earlier_log_a_start_still_reads_removed_under_the_writer_went_unnoticed(tmp_path, when):
    """The log before the one appended to is still read by a start until a snapshot holds it: while a
    compaction writes its snapshot, and after a start that found a compaction cut short by a crash (its
    snapshot never put in place) until the next one ends. Only the log appended to was checked: removing the
    earlier one lost its changes from a restart, unnoticed."""
    data = tmp_path / "data"
    d = _log.DataDir(str(data))
    d.load(p.unpack)
    d.append(_change(1))
    d.commit()
    d.begin_compaction(p.pack, {"t": {"global": [freeze({"id": "r1", "n": 1, "created": 1})]}})
    if when == "left by a crash":  # the snapshot never in place: a start replays log.0, then log.1
        d.close()
        d = _log.DataDir(str(data))
        assert d.load(p.unpack)[1] and d.generation == 1
    d.tick()
    os.unlink(data / "log.0")
    with pytest.raises(_log.DataDirLost, match=rf"^the log {re.escape(str(data / 'log.0'))} was removed or renamed while"):
        d.tick()
    d.close()
