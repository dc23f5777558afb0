"""writers: aggregate writes/s with 1, 2, 4, 8 client processes writing at once."""

from __future__ import annotations

import json

from bench._common import HIGHER, Children, Result, receive_all, send, step
from bench._peers import KIND_OF, Context, Diskcache, Manager, Redis, Sqlite, Tiger, Ultra, ZmqEcho, opened, skip_failed

NAME = "writers"


def run(ctx: Context) -> Result:
    counts = ctx.pick([1, 2, 4, 8], [1, 2])
    duration = ctx.pick(1.5, 0.3)
    subjects = ctx.pick([Tiger, ZmqEcho, Manager, Redis, Diskcache, Sqlite], [Tiger, ZmqEcho, Redis])
    res = Result(
        NAME,
        "aggregate single writes/s with N client processes writing at once",
        "Each writer is a fresh process (python -m bench._worker writer) that connects, prepares 20,000 fresh records, "
        "does one warm-up write and reports ready; then all are told to go at once and each writes single records "
        f"back to back for {duration} s (time.perf_counter). Aggregate = the sum of each process's writes / its own "
        "elapsed time. tiger: Table.insert (read-your-writes); the floor: REQ/REP round trips of the bytes tiger would send, "
        "to one echo process.",
        params={"processes": counts, "duration_s": duration},
    )
    res.skip(
        Ultra.name,
        "concurrent writers need shared_lock=True, which needs the atomics and psutil packages (not in the bench extra)",
    )
    if ctx.quick:
        for cls in (Manager, Diskcache, Sqlite):
            res.skip(cls.name, "not run with --quick")
    for cls in subjects:
        try:
            with opened(cls, ctx, res, connect=False) as got:
                if got is None:
                    continue
                subject, _ = got
                label = subject.label or cls.name
                for n in counts:
                    with step(NAME, f"{cls.name}: {n} writer process{'es' if n > 1 else ''}"):
                        rate, per = _writers(KIND_OF[cls], subject.spec, n, duration)
                    case = f"{n} writer{'s' if n > 1 else ''}"
                    res.row(case, cls.name, cls.role, "writes/s", {"median": rate}, better=HIGHER, label=label, per_process=per)
        except Exception as e:
            skip_failed(cls, res, e)
    res.series["writes_per_s"] = {
        s: {str(int(r["case"].split()[0])): r["median"] for r in res.rows if r["subject"] == s}
        for s in dict.fromkeys(r["subject"] for r in res.rows)
    }
    one = res.find("1 writer", role="tiger")
    top = res.find(f"{counts[-1]} writers", role="tiger")
    if one and top:
        res.notes.append(f"tiger: {counts[-1]} processes write {top['median'] / one['median']:.2f}x what one does.")
    return res


def _writers(kind: str, spec: dict[str, object], n: int, duration: float) -> tuple[float, list[float]]:
    with Children() as children:
        procs = [children.worker("writer", kind, json.dumps(spec), str(i)) for i in range(n)]
        receive_all(procs, 120.0)
        for proc in procs:
            send(proc, {"go": duration})
        reports = receive_all(procs, duration + 120.0)
    per = [r["writes"] / r["seconds"] for r in reports]
    return sum(per), per
