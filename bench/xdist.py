"""xdist: 200 tests sharing a session fixture that takes 1 s to build, under ``pytest -n 2``.

tiger's ``tiger_once`` vs the FileLock recipe from the pytest-xdist docs vs no
sharing (every worker builds it), and the same suite with no fixture at all (the
floor: what pytest and xdist cost by themselves).
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench._common import Result, child_env, step
from bench._peers import Context

NAME = "xdist"
TESTS = 200
FILES = 4
BUILD_SECONDS = 1.0

_BUILD = f'''
import json, os, time


def build_catalog():
    """The expensive session data: {BUILD_SECONDS:g} s to build; every build is logged."""
    time.sleep({BUILD_SECONDS!r})
    with open(os.environ["BENCH_BUILD_LOG"], "a") as log:
        log.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
    return {{"plans": [{{"id": f"plan_{{i}}", "amount": 100 * i}} for i in range(1, 11)]}}
'''

VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    # name: (role, conftest body, extra pytest args)
    "tiger_once": (
        "tiger",
        _BUILD
        + """

import pytest


@pytest.fixture(scope="session")
def catalog(tiger_once):
    return tiger_once("catalog", build_catalog)
""",
        [],
    ),
    "FileLock recipe": (
        "peer",
        _BUILD
        + """

import pytest
from filelock import FileLock


@pytest.fixture(scope="session")
def catalog(tmp_path_factory, worker_id):
    # the recipe from the pytest-xdist docs ("Making session-scoped fixtures execute only once")
    if worker_id == "master":
        return build_catalog()
    root_tmp_dir = tmp_path_factory.getbasetemp().parent
    fn = root_tmp_dir / "data.json"
    with FileLock(str(fn) + ".lock"):
        if fn.is_file():
            data = json.loads(fn.read_text())
        else:
            data = build_catalog()
            fn.write_text(json.dumps(data))
    return data
""",
        ["-p", "no:tiger"],
    ),
    "no sharing": (
        "peer",
        _BUILD
        + """

import pytest


@pytest.fixture(scope="session")
def catalog():
    return build_catalog()
""",
        ["-p", "no:tiger"],
    ),
    "no fixture": (
        "floor",
        """
import pytest


@pytest.fixture(scope="session")
def catalog():
    return {"plans": [{"id": f"plan_{i}", "amount": 100 * i} for i in range(1, 11)]}
""",
        ["-p", "no:tiger"],
    ),
}

_TEST_FILE = """
import pytest


@pytest.mark.parametrize("i", range({per_file}))
def test_uses_the_shared_catalog(catalog, i):
    assert catalog["plans"][0]["amount"] == 100
    assert len(catalog["plans"]) == 10
"""


def run(ctx: Context) -> Result:
    repeats = ctx.pick(2, 1)
    res = Result(
        NAME,
        f"{TESTS} tests sharing a session fixture that takes {BUILD_SECONDS:g} s to build, run with pytest -n 2",
        f"A generated suite ({FILES} files, {TESTS} tests, each using the session fixture) is run with "
        f"`python -m pytest -n 2 -q -p no:cacheprovider` in a fresh directory with its own pytest.ini, TIGER_URL removed "
        "from the environment (so tiger's plugin starts its own writer). Wall time: time.perf_counter around the whole "
        "subprocess, median of the repeats. Builds: lines the fixture's factory appends to a log file. The non-tiger "
        "variants run with -p no:tiger (their users would not have tiger's plugin).",
        params={"tests": TESTS, "files": FILES, "build_s": BUILD_SECONDS, "workers": 2, "repeats": repeats},
    )
    if importlib.util.find_spec("xdist") is None:
        res.skip("all", "pytest-xdist not installed (pip install pytest-xdist)")
        return res
    for name, (role, conftest, extra) in VARIANTS.items():
        if name == "FileLock recipe" and importlib.util.find_spec("filelock") is None:
            res.skip(name, "filelock not installed (pip install filelock)")
            continue
        walls, builds = [], []
        for r in range(repeats):
            with step(NAME, f"{name}: pytest -n 2 ({r + 1}/{repeats})"):
                wall, built = _run_suite(ctx.tmp, conftest, extra)
            walls.append(wall)
            builds.append(built)
        label = {"tiger_once": "tiger_once('catalog', build) via tiger's pytest plugin"}.get(name, name)
        wall_stats = {"median": statistics.median(walls), "max": max(walls), "samples": len(walls)}
        res.row("wall time", name, role, "s", wall_stats, runs=walls, label=label)
        if role != "floor":
            res.row(
                "fixture builds", name, role, "builds", {"median": statistics.median(builds), "max": max(builds)}, runs=builds
            )
    tiger = res.find("fixture builds", "tiger_once")
    if tiger:
        res.notes.append(f"tiger_once built the fixture {tiger['median']:.0f} time(s) per run of pytest -n 2.")
    return res


def _run_suite(tmp: Path, conftest: str, extra: list[str]) -> tuple[float, int]:
    root = Path(tempfile.mkdtemp(dir=tmp, prefix="suite-"))
    (root / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (root / "conftest.py").write_text(textwrap.dedent(conftest))
    for f in range(FILES):
        (root / f"test_suite_{f}.py").write_text(_TEST_FILE.format(per_file=TESTS // FILES))
    log = root / "builds.log"
    log.touch()
    env = child_env()
    env["BENCH_BUILD_LOG"] = str(log)
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    command = [sys.executable, "-m", "pytest", "-n", "2", "-q", "--basetemp", str(root / "tmp"), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"pytest exited {proc.returncode}:\n{tail}")
    return wall, len(log.read_text().split())
