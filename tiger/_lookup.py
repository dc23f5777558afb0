"""Host names of writers' tcp URLs, looked up by tiger within a bound, never by libzmq.

libzmq looks a host name up itself (``getaddrinfo``) in its I/O thread, with no bound, on every connect
and reconnect, and a context's ``term()`` waits for that lookup. With a name server that does not answer
(glibc waits 5 s per try and per server), ``tiger.connect(url, timeout=1)`` raised after 15 to 20 s, and
tiger.aio's close and failed connect held the event loop for 8 to 10 s (a new user's trial). So the
sockets of tiger's clients connect to an address: a lookup here runs in a daemon thread of its own, at
most one at a time per host in a process, and its callers wait for it only as long as they may.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from tiger._clock import monotonic
from tiger._errors import Unavailable, shown
from tiger._unpatched import getaddrinfo

# seconds a DNS lookup of a writer's host name may take before tiger says nothing of the name: glibc's resolver
# waits 5 s per try and per name server when none answers (resolv.conf's default), and no timeout of Python's bounds it
LOOKUP_WAIT = 1.0
# seconds the outcome of a lookup is taken as it is: lookups asked for meanwhile start no new one
LOOKUP_KEPT = 0.5
# seconds between the lookups of a host name that does not resolve yet, while a client waits for it
LOOKUP_AGAIN = 0.1


def is_address(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 address (no lookup needed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def tcp_host_port(url: str) -> tuple[str, str]:
    """The host (an IPv6 address without its brackets) and the port of a ``tcp://HOST:PORT`` URL."""
    host, _, port = url[len("tcp://") :].rpartition(":")
    return host.strip("[]"), port


def url_host(url: str) -> str:
    """The host of a tcp ``url``, also of a ``tcp://SOURCE;HOST:PORT`` one."""
    return tcp_host_port("tcp://" + url[len("tcp://") :].rpartition(";")[2])[0]


class _Lookup:
    """One ``getaddrinfo`` of a host, made in a daemon thread (which ends with it, however long it takes)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.done = threading.Event()
        self.started = monotonic()
        self.ended = 0.0  # time.monotonic() when it ended
        self.addresses: list[str] = []
        self.error: BaseException | None = None
        try:
            threading.Thread(target=self._run, name="tiger-lookup", daemon=True).start()
        except RuntimeError as e:  # "can't start new thread" (a limit on threads or memory): this lookup's failure
            self.error, self.ended = e, monotonic()
            self.done.set()

    def _run(self) -> None:
        try:
            found = getaddrinfo(self.host)  # (the C module's: a test's pytest-socket blocks socket.getaddrinfo)
            self.addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
        except BaseException as e:  # (socket.gaierror, UnicodeError for a name idna cannot encode)
            self.error = e
        with _lock:
            if self.error is not None:
                _failed[self.host] = self.error
            elif self.addresses:
                _found[self.host] = self.addresses
                _failed.pop(self.host, None)
        self.ended = monotonic()
        self.done.set()


_lookups: dict[str, _Lookup] = {}  # host -> its newest lookup
_found: dict[str, list[str]] = {}  # host -> the addresses its last lookup that ended well found
_failed: dict[str, BaseException] = {}  # host -> what its last lookup raised, if it failed since the last that found
_lock = threading.Lock()


def _forked() -> None:
    """In a forked child: the parent's lookups in flight have no thread here; its lock may have been held."""
    global _lock
    _lock = threading.Lock()
    _lookups.clear()


os.register_at_fork(after_in_child=_forked)


def _again(error: BaseException) -> BaseException:
    """A copy of a lookup's ``error`` to raise: the one object, raised by every caller that waited for the
    lookup (threads at once), would gather each raise's traceback."""
    try:
        return type(error)(*error.args)
    except Exception:  # (an exception type made otherwise)
        return error


def _lookup(host: str) -> _Lookup:
    """The lookup of ``host`` in flight, or one that ended less than ``LOOKUP_KEPT`` seconds ago, else a new one."""
    with _lock:
        last = _lookups.get(host)
        if last is not None and (not last.done.is_set() or monotonic() - last.ended < LOOKUP_KEPT):
            return last
        for kept in (_lookups, _found, _failed):
            if len(kept) > 256:  # (hosts of writers long gone)
                kept.pop(next(iter(kept)))
        new = _lookups[host] = _Lookup(host)
        return new


def addresses(host: str, seconds: float | None = None) -> list[str]:
    """The addresses of ``host`` (IPv4 and IPv6, as ``getaddrinfo`` orders them, each once), waiting at most
    ``seconds`` (default ``LOOKUP_WAIT``) for the lookup: ``TimeoutError`` past them (the lookup goes on; a
    call made meanwhile waits for the same one). Raises what the lookup raised: ``socket.gaierror``
    (``EAI_NONAME``: no such host; ``EAI_AGAIN``: the resolver failed for now), ``UnicodeError`` for a
    name idna cannot encode."""
    if seconds is None:
        seconds = LOOKUP_WAIT
    lookup = _lookup(host)
    if not lookup.done.wait(max(seconds, 0)):
        raise TimeoutError(f"the lookup of the host {shown(host)} took longer than {seconds:g}s")
    if lookup.error is not None:
        raise _again(lookup.error)
    if not lookup.addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"no address of {shown(host)}")
    return lookup.addresses


def slow(host: str, seconds: float | None = None) -> bool:
    """Whether the newest lookup of ``host`` in this process has taken ``seconds`` (default ``LOOKUP_WAIT``) or
    more (ended so, or still in flight): a silence that follows is the name server's, and waiting again tells
    nothing."""
    with _lock:
        last = _lookups.get(host)
    if last is None:
        return False
    took = (last.ended if last.done.is_set() else monotonic()) - last.started
    return took >= (LOOKUP_WAIT if seconds is None else seconds)


