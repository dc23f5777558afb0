"""PNG plots of each scenario's results (matplotlib, Agg backend), drawn from the results data alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

TIGER = "#d95f02"
TIGERS = [TIGER, "#8c2d04", "#fd8d3c"]  # more than one tiger setup in a plot (writers: in memory, each fsync policy)
FLOOR = "#7f7f7f"
FLOORS = ["#444444", "#9a9a9a", "#bbbbbb"]
PEER_COLORS = ["#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]


def plot(data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Draw ``<out>/<scenario>.png``; returns {"file": name} or {"skipped": reason}."""
    try:
        import matplotlib
    except ImportError:
        return {"skipped": "matplotlib not installed (pip install matplotlib)"}
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draw = _DRAW.get(data["scenario"])
    if draw is None or not data["rows"]:
        return {"skipped": "nothing to plot"}
    fig = draw(plt, data)
    fig.text(0.01, 0.005, _footer(data), fontsize=7, color="#555555", ha="left", va="bottom")
    path = out / f"{data['scenario']}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"file": path.name}


def _footer(data: dict[str, Any]) -> str:
    m = data["machine"]
    box = f"{m['cores']} cores {m['cpu']}, {m['python']}, pyzmq {m['pyzmq']} / libzmq {m['libzmq']}"
    return f"{data['command']}  |  {box}  |  tiger {m.get('tiger_commit') or m.get('tiger')}, {m['date'][:10]}"


def _colors(subjects: list[str], roles: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    peers = iter(PEER_COLORS)
    floors = iter(FLOORS)
    tigers = iter(TIGERS)
    for s in subjects:
        role = roles[s]
        out[s] = next(tigers, TIGER) if role == "tiger" else next(floors, FLOOR) if role == "floor" else next(peers, "#333333")
    return out


def _rows(data: dict[str, Any], case: str) -> list[dict[str, Any]]:
    return [r for r in data["rows"] if r["case"] == case]


def _label(value: float, unit: str) -> str:
    from bench._report import fmt

    return f"{fmt(value, unit)} {unit}"


def _bars(ax: Any, rows: list[dict[str, Any]], unit: str, title: str, colors: dict[str, str]) -> None:
    """Horizontal bars of the median, log scale, with the p99 as a whisker; tiger on top."""
    rows = sorted(rows, key=lambda r: (r["role"] != "tiger", r["median"]))
    names = [r["subject"] + (" (floor)" if r["role"] == "floor" else "") for r in rows][::-1]
    medians = [r["median"] for r in rows][::-1]
    p99 = [r.get("p99") or r["median"] for r in rows][::-1]
    ys = range(len(rows))
    ax.barh(ys, medians, color=[colors[r["subject"]] for r in rows][::-1])
    ax.errorbar(p99, ys, xerr=0, fmt="|", color="black", markersize=10, label="p99")
    ax.set_yticks(list(ys), names)
    ax.set_xscale("log")
    ax.set_xlabel(f"{unit} per op, median (bar) and p99 (tick), log scale")
    ax.set_title(title, fontsize=10)
    for y, m, p in zip(ys, medians, p99, strict=True):
        ax.text(max(m, p) * 1.25, y, f"{_label(m, unit)}  (p99 {_label(p, unit)})", va="center", fontsize=7.5)
    lo, hi = min(medians), max(p99)
    ax.set_xlim(lo / 2, hi * 150)
    ax.grid(axis="x", which="both", alpha=0.25)


def _read(plt: Any, data: dict[str, Any]) -> Any:
    roles = {r["subject"]: r["role"] for r in data["rows"]}
    colors = _colors(list(roles), roles)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.6))
    _bars(axes[0], _rows(data, "hit"), "ns", "get of an existing id", colors)
    _bars(axes[1], _rows(data, "miss"), "ns", "get of a missing id", colors)
    _bars(axes[2], _rows(data, "hot hit"), "ns", "get of one of the same 100 ids (memory warm)", colors)
    fig.suptitle("read: ns per get, tiger's local replica vs the dict floor and its peers")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


_DRAW: dict[str, Callable[[Any, dict[str, Any]], Any]] = {"read": _read}


