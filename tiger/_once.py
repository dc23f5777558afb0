"""``Client.once``: one builder across every process, the value stored at the writer, teardowns run by the builder.

A key's record (table ``tiger.once``, in the key's namespace) is decided at the writer (the
``prepare_once_*`` rules in ``_table``): a client claims the key and builds, or waits on its
replica until the record moves (built, failed, released, claimed anew). ``Once`` is one
client's side of it: the locks that keep two threads of the process from building one key,
the values built whose delivery failed, and the teardowns of generator factories it still
has to run. It holds no reference to its client (the client owns it): each call is handed the
client whose writes and replica it uses.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from tiger import _protocol as p
from tiger._errors import OnceFailed, TigerError, Timeout
from tiger._table import ONCE_TABLE, Record, check_value

if TYPE_CHECKING:
    from tiger._client import Client

log = logging.getLogger("tiger.client")

MAX_ONCE_VALUE = p.MAX_RECORD - 4096  # the value travels in a record with the key's bookkeeping
INTERRUPTIONS = (KeyboardInterrupt, SystemExit, GeneratorExit)  # a build stopped from outside: another caller builds
_SUPERSEDED = object()


class Once:
    """One client's once keys: builds in progress, values whose delivery failed, teardowns to run."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._built: dict[tuple[str, str], Any] = {}  # values built whose delivery to the writer failed
        # (namespace, key) -> its generator factory, still to finish, and whether it ran in that namespace
        self._teardowns: dict[tuple[str, str], tuple[Generator[Any, None, None], bool]] = {}

    def value(self, client: Client, key: str, scope: str, factory: Callable[[], Any], wait: float | None, in_scope: bool) -> Any:
        """``Client.once`` with its arguments checked: ``scope`` the key's namespace, ``wait`` the seconds
        to wait for another builder (None: no limit), ``in_scope`` whether the factory runs in ``scope``."""
        __tracebackhide__ = True
        deadline = math.inf if wait is None else time.monotonic() + wait
        with self._locks_guard:
            lock = self._locks.setdefault((scope, key), threading.Lock())
        with lock:  # two threads of this process never both build one key
            while True:
                claim = client._write(p.OnceClaim(next(client._req_ids), key, client.client_id, client.label, scope))
                if claim.result == "build":
                    built = self._build(client, key, scope, factory, in_scope)
                    if built is not _SUPERSEDED:
                        return built
                    continue
                record = once_record(client, scope, key)
                if record is not None and record["state"] != "building":
                    return _once_value(record)
                owner = None if record is None else record["owner"]
                client.replica.wait_until(
                    lambda owner=owner: _once_moved(once_record(client, scope, key), owner),  # type: ignore[misc]
                    deadline,
                    lambda: f"once {key!r} was not built by another process within {wait:g}s",
                )

    def tear_down(self, client: Client, wait: float) -> list[tuple[str, BaseException]]:
        """``Client.tear_down_once_values``: run the teardowns, newest first, and retire their keys."""
        errors: list[tuple[str, BaseException]] = []
        deadline = time.monotonic() + wait
        if wait > 0 and self._teardowns:
            with contextlib.suppress(TigerError):
                client.sync(timeout=wait)  # every holder the writer knows of is in this replica
        while self._teardowns:
            (scope, key), (generator, in_scope) = self._teardowns.popitem()
            if wait > 0 and client.replica.silent_for() <= client.heartbeat_timeout:
                try:
                    client.replica.wait_until(
                        lambda scope=scope, key=key: not _held(once_record(client, scope, key)),  # type: ignore[misc]
                        deadline,
                        lambda: "",
                    )
                except Timeout:
                    holders = _held(once_record(client, scope, key))
                    log.warning("once %r: tearing down while %d other clients still hold it (%s)", key, len(holders), holders)
            error = _finish_generator(key, generator, scope if in_scope else None)
            if error is not None:  # reported, and the other teardowns still run
                errors.append((key, error))
            with contextlib.suppress(TigerError):
                client._write(p.OnceFinish(next(client._req_ids), key, client.client_id, "retire", None, scope))
        return errors

    def has_teardown(self, key: str, scope: str) -> bool:
        """Whether this client built ``key`` of ``scope`` with a generator factory whose teardown has not run yet."""
        return (scope, key) in self._teardowns

    def _build(self, client: Client, key: str, scope: str, factory: Callable[[], Any], in_scope: bool) -> Any:
        __tracebackhide__ = True
        if (scope, key) in self._built:  # built before, but the writer did not get the value: send it, build nothing
            value = self._built[scope, key]
        else:
            try:
                with _in_namespace(scope if in_scope else None):
                    value, generator = _run_factory(factory)
                if generator is not None:
                    self._teardowns[scope, key] = (generator, in_scope)
                check_value(value, "value")
                try:
                    packed = len(p.pack(value))  # the writer's limit, checked before it is sent: a refusal is an outcome too
                except UnicodeEncodeError:
                    raise ValueError(p.unencodable_value(value, "value")) from None
                if packed > MAX_ONCE_VALUE:
                    raise ValueError(f"value is {packed} bytes packed; a once value may be at most {MAX_ONCE_VALUE} bytes")
                self._built[scope, key] = value
            except INTERRUPTIONS:  # Ctrl-C, SystemExit: let another caller build it
                try:
                    client._write(p.OnceFinish(next(client._req_ids), key, client.client_id, "release", None, scope))
                except TigerError:
                    pass
                raise
            except BaseException as e:  # an error, pytest.skip/fail, a value tiger cannot store: every caller's outcome
                self._tear_down_now(scope, key)  # what the factory set up before its value was refused
                error = [type(e).__name__, str(e), client.label, _factory_frames(e)]
                self._finish_or_release(client, key, scope, "error", error)
                raise OnceFailed(key, *error) from e
        outcome = "resource" if (scope, key) in self._teardowns else "value"
        finish = self._finish_or_release(client, key, scope, outcome, value)
        del self._built[scope, key]
        if finish.result != "stored":  # the writer gave the key to another caller meanwhile (we were silent too long)
            self._tear_down_now(scope, key)  # our value is not the key's: nobody else will use it
            return _SUPERSEDED
        record = once_record(client, scope, key)
        assert record is not None
        return _once_value(record)

    def _tear_down_now(self, scope: str, key: str) -> None:
        entry = self._teardowns.pop((scope, key), None)
        if entry is not None:
            error = _finish_generator(key, entry[0], scope if entry[1] else None)
            if error is not None:
                log.warning("once %r: the teardown of a value that was not kept raised %r", key, error)

    def _finish_or_release(self, client: Client, key: str, scope: str, outcome: str, payload: Any) -> p.Ok:
        """Deliver a build's outcome. If the writer refuses it (a value it will not store), that refusal
        is the key's outcome for every caller; if the delivery fails otherwise (the writer gone, an
        interruption), give the key up (best effort) so that no caller waits on it, and raise."""
        try:
            return client._write(p.OnceFinish(next(client._req_ids), key, client.client_id, outcome, payload, scope))
        except (ValueError, TypeError) as refusal:  # the writer's verdict on the value, not a lost delivery
            if outcome == "error":
                raise
            error = [type(refusal).__name__, str(refusal), client.label, ""]
            client._write(p.OnceFinish(next(client._req_ids), key, client.client_id, "error", error, scope))
            raise OnceFailed(key, *error) from refusal
        except BaseException:
            try:
                client._write(p.OnceFinish(next(client._req_ids), key, client.client_id, "release", None, scope))
            except TigerError:
                pass  # the writer is gone: it forgets this claim when this client falls silent
            raise


