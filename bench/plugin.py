"""plugin: what tiger's pytest plugin costs a suite that does not use it.

The wall time of a 1-test and a 200-test suite (plain asserts, no tiger fixture)
with the plugin active (the default once tiger is installed) vs ``-p no:tiger``,
each run as ``python -m pytest -q -p no:cacheprovider -p no:xdist SUITE`` and the
200 tests also with ``-n 2`` in place of ``-p no:xdist``; the two variants are run
interleaved, several rounds, and compared by their medians. Target (issue 5):
the plugin's median within 5% or 30 ms of ``-p no:tiger``'s, whichever is larger.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench._common import Result, child_env, progress, step
from bench._peers import Context

NAME = "plugin"
FILES = 4
PER_FILE = 50
PLUGIN, NO_TIGER = "plugin", "-p no:tiger"
VARIANTS: dict[str, tuple[str, list[str]]] = {
    # name: (role, extra pytest args)
    PLUGIN: ("tiger", []),
    NO_TIGER: ("floor", ["-p", "no:tiger"]),
}
RATIO_LIMIT = 1.05
ABSOLUTE_LIMIT_MS = 30.0

_INI = "[pytest]\n"
_CONFTEST = '"""Nothing here: the suite uses no fixture, tiger\'s or any other."""\n'
_ONE_TEST = """
def test_one():
    assert sum(range(10)) == 45
"""
_TEST_FILE = """
import pytest


@pytest.mark.parametrize("i", range({per_file}))
def test_plain(i):
    assert i * 2 == i + i
"""


def run(ctx: Context) -> Result:
    rounds = ctx.pick(9, 3)
    one = _write_suite(ctx.tmp / "one-test", {"test_one.py": _ONE_TEST})
    many = _write_suite(ctx.tmp / "200-tests", {f"test_plain_{f}.py": _TEST_FILE.format(per_file=PER_FILE) for f in range(FILES)})
    tests = FILES * PER_FILE
    # case: (suite, its test count, extra pytest args)
    cases: dict[str, tuple[Path, int, list[str]]] = {
        "1 test": (one, 1, ["-p", "no:xdist"]),
        f"{tests} tests": (many, tests, ["-p", "no:xdist"]),
    }
    res = Result(
        NAME,
        f"what tiger's pytest plugin adds to the wall time of a 1-test and a {tests}-test suite that do not use it",
        "Two generated suites that use no tiger fixture (plain asserts; pytest.ini and conftest.py with nothing of "
        f"tiger's): 1 test in one file, and {tests} tests ({FILES} files of {PER_FILE} parametrized tests). Each is run "
        "as `python -m pytest -q -p no:cacheprovider -p no:xdist SUITE` (and the larger one also with `-n 2` in place "
        "of `-p no:xdist`), with tiger's plugin active (the default once tiger is installed) and with `-p no:tiger`, in "
        "the suite's directory, TIGER_URL, PYTEST_ADDOPTS/PLUGINS/DISABLE_PLUGIN_AUTOLOAD and PYTHONDONTWRITEBYTECODE "
        "removed from the environment (the plugin starts its own writer, and modules are read from __pycache__, as on "
        "a developer's machine); beforehand, an untimed run with --trace-config checks the plugin is registered in one "
        "variant and not in the other. Wall time: time.perf_counter around the whole subprocess.run. One uncounted "
        "warm-up round first (it writes the suites' and tiger's __pycache__), then rounds of every case with both "
        "variants back to back, the order of the two swapped every round, so noise lands on both; every run must exit 0 "
        "and report all its tests passed. Figures are the medians "
        "over the rounds; the overhead is the plugin's median minus -p no:tiger's (and, less moved by drifts in the "
        "machine's load, the median of each round's difference). Target: plugin median <= max(no:tiger median x 1.05, "
        "no:tiger median + 30 ms).",
        params={"tests": [1, tests], "files": [1, FILES], "rounds": rounds, "warmup_rounds": 1, "xdist_workers": 2},
    )
    if importlib.util.find_spec("xdist") is None:
        res.skip(f"{tests} tests, -n 2", "pytest-xdist not installed (pip install pytest-xdist)")
    else:
        cases[f"{tests} tests, -n 2"] = (many, tests, ["-n", "2"])

    with step(NAME, "the plugin loads in one variant and not in the other"):
        _check_variants(one)
    walls: dict[str, dict[str, list[float]]] = {case: {name: [] for name in VARIANTS} for case in cases}
    for r in range(-1, rounds):  # round -1: warm-up, not counted
        label = "warm-up round" if r < 0 else f"round {r + 1}/{rounds}"
        order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
        with step(NAME, f"{label}: {len(cases)} cases x {len(order)} variants"):
            for case, (suite, count, args) in cases.items():
                for name in order:
                    wall = _run_suite(suite, count, [*args, *VARIANTS[name][1]])
                    if r >= 0:
                        walls[case][name].append(wall)

    for case, by_variant in walls.items():
        for name, runs in by_variant.items():
            ms = [w * 1000 for w in runs]
            stats = {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "samples": len(ms)}
            label = "tiger's plugin active (the default)" if name == PLUGIN else "the plugin turned off"
            res.row(case, name, VARIANTS[name][0], "ms", stats, runs=[round(v, 2) for v in ms], label=label)
        plugin, floor = res.find(case, PLUGIN), res.find(case, NO_TIGER)
        assert plugin is not None and floor is not None
        extra_ms = plugin["median"] - floor["median"]
        ratio = plugin["median"] / floor["median"]
        # the same round's two runs, back to back: less moved by slow drifts in the machine's load than the medians
        paired = statistics.median(p - f for p, f in zip(plugin["runs"], floor["runs"], strict=True))
        limit = max(floor["median"] * RATIO_LIMIT, floor["median"] + ABSOLUTE_LIMIT_MS)
        res.row(
            f"{case}: overhead",
            "plugin - no:tiger",
            "tiger",
            "ms",
            extra_ms,
            ratio=ratio,
            paired_median=paired,
            label="difference of the medians (paired_median: median of each round's difference)",
        )
        res.target(
            f"{case}: plugin median within 5% or 30 ms of -p no:tiger's, whichever is larger",
            plugin["median"],
            limit,
            "ms",
            at_most=True,
            detail=f"-p no:tiger {floor['median']:.0f} ms, plugin {plugin['median']:.0f} ms: {extra_ms:+.0f} ms, {ratio:.2f}x",
        )
        res.notes.append(
            f"{case}: the plugin adds {extra_ms:+.0f} ms to the median wall time ({ratio:.2f}x -p no:tiger's); "
            f"median of each round's difference {paired:+.0f} ms."
        )
        progress(NAME, res.notes[-1])
    res.notes.append(f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min).")
    res.series["wall_ms"] = {case: {r["subject"]: r["median"] for r in res.rows if r["case"] == case} for case in walls}
    return res


