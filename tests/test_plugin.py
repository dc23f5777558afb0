"""The pytest plugin, run for real: pytest in subprocesses (pytester), with and without xdist."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from _util import alive

import tiger

RUN_TIMEOUT = 120


@pytest.fixture(autouse=True)
def _own_writer(monkeypatch):
    """The inner runs start their own writer unless a test says otherwise."""
    monkeypatch.delenv("TIGER_URL", raising=False)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=RUN_TIMEOUT)


ONCE_SUITE = """
import os, uuid
import pytest

def build():
    with open({built!r}, "a") as f:
        f.write(f"{{os.getpid()}}\\n")
    return {{"token": uuid.uuid4().hex}}

@pytest.mark.parametrize("i", range(40))
def test_shares_the_value(tiger_once, i):
    value = tiger_once("seed", build)
    with open({seen!r}, "a") as f:
        f.write(value["token"] + "\\n")
"""


@pytest.mark.parametrize("xdist", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_tiger_once_builds_exactly_once_across_workers(pytester, tmp_path, xdist):
    built, seen = tmp_path / "built", tmp_path / "seen"
    pytester.makepyfile(test_once=ONCE_SUITE.format(built=str(built), seen=str(seen)))
    result = run(pytester, *xdist)
    result.assert_outcomes(passed=40)
    assert len(built.read_text().splitlines()) == 1
    values = seen.read_text().splitlines()
    assert len(values) == 40 and len(set(values)) == 1


def test_per_test_namespaces_isolate_and_are_cleared(pytester, tmp_path):
    pytester.makepyfile(
        test_ns=f"""
        import os, tiger

        def _insert_and_check(tiger_client, tiger_namespace, who):
            plans = tiger_client.table("plans", prefix="plan")
            assert tiger.current_namespace() == tiger_namespace
            assert os.environ["PYTEST_XDIST_WORKER"] in tiger_namespace
            plans.insert({{"id": "plan_same", "who": who}})
            tiger_client.sync()
            assert plans["plan_same"]["who"] == who
            assert plans.count() == 1
            with open({str(tmp_path / "workers")!r}, "a") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")

        def test_a(tiger_client, tiger_namespace):
            _insert_and_check(tiger_client, tiger_namespace, "a")

        def test_b(tiger_client, tiger_namespace):
            _insert_and_check(tiger_client, tiger_namespace, "b")
        """
    )
    with tiger.serve() as server:
        result = run(pytester, "-n", "2", "--tiger-url", server.url)
        result.assert_outcomes(passed=2)
        assert sorted((tmp_path / "workers").read_text().split()) == ["gw0", "gw1"]
        with tiger.connect(server.url) as client:
            assert client.namespaces() == []  # both tests' namespaces were cleared
        assert server.running  # a writer given by --tiger-url is never stopped


def test_namespace_is_current_in_the_tests_own_fixtures(pytester):
    pytester.makepyfile(
        test_fixture_ns="""
        import pytest, tiger

        @pytest.fixture
        def plan(tiger_client):
            # set up before tiger_namespace in the argument list, yet inside it
            return tiger_client.table("plans", prefix="plan").insert({"id": "plan_f"}), tiger.current_namespace()

        def test_uses_it(plan, tiger_namespace, tiger_client):
            record, ns_at_setup = plan
            assert ns_at_setup == tiger_namespace
            assert "plan_f" in tiger_client.table("plans")
        """
    )
    run(pytester, "-p", "no:xdist").assert_outcomes(passed=1)


def test_a_failing_factory_fails_every_caller_with_once_failed(pytester, tmp_path):
    built = tmp_path / "built"
    pytester.makepyfile(
        test_fail=f"""
        import pytest, tiger

        def build():
            with open({str(built)!r}, "a") as f:
                f.write("x\\n")
            raise ValueError("no database today")

        @pytest.mark.parametrize("i", range(6))
        def test_needs_it(tiger_once, i):
            tiger_once("db", build)
        """
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(failed=6)
    assert built.read_text() == "x\n"
    assert (
        len(re.findall(r"OnceFailed: once 'db' failed in gw\d \(pid \d+\): ValueError: no database today", result.stdout.str()))
        >= 6
    )


def test_a_builder_that_dies_is_replaced_and_the_run_passes(pytester, tmp_path):
    built = tmp_path / "built"
    pytester.makepyfile(
        test_dies=f"""
        import os, subprocess, sys
        import pytest, tiger

        DIE = "import os, tiger; tiger.connect().once('fixture', lambda: os._exit(3))"

        def build():
            with open({str(built)!r}, "a") as f:
                f.write("built\\n")
            return 42

        def test_first_a_builder_dies(tiger_client, tiger_once):
            assert subprocess.run([sys.executable, "-c", DIE], timeout=60).returncode == 3
            with tiger.namespace("global"):
                tiger_client.table("signals").insert({{"id": "claim-orphaned"}})
            assert tiger_once("fixture", build) == 42

        @pytest.mark.parametrize("i", range(5))
        def test_others_wait(tiger_client, tiger_once, i):
            with tiger.namespace("global"):
                tiger_client.table("signals").wait_for("claim-orphaned", timeout=60)
            assert tiger_once("fixture", build, timeout=60) == 42
        """
    )
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=6)
    assert built.read_text() == "built\n"


WRITER_PID = """
import pathlib

