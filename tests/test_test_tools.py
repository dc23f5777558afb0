"""tiger beside the test tools that replace process-wide things for the code under test (tiger._unpatched):
pytest-socket, pyfakefs, pytest-subprocess and mock.patch, mock.patch.dict(os.environ). Each case failed as
named before; the pytest runs are real runs in subprocesses (pytester), with the tools installed (test extra)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from unittest import mock

import pytest
import pytest_socket

import tiger

# the same tests under each option of pytest-socket: tiger's fixtures, and a writer and client of the test's own
SOCKETS_SUITE = """
import tiger

def test_fixtures(tiger_client, tiger_namespace):
    plans = tiger_client.table("plans", prefix="plan")
    assert plans.get(plans.insert({"amount": 1})["id"])["amount"] == 1

def test_own_writer():
    with tiger.serve() as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "a"})
        assert client.table("t")["a"]["id"] == "a"
"""


@pytest.mark.parametrize(
    "options",
    [["--disable-socket"], ["--allow-hosts=127.0.0.1"], ["--disable-socket", "--allow-unix-socket", "-n", "2"]],
    ids=["disable-socket", "allow-hosts", "allow-unix-socket-xdist"],
)
def test_every_test_using_tiger_failed_under_pytest_socket(pytester, options):
    """Before: SocketBlockedError ("A test tried to use socket.socket") from tiger's probe of the writer's ipc
    path, in every test, a writer started and stopped for each; with --allow-hosts, "host None"."""
    pytester.makepyfile(test_sockets=SOCKETS_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *options, timeout=120)
    result.assert_outcomes(passed=2)


@pytest.fixture
def sockets_blocked():
    pytest_socket.disable_socket(allow_unix_socket=False)
    try:
        yield
    finally:
        pytest_socket.enable_socket()


def test_a_write_to_a_writer_gone_raised_pytest_sockets_error_not_unavailable():
    """Before: SocketBlockedError (a RuntimeError) from the probe that explains a silent writer; a user's
    ``except tiger.Unavailable`` retry missed it. The client is made before sockets are blocked, as a
    session fixture's is."""
    server = tiger.serve()
    client = tiger.connect(server.url, timeout=1.0)
    try:
        client.table("t").insert({"id": "before"})
        os.kill(server.pid, signal.SIGKILL)  # (its ipc file stays: the probe connects to it)
        server._process.wait(10)
        pytest_socket.disable_socket(allow_unix_socket=False)
        try:
            with pytest.raises(tiger.Unavailable):
                client.table("t").insert({"id": "after"})
        finally:
            pytest_socket.enable_socket()
    finally:
        client.close()
        server.stop()


def test_connecting_to_no_writer_under_pytest_socket_raised_its_error_not_unavailable(tmp_path, sockets_blocked):
    with pytest.raises(tiger.Unavailable):
        tiger.connect(f"ipc://{tmp_path}/none", timeout=0.5)
    with pytest.raises(tiger.Unavailable):
        tiger.connect("tcp://127.0.0.1:9", timeout=0.5)


FAKEFS_SUITE = """
import os, tiger

DATA = {data!r}

def test_a_first_use_under_fs(fs, tiger_namespace):
    pass

def test_client_later(tiger_client, tiger_namespace):
    tiger_client.table("t").insert({{"id": "a"}})

def test_a_durable_writer_under_fs(fs):
    with tiger.serve(data=DATA) as server, tiger.connect(server.url) as client:
        client.table("t").insert({{"id": "kept"}})

def test_its_data_is_on_the_real_disk():
    assert os.path.isdir(DATA)
    with tiger.serve(data=DATA) as server, tiger.connect(server.url) as client:
        assert client.table("t")["kept"]["id"] == "kept"

def builder():
    yield {{"amount": 1}}

def test_a_generator_once_under_fs(fs, tiger_once):
    assert tiger_once("built", builder) == {{"amount": 1}}
"""


def test_tiger_first_used_under_pyfakefs_broke_the_run_and_crashed_pytest_at_exit(pytester, tmp_path):
    """Before: "Bad file descriptor" (the writer's start under the fake filesystem), then every later test
    failed (the run directory made in the fake filesystem), and pytest crashed at exit (a fake descriptor of
    tiger's closed for real: pytest's capture file); a durable writer's data directory was checked in the
    fake filesystem, and a generator once key's record under it failed FileNotFoundError."""
    pytester.makepyfile(test_fakefs=FAKEFS_SUITE.format(data=str(tmp_path / "data")))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=5)
    assert result.ret == 0
    assert "Bad file descriptor" not in result.stdout.str() + result.stderr.str()


