"""The benchmark suite runs: ``python -m bench --quick --only read`` writes valid JSON. No timing is asserted.

Comparators that are not installed (the bench extra) are skipped by the bench itself,
so this passes with tiger's runtime and test dependencies alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = {"Manager().dict()", "redis", "diskcache", "sqlite3 WAL", "UltraDict"}


def run_quick(tmp_path: Path, scenario: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    """``python -m bench --quick --only SCENARIO``: it must succeed; its output and its JSON (strict: no NaN)."""
    env = {k: v for k, v in os.environ.items() if k != "TIGER_URL"}
    command = [sys.executable, "-m", "bench", "--quick", "--only", scenario, "--out", str(tmp_path)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc, json.loads((tmp_path / f"{scenario}.json").read_text())


def test_quick_read_runs_and_writes_valid_json(tmp_path: Path) -> None:
    proc, data = run_quick(tmp_path, "read")
    assert {
        "scenario",
        "command",
        "quick",
        "machine",
        "versions",
        "method",
        "params",
        "rows",
        "targets",
        "skipped",
        "plot",
    } <= set(data)
    assert data["scenario"] == "read"
    assert data["quick"] is True
    assert data["command"] == f"python -m bench --quick --only read --out {tmp_path}"
    assert {"cores", "cpu", "python", "pyzmq", "libzmq", "date"} <= set(data["machine"])
    assert "perf_counter_ns" in data["method"]

    rows = {(r["case"], r["subject"]): r for r in data["rows"]}
    for case in ("hit", "miss", "hot hit"):
        for subject in ("tiger", "dict", "Python method"):
            row = rows[(case, subject)]
            assert row["unit"] == "ns"
            assert isinstance(row["median"], float) and row["median"] > 0
            assert row["median"] <= row["p99"] <= row["max"]
    ran = {r["subject"] for r in data["rows"]}
    assert SUBJECTS <= ran | set(data["skipped"])  # every peer measured, or skipped with a reason
    assert all(isinstance(reason, str) and reason for reason in data["skipped"].values())

    assert [t["target"] for t in data["targets"]] == [
        "get median within 5x of a bare dict[key] lookup (hot hit)",
        "get median at least 3x faster than the fastest peer (hot hit)",
        "get median within 5x of a bare dict[key] lookup (hit: memory cold)",
        "get median at least 3x faster than the fastest peer (hit: memory cold)",
    ]
    assert all(t["met"] in (True, False, None) for t in data["targets"])
    assert "file" in data["plot"] or "skipped" in data["plot"]
    assert "| hit | tiger |" in proc.stdout  # the results table


def test_quick_plugin_runs_and_writes_valid_json(tmp_path: Path) -> None:
    """``--only plugin``: both variants of every case ran (each run must pass, or the scenario fails), one target a case."""
    proc, data = run_quick(tmp_path, "plugin")
    assert data["scenario"] == "plugin"
    assert data["quick"] is True
    assert "perf_counter" in data["method"]
    cases = ["1 test", "200 tests", "200 tests, -n 2"]
    assert list(data["series"]["wall_ms"]) == [c for c in cases if c not in data["skipped"]]
    rows = {(r["case"], r["subject"]): r for r in data["rows"]}
    for case in data["series"]["wall_ms"]:
        for subject, role in (("plugin", "tiger"), ("-p no:tiger", "floor")):
            row = rows[(case, subject)]
            assert (row["role"], row["unit"], row["samples"]) == (role, "ms", data["params"]["rounds"])
            assert 0 < row["min"] <= row["median"] <= row["max"]
        assert rows[(f"{case}: overhead", "plugin - no:tiger")]["unit"] == "ms"
    targets = [t for t in data["targets"] if t["unit"] == "ms"]
    assert len(targets) == len(data["series"]["wall_ms"])
    assert all(t["met"] in (True, False) for t in targets)
    assert "file" in data["plot"] or "skipped" in data["plot"]
    assert "| 1 test | plugin |" in proc.stdout


def test_quick_join_stall_runs_and_writes_valid_json(tmp_path: Path) -> None:
    """``--only join-stall``: inserts timed in every window, each join timed, the writer's memory read, 3 targets of issue 12."""
    proc, data = run_quick(tmp_path, "join-stall")
    assert data["scenario"] == "join-stall"
    assert data["quick"] is True
    assert data["params"]["records"] <= 5_000
    assert data["params"]["snapshot"]["records"] >= data["params"]["records"]
    rows = {(r["case"], r["subject"]): r for r in data["rows"]}
    for case in ("insert, writer quiet", "insert during a lone join", "insert during 4 joins at once"):
        row = rows[(case, "tiger")]
        assert row["unit"] == "ms" and row["samples"] > 0
        assert 0 < row["median"] <= row["p99"] <= row["max"]
    joins = data["series"]["joins_s"]
    assert len(joins["lone"]) == data["params"]["lone_repeats"]
    assert len(joins["group"]) == len(joins["decode_group"]) == 4
    assert max(joins["group"]) <= joins["all_done"]
    for case in ("lone join", "4 joins at once: all done", "4 joins at once: all done / a lone one"):
        assert rows[(case, "tiger")]["median"] > 0
        assert rows[(case, "msgpack decode + dict")]["role"] == "floor"
    before = rows[("writer RSS before any join", "tiger writer")]["median"]
    peak = rows[("writer peak RSS, 4 joins at once", "tiger writer")]["median"]
    assert 0 < before and 0 < peak
    assert [(t["issue"], t["unit"]) for t in data["targets"]] == [(12, "s"), (12, "x lone join"), (12, "x before")]
    assert all(t["met"] in (True, False) for t in data["targets"])
    assert "file" in data["plot"] or "skipped" in data["plot"]
    assert "### targets (issue 12)" in proc.stdout
    assert "| insert during 4 joins at once | tiger |" in proc.stdout


