"""``client.batch()``: many writes across tables and namespaces, sent as one command, applied all or none.

with client.batch() as b:
    plan = b.table("plans", prefix="plan").insert({"amount": 500})
    b.table("prices").update("price_1", {"plan": "plan_x"})
plan.result  # the stored record, once the block has ended

Inside the block nothing is sent: each call checks its arguments at once (the same checks as the
table's own methods, so a bad argument raises at the line that made it), records the operation in
the current namespace, and returns a :class:`Pending` whose ``result`` is filled in when the block
ends. At the end of the block the operations go to the writer as one command: it prepares them in
order, each seeing the ones before it (an update may follow the insert of the same id), and applies
all of them as one change (one seq, one log entry) or, if any fails, none: the error names the
failing operation's index. Read-your-writes holds when the block returns. An exception inside the
block sends nothing.
"""

from __future__ import annotations

import builtins
import inspect
import opcode
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar, Token
from types import FrameType
from typing import TYPE_CHECKING, Any

from tiger import _protocol as p
from tiger._clock import monotonic
from tiger._errors import TigerError, Timeout, Unavailable
from tiger._handles import Unportable
from tiger._table import Batch as BatchChange
from tiger._table import Delete, Put, check_id, check_record, check_records, check_update

if TYPE_CHECKING:
    from tiger._client import Client

_NOT_YET = object()
_WITH = {opcode.opmap[name] for name in ("SETUP_WITH", "BEFORE_WITH") if name in opcode.opmap}  # a with statement's
# frames that can be suspended (their with block open while they are not on any stack)
_SUSPENDABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR
_open_batches: ContextVar[tuple[Batch, ...]] = ContextVar("tiger_open_batches", default=())  # open in this context


class BatchTooBig(ValueError):
    """A batch's writes would not fit in one message (``p.MAX_MESSAGE`` bytes packed); nothing was sent."""


class Pending:
    """One write of a batch. ``result`` once the batch has been applied: the stored record (``insert``,
    ``create``, ``update``), the list of stored records (``insert_many``) or None (``delete``).
    Before that, or if the batch failed or was never sent, reading ``result`` raises ``TigerError``."""

    __slots__ = ("_index", "_kind", "_result", "_state")

    def __init__(self, state: list[str], index: int, kind: str) -> None:
        self._state = state  # the batch's state, shared (not the batch: a batch and its operations
        self._index = index  # referring to each other would leave every batch to the cyclic GC)
        self._kind = kind
        self._result: Any = _NOT_YET

    @property
    def result(self) -> Any:
        if self._result is _NOT_YET:
            raise TigerError(f"operation {self._index} ({self._kind}) has no result: {self._state[0]}")
        return self._result

    def __repr__(self) -> str:
        shown = "pending" if self._result is _NOT_YET else repr(self._result)
        return f"<tiger batch operation {self._index} {self._kind}: {shown}>"


class BatchTable:
    """A table's writes inside a batch (``batch.table(name, prefix)``): the same arguments and checks as
    ``Table``'s, each returning a :class:`Pending`."""

    def __init__(self, batch: Batch, name: str, prefix: str | None) -> None:
        self._batch = batch
        self.name = name
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"<tiger BatchTable {self.name!r}>"

    def insert(self, record: Mapping[str, Any]) -> Pending:
        """Store the whole record (replacing one with the same id); ``result``: the record as stored."""
        check_records([record], self.name, self.prefix, single=True)
        return self._batch._add(self._insert([record], create=False), "insert")

    def insert_many(self, records: Sequence[Mapping[str, Any]]) -> Pending:
        """Insert every record; ``result``: the list of records as stored (``[]`` for no records, as
        ``Table.insert_many([])`` returns: nothing is sent for them)."""
        if not isinstance(records, (list, tuple)):
            raise TypeError(f"records must be a list, not {type(records).__name__}")
        if not records:
            return self._batch._nothing("insert_many", [])
        check_records(records, self.name, self.prefix, single=False)
        return self._batch._add(self._insert(list(records), create=False), "insert_many")

    def create(self, record: Mapping[str, Any]) -> Pending:
        """Like ``insert``, but the whole batch fails with ``tiger.AlreadyExists`` if the id is taken."""
        check_records([record], self.name, self.prefix, single=True)
        return self._batch._add(self._insert([record], create=True), "create")

    def update(self, id: str, changes: Mapping[str, Any]) -> Pending:
        """Merge ``changes`` into the record (stored, or written earlier in this batch); ``result``: the
        merged record. ``tiger.NotFound`` fails the whole batch if there is no such record."""
        check_id(id)
        check_record(changes, "changes")
        namespace = self._batch._namespace()
        check_update(id, changes, self._batch._client.replica.store.get(self.name, namespace, id))
        return self._batch._add(p.Update(0, self.name, namespace, id, dict(changes)), "update")

    def delete(self, id: str) -> Pending:
        """Remove the record if present (stored, or written earlier in this batch); ``result``: None."""
        check_id(id)
        return self._batch._add(p.Remove(0, self.name, self._batch._namespace(), id), "delete")

    def _insert(self, records: builtins.list[Any], create: bool) -> p.Insert:
        return p.Insert(0, self.name, self._batch._namespace(), self.prefix, records, create)