SUBPROCESS_SUITE = """
import subprocess
from unittest import mock
import tiger

def test_fp_first(fp, tiger_namespace):  # the run's writer started under fp
    fp.register(["git", "status"], stdout="clean")
    assert subprocess.run(["git", "status"], capture_output=True, text=True).stdout == "clean"

def test_own_writer_under_fp(fp):
    with tiger.serve() as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "a"})

def test_own_writer_under_mock_patch():
    with mock.patch("subprocess.Popen") as popen:
        with tiger.serve() as server, tiger.connect(server.url) as client:
            client.table("t").insert({"id": "a"})
    assert not popen.called
"""


def test_the_writers_start_went_to_pytest_subprocess_and_mock_patch(pytester):
    """Before: pytest-subprocess's ProcessNotRegisteredError for ``python -m tiger serve`` (its ``fp`` fixture
    in the test that first used tiger), and a MagicMock for the writer's process under mock.patch."""
    pytester.makepyfile(test_subprocess=SUBPROCESS_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=3)


ENVIRON_SUITE = """
import os
from unittest import mock
import pytest, tiger

@pytest.fixture
def app_env():
    with mock.patch.dict(os.environ, {"APP_MODE": "test"}):
        yield

def test_a_first_use_under_a_patched_environment(app_env, tiger_namespace):
    assert os.environ["TIGER_URL"]

def test_connect_later(tiger_client):
    assert "TIGER_SERVER_KEY" not in os.environ
    with tiger.connect() as client:
        client.table("x").insert({"id": "a"})

def test_a_test_that_unsets_it_is_left_alone(monkeypatch):
    monkeypatch.delenv("TIGER_URL")
    assert "TIGER_URL" not in os.environ
"""


def test_tiger_url_was_lost_for_the_run_when_first_set_under_mock_patch_dict(pytester, monkeypatch):
    """Before: ``patch.dict`` put back the environment it copied before the plugin set TIGER_URL, and every later
    ``tiger.connect()`` failed "no tiger URL"; a TIGER_SERVER_KEY kept for another writer came back with it."""
    monkeypatch.delenv("TIGER_URL", raising=False)
    monkeypatch.setenv("TIGER_SERVER_KEY", "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7")
    pytester.makepyfile(test_environ=ENVIRON_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=3)


UNSET_SUITE = """
import os, pytest

def test_uses_tiger(tiger_namespace):
    assert os.environ["TIGER_URL"]

@pytest.fixture(scope="module")
def unconfigured():
    patch = pytest.MonkeyPatch()
    patch.delenv("TIGER_URL")
    yield
    patch.undo()

def test_a(unconfigured):
    assert "TIGER_URL" not in os.environ

def test_b(unconfigured):
    assert "TIGER_URL" not in os.environ
"""


def test_tiger_url_came_back_in_tests_whose_module_fixture_unset_it(pytester, monkeypatch):
    """A review of the first fix: TIGER_URL was set again at every test's start, also in tests using no
    fixture of tiger's, whose wider fixture had unset it on purpose."""
    monkeypatch.delenv("TIGER_URL", raising=False)
    pytester.makepyfile(test_unset=UNSET_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=3)


PREFIX_SUITE = """
import os
import t, sub

def test_modules_named_as_the_start_of_tigers_are_still_faked(fs):
    fs.create_file("/fake/file")
    assert t.exists("/fake/file") and sub.exists("/fake/file")
"""


def test_a_test_projects_modules_named_t_or_sub_were_no_longer_faked_by_pyfakefs(pytester):
    """A review of the first fix: pyfakefs skips a module whose name is the start of a name on its skip list,
    and ``tiger._server`` and ``subprocess`` were put there: a test's own ``t.py`` read the real disk."""
    pytester.makepyfile(t="import os\nexists = os.path.exists\n", sub="import os\nexists = os.path.exists\n")
    pytester.makepyfile(test_prefix=PREFIX_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=1)


APP_SUITE = """
import myapp

def test_first(fs):
    myapp.start_and_write()

def test_second(fs):
    myapp.start_and_write()

def test_plain():
    myapp.start_and_write()
"""
APP = """
import tiger

def start_and_write():
    with tiger.serve() as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "a"})
"""


def test_tiger_first_used_under_fs_through_an_app_module_broke_every_later_test(pytester):
    """A review of the first fix: tiger's modules imported under the fake were bound to its ``os`` for good
    (``import tiger`` is lazy), and dropped from sys.modules at its end: the next tests failed."""
    pytester.makepyfile(myapp=APP, test_app=APP_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=3)


FP_SUITE = """
import myapp

def test_with_fp(fp):
    myapp.start_and_write()

def test_later_without_fp():
    myapp.start_and_write()
"""