def endpoint(url: str, seconds: float = 0.0) -> str:
    """The endpoint a ZeroMQ socket connects to for a writer's ``url``: a tcp URL's host name replaced by
    its address (IPv4 first, as libzmq, which looked IPv4 only, else IPv6 in brackets), ``localhost`` by
    127.0.0.1 (in a ``tcp://SOURCE;HOST:PORT`` URL too, its SOURCE kept); an ipc URL and a tcp URL with an
    address as they are.
    Waits at most ``seconds`` for the lookup; one that takes longer gives the address this process found
    last for the host, else what the lookup before it raised (if this one has not taken ``LOOKUP_WAIT``
    yet), else raises ``TimeoutError``. Raises ``OSError`` (``socket.gaierror``) or
    ``UnicodeError`` when the host does not resolve."""
    if not url.startswith("tcp://"):
        return url
    source, semicolon, rest = url[len("tcp://") :].rpartition(";")  # (ZeroMQ's SOURCE;HOST: bound to SOURCE)
    source += semicolon
    host, port = tcp_host_port(f"tcp://{rest}")
    if is_address(host):
        return url
    if host == "localhost":
        return f"tcp://{source}127.0.0.1:{port}"
    try:
        found = addresses(host, seconds)
    except TimeoutError:
        with _lock:
            found = _found.get(host, [])
            failed = _failed.get(host)
            lookup = _lookups.get(host)
        if not found:
            # a lookup made again that has not ended yet, but is not slow: what the one before it found is the
            # news (a connect(timeout=0.5) to a mistyped host, its first lookup refused at once, its second
            # begun just before the deadline, said the name server did not answer)
            if failed is not None and lookup is not None and monotonic() - lookup.started < LOOKUP_WAIT:
                raise _again(failed) from None
            raise
    ip = next((a for a in found if ":" not in a), found[0])
    return f"tcp://{source}{ip}:{port}" if ":" not in ip else f"tcp://{source}[{ip}]:{port}"


def endpoint_or_why(url: str, seconds: float, waited: str = "that") -> tuple[str | None, str]:
    """``(endpoint(url, seconds), "")``, or ``(None, why)`` when it is not known: the host does not resolve,
    its lookup took longer than ``seconds``, or the resolver failed for now (``EAI_AGAIN``: glibc's answer
    once no name server answered, which is not "no such host"). ``waited``: how the why names ``seconds``."""
    try:
        return endpoint(url, seconds), ""
    except TimeoutError:
        host = shown(url_host(url))
        return None, f"the lookup of the host {host} took longer than {waited} (a name server that does not answer?)"
    except socket.gaierror as e:
        if e.errno == socket.EAI_AGAIN:  # (glibc's answer once its name servers have not answered, 5 s per try)
            return None, f"the lookup of the host {shown(url_host(url))} failed for now (a name server that does not answer?)"
        return None, f"the host {shown(url_host(url))} does not resolve"
    except (OSError, UnicodeError):
        return None, f"the host {shown(url_host(url))} does not resolve"


def wait_for_endpoint(
    url: str, timeout: float, deadline: float | None = None, moved: Callable[[float], float] | None = None
) -> str:
    """``endpoint(url)``, waiting up to ``timeout`` seconds for a host name that does not resolve yet (a
    writer's container may get its name after its clients start, as a writer may start after them) or
    whose lookup is slow. ``Unavailable`` past ``timeout``, naming why (``endpoint_or_why``). tiger.aio
    waits the same way without blocking its event loop. ``deadline`` (``time.monotonic()``): when the
    ``timeout`` of a call that began earlier ends; ``moved``: what moves it by the pauses of this process
    found since (a ``PauseWatch``'s ``moved``, looked at before each lookup: a stop between two lookups
    does not count)."""
    if deadline is None:
        deadline = monotonic() + timeout
    unmoved = deadline
    while True:
        if moved is not None:
            deadline = moved(unmoved)
        found, why = endpoint_or_why(url, deadline - monotonic())
        if found is not None:
            return found
        if moved is not None:
            deadline = moved(unmoved)
        left = deadline - monotonic()
        if left <= 0:
            raise unresolved(url, timeout, why)
        time.sleep(min(LOOKUP_AGAIN, left))  # sleep-ok: between lookups of a name, no socket to wait on


def unresolved(url: str, timeout: float, why: str) -> Unavailable:
    """The error of a connect whose url's host name was not resolved within ``timeout`` seconds."""
    return Unavailable(f"the tiger writer at {url} did not answer within {timeout:g}s: {why}")


class Endpoint:
    """Where the sockets of one client connect for its ``url`` (``endpoint``): the address found when it
    connected, then the newest one found (looked up again, without waiting, for each socket made: a
    resend's fresh command socket, the replica's snapshot socket), so a writer whose name moved to another
    address is followed as libzmq followed it. Shared by a client and its replica; holds neither."""

    def __init__(self, url: str, address: str) -> None:
        self.url = url
        self.address = address  # ``endpoint(url)``, as last found

    def now(self) -> str:
        """The newest address of the url known without waiting (a lookup started if none is fresh)."""
        try:
            self.address = endpoint(self.url)
        except (OSError, UnicodeError):  # (TimeoutError too) slow, or failing for now: the address found before
            pass
        return self.address


def connect_socket(sock: zmq.Socket[Any], address: str) -> None:
    """Connect ``sock`` to ``address`` (an ``endpoint``), with IPv6 turned on for an IPv6 address."""
    if "[" in address:
        sock.setsockopt(zmq.IPV6, 1)
    sock.connect(address)