class Batch(Unportable):
    """Writes collected by ``with client.batch() as b:`` and sent when the block ends (see the module).
    Neither copied nor pickled (``TypeError``)."""

    _instead = "it is used in its with block, by the process that opened it"

    def __init__(self, client: Client, current_namespace: Callable[[], str], timeout: float) -> None:
        self._client = client
        self._timeout = timeout  # seconds the block's end waits for the answer
        self._namespace = current_namespace  # read at each call: the namespace of the call's context
        self._ops: list[p.Insert | p.Update | p.Remove] = []
        self._packed: list[bytes] = []  # each op encoded when it was made
        self._bytes = 0
        self._pending: list[Pending] = []
        self._token: Token[tuple[Batch, ...]] | None = None
        self._states = ["the batch is sent when its with block ends"]  # shared with its Pending operations
        self._open = False
        self._calls = 0  # writes made in the block: each one's index (one of no records too, which sends nothing)
        # the block's end and a write made in another thread at that moment: one is first (a write once it
        # ended is refused; one that got in is sent), never a write left out of what was sent
        self._lock = threading.Lock()
        # while open: the frame that entered its with block, at which instruction, whether a plain function's
        # with statement did, and the thread and task that ran it (see ``_left_without_exit``)
        self._entered: tuple[FrameType, int, bool, tuple[int, int | None]] | None = None

    def __repr__(self) -> str:
        return f"<tiger Batch of {len(self._ops)} operations>"

    def __len__(self) -> int:
        return len(self._ops)

    def table(self, name: str, prefix: str | None = None) -> BatchTable:
        """The writes of table ``name`` in this batch (``prefix`` as for ``client.table``)."""
        self._client.table(name, prefix)  # the same checks of the name and prefix
        return BatchTable(self, name, prefix)

    def __enter__(self) -> Batch:
        return self._begin(sys._getframe(1))

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._end(exc_type):
            try:
                reply = self._client._write(self._request(), monotonic() + self._timeout)
            except BaseException as e:
                self._states[0] = _failed(e)
                raise
            self._settle(reply)

    def _begin(self, caller: FrameType) -> Batch:
        """Open the batch for the with block that ``caller`` (the frame running it) enters. One whose block
        made a write is used up, a write of no records too (a second block's writes were counted on from
        the first's: its first failing write was named "operation 1")."""
        if self._open or self._calls:
            raise TigerError("a batch is used for one with block")
        code = caller.f_code
        plain_with = code.co_code[caller.f_lasti] in _WITH and not code.co_flags & _SUSPENDABLE
        self._entered = (caller, caller.f_lasti, plain_with, _runner())
        # (one ended in another context: closed; one whose block was left without its exit: closed now)
        open_here = tuple(b for b in _open_batches.get() if b._open and not b._left_without_exit(caller))
        if any(b._client is self._client for b in open_here):
            raise TigerError(
                "a batch of this client is already open here: write through it (nested batches are not "
                "supported: an inner one would be sent on its own, before the outer one, whatever became of it)"
            )
        self._token = _open_batches.set((*open_here, self))
        self._open = True
        return self

    def _left_without_exit(self, caller: FrameType) -> bool:
        """Whether this open batch's with block was left without its ``__exit__`` running, as seen from a
        batch that ``caller`` is entering: a signal's exception landing as ``__exit__`` was called (before
        its first line) left it open for good, and every later batch of the client in that context was
        refused as nested (in a pytest run, every later test's). It was left when ``caller`` is the frame
        that entered it, entering that very with statement again (a loop), or, for a with statement of a
        plain function run by this thread and task, when that frame is no longer on ``caller``'s stack (it
        returned). It is then closed, sending nothing, as for a block that raised. Nothing else is taken
        for left: a generator's or coroutine's frame may be suspended inside the block, an
        ``ExitStack``'s block outlives the call that entered it, another thread or task may run it."""
        if self._entered is None:
            return False
        frame, at, plain_with, runner = self._entered
        if caller is frame:
            left = caller.f_lasti == at
        elif plain_with and runner == _runner():
            outer = caller.f_back
            while outer is not None and outer is not frame:
                outer = outer.f_back
            left = outer is None
        else:
            left = False
        if left:
            self._end(RuntimeError)
        return left

    def _end(self, exc_type: object) -> bool:
        """The block ended (``exc_type``: what it raised, or None); True when the batch is to be sent (not
        when it was closed before, as left: see ``_left_without_exit``)."""
        with self._lock:
            was_open, self._open = self._open, False
        self._entered = None  # (its frame refers to the batch, by its locals)
        token, self._token = self._token, None
        if token is not None:
            try:
                _open_batches.reset(token)
            except ValueError:  # the block ends in another context (thread, task) than it began in: there,
                pass  # this batch stays listed, closed, and __enter__ skips closed ones
        if exc_type is not None:
            self._states[0] = "the with block raised, so nothing of the batch was sent"
            return False
        return was_open and bool(self._ops)

    def _check_open(self) -> None:
        if not self._open:
            raise TigerError("batch writes are made inside its with block: with client.batch() as b: ...")

    def _nothing(self, kind: str, result: Any) -> Pending:
        """A write of nothing (no records): its result at once, no operation sent; it takes its index."""
        with self._lock:
            self._check_open()
            pending = Pending(self._states, self._calls, kind)
            self._calls += 1
        pending._result = result
        return pending

    def _add(self, op: p.Insert | p.Update | p.Remove, kind: str) -> Pending:
        with self._lock:
            return self._add_open(op, kind)

    def _add_open(self, op: p.Insert | p.Update | p.Remove, kind: str) -> Pending:
        """``_add`` holding the lock. The op's ``req_id`` is its index among the block's writes: the writer
        names a failing op by it (counting only the ops sent named the wrong write after an
        ``insert_many([])``)."""
        self._check_open()
        op.req_id = self._calls
        try:  # encoded now: what the caller changes in its dicts later does not reach the batch
            packed = p.encode_request(op)
        except UnicodeEncodeError:
            raise ValueError(p.unencodable(op)) from None
        if len(packed) > p.MAX_RECORD:
            if type(op) is p.Insert:
                p.check_record_sizes(op.records, len(packed))
            elif type(op) is p.Update:
                p.check_record_sizes([op.changes], len(packed), "changes")
        if self._bytes + len(packed) > p.MAX_MESSAGE - 1024:
            raise BatchTooBig(
                f"this batch would be {self._bytes + len(packed)} bytes packed; a batch is sent as one message of at "
                f"most {p.MAX_MESSAGE} bytes (nothing of it is sent yet: make it smaller)"
            )
        pending = Pending(self._states, self._calls, kind)
        self._calls += 1
        self._ops.append(op)
        self._packed.append(packed)
        self._bytes += len(packed)
        self._pending.append(pending)
        return pending

    def _request(self) -> p.BatchWrite:
        return p.BatchWrite(next(self._client._req_ids), self._ops, tuple(self._packed))

    def _settle(self, reply: p.Ok) -> None:
        """The batch was applied: each operation's result from the answer."""
        change = reply.change
        parts: tuple[Put | Delete, ...] = change.changes if type(change) is BatchChange else ()
        for pending, where in zip(self._pending, reply.result, strict=True):
            part = None if where is None else parts[where]
            if pending._kind == "delete" or part is None:
                pending._result = None
            elif pending._kind == "insert_many":
                pending._result = list(part.records)
            else:
                pending._result = part.records[0]
        self._states[0] = "sent"


