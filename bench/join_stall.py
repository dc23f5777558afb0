"""join-stall: single inserts while 4 fresh processes join a 200k-record store at once; join times, the writer's memory."""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import Children, Result, make_records, progress, receive, receive_all, send, step, summary
from bench._peers import Context

NAME = "join-stall"
JOINERS = 4
SAMPLE_S = 0.005  # the writer's RSS is read this often
BIN_S = 0.02  # the plot's time bins


def run(ctx: Context) -> Result:
    size = ctx.pick(200_000, 3_000)
    lone_repeats = ctx.pick(3, 1)
    baseline = ctx.pick(1.0, 0.2)  # seconds of inserts before the first join
    tail = ctx.pick(0.5, 0.1)  # seconds of inserts after the last join
    cores = os.cpu_count() or 1
    res = Result(
        NAME,
        f"single inserts while {JOINERS} fresh processes join a {size:,}-record store at once: insert latency, join times, "
        "the writer's memory",
        f"The writer (tiger.serve(), memory only) is loaded with {size:,} records (insert_many, batches of 1000). Then "
        f"{lone_repeats + JOINERS} joiner processes (python -m bench._worker joiner) and one inserter are started and "
        "imported; process start-up is not timed. The inserter (its own process, a tiger client) does Table.insert of "
        "fresh records back to back and stamps each insert's start and latency with time.monotonic_ns (CLOCK_MONOTONIC, "
        f"one clock for every process). After {baseline:g} s of inserts, {lone_repeats} lone join(s) run one after another "
        f"(each joiner closes before the next starts), then {JOINERS} joiners are told to go at once and stay attached. A "
        "join is timed in the joiner: from the order to go until tiger.connect() returns (the replica holds the "
        f"snapshot). The inserter stops {tail:g} s after the last join. An insert counts for a window (writer quiet, a "
        "lone join, the joins at once) when it overlaps it; 'all done' is the last joiner's end minus the first joiner's "
        "start. Writer memory: VmRSS and VmHWM of the writer (pid from Client.stats()) in /proc/PID/status, VmRSS read "
        f"every {SAMPLE_S * 1000:g} ms, and VmHWM reset (5 > /proc/PID/clear_refs) at the start of each join window so "
        "it is that window's peak; 'before' is the RSS after loading, before any join. The CPU floor: the snapshot "
        "chunks the writer sends (captured with a raw DEALER after the joins, as msgpack bytes) are decoded with "
        "msgpack.unpackb into a plain {id: record} dict (GC off) by one process alone, then by "
        f"{JOINERS} processes at once, timed the same way: on {cores} cores, 4 CPU-bound decoders cannot finish in less "
        "than that ratio of one.",
        params={"records": size, "joiners": JOINERS, "lone_repeats": lone_repeats, "baseline_s": baseline, "tail_s": tail},
    )
    import tiger

    with tiger.serve() as server, tiger.connect(server.url, timeout=60.0) as loader:
        table = loader.table("plans", prefix="plan")
        with step(NAME, f"load the writer with {size:,} records (insert_many, batches of 1000)"):
            for start in range(0, size, 1000):
                table.insert_many(make_records(min(1000, size - start), tag="s", start=start))
        pid = loader.stats()["pid"]
        res.params["url"] = server.url.split(":")[0]
        with Children() as children, _Memory(pid) as memory:
            with step(NAME, f"start {lone_repeats + JOINERS} joiner processes and the inserter"):
                lone_procs = [children.worker("joiner", server.url, str(size)) for _ in range(lone_repeats)]
                group_procs = [children.worker("joiner", server.url, str(size)) for _ in range(JOINERS)]
                inserter = children.worker("inserter", server.url, str(baseline))
                receive_all([*lone_procs, *group_procs, inserter], 120.0)
            rss_before = memory.rss()
            with step(NAME, f"inserts: {baseline:g} s with the writer quiet"):
                send(inserter, {"go": True})
                receive(inserter, baseline + 60.0)
            lone: list[dict[str, Any]] = []
            for proc in lone_procs:
                with step(NAME, f"a lone join of {size:,} records"):
                    memory.reset_peak()
                    cpu = _cpu_s(pid), _cpu_s(inserter.pid)
                    send(proc, {"go": True})
                    joined = receive(proc, 600.0)
                    lone.append({**joined, "peak_rss": memory.peak(), **_cpu_since(cpu, pid, inserter.pid)})
                    send(proc, {"close": True})
                    proc.wait(30.0)
                progress(NAME, f"  lone join: {lone[-1]['seconds']:.3f} s")
            rss_before_group = memory.rss()
            res.params["loadavg_before_joins"] = [round(x, 2) for x in os.getloadavg()]
            with step(NAME, f"{JOINERS} joins at once"):
                memory.reset_peak()
                cpu = _cpu_s(pid), _cpu_s(inserter.pid)
                for proc in group_procs:
                    send(proc, {"go": True})
                group = receive_all(group_procs, 600.0)
                peak_group = memory.peak()
                group_cpu = _cpu_since(cpu, pid, inserter.pid)
            progress(NAME, "  joins: " + ", ".join(f"{g['seconds']:.3f} s" for g in group))
            with step(NAME, f"inserts: {tail:g} s more, then stop"):
                send(inserter, {"stop_after": tail})
                inserts = receive(inserter, tail + 120.0)
        for j in [*lone, *group]:
            if j["records"] < size:
                raise RuntimeError(f"a joiner held {j['records']} records, not at least {size}")
        with step(NAME, "capture the snapshot's bytes (a raw DEALER)"):
            frames, captured = _snapshot_frames(server.url)
    snapshot = ctx.tmp / "snapshot.msgpack"
    import msgpack

    snapshot.write_bytes(msgpack.packb(frames, use_bin_type=True))
    res.params["snapshot"] = {"chunks": len(frames), "bytes": sum(map(len, frames)), "records": captured}
    del frames
    with step(NAME, f"CPU floor: msgpack-decode the snapshot, 1 process alone x{lone_repeats}, then {JOINERS} at once"):
        decode_lone = [_decoders(snapshot, 1)[0] for _ in range(lone_repeats)]
        decode_group = _decoders(snapshot, JOINERS)
    snapshot.unlink()

    _report(res, size, lone, group, group_cpu, inserts, decode_lone, decode_group)
    _memory_rows(res, rss_before, rss_before_group, [j["peak_rss"] for j in lone], peak_group, memory.samples)
    return res


