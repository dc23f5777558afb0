"""``tiger.serve()``: start a writer in a child process and own it."""

from __future__ import annotations

import _socket
import atexit
import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import weakref
from typing import Any

import zmq
from zmq.utils import z85

from tiger import _lookup
from tiger import _protocol as p
from tiger._calls import call_expiry, check_seconds, clock_offset
from tiger._clock import mark, monotonic, moved, overslept, unpaused, wall
from tiger._errors import FAILURES, HandshakeFailed, ProtocolError, TigerError, Unavailable, shown
from tiger._handles import Handle
from tiger._lookup import (
    addresses,
    connect_socket,
    endpoint_or_why,
    is_address,
    tcp_host_port,
    url_host,
    wait_for_endpoint,
)
from tiger._paths import (
    DATA_ROOM,
    IPC_PATH_MAX,
    check_path,
    in_the_way,
    ipc_path_unusable,
    missing_secret_file,
    path_bytes,
    remove_tree,
    short_temp_dir,
)
from tiger._process import ZMQ_THREADS, PauseWatch, ProcessWatch, check_room, unsupported_environment
from tiger._unpatched import connected, interface_names, socketpair, start_process

_running: weakref.WeakSet[Server] = weakref.WeakSet()
NOT_STARTED = "tiger writer not started: "  # begins the line a writer that could not start prints on stdout


@atexit.register
def _stop_running() -> None:
    for server in list(_running):
        server.stop()


def check_url(url: object) -> str:
    """``url`` if it is a tcp or ipc URL ZeroMQ can take as it reads it; ``TypeError``, or ``ValueError``
    naming ``url``."""
    if type(url) is not str:
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    if "\0" in url:  # (ZeroMQ reads a C string: a NUL cut it short, and connect() reached the path before it)
        raise ValueError(f"url: a url cannot hold a NUL character (ZeroMQ would read it only up to it): {shown(url)}")
    if url.startswith("ipc://"):
        path = url[len("ipc://") :]
        try:
            size = path_bytes(path)
        except UnicodeEncodeError:  # (a bare UnicodeEncodeError came out of here, or pyzmq's later)
            raise ValueError(f"url: an ipc path must be text UTF-8 can carry (ZeroMQ encodes it so): {shown(url)}") from None
        if not path or size > IPC_PATH_MAX:
            raise ValueError(f"url: an ipc path must be 1 to {IPC_PATH_MAX} bytes, got {size}: {shown(url)}")
        if path.endswith("/"):  # (ipc:/// was reported as "Address already in use")
            raise ValueError(f"url: an ipc path must name a socket file, not a directory: {shown(url)}")
        if path == "@":
            raise ValueError(f"url: an abstract ipc name (ipc://@NAME) must not be empty: {shown(url)}")
        return url
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"url must be text UTF-8 can carry (ZeroMQ encodes it so): {shown(url)}") from None
    if url.startswith("tcp://") and ":" in url[len("tcp://") :]:
        if not url_host(url):  # (said "the host '' does not resolve")
            raise ValueError(f"url: a tcp url needs a host, tcp://HOST:PORT, got {shown(url)}")
        port = url.rsplit(":", 1)[1]
        if port != "*" and not (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535):  # (libzmq wraps)
            raise ValueError(f"url: a tcp port must be * or 0 to 65535, got {shown(port)}: {shown(url)}")
        return url
    raise ValueError(f"url must be tcp://HOST:PORT or ipc://PATH, got {shown(url)}")


def check_connect_url(url: object) -> str:
    """``check_url``, and that a client can connect there: not a wildcard only a writer can bind
    (``tcp://127.0.0.1:*``, ``tcp://*:7710``: copied from ``tiger serve --url``, ZeroMQ's connect raised a bare
    "Invalid argument" out of ``tiger stats`` and the pytest plugin), nor an ipc path naming a directory (a
    connect there waited out its whole timeout; ``ipc://*``, where it said "nothing is bound at that path").
    ``ValueError`` naming ``url``."""
    check_url(url)
    assert isinstance(url, str)
    if url.startswith("tcp://"):
        source, semicolon, _ = url[len("tcp://") :].rpartition(";")
        source_port = source.rpartition(":")[2]
        if semicolon and not (source_port == "*" or (source_port.isdigit() and source_port.isascii())):
            raise ValueError(  # (libzmq took it, and retried the connection silently for ever)
                f"url: the SOURCE of a tcp://SOURCE;HOST:PORT url needs a port too, SOURCE:0 for any, got {shown(url)}"
            )
        host, port = url_host(url), url.rsplit(":", 1)[1]
        if host == "*" or port == "*" or (port.isdigit() and int(port) == 0):
            raise ValueError(
                f"url: {shown(url)} is a wildcard only a writer binds (tiger serve picks a free port and prints it): "
                "connect to the url it printed, `tiger writer serving at tcp://127.0.0.1:PORT`"
            )
    elif url == "ipc://*":
        raise ValueError(
            "url: ipc://* is a wildcard only a writer binds (ZeroMQ picks a path and tiger serve prints it): "
            "connect to the url it printed, `tiger writer serving at ipc://PATH`"
        )
    elif not url.startswith("ipc://@") and os.path.isdir(url[len("ipc://") :]):
        raise ValueError(f"url: an ipc path must name a socket file, not a directory: {shown(url)}")
    return url


def check_bind_url(url: object, lookup_wait: float | None = None) -> str:
    """``check_url``, for an ipc URL that its path holds nothing a writer must not bind
    (``ipc_path_unusable``), for a tcp URL that its host name resolves: what a writer can bind, checked
    before it is started. Returns the URL to bind and print: a relative ipc path made absolute (``tiger
    serve --url ipc://w.sock`` printed that relative URL, which a client started in another directory
    could not reach). ``lookup_wait``: seconds the host name's lookup may take (default ``LOOKUP_WAIT``)."""
    check_url(url)
    assert isinstance(url, str)
    path = url[len("ipc://") :]
    if url.startswith("ipc://") and not path.startswith(("/", "@")) and path != "*":  # (*: libzmq picks a path)
        absolute = f"ipc://{os.path.abspath(path)}"
        with contextlib.suppress(ValueError):  # (too long made absolute: bound relative, as it was given)
            url = check_url(absolute)
    unusable = ipc_path_unusable(url)
    if unusable is not None:
        raise ValueError(f"url: {unusable[1]}: {shown(url)}")
    if url.startswith("tcp://") and ";" in url:
        raise ValueError(
            f"url: tcp://SOURCE;HOST:PORT is ZeroMQ's form for connecting from SOURCE; a writer binds tcp://HOST:PORT, "
            f"got {shown(url)}"
        )
    host = tcp_host_port(url)[0] if url.startswith("tcp://") else ""
    bindable = host == "*" or host in interface_names()  # (libzmq binds these too)
    # (refused as "without CurveZMQ", or ZeroMQ's "No such device"; a slow lookup: the writer's own bind waited it out)
    unresolved = None if bindable else unresolved_host(url, lookup_wait) or slow_lookup(url, lookup_wait)
    if unresolved is not None:
        raise ValueError(f"url: cannot bind {shown(url)}: {unresolved}")
    return url


def bind_address(url: str) -> str:
    """Where a writer binds for ``url``: a tcp host name replaced by its address (``tiger._lookup.endpoint``,
    looked up for at most ``LOOKUP_WAIT`` seconds), any other URL as it is (``*``, an interface name, an
    address, ipc). libzmq's bind looked the name up itself with no bound: with a name server that does not
    answer, ``tiger.serve(url, timeout=2)`` said only "did not start within the timeout", after 3.2 s.
    ``ValueError`` naming the host when it does not resolve in time."""
    if not url.startswith("tcp://"):
        return url
    host = tcp_host_port(url)[0]
    if host == "*" or is_address(host) or host in interface_names():
        return url
    found, why = endpoint_or_why(url, _lookup.LOOKUP_WAIT, f"{_lookup.LOOKUP_WAIT:g}s")
    if found is None:
        raise ValueError(f"url: cannot bind {shown(url)}: {why}")
    return found