def _runner() -> tuple[int, int | None]:
    """The thread, and the asyncio task (None: no task), running the caller."""
    asyncio = sys.modules.get("asyncio")  # (not imported here: the blocking client never loads asyncio)
    task = None
    if asyncio is not None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no loop running in this thread
            pass
    return threading.get_ident(), None if task is None else id(task)


def _failed(error: BaseException) -> str:
    """What became of a batch whose sending raised ``error`` (a ``Pending`` without a result says it)."""
    asyncio = sys.modules.get("asyncio")  # (not imported here: the blocking client never loads asyncio)
    if isinstance(error, (Unavailable, Timeout)) or (asyncio is not None and isinstance(error, asyncio.CancelledError)):
        return "no answer came, so the batch may or may not have been applied (as for any write that raised so)"
    return "the batch was refused, so none of it was applied"


class AsyncBatch(Batch):
    """``async with client.batch() as b:`` of a ``tiger.aio.AsyncClient``: the same, sent when the block ends."""

    def __enter__(self) -> Batch:
        raise TypeError("the batch of a tiger.aio client is used with `async with client.batch() as b:`")

    async def __aenter__(self) -> AsyncBatch:
        self._begin(sys._getframe(1))
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._end(exc_type):
            try:
                reply = await self._client._write(self._request(), monotonic() + self._timeout)  # type: ignore[misc]
            except BaseException as e:
                self._states[0] = _failed(e)
                raise
            self._settle(reply)