def _write(plt: Any, data: dict[str, Any]) -> Any:
    roles = {r["subject"]: r["role"] for r in data["rows"]}
    colors = _colors(list(roles), roles)
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 1]})
    _bars(axes[0], _rows(data, "single write"), "us", "one write (tiger: insert with read-your-writes)", colors)
    ax = axes[1]
    _lines(ax, data["series"].get("records_per_s", {}), roles, colors)
    target = next((t for t in data["targets"] if "insert_many" in t["target"]), None)
    if target:
        ax.scatter([1000], [target["limit"]], marker="*", s=160, color=TIGER, zorder=5, label="target: 250k records/s at 1000")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records per call (log)")
    ax.set_ylabel("records/s (log)")
    ax.set_title("bulk write throughput vs batch size (tiger: insert_many)", fontsize=10)
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle("write: tiger vs the raw REQ/REP floor and its peers")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


_DRAW["write"] = _write


def _lines(ax: Any, series: dict[str, dict[str, float]], roles: dict[str, str], colors: dict[str, str]) -> None:
    """One line per subject: tiger thick, floors dashed grey, peers thin."""
    for subject, points in series.items():
        xs = sorted(int(x) for x in points)
        role = roles.get(subject, "peer")
        ax.plot(
            xs,
            [points[str(x)] for x in xs],
            marker="s" if role == "floor" else "o",
            color=colors.get(subject, "#333333"),
            linewidth=2.8 if role == "tiger" else 1.3,
            linestyle="--" if role == "floor" else "-",
            label=subject + (" (floor)" if role == "floor" else ""),
            zorder=4 if role == "tiger" else 2,
        )