# -- measuring ----------------------------------------------------------------------------------


class _Memory:
    """The writer's resident memory, from /proc/PID/status: VmRSS sampled in a thread, and VmHWM (its peak),
    which writing 5 to /proc/PID/clear_refs resets to the current RSS (Linux 4.0+)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[int, int]] = []  # (monotonic ns, RSS bytes)
        self.resets = True  # False once a reset was refused: peaks are then the sampled ones
        self._window_start = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> _Memory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _read(self) -> dict[str, int]:
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic_ns(), self._read()["VmRSS"]))
            except OSError:
                return  # the writer is gone
            self._stop.wait(SAMPLE_S)  # a sampling period, not a wait for a socket

    def rss(self) -> int:
        return self._read()["VmRSS"]

    def reset_peak(self) -> None:
        self._window_start = time.monotonic_ns()
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError as e:
            if self.resets:
                progress(NAME, f"cannot reset the writer's VmHWM ({e}): peaks are the {SAMPLE_S * 1000:g} ms samples")
            self.resets = False

    def peak(self) -> int:
        """The highest RSS since ``reset_peak``: VmHWM (exact) when it was reset, else the highest sample."""
        sampled = max((rss for t, rss in self.samples if t >= self._window_start), default=0)
        now = self._read()
        return max(now["VmHWM"], sampled) if self.resets else max(now["VmRSS"], sampled)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc/PID/stat (clock ticks: 10 ms here)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after the command name: fields 3 onwards
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def _cpu_since(before: tuple[float, float], writer: int, inserter: int) -> dict[str, float]:
    return {"writer_cpu_s": _cpu_s(writer) - before[0], "inserter_cpu_s": _cpu_s(inserter) - before[1]}


def _snapshot_frames(url: str) -> tuple[list[bytes], int]:
    """The snapshot chunks the writer sends a joiner, as bytes (and the record count it reports)."""
    import zmq

    from tiger import _protocol as p

    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVHWM, 0)  # a snapshot is many messages: never drop one
    try:
        dealer.connect(url)
        dealer.send(p.encode_request(p.SnapshotRequest(1)))
        frames: list[bytes] = []
        while True:
            if not dealer.poll(60_000):
                raise RuntimeError(f"the writer at {url} sent no snapshot message within 60 s")
            data = dealer.recv()
            reply = p.decode_reply(data)
            if type(reply) is p.SnapshotEnd:
                return frames, reply.records
            if type(reply) is not p.SnapshotChunk:
                raise RuntimeError(f"the writer refused a snapshot: {reply}")
            frames.append(data)
    finally:
        dealer.close(linger=0)
        ctx.term()


def _decoders(snapshot: Path, n: int) -> list[dict[str, Any]]:
    with Children() as children:
        procs = [children.worker("decoder", str(snapshot)) for _ in range(n)]
        receive_all(procs, 120.0)
        for proc in procs:
            send(proc, {"go": True})
        return receive_all(procs, 600.0)


# -- figures ------------------------------------------------------------------------------------


def _all_done(runs: Sequence[dict[str, Any]]) -> float:
    return float(max(r["end_ns"] for r in runs) - min(r["start_ns"] for r in runs)) / 1e9


def _overlapping(starts: Sequence[int], latencies: Sequence[int], windows: Sequence[tuple[int, int]]) -> list[float]:
    """Latencies (ms) of the inserts that overlap any of ``windows`` (ns)."""
    return [
        lat / 1e6
        for t, lat in zip(starts, latencies, strict=True)
        if any(t <= end and t + lat >= begin for begin, end in windows)
    ]


def _report(
    res: Result,
    size: int,
    lone: list[dict[str, Any]],
    group: list[dict[str, Any]],
    group_cpu: dict[str, float],
    inserts: dict[str, Any],
    decode_lone: list[dict[str, Any]],
    decode_group: list[dict[str, Any]],
) -> None:
    starts, latencies = inserts["starts_ns"], inserts["latencies_ns"]
    lone_windows = [(j["start_ns"], j["end_ns"]) for j in lone]
    group_window = (min(j["start_ns"] for j in group), max(j["end_ns"] for j in group))
    quiet = [lat / 1e6 for t, lat in zip(starts, latencies, strict=True) if t + lat < lone_windows[0][0]]
    during_lone = _overlapping(starts, latencies, lone_windows)
    during_group = _overlapping(starts, latencies, [group_window])
    label = "Table.insert of one record in its own process, read-your-writes"
    for case, values in (
        ("insert, writer quiet", quiet),
        ("insert during a lone join", during_lone),
        (f"insert during {JOINERS} joins at once", during_group),
    ):
        res.row(case, "tiger", "tiger", "ms", summary(values), label=label)

    floor = "msgpack decode + dict"
    lone_s = statistics.median(j["seconds"] for j in lone)
    decode_s = statistics.median(d["seconds"] for d in decode_lone)
    res.row("lone join", "tiger", "tiger", "s", _stats([j["seconds"] for j in lone]), records=size, label="tiger.connect()")
    res.row("lone join", floor, "floor", "s", _stats([d["seconds"] for d in decode_lone]), label="1 process decodes the snapshot")
    each = f"{JOINERS} joins at once: each"
    res.row(each, "tiger", "tiger", "s", _stats([j["seconds"] for j in group]), runs=[j["seconds"] for j in group])
    res.row(each, floor, "floor", "s", _stats([d["seconds"] for d in decode_group]), runs=[d["seconds"] for d in decode_group])
    done, decode_done = _all_done(group), _all_done(decode_group)
    res.row(f"{JOINERS} joins at once: all done", "tiger", "tiger", "s", done)
    res.row(f"{JOINERS} joins at once: all done", floor, "floor", "s", decode_done)
    ratio, floor_ratio = done / lone_s, decode_done / decode_s
    res.row(f"{JOINERS} joins at once: all done / a lone one", "tiger", "tiger", "x", ratio)
    res.row(f"{JOINERS} joins at once: all done / a lone one", floor, "floor", "x", floor_ratio)
    # where the CPU went: if every process were CPU-bound, all done >= (the CPU seconds used) / cores
    res.row("lone join: CPU s of the joiner", "tiger", "tiger", "s", _stats([j["cpu_s"] for j in lone]))
    res.row("lone join: CPU s of the joiner", floor, "floor", "s", _stats([d["cpu_s"] for d in decode_lone]))
    res.row("lone join: CPU s of the writer", "tiger writer", "tiger", "s", _stats([j["writer_cpu_s"] for j in lone]))
    res.row(f"{JOINERS} joins at once: CPU s of each joiner", "tiger", "tiger", "s", _stats([j["cpu_s"] for j in group]))
    res.row(f"{JOINERS} joins at once: CPU s of each joiner", floor, "floor", "s", _stats([d["cpu_s"] for d in decode_group]))
    res.row(f"{JOINERS} joins at once: CPU s of the writer", "tiger writer", "tiger", "s", group_cpu["writer_cpu_s"])
    res.row(f"{JOINERS} joins at once: CPU s of the inserter", "tiger", "tiger", "s", group_cpu["inserter_cpu_s"])
    cores = os.cpu_count() or 1
    used = sum(j["cpu_s"] for j in group) + group_cpu["writer_cpu_s"] + group_cpu["inserter_cpu_s"]
    res.notes.append(
        f"During the {JOINERS} joins at once ({done:.2f} s wall), the joiners used {sum(j['cpu_s'] for j in group):.2f} CPU s, "
        f"the writer {group_cpu['writer_cpu_s']:.2f}, the inserter {group_cpu['inserter_cpu_s']:.2f}: {used:.2f} CPU s, at "
        f"least {used / cores:.2f} s on {cores} cores if nothing else ran; the rest of the wall time is waiting or other "
        f"load (the load average was {res.params.get('loadavg_before_joins', ['?'])[0]} just before)."
    )

    first = starts[0] if starts else group_window[0]
    res.series["inserts"] = _bins(starts, latencies, first)
    res.series["windows_s"] = {
        "lone": [[(a - first) / 1e9, (b - first) / 1e9] for a, b in lone_windows],
        "group": [[(j["start_ns"] - first) / 1e9, (j["end_ns"] - first) / 1e9] for j in group],
    }
    res.series["joins_s"] = {
        "lone": [j["seconds"] for j in lone],
        "group": [j["seconds"] for j in group],
        "all_done": done,
        "decode_lone": [d["seconds"] for d in decode_lone],
        "decode_group": [d["seconds"] for d in decode_group],
        "decode_all_done": decode_done,
    }
    res.series["t0_ns"] = first

    longest = max(during_group, default=math.nan) / 1000
    q = summary(during_group)
    res.target(
        f"the longest single insert while {JOINERS} processes join ({size // 1000}k records) under 0.1 s",
        longest,
        0.1,
        "s",
        at_most=True,
        detail=f"p50 {q['median']:.2f} ms, p99 {q['p99']:.1f} ms over {q['samples']} inserts; writer quiet: p99 "
        f"{summary(quiet)['p99']:.2f} ms",
        issue=12,
    )
    res.target(
        f"all {JOINERS} joins done within 2.5x a lone join",
        ratio,
        2.5,
        "x lone join",
        at_most=True,
        detail=f"lone {lone_s:.3f} s, {JOINERS} done in {done:.3f} s; CPU floor on {cores} cores: {JOINERS} msgpack decoders "
        f"at once finish in {floor_ratio:.2f}x one",
        issue=12,
    )
    res.notes.append(
        f"CPU floor: {JOINERS} processes decoding the same snapshot bytes at once finished in {floor_ratio:.2f}x the time "
        f"of one alone ({decode_done:.3f} s vs {decode_s:.3f} s) on {cores} cores: {JOINERS} CPU-bound joins cannot finish "
        f"in less than about that multiple of a lone join here, before counting the writer's own encoding and the "
        f"inserter, which share the same cores."
    )


def _memory_rows(
    res: Result, before: int, before_group: int, peak_lone: list[int], peak_group: int, samples: list[tuple[int, int]]
) -> None:
    mb = 1 << 20
    res.row("writer RSS before any join", "tiger writer", "tiger", "MB", before / mb)
    res.row("writer RSS before the joins at once", "tiger writer", "tiger", "MB", before_group / mb)
    res.row("writer peak RSS, a lone join", "tiger writer", "tiger", "MB", _stats([p / mb for p in peak_lone]))
    res.row(f"writer peak RSS, {JOINERS} joins at once", "tiger writer", "tiger", "MB", peak_group / mb)
    first = res.series["t0_ns"]
    res.series["writer_rss_mb"] = _rss_bins(samples, first)
    res.series["writer_rss_before_mb"] = before / mb
    res.target(
        f"writer peak memory while {JOINERS} processes join under 1.5x before",
        peak_group / before,
        1.5,
        "x before",
        at_most=True,
        detail=f"RSS {before / mb:.0f} MB before any join ({before_group / mb:.0f} MB after the lone joins), "
        f"peak {peak_group / mb:.0f} MB",
        issue=12,
    )


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "max": max(values), "samples": len(values)}


def _bins(starts: Sequence[int], latencies: Sequence[int], first: int) -> dict[str, Any]:
    """Each insert filed by its start in BIN_S bins: the longest and the median latency (ms) of each, for the plot."""
    bins: dict[int, list[float]] = {}
    for t, lat in zip(starts, latencies, strict=True):
        bins.setdefault(int((t - first) / 1e9 / BIN_S), []).append(lat / 1e6)
    keys = sorted(bins)
    return {
        "bin_s": BIN_S,
        "t_s": [round(k * BIN_S, 3) for k in keys],
        "max_ms": [round(max(bins[k]), 3) for k in keys],
        "median_ms": [round(statistics.median(bins[k]), 3) for k in keys],
        "count": [len(bins[k]) for k in keys],
    }


def _rss_bins(samples: list[tuple[int, int]], first: int) -> dict[str, Any]:
    """The writer's RSS (MB), the highest sample in each BIN_S bin."""
    bins: dict[int, int] = {}
    for t, rss in samples:
        k = math.floor((t - first) / 1e9 / BIN_S)
        bins[k] = max(bins.get(k, 0), rss)
    keys = sorted(bins)
    return {"t_s": [round(k * BIN_S, 3) for k in keys], "mb": [round(bins[k] / (1 << 20), 1) for k in keys]}
