"""join: time for a fresh process to connect and hold a full replica of 10k, 100k, 1M records; memory per record."""

from __future__ import annotations

import itertools
import statistics
from typing import Any

from bench._common import Children, Result, make_records, progress, receive, step
from bench._peers import Context, Ultra, Unavailable

NAME = "join"


def run(ctx: Context) -> Result:
    sizes = ctx.pick([10_000, 100_000, 1_000_000], [10_000, 100_000])
    repeats = ctx.pick({10_000: 5, 100_000: 3, 1_000_000: 1}, {10_000: 2, 100_000: 1})
    res = Result(
        NAME,
        "a late joiner: seconds until a fresh process holds every record, and resident memory per record",
        "A fresh process (python -m bench._worker join) times tiger.connect(url) with time.perf_counter: it returns once "
        "the replica holds the writer's full snapshot; the process then checks it holds every record. Memory: the RSS "
        "(/proc/self/statm) of that fresh process after connect and gc.collect(), minus its RSS just before connect, per "
        "record; it includes everything the replica keeps (frozen records, indexes, libzmq buffers). The floor: a fresh "
        "process reads the same records as one msgpack blob from a file, and times msgpack.unpackb + building a plain "
        "{id: record} dict with the cyclic GC disabled meanwhile; its memory is measured the same way (the blob itself "
        "excluded). UltraDict: a fresh process "
        "attaches to a shared-memory UltraDict holding the same records and loads them (its join). Median of the repeats.",
        params={"sizes": sizes, "repeats": {str(k): v for k, v in repeats.items()}},
    )
    import msgpack

    import tiger

    ultra, ultra_client = _open_ultra(ctx, res)
    try:
        with tiger.serve() as server, tiger.connect(server.url, timeout=60.0) as loader:
            table = loader.table("plans", prefix="plan")
            held = 0
            for size in sizes:
                with step(NAME, f"load the writer to {size:,} records (insert_many, batches of 1000)"):
                    records = _records(held, size)
                    for i in range(0, len(records), 1000):
                        table.insert_many(records[i : i + 1000])
                    if ultra is not None:
                        ultra_client.write_many(records)
                    held = size
                    del records
                with step(NAME, f"tiger: {repeats[size]} fresh joiner{'s' if repeats[size] > 1 else ''} at {size:,} records"):
                    joins = [_worker(ctx, "join", server.url, str(size)) for _ in range(repeats[size])]
                for j in joins:
                    if j["records"] != size:
                        raise RuntimeError(f"a joiner held {j['records']} records, not {size}")
                blob_path = ctx.tmp / "records.msgpack"
                with step(NAME, f"floor: msgpack blob -> dict of {size:,} records"):
                    blob_path.write_bytes(msgpack.packb(_records(0, size, sizes), use_bin_type=True))
                    floors = [_worker(ctx, "dictmem", str(blob_path)) for _ in range(repeats[size])]
                    blob_path.unlink()
                _rows(res, size, "tiger", "tiger", joins, label=f"tiger.connect() in a fresh process, {server.url.split(':')[0]}")
                _rows(res, size, "msgpack blob -> dict", "floor", floors, label="msgpack.unpackb of one blob + a plain dict")
                if ultra is not None:
                    try:
                        with step(NAME, f"UltraDict: fresh attach at {size:,} records"):
                            ultras = [_worker(ctx, "ultrajoin", ultra.spec["name"], str(size)) for _ in range(repeats[size])]
                        _rows(res, size, Ultra.name, "peer", ultras, label=ultra.label)
                    except Exception as e:
                        res.skip(Ultra.name, f"failed: {type(e).__name__}: {e}")
                        ultra_client.close()
                        ultra.teardown()
                        ultra = None
    finally:
        if ultra is not None:
            ultra_client.close()
            ultra.teardown()

    subjects = list(dict.fromkeys(r["subject"] for r in res.rows))
    for key, unit in (("join_s", "s"), ("bytes_per_record", "B/record")):
        res.series[key] = {
            s: {str(r["records"]): r["median"] for r in res.rows if r["subject"] == s and r["unit"] == unit} for s in subjects
        }
    for size, limit in ((100_000, 0.3), (1_000_000, 3.0)):
        row = res.find(f"join {_k(size)}", "tiger")
        res.target(
            f"a late joiner holds {_k(size)} records in under {limit:g} s",
            row["median"] if row else None,
            limit,
            "s",
            at_most=True,
            detail="" if row else "--quick stops at 100k records",
        )
    largest = _k(sizes[-1])
    mem = res.find(f"memory {largest}", "tiger")
    floor = res.find(f"memory {largest}", "msgpack blob -> dict")
    res.target(
        f"replica memory at most 1.5x a plain dict of the same records ({largest} records)",
        mem["median"] / floor["median"] if mem and floor else None,
        1.5,
        "x dict",
        at_most=True,
        detail=f"tiger {mem['median']:.0f} B/record, dict {floor['median']:.0f} B/record" if mem and floor else "",
    )
    return res


def _open_ultra(ctx: Context, res: Result) -> tuple[Any, Any]:
    """UltraDict's owner (the shared memory) and a client handle, or (None, None) after a one-line skip."""
    if ctx.quick:
        res.skip(Ultra.name, "not run with --quick")
        return None, None
    ultra = Ultra(ctx.tmp)
    ultra.BUFFER = 1 << 30  # the whole load fits the stream: no full dumps while loading
    try:
        ultra.setup()
        return ultra, Ultra.connect(ultra.spec)
    except Exception as e:
        ultra.teardown()
        res.skip(Ultra.name, str(e) if isinstance(e, Unavailable) else f"failed to start: {type(e).__name__}: {e}")
        return None, None


def _k(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def _worker(ctx: Context, *args: str) -> dict[str, Any]:
    with Children() as children:
        proc = children.worker(*args)
        out: dict[str, Any] = receive(proc, 600.0)
    progress(NAME, f"  {args[0]}: {out['seconds']:.3f} s, {(out['rss_after'] - out['rss_before']) / out['records']:.0f} B/record")
    return out


def _rows(res: Result, size: int, subject: str, role: str, runs: list[dict[str, Any]], label: str) -> None:
    seconds = [r["seconds"] for r in runs]
    per_record = [(r["rss_after"] - r["rss_before"]) / size for r in runs]
    time_stats = {"median": statistics.median(seconds), "max": max(seconds), "samples": len(seconds)}
    res.row(f"join {_k(size)}", subject, role, "s", time_stats, records=size, runs=seconds, label=label)
    memory = {"median": statistics.median(per_record), "samples": len(per_record)}
    res.row(f"memory {_k(size)}", subject, role, "B/record", memory, records=size, runs=per_record, label=label)


def _records(start: int, stop: int, sizes: list[int] | None = None) -> list[dict[str, Any]]:
    """Records start..stop, made in the same chunks (same seeds) as the writer was loaded in."""
    bounds = sorted({0, *(sizes or []), start, stop})
    out: list[dict[str, Any]] = []
    for a, b in itertools.pairwise(bounds):
        if start <= a and b <= stop:
            out += make_records(b - a, tag="j", start=a)
    return out