def _writers(plt: Any, data: dict[str, Any]) -> Any:
    roles = {r["subject"]: r["role"] for r in data["rows"]}
    colors = _colors(list(roles), roles)
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.8))
    ax = axes[0]
    series = data["series"]["writes_per_s"]
    _lines(ax, series, roles, colors)
    counts = sorted({int(x) for points in series.values() for x in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_yscale("log")
    ax.set_xlabel("client processes writing at once")
    ax.set_ylabel("aggregate single writes/s (log)")
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=8)
    ax.set_title("aggregate writes/s vs concurrent writer processes", fontsize=10)
    scaled = [s for s in series if roles.get(s) == "tiger" or s == FANOUT_FLOOR]
    _writers_scaling(axes[1], data, scaled, roles, colors, counts)
    fig.suptitle("writers: N client processes writing single records at once")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


FANOUT_FLOOR = "pyzmq REQ/REP + PUB fan-out"  # bench._peers.ZmqFanoutEcho.name: the transport of tiger's design alone


def _writers_scaling(
    ax: Any, data: dict[str, Any], subjects: list[str], roles: dict[str, str], colors: dict[str, str], counts: list[int]
) -> None:
    """Each tiger setup's aggregate (and the fan-out floor's) as a multiple of its one-process figure, with issue
    12's targets."""
    series = data["series"]["writes_per_s"]
    for subject in (s for s in subjects if "1" in series[s]):
        points = series[subject]
        xs = sorted(int(x) for x in points)
        floor = roles.get(subject) == "floor"
        label = f"{subject}{' (floor)' if floor else ''} (1 process: {points['1']:,.0f}/s)"
        ax.plot(
            xs,
            [points[str(x)] / points["1"] for x in xs],
            marker="s" if floor else "o",
            color=colors[subject],
            linewidth=1.5 if floor else 2,
            linestyle="--" if floor else "-",
            label=label,
        )
    ax.axhline(1.0, color=FLOOR, linewidth=0.8, linestyle=":")
    marks = [(4, 2.0, "target: 4 processes >= 2x one"), (8, 4.0, "target (--fsync always): 8 >= 4x one")]
    for x, y, label in marks:
        if x in counts:
            ax.scatter([x], [y], marker="*", s=160, color="black", zorder=5)
            ax.annotate(label, (x, y), xytext=(-6, 6), textcoords="offset points", ha="right", fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("client processes writing at once (target: no line falls from 4 to 8)")
    ax.set_ylabel("aggregate writes/s / one process's")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("how the aggregate scales: tiger (in memory, each --fsync policy) and the fan-out floor", fontsize=10)


_DRAW["writers"] = _writers


def _fanout(plt: Any, data: dict[str, Any]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    ax = axes[0]
    styles = {"median": ("o", "p50"), "p99": ("s", "p99"), "max": ("^", "max")}
    lines = (("tiger", TIGER, "-", styles), ("tiger, from the insert call", "#7a3b00", ":", {"median": styles["median"]}))
    lines += (("pyzmq PUB/SUB one hop", FLOOR, "--", styles),)
    for subject, color, line, keys in lines:
        points = data["series"]["lag_us"].get(subject, {})
        xs = sorted(int(x) for x in points)
        for key, (marker, name) in keys.items():
            ys = [points[str(x)][key] for x in xs]
            floor = " (floor)" if subject.startswith("pyzmq") else ""
            alpha = 1.0 if key == "median" else 0.65
            ax.plot(xs, ys, marker=marker, linestyle=line, color=color, alpha=alpha, label=f"{subject}{floor} {name}")
    for t in data["targets"]:
        limit = t["limit"] * (1000 if t["unit"] == "ms" else 1)
        ax.axhline(limit, color=TIGER, linewidth=0.8, linestyle=":")
        which = "p50" if "p50" in t["target"] else "p99"
        ax.annotate(
            f"target {which} < {fmt_limit(t)}",
            (1, limit),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize=7,
            color=TIGER,
        )
    counts = sorted({int(x) for points in data["series"]["lag_us"].values() for x in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_yscale("symlog", linthresh=10)  # a lag can be negative: B saw the change before A's reply arrived
    lowest = min(v[k] for points in data["series"]["lag_us"].values() for v in points.values() for k in styles)
    highest = max(v[k] for points in data["series"]["lag_us"].values() for v in points.values() for k in styles)
    ax.set_ylim(bottom=min(0.0, lowest * 2), top=max(highest, 2000) * 3)
    ax.set_xlabel("replica processes")
    ax.set_ylabel("lag, us (symmetric log: linear within +-10 us)")
    ax.set_title("replication lag: acknowledged in A -> visible in B", fontsize=10)
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1]
    rates = data["series"]["writes_per_s"]
    xs = sorted(int(x) for x in rates)
    ax.bar([str(x) for x in xs], [rates[str(x)] for x in xs], color=TIGER)
    for i, x in enumerate(xs):
        ax.text(i, rates[str(x)] * 1.01, f"{rates[str(x)]:,.0f}", ha="center", fontsize=8)
    ax.set_xlabel("replica processes attached")
    ax.set_ylabel("A's single inserts/s")
    ax.set_title("writer throughput with replicas attached", fontsize=10)
    fig.suptitle("fanout: tiger replicas in other processes")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def fmt_limit(t: dict[str, Any]) -> str:
    return f"{t['limit']:g} {t['unit']}"


_DRAW["fanout"] = _fanout


def _join(plt: Any, data: dict[str, Any]) -> Any:
    roles = {r["subject"]: r["role"] for r in data["rows"]}
    colors = _colors(list(roles), roles)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    _lines(ax, data["series"]["join_s"], roles, colors)
    for t in data["targets"]:
        if t["unit"] == "s":
            n = 100_000 if "100k" in t["target"] else 1_000_000
            ax.scatter([n], [t["limit"]], marker="*", s=160, color=TIGER, zorder=5)
            ax.annotate(
                f"target {t['limit']:g} s", (n, t["limit"]), textcoords="offset points", xytext=(8, -3), fontsize=7, color=TIGER
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("records held by the writer (log)")
    ax.set_ylabel("seconds until a fresh process holds them all (log)")
    ax.set_title("join time vs record count", fontsize=10)
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=8)
    ax = axes[1]
    series = data["series"]["bytes_per_record"]
    subjects = list(series)
    sizes = sorted({int(x) for points in series.values() for x in points})
    width = 0.8 / max(1, len(subjects))
    for j, subject in enumerate(subjects):
        xs = [i + (j - (len(subjects) - 1) / 2) * width for i in range(len(sizes))]
        ys = [series[subject].get(str(n), 0) for n in sizes]
        ax.bar(xs, ys, width=width, color=colors[subject], label=subject + (" (floor)" if roles[subject] == "floor" else ""))
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y * 1.01, f"{y:.0f}", ha="center", fontsize=7)
    ax.set_xticks(range(len(sizes)), [f"{n:,}" for n in sizes])
    ax.set_xlabel("records")
    ax.set_ylabel("RSS bytes per record in the joining process")
    ax.set_title("memory per record vs a plain dict of the same records", fontsize=10)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    fig.suptitle("join: a late joiner's time and memory")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


_DRAW["join"] = _join


def _xdist(plt: Any, data: dict[str, Any]) -> Any:
    walls = _rows(data, "wall time")
    builds = {r["subject"]: r["median"] for r in _rows(data, "fixture builds")}
    roles = {r["subject"]: r["role"] for r in data["rows"]}
    colors = _colors(list(roles), roles)
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    names = [r["subject"] + (" (floor)" if r["role"] == "floor" else "") for r in walls]
    ax.barh(range(len(walls)), [r["median"] for r in walls], color=[colors[r["subject"]] for r in walls])
    for i, r in enumerate(walls):
        built = builds.get(r["subject"])
        text = f"{r['median']:.2f} s" + (
            f", fixture built {built:.0f}x" if built is not None and roles[r["subject"]] != "floor" else ""
        )
        ax.text(r["median"] * 1.01, i, text, va="center", fontsize=8)
    ax.set_yticks(range(len(walls)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, max(r["median"] for r in walls) * 1.45)
    ax.set_xlabel("wall time of the whole pytest -n 2 run, s")
    p = data["params"]
    ax.set_title(
        f"xdist: {p['tests']} tests sharing a session fixture that takes {p['build_s']:g} s to build, pytest -n 2", fontsize=10
    )
    ax.grid(axis="x", alpha=0.25)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


_DRAW["xdist"] = _xdist


def _plugin(plt: Any, data: dict[str, Any]) -> Any:
    cases = list(data["series"]["wall_ms"])
    variants = [("plugin", TIGER, "tiger's plugin active"), ("-p no:tiger", FLOOR, "-p no:tiger")]
    targets = {case: t for case in cases for t in data["targets"] if t["target"].startswith(f"{case}: ")}
    fig, ax = plt.subplots(figsize=(9.5, 1.2 + 1.1 * len(cases)))
    height = 0.38
    top = 0.0
    for i, case in enumerate(cases):
        t = targets.get(case)
        for j, (subject, color, label) in enumerate(variants):
            row = next((r for r in _rows(data, case) if r["subject"] == subject), None)
            if row is None:
                continue
            y = i + (j - 0.5) * height
            ax.barh(y, row["median"], height=height * 0.9, color=color, label=label if i == 0 else None)
            ax.plot(row.get("runs", []), [y] * len(row.get("runs", [])), "|", color="black", markersize=7, alpha=0.6)
            text = f"{row['median']:.0f} ms"
            if subject == "plugin":
                over = next((r for r in _rows(data, f"{case}: overhead")), None)
                if over is not None:
                    text += f"  ({over['median']:+.0f} ms, {over['ratio']:.2f}x)"
            right = max(row["max"], t["limit"] if t is not None and subject == "plugin" else 0)
            top = max(top, right)
            ax.text(right * 1.02, y, text, va="center", fontsize=8)
        if t is not None:  # the limit, across the plugin's bar (the axis is inverted: y - height / 2 is its top)
            y = i - 0.5 * height
            ax.plot([t["limit"]] * 2, [y - height / 2, y + height / 2], color="black", linewidth=1.2, linestyle="--")
            ax.annotate(
                f"target <= {t['limit']:.0f} ms",
                (t["limit"], y - height / 2),
                textcoords="offset points",
                xytext=(0, 1),
                ha="center",
                va="bottom",
                fontsize=6.5,
            )
    ax.set_yticks(range(len(cases)), cases)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("wall time of the whole pytest run, ms: median (bar), each run (tick), target (dashed)")
    ax.grid(axis="x", alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("plugin: a suite that does not use tiger, with tiger's pytest plugin vs -p no:tiger", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig


_DRAW["plugin"] = _plugin


def _join_stall(plt: Any, data: dict[str, Any]) -> Any:
    series = data["series"]
    windows = series["windows_s"]
    fig, axes = plt.subplots(1, 3, figsize=(19, 5), gridspec_kw={"width_ratios": [1.6, 1, 1]})

    def shade(ax: Any) -> None:
        for i, (a, b) in enumerate(windows["lone"]):
            ax.axvspan(a, b, color="#9ecae1", alpha=0.35, label="a lone join" if i == 0 else None)
        group = windows["group"]
        ax.axvspan(min(a for a, _ in group), max(b for _, b in group), color="#fdae6b", alpha=0.35, label="4 joins at once")

    ax = axes[0]
    inserts = series["inserts"]
    ax.plot(
        inserts["t_s"],
        inserts["max_ms"],
        color=TIGER,
        linewidth=1.0,
        marker=".",
        markersize=3,
        label=f"longest insert starting in each {inserts['bin_s'] * 1000:g} ms (none start during a stall)",
    )
    ax.plot(inserts["t_s"], inserts["median_ms"], color="#7a3b00", linewidth=0.8, alpha=0.7, label="median insert per bin")
    limit = next((t["limit"] for t in data["targets"] if "longest single insert" in t["target"]), None)
    if limit is not None:
        ax.axhline(limit * 1000, color="black", linestyle="--", linewidth=0.9, label=f"target: longest < {limit * 1000:g} ms")
    shade(ax)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the inserter's first insert")
    ax.set_ylabel("single insert latency, ms (log)")
    ax.set_title("an insert loop in its own process while others join", fontsize=10)
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")

    ax = axes[1]
    joins = series["joins_s"]
    lone = sorted(joins["lone"])[len(joins["lone"]) // 2]
    names = ["lone join"] + [f"joiner {i + 1}" for i in range(len(joins["group"]))] + ["all 4 done"]
    tiger = [lone, *joins["group"], joins["all_done"]]
    decode_lone = sorted(joins["decode_lone"])[len(joins["decode_lone"]) // 2]
    floor = [decode_lone, *joins["decode_group"], joins["decode_all_done"]]
    ys = range(len(names))
    ax.barh([y - 0.2 for y in ys], tiger, height=0.4, color=TIGER, label="tiger.connect()")
    ax.barh([y + 0.2 for y in ys], floor, height=0.4, color=FLOOR, label="msgpack decode + dict of the snapshot (floor)")
    for y, v in zip(ys, tiger, strict=True):
        ax.text(v * 1.02, y - 0.2, f"{v:.2f} s ({v / lone:.1f}x)", va="center", fontsize=7)
    for y, v in zip(ys, floor, strict=True):
        ax.text(v * 1.02, y + 0.2, f"{v:.2f} s ({v / decode_lone:.1f}x)", va="center", fontsize=7)
    ax.axvline(2.5 * lone, color="black", linestyle="--", linewidth=0.9, label="target: all 4 done within 2.5x a lone join")
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(tiger), 2.5 * lone) * 1.35)
    ax.set_xlabel(f"seconds (x: multiple of the lone one); {data['machine']['cores']} cores")
    ax.set_title("join times: one alone, then 4 at once", fontsize=10)
    ax.grid(axis="x", alpha=0.25)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)

    ax = axes[2]
    rss = series["writer_rss_mb"]
    before = series["writer_rss_before_mb"]
    ax.plot(rss["t_s"], rss["mb"], color=TIGER, linewidth=1.2, label="writer RSS (highest per bin)")
    ax.axhline(before, color=FLOOR, linestyle=":", linewidth=0.9, label=f"before any join: {before:.0f} MB")
    ax.axhline(1.5 * before, color="black", linestyle="--", linewidth=0.9, label="target: peak < 1.5x before")
    shade(ax)
    ax.set_xlim(left=min(0.0, *(a for a, _ in windows["lone"])) - 0.1)
    ax.set_ylim(0, max(max(rss["mb"]), 1.5 * before) * 1.15)
    ax.set_xlabel("seconds since the inserter's first insert")
    ax.set_ylabel("MB")
    ax.set_title("the writer's resident memory", fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    p = data["params"]
    fig.suptitle(f"join-stall: {p['joiners']} fresh processes join a {p['records']:,}-record store while another inserts")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


_DRAW["join-stall"] = _join_stall


def _batch(plt: Any, data: dict[str, Any]) -> Any:
    series = data["series"]["writes_per_s"]
    roles = {s: "floor" if s.startswith("pyzmq") else "tiger" for s in series}
    colors = _colors(list(series), roles)
    sizes = sorted({int(x) for points in series.values() for x in points})
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    ax = axes[0]
    _lines(ax, series, roles, colors)
    for subject in (s for s in series if roles[s] == "tiger"):
        for x in sizes:
            y = series[subject][str(x)]
            ax.annotate(f"{y:,.0f}/s", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("writes per unit (one batch, or that many single calls)")
    ax.set_ylabel("writes/s, median unit (log)")
    ax.set_title("mixed writes over 3 tables: single calls vs one client.batch()", fontsize=10)
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    ax = axes[1]
    pairs = [("tiger", "single calls", "client.batch()"), ("pyzmq REQ/REP (floor)", *_floor_pair(series))]
    width = 0.38
    for j, (name, one_each, batched) in enumerate(pairs):
        if one_each not in series or batched not in series:
            continue
        ratios = [series[batched][str(s)] / series[one_each][str(s)] for s in sizes]
        xs = [i + (j - 0.5) * width for i in range(len(sizes))]
        ax.bar(xs, ratios, width=width * 0.95, color=TIGER if j == 0 else FLOOR, label=name)
        for x, r in zip(xs, ratios, strict=True):
            ax.text(x, r * 1.08, f"{r:.1f}x", ha="center", fontsize=7.5)
    target = next((t for t in data["targets"] if "client.batch()" in t["target"]), None)
    if target is not None:
        size = sizes.index(100) if 100 in sizes else None
        if size is not None:
            ax.plot([size - 0.45, size + 0.45], [target["limit"]] * 2, color="black", linestyle="--", linewidth=1.1)
            ax.annotate(
                f"target >= {target['limit']:g}x at 100",
                (size, target["limit"]),
                textcoords="offset points",
                xytext=(0, -11),
                ha="center",
                fontsize=7,
            )
    ax.set_yscale("log")
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
    ax.set_ylim(0.8, ax.get_ylim()[1] * 2)
    ax.axhline(1.0, color=FLOOR, linewidth=0.8, linestyle=":")
    ax.set_xlabel("writes per unit")
    ax.set_ylabel("batch writes/s / single-call writes/s (log)")
    ax.set_title("how much a batch gains over single calls", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle("batch: N mixed writes (60% insert, 30% update, 10% delete) as N calls vs one client.batch()")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def _floor_pair(series: dict[str, Any]) -> tuple[str, str]:
    """The floor's two series: one round trip per write, one per batch (see bench/batch.py)."""
    floors = [s for s in series if s.startswith("pyzmq")]
    one_each = next((s for s in floors if s.endswith("single calls")), "")
    return one_each, next((s for s in floors if s != one_each), "")


_DRAW["batch"] = _batch


def _aio(plt: Any, data: dict[str, Any]) -> Any:
    rows = [r for r in data["rows"] if r["unit"] == "us" and r["case"] in ("blocking", "asyncio")]
    roles = {r["subject"]: r["role"] for r in rows}
    colors = _colors(list(roles), roles)
    fig, axes = plt.subplots(1, 2, figsize=(17, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    _bars(axes[0], rows, "us", "one insert (tiger: read-your-writes) or one DEALER round trip (floors)", colors)
    ax = axes[1]
    ratios = data["series"]["ratio_per_round"]
    for subject, values in ratios.items():
        floor = roles.get(subject) == "floor"
        median = next(r["median"] for r in _rows(data, "asyncio / blocking") if r["subject"] == subject)
        ax.plot(
            range(1, len(values) + 1),
            values,
            marker="s" if floor else "o",
            color=colors.get(subject, FLOOR),
            linewidth=1.3 if floor else 2.5,
            linestyle="--" if floor else "-",
            label=f"{subject}{' (floor)' if floor else ''}: {median:.2f}x",
        )
    target = next((t for t in data["targets"] if t.get("issue") == 13), None)
    if target is not None:
        ax.axhline(target["limit"], color="black", linestyle="--", linewidth=0.9, label=f"target: <= {target['limit']:g}x")
    ax.axhline(1.0, color=FLOOR, linewidth=0.8, linestyle=":")
    ax.set_ylim(0, max(max(v) for v in ratios.values()) * 1.35)
    rounds = max(len(v) for v in ratios.values())
    ax.set_xticks(range(1, rounds + 1))
    ax.set_xlabel("round (the subjects alternate within each)")
    ax.set_ylabel("asyncio median / blocking median")
    ax.set_title("what awaiting costs, each round (legend: over all rounds)", fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle("aio: a single insert awaited with tiger.aio vs the blocking call, in one process and one event loop")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


_DRAW["aio"] = _aio


def _feed(plt: Any, data: dict[str, Any]) -> Any:
    replicas = data["params"]["replicas"]
    case, from_case = f"lag, {replicas} replicas", f"lag from the insert call, {replicas} replicas"
    rows, from_rows = _rows(data, case), _rows(data, from_case)
    colors = {r["subject"]: c for r, c in zip(rows, [FLOOR, *TIGERS], strict=False)}  # the reference first, grey
    fig, axes = plt.subplots(1, 2, figsize=(16, 5), gridspec_kw={"width_ratios": [1.2, 1]})
    ax = axes[0]
    # (group label, rows, statistic, whether a target is evaluated on it)
    groups = [
        ("p50 from the insert call", from_rows, "median", True),
        ("p50 from acknowledgement\n(between two modes: no ratio)", rows, "median", False),
        ("p99 from acknowledgement", rows, "p99", True),
    ]
    width = 0.8 / len(rows)
    for i, (_, group, key, target) in enumerate(groups):
        for j, row in enumerate(group):
            x = i + (j - (len(group) - 1) / 2) * width
            ax.bar(x, row[key], width=width * 0.95, color=colors[row["subject"]], label=row["subject"] if i == 0 else None)
            ax.text(x, max(row[key], 0) + 5, f"{row[key]:.0f}", ha="center", va="bottom", fontsize=7)
        if target:
            limit = 1.2 * group[0][key]
            ax.plot([i - 0.45, i + 0.45], [limit, limit], color="black", linestyle="--", linewidth=1.0)
            note = "target: 1.2x the replica's"
            ax.annotate(note, (i - 0.45, limit), textcoords="offset points", xytext=(0, 3), ha="left", fontsize=7)
    ax.axhline(0, color=FLOOR, linewidth=0.8)
    ax.set_xticks(range(len(groups)), [label for label, *_ in groups], fontsize=8)
    ax.set_ylabel("lag, us")
    ax.set_ylim(top=max(max(r["median"] for r in from_rows), max(r["p99"] for r in rows)) * 1.25)
    ax.set_title(f"over every record and every one of {replicas} replicas (the targets: dashed)", fontsize=10)
    ax.grid(axis="y", alpha=0.25)
    ax.legend(fontsize=7, loc="upper right")
    ax = axes[1]
    quantiles = data["series"]["quantiles"]
    reference = rows[0]["subject"]
    for subject, values in data["series"]["lag_quantiles_us"].items():
        ax.plot(
            values,
            quantiles,
            color=colors.get(subject, FLOOR),
            linewidth=1.5 if subject == reference else 2,
            linestyle="--" if subject == reference else "-",
            label=subject,
        )
    ax.axvline(0, color=FLOOR, linewidth=0.8)
    ax.set_xscale("symlog", linthresh=10)  # a lag can be negative: B had the change before A's reply arrived
    ax.set_xlabel("lag from acknowledgement, us (symmetric log: linear within +-10 us)")
    ax.set_ylabel("percentile of the lags")
    ax.set_ylim(0, 100)
    ax.set_title("the lags from acknowledgement, percentiles 1 to 99: negative = B before A's reply", fontsize=10)
    ax.grid(which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"feed: a change acknowledged in A, yielded by a feed in B ({replicas} replica processes) vs seen by wait_for")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


_DRAW["feed"] = _feed