def _write_suite(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "pytest.ini").write_text(_INI)
    (root / "conftest.py").write_text(_CONFTEST)
    for name, text in files.items():
        (root / name).write_text(text.lstrip())
    return root


def _env() -> dict[str, str]:
    """child_env() (no TIGER_URL: the plugin starts its own writer), nothing that changes which plugins load, and
    bytecode written: with PYTHONDONTWRITEBYTECODE every run would compile tiger's modules again (about 0.1 s here),
    a cost a developer's machine, with its __pycache__, does not pay."""
    env = child_env()
    for key in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTHONDONTWRITEBYTECODE"):
        env.pop(key, None)
    return env


def _pytest(suite: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", *args, str(suite)]
    return subprocess.run(command, cwd=suite, env=_env(), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _failed(proc: subprocess.CompletedProcess[str], why: str) -> RuntimeError:
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    return RuntimeError(f"{' '.join(proc.args[1:])}: {why}:\n{tail}")


def _run_suite(suite: Path, count: int, args: list[str]) -> float:
    """Seconds of one whole ``python -m pytest -q -p no:cacheprovider ARGS SUITE``."""
    t0 = time.perf_counter()
    proc = _pytest(suite, ["-q", "-p", "no:cacheprovider", *args])
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise _failed(proc, f"exited {proc.returncode}")
    if f"{count} passed" not in proc.stdout:
        raise _failed(proc, f"did not report {count} passed")
    return wall


def _check_variants(suite: Path) -> None:
    """Untimed: pytest's --trace-config lists tiger's plugin module as registered with the plugin, and not with -p no:tiger."""
    for name, (_, extra) in VARIANTS.items():
        proc = _pytest(suite, ["-p", "no:cacheprovider", "-p", "no:xdist", "--trace-config", *extra])
        if proc.returncode != 0:
            raise _failed(proc, f"exited {proc.returncode}")
        if ("<module 'tiger.pytest_plugin'" in proc.stdout) != (name == PLUGIN):
            raise _failed(proc, "tiger's plugin " + ("is not loaded" if name == PLUGIN else "is still loaded"))
