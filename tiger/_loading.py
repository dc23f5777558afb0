"""The lock a fork waits on while tiger's modules load in another thread.

``lock`` is held while ``tiger.__getattr__`` imports tiger's modules (zmq and msgpack with them: about 0.1 s) and
while ``tiger.aio`` loads, and taken by a fork before it forks (``os.register_at_fork``): a process forked while
another of its threads made the first ``tiger.connect()`` got a child whose own connect hung for ever, on an import
lock held by a thread the child does not have (a user trial: 9 of 9 forks 0.05 s after the thread began; CPython's
import locks do not survive a fork). Re-entrant: an import may ask for another lazy name. A fork waits for it at
most ``FORK_WAIT`` seconds (a thread importing tiger could itself wait on an import the forking thread is in the
middle of), then forks as before. Not in ``tiger/__init__``: importing ``tiger._table`` loads no thread module
(its purity check), and no fork needs to wait before the first load begins.
"""

from __future__ import annotations

# logging first: a fork takes logging's lock in its own hook (``logging`` registers one), and runs the hooks
# registered last first; registered before logging's (logging imported by tiger's modules as they load), this
# one waited for an import that waited for logging's lock (``getLogger`` as tiger's modules load), the fork
# went on after FORK_WAIT, and its child hung as before
import logging  # noqa: F401
import os
import threading

FORK_WAIT = 10.0  # seconds a fork waits for a load under way

lock = threading.RLock()
# per thread, whether each fork under way took it (a stack: a signal handler's fork may run inside another's hooks)
_fork_took: dict[int, list[bool]] = {}


def _before_fork() -> None:
    _fork_took.setdefault(threading.get_ident(), []).append(lock.acquire(timeout=FORK_WAIT))


def _after_fork_in_parent() -> None:
    took = _fork_took.get(threading.get_ident())
    if took and took.pop():
        lock.release()


def _after_fork_in_child() -> None:
    global lock
    lock = threading.RLock()  # (the parent's may be held by a thread the child has not)
    _fork_took.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