def once_record(client: Client, scope: str, key: str) -> Record | None:
    """The record of once ``key`` of ``scope`` in the client's replica (None: never claimed, or released)."""
    return client.replica.store.get(ONCE_TABLE, scope, key)


def _in_namespace(scope: str | None) -> AbstractContextManager[object]:
    """``tiger.namespace(scope)``, or no change for None."""
    from tiger._client import namespace  # here, not at the top: tiger._client imports this module

    return nullcontext() if scope is None else namespace(scope)


def _finish_generator(key: str, generator: Generator[Any, None, None], scope: str | None) -> BaseException | None:
    """Run a generator factory's teardown (the rest after its ``yield``), in ``scope`` when it was built
    there; returns what it raised (None: it finished)."""
    try:
        with _in_namespace(scope):
            next(generator)
    except StopIteration:
        return None
    except BaseException as e:
        return e
    generator.close()
    return RuntimeError(f"the factory of once {key!r} yielded more than once")


def _run_factory(factory: Callable[[], Any]) -> tuple[Any, Generator[Any, None, None] | None]:
    """The factory's value, and its generator when it is a generator function (its teardown is the rest)."""
    result = factory()
    if not inspect.isgenerator(result):
        return result, None
    generator: Generator[Any, None, None] = result  # type: ignore[assignment]
    try:
        return next(generator), generator
    except StopIteration:
        raise ValueError("the generator factory returned without yielding a value") from None


_TIGER_DIR = os.path.dirname(os.path.abspath(__file__))


def _factory_frames(error: BaseException, last: int = 3) -> str:
    """The last frames of a factory's error, tiger's own left out (a value check has none to show)."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.dirname(f.filename) != _TIGER_DIR]
    return "".join(traceback.format_list(frames[-last:]))


def _once_value(record: Record) -> Any:
    __tracebackhide__ = True
    if record["state"] == "failed":
        raise OnceFailed(record["id"], *record["error"])
    return record["value"]


def _held(record: Record | None) -> list[str]:
    """The clients other than its builder holding a once value."""
    return [] if record is None else list(record["holders"])


def _once_moved(record: Record | None, owner: str | None) -> bool:
    """A waiting caller's cue: the key was built, failed, released, or claimed anew."""
    return record is None or record["state"] != "building" or record["owner"] != owner