def test_quick_writers_runs_tiger_with_each_fsync_policy(tmp_path: Path) -> None:
    """``--only writers``: tiger in memory and with --data and each --fsync policy, by process count."""
    proc, data = run_quick(tmp_path, "writers")
    series = data["series"]["writes_per_s"]
    counts = [str(n) for n in data["params"]["processes"]]
    for subject in ("tiger", "tiger --fsync never", "tiger --fsync always"):
        assert list(series[subject]) == counts
        assert all(rate > 0 for rate in series[subject].values())
    assert "--fsync always" in next(r["label"] for r in data["rows"] if r["subject"] == "tiger --fsync always")
    assert list(series["append + fsync"]) == counts  # the disk's fsync rate, just before each of those runs
    fanout = "pyzmq REQ/REP + PUB fan-out"  # the transport of tiger's design alone: a floor, by process count
    assert list(series[fanout]) == counts and all(rate > 0 for rate in series[fanout].values())
    assert next(r["role"] for r in data["rows"] if r["subject"] == fanout) == "floor"
    assert f"| {fanout} (floor) |" in proc.stdout  # in the scaling table
    targets = [t for t in data["targets"] if t["issue"] == 12]
    assert len(targets) == 5  # 4 >= 2x 1 and 8 >= 4 for each policy; 8 >= 4x 1 with always
    assert all(t["met"] is None for t in targets)  # --quick stops at 2 processes: not measured, and said so
    assert "| tiger --fsync always |" in proc.stdout  # the scaling table
    if importlib.util.find_spec("psutil") is not None:  # (the bench extra's): the CPU each write costs, by role
        for subject in ("tiger", fanout):
            for row in (r for r in data["rows"] if r["subject"] == subject):
                cpu = row["cpu_us_per_write"]
                assert cpu["server"] > 0 and cpu["clients"] > 0 and cpu["total"] == cpu["server"] + cpu["clients"]
                assert row["cpu_ceiling"] == pytest.approx(os.cpu_count() * 1e6 / cpu["total"])
            assert any(n.startswith(f"{subject}: CPU per write") for n in data["notes"])


