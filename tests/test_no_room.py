"""A full disk or quota met by tiger's own small files (a user trial, a nearly full $TMPDIR): the pytest
plugin's run directory, its records, and ``tiger keygen``'s key pair.

The file system has no room for real: a file size limit (RLIMIT_FSIZE, ``ulimit -f``: no root needed) set
in the processes that write, SIGXFSZ ignored there so that a write past it fails with EFBIG, one of
``ROOM_ERRNOS`` as ENOSPC and EDQUOT are. Each test is named after what broke.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiger._paths import IPC_PATH_MAX

RUN_TIMEOUT = 90
XDIST_OR_NOT = pytest.mark.parametrize("mode", [["-n", "2"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])


def limit_file_size(size: int) -> None:
    """In a child, before exec: files may grow to ``size`` bytes, and a write past that fails with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (ignored, as inherited across exec: else the process dies)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))


@pytest.fixture
def temp_dir() -> Iterator[Path]:
    """The inner run's $TMPDIR: short, so that the plugin makes its run directory there. It makes it in /tmp
    instead where the writer's ipc paths in it would be too long (README), and a ``tmp_path`` is, in an xdist
    worker of this run (``popen-gwN/`` in it: the run directory's endpoint 108 bytes, past 103): the inner run
    kept its files in /tmp, with room, and the tests looked at (and filled) a directory it never used."""
    path = Path(tempfile.mkdtemp(prefix="tt", dir="/tmp"))
    assert len(os.fsencode(path / f"tiger-run-{'0' * 16}" / "w0000")) <= IPC_PATH_MAX, path
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clean_env(temp_dir: Path) -> dict[str, str]:
    """The inner run starts its own writer, is no xdist worker of this run, and makes its run directory in
    ``temp_dir`` (the fixture: looked at after it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIGER_", "PYTEST_"))}
    env["TMPDIR"] = str(temp_dir)
    return env


def run_pytest(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, str, float]:
    """``python -m pytest ARGS`` in ``cwd``, its output through a pipe (a file would be past the size limit
    too), ``-s``: pytest's capture writes temporary files. Returns its exit code, output and duration."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return done.returncode, done.stdout, time.monotonic() - started


# the inner run's conftest: the size limit from the run's configure on (tempfile's directory looked up first,
# as pytest's capture does at once when not given -s), and the run's writers, counted at its end
LIMIT_CONFTEST = """
import os, resource, signal, tempfile
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    tempfile.gettempdir()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(os.environ["FILE_SIZE_LIMIT"]), resource.RLIM_INFINITY))

def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        writers = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    args = f.read().split(b"\\0")
            except OSError:
                continue
            if b"serve" in args and f"--owner-pid={os.getpid()}".encode() in args:
                writers.append(entry)
        print(f"writers at the end: {len(writers)}")
"""

USES_TIGER = """
import pytest

@pytest.mark.parametrize("i", range(4))
def test_x(tiger_client, tiger_namespace, i):
    tiger_client.table("t").insert({"id": i})
"""


@XDIST_OR_NOT
@pytest.mark.parametrize(
    "limit",
    [10, 40],  # (xdist writes its pid, 4-7 bytes) no room for the controller record; room for it, not the writer's
    ids=["no-room-for-the-controller-record", "no-room-for-the-writer-record"],
)
def test_a_full_run_directory_raised_a_raw_oserror_and_each_worker_started_its_own_writer(tmp_path, temp_dir, mode, limit):
    (tmp_path / "conftest.py").write_text(LIMIT_CONFTEST)
    (tmp_path / "test_uses.py").write_text(USES_TIGER)
    env = clean_env(temp_dir)
    env["FILE_SIZE_LIMIT"] = str(limit)
    code, output, _ = run_pytest(tmp_path, env, *mode)
    assert code != 0, output
    assert "Errno" not in output and "Traceback" not in output, output
    assert "no room to write" in output and "EFBIG" in output, output
    assert "TMPDIR" in output, output  # what to do
    assert "writers at the end: 0" in output, output  # none left unshared, none left running
    assert not [n for n in os.listdir(temp_dir) if n.startswith("tiger-run-")], "the run directory was left behind"


@pytest.mark.parametrize("name", ["writer", "controller"])
def test_a_run_directory_record_with_no_room_raised_a_raw_oserror_and_left_its_aside_file(tmp_path, name):
    """``_write_json`` (the writer's and builders' records) and ``_write_controller`` write aside, then rename."""
    write = (
        f"from tiger.pytest_plugin import _write_json; _write_json(Path({str(tmp_path)!r}) / 'writer', {{'url': 'x' * 100}})"
        if name == "writer"
        else f"from tiger._paths import _write_controller; _write_controller({str(tmp_path)!r}, os.getpid())"
    )
    script = f"import os\nfrom pathlib import Path\nimport tiger\ntry:\n    {write}\nexcept tiger.TigerError as e:\n    print(e)"
    done = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lambda: limit_file_size(5),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert f"no room to write '{tmp_path / name}'" in done.stdout and "EFBIG" in done.stdout, done.stdout
    assert os.listdir(tmp_path) == [], "the aside file was left behind"


