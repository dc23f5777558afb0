"""writers: aggregate writes/s with 1, 2, 4, 8 client processes writing at once."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench._common import HIGHER, Children, Result, receive_all, send, step, summary, time_calls
from bench._peers import (
    KIND_OF,
    Context,
    Diskcache,
    Manager,
    Redis,
    Sqlite,
    Subject,
    Tiger,
    Ultra,
    ZmqEcho,
    ZmqFanoutEcho,
    filesystem_of,
    opened,
    skip_failed,
)

NAME = "writers"


FSYNCS = ("never", "always")


def run(ctx: Context) -> Result:
    counts = ctx.pick([1, 2, 4, 8], [1, 2])
    duration = ctx.pick(1.5, 0.3)
    peers = ctx.pick([ZmqEcho, ZmqFanoutEcho, Manager, Redis, Diskcache, Sqlite], [ZmqEcho, ZmqFanoutEcho, Redis])
    # (subject, its name in the results, the arguments it is set up with): tiger in memory, then with each fsync policy
    runs: list[tuple[type[Subject], str, dict[str, Any]]] = [(Tiger, Tiger.name, {})]
    runs += [(Tiger, f"{Tiger.name} --fsync {fsync}", {"fsync": fsync}) for fsync in FSYNCS]
    runs += [(cls, cls.name, {}) for cls in peers]
    res = Result(
        NAME,
        "aggregate single writes/s with N client processes writing at once",
        "Each writer is a fresh process (python -m bench._worker writer) that connects, prepares 20,000 fresh records, "
        "does one warm-up write and reports ready; then all are told to go at once and each writes single records "
        f"back to back for {duration} s (time.perf_counter). Aggregate = the sum of each process's writes / its own "
        "elapsed time. tiger: Table.insert (read-your-writes), to a writer started by tiger.serve() in memory only "
        f"('tiger'), and to one keeping its store in a fresh directory with each fsync policy ('tiger --fsync "
        f"{FSYNCS[0]}', 'tiger --fsync {FSYNCS[1]}': tiger serve --data DIR --fsync ...); the floors: REQ/REP round "
        "trips of the bytes tiger would send, to one echo process ('pyzmq REQ/REP'), and the transport work of "
        "tiger's design alone ('pyzmq REQ/REP + PUB fan-out'): DEALER round trips of those bytes to one ROUTER "
        "process that publishes each request (3-byte topic + payload, one frame) on a PUB before it echoes it, "
        "while a thread in every client process SUBscribes to everything and msgpack-decodes every frame (every "
        "write reaches every client process, as with tiger's replicas); and just before each 'tiger --fsync always' run, "
        "appends + fsyncs of 300 bytes by this process in the same filesystem ('append + fsync': the disk as it is "
        "then, the rate of a writer that fsyncs every write alone). CPU per write (tiger and the floors, with psutil): "
        "the CPU time (user + system, every thread) of the serving process over the run (psutil) and of each writing "
        "process over its writes (time.process_time), divided by the writes; the CPU ceiling is the writes/s the "
        "machine's cores allow at that CPU per write.",
        params={"processes": counts, "duration_s": duration, "fsync": list(FSYNCS)},
    )
    res.skip(
        Ultra.name,
        "concurrent writers need shared_lock=True, which needs the atomics and psutil packages (not in the bench extra)",
    )
    if ctx.quick:
        for absent in (Manager, Diskcache, Sqlite):
            res.skip(absent.name, "not run with --quick")
    for cls, name, kwargs in runs:
        try:
            with opened(cls, ctx, res, connect=False, **kwargs) as got:
                if got is None:
                    continue
                subject, _ = got
                label = subject.label or name
                if kwargs.get("fsync"):
                    res.params["data_filesystem"] = filesystem_of(subject.tmp)
                for n in counts:
                    case = f"{n} writer{'s' if n > 1 else ''}"
                    if kwargs.get("fsync") == "always":  # the disk as it is just now: fsync latency varies a lot here
                        fsyncs = _fsync_floor(subject.tmp)
                        res.row(case, FSYNC_FLOOR, "floor", "writes/s", fsyncs, better=HIGHER, label=FSYNC_LABEL)
                    with step(NAME, f"{name}: {n} writer process{'es' if n > 1 else ''}"):
                        rate, per, cpu = _writers(KIND_OF[cls], subject.spec, n, duration, subject.server_pid)
                    res.row(
                        case, name, cls.role, "writes/s", {"median": rate}, better=HIGHER, label=label, per_process=per, **cpu
                    )
        except Exception as e:
            skip_failed(cls, res, e)
    res.series["writes_per_s"] = {
        s: {str(int(r["case"].split()[0])): r["median"] for r in res.rows if r["subject"] == s}
        for s in dict.fromkeys(r["subject"] for r in res.rows)
    }
    fan = series_of(res, ZmqFanoutEcho.name)
    for a, b in ((4, 1), (8, 4)):
        if fan.get(str(a)) and fan.get(str(b)):
            res.notes.append(
                f"{ZmqFanoutEcho.name} (the transport alone): {a} processes write {fan[str(a)] / fan[str(b)]:.2f}x "
                f"what {'one does' if b == 1 else f'{b} do'}."
            )
    for subject in (Tiger.name, ZmqFanoutEcho.name):
        if any(r["subject"] == subject and "cpu_us_per_write" in r for r in res.rows):
            res.notes.append(_cpu_note(res, subject, counts))
    one = res.find("1 writer", Tiger.name)
    top = res.find(f"{counts[-1]} writers", Tiger.name)
    if one and top:
        res.notes.append(f"tiger: {counts[-1]} processes write {top['median'] / one['median']:.2f}x what one does.")
    _targets(res, counts)
    return res


def _targets(res: Result, counts: list[int]) -> None:
    """Issue 12's targets on how tiger's writes scale with processes, for each fsync policy; beside each figure, the
    same ratio for the fan-out floor (what the transport of tiger's design allows on this machine)."""
    series = res.series["writes_per_s"]
    floor = series_of(res, ZmqFanoutEcho.name)
    for fsync in FSYNCS:
        name = f"{Tiger.name} --fsync {fsync}"
        rates = series.get(name, {})
        goals = [(4, 1, 2.0), (8, 4, 1.0)] + ([(8, 1, 4.0)] if fsync == "always" else [])
        for many, few, factor in goals:
            a, b = rates.get(str(many)), rates.get(str(few))
            what = "one" if few == 1 else f"the {few}-process figure"
            x, y = floor.get(str(many)), floor.get(str(few))
            beside = f"; {ZmqFanoutEcho.name} (floor): {x / y:.2f}x ({x:,.0f} vs {y:,.0f})" if x and y else ""
            row, first = res.find(f"{many} writers", name), res.find("1 writer", name)
            if row and first and row.get("cpu_ceiling") and fsync == "never":
                beside += (
                    f"; CPU per write at {many} processes {row['cpu_us_per_write']['total']:.0f} us (at 1: "
                    f"{first['cpu_us_per_write']['total']:.0f}): {CORES} cores allow {row['cpu_ceiling']:,.0f} writes/s, "
                    f"{row['cpu_ceiling'] / first['median']:.2f}x one process"
                )
            res.target(
                f"--fsync {fsync}: {many} processes write at least {factor:g}x {what}",
                a / b if a and b else None,
                factor,
                f"x {few} process{'es' if few > 1 else ''}",
                at_most=False,
                detail=f"{a:,.0f} vs {b:,.0f} writes/s{beside}"
                if a and b
                else f"--quick runs {', '.join(map(str, counts))} processes",
                issue=12,
            )


def series_of(res: Result, subject: str) -> dict[str, float]:
    """A subject's aggregate writes/s by process count ({} if it did not run)."""
    return res.series["writes_per_s"].get(subject, {})  # type: ignore[no-any-return]


FSYNC_FLOOR = "append + fsync"
FSYNC_LABEL = (
    "this process appends 300 bytes to a file beside the writer's data directory and fsyncs it, again and again for "
    "up to 0.3 s, just before each tiger --fsync always run: appends / their total time, the rate of a writer that "
    "fsyncs each write alone"
)


def _fsync_floor(directory: Path, budget: float = 0.3, most: int = 200) -> dict[str, Any]:
    """Appends + fsyncs per second in ``directory`` (count / their total time), measured now."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    entry = b"x" * 300

    def append() -> None:
        os.write(fd, entry)
        os.fsync(fd)

    try:
        seconds = time_calls(append, count=most, budget=budget)
    finally:
        os.close(fd)
        path.unlink()
    return {"median": len(seconds) / sum(seconds), "fsync_ms": summary([1000 * t for t in seconds])}


CORES = os.cpu_count() or 1


def _writers(
    kind: str, spec: dict[str, object], n: int, duration: float, server_pid: int | None
) -> tuple[float, list[float], dict[str, Any]]:
    """(aggregate writes/s, each process's writes/s, CPU figures): ``cpu_us_per_write`` (us of CPU per write:
    the serving process's (``server``), the writing processes' (``clients``: their every thread, a tiger
    client's replica thread applying the others' writes included) and ``total``) and ``cpu_ceiling`` (writes/s
    that ``CORES`` cores allow at that CPU per write), when the server's CPU can be read (psutil)."""
    server = _process(server_pid)
    with Children() as children:
        procs = [children.worker("writer", kind, json.dumps(spec), str(i)) for i in range(n)]
        receive_all(procs, 120.0)
        before = _cpu_seconds(server)
        for proc in procs:
            send(proc, {"go": duration})
        reports = receive_all(procs, duration + 120.0)
        after = _cpu_seconds(server)
    per = [r["writes"] / r["seconds"] for r in reports]
    writes = sum(r["writes"] for r in reports)
    if before is None or after is None or not writes:
        return sum(per), per, {}
    served, clients = 1e6 * (after - before) / writes, 1e6 * sum(r["cpu_s"] for r in reports) / writes
    total = served + clients
    cpu = {"cpu_us_per_write": {"server": served, "clients": clients, "total": total}, "cpu_ceiling": CORES * 1e6 / total}
    return sum(per), per, cpu


def _process(pid: int | None) -> Any:
    """A psutil.Process for ``pid`` (None without one, or without psutil)."""
    try:
        import psutil
    except ImportError:
        return None
    return None if pid is None else psutil.Process(pid)


def _cpu_seconds(process: Any) -> float | None:
    """CPU seconds (user + system, every thread) a process has used so far; None if it cannot be read."""
    if process is None:
        return None
    try:
        times = process.cpu_times()
    except Exception:  # (psutil.Error: the process is gone)
        return None
    return float(times.user + times.system)


def _cpu_note(res: Result, subject: str, counts: list[int]) -> str:
    """How the CPU per write moves with the number of writing processes, and the ceiling it sets."""
    parts = []
    for n in counts:
        row = res.find(f"{n} writer{'s' if n > 1 else ''}", subject)
        if row and "cpu_us_per_write" in row:
            cpu = row["cpu_us_per_write"]
            parts.append(
                f"{n}: {cpu['total']:.0f} us ({cpu['server']:.0f} serving, {cpu['clients']:.0f} writing processes; "
                f"ceiling {row['cpu_ceiling']:,.0f}/s)"
            )
    return (
        f"{subject}: CPU per write by writing processes (the serving process's and the writing processes' CPU "
        f"over the run / writes; ceiling: the writes/s {CORES} cores allow at that CPU per write): {'; '.join(parts)}."
    )