def test_quick_batch_runs_single_calls_and_batches_of_each_size(tmp_path: Path) -> None:
    """``--only batch``: every size sent both ways (and by the floor, both ways), a ratio a size, issue 12's target."""
    proc, data = run_quick(tmp_path, "batch")
    assert data["scenario"] == "batch"
    assert data["quick"] is True
    assert data["params"]["mix_percent"] == {"insert": 60, "update": 30, "delete": 10}
    sizes = data["params"]["sizes"]
    assert 100 in sizes
    series = data["series"]["writes_per_s"]
    for way in ("single calls", "client.batch()", "pyzmq REQ/REP, single calls", "pyzmq REQ/REP, batch"):
        assert list(series[way]) == [str(n) for n in sizes]
        assert all(rate > 0 for rate in series[way].values())
    rows = {(r["case"], r["subject"]): r for r in data["rows"]}
    for n in sizes:
        for case in (f"{n} writes, one call each", f"{n} writes in one client.batch()"):
            row = rows[(case, "tiger")]
            assert row["unit"] == "writes/s" and row["units"] >= 3 * data["params"]["rounds"]
            assert 0 < row["unit_ms"]["median"] <= row["unit_ms"]["max"]
        assert rows[(f"{n} writes: client.batch() / single calls", "tiger")]["median"] > 0
    # every delete found its record (an update that did not would have failed the run): a unit of n leaves n / 2
    # more records (60% in, 10% out), after a seed of 60% of n; each way sent one unit more, as its warm-up
    sent = {
        n: sum(rows[(case, "tiger")]["units"] + 1 for case in (f"{n} writes, one call each", f"{n} writes in one client.batch()"))
        for n in sizes
    }
    assert data["params"]["records_at_end"] == sum(n * 6 // 10 + n // 2 * sent[n] for n in sizes)
    [target] = data["targets"]
    assert (target["issue"], target["unit"], target["limit"]) == (12, "x single calls", 10.0)
    assert target["met"] in (True, False)
    assert "file" in data["plot"] or "skipped" in data["plot"]
    assert "### targets (issue 12)" in proc.stdout
    assert "| 100 writes in one client.batch() | tiger |" in proc.stdout


def test_quick_aio_runs_blocking_and_awaited_inserts_with_their_floors(tmp_path: Path) -> None:
    """``--only aio``: tiger's insert blocking and awaited, the DEALER floor each way, the ratios, issue 13's target."""
    proc, data = run_quick(tmp_path, "aio")
    assert data["scenario"] == "aio"
    assert data["quick"] is True
    assert "perf_counter_ns" in data["method"] and "asyncio" in data["method"]
    rows = {(r["case"], r["subject"]): r for r in data["rows"]}
    cases = {
        "tiger: Table.insert": ("blocking", "tiger"),
        "tiger.aio: await AsyncTable.insert": ("asyncio", "tiger"),
        "pyzmq DEALER: send, poll, recv (as tiger's client)": ("blocking", "floor"),
        "pyzmq DEALER, its FD watched by the loop: send, await readable, recv (as tiger.aio)": ("asyncio", "floor"),
        "pyzmq asyncio DEALER (zmq.asyncio): await send, recv": ("asyncio", "floor"),
    }
    for subject, (case, role) in cases.items():
        row = rows[(case, subject)]
        assert (row["role"], row["unit"]) == (role, "us")
        assert row["samples"] == data["params"]["rounds"] * data["params"]["ops_per_round"]
        assert 0 < row["median"] <= row["p99"] <= row["max"]
        assert len(row["round_medians"]) == data["params"]["rounds"]
    for subject in (
        "tiger.aio: await AsyncTable.insert",
        "pyzmq DEALER, its FD watched by the loop: send, await readable, recv (as tiger.aio)",
    ):
        assert rows[("asyncio / blocking", subject)]["median"] > 0
        assert rows[("asyncio / blocking", subject)]["unit"] == "x"
        assert rows[("asyncio - blocking", subject)]["unit"] == "us"
    [target] = data["targets"]
    assert (target["issue"], target["unit"], target["limit"]) == (13, "x blocking", 1.2)
    assert target["measured"] == rows[("asyncio / blocking", "tiger.aio: await AsyncTable.insert")]["median"]
    assert target["met"] in (True, False)
    assert "file" in data["plot"] or "skipped" in data["plot"]
    assert "### targets (issue 13)" in proc.stdout
    assert "| asyncio | tiger.aio: await AsyncTable.insert |" in proc.stdout


def test_quick_feed_runs_each_way_of_following_with_4_replicas(tmp_path: Path) -> None:
    """``--only feed``: every record reached every replica each way (wait_for, a feed, an async feed), the wake-up
    floor, and issue 13's four targets (p50 and p99 of each feed against the replica lag)."""
    proc, data = run_quick(tmp_path, "feed")
    assert data["scenario"] == "feed"
    assert data["quick"] is True
    p = data["params"]
    assert p["replicas"] == 4
    assert p["ways"] == ["wait_for", "feed", "async feed"]
    rows = {(r["case"], r["subject"]): r for r in data["rows"]}
    ways = ("replica (wait_for)", "feed (for change in table.watch())", "feed (async for, asyncio)")
    for subject in ways:
        for case in ("lag, 4 replicas", "lag from the insert call, 4 replicas"):
            row = rows[(case, subject)]
            assert (row["role"], row["unit"]) == ("tiger", "us")
            assert row["samples"] == p["replicas"] * p["rounds"] * p["records_per_round"]  # every record, every replica
            assert row["median"] <= row["p99"] <= row["max"]
        assert 0 <= rows[("lag, 4 replicas", subject)]["before_ack"] <= 1
        assert len(data["series"]["lag_quantiles_us"][subject]) == len(data["series"]["quantiles"])
    for subject in ("threading.Condition: a waiting thread", "loop.call_soon_threadsafe: a task awaiting a future"):
        row = rows[("wake-up by another thread", subject)]
        assert row["role"] == "floor" and 0 < row["median"] <= row["max"]
    targets = data["targets"]
    assert [(t["issue"], t["unit"], t["limit"]) for t in targets] == [(13, "x replica lag", 1.2)] * 4
    assert all(t["met"] in (True, False) for t in targets)
    assert "file" in data["plot"] or "skipped" in data["plot"]
    assert "### targets (issue 13)" in proc.stdout
    assert "| lag, 4 replicas | feed (async for, asyncio) |" in proc.stdout