def test_ok(tiger_client):
    pathlib.Path({path!r}).write_text(str(tiger_client.stats()["pid"]))
"""


def test_no_writer_outlives_the_run(pytester, tmp_path):
    pid_file = tmp_path / "pid"
    pytester.makepyfile(test_ok=WRITER_PID.format(path=str(pid_file)))
    for args in (["-n", "2"], ["-p", "no:xdist"]):
        result = run(pytester, *args)
        result.assert_outcomes(passed=1)
        assert not alive(int(pid_file.read_text()))


def test_no_writer_outlives_a_killed_controller(pytester, tmp_path):
    started = tmp_path / "started"
    pytester.makepyfile(
        test_block=f"""
        import pathlib, threading

        def test_blocks(tiger_client):
            pathlib.Path({str(started)!r}).write_text(str(tiger_client.stats()["pid"]))
            threading.Event().wait(120)
        """
    )
    temp = tempfile.mkdtemp(prefix="tt", dir="/tmp")  # the killed run leaves its directory (README): here, removed below
    controller = subprocess.Popen(
        [sys.executable, "-u", "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "-s", str(pytester.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=pytester.path,
        start_new_session=True,
        env={**os.environ, "TMPDIR": temp},
    )
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the blocking test never started"
            time.sleep(0.05)  # sleep-ok: polling for a file another process writes
        pid = int(started.read_text())  # the writer: started by a worker, owned by the controller
        assert alive(pid)
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait(10)
        while alive(pid):
            assert time.monotonic() < deadline + 10, f"writer {pid} outlived its killed controller"
            time.sleep(0.05)  # sleep-ok: polling another process's exit
    finally:
        try:
            os.killpg(controller.pid, signal.SIGKILL)  # the xdist workers we started, if still there
        except ProcessLookupError:
            pass
        controller.communicate(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def test_keep_keeps_the_data_and_names_the_namespace_of_a_failed_test(pytester):
    pytester.makepyfile(
        test_keep="""
        def test_fails(tiger_client, tiger_namespace):
            tiger_client.table("plans").insert({"id": "kept"})
            assert False
        """
    )
    with tiger.serve() as server:
        result = run(pytester, "-p", "no:xdist", "--tiger-url", server.url, "--tiger-keep")
        result.assert_outcomes(failed=1)
        [kept] = re.findall(r"namespace kept: (\w+:main::test_keep.py::test_fails)", result.stdout.str())
        with tiger.connect(server.url) as client, tiger.namespace(kept):
            assert "kept" in client.table("plans")


def test_isolate_ini_gives_every_test_a_namespace(pytester):
    pytester.makeini("[pytest]\ntiger_isolate = true\n")
    pytester.makepyfile(
        test_iso="""
        import tiger

        def test_one():
            assert tiger.current_namespace().endswith("test_iso.py::test_one")

        def test_two():
            assert tiger.current_namespace().endswith("test_iso.py::test_two")
        """
    )
    run(pytester, "-n", "2").assert_outcomes(passed=2)


def test_seed_files_are_loaded_into_global_once(pytester, tmp_path):
    (tmp_path / "plans.jsonl").write_text(
        '{"table": "plans", "record": {"id": "plan_a", "amount": 1}}\n{"table": "plans", "record": {"id": "plan_b"}}\n'
    )
    (tmp_path / "more.json").write_text('{"customers": [{"id": "cus_1"}, {"id": "cus_2"}]}')
    pytester.makeini(f"[pytest]\ntiger_seed =\n    {tmp_path / 'plans.jsonl'}\n    {tmp_path / 'more.json'}\n")
    pytester.makepyfile(
        test_seeded="""
        import pytest

        @pytest.mark.parametrize("i", range(4))
        def test_sees_seed(tiger_client, i):
            assert tiger_client.table("plans")["plan_a"]["amount"] == 1
            assert tiger_client.table("plans").count() == 2
            assert tiger_client.table("customers").count() == 2
        """
    )
    run(pytester, "-n", "2").assert_outcomes(passed=4)


def test_a_bad_seed_file_fails_every_test_using_tiger_naming_the_line(pytester, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"table": "plans", "record": {"id": "plan_a"}}\n{"table": "plans"}\n')
    pytester.makeini(f"[pytest]\ntiger_seed = {tmp_path / 'bad.jsonl'}\n")
    pytester.makepyfile(test_x="def test_x(tiger_client): pass\ndef test_y(tiger_client): pass\ndef test_z(): pass")
    result = run(pytester, "-p", "no:xdist")
    result.assert_outcomes(passed=1, errors=2)
    # Counted on the traceback's "E" lines only: whether the short summary repeats the message whole
    # depends on the terminal width of the machine running the suite.
    failures = re.findall(
        r"^E\s+\S*OnceFailed: once 'tiger_seed' failed in main \(pid \d+\): SeedError: \S*bad.jsonl:2: ",
        result.stdout.str(),
        re.MULTILINE,
    )
    assert len(failures) == 2


def test_a_seed_nested_past_the_recursion_limit_failed_tiger_seed_naming_no_file_nor_line(pytester, tmp_path):
    # 5000 nested arrays: OnceFailed "... RecursionError: maximum recursion depth exceeded while decoding a JSON
    # array", where 40 levels are refused naming the file, the line and the field
    (tmp_path / "deep.jsonl").write_text('{"table": "t", "record": {"id": "x", "v": ' + "[" * 5000 + "]" * 5000 + "}}\n")
    pytester.makeini(f"[pytest]\ntiger_seed = {tmp_path / 'deep.jsonl'}\n")
    pytester.makepyfile(test_x="def test_x(tiger_client): pass\ndef test_y(tiger_client): pass")
    result = run(pytester, "-p", "no:xdist")
    result.assert_outcomes(errors=2)
    assert "RecursionError" not in result.stdout.str()
    failures = re.findall(
        r"^E\s+\S*OnceFailed: once 'tiger_seed' failed in main \(pid \d+\): SeedError: "
        r"\S*deep.jsonl:1: record\['v'\](\[0\]){31}: nested deeper than 32 levels$",
        result.stdout.str(),
        re.MULTILINE,
    )
    assert len(failures) == 2, result.stdout.str()


SHARED_SUITE = """
import asyncio
import pytest
import tiger

