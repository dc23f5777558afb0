"""Processes tiger watches or ends but did not necessarily start as children (no zmq: the pytest
plugin uses this before, or without, ever importing zmq). Linux: pidfd (5.3+) and /proc."""

from __future__ import annotations

import _thread
import errno
import math
import os
import resource  # (here, not where it is needed: with no descriptor left, an import fails)
import select
import signal
import sys
import time

from tiger._clock import PAUSE_OVER, Mark, last_pause_end, mark, monotonic, overslept, paused_since
from tiger._errors import TigerError


class ProcessWatch:
    """Whether a process (by pid) has ended: a writer's owner, a ``tiger_once`` builder.

    A pidfd refers to that very process, so a reused pid cannot fool it, and it reads as ended as
    soon as the process exits (a zombie not yet reaped by its parent counts as ended). Where there
    is no pidfd (Linux before 5.3, some seccomp profiles), the pid is probed with signal 0 and
    /proc (a zombie still counts as ended; a reused pid would not be noticed).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._ended = False
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._ended = True
        except (AttributeError, OSError):  # no pidfd here: probe the pid
            pass

    def ended(self, wait: float = 0.0) -> bool:
        """Whether the process has ended, waiting up to ``wait`` seconds for it to."""
        if self._ended:
            return True
        if self._fd is not None:
            poller = select.poll()  # (not select.select: it refuses a descriptor past 1024, and a process holding
            poller.register(self._fd, select.POLLIN)  # that many failed to stop its writer)
            self._ended = bool(poller.poll(math.ceil(max(0.0, wait) * 1000)))  # readable once the process has exited
            return self._ended
        deadline = monotonic() + wait
        while True:
            try:
                os.kill(self.pid, 0)
                with open(f"/proc/{self.pid}/stat") as f:
                    self._ended = f.read().split(") ", 1)[1][:1] == "Z"  # exited, not yet reaped by its parent
            except (ProcessLookupError, FileNotFoundError):
                self._ended = True
            except PermissionError:  # alive, someone else's
                pass
            except OSError:  # alive, and no descriptor left to read how (EMFILE): waited for as alive
                pass
            if self._ended or monotonic() >= deadline:
                return self._ended
            time.sleep(min(0.05, max(0.0, deadline - monotonic())))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ProcessWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stop_process(pid: int, marker: str, timeout: float = 5.0) -> bool:
    """End a writer this process did not start as its child (the pytest plugin's controller ends the
    run's writer, which a worker may have started): SIGTERM, then SIGKILL after ``timeout`` seconds.

    Only if process ``pid`` is still the one meant: its command line must contain ``marker`` (the
    writer's URL), so a reused pid is left alone. Returns whether it was ended here.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if marker.encode() not in f.read():
                return False
    except FileNotFoundError:
        return False
    with ProcessWatch(pid) as watch:
        if watch.ended():
            return False
        try:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGCONT)  # a paused process (SIGSTOP) waited out the timeout, then was killed
            if not watch.ended(timeout):
                os.kill(pid, signal.SIGKILL)
                watch.ended(timeout)
        except ProcessLookupError:
            pass
    return True


DESCRIPTORS_PER_CLIENT = 16  # a client's: its ZeroMQ context (12 measured: epoll, mailboxes, 2 connections), and more
ZMQ_THREADS = 2  # a ZeroMQ context's threads (its I/O thread and its reaper), started with its first socket


def check_room(what: str, descriptors: int = DESCRIPTORS_PER_CLIENT, threads: int = ZMQ_THREADS) -> None:
    """``TigerError`` when this process cannot open ``descriptors`` more file descriptors or start ``threads``
    more threads, before ``what`` (a client) makes its ZeroMQ context. Out of either, libzmq aborted the whole
    process from its I/O thread or as it started one ("Too many open files (src/epoll.cpp:38)", "Resource
    temporarily unavailable (src/thread.cpp:241)": SIGABRT, a pytest run died with no summary), or a replica
    thread died unseen. Opens and closes that many descriptors (a few microseconds), starts and ends two
    threads more than ``threads`` (tens of microseconds each); best effort (another thread may take some
    meanwhile). Descriptors are not checked where ``/dev/null`` cannot be opened for another reason."""
    _check_descriptors(what, descriptors)
    _check_threads(what, threads)


def _check_descriptors(what: str, need: int) -> None:
    held: list[int] = []
    try:
        held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        while len(held) < need:
            held.append(os.dup(held[0]))
    except OSError as e:
        if e.errno not in OUT_OF_DESCRIPTORS:
            return
        raise out_of_descriptors(what, e.errno, f"about {need}", len(held)) from None
    finally:
        for fd in held:
            os.close(fd)


def _check_threads(what: str, need: int) -> None:
    """``check_room``'s threads: ``need`` + 2 started together, each ending once all have started (two to
    spare: a thread just ended may hold its stack a moment longer, and under ``ulimit -v`` memory the new
    threads take beyond their stacks failed in glibc, which aborted: "cannot allocate memory for
    thread-local data", at 60 MiB to spare with one)."""
    go = _thread.allocate_lock()
    go.acquire()
    ended: list[_thread.LockType] = []
    native_ids: list[int] = []
    try:
        for _ in range(need + 2):
            done = _thread.allocate_lock()
            done.acquire()
            _thread.start_new_thread(_started, (go, done, native_ids))
            ended.append(done)
    except RuntimeError:  # "can't start new thread"
        raise TigerError(
            f"{what} needs {need} more threads, and this process cannot start another: a limit on threads "
            f"(`ulimit -u`, a container's pids limit) or on memory (`ulimit -v` is {memory_limit()}; each thread reserves "
            "its stack, `ulimit -s`) is reached: close clients it no longer needs, or raise the limit (each client "
            f"runs {ZMQ_THREADS + 1} threads while it is open)"
        ) from None
    finally:
        go.release()
        for done in ended:
            done.acquire()
        wait_gone(native_ids)


def wait_gone(native_ids: list[int], within: float = 1.0) -> None:
    """Wait up to ``within`` seconds until the threads of ``native_ids`` have ended in the kernel, not only in
    Python (a lock let go, ``Thread.join`` returned): a thread holds its stack until then, and the threads
    started next (libzmq's, a replica's) found no room for theirs under ``ulimit -v``, and libzmq aborted the
    process (a CI run; one of ``check_room``'s threads was still there just after it returned, 53 times in
    500; a closed client's replica thread 14 times in 100). Linux only (``/proc``)."""
    deadline = monotonic() + within
    for native_id in native_ids:
        while os.path.exists(f"/proc/self/task/{native_id}") and monotonic() < deadline:
            time.sleep(0.0001)


WATCH_EVERY = 0.1  # seconds between a ``PauseWatch``'s looks at the clock


class PauseWatch:
    """A thread that looks at the clock every ``WATCH_EVERY`` seconds until ``stop()``, or ``until``
    (``time.monotonic()``, moved by the pauses it saw): a look more than ``PAUSE_OVER`` late is time this
    process was not running (SIGSTOP, Ctrl-Z then fg; not a debugger stopping one thread), noted by ``overslept`` for
    ``paused_since``. Kept while connecting: its waits note the pauses they sleep through themselves,
    this one those that stop its work between them (a ``pytest -n 4`` worker stopped as it began to
    connect, before its hello, failed "did not answer within 5s: the time was spent before the call could
    be sent", and the run was aborted). Best effort: with no thread to be had, nothing is watched. One
    thread more for ``check_room`` to count."""

    def __init__(self, until: float, since: Mark | None = None) -> None:
        self._stop = _thread.allocate_lock()
        self._stop.acquire()
        self._ended = _thread.allocate_lock()
        self._ended.acquire()
        self._native_ids: list[int] = []
        self._stopped = False
        # its last look at the clock; the first: ``since`` (``mark()``, taken before the deadline it watches for:
        # a stop between the two is seen at its first look; nothing but the caller's own work in between), or now
        self.looked = mark() if since is None else since
        self.began = self.looked[0]  # (``time.monotonic()``)
        self._watching = True  # until its thread ends (by ``stop()``, or at ``until``)
        try:
            _thread.start_new_thread(self._run, (until,))
        except RuntimeError:  # ("can't start new thread")
            self._stopped, self._watching = True, False

    def _run(self, until: float) -> None:
        self._native_ids.append(_thread.get_native_id())
        try:
            while self.looked[0] < until + paused_since(self.began):
                if self._stop.acquire(timeout=WATCH_EVERY):
                    return
                now = monotonic()
                overslept(self.looked, WATCH_EVERY, now)
                self.looked = (now, time.process_time())
        finally:
            self._watching = False  # (what it saw is kept; none unseen is counted from now on)
            self._ended.release()

    def moved(self, deadline: float) -> float:
        """``deadline`` (``time.monotonic()``, taken as this watch began) moved by every pause found since then."""
        return deadline + self.paused_since(self.began)

    def paused_since(self, since: float) -> float:
        """``paused_since(since)``, and a pause going on for this watch while it watches: it has not looked
        for more than ``PAUSE_OVER`` past its time, the process using less CPU than half as long meanwhile (a
        process resumed a moment ago, its thread not yet run: it counts that pause once it looks), from the
        end of the latest pause found (another thread may have found this one first)."""
        found = paused_since(since)
        if not self._watching:
            return found
        looked, cpu = self.looked
        now = monotonic()
        unseen = now - max(looked + WATCH_EVERY, last_pause_end(), since)
        if unseen <= PAUSE_OVER or time.process_time() - cpu > (now - looked) / 2:
            return found
        return found + unseen

    def stop(self) -> None:
        """End the thread, and wait (at most 1 s) until it has ended in the kernel (``wait_gone``). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.release()
        if self._ended.acquire(timeout=1.0):
            wait_gone(self._native_ids)


def memory_limit() -> str:
    """This process's limit of address space (``ulimit -v``), as said in an error: "unlimited" or "N MiB"."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    return "unlimited" if limit == resource.RLIM_INFINITY else f"{limit / 2**20:.0f} MiB"


def _started(go: _thread.LockType, done: _thread.LockType, native_ids: list[int]) -> None:
    native_ids.append(_thread.get_native_id())
    go.acquire()
    go.release()
    done.release()


OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})  # a process's limit (``ulimit -n``), the system's


