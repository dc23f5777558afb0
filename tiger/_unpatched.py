"""What tiger takes from the process as it was before a test's tools replaced it.

Test tools replace process-wide things for the code under test, and tiger runs inside that code's
process: pytest-socket replaces ``socket.socket`` and ``socket.getaddrinfo`` (``--disable-socket``,
``--allow-hosts``), gevent's ``patch_all()`` the socket module, pytest-subprocess's ``fp`` fixture and
``mock.patch("subprocess.Popen")`` the writer's start, pyfakefs (``fs``) the filesystem that tiger's run
directory, locks and data directory live on. What they replace is the test's world; tiger's writer is
a real process on the real disk, reached through ZeroMQ, whose own sockets none of them sees. So tiger's
probes of a writer's URL, its wake-up sockets, its lookups and its start use the objects below, taken
at import (the C socket module, which none of them replaces), and its modules are on pyfakefs's lists of
modules it leaves alone (``leave_tiger_alone``).

Seen in a new user's trial: under ``--disable-socket`` every test using tiger failed with pytest-socket's
``SocketBlockedError`` (tiger's probe of the writer's ipc path), and a write to a writer gone raised it
instead of ``tiger.Unavailable``; tiger first used in a test with ``fs`` failed with "Bad file
descriptor", broke every later test of the process (its run directory made in the fake filesystem), and
crashed pytest at exit (a fake descriptor closed for real: pytest's capture file).
"""

from __future__ import annotations

import _socket
import os
import subprocess
import sys
from typing import Any

# in a tuple: mock.patch replaces subprocess's attribute, pytest-subprocess every module-level name bound to Popen too
_POPEN = (subprocess.Popen,)

AF_INET, AF_INET6, AF_UNIX = _socket.AF_INET, _socket.AF_INET6, _socket.AF_UNIX
SOCK_STREAM = _socket.SOCK_STREAM


def start_process(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **options)``, of the ``Popen`` class there was when tiger was imported."""
    return _POPEN[0](command, **options)


def stream_socket(family: int) -> _socket.socket:
    """A new stream socket of ``family`` (``AF_UNIX``, ``AF_INET``, ``AF_INET6``), of the C socket module."""
    return _socket.socket(family, SOCK_STREAM)


def connected(family: int, address: Any, timeout: float) -> _socket.socket:
    """A stream socket of ``family`` connected to ``address`` (a path, or ``(ip, port)``) within ``timeout``
    seconds. Raises ``OSError`` (``ConnectionRefusedError``, ``TimeoutError``) as ``socket.connect`` does."""
    sock = stream_socket(family)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def socketpair() -> tuple[_socket.socket, _socket.socket]:
    """Two connected ``AF_UNIX`` stream sockets (a thread's wake-up line), of the C socket module."""
    return _socket.socketpair(AF_UNIX, SOCK_STREAM)


def getaddrinfo(host: str) -> list[Any]:
    """``getaddrinfo(host, None, type=SOCK_STREAM)`` of the C socket module: ``socket.gaierror`` as it raises."""
    return _socket.getaddrinfo(host, None, 0, SOCK_STREAM)


def interface_names() -> set[str]:
    """The names of this machine's network interfaces (``if_nameindex``)."""
    return {name for _, name in _socket.if_nameindex()}


def leave_tiger_alone() -> None:
    """Put tiger's modules, and ``subprocess``, on pyfakefs's lists of modules it does not patch, when pyfakefs
    is imported (its pytest plugin is, when installed; a ``fake_filesystem_unittest`` test imports it). A fake
    filesystem set up after this sees tiger use the real one; one set up before it has patched tiger's
    modules already.

    ``Patcher.SKIPNAMES`` (module names: every tiger module's, imported yet or not) keeps a module unpatched,
    and sends the calls it makes through the standard library (``shutil``, ``tempfile``, ``pathlib``) to the
    real filesystem when it made them within the last 6 frames; ``Patcher.SKIPMODULES`` (module objects) is
    what pyfakefs's own pytest plugin adds pytest's modules to. ``subprocess`` goes deeper (``Popen`` closes
    its pipes' descriptors 7 frames down, and they were faked: "Bad file descriptor", whoever started a
    process under a fake filesystem); its descriptors and the started process are real whatever the test
    fakes, so it is left unpatched for every caller. Pausing pyfakefs instead (``Patcher.pause``) unloads
    every module imported since the fake began: ``zmq.Again`` was then two classes, and connecting failed."""
    unittest_module = sys.modules.get("pyfakefs.fake_filesystem_unittest")
    patcher = getattr(unittest_module, "Patcher", None)
    if patcher is None:
        return
    import pkgutil  # (here: only where pyfakefs is)

    names = {f"{__package__}.{module.name}" for module in pkgutil.iter_modules([os.path.dirname(__file__)])}
    skip_names = getattr(patcher, "SKIPNAMES", None)
    if isinstance(skip_names, set):
        skip_names.update(names | {"subprocess"})
    skip_modules = getattr(patcher, "SKIPMODULES", None)
    if isinstance(skip_modules, set):
        loaded = (sys.modules.get(name) for name in [__package__, "subprocess", *names])
        skip_modules.update(module for module in loaded if module is not None)


leave_tiger_alone()  # (tiger touches the filesystem, sockets and processes only through modules importing this one)