def check_data_dir(value: object, field: str) -> str:
    """``check_path`` of a data directory, and that nothing is in the way of it (``in_the_way``: a file at
    its path or a parent's, a symbolic link to nothing); ``ValueError`` naming ``field`` and what. What
    only the attempt can tell (a permission, a read-only file system) the writer says as it starts."""
    path = check_path(value, field, room=DATA_ROOM, names="a directory")
    problem = in_the_way(path)
    if problem is not None:
        raise ValueError(f"{field}: {problem}")
    return path


class Server(Handle):
    """A writer process started by :func:`tiger.serve`. Context manager; ``stop()`` ends it. ``copy.copy``/
    ``copy.deepcopy`` give the server itself; pickling raises ``TypeError`` (other processes use its url).
    """

    _instead = (
        "Other processes reach its writer by its url (server.url): tiger.connect(url); the writer stays owned by "
        "the process that started it"
    )

    def __init__(self, url: str, process: subprocess.Popen[bytes], tmpdir: str | None) -> None:
        self.url = url
        self.pid = process.pid
        self._process = process
        self._tmpdir = tmpdir
        self._owner = os.getpid()
        # when it started (time.monotonic()), timeout (seconds), server key
        self._pending: tuple[float, float, str | bytes | None] | None = None

    def wait_ready(self) -> None:
        """Return once the writer answers (at once if it did already); stop it and raise if it cannot."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        started, timeout, server_key = pending
        try:
            self.url = _await_ready(self._process, self.url, started, timeout)
            # what is left of the timeout (it was given whole again: a serve took up to twice its timeout),
            # at least PING_AT_LEAST for a writer that said it serves just before the deadline
            ping(self.url, max(unpaused(started + timeout, started) - monotonic(), PING_AT_LEAST), server_key)
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<tiger.Server {self.url} pid={self.pid}>"

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop the writer (SIGTERM, then SIGKILL after ``timeout`` seconds); returns its exit code.
        Idempotent. ``ValueError`` for a timeout past a day, as every timeout."""
        check_seconds(timeout, "timeout")
        _running.discard(self)
        if os.getpid() != self._owner:
            return None  # a forked child: the writer and its directory belong to the parent
        proc = self._process
        if proc.poll() is None:
            # (watched by its pidfd, not proc.wait(timeout): that reads subprocess's time.monotonic, which a
            # test's freeze_time replaces, and a writer that did not end was waited for for ever)
            with ProcessWatch(proc.pid) as watch:
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a paused writer (SIGSTOP) waited out the whole timeout, then was killed
                if not watch.ended(timeout):
                    proc.kill()
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        if self._tmpdir is not None:
            remove_tree(self._tmpdir)
            self._tmpdir = None
        return proc.returncode


# seconds ``serve`` waits for the first answer of a writer that said it serves, if its timeout ends sooner
PING_AT_LEAST = 0.5


def serve(
    url: str | None = None,
    timeout: float = 10.0,
    *,
    data: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
    fsync: str | None = None,
    curve_secret: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
    lease_grace: float | None = None,
) -> Server:
    """Start a writer process; return once it answers.

    ``url=None`` binds a fresh ipc endpoint in a private (0700) temporary directory.
    ``data=DIR`` keeps the store in DIR (``fsync``: "always", "everysec" or "never"; None: "everysec"; given
    without ``data``, ``ValueError``: it would mean nothing);
    ``curve_secret`` is a key file from ``tiger keygen`` (required for non-loopback tcp). Each path is a
    str, bytes or os.PathLike (a data directory whose name is not UTF-8 is served; ``stats()`` shows it
    escaped); ``TypeError``/``ValueError`` naming the field, before anything is started, for another type,
    an empty path, a NUL, one longer than the kernel takes, or a url ``connect`` would refuse or whose ipc
    path is a directory. The writer exits by itself when this process dies. ``timeout``: seconds to wait for it to
    answer, from this call on (a host name's lookup counts in it; at most ``PING_AT_LEAST`` more for the first answer
    of a writer that said it serves at the end; ``ValueError`` past a day, ``tiger.Unavailable`` when it does not
    answer in time). ``lease_grace``: seconds a
    client the writer takes for gone by its silence keeps its leases (``Client.lease_namespace``; None: 600,
    ``tiger serve --lease-grace``; ``ValueError`` below 0 or past a day).
    """
    curve_secret = unshown(curve_secret)  # (first: see ``unshown``)
    check_seconds(timeout, "timeout", positive=True)
    server = start_writer(url, timeout, data=data, fsync=fsync, curve_secret=curve_secret, lease_grace=lease_grace)
    server.wait_ready()
    return server


def start_writer(
    url: str | None = None,
    timeout: float = 10.0,
    *,
    data: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
    fsync: str | None = None,
    curve_secret: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
    owner_pid: int | None = None,
    log: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
    lease_grace: float | None = None,
) -> Server:
    """``serve()`` without its wait: the writer process is started, ``Server.wait_ready()`` waits for it
    (and raises what ``serve()`` would) later, so its start overlaps other work. ``url`` is final at
    once unless it is a tcp URL with port ``*``.

    The writer runs in a session of its own: the terminal's Ctrl-C (SIGINT to the foreground process
    group) does not reach it; its owner stops it. ``owner_pid`` (default: this process) is the process
    whose end ends the writer. When it is another process (the pytest plugin: a worker starts the
    run's writer, the controller owns it), this process does not stop the writer at its exit.
    ``log``: a file the writer's log goes to (appended), instead of this process's stderr.
    """
    curve_secret = unshown(curve_secret)  # (first: see ``unshown``)
    started = monotonic()  # (the timeout counts the checks too: a url's host name looked up)
    unsupported = unsupported_environment()
    if unsupported is not None:
        raise TigerError(unsupported)
    # every argument checked before anything is made or started: a bad one raises naming its field, and
    # leaves no temporary directory behind (a NUL in data left one, and raised Popen's bare ValueError)
    if fsync is not None and fsync not in ("always", "everysec", "never"):
        raise ValueError(f"fsync must be 'always', 'everysec' or 'never', got {fsync!r}")
    if fsync is not None and data is None:  # (accepted, and meant nothing: a user trial)
        raise ValueError(f"fsync={fsync!r} applies to a data directory: give data=DIR too (without it: in memory only)")
    if url is not None:
        url = check_bind_url(url, min(_lookup.LOOKUP_WAIT, timeout))
    if lease_grace is not None:
        check_seconds(lease_grace, "lease_grace")
    data_path = None if data is None else check_data_dir(data, "data")
    secret_path = None if curve_secret is None else check_secret_path(curve_secret, "curve_secret")
    log_path = None if log is None else check_path(log, "log", names="a file")
    server_key = None
    if secret_path is not None:
        from tiger._writer import read_secret_key

        try:  # (said without the field: "'/etc/passwd' holds no 'secret: ...' line", a user trial)
            server_key = zmq.curve_public(read_secret_key(secret_path))
        except ValueError as e:
            raise ValueError(f"curve_secret: {e}") from None
        except zmq.ZMQError as e:  # 40 characters that are no z85 key (a bare "Invalid argument": a review)
            raise ValueError(f"curve_secret: {shown(secret_path)} holds no valid key ({e}): tiger keygen makes one") from None
        except OSError as e:  # (its own type and errno: FileNotFoundError, PermissionError)
            error = type(e)(f"curve_secret: cannot read {shown(secret_path)} ({e.strerror})")
            error.errno = e.errno
            raise error from None
    tmpdir = None
    if url is None:
        tmpdir = short_temp_dir("tiger-")
        url = f"ipc://{tmpdir}/w"
    # each value joined to its option by "=": a path beginning with "-" (data="-foo") was read as an option
    command = [sys.executable, "-m", "tiger", "serve", f"--url={url}", "--log-level=warning", "--failure-on-stdout"]
    owned_here = owner_pid is None or owner_pid == os.getpid()
    command += [f"--owner-pid={os.getpid() if owner_pid is None else owner_pid}"]
    if owned_here:
        command += ["--watch-stdin"]
    if tmpdir is not None:  # the writer removes it once stopped, in case this process was killed meanwhile
        command += [f"--made-dir={tmpdir}"]
    if data_path is not None:
        command += [f"--data={data_path}", f"--fsync={fsync or 'everysec'}"]
    if secret_path is not None:
        command += [f"--curve-secret={secret_path}"]
    if lease_grace is not None:
        command += [f"--lease-grace={lease_grace!r}"]
    try:
        with open(log_path, "ab") if log_path is not None else contextlib.nullcontext() as log_file:
            process = start_process(
                command,
                stdin=subprocess.PIPE if owned_here else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
                close_fds=True,
                start_new_session=True,
            )
    except BaseException:
        if tmpdir is not None:
            remove_tree(tmpdir)
        raise
    server = Server(url, process, tmpdir)
    server._pending = (started, timeout, server_key)
    if owned_here:
        _running.add(server)
    return server