def out_of_descriptors(what: str, error_no: int, need: str = "one more", left: int = 0) -> TigerError:
    """The error of ``what`` (a client, a socket of one) that could not get the ``need`` file descriptors it
    needs (``error_no``: ``EMFILE`` or ``ENFILE``), ``left`` being how many the process still had."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    which = "the system's file table is full" if error_no == errno.ENFILE else f"`ulimit -n` is {soft}"
    return TigerError(
        f"{what} needs {need} file descriptors, and this process has {'none' if not left else f'only {left}'} "
        f"left ({which}): close clients or files it no longer needs, or raise the limit (each client holds "
        "about 12 while it is open)"
    )


def unsupported_environment() -> str | None:
    """Why tiger cannot run in this process (it would hang), or None.

    Monkey-patching that turns threads into greenlets (``gevent.monkey.patch_all()``, eventlet's
    ``monkey_patch()``): tiger's replica is a real thread blocked in ZeroMQ calls, which a greenlet
    hub never gets back from. With threads left alone (``patch_all(thread=False)``) tiger works."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return (
            "gevent's monkey-patching of threads is not supported: tiger needs real threads (its replica "
            "waits in ZeroMQ calls a greenlet hub never returns from); use gevent.monkey.patch_all(thread=False), "
            "or use tiger from a process that is not patched"
        )
    patcher = sys.modules.get("eventlet.patcher")
    if patcher is not None and patcher.is_monkey_patched("thread"):
        return (
            "eventlet's monkey-patching of threads is not supported: tiger needs real threads; "
            "use eventlet.monkey_patch(thread=False), or use tiger from a process that is not patched"
        )
    return None