def build():
    yield {{"token": 1}}
    with open({torn!r}, "a") as f:
        f.write("torn\\n")

@pytest.fixture(scope="session")
def value(tiger_once):
    return tiger_once("value", build)

SHARED = "tiger_client is shared by every test of this pytest process"

def test_a_close(tiger_client, value):
    with pytest.raises(tiger.TigerError, match=SHARED + ".* use tiger.connect"):
        tiger_client.close()

def test_b_with_block(tiger_client):
    with pytest.raises(tiger.TigerError, match=SHARED):
        with tiger_client:
            pytest.fail("the block ran")

def test_c_tear_down(tiger_client, tiger_aclient):
    with pytest.raises(tiger.TigerError, match=SHARED):
        tiger_client.tear_down_once_values()
    with pytest.raises(tiger.TigerError, match=SHARED):
        asyncio.run(tiger_aclient.tear_down_once_values())

def test_d_closes_its_own_aclient(tiger_aclient):
    asyncio.run(tiger_aclient.close())  # its own socket only: the fixture closes it again, after the test

@pytest.mark.parametrize("i", range(3))
def test_later(tiger_client, tiger_aclient, tiger_namespace, value, i):
    assert value == {{"token": 1}}
    assert tiger_client.table("t").insert({{"id": "x"}})["id"] == "x"
    assert asyncio.run(tiger_aclient.table("t").insert({{"id": "y"}}))["id"] == "y"
    with open({torn!r}, "a"):
        pass
    with open({torn!r}) as f:
        assert f.read() == ""  # not torn down yet

