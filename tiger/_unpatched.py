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

from tiger._errors import TigerError

# in a tuple: mock.patch replaces subprocess's attribute, pytest-subprocess every module-level name bound to Popen too
_POPEN = (subprocess.Popen,)

AF_UNIX = _socket.AF_UNIX
SOCK_STREAM = _socket.SOCK_STREAM


def _real_popen(candidate: Any) -> bool:
    return isinstance(candidate, type) and candidate.__module__ == "subprocess" and candidate.__qualname__ == "Popen"


def start_process(command: list[str], **options: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(command, **options)`` of the real ``Popen`` class: the one there was when tiger was
    imported (``import tiger``, the pytest plugin's start), or else ``subprocess``'s own when it is real again.
    ``TigerError`` when neither is (tiger first imported under a test's replacement of it: it took that one
    for good, and every later start failed, the replacement gone or not)."""
    global _POPEN
    if not _real_popen(_POPEN[0]):
        if not _real_popen(subprocess.Popen):
            raise TigerError(
                "cannot start a tiger writer: subprocess.Popen is replaced (mock.patch, pytest-subprocess's fp) "
                "and was when tiger first needed it: import tiger before the replacement is made"
            )
        _POPEN = (subprocess.Popen,)
    return _POPEN[0](command, **options)


def connected(address: str | tuple[str, int], timeout: float) -> _socket.socket:
    """A stream socket of the C socket module connected to ``address`` (an ipc path, or ``(ip, port)``: an IPv6 one with its zone,
    ``fe80::1%eth0``, as ``getaddrinfo`` reads it) within ``timeout`` seconds. Raises ``OSError``
    (``ConnectionRefusedError``, ``TimeoutError``) as ``socket.connect`` does."""
    sockaddr: Any
    if isinstance(address, str):
        family, sockaddr = AF_UNIX, address
    else:
        family, _, _, _, sockaddr = _socket.getaddrinfo(address[0], address[1], 0, SOCK_STREAM, 0, _socket.AI_NUMERICHOST)[0]
    sock = _socket.socket(family, SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
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


FIRST_USED_IN_A_FAKE = (
    "tiger's modules are first imported inside a pyfakefs fake filesystem (they would be bound to its fake os; "
    "tiger's processes and files are real): import pyfakefs before tiger (import tiger then imports them), or "
    "use tiger once (tiger.connect, tiger.serve) before the fake filesystem is set up"
)

# the modules whose functions tiger's API and plugin run in a test's process: imported before a fake filesystem
# begins (pyfakefs binds a module imported under it to its fake ``os`` for good, and drops it at its end)
_MODULES = ("tiger._client", "tiger._server", "tiger._once", "tiger._paths", "tiger._process", "tiger._seed", "tiger._feed")


def faking_files() -> bool:
    """Whether a pyfakefs fake filesystem is set up in this process now (``Patcher.PATCHER``, pyfakefs's one
    patcher at a time, or its doctest one, ``is_patching``)."""
    patcher_class = getattr(sys.modules.get("pyfakefs.fake_filesystem_unittest"), "Patcher", None)
    patchers = (getattr(patcher_class, name, None) for name in ("PATCHER", "DOC_PATCHER"))
    return any(getattr(patcher, "is_patching", False) for patcher in patchers)


def leave_tiger_alone(import_modules: bool = False) -> None:
    """Keep pyfakefs's fake filesystem away from tiger, when pyfakefs is imported (its pytest plugin is, when
    installed; a ``fake_filesystem_unittest`` test imports it). Called as ``tiger`` is imported and at the
    plugin's configure (``import_modules=False``: a run that uses no tiger fixture imports no zmq), and with
    ``import_modules`` as tiger's API is first used and before the plugin sets up a fixture of pyfakefs's
    (``fs``...): tiger's modules are imported then, before a fake begins (a module imported under a fake was
    bound to its ``os`` for good, and dropped from ``sys.modules`` at its end: every later use failed).
    ``TigerError`` if one has begun and they are not imported yet (tiger first used inside it, in a unittest).

    tiger's modules are put with ``subprocess`` on ``Patcher.SKIPMODULES``, which pyfakefs's own pytest plugin
    adds pytest's modules to: their globals are not patched. ``subprocess``, for every caller: its descriptors
    and the process it starts are real whatever a test fakes (``Popen`` closes its pipes 7 frames down, and
    they were faked: "Bad file descriptor", whoever started a process under a fake filesystem). What tiger
    calls through the standard library reaches the real filesystem by pyfakefs's check of the caller, which
    takes a name in ``Patcher.SKIPNAMES`` equal to the caller's file path with dots for slashes: tiger's
    modules' own, so that no module is skipped for its name being the start of one of them (pyfakefs skips a
    module whose name is: a test's own ``t`` or ``sub``, had ``tiger._server`` or ``subprocess`` been given);
    that check looks 6 frames up, so tiger's own files are read and written with ``os`` and ``open``, never
    pathlib, shutil or tempfile's deeper calls (``_paths.remove_tree``). Pausing pyfakefs instead
    (``Patcher.pause``) unloads every module imported since the fake began: ``zmq.Again`` was then two
    classes, and connecting failed."""
    patcher = getattr(sys.modules.get("pyfakefs.fake_filesystem_unittest"), "Patcher", None)
    if patcher is None:
        return
    if import_modules and not all(name in sys.modules for name in _MODULES):
        if faking_files():
            raise TigerError(FIRST_USED_IN_A_FAKE)
        import importlib

        for name in _MODULES:
            importlib.import_module(name)
    ours = [module for name, module in list(sys.modules.items()) if name.startswith("tiger") and module is not None]
    skip_modules = getattr(patcher, "SKIPMODULES", None)
    if isinstance(skip_modules, set):
        skip_modules.update([*(m for m in ours if m.__name__ == "tiger" or m.__name__.startswith("tiger.")), subprocess])
    skip_names = getattr(patcher, "SKIPNAMES", None)
    if isinstance(skip_names, set):
        import pkgutil

        folder = os.path.dirname(os.path.abspath(__file__))
        names = [module.name for module in pkgutil.iter_modules([folder])]
        skip_names.update(os.path.join(folder, name).replace(os.sep, ".") for name in names)


def _check_real_os() -> None:
    if not isinstance(os, type(sys)):  # (pyfakefs's FakeOsModule, in sys.modules while a fake filesystem is set up)
        raise ImportError(FIRST_USED_IN_A_FAKE)


_check_real_os()