def _await_ready(process: subprocess.Popen[bytes], url: str, started: float, timeout: float) -> str:
    """Read the writer's 'serving at URL' line within ``timeout`` seconds of when it ``started``
    (``time.monotonic()``; time this process was not running does not count); return the URL it bound.
    What the writer printed is read before the deadline is judged: a run stopped (Ctrl-Z then fg) while its
    writer, in a session of its own, started, raised "did not start within" as it resumed, and stopped a
    writer that was ready."""
    assert process.stdout is not None
    line = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = unpaused(started + timeout, started) - monotonic()
            slept, asked = mark(), max(remaining, 0.0)
            ready = selector.select(asked)
            overslept(slept, asked)  # (nothing else may be looking: a process that starts a writer and no client)
            if not ready:
                if remaining <= 0:
                    raise Unavailable(
                        f"the tiger writer for {url} did not start within {timeout:g}s (one given a data directory "
                        "loads all of it first, 5 to 12 s per million records here: a big one needs a longer timeout)"
                    )
                continue
            chunk = os.read(process.stdout.fileno(), 1024)
            if not chunk:
                code = process.wait()
                raise TigerError(f"the tiger writer for {url} exited with code {code} before it was ready (its log is above)")
            line += chunk
    if line.startswith(NOT_STARTED.encode()):  # (said only "exited with code 3": why, it printed to its log)
        code = process.wait()
        why = line[len(NOT_STARTED) :].decode(errors="replace").rstrip("\r\n")
        raise TigerError(f"the tiger writer for {url} exited with code {code} before it was ready: {why}")
    # the whole rest of the line: an ipc path may hold spaces (a TMPDIR with one cut the url at it, and every
    # writer tiger.serve() and the pytest plugin started there was refused)
    return line.decode().rstrip("\r\n").partition("serving at ")[2]


class Unshown(str):
    """A str whose repr does not show it: a key's text held in a local, where a traceback with locals
    (``pytest -l``, ``--showlocals``) printed it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} characters, not shown>"


class UnshownBytes(bytes):
    """``Unshown`` for bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<{len(self)} bytes, not shown>"


def unshown(value: Any) -> Any:
    """``value`` made ``Unshown`` (``UnshownBytes``) if it is a plain str (bytes); anything else as it is. A
    public call taking a key (``server_key``), or a path where a key may be given by mistake
    (``curve_secret``), rebinds its argument so first: its frame, and the frames it calls, then show no key
    in a traceback with locals (``pytest -l``: a secret key file's content given as ``server_key`` was
    printed from six of tiger's frames, a user trial)."""
    if type(value) is str:
        return Unshown(value)
    if type(value) is bytes:
        return UnshownBytes(value)
    return value


class EnvServerKey(Unshown):
    """A server key read from ``$TIGER_SERVER_KEY`` (``env_server_key``; empty: it is not set), so that what
    tiger says of it names ``TIGER_SERVER_KEY``, not the ``server_key`` argument: the ``tiger`` commands and the
    pytest plugin take the key from there only, and ``connect()`` given none does. Its repr shows no key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<TIGER_SERVER_KEY: {len(self)} characters>"


def env_server_key() -> EnvServerKey:
    """``$TIGER_SERVER_KEY`` as an ``EnvServerKey`` (empty when it is unset or empty: no key)."""
    return EnvServerKey(os.environ.get("TIGER_SERVER_KEY", ""))


def key_origin(server_key: object) -> str:
    """Where ``server_key`` came from, as an error names it: ``TIGER_SERVER_KEY`` or the ``server_key`` argument."""
    return "TIGER_SERVER_KEY" if isinstance(server_key, EnvServerKey) else "server_key"


# a line of a key file: tiger keygen's ``public: ...``/``secret: ...``, a ZeroMQ (CZMQ) certificate's
# ``public-key = "..."``/``secret-key = "..."``
_KEY_LINE = re.compile(r"^\s*(public|secret)(-key\s*=|\s*:)", re.IGNORECASE)


def _key_lines(text: str) -> set[str]:
    """The kinds of key line (``public``, ``secret``) in ``text``."""
    return {m.group(1).lower() for m in map(_KEY_LINE.match, text.splitlines()) if m}


def key_shape(value: str | bytes) -> str:
    """What an error may say of a key (or of what was given as one, or as a key file's path): its length and
    shape, and whether it is a secret key file's content, never the content itself (a secret key given by
    mistake, ``TIGER_SERVER_KEY="$(cat DIR/tiger.key)"``, was printed whole in the error, to terminals and CI
    logs: a user trial)."""
    unit = "characters" if isinstance(value, str) else "bytes"
    text = value if isinstance(value, str) else value.decode("utf-8", "replace")
    lines = text.strip().splitlines()
    shape = f"{len(value)} {unit if len(value) != 1 else unit[:-1]}" + (f" over {len(lines)} lines" if len(lines) > 1 else "")
    if not text.strip():
        return f"{shape}, all whitespace" if value else "nothing"
    kinds = _key_lines(text)
    if "secret" in kinds:
        return f"{shape}: a secret key file's content (its secret key line, as DIR/tiger.key or a ZeroMQ certificate holds it)"
    if "public" in kinds:
        return f"{shape}: a key file's content (a public key line, and more)"
    outside = sum(1 for c in text.strip() if c not in _Z85)
    return shape + (f", {outside} of them outside z85's alphabet" if outside else "")


_Z85 = frozenset(z85.Z85CHARS.decode())


def looks_like_key(value: str) -> bool:
    """Whether ``value`` (given as a path) is rather a key or a key file's content: a key line in it, or 40
    characters of z85's alphabet. An error must not show it (``key_shape``)."""
    text = value.strip()
    return bool(_key_lines(value)) or (len(text) == 40 and all(c in _Z85 for c in text))