def test_a_writer_started_under_fp_took_its_popen_for_good(pytester):
    """A review of the first fix: tiger took ``Popen`` as its modules were first imported, which was under
    ``fp`` when the test module did not import tiger itself (no pyfakefs to import it early): the start
    failed ProcessNotRegisteredError, and so did the next one, with fp gone."""
    pytester.makepyfile(myapp=APP, test_fp=FP_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:fakefs", timeout=120)
    result.assert_outcomes(passed=2)


def test_a_writer_started_under_mock_patch_took_its_popen_for_good(tmp_path):
    script = """
from unittest import mock
import tiger
with mock.patch("subprocess.Popen", side_effect=AssertionError("the mock")):
    with tiger.serve() as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "a"})
with tiger.serve() as server, tiger.connect(server.url) as client:
    client.table("t").insert({"id": "b"})
print("ok")
"""
    done = _run_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _no_tiger_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIGER_")}


def _run_script(script: str, cwd) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", script]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=_no_tiger_env(), cwd=cwd)


UNITTEST_SUITE = """
import pyfakefs.fake_filesystem_unittest as ffu
import tiger

class Each(ffu.TestCase):
    def setUp(self):
        self.setUpPyfakefs()

    def _write(self):
        with tiger.serve() as server, tiger.connect(server.url) as client:
            client.table("t").insert({"id": "a"})
            self.assertEqual(client.table("t")["a"]["id"], "a")

    def test_1(self):
        self._write()

    def test_2(self):
        self._write()
"""


def test_two_unittest_cases_under_pyfakefs_each_starting_a_writer(tmp_path):
    """A review of the first fix: the second failed (tiger's modules bound to the first fake's ``os``)."""
    (tmp_path / "test_ut.py").write_text(UNITTEST_SUITE)
    command = [sys.executable, "-m", "unittest", "test_ut"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_no_tiger_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_unittest_cases_under_pyfakefs_collected_by_pytest(pytester):
    pytester.makepyfile(test_ut=UNITTEST_SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", timeout=120)
    result.assert_outcomes(passed=2)


def test_tiger_first_imported_under_a_fake_filesystem_says_so(tmp_path):
    """Also tiger imported before pyfakefs in a unittest, first used in its fake (a user trial: the message
    said tiger was imported under it, which it was not): the message names both ways out."""
    script = """
import importlib.util, os
import pyfakefs.fake_filesystem_unittest as ffu
package = os.path.dirname(importlib.util.find_spec("tiger").origin)
with ffu.Patcher() as patcher:
    patcher.fs.add_real_directory(package)  # (else "No module named 'tiger'": pyfakefs's own answer)
    try:
        import tiger
    except ImportError as e:
        print(e)
"""
    done = _run_script(script, tmp_path)
    assert "tiger's modules are first imported inside a pyfakefs fake filesystem" in done.stdout, done.stderr


def _link_local() -> tuple[str, str] | None:
    """(address, interface) of an IPv6 link-local address of this machine, if it has one."""
    try:
        with open("/proc/net/if_inet6") as f:
            rows = [line.split() for line in f]
    except OSError:
        return None
    for row in rows:
        if row[0].startswith("fe80"):
            return ":".join(row[0][i : i + 4] for i in range(0, 32, 4)), row[5]
    return None


def test_a_refused_link_local_ipv6_url_lost_its_reason():
    """A review of the first fix: the probe connected to (address, port), dropping the ``%zone``: EINVAL, and
    the error no longer said "nothing listens there (connection refused)"."""
    found = _link_local()
    if found is None:
        pytest.skip("this machine has no IPv6 link-local address")
    address, interface = found
    import socket

    with socket.socket(socket.AF_INET6) as free:
        free.bind(socket.getaddrinfo(f"{address}%{interface}", 0, socket.AF_INET6)[0][4])
        port = free.getsockname()[1]
    with pytest.raises(tiger.Unavailable, match="connection refused"):
        tiger.connect(f"tcp://[{address}%{interface}]:{port}", timeout=1.0)


def test_a_unittest_that_imports_pyfakefs_before_using_tiger(tmp_path):
    """A ``fake_filesystem_unittest`` test in a plain process: pyfakefs imported, tiger used under ``Patcher``."""
    script = """
import pyfakefs.fake_filesystem_unittest as ffu
import tiger
with ffu.Patcher():
    with tiger.serve() as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "a"})
        print(client.table("t")["a"]["id"])
"""
    done = _run_script(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "a"


def test_the_writers_start_under_mock_patch_in_this_process():
    with mock.patch("subprocess.Popen", side_effect=AssertionError("tiger started its writer through the mock")):
        with tiger.serve() as server, tiger.connect(server.url) as client:
            client.table("t").insert({"id": "a"})