def test_own_client_closes(tiger_url):
    with tiger.connect(tiger_url) as client:
        client.table("t").insert({{"id": "own"}})
"""


@pytest.mark.parametrize("xdist", [["-n", "2", "--dist", "loadfile"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_a_test_closing_the_shared_tiger_client_failed_every_later_test_of_its_process(pytester, tmp_path, xdist):
    # tiger_client.close() (or a `with tiger_client:` block) in a test closed the session's client: the run's
    # tiger_once teardowns ran then, and every later test of the process failed with "this client is closed"
    torn = tmp_path / "torn"
    pytester.makepyfile(test_shared=SHARED_SUITE.format(torn=str(torn)))
    result = run(pytester, "-p", "no:randomly", *xdist)
    result.assert_outcomes(passed=8)
    assert torn.read_text() == "torn\n"  # once, at the end of the run


def test_the_plugins_own_close_of_the_shared_client_still_runs_its_once_teardowns(pytester, tmp_path):
    # The shared client refuses close() and tear_down_once_values(), which Client.close calls: the plugin's
    # close at the end of the run must still run the teardown of a value built by tiger_client.once
    torn = tmp_path / "torn"
    pytester.makepyfile(
        test_own=f"""
        def build():
            yield 1
            open({str(torn)!r}, "w").close()

        def test_own_once(tiger_client):
            assert tiger_client.once("own", build) == 1
        """
    )
    run(pytester, "-p", "no:xdist").assert_outcomes(passed=1)
    assert torn.exists()


def test_stats_summary(pytester):
    pytester.makepyfile(
        test_s="""
        def test_s(tiger_client, tiger_once):
            tiger_client.table("plans").insert({"id": "p"})
            tiger_once("k", lambda: 1)
        """
    )
    result = run(pytester, "-n", "2", "--tiger-stats")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*tiger*", "*writes applied*", "*plans: 1 records in 1 namespaces*", "*k: done by gw*"])


def test_stats_summary_listed_a_factory_that_skipped_as_failed_without_a_word(pytester):
    # A user trial: --tiger-stats listed a key whose factory called pytest.skip as "skipping: failed by gw1".
    pytester.makepyfile(
        test_s="""
        import pytest

        def test_s(tiger_once):
            tiger_once("skipping", lambda: pytest.skip("no card network here"))
        """
    )
    result = run(pytester, "-p", "no:xdist", "--tiger-stats")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*skipping: failed (Skipped: no card network here) by main*"])


def test_stats_summary_left_out_the_data_directory_of_a_writer_given_by_url(pytester, tmp_path):
    """``--tiger-stats`` said nothing of the writer's data directory (``tiger stats`` does: its path, fsync
    and whether it takes writes), though a writer given by ``--tiger-url`` may keep one."""
    pytester.makepyfile(test_s="def test_s(tiger_client):\n    tiger_client.table('plans').insert({'id': 'p'})\n")
    with tiger.serve(data=tmp_path / "data", fsync="always") as server:
        result = run(pytester, "-p", "no:xdist", "--tiger-url", server.url, "--tiger-stats")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*data     {tmp_path / 'data'}", "*fsync    always", "*log      * bytes", "*fault    none"])
    result = run(pytester, "-p", "no:xdist", "--tiger-stats")  # a writer the run started: memory only
    result.stdout.fnmatch_lines(["*data     none (memory only)"])


def test_disabled_with_p_no_tiger(pytester):
    pytester.makepyfile(test_off="def test_off(tiger_url): pass")
    result = run(pytester, "-p", "no:tiger", "-p", "no:xdist")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'tiger_url' not found*"])
    assert "tiger: writer" not in result.stdout.str()


def test_load_and_dump_commands(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text(
        textwrap.dedent(
            """\
            {"table": "plans", "record": {"id": "plan_b", "created": 2}}
            {"table": "plans", "record": {"id": "plan_a", "created": 1}}
            {"table": "customers", "namespace": "n1", "record": {"id": "cus_1", "created": 3, "name": "Zoë"}}
            """
        )
    )
    with tiger.serve() as server:
        tiger_cmd = [sys.executable, "-m", "tiger"]
        out = subprocess.run([*tiger_cmd, "load", str(seed), "--url", server.url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "loaded 3 records" in out.stdout
        out = subprocess.run([*tiger_cmd, "dump", "--url", server.url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [
            '{"table": "customers", "namespace": "n1", "record": {"id": "cus_1", "created": 3, "name": "Zoë"}}',
            '{"table": "plans", "namespace": "global", "record": {"id": "plan_b", "created": 2}}',
            '{"table": "plans", "namespace": "global", "record": {"id": "plan_a", "created": 1}}',
        ]
        bad = tmp_path / "bad.jsonl"
        bad.write_text("{not json\n")
        out = subprocess.run([*tiger_cmd, "load", str(bad), "--url", server.url], capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "bad.jsonl:1: not JSON" in out.stderr


def test_once_keys_start_afresh_in_each_run_on_a_writer_given_by_url(pytester, tmp_path):
    built = tmp_path / "built"
    pytester.makepyfile(
        test_again=f"""
        def test_builds(tiger_once):
            def build():
                with open({str(built)!r}, "a") as f:
                    f.write("x\\n")
                return 1
            assert tiger_once("per-run", build) == 1
        """
    )
    with tiger.serve() as server:
        for _ in range(2):
            run(pytester, "-p", "no:xdist", "--tiger-url", server.url).assert_outcomes(passed=1)
    assert built.read_text() == "x\nx\n"  # once per run, not once per writer


def test_a_writer_that_cannot_start_stops_the_run_with_one_line(pytester, tmp_path):
    """The writer starts when a test first needs it; a failed start stops the run, naming why, without INTERNALERROR."""
    broken = tmp_path / "broken"
    (broken / "tiger").mkdir(parents=True)
    (broken / "tiger" / "__init__.py").write_text("raise SystemExit('this tiger is broken on purpose')\n")
    ran = tmp_path / "ran"
    pytester.makeconftest(f"import os\nos.environ['PYTHONPATH'] = {str(broken)!r}  # what the writer process imports\n")
    pytester.makepyfile(test_x=f"def test_x(tiger_url):\n    open({str(ran)!r}, 'w').close()\n")
    for args in (["-n", "2"], ["-p", "no:xdist"]):
        result = run(pytester, *args)
        assert result.ret == pytest.ExitCode.INTERRUPTED
        started = r"tiger: the run's writer did not start \(the tiger writer for ipc://\S+ exited with code 1 before it was ready"
        assert re.search(started, result.stdout.str())
        assert "INTERNALERROR" not in result.stdout.str()
        assert "this tiger is broken on purpose" in result.stdout.str() + result.stderr.str()  # its log is shown
        assert not ran.exists()


@pytest.mark.parametrize("uses_tiger", [False, True], ids=["no-tiger", "tiger"])
def test_a_run_killed_by_sigterm_left_an_empty_run_directory_in_tmpdir(pytester, monkeypatch, uses_tiger):
    # A user trial: every pytest run of an environment with tiger installed made its run directory at start;
    # one killed by SIGTERM (a CI timeout, an IDE's stop button), which runs no cleanup, left an empty
    # tiger-run-* directory in $TMPDIR, though none of its tests used tiger. It is made at first use now.
    uses = "tiger_client.table('t').insert({})" if uses_tiger else "pass"
    pytester.makepyfile(
        f"import os, signal\ndef test_x({'tiger_client' if uses_tiger else ''}):\n    {uses}\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    temp = tempfile.mkdtemp(prefix="tt", dir="/tmp")
    monkeypatch.setenv("TMPDIR", temp)
    try:
        result = run(pytester, "-p", "no:xdist")
        assert result.ret == -signal.SIGTERM
        left = [name for name in os.listdir(temp) if name.startswith("tiger-run-")]
        assert len(left) == (1 if uses_tiger else 0), left  # (a run that used it keeps its writer's log)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("value", ["inf", "-1", "soon"])
def test_a_teardown_timeout_it_could_not_keep_is_a_usage_error(pytester, monkeypatch, value):
    # tiger_teardown_timeout = inf made the end of a run wait forever for a builder that never tore down.
    pytester.makeini(f"[pytest]\ntiger_teardown_timeout = {value}\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    temp = tempfile.mkdtemp(prefix="tt", dir="/tmp")  # short: the run's directory is made here, not in /tmp
    monkeypatch.setenv("TMPDIR", temp)
    try:
        result = run(pytester, "-p", "no:xdist")
        assert os.listdir(temp) == []  # the run's directory, made before the error, went with it (it stayed)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*tiger_teardown_timeout must be a number of seconds from 0 to 86400 (a day)*{value!r}*"])
    assert "got nan" not in result.stderr.str()  # 'soon' was reported as "got nan" (a user trial)


def test_a_sweep_that_took_a_run_directory_as_it_was_made_removed_it_under_its_run(tmp_path, monkeypatch):
    # The window between the making of a run directory and its process's lock on `alive`: a sweep by another run
    # that takes the lock then removes the directory. The maker's lock waits for that sweep, finds `alive` not
    # the file it locked, and makes the directory again; a directory with no `alive` yet is not swept at all.
    import fcntl

    from tiger import _paths

    being_made = tmp_path / "tiger-run-being-made"
    being_made.mkdir(0o700)  # (made, its `alive` not yet)
    _paths.sweep_ended_run_dirs(str(tmp_path / "tiger-run-sweeper"))
    assert being_made.exists()

    own = tmp_path / "tiger-run-own"
    real_flock = fcntl.flock
    swept = []

    def flock_after_a_sweep(fd, operation):
        if not swept and operation == fcntl.LOCK_SH:  # the sweep comes first, between the making and the lock
            swept.append(os.listdir(own))
            _paths.sweep_ended_run_dirs(str(tmp_path / "tiger-run-sweeper"))
            assert not own.exists()
        real_flock(fd, operation)

    monkeypatch.setattr(_paths.fcntl, "flock", flock_after_a_sweep)
    fd, made = _paths.hold_run_dir(str(own))
    monkeypatch.setattr(_paths.fcntl, "flock", real_flock)
    try:
        assert swept == [["alive"]] and made
        assert os.path.samestat(os.fstat(fd), os.stat(own / "alive"))
        _paths.sweep_ended_run_dirs(str(tmp_path / "tiger-run-sweeper"))
        assert own.exists()  # held
    finally:
        os.close(fd)
    _paths.sweep_ended_run_dirs(str(tmp_path / "tiger-run-sweeper"))
    assert not own.exists() and being_made.exists()


def test_a_sweep_removed_the_directory_of_a_run_whose_controller_alone_went_on(tmp_path):
    # An xdist controller may never use its run's directory until its workers have ended (reading the writer's
    # state, its builders' outcomes at the end): with every worker gone, no process held `alive`, and a sweep by
    # another run removed the directory under it. A directory is swept only once its recorded controller ended.
    import subprocess
    import sys

    from tiger import _paths

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(ended.stdout)
    runs = {}
    for name, controller in (("alive-controller", os.getpid()), ("dead-controller", dead_pid), ("reused-pid", None)):
        fd, made = _paths.hold_run_dir(str(tmp_path / f"tiger-run-{name}"), controller)
        os.close(fd)  # every process that used it has ended (the lock is free)
        runs[name] = tmp_path / f"tiger-run-{name}"
        assert made
    (runs["reused-pid"] / "controller").write_text(f"{os.getpid()} 1")  # this pid, another start: a reused pid
    assert (runs["alive-controller"] / "controller").read_text() == f"{os.getpid()} {_paths.process_start(os.getpid())}"
    _paths.sweep_ended_run_dirs(str(tmp_path / "tiger-run-sweeper"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiger-run-alive-controller"]


BUILDER_LETTING_GO = """
import fcntl, json, os, sys, time
folder, stays = sys.argv[1], float(sys.argv[2])
os.makedirs(folder, exist_ok=True)
lock = open(os.path.join(folder, f"{os.getpid()}.lock"), "w")
fcntl.flock(lock, fcntl.LOCK_EX)
with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
    json.dump({"by": "gw0", "keys": ["server"]}, f)