def check_server_key(server_key: object) -> bytes | None:
    """``server_key`` as the z85 bytes CurveZMQ takes (None, or an empty ``EnvServerKey``: plain).
    ``TypeError`` for a type other than str, bytes or None, ``ValueError`` for anything but the 40-character z85
    public key ``tiger keygen`` printed (as ``DIR/tiger.pub`` holds it after ``public: ``), each naming where
    the key came from (``key_origin``: ``server_key``, or ``TIGER_SERVER_KEY`` for an ``EnvServerKey``), and
    saying only its shape (``key_shape``): never the key (a secret key file given in its place was printed).
    Whitespace around it, and the ``public:`` of ``DIR/tiger.pub``'s line, are dropped (none is z85): a key
    pasted with a space, or ``TIGER_SERVER_KEY="$(cat DIR/tiger.pub)"``, was refused (a user trial)."""
    if server_key is None or (isinstance(server_key, EnvServerKey) and not server_key):
        return None
    origin = key_origin(server_key)
    if not isinstance(server_key, (str, bytes)):
        raise TypeError(f"{origin} must be a str (the z85 public key tiger keygen printed), not {type(server_key).__name__}")
    text = Unshown((server_key if isinstance(server_key, str) else server_key.decode("ascii", "replace")).strip())
    if text.startswith("public:"):
        text = Unshown(text[len("public:") :].strip())
    if len(text) != 40 or not text.isascii():
        secret = "secret" in _key_lines(server_key if isinstance(server_key, str) else server_key.decode("utf-8", "replace"))
        raise ValueError(
            f"{origin} must be the 40-character z85 public key tiger keygen printed (in DIR/tiger.pub after "
            f"'public: '), got {key_shape(server_key)}"
            + ("; keep that secret (it is not shown here), and give the PUBLIC key, DIR/tiger.pub's" if secret else "")
        )
    try:
        z85.decode(text)
    except Exception:  # (a character outside z85's alphabet: KeyError; a value past 32 bits: struct.error)
        raise ValueError(f"{origin} is not a z85 key (tiger keygen prints one): got {key_shape(server_key)}") from None
    return text.encode()


def refuse_key_as_path(value: object, field: str) -> None:
    """``ValueError`` naming ``field`` (``curve_secret``, ``--curve-secret``: a CurveZMQ secret key file's path) if
    ``value`` is rather a key or a key file's content (``--curve-secret "$(cat DIR/tiger.key)"``), saying its
    shape only: taken for a path, the secret key was shown in the error ("No such file or directory:
    'public: ...'")."""
    if isinstance(value, (str, bytes)):
        text = os.fsdecode(value)
        if looks_like_key(text) and not os.path.exists(text):
            raise ValueError(
                f"{field} must be the path of the key file tiger keygen wrote (DIR/tiger.key), not a key or a key "
                f"file's content: got {key_shape(text)} (not shown here)"
            )


def check_secret_path(value: object, field: str) -> str:
    """``check_path`` of a CurveZMQ secret key file's path, after ``refuse_key_as_path``; ``FileNotFoundError``
    (``missing_secret_file``) if no file is there and the path may not be shown."""
    refuse_key_as_path(value, field)
    path = check_path(value, field, names="a key file")
    if os.path.isdir(path):  # (said as a bare "[Errno 21] Is a directory": a user trial)
        raise IsADirectoryError(
            f"{field}: {shown(str(path))} is a directory: give the key file tiger keygen wrote in it "
            f"({shown(os.path.join(str(path), 'tiger.key'))})"
        )
    hidden = None if os.path.exists(path) else missing_secret_file(path, field)
    if hidden is not None:
        raise FileNotFoundError(hidden)
    return str(path)  # (a plain str: an ``Unshown`` one would hide a path in the errors that name it)


def secure(sock: zmq.Socket[Any], server_key: str | bytes | None) -> None:
    """Make ``sock`` a CurveZMQ client of the server whose public key is ``server_key`` (None: plain);
    raises what ``check_server_key`` raises."""
    key = check_server_key(server_key)
    if key is None:
        return
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey = key
    sock.curve_publickey = public
    sock.curve_secretkey = secret


HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH


def handshake_refused(url: str, server_key: object, mechanism: str | None, writer: bool = False) -> str:
    """What ``HandshakeFailed`` says for ``url``, by whether the client had a ``server_key`` and the
    security mechanism the peer's ZMTP greeting names (``zmtp_mechanism`` of ``greet``: "CURVE", "NULL", None for
    no ZMTP greeting). libzmq tells a client only that the handshake failed, and often not even which
    mechanism the other side wanted (the writer closes the connection before its greeting is read).

    The peer is "the ZeroMQ peer at URL" unless it is known to be a tiger writer (``writer``: it answered
    a tiger request, ``answers_as_tiger``): a bare ZeroMQ socket was said to be "the tiger writer". The key
    is named where it came from (``key_origin``): the ``tiger`` commands take it from TIGER_SERVER_KEY only,
    and said "pass server_key"."""
    origin = key_origin(server_key)
    if mechanism == "CURVE" and server_key:
        why = (
            f"it serves CurveZMQ with another key than the server key given ({origin}): give "
            "the public key its tiger keygen printed (in DIR/tiger.pub)"
        )
    elif mechanism == "CURVE":
        give = "set TIGER_SERVER_KEY" if isinstance(server_key, EnvServerKey) else "pass server_key or set TIGER_SERVER_KEY"
        why = (
            f"it serves CurveZMQ and no server key was given: {give} to the public key its tiger keygen printed "
            "(in DIR/tiger.pub)"
        )
    elif mechanism == "NULL" and server_key:
        why = (
            f"it serves without CurveZMQ and a server key was given ({origin}): give none for a "
            "writer started without --curve-secret"
        )
    elif mechanism == "NULL":
        why = "it is a ZeroMQ socket of another kind, no tiger writer (a writer's publish url?)"
    elif mechanism is not None:
        why = f"it serves the ZeroMQ security mechanism {shown(mechanism)}: it is no tiger writer"
    else:
        return f"the handshake with the peer at {url} failed: it answers no ZeroMQ greeting: it is no tiger writer"
    return f"the handshake with the {'tiger writer' if writer else 'ZeroMQ peer'} at {url} failed: {why}"


def no_zeromq(url: str, received: bytes) -> str:
    """What ``HandshakeFailed`` says of a peer at ``url`` that answered a greeting probe with ``received``, bytes
    that are no ZMTP greeting (``speaks_no_zeromq``): an HTTP server, say."""
    return (
        f"the peer at {url} does not speak ZeroMQ: it answered the start of a ZeroMQ greeting with "
        f"{received[:24]!r}{'...' if len(received) > 24 else ''}: it is no tiger writer"
    )


# seconds a probe lets a fresh connection's handshake take before it probes the peer's greeting itself
# (``handshake_failure``): a handshake took 2-50 ms here; a greeting probe of a ZeroMQ peer costs nothing
GREETING_GRACE = 0.1