# a generator factory built by a test, and the file size limit set in that test's process after it: the
# builder records its keys, then has no room for its teardowns' outcomes at the run's end
BUILT_THEN_FULL = """
import resource, signal
import pytest

def build():
    yield "value"

@pytest.mark.parametrize("i", range(2))
def test_x(tiger_once, i):
    assert tiger_once("the-key", build) == "value"
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
"""


@pytest.mark.parametrize("mode", [["-n", "1"], ["-p", "no:xdist"]], ids=["xdist", "no-xdist"])
def test_a_builder_with_no_room_for_its_outcomes_held_the_run_for_the_teardown_timeout(tmp_path, temp_dir, mode):
    (tmp_path / "test_built.py").write_text(BUILT_THEN_FULL)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntiger_teardown_timeout = 30\n")
    code, output, took = run_pytest(tmp_path, clean_env(temp_dir), *mode)
    assert took < 20, f"waited {took:.1f}s: {output}"
    assert "Errno" not in output and "Traceback" not in output, output
    if mode[0] == "-n":  # the controller cannot know how the builder's teardowns went: it says so, and fails the run
        assert code == 1, output
        assert "outcomes of the teardowns of once 'the-key' in gw0" in output and "unknown" in output, output
        assert "no room to record them" in output and "TMPDIR" in output, output
    else:  # the controller is the builder: it knows
        assert code == 0, output
    assert not [n for n in os.listdir(temp_dir) if n.startswith("tiger-run-")], "the run directory was left behind"


def test_tiger_keygen_with_no_room_left_a_key_cut_short_that_the_next_keygen_refused(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tiger", "keygen", str(tmp_path / "keys")],
        preexec_fn=lambda: limit_file_size(10),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 1
    assert "no room to write" in done.stderr and "EFBIG" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert os.listdir(tmp_path / "keys") == [], "a key cut short was left"
    keygen = [sys.executable, "-m", "tiger", "keygen", str(tmp_path / "keys")]
    again = subprocess.run(keygen, capture_output=True, timeout=RUN_TIMEOUT)
    assert again.returncode == 0, again.stderr


FILLS_THE_INODES = """
import errno, itertools, os
import pytest

FILES = itertools.count()

def fill():
    try:  # no inode left in $TMPDIR: not even an empty file can be made there
        while True:
            os.close(os.open(f"{os.environ['TMPDIR']}/fill-{os.getpid()}-{next(FILES)}", os.O_CREAT | os.O_WRONLY))
    except OSError as e:
        assert e.errno == errno.ENOSPC

def build():
    yield "value"
    fill()  # again: what the run removed meanwhile (its writer's socket) gave the builder's record room, 1 run in 3

@pytest.mark.parametrize("i", range(2))
def test_x(tiger_once, i):
    assert tiger_once("the-key", build) == "value"
    fill()
"""


@pytest.fixture
def small_tmpfs(temp_dir: Path) -> Iterator[Path]:
    """A tmpfs of 400 inodes mounted at ``temp_dir`` for the test (root and mount(8) needed)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounts a tmpfs: needs root and mount(8)")
    options = "size=1m,nr_inodes=400"
    made = subprocess.run([mount, "-t", "tmpfs", "-o", options, "tmpfs", str(temp_dir)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"mounts a tmpfs: mount failed here ({made.stderr.decode().strip()})")
    try:
        yield temp_dir
    finally:
        subprocess.run(["umount", str(temp_dir)], check=True)


def test_a_controller_with_no_room_for_all_done_raised_a_raw_oserror_and_its_builders_never_tore_down(tmp_path, small_tmpfs):
    (tmp_path / "test_built.py").write_text(FILLS_THE_INODES)
    (tmp_path / "pytest.ini").write_text("[pytest]\ntiger_teardown_timeout = 30\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIGER_", "PYTEST_"))}
    env["TMPDIR"] = str(small_tmpfs)
    code, output, took = run_pytest(tmp_path, env, "-n", "1", f"--basetemp={tmp_path / 'basetemp'}")
    assert took < 20, f"waited {took:.1f}s: {output}"
    assert "Errno" not in output and "Traceback" not in output, output
    assert code == 1, output
    assert "outcomes of the teardowns of once 'the-key' in gw0" in output and "no room to record them" in output, output
    assert f"the run's directory {small_tmpfs}/tiger-run-" in output, output  # on the tmpfs, not in /tmp
