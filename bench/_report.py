"""The results table (markdown) and the targets, from the scenarios' results."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

_TIME_UNITS = {"ns", "us", "ms", "s"}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "builds":
        return f"{value:.0f}"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _times(r: float) -> str:
    return f"{r:.1f}x" if r < 100 else f"{r:,.0f}x"


def versus(tiger: dict[str, Any], row: dict[str, Any]) -> str:
    """How tiger compares with this row, in words: 'tiger 3.2x slower', 'tiger 12x faster'."""
    if row is tiger:
        return "(tiger)"
    a, b = tiger.get("median"), row.get("median")
    if a is None or b is None or not a or not b or math.isnan(a) or math.isnan(b):
        return "-"
    if a < 0 or b < 0:  # a lag can be negative (seen before acknowledged): no meaningful ratio
        return "-"
    if row["role"] == "tiger":  # another tiger setup (writers: with --fsync): its figure as a multiple of the first's
        return f"{b / a:.2f}x {tiger['subject']}'s"
    unit = row["unit"]
    if unit == "builds":
        return f"tiger {a:.0f} vs {b:.0f}"
    r = a / b if row["better"] == "lower" else b / a  # > 1: tiger is worse
    if unit.startswith("B/"):
        return f"tiger uses {_times(r)} the memory"
    if 0.95 <= r <= 1.05:
        return "tiger about equal"
    return f"tiger {_times(r)} slower" if r > 1 else f"tiger {_times(1 / r)} faster"


def scenario_table(result: dict[str, Any]) -> str:
    lines = [
        f"### {result['scenario']}: {result['title']}",
        "",
        "| case | subject | median (or rate) | p99 | max | unit | tiger vs this |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    cases = list(dict.fromkeys(r["case"] for r in result["rows"]))
    order = {"tiger": 0, "floor": 1, "peer": 2}
    rows = sorted(result["rows"], key=lambda r: (cases.index(r["case"]), order.get(r["role"], 3)))
    for row in rows:
        tiger = next((r for r in result["rows"] if r["case"] == row["case"] and r["role"] == "tiger"), None)
        name = row["subject"] + (" (floor)" if row["role"] == "floor" else "")
        lines.append(
            f"| {row['case']} | {name} | {fmt(row.get('median'), row['unit'])} | {fmt(row.get('p99'), row['unit'])} "
            f"| {fmt(row.get('max'), row['unit'])} | {row['unit']} | {versus(tiger, row) if tiger else '-'} |"
        )
    extra = [f"- {note}" for note in result.get("notes", [])]
    extra += [f"- skipped {subject}: {reason}" for subject, reason in result.get("skipped", {}).items()]
    if extra:
        lines += ["", *extra]
    return "\n".join(lines)


def target_line(t: dict[str, Any]) -> tuple[str, str, str, str]:
    verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
    measured = "-" if t["measured"] is None else f"{fmt(t['measured'])} {t['unit']}"
    limit = f"{'<=' if t['at_most'] else '>='} {fmt(t['limit'])} {t['unit']}"
    return t["target"], measured, limit, verdict + (f" ({t['detail']})" if t.get("detail") else "")


def targets_table(results: list[dict[str, Any]], issue: int = 5) -> str:
    """The targets of one issue (a target without one is issue 5's, the first to set targets)."""
    lines = [
        f"### targets (issue {issue})",
        "",
        "| scenario | target | measured | limit | result |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for result in results:
        for t in result.get("targets", []):
            if t.get("issue", 5) == issue:
                name, measured, limit, verdict = target_line(t)
                lines.append(f"| {result['scenario']} | {name} | {measured} | {limit} | {verdict} |")
    return "\n".join(lines)


def report(results: list[dict[str, Any]], machine_line: str, command: str) -> str:
    parts = [f"Command: `{command}`", "", f"Machine: {machine_line}", ""]
    for result in results:
        parts += [scenario_table(result), ""]
        extra = _EXTRA.get(result["scenario"])
        if extra is not None and result["rows"]:
            parts += [extra(result), ""]
    for issue in sorted({t.get("issue", 5) for r in results for t in r.get("targets", [])}):
        parts += [targets_table(results, issue), ""]
    return "\n".join(parts)


def _writers_scaling(result: dict[str, Any]) -> str:
    """Aggregate writes/s by process count, one line per subject, with the ratios issue 12 sets targets on."""
    series: dict[str, dict[str, float]] = result["series"]["writes_per_s"]
    counts = sorted({int(n) for points in series.values() for n in points})
    roles = {r["subject"]: r["role"] for r in result["rows"]}
    ratios = [(a, b) for a, b in ((4, 1), (8, 4), (8, 1)) if a in counts and b in counts]
    lines = [
        "#### writers: aggregate writes/s by client processes, and how it scales",
        "",
        "| subject | "
        + " | ".join(f"{n} process{'es' if n > 1 else ''}" for n in counts)
        + "".join(f" | {a} / {b}" for a, b in ratios)
        + " |",
        "| --- |" + " ---: |" * (len(counts) + len(ratios)),
    ]
    for subject, points in series.items():
        rates = [points.get(str(n)) for n in counts]
        cells = [fmt(rate, "writes/s") for rate in rates]
        for a, b in ratios:
            x, y = points.get(str(a)), points.get(str(b))
            cells.append(f"{x / y:.2f}x" if x and y else "-")
        name = subject + (" (floor)" if roles.get(subject) == "floor" else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _join_stall_joins(result: dict[str, Any]) -> str:
    """Each join: when it started (seconds since the inserter's first insert) and how long it took."""
    joins = result["series"]["joins_s"]
    windows = result["series"]["windows_s"]
    lone = statistics.median(joins["lone"])
    lines = [
        "#### join-stall: each join",
        "",
        "| join | started at (s since the first insert) | join time (s) | x the lone join's median |",
        "| --- | ---: | ---: | ---: |",
    ]
    for i, (start, end) in enumerate(windows["lone"], 1):
        lines.append(f"| lone join {i} | {start:.3f} | {end - start:.3f} | {(end - start) / lone:.2f}x |")
    for i, (start, end) in enumerate(windows["group"], 1):
        lines.append(
            f"| joiner {i} of {len(windows['group'])} at once | {start:.3f} | {end - start:.3f} | {(end - start) / lone:.2f}x |"
        )
    done = joins["all_done"]
    lines.append(f"| all {len(windows['group'])} done | - | {done:.3f} | {done / lone:.2f}x |")
    return "\n".join(lines)


_EXTRA: dict[str, Callable[[dict[str, Any]], str]] = {"writers": _writers_scaling, "join-stall": _join_stall_joins}