def handshake_failure(url: str, server_key: str | bytes | None, timeout: float = 0.1) -> str | None:
    """``handshake_refused`` if a socket connected to ``url`` as a client's is (``server_key``: CurveZMQ)
    fails its handshake within ``timeout`` seconds (then ``greet`` tells why, in as long
    again), or ``no_zeromq`` if it is connected and has no handshake after ``GREETING_GRACE`` seconds, and a
    greeting probe (``greet``, within what is left of ``timeout``) is answered with what is no ZeroMQ
    greeting (an HTTP server says nothing to a ZeroMQ greeting until it is sent a line: the handshake waited
    for ever, and connect its whole timeout, to say "did not answer"); None if it succeeds, if nothing
    listens there (yet: a connect retried before any connection), or if nothing was heard by then (a paused
    writer, a listener that says nothing). A probe of its own, for a client whose hello goes unanswered (a
    wrong key waited out connect's whole timeout, then said "did not answer"). libzmq retries the connect
    after each failed handshake, so a retry after a connection is not "nothing listens"."""
    from zmq.utils.monitor import parse_monitor_message  # (imports asyncio: not for every client's start)

    address = endpoint_or_why(url, timeout)[0]
    if address is None:  # (a host name not resolved in time: nothing can be told)
        return None
    try:
        check_room("a tiger probe", 8)
    except TigerError:  # (out of descriptors: libzmq would abort the process; a probe only tells more)
        return None
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        events = HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED
        _sock, monitor = _monitored_dealer(ctx, address, server_key, events)  # (held: a dropped socket is closed)
        deadline = monotonic() + timeout
        connected: float | None = None  # when the connection was made
        probed = False
        while True:
            now = monotonic()
            until = deadline if connected is None or probed else min(deadline, connected + GREETING_GRACE)
            p.poll_on_a_real_clock()
            if monitor.poll(max(0, int((until - now) * 1000)) if until > now else 0):
                message = parse_monitor_message(monitor.recv_multipart())
                event = message["event"]
                if event & HANDSHAKE_FAILED:
                    return handshake_failed_why(url, server_key, event, message["value"], timeout)
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED or (event == zmq.EVENT_CONNECT_RETRIED and connected is None):
                    return None
                if event == zmq.EVENT_CONNECTED and connected is None:
                    connected = monotonic()
                continue
            if monotonic() >= deadline:
                return None
            if connected is not None and not probed:  # no handshake yet: does the peer speak ZeroMQ at all?
                probed = True
                received = greet(url, deadline - monotonic())
                if speaks_no_zeromq(received):
                    return no_zeromq(url, received)
    finally:
        ctx.destroy(linger=0)


def handshake_failed_why(url: str, server_key: object, event: int, value: int, timeout: float) -> str:
    """``handshake_refused`` for a handshake that libzmq's monitor ``event`` (one of ``HANDSHAKE_FAILED``, its
    ``value``: errno, or the ZMTP protocol error) said failed, asking the peer's greeting why
    (``greet``, within ``timeout`` seconds; ``no_zeromq`` if it answers what is no ZeroMQ greeting). A ZMTP
    protocol error (``HANDSHAKE_FAILED_PROTOCOL``, ``_AUTH``) is a verdict of its own: libzmq ends that
    connection for good, no retry, so the peer's greeting unheard (a writer that stopped answering, a
    machine too loaded to answer the probe in time) does not make it "no ZeroMQ greeting": a mechanism
    mismatch names the mechanism a tiger writer serves when it is not the client's (NULL to a client with a
    key, CURVE to one without). A peer serving without CurveZMQ to a client with a key is said to be a tiger
    writer only if it answers a tiger request made without the key (``answers_as_tiger``)."""
    received = greet(url, timeout)
    if speaks_no_zeromq(received):
        return no_zeromq(url, received)
    mechanism = zmtp_mechanism(received)
    if mechanism is None and event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            mechanism = "NULL" if server_key else "CURVE"
        else:
            return (
                f"the handshake with the peer at {url} failed: a ZeroMQ protocol error ({value:#x}) ended "
                "the connection, and the peer greeted no probe after it"
            )
    writer = mechanism == "NULL" and bool(server_key) and answers_as_tiger(url, timeout)
    return handshake_refused(url, server_key, mechanism, writer)


def answers_as_tiger(url: str, timeout: float) -> bool:
    """Whether the peer at ``url`` answers a tiger request (``Stats``) made without CurveZMQ within ``timeout``
    seconds as a tiger writer does: what tells a tiger writer serving without CurveZMQ from any other ZeroMQ
    socket that does (a bare ROUTER), whose greetings are the same."""
    deadline = monotonic() + timeout  # (first: the lookup is inside it)
    address = endpoint_or_why(url, timeout)[0]
    if address is None:
        return False
    check_room("a tiger probe", 8)
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        connect_socket(sock, address)
        _send_once(sock, p.encode_request(p.Stats(1, checksum=False)))
        p.poll_on_a_real_clock()
        if not sock.poll(max(1, int((deadline - monotonic()) * 1000))):
            return False
        try:
            reply = p.decode_reply(sock.recv())
        except ProtocolError:
            return False
        if type(reply) is p.Failed:  # a writer of before Stats' checksum field refuses it, naming its own message
            return reply.kind == "protocol" and _OLD_STATS in reply.message
        return type(reply) is p.Ok and isinstance(reply.result, dict) and "epoch" in reply.result
    except zmq.ZMQError:
        return False
    finally:
        ctx.destroy(linger=0)


# the start of a ZMTP 3 greeting (rfc.zeromq.org/spec/23): its signature and major version, what makes libzmq
# send the rest of its own greeting; the rest of ours (mechanism ...) might get the connection closed unread
ZMTP_GREETING_START = b"\xff" + bytes(8) + b"\x7f" + b"\x03"
# what a greeting probe sends (``greet``): that start, then an empty line. A ZeroMQ peer takes the line for the
# next bytes of the greeting, which it reads only once whole (64 bytes: it greeted first); a peer speaking a
# protocol of lines (HTTP, Redis, SMTP) answers it, where it waited for ever on a greeting with no line end
GREETING_PROBE = ZMTP_GREETING_START + b"\r\n\r\n"


def greet(url: str, timeout: float = 0.1) -> bytes:
    """What the peer at ``url`` answers a greeting probe (``GREETING_PROBE``, on a plain socket) within
    ``timeout`` seconds, the connect included: its first bytes, up to the 32 of a ZMTP 3 greeting's
    signature, version and mechanism, fewer if it closed the connection, fell silent, or began with what is
    no ZMTP greeting (``speaks_no_zeromq``: then its first chunk); nothing if no connection was made. The
    connection is closed once it is read."""
    received = b""
    deadline = monotonic() + timeout
    try:
        with contextlib.closing(_stream(url, timeout)) as probe:
            probe.sendall(GREETING_PROBE)
            while len(received) < 32 and not speaks_no_zeromq(received):  # signature (10), version (2), mechanism (20)
                probe.settimeout(max(deadline - monotonic(), 0.001))
                chunk = probe.recv(64)
                if not chunk:
                    break
                received += chunk
    except (OSError, ValueError):
        pass
    return received


def speaks_no_zeromq(received: bytes) -> bool:
    """Whether the first bytes a peer sent (``greet``) cannot begin a ZMTP greeting: a first byte other than
    its signature's 0xFF, or a tenth without the bit that marks a versioned one."""
    return bool(received) and (received[0] != 0xFF or (len(received) >= 10 and not received[9] & 1))


def zmtp_mechanism(received: bytes) -> str | None:
    """The security mechanism ("NULL", "CURVE") named in ``received``, a peer's first bytes (``greet``), if they
    are a ZMTP 3 greeting's first 32; else None."""
    if len(received) < 32 or received[0] != 0xFF or not received[9] & 1 or received[10] < 3:
        return None
    return received[12:32].rstrip(b"\0").decode("ascii", "backslashreplace")


def ping(url: str, timeout: float = 5.0, server_key: str | bytes | None = None) -> dict[str, Any]:
    """One request to the writer at ``url``: its stats without the checksum (None: answered at once, where the
    checksum takes seconds on a store of millions of records). ``Unavailable`` if it does not answer in
    ``timeout`` seconds."""
    return request_once(url, p.Stats(1, checksum=False), timeout, server_key).result  # type: ignore[no-any-return]


