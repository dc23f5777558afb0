"""`tiger serve` and `tiger stats` as a user runs them: real processes, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from _util import UNRESOLVED, UNRESOLVED_HOST, alive, default_sigint, held_to_modes, read_line

import tiger
import tiger.aio
from tiger import _log
from tiger._cli import DEFAULT_URL

TIGER = [sys.executable, "-m", "tiger"]


@pytest.fixture
def foreground() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`tiger serve` in the foreground on a random loopback port; yields (process, url)."""
    proc = subprocess.Popen(
        [*TIGER, "serve", "--url", "tcp://127.0.0.1:*", "--owner-pid", str(os.getpid())],  # gone if this process dies
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,  # as from a terminal: some are sent Ctrl-C
    )
    try:
        line = read_line(proc)
        match = re.fullmatch(r"tiger writer serving at (tcp://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        yield proc, match.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal(foreground, sig):
    proc, url = foreground
    with tiger.connect(url) as client:
        client.table("t").insert({"id": "a"})
    proc.send_signal(sig)
    assert proc.wait(10) == 0
    assert "stopping" in proc.stderr.read()  # type: ignore[union-attr]


def test_serve_started_with_sigint_ignored_was_stopped_by_a_ctrl_c_meant_for_its_script():
    # A review: `tiger serve &` in a script (a shell starts a background job with SIGINT ignored, so the
    # script's Ctrl-C leaves it running) installed its own SIGINT handler and stopped on that Ctrl-C.
    proc = subprocess.Popen(
        [*TIGER, "serve", "--url", "tcp://127.0.0.1:*", "--owner-pid", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        match = re.fullmatch(r"tiger writer serving at (tcp://127\.0\.0\.1:\d+)\n", read_line(proc))
        assert match
        with tiger.connect(match.group(1), timeout=5) as client:
            proc.send_signal(signal.SIGINT)
            for i in range(3):  # the writer runs (and so takes the pending signal) to answer each
                client.table("t").insert({"id": f"a{i}"})
            assert client.stats()["seq"] == 3
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # still stopped by SIGTERM
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_stats_shows_tables_namespaces_and_counts(foreground):
    _, url = foreground
    with tiger.connect(url) as client:
        plans = client.table("plans", prefix="plan")
        plans.insert_many([{} for _ in range(3)])
        with tiger.namespace("test-1"):
            plans.insert({})
        out = subprocess.run([*TIGER, "stats", "--url", url], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert re.search(rf"^epoch\s+{client.epoch}$", out.stdout, re.M)
        assert re.search(r"^seq\s+2$", out.stdout, re.M)
        assert re.search(r"^clients\s+1$", out.stdout, re.M)
        assert re.search(r"^plans\s+global\s+3$", out.stdout, re.M)
        assert re.search(r"^plans\s+test-1\s+1$", out.stdout, re.M)
        assert re.search(r"^uptime\s+[\d.]+ s$", out.stdout, re.M)
        assert re.search(r"^data\s+none \(memory only\)$", out.stdout, re.M)


def test_namespaces_a_kept_or_killed_run_left_at_a_writer_could_be_dropped_only_from_python(foreground):
    # A user trial: --tiger-keep, or runs killed before leases, left namespaces at a writer of one's own, and
    # nothing but a script of one's own dropped them. tiger drop NAMESPACE..., --prefix RUN: for a whole run.
    _, url = foreground
    with tiger.connect(url) as client:
        plans = client.table("plans")
        for namespace, n in (("3f9a1c:main::test_a", 2), ("3f9a1c:main::test_b", 1), ("tiger-run:3f9a1c", 1), ("keep", 1)):
            with tiger.namespace(namespace):
                plans.insert_many([{} for _ in range(n)])
        client.once("fixture", lambda: 1, namespace="tiger-run:3f9a1c")

        def drop(*arguments: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*TIGER, "drop", "--url", url, *arguments], capture_output=True, text=True, timeout=30)

        stats = subprocess.run([*TIGER, "stats", "--url", url], capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"^records  5 \(and 1 of tiger's own: leases, once keys\)$", stats, re.M), stats  # (it said 6)
        out = drop("--prefix", "3f9a1c:")
        assert out.returncode == 0, out.stderr
        assert out.stdout == "dropped 3f9a1c:main::test_a: 2 records\ndropped 3f9a1c:main::test_b: 1 record\n"
        out = drop("tiger-run:3f9a1c", "nothing-here")
        assert out.returncode == 0, out.stderr
        assert out.stdout == (  # (its once key too)
            "dropped tiger-run:3f9a1c: 1 record (and 1 of tiger's own: leases, once keys)\ndropped nothing-here: 0 records\n"
        )
        assert drop("--prefix", "3f9a1c:").stdout == "no namespace starts with 3f9a1c:\n"
        # a trial: --prefix RUN: left the run's own namespace, tiger-run:RUN (its tiger_once factories' records,
        # once keys and lease); --run RUN drops both, and no other run's (3f is no run's id here)
        for namespace in ("3f9a1c:gw0::test_c", "tiger-run:3f9a1c", "tiger-run:3f9a1c0", "3f9a1c0:main::test_d"):
            with tiger.namespace(namespace):
                plans.insert({})
        assert drop("--run", "3f").stdout == "no namespace of run 3f\n"
        out = drop("--run", "3f9a1c")
        assert out.stdout == "dropped 3f9a1c:gw0::test_c: 1 record\ndropped tiger-run:3f9a1c: 1 record\n", out.stderr
        assert drop("--run", "3f9a1c0").returncode == 0
        assert drop("--run", "--prefix", "x").returncode == 2  # (one or the other: argparse's usage error)
        seq = client.stats()["seq"]
        for arguments, message in (
            (["--prefix", ""], "prefix must not be empty"),
            (["--run", ""], "run must not be empty"),
            (["ok", ""], "namespace must be 1 to 200 characters, got 0"),  # (checked before anything is dropped)
            (["keep", "--timeout", "0"], "--timeout must be"),
        ):
            out = drop(*arguments)
            assert out.returncode == 1 and f"tiger drop: {message}" in out.stderr, out.stderr
        client.sync()
        assert client.namespaces() == ["keep"] and client.stats()["seq"] == seq


@pytest.mark.parametrize("command", ["dump", "stats"])
def test_a_command_whose_reader_went_away_printed_broken_pipe_and_a_traceback(foreground, command):
    """A user trial: ``tiger dump | head`` and ``tiger stats | head -1`` printed "[Errno 32] Broken pipe" (and,
    for a short output written by the flush at exit, a traceback). A command of a pipeline whose reader is gone
    says nothing: exit status 1, stderr empty (Python's documented way, its SIGPIPE note)."""
    _, url = foreground
    with tiger.connect(url) as client:
        client.table("plans").insert_many([{"n": n} for n in range(2000)])
    proc = subprocess.Popen([*TIGER, command, "--url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()  # gone before it writes a byte (it takes a tenth of a second to start)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (1, "")


def test_a_command_started_with_its_output_closed_ended_in_a_traceback(foreground, tmp_path):
    """A review of the broken-pipe fix: with standard output closed (``tiger keygen DIR >&-``, a daemon's
    ``tiger serve >&-``) Python has no ``sys.stdout``, and the flush added for the broken pipe raised
    AttributeError (keygen, which had worked, exited 1 with a traceback). keygen works; dump, whose records
    would go nowhere, says so."""
    _, url = foreground
    closed = {"preexec_fn": lambda: os.close(1), "capture_output": False, "stderr": subprocess.PIPE, "text": True}
    keygen = subprocess.run([*TIGER, "keygen", str(tmp_path / "keys")], timeout=30, **closed)  # type: ignore[call-overload]
    assert (keygen.returncode, keygen.stderr) == (0, "")
    assert sorted(os.listdir(tmp_path / "keys")) == ["tiger.key", "tiger.pub"]
    dump = subprocess.run([*TIGER, "dump", "--url", url], timeout=30, **closed)  # type: ignore[call-overload]
    assert dump.returncode == 1
    assert dump.stderr == "tiger dump: standard output is closed: nothing to dump the records to (redirect it to a file)\n"


def test_a_writer_that_could_not_print_its_url_left_its_ipc_socket_files(tmp_path):
    """Where else a closed output was met: ``tiger serve | true``. The writer cannot say where it serves, so it
    ends, saying why on stderr (as before), and now removes the socket files it made (it left them)."""
    url = f"ipc://{tmp_path}/w.ipc"
    proc = subprocess.Popen([*TIGER, "serve", "--url", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (1, "tiger serve: [Errno 32] Broken pipe\n")
    assert os.listdir(tmp_path) == []


def test_stats_prints_a_name_holding_a_newline_or_nul_on_its_own_line(foreground):
    # A user trial: a table named "a\nb" broke tiger stats' layout, and a NUL made grep take its output for binary.
    _, url = foreground
    with tiger.connect(url) as client:
        client.table("a\nb").insert({})
        with tiger.namespace("n\x00s"):
            client.table("plain").insert({})
        client.table(" ").insert({})  # (a later trial: a name of spaces showed as a blank cell)
        out = subprocess.run([*TIGER, "stats", "--url", url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "\x00" not in out.stdout
    assert re.search(r"^'a\\nb'\s+global\s+1$", out.stdout, re.M), out.stdout
    assert re.search(r"^plain\s+'n\\x00s'\s+1$", out.stdout, re.M), out.stdout
    assert re.search(r"^' '\s+global\s+1$", out.stdout, re.M), out.stdout


def test_stats_url_defaults_to_tiger_url(foreground):
    _, url = foreground
    env = {**os.environ, "TIGER_URL": url}
    out = subprocess.run([*TIGER, "stats"], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    assert f"url      {url}" in out.stdout


def test_url_defaults_to_tiger_url_then_the_serve_default(tmp_path):
    # the default is read from --help, so the test never touches the machine's real default port
    env = {k: v for k, v in os.environ.items() if k != "TIGER_URL"}
    for command in ("serve", "stats", "load", "dump", "compact"):
        out = subprocess.run([*TIGER, command, "--help"], capture_output=True, text=True, timeout=30, env=env)
        assert f"$TIGER_URL or {DEFAULT_URL}" in " ".join(out.stdout.split()), command
    url = f"ipc://{tmp_path}/nobody"
    out = subprocess.run(
        [*TIGER, "stats", "--timeout", "0.3"], capture_output=True, text=True, timeout=30, env={**env, "TIGER_URL": url}
    )
    assert out.returncode == 1 and url in out.stderr and "TIGER_URL" in out.stderr


def test_stats_of_a_writer_that_is_not_there(tmp_path):
    url = f"ipc://{tmp_path}/nobody"
    out = subprocess.run([*TIGER, "stats", "--url", url, "--timeout", "0.3"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert url in out.stderr and "nothing is bound at that path" in out.stderr  # at once, not after the timeout


def test_serve_refuses_a_bad_url():
    out = subprocess.run([*TIGER, "serve", "--url", "http://x"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "url must be" in out.stderr


def test_serve_reports_an_address_in_use(foreground):
    _, url = foreground
    out = subprocess.run([*TIGER, "serve", "--url", url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "cannot bind" in out.stderr


def test_a_second_writer_on_a_live_ipc_url_is_refused_and_the_first_keeps_its_clients(tmp_path):
    # libzmq binds ipc by unlinking the file at the path: a second writer took the first one's path (new clients
    # reached the second, empty, writer; what it acknowledged was lost when it stopped, removing the file, and
    # the first, still running, was unreachable)
    url = f"ipc://{tmp_path}/w"
    with tiger.serve(url) as first, tiger.connect(url) as client:
        client.table("t").insert({"id": "r1"})
        out = subprocess.run([*TIGER, "serve", "--url", url], capture_output=True, text=True, timeout=30)
        assert out.returncode == 2
        assert f"cannot bind {url}: Address already in use: a process accepts connections at {tmp_path}/w" in out.stderr
        with pytest.raises(tiger.TigerError, match="exited with code 2 before it was ready"):
            tiger.serve(url)
        with tiger.connect(url) as later:
            assert later.stats()["pid"] == first.pid and [r["id"] for r in later.table("t").all()] == ["r1"]
    with tiger.serve(url) as again, tiger.connect(url) as client:  # the path a stopped writer left: bound again
        assert client.stats()["pid"] == again.pid


def test_a_served_writer_exits_when_its_owner_is_killed(tmp_path):
    """tiger.serve() in a process that then dies of SIGKILL: its writer does not outlive it, nor the
    directory tiger.serve() made for its ipc socket (every run of the suite left one in /tmp)."""
    script = "import sys, tiger; s = tiger.serve(); print(s.pid, s.url, flush=True); sys.stdin.read()"
    owner = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid, url = read_line(owner).split()  # type: ignore[union-attr]
        writer_pid, made = int(pid), os.path.dirname(url.removeprefix("ipc://"))
        assert os.path.isdir(made)
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        deadline = time.monotonic() + 10
        while alive(writer_pid):
            assert time.monotonic() < deadline, f"writer {writer_pid} outlived its owner"
            time.sleep(0.05)  # sleep-ok: polling another process's exit, not a socket
        assert not os.path.exists(made), os.listdir(made)
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.communicate(timeout=10)


def test_a_writer_stopped_by_someone_else_leaves_its_directory_for_a_new_writer_on_the_url():
    # a review: the writer removed tiger.serve()'s directory whenever it stopped, so a writer started again
    # on that url (after a SIGTERM from outside) failed to bind; it now removes it only when its owner is gone
    first = tiger.serve()
    try:
        os.kill(first.pid, signal.SIGTERM)
        first._process.wait(10)
        with tiger.serve(first.url) as second, tiger.connect(second.url) as client:
            client.table("t").insert({"id": "a"})
            assert "a" in client.table("t")
    finally:
        first.stop()


@pytest.mark.parametrize("heartbeat", ["inf", "nan", "0", "1e12"])
def test_serve_refuses_a_heartbeat_it_could_not_keep(heartbeat):
    # --heartbeat inf started a writer that never published a heartbeat: its clients took it for gone.
    out = subprocess.run(
        [*TIGER, "serve", "--url", "ipc:///nowhere/x", "--heartbeat", heartbeat], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 1
    assert f"--heartbeat must be a number of seconds above 0 to 86400 (a day), got {float(heartbeat)!r}" in out.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_clean_stop_removes_the_ipc_socket_files_the_writer_made(tmp_path, sig):
    # A new user's trial: `tiger serve --url ipc://...` left its two socket files behind after a clean stop.
    # Only its own are removed: a file another writer made at the same path since is left alone.
    url = f"ipc://{tmp_path}/w"
    serve = [*TIGER, "serve", "--url", url, "--owner-pid", str(os.getpid())]
    proc = subprocess.Popen(serve, stdout=subprocess.PIPE, text=True, preexec_fn=default_sigint)  # as from a terminal
    try:
        assert read_line(proc) == f"tiger writer serving at {url}\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["w", "w.pub"]
        with tiger.connect(url) as client:
            client.table("t").insert({"id": "a"})
        proc.send_signal(sig)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert list(tmp_path.iterdir()) == []


def test_a_wildcard_ipc_writer_leaves_no_directory_behind(tmp_path, monkeypatch):
    # ipc://* has libzmq make a directory of its own for the socket file and remove both on close, the
    # directory only if it removed the file: tiger removing the file first left two empty directories.
    monkeypatch.chdir(tmp_path)
    with tiger.serve("ipc://*") as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "a"})
        assert list(tmp_path.iterdir())  # the writer's socket directories, here while it runs
    assert list(tmp_path.iterdir()) == []


def test_tiger_keygen_into_a_file_said_only_file_exists(tmp_path):
    # A user trial: tiger keygen /etc/passwd said "[Errno 17] File exists"
    (tmp_path / "a-file").write_text("x")
    out = subprocess.run([*TIGER, "keygen", str(tmp_path / "a-file")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.strip() == f"tiger keygen: {tmp_path / 'a-file'} is a file, not a directory"


def test_an_fsync_policy_given_without_a_data_directory_was_accepted_and_meant_nothing(tmp_path):
    # A user trial: tiger.serve(fsync="always") and tiger serve --fsync always, without a data directory, started
    # a writer keeping nothing on disk, saying nothing. Both now refuse, naming the option, and start nothing.
    with pytest.raises(ValueError, match=r"^fsync='always' applies to a data directory: give data=DIR too"):
        tiger.serve(f"ipc://{tmp_path}/w", fsync="always")
    command = [*TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--fsync", "always"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "--fsync applies to a data directory: give --data DIR too" in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing bound
    with tiger.serve(f"ipc://{tmp_path}/w", data=tmp_path / "data") as server:  # the default with one: everysec
        assert tiger.connect(server.url).stats()["data"]["fsync"] == "everysec"


@pytest.mark.parametrize("content", [None, b"\xff\xfe not text", b"no key here\n"], ids=["missing", "binary", "no-key"])
def test_serve_names_the_curve_secret_it_cannot_read(tmp_path, content):
    # a missing secret file was reported as "cannot use the data directory" (there was none)
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_bytes(content)
    command = [*TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--curve-secret", str(secret)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"tiger: cannot read --curve-secret {secret}: " in out.stderr and "data directory" not in out.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--url", f"tcp://127.0.0.1:{99999}"], "url: a tcp port must be * or 0 to 65535, got '99999'"),  # served at 34463
        (["--url", "tcp://127.0.0.1:-1"], "url: a tcp port must be * or 0 to 65535, got '-1'"),  # served at 65535
        (["--url", "ipc:///nowhere/x", "--compact-bytes", "-5"], "--compact-bytes must be a number of bytes above 0, got -5"),
        (["--url", "ipc:///nowhere/x", "--data", ""], "--data must name a directory"),  # ran memory-only, unsaid
    ],
    ids=["port-99999", "port-negative", "compact-bytes-negative", "data-empty"],
)
def test_serve_refuses_what_it_silently_bent(arguments, message):
    out = subprocess.run([*TIGER, "serve", *arguments], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and message in out.stderr, out.stderr


def test_connect_refuses_a_tcp_port_out_of_range():
    with pytest.raises(ValueError, match="url: a tcp port must be"):
        tiger.connect(f"tcp://127.0.0.1:{2**16 + 34463}", timeout=0.5)  # (never bound: refused before)


@pytest.mark.parametrize("command", [["dump"], ["compact"], ["load", "seed.jsonl"]])
def test_a_command_says_at_once_that_nothing_listens_at_its_url(tmp_path, command):
    # dump, load and compact waited out the 5 s timeout where tiger stats says at once that nothing is bound there
    (tmp_path / "seed.jsonl").write_text('{"table": "t", "record": {"id": "a"}}\n')
    url = f"ipc://{tmp_path}/nothing"
    out = subprocess.run([*TIGER, *command, "--url", url], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode != 0 and f"the tiger writer at {url} is not there: nothing is bound at that path" in out.stderr


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:*", f"tcp://*:{DEFAULT_URL.rsplit(':', 1)[1]}", "tcp://127.0.0.1:0"])
@pytest.mark.parametrize("command", [["stats"], ["dump"], ["compact"], ["drop", "x"], ["load", "seed.jsonl"]])
def test_a_wildcard_url_copied_from_tiger_serve_gave_commands_a_traceback(tmp_path, command, url):
    # A user trial: tiger serve takes tcp://127.0.0.1:*, and the same url given to tiger stats (dump, drop, load,
    # compact) printed a traceback ending in zmq's bare "Invalid argument".
    (tmp_path / "seed.jsonl").write_text('{"table": "t", "record": {"id": "a"}}\n')
    out = subprocess.run([*TIGER, *command, "--url", url], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    expected = (
        f"tiger {command[0]}: url: {url!r} is a wildcard only a writer binds (tiger serve picks a free port and prints "
        "it): connect to the url it printed, `tiger writer serving at tcp://127.0.0.1:PORT`\n"
    )
    assert out.stderr == expected


def test_clients_connecting_to_a_wildcard_or_a_directory_raised_zmqs_error_or_waited_their_timeout(tmp_path):
    from tiger._server import NamespaceLease

    # (a directory: connect waited, then "not there"; ipc://*: "nothing is bound at that path")
    for url in ("tcp://127.0.0.1:*", f"ipc://{tmp_path}", "ipc://*"):
        for connect in (
            lambda url: tiger.connect(url, timeout=30),
            lambda url: asyncio.run(tiger.aio.connect(url, timeout=30)),
            lambda url: NamespaceLease(url, "job", timeout=30),
        ):
            started = time.monotonic()
            with pytest.raises(ValueError, match=r"^url: ") as raised:
                connect(url)
            assert time.monotonic() - started < 10
            assert ("not a directory" if url == f"ipc://{tmp_path}" else "wildcard") in str(raised.value)


@pytest.mark.parametrize("command", [["stats"], ["dump"], ["drop", "x"], ["compact"], ["load", "seed.jsonl"]])
def test_a_command_to_a_mistyped_host_waited_out_its_timeout_and_only_tiger_stats_said_it_does_not_resolve(tmp_path, command):
    # Each command waited out its timeout (tiger compact's: 600 s), and only tiger stats then said that the
    # host does not resolve. A one-shot command says it at once, as it says that nothing listens at a port.
    (tmp_path / "seed.jsonl").write_text('{"table": "t", "record": {"id": "a"}}\n')
    started = time.monotonic()
    out = subprocess.run([*TIGER, *command, "--url", UNRESOLVED], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert time.monotonic() - started < 4.5  # (under the 5 s timeout of stats, drop, dump and load)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    said = f"tiger {command[0]}: the tiger writer at {UNRESOLVED} is not there: the host {UNRESOLVED_HOST!r} does not resolve"
    assert out.stderr.startswith(said) and out.stderr.count("does not resolve") == 1, out.stderr


@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_serving_a_host_that_does_not_resolve_was_refused_as_without_curve(tmp_path, curve):
    # tiger serve --url tcp://<mistyped host>:PORT said "refusing to bind ... without CurveZMQ: other machines
    # could read and change the store", and with --curve-secret ZeroMQ's bare "No such device".
    args = ["--url", UNRESOLVED]
    if curve:
        keys = subprocess.run([*TIGER, "keygen", str(tmp_path)], capture_output=True, text=True, timeout=30)
        assert keys.returncode == 0, keys.stderr
        args += ["--curve-secret", str(tmp_path / "tiger.key")]
    out = subprocess.run([*TIGER, "serve", "--owner-pid", str(os.getpid()), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    said = f"tiger serve: url: cannot bind {UNRESOLVED!r}: the host {UNRESOLVED_HOST!r} does not resolve"
    assert out.stderr.strip() == said


def test_a_client_to_a_mistyped_host_said_only_that_nothing_answered():
    for connect in (
        lambda: tiger.connect(UNRESOLVED, timeout=0.5),
        lambda: asyncio.run(tiger.aio.connect(UNRESOLVED, timeout=0.5)),
    ):
        with pytest.raises(tiger.Unavailable) as raised:
            connect()
        assert str(raised.value) == (
            f"the tiger writer at {UNRESOLVED} did not answer within 0.5s: the host {UNRESOLVED_HOST!r} does not resolve"
        )


def test_a_relative_ipc_url_was_served_and_printed_as_given_and_reached_from_no_other_directory(tmp_path, monkeypatch):
    # A user trial: tiger serve --url ipc://w.sock printed "serving at ipc://w.sock"; a client started elsewhere with
    # that url found nothing bound there. The writer binds, and prints, the absolute path.
    if len(str(tmp_path)) > 80:
        pytest.skip("an ipc path this long does not fit")
    proc = subprocess.Popen(
        [*TIGER, "serve", "--url", "ipc://w.sock", "--owner-pid", str(os.getpid())],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(proc) == f"tiger writer serving at ipc://{tmp_path}/w.sock\n"
        with tiger.connect(f"ipc://{tmp_path}/w.sock") as client:  # (from this test's directory)
            assert client.stats()["url"] == f"ipc://{tmp_path}/w.sock"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    monkeypatch.chdir(tmp_path)
    with tiger.serve("ipc://v.sock") as server:
        assert server.url == f"ipc://{tmp_path}/v.sock"
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # (a review: too long made absolute, it was refused; it used to bind)
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    with tiger.serve("ipc://v.sock") as server, tiger.connect(server.url) as client:
        assert server.url == "ipc://v.sock" and client.stats()["url"] == "ipc://v.sock"


def test_compact_refused_by_the_writer_printed_the_protocols_repr_of_its_answer():
    # A user trial: `tiger compact` on a writer whose snapshot was removed printed "answered Failed(req_id=1,
    # kind='disk', message=...)": one request on a socket of its own (tiger compact, tiger stats) raised the
    # reply's repr where a client raises the error it names. Shown here with a writer that keeps no data.
    with tiger.serve() as server:
        out = subprocess.run([*TIGER, "compact", "--url", server.url], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1] == "tiger compact: this writer keeps no data: start it with --data DIR"


def test_compact_and_stats_of_a_paused_writer_wait_their_timeout_and_say_why(tmp_path):
    # A user trial: `tiger compact --timeout 20` joined a full replica first (900 MB at 1.75M records) and gave
    # up after the join's own 5 s when the writer was paused; `tiger stats` timing out during a long compaction
    # advised another --url. compact now sends one request, as stats does, and stats says a busy writer is busy.
    proc = subprocess.Popen(
        [*TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--data", str(tmp_path / "data"), "--owner-pid", str(os.getpid())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = read_line(proc).strip().rsplit(" ", 1)[-1]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            command = [*TIGER, "stats", "--url", url, "--timeout", "0.5"]
            stats = subprocess.run(command, capture_output=True, text=True, timeout=30)
            assert (
                stats.returncode == 1
                and "a writer paused (SIGSTOP, a debugger) or busy" in stats.stderr
                and "a longer --timeout" in stats.stderr
            )
            compact = subprocess.Popen([*TIGER, "compact", "--url", url, "--timeout", "20"], stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)  # sleep-ok: the writer stays paused a while after the request went out
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        out, _ = compact.communicate(timeout=30)
        assert compact.returncode == 0 and out.startswith("compacted: snapshot of 0 records"), out
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


def test_a_non_utf8_data_directory_given_to_tiger_serve_killed_it_at_the_first_tiger_stats(tmp_path):
    # the user trial's fault through the command line: the path in the stats answer could not be encoded, and
    # the writer died of it (tiger stats waited out its timeout). It is served; stats shows it escaped.
    data = os.fsencode(tmp_path) + b"/data-\xff"
    url = f"ipc://{tmp_path}/w"
    proc = subprocess.Popen(
        [*TIGER, "serve", f"--url={url}", b"--data=" + data, f"--owner-pid={os.getpid()}"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert read_line(proc) == f"tiger writer serving at {url}\n"
        out = subprocess.run([*TIGER, "stats", "--url", url, "--timeout", "3"], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        with tiger.connect(url) as client:
            assert client.stats()["data"]["path"] == f"{tmp_path}/data-\\xff"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0 and os.path.isdir(data)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--url", "ipc:///"], "url: an ipc path must name a socket file, not a directory: 'ipc:///'"),
        (["--url", "ipc:///nowhere/x", "--data", "d" * 256], "--data: a path may be at most"),  # exit 3, the writer's
    ],
    ids=["ipc-root", "data-name-too-long"],
)
def test_serve_refuses_an_odd_path_before_it_starts(arguments, message):
    # ipc:/// was reported as "cannot bind ipc:///: Address already in use" (libzmq's word for a directory)
    out = subprocess.run([*TIGER, "serve", *arguments], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and message in out.stderr and "already in use" not in out.stderr, out.stderr


@pytest.mark.parametrize("which", ["", ".pub"])
def test_a_writer_bound_at_an_ipc_path_holding_a_file_deleted_that_file(tmp_path, which):
    """A user trial: libzmq's bind unlinks whatever is at an ipc path, so ``tiger serve --url
    ipc:///dev/null`` run as root deleted /dev/null, and a file named by mistake (or the ``.pub`` beside
    it) went the same way. A path holding anything but a socket is refused, naming it; the file stays."""
    url = f"ipc://{tmp_path}/notes"
    kept = tmp_path / f"notes{which}"
    kept.write_text("keep")
    with pytest.raises(ValueError, match=r"url: .*notes.* exists and is not a socket"):
        tiger.serve(url)
    out = subprocess.run([*TIGER, "serve", f"--url={url}"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "exists and is not a socket" in out.stderr, out
    assert kept.read_text() == "keep"


def test_a_symbolic_link_at_an_ipc_path_is_refused_and_kept(tmp_path):
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "w").symlink_to(target)
    with pytest.raises(ValueError, match="exists and is not a socket"):
        tiger.serve(f"ipc://{tmp_path}/w")
    assert (tmp_path / "w").is_symlink() and target.read_text() == "keep"


def test_a_stale_socket_file_at_an_ipc_path_is_still_replaced(tmp_path):
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "w"))
    stale.close()  # its file stays, nobody accepting there
    with tiger.serve(f"ipc://{tmp_path}/w") as server, tiger.connect(server.url) as client:
        client.table("t").insert({"id": "x"})


@pytest.mark.parametrize(
    ("encoding", "cafe"), [(None, "caf\u00e9"), ("utf-8", "caf\u00e9"), ("ascii", "caf\\xe9")], ids=["locale", "utf-8", "ascii"]
)
def test_a_name_that_is_not_utf8_was_printed_unescaped_by_the_cli(tmp_path, encoding, cafe):
    # A user trial: tiger load and tiger keygen printed a path given in bytes (b"\xff") as os.fsdecode holds it:
    # raw bytes on stdout under C.UTF-8, and under a strict UTF-8 stdout a UnicodeEncodeError once the file was
    # loaded (exit 1). Every line a command prints now escapes such a name as logs and answers do: \xff (and
    # under a locale that is not UTF-8, what it cannot carry: \xe9).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    if encoding is not None:
        env["PYTHONIOENCODING"] = encoding
    base = os.fsencode(tmp_path)
    seed = base + b"/seed-caf\xc3\xa9-\xff.jsonl"
    with open(seed, "w") as f:
        f.write('{"table": "t", "record": {"id": "a"}}\n')

    def run(*args: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*map(os.fsencode, TIGER), *args], capture_output=True, env=env, timeout=60)

    shown = os.fsdecode(base)
    server = tiger.serve()
    try:
        loaded = run(b"load", b"--url", server.url.encode(), seed)
        with tiger.connect(server.url) as client:
            assert client.table("t").count() == 1
    finally:
        server.stop()
    assert (loaded.returncode, loaded.stdout) == (0, f"loaded 1 records from {shown}/seed-{cafe}-\\xff.jsonl\n".encode()), loaded
    made = run(b"keygen", base + b"/keys\xff")
    assert made.returncode == 0, made.stderr
    assert made.stdout.decode("utf-8").startswith(f"wrote {shown}/keys\\xff/tiger.key (secret) and {shown}/keys\\xff/tiger.pub\n")
    again = run(b"keygen", base + b"/keys\xff")  # an error naming the path, on stderr
    assert again.returncode == 1 and again.stderr.decode("utf-8").startswith("tiger keygen: "), again.stderr
    refused = run(b"serve", b"--curve-secret", base + b"/none\xff", b"--url", b"tcp://127.0.0.1:*")
    assert refused.returncode == 2
    assert refused.stderr.decode("utf-8").startswith(f"tiger: cannot read --curve-secret {shown}/none\\xff: "), refused.stderr


def test_a_dump_under_a_locale_that_is_not_utf8_stopped_half_way(tmp_path):
    # tiger dump wrote its lines in the locale's encoding: under ASCII a name or value holding any other
    # character stopped it (UnicodeEncodeError, exit 1), and under Latin-1 it wrote a file tiger load refuses
    # as not UTF-8. A dump is UTF-8 whatever the locale, as tiger load reads it.
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    first, second = tiger.serve(), tiger.serve()
    try:
        with tiger.connect(first.url) as client:
            client.table("pl\u00e4ne").insert({"id": "\u20ac1", "name": "caf\u00e9 \U0001d11e"})
            with tiger.namespace("n\u00e4"):
                client.table("t").insert({"id": "a"})
            want = {t: client.table(t).all() for t in ("pl\u00e4ne",)}
        dumped = subprocess.run([*TIGER, "dump", "--url", first.url], capture_output=True, env=env, timeout=60)
        assert dumped.returncode == 0, dumped.stderr
        (tmp_path / "dump.jsonl").write_bytes(dumped.stdout)
        loaded = subprocess.run(
            [*TIGER, "load", "--url", second.url, str(tmp_path / "dump.jsonl")], capture_output=True, env=env, timeout=60
        )
        assert loaded.returncode == 0, loaded.stderr
        with tiger.connect(second.url) as client:
            assert {t: client.table(t).all() for t in want} == want
            with tiger.namespace("n\u00e4"):
                assert client.table("t").get("a") is not None
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("kind", ["a file", "under a file", "a dangling link", "under a dangling link"])
def test_a_data_path_that_is_no_directory_was_refused_saying_only_file_exists(tmp_path, kind):
    """A user trial: ``tiger serve --data /etc/passwd`` said only "[Errno 17] File exists" (of a symbolic link
    to nothing too). What is in the way is named with the field by ``tiger serve`` and ``tiger.serve()``
    before anything starts, and by the writer itself; nothing is changed (nor the link's target made)."""
    file, link, nowhere = tmp_path / "file", tmp_path / "link", tmp_path / "nowhere"
    file.write_text("keep")
    link.symlink_to(nowhere)
    dangling = f"{link} is a symbolic link to {nowhere}, which does not exist"
    data, why = {
        "a file": (file, f"{file} is a file, not a directory"),
        "under a file": (file / "data", f"{file / 'data'} cannot be made: {file} is a file, not a directory"),
        "a dangling link": (link, dangling),
        "under a dangling link": (link / "data", f"{link / 'data'} cannot be made: {dangling}"),
    }[kind]
    out = subprocess.run([*TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--data", str(data)], capture_output=True, text=True)
    assert out.returncode == 1 and f"tiger serve: --data: {why}\n" in out.stderr, out.stderr
    with pytest.raises(ValueError, match=f"^data: {re.escape(why)}$"):
        tiger.serve(data=data)
    with pytest.raises(OSError, match=re.escape(why)):  # the writer's own check (what changed since is found there)
        _log.DataDir(str(data))
    assert sorted(os.listdir(tmp_path)) == ["file", "link"] and file.read_text() == "keep"


def test_serve_said_only_exited_with_code_3_of_a_data_directory_its_writer_could_not_use(tmp_path):
    """``tiger.serve(data=...)`` whose writer could not use the directory raised "exited with code 3 before it
    was ready (its log is above)": the reason was in the writer's log alone. It is in the exception now."""
    data = tmp_path / "data"
    with tiger.serve(data=data) as first:
        pattern = rf"exited with code 3 before it was ready: tiger: cannot use the data directory \(--data\): .*{data} is in use"
        with pytest.raises(tiger.TigerError, match=rf"{pattern} by the tiger writer with pid {first.pid}$"):
            tiger.serve(data=data)


def test_a_data_directory_that_cannot_be_made_for_want_of_permission_is_refused_naming_the_field(tmp_path):
    """A data directory in a directory this user may not write: the writer says why, naming ``--data``."""
    (tmp_path / "closed").mkdir(mode=0o500)
    data = tmp_path / "closed" / "data"
    command = [*held_to_modes(), *TIGER, "serve", "--url", f"ipc://{tmp_path}/w", "--data", str(data)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert out.returncode == 3, out.stderr
    why = f"[Errno 13] cannot make or open the directory {data} (Permission denied)"
    assert f"tiger: cannot use the data directory (--data): {why}" in out.stderr
    assert not data.exists()


@pytest.mark.parametrize("command", [["stats"], ["dump"], ["load", "seed.jsonl"], ["drop", "x"], ["compact"]])
def test_every_command_names_its_timeout_option_when_it_is_bad(command, capsys):
    # a user's trial: `tiger stats --timeout 0` said "timeout must be ...", the other commands "--timeout must be"
    # (and `tiger dump`/`tiger load` took no --timeout at all)
    from tiger import _cli

    assert _cli.main([*command, "--url", "tcp://127.0.0.1:1", "--timeout", "0"]) == 1
    assert f"tiger {command[0]}: --timeout must be a number of seconds above 0" in capsys.readouterr().err
