"""A data directory that fills up or turns read-only (issue 11, item 4), on a real, small tmpfs: the
writer stays up, refuses writes saying why, serves reads and snapshots, logs one line per state change,
takes writes again once the directory works, and loses nothing it acknowledged."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_faults import cli_serve, stop

import tiger

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
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w", "--data", str(data), *compact)
    try:
        with tiger.connect(url) as client:
            table = client.table("big")
            acked, refusal = insert_until_refused(table, pace=0.3 if compaction_due else 0.0)
            assert "No space left on device" in refusal and "nothing was applied" in refusal
            assert ("compacting" in refusal) == compaction_due  # which work of the writer's hit the full disk
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
    assert err.count("works again") == 1, err
    # nothing acknowledged was lost: a new writer on the same directory holds every record
    proc, url = cli_serve("--url", f"ipc://{tmp_path}/w2", "--data", str(data))
    try:
        with tiger.connect(url) as client:
            ids = {r["id"] for r in client.table("big").all()}
            assert set(acked) | {"after"} <= ids and "refused" not in ids
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