print("locked", flush=True)
sys.stdin.readline()
lock.close()  # its lock let go, as a killed process's kernel closes its files a moment before it ends
time.sleep(stays)  # sleep-ok: that moment, drawn out; or a builder that found no room, running on
os._exit(0)
"""


@pytest.mark.parametrize(("stays", "reported"), [(0.1, "did not run: its builder gw0 ended before it"), (5.0, "no room")])
def test_a_killed_builder_letting_go_of_its_lock_a_moment_before_it_ended_was_reported_out_of_room(tmp_path, stays, reported):
    # Left by the last session: a builder killed after building lets go of its lock (its kernel closes its files)
    # a moment before it is a zombie; the controller, looking then, found it running with its outcomes unrecorded
    # and said it "found no room to record them". It now gives such a builder half a second to end; one that
    # runs on past that found no room indeed.
    from tiger.pytest_plugin import _Run, _RunDir

    command = [sys.executable, "-c", BUILDER_LETTING_GO, str(tmp_path / "builders"), str(stays)]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdin is not None
            assert child.stdout.readline().strip() == "locked"
            run = _Run.__new__(_Run)  # (the controller's part that reads the run directory: no run, no writer)
            run.dir, run.report, run.exit_code = _RunDir(tmp_path), [], None
            child.stdin.write("go\n")
            child.stdin.flush()
            run._collect_builders(run.dir.builders(), time.monotonic() + 30)
        finally:
            child.kill()
    assert len(run.report) == 1 and reported in run.report[0], run.report