def request_once(url: str, request: p.Request, timeout: float = 5.0, server_key: str | bytes | None = None) -> p.Ok:
    """One request on a socket of its own, without a replica (``ping``, the plugin's cleanup of a run).

    ``Unavailable`` if the writer does not answer within ``timeout`` seconds, at once if nothing
    listens at ``url`` (ZeroMQ would retry a refused connection silently until the timeout);
    ``TigerError`` naming its answer if that is a refusal; ``ValueError`` for a malformed URL or timeout.
    """
    server_key = unshown(server_key)  # (first: see ``unshown``)
    deadline, watch = check_reachable(url, timeout)
    try:
        address = wait_for_endpoint(url, timeout, deadline, watch.moved)
        check_room("a tiger request", 10)
        ctx: zmq.Context[Any] = zmq.Context()
        try:
            sock, monitor = _monitored_dealer(ctx, address, server_key, ANSWER_EVENTS)  # a failed handshake: said at once
            _send_once(sock, p.encode_request(request))
            try:
                return _answer(sock, url, deadline, timeout, monitor, server_key, watch)
            except ProtocolError as e:  # a writer of before Stats' checksum field: asked as it reads it (the
                if type(request) is not p.Stats or request.checksum or _OLD_STATS not in str(e):  # checksum taken)
                    raise
                _send_once(sock, p.encode_request(p.Stats(request.req_id)))
                return _answer(sock, url, deadline, timeout, monitor, server_key, watch)
        finally:
            ctx.destroy(linger=0)
    finally:
        watch.stop()


_OLD_STATS = "request 'stats' has 2 fields, expected 1"  # a writer of before Stats' checksum field, refusing one


def check_reachable(url: str, timeout: float) -> tuple[float, PauseWatch]:
    """The checks before a one-shot request (``request_once``, a lease, ``tiger dump``) makes a socket: the URL,
    the timeout, and that something listens (probed for at most 1 s, and half, of the ``timeout``); returns
    when the ``timeout`` ends (``time.monotonic()``), counted from before the probes (they took up to 2 s
    before it began, and it all again), and a ``PauseWatch`` begun before them, which the caller stops: the
    deadline does not count time the process was not running, whichever step it stopped (``tiger stats``
    stopped 9 s as it probed raised "did not answer within 8s" as it resumed)."""
    check_connect_url(url)
    check_seconds(timeout, "timeout", positive=True)
    began = mark()
    deadline = began[0] + timeout
    watch = PauseWatch(deadline + 1.0, began)
    try:
        unreachable = why_unreachable(url, min(1.0, timeout / 2))  # (half at most: the call's own wait follows)
        if unreachable is not None:
            raise Unavailable(f"the tiger writer at {url} is not there: {unreachable}")
    except BaseException:  # (the watch is the caller's only once returned)
        watch.stop()
        raise
    return deadline, watch


def _monitored_dealer(
    ctx: zmq.Context[Any], address: str, server_key: str | bytes | None, events: int = HANDSHAKE_FAILED
) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    """A DEALER of ``ctx`` connected to ``address`` (``tiger._lookup.endpoint``) as a client's sockets are
    (no linger, IPv6 for an IPv6 address, CurveZMQ with ``server_key``), and a monitor of its ``events``
    attached before it connects (after, the events of a quick handshake were gone before it listened);
    both closed if they cannot be made so."""
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    monitor: zmq.Socket[Any] | None = None
    try:
        sock.setsockopt(zmq.LINGER, 0)
        secure(sock, server_key)
        monitor = sock.get_monitor_socket(events)
        connect_socket(sock, address)
    except BaseException:
        if monitor is not None:
            monitor.close(linger=0)
        sock.close(linger=0)
        raise
    return sock, monitor


def _send_once(sock: zmq.Socket[Any], payload: bytes) -> None:
    """Queue ``payload`` on ``sock`` (a fresh DEALER of ``_monitored_dealer``) without blocking; not sent if
    it cannot be queued, and then ``_answer`` says why (``HandshakeFailed``) or waits out the deadline. A
    handshake that failed on a protocol error before the send (another mechanism: a server key to a writer
    without CurveZMQ) made libzmq drop the socket's only pipe, and a blocking send waited for ever:
    `tiger stats --timeout 60` and `tiger compact` hung (CI)."""
    try:
        sock.send(payload, zmq.NOBLOCK)
    except zmq.Again:
        pass


# the monitor events a one-shot request watches (``_answer``): its handshake's failure, or its success (then the
# peer speaks ZeroMQ, and its greeting is not probed)
ANSWER_EVENTS = HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED
# seconds a one-shot request waits for its handshake before it probes the peer's greeting (``_answer``), and
# the most one probe may take: a writer's handshake took 2-50 ms here
GREETING_PROBE_AFTER = 0.25
GREETING_PROBE_TIME = 0.5
# greeting probes a one-shot request makes at most, a second apart, while its handshake says nothing
GREETING_PROBES = 2
# the longest a one-shot request's wait sleeps at once (``_answer``): a stop of its process found by a wait is
# counted only past what the wait asked for, so one asking for all of its timeout counted nothing of a stop that
# began within it but what ran past the deadline (``tiger stats --timeout 3`` stopped 5 s as it waited: "did not
# answer within 3s" as it resumed)
ANSWER_SLICE = 0.5


def _answer(
    sock: zmq.Socket[Any],
    url: str,
    deadline: float,
    timeout: float,
    monitor: zmq.Socket[Any] | None = None,
    server_key: str | bytes | None = None,
    watch: PauseWatch | None = None,
) -> p.Ok:
    """The writer's answer on ``sock`` (the next message: one request in flight) by ``deadline``
    (``time.monotonic()``; ``timeout``: the seconds it stands for, in the message), moved by the pauses of the
    process since ``watch`` began (the ``PauseWatch`` of ``check_reachable``; None: since this wait began), if it is an Ok; what a
    Failed answer names is raised as a client raises it, ``Unavailable`` past the deadline, and at once
    ``HandshakeFailed`` when ``monitor`` (``sock``'s, of ``ANSWER_EVENTS``) says the handshake failed, or when,
    with no handshake after ``GREETING_PROBE_AFTER`` seconds, a greeting probe (``greet``) is answered with
    what is no ZeroMQ greeting: `tiger stats` to an HTTP server's port waited out its timeout and said "did
    not answer" (the server waits for a line, libzmq for its greeting)."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    if monitor is not None:
        poller.register(monitor, zmq.POLLIN)
    probes = 0 if monitor is not None else GREETING_PROBES  # (none without a monitor: the handshake was had)
    began = monotonic()
    probe_at = began + GREETING_PROBE_AFTER
    counted = 0.0
    if watch is not None:  # (the pauses before this wait too: the deadline was taken before the probes)
        began, found = watch.began, watch.paused_since
    else:
        found = None
    while True:
        now = monotonic()
        until = deadline if probes >= GREETING_PROBES else min(deadline, probe_at)
        p.poll_on_a_real_clock()
        slept, asked = mark(), min(max(0.001, until - now), ANSWER_SLICE) if until > now else 0.0
        ready = dict(poller.poll(max(1, int(asked * 1000)) if asked else 0))  # (0: an answer there is taken)
        # time this process was not running (SIGSTOP, Ctrl-Z: a stopped ``pytest -n 4`` run's controller making
        # its run lease) is not the writer's: the deadline moves by it (an answer sent meanwhile is read)
        overslept(slept, asked)
        moved_to, counted = moved(deadline, began, counted, found)
        probe_at += moved_to - deadline
        deadline = moved_to
        if sock in ready:
            break
        if monitor is not None and monitor in ready:
            seconds = min(max(deadline - monotonic(), 0.1), 1.0)  # (a loaded machine: 0.1 s missed)
            failed = False
            for event, value in _monitor_events(monitor):
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    probes = GREETING_PROBES  # a ZeroMQ peer: its silence is a writer's, paused or busy
                elif event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    # a protocol error: libzmq gave up ``sock``'s connection for good, so no answer can come (a
                    # probe that then heard nothing in time left tiger compact waiting 600 s)
                    raise HandshakeFailed(handshake_failed_why(url, server_key, event, value, seconds))
                else:
                    failed = True
            if failed:
                # the connection closed during the handshake: a wrong CurveZMQ key, a writer restarting; libzmq
                # retries it, so a probe that cannot tell is asked again at the next failure
                why = handshake_failure(url, server_key, seconds)
                if why is not None:
                    raise HandshakeFailed(why)
            continue
        now = monotonic()
        if now >= deadline:
            raise Unavailable(no_answer(url, timeout))
        if probes < GREETING_PROBES and now >= probe_at:  # no handshake yet: does the peer speak ZeroMQ at all?
            probes += 1
            received = greet(url, min(GREETING_PROBE_TIME, deadline - now))
            if speaks_no_zeromq(received):
                raise HandshakeFailed(no_zeromq(url, received))
            probe_at = monotonic() + 1.0
    reply = p.decode_reply(sock.recv())
    if type(reply) is p.Failed:  # (as a client raises it: tiger compact printed the reply's repr)
        raise FAILURES.get(reply.kind, TigerError)(reply.message)
    if type(reply) is not p.Ok:
        raise ProtocolError(f"the tiger writer at {url} answered a {type(reply).__name__}, not an ok or a failure")
    return reply


def _monitor_events(monitor: zmq.Socket[Any]) -> list[tuple[int, int]]:
    """The (event, value) of each message waiting on ``monitor`` (a socket monitor's PAIR), taken from it."""
    from zmq.utils.monitor import parse_monitor_message  # (imports asyncio: not for every client's start)

    events = []
    p.poll_on_a_real_clock()
    while monitor.poll(0):
        message = parse_monitor_message(monitor.recv_multipart())
        events.append((message["event"], message["value"]))
    return events


class NamespaceLease(Handle):
    """A lease of ``namespace`` (``Client.lease_namespace``) held by a socket of its own, without a client
    or a replica: the writer at ``url`` drops the namespace once this holder and every other client
    leasing it are gone (``close()``, or the process's death: its kernel closes the socket). The pytest
    plugin's controller holds its run's namespace so, from the writer's first use on, whether or not it
    ever connects a client.

    Made connected and leased: a Hello (the writer's clock, as a client's deadlines are on it), then a
    call carrying the lease, each answered within ``timeout`` seconds. ``server_key``: the writer's
    CurveZMQ public key (None: plain). Raises as ``request_once`` does: ``ValueError``/``TypeError`` for
    a malformed URL, timeout, key or namespace (``"global"`` cannot be leased), ``Unavailable`` at once
    if nothing listens at ``url`` or when an answer does not come in time, what a refusal names
    (``TigerError``); nothing is left open then.

    Held, a daemon thread owns the socket: it sends a beat every ``min(heartbeat, 0.5)`` seconds (as a
    replica does: the holder is never silent, and a writer restarted on its data directory hears it in
    time) and reads whatever comes (the writer probes a silent client through its socket). Read it must:
    a DEALER whose queue reaches its RCVHWM stops reading its connection, leaves the writer's ZeroMQ
    heartbeats unanswered, and the writer takes it for gone 3 s later and ends the lease after its grace
    (with a grace of 0, a small RCVHWM left unread lost the lease within 7 s). The queue stays near
    empty; the default RCVHWM (1000 messages) bounds
    it, and is minutes of the writer's probes should the thread be held up (a C call holding the GIL).
    ``close()`` stops the thread, says goodbye, closes the socket and its context: idempotent, and a
    no-op in a forked child (the socket is the parent's). ``copy.copy``/``copy.deepcopy`` give the lease
    itself; pickling raises ``TypeError``."""

    _instead = "A lease is held by a socket of the process that made it: make one in the other process"

    def __init__(self, url: str, namespace: str, timeout: float = 5.0, server_key: str | bytes | None = None) -> None:
        server_key = unshown(server_key)  # (first: see ``unshown``)
        from tiger._table import check_leasable

        check_leasable(namespace)
        deadline, watch = check_reachable(url, timeout)
        try:
            self._lease(url, namespace, timeout, server_key, deadline, watch)
        finally:
            watch.stop()

    def _lease(
        self, url: str, namespace: str, timeout: float, server_key: str | bytes | None, deadline: float, watch: PauseWatch
    ) -> None:
        """``__init__``'s steps after its checks: connected and leased by ``deadline``, moved by the pauses
        ``watch`` finds (see ``check_reachable``)."""
        address = wait_for_endpoint(url, timeout, deadline, watch.moved)
        self.url = url
        self.namespace = namespace
        self.client_id = p.new_client_id()
        self._owner = os.getpid()
        check_room("a tiger namespace lease", 10, threads=ZMQ_THREADS + 1)  # (+ its own thread)
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._sock: zmq.Socket[Any] | None = None
        self._wake_r, self._wake_w = socketpair()
        try:
            self._sock, monitor = _monitored_dealer(self._ctx, address, server_key, ANSWER_EVENTS)  # (said at once)
            sent = wall()
            _send_once(self._sock, p.encode_request(p.Hello(1, self.client_id)))
            try:
                info = _answer(self._sock, url, deadline, timeout, monitor, server_key, watch).result or {}
            finally:
                self._sock.disable_monitor()  # (its events would pile up for the lease's life)
                monitor.close(linger=0)
            by = watch.moved(deadline)  # (a pause so far does not count)
            expires, _ = call_expiry(by, clock_offset(sent, wall(), info) or 0.0)
            _send_once(self._sock, p.encode_call(p.Call(self.client_id, expires, p.Lease(2, namespace, self.client_id))))
            _answer(self._sock, url, deadline, timeout, watch=watch)
            self._beat = min(float(info.get("heartbeat", 0.5)), 0.5)
            self._thread: threading.Thread | None = threading.Thread(
                target=self._hold, args=(self._sock,), name=f"tiger lease {namespace}", daemon=True
            )
            self._thread.start()
        except BaseException:
            self._thread = None
            self._end(goodbye=False)
            raise

    def __repr__(self) -> str:
        return f"<tiger.NamespaceLease {self.namespace!r} at {self.url} client={self.client_id}>"

    def _hold(self, sock: zmq.Socket[Any]) -> None:
        """The thread's loop, until ``close()`` wakes it: beat, and read (and drop) what comes."""
        beat = p.encode_request(p.Beat(self.client_id))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = 0.0
        try:
            while True:
                now = monotonic()
                if now >= next_beat:
                    next_beat = now + self._beat
                    with contextlib.suppress(zmq.Again):  # (the writer away: its queue full; it is heard when back)
                        sock.send(beat, zmq.NOBLOCK)
                p.poll_on_a_real_clock()
                events = dict(poller.poll(max(1, int((next_beat - monotonic()) * 1000))))
                if self._wake_r.fileno() in events:
                    return
                if sock in events:
                    with contextlib.suppress(zmq.Again):
                        for _ in range(1000):
                            sock.recv(zmq.NOBLOCK)
        except zmq.ZMQError:  # (the context ended under it: the process is exiting)
            return

    def close(self) -> None:
        """Stop holding: a goodbye, so that the writer ends the lease now (the namespace is dropped unless
        another client leases it), then the socket and its context closed. Idempotent."""
        if os.getpid() != self._owner:
            return
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")
            thread.join()
        self._end(goodbye=thread is not None)

    def _end(self, goodbye: bool) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if goodbye:
                with contextlib.suppress(zmq.ZMQError):
                    sock.send(p.encode_request(p.Bye(self.client_id)), zmq.NOBLOCK)
            sock.close(linger=_BYE_LINGER if goodbye else 0)  # (not lost: else the lease ends 3 s and the grace later)
        if not self._ctx.closed:
            self._ctx.term()
        self._wake_r.close()
        self._wake_w.close()


_BYE_LINGER = 500  # milliseconds a lease's goodbye may wait to be sent (a writer paused at that moment)


def why_refused(url: str, timeout: float = 1.0) -> str | None:
    """Why nothing can answer at ``url`` (a missing or stale ipc socket file, a refused tcp port), or None;
    ``timeout``: seconds the probe may take (``accepting``)."""
    state = accepting(url, timeout)
    if state == "absent":
        return "nothing is bound at that path"
    if state == "refused":
        return "nothing listens there (connection refused)"
    return None


def unresolved_host(url: str, seconds: float | None = None) -> str | None:
    """ "the host NAME does not resolve" for a tcp URL whose host name has no address (looked up now, for at
    most ``seconds``, default ``LOOKUP_WAIT``; not waited for again once a lookup of it was slow,
    ``tiger._lookup.slow``: then nothing can be told), else None."""
    if url.startswith("tcp://"):
        host = url_host(url)
        if not is_address(host):
            try:
                addresses(host, 0.0 if _lookup.slow(host) else seconds)
            except TimeoutError:
                pass
            except socket.gaierror as e:  # a resolver that failed for now (EAI_AGAIN) tells nothing of the name
                if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                    return f"the host {shown(host)} does not resolve"
            except (OSError, UnicodeError):  # (a name idna cannot encode: no host has it)
                return f"the host {shown(host)} does not resolve"
    return None


def slow_lookup(url: str, seconds: float | None = None) -> str | None:
    """That the lookup of the host name of a tcp ``url`` has taken ``seconds`` (default ``LOOKUP_WAIT``: a
    call with a shorter timeout passes its own) or more (``tiger._lookup.slow``), else None: a silence that
    follows one is the name server's, not a paused writer's."""
    if url.startswith("tcp://"):
        host = url_host(url)
        if not is_address(host) and _lookup.slow(host, seconds):
            return f"the lookup of the host {shown(host)} took too long (a name server that does not answer?)"
    return None


def why_unreachable(url: str, timeout: float = 1.0) -> str | None:
    """``why_refused``, or that the host name of a tcp ``url`` does not resolve (looked up now, so not
    in a probe made again and again), both within ``timeout`` seconds: what a one-shot request says at
    once (a ``tiger`` command to a mistyped host waited out its timeout, 600 s for ``tiger compact``)."""
    deadline = monotonic() + timeout
    return why_refused(url, timeout) or unresolved_host(url, max(0.0, deadline - monotonic()))


def no_answer(url: str, seconds: float) -> str:
    """What ``Unavailable`` says when the writer at ``url`` did not answer within ``seconds``, with why
    nothing can answer there if that can be told (``why_refused``: ZeroMQ retries a refused connection
    silently). Its host name is not looked up again: it had an address (``tiger._lookup.wait_for_endpoint``
    says when a name does not resolve or its lookup is slow), and a lookup here took up to ``LOOKUP_WAIT``
    past the call's timeout with a name server that does not answer (a writer paused meanwhile was then
    told as the name server's fault)."""
    why = why_refused(url, 0.1)
    return f"the tiger writer at {url} did not answer within {seconds:g}s" + (f": {why}" if why else "")


def silence_hint(url: str) -> str:
    """What may keep a writer from answering at ``url`` when something accepts connections there (or it
    cannot be told: a host name): the host name does not resolve (as its last lookup found: said past a
    call's timeout, it waits for none) or its lookup is slow (``slow_lookup``), else it is paused or busy,
    or it is no tiger writer. (A failed CurveZMQ handshake is told apart: ``HandshakeFailed``.)"""
    unresolved = unresolved_host(url, 0.0) or slow_lookup(url)  # (said past a call's timeout: not waited for)
    if unresolved is not None:
        return unresolved
    return "something is there and does not answer: a writer paused (SIGSTOP, a debugger) or busy, or no tiger writer"


_probed: dict[str, float] = {}  # url -> when why_refused last found it accepting (or could not tell), for recently_refused
_probed_lock = threading.Lock()


def _forked() -> None:
    """In a forked child: a lock a thread of the parent held at the fork (tiger's probe threads take it) is free."""
    global _probed_lock
    _probed_lock = threading.Lock()


os.register_at_fork(after_in_child=_forked)


def recently_refused(url: str, within: float = 1.0) -> str | None:
    """``why_refused(url, 0.1)``; an answer that it accepts connections (or cannot tell) is kept for
    ``within`` seconds per url: callers that retry while a writer is unavailable (once, sync, every
    call's message) must not probe in a loop, and a probe of a paused tcp writer whose backlog is full
    takes its whole 0.1 s. A refusal is not kept (it comes at once): kept, it said "gone" of a writer
    restarted at the url since (a user trial)."""
    now = monotonic()
    with _probed_lock:
        known = _probed.get(url)
        if known is not None and now - known < within:
            return None
    why = why_refused(url, 0.1)
    with _probed_lock:
        if why is None:
            _probed[url] = monotonic()
            if len(_probed) > 256:  # (urls of writers long gone)
                _probed.pop(next(iter(_probed)))
        else:
            _probed.pop(url, None)
    return why


def accepting(url: str, timeout: float = 1.0) -> str | None:
    """Whether something accepts connections at ``url``, probed with a plain socket: "yes", "refused",
    "absent" (no file at an ipc path), or None when it cannot tell (a host name, which would need a DNS
    lookup no timeout bounds; a timeout, a path that is no socket, a wildcard port). At most ``timeout``
    seconds: ipc paths (an abstract one, ``ipc://@name``, too) and tcp with an IP address only."""
    try:
        if url.startswith("ipc://") and not url.startswith("ipc://@") and not os.path.exists(url[len("ipc://") :]):
            return "absent"
        if url.startswith("tcp://"):
            host = tcp_host_port(url)[0]
            if host != "localhost" and not is_address(host):
                return None
        _stream(url, timeout).close()
    except ConnectionRefusedError:
        return "refused"
    except Exception:  # (OSError, ValueError; and what a test tool raises: the probe only explains a failure)
        return None
    return "yes"


def _stream(url: str, timeout: float) -> _socket.socket:
    """A plain socket connected to the tcp or ipc ``url`` (``ipc://@name``: Linux's abstract namespace),
    within ``timeout`` seconds; ``OSError`` (``ConnectionRefusedError``), ``ValueError`` for a wildcard."""
    if url.startswith("ipc://"):
        path = url[len("ipc://") :]
        if path.startswith("@"):  # no file, a NUL byte first
            path = "\0" + path[1:]
        return connected(path, timeout)
    host, port = tcp_host_port(url)
    host = "127.0.0.1" if host == "localhost" else host
    if port == "*":
        raise ValueError(f"{url} is a wildcard")
    if is_address(host):
        return connected((host, int(port)), timeout)
    # looked up within the timeout too (``create_connection`` waits out the resolver), then each address tried
    deadline = monotonic() + timeout
    failed: OSError | None = None
    for ip in addresses(host, timeout):
        try:
            return connected((ip, int(port)), max(0.001, deadline - monotonic()))
        except OSError as e:
            failed = e
    raise failed or OSError(f"no address of {shown(host)}")
