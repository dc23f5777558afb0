"""Every wire message, in one place.

Each message is one msgpack array in one ZeroMQ frame (the ROUTER's identity
frames aside): ``[tag, ...fields]``, the fields in the order of the message
class's. Each message is described once (``Message``: tag, class, each field's
rule), in four ``Catalogue``s (``CHANGES``, ``REQUESTS``, ``REPLIES``,
``PUBLISHED``); encoding and decoding read the descriptions. Decoding checks
the shape and the type of every envelope field and raises
:class:`ProtocolError` naming the field; the *content* of records is checked
by the table rules (``tiger._table``).

Sockets:
- command socket (writer ROUTER, client DEALER): requests, replies, snapshot chunks;
- publish socket (writer PUB, replica SUB): changes and heartbeats, each after a
  topic frame (see ``topic_of``: a client is not sent the changes its own calls made).
"""

from __future__ import annotations

import operator
import os
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from tiger._clock import monotonic, wall
from tiger._errors import ProtocolError, shown
from tiger._table import UNENCODABLE, Batch, Change, Clear, ClearNamespace, Delete, DropNamespace, FrozenList, Put, Record, Store

MAX_MESSAGE = 64 * 1024 * 1024  # bytes; the writer's MAXMSGSIZE as well
MAX_RECORD = 8 * 1024 * 1024  # bytes of one packed record


def check_record_sizes(records: Any, total: int, what: str = "record") -> None:
    """ValueError naming the first record over MAX_RECORD packed bytes (looked for only when ``total`` is over
    it): ``what`` (singular) alone or, of several, in the plural with its index, then its id when it has one
    (``record 'plan_x'``, ``plans records[3] 'plan_y'``)."""
    if total <= MAX_RECORD:
        return
    for i, record in enumerate(records):
        size = len(pack(record))
        if size > MAX_RECORD:
            where = what if len(records) == 1 else f"{what}s[{i}]"
            id = record.get("id") if isinstance(record, Mapping) else None
            if isinstance(id, str):
                where += f" {_shown(id)}"
            raise ValueError(f"{where} is {size} bytes packed; a record may be at most {MAX_RECORD} bytes")


def _plain(obj: Any) -> Any:
    """msgpack's fallback for the mappings and sequences the table rules accept."""
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, int):  # msgpack hands over the ints it cannot carry
        raise OverflowError(f"cannot send int {obj}: msgpack carries -2**63 to 2**64-1")
    raise TypeError(f"cannot send a {type(obj).__name__}")


_local = threading.local()


def pack(obj: Any) -> bytes:
    # one Packer per thread (a shared one is not safe once `default` runs Python code); packb would
    # build a new Packer per call, about 0.4 us, several times per message
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, default=_plain)
    return packer.pack(obj)  # type: ignore[no-any-return]


def _type_name(value: Any) -> str:
    """A value's type as the wire knows it (frozen maps and arrays are still a dict and a list)."""
    return "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else type(value).__name__


# What decoding bytes that are not a valid message raises: msgpack's own errors (FormatError, StackError,
# ExtraData and OutOfData are ValueErrors or UnpackExceptions; an int too large, OverflowError) and a
# structure of the wrong shape met by a fast path (TypeError, KeyError, IndexError). Nothing else is taken
# for bad bytes: an exception raised by a signal handler that ran during a decode (an alarm's TimeoutError)
# was reworded into a ProtocolError, or swallowed by a fast path that then decoded the slow way, and the
# caller never saw it.
DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, IndexError, OverflowError, msgpack.UnpackException)
_NOT_OWN_OK: tuple[type[Exception], ...] = (*DECODE_ERRORS, ProtocolError)  # what ``_ok_of_own_records`` leaves to decode_reply


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except DECODE_ERRORS as e:
        raise ProtocolError(f"not a msgpack message ({type(e).__name__}: {e})") from None


_gc_untrack: Callable[[Any], None] | None = None
if sys.implementation.name == "cpython":  # its C API: an object its cyclic garbage collector no longer walks
    try:
        import ctypes

        untrack = ctypes.pythonapi.PyObject_GC_UnTrack
        untrack.argtypes = (ctypes.py_object,)
        untrack.restype = None
        _gc_untrack = untrack
    except (ImportError, AttributeError, OSError):  # a CPython without ctypes (or its C API): every record is walked
        pass


def _unwalked_record(pairs: dict[str, Any], make: type[Record] = Record, untrack: Any = _gc_untrack) -> Record:
    record = make(pairs)
    untrack(record)
    return record


def _unwalked_list(items: list[Any], make: type[FrozenList] = FrozenList, untrack: Any = _gc_untrack) -> FrozenList:
    array = make(items)
    untrack(array)
    return array


Hooks = tuple[Callable[[Any], Any], Callable[[Any], Any]]  # msgpack's (object_hook, list_hook)
# The maps and arrays msgpack builds for a client's replica as changes arrive: frozen, and left out of the cyclic
# garbage collector's walk. A record's maps and arrays form no reference cycle (decoded from bytes, read-only), yet
# each full collection of a client process walked every one: gen-2 collections took 1.1 s of a 4.4 s loop of 400
# insert_many calls of 1000 records. An untracked container is still freed by reference counting. They cost about
# 0.3 us per map or array more to build.
UNWALKED: Hooks = (Record, FrozenList) if _gc_untrack is None else (_unwalked_record, _unwalked_list)
WALKED: Hooks = (Record, FrozenList)  # the same, left to the collector: cheaper to build (a snapshot, the writer's calls)


def unpack_frozen(data: bytes, hooks: Hooks = WALKED) -> Any:
    """``unpack``, building maps and arrays in their frozen form at once (what replicas store): no copy later.
    ``hooks``: ``WALKED`` (the writer's calls: its heap is frozen in bulk; a snapshot: a joiner files it with
    the oldest generation) or ``UNWALKED`` (a replica's records arriving one change at a time)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, object_hook=hooks[0], list_hook=hooks[1])
    except DECODE_ERRORS as e:
        raise ProtocolError(f"not a msgpack message ({type(e).__name__}: {e})") from None


def _field(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(f"field {name!r} must be {expected}, not {_type_name(value)}")
    return value


_SHOWN_MAX = 40  # characters of a peer's str shown in an error message


def _shown(value: Any) -> str:
    """A short description of a value a peer sent, for an error message (which is logged and sent back)."""
    if value is None or isinstance(value, (str, bytes, bool, int, float)):
        return shown(value, _SHOWN_MAX)
    return f"a {_type_name(value)}"


def _array(obj: Any, tags: dict[str, int], what: str, least: dict[str, int] | None = None) -> list[Any]:
    if not isinstance(obj, list):
        raise ProtocolError(f"a {what} must be a msgpack array, not {_type_name(obj)}")
    if not obj:
        raise ProtocolError(f"a {what} must be a non-empty msgpack array, got an empty one")
    tag = obj[0]
    arity = tags.get(tag) if type(tag) is str else None  # a list or map tag is unhashable: not a lookup
    if arity is None:
        raise ProtocolError(f"unknown {what}: tag {_shown(tag)}")
    if len(obj) != arity:
        fewest = arity if least is None else least.get(tag, arity)  # (its last fields may be left out)
        if not fewest <= len(obj) <= arity:
            expected = f"{arity - 1}" if fewest == arity else f"{fewest - 1} {'or' if arity - fewest == 1 else 'to'} {arity - 1}"
            raise ProtocolError(f"{what} {tag!r} has {len(obj) - 1} fields, expected {expected}")
    return obj


def _records(value: Any, name: str) -> list[Record]:
    """Records as the writer sends them (to replicas): maps with a str id and an int created.

    Their content was checked by the table rules at the writer; these two fields are what a
    replica's store relies on (its key, its list order).
    """
    records: list[Record] = _field(value, list, name)
    if _plain_records(records):
        return records
    for r in records:  # the slow way: which one is wrong (or a dict subclass, which is fine)
        if not isinstance(r, dict) or type(r.get("id")) is not str or type(r.get("created")) is not int:
            raise ProtocolError(f"field {name!r} must hold records (maps) with a str 'id' and an int 'created'")
    return records


_ID_OF = operator.itemgetter("id")
_CREATED_OF = operator.itemgetter("created")
_MAPS = frozenset({Record, dict})
_STR = frozenset({str})
_INT = frozenset({int})


_ARRAYS = frozenset({FrozenList, list})


def _plain_record(record: Any) -> bool:
    """``_plain_records`` of one record."""
    return type(record) in _MAPS and type(record.get("id")) is str and type(record.get("created")) is int


def _plain_records(records: list[Any]) -> bool:
    """Whether every record is a decoded map with a str id and an int created: loops in C (a snapshot
    chunk holds thousands), where a Python loop over them cost a 100k-record join ~0.1 s here."""
    try:
        return (
            set(map(type, records)) <= _MAPS
            and set(map(type, map(_ID_OF, records))) <= _STR
            and set(map(type, map(_CREATED_OF, records))) <= _INT
        )
    except (KeyError, TypeError):  # one lacks a field: the slow way names it
        return False


# -- the messages, each described once ----------------------------------------------------------
#
# Every message on the wire is a msgpack array: its tag, then its fields in the order of its class's
# fields. A ``Message`` names the tag, the class and each field's rule once; encoding and decoding (with
# a ProtocolError naming the first bad field) are read from it. ``Catalogue`` holds one family of them
# (changes, requests, replies, published messages). The hot paths keep hand-made shortcuts on top: the
# batch parts (``_part_from_wire``, ``_op_from_wire``) and the pre-packed encoders (``ok_bytes``,
# ``group_bytes``, ...), each tested equal to the description's own result.


_REQUIRED: Any = object()  # a field that is never left out of its message's array


class Field:
    """One field of a message: its name (errors name it), the types it may hold (``kind``: None for any
    value), whether it may be None, and for a nested value its own decoding (``decode(value, name)``,
    raising ProtocolError naming ``name``) and encoding (``encode(value)``: what is packed for it)."""

    __slots__ = ("decode", "encode", "fast", "kind", "name", "omitted", "optional")

    def __init__(
        self,
        name: str,
        kind: type | tuple[type, ...] | None = None,
        *,
        optional: bool = False,
        decode: Callable[[Any, str], Any] | None = None,
        encode: Callable[[Any], Any] | None = None,
        omitted: Any = _REQUIRED,
    ) -> None:
        self.name, self.kind, self.optional, self.decode, self.encode = name, kind, optional, decode, encode
        # a last field added to a message later: left out of the array when it holds this value (its class's
        # default), so that a writer of before still reads the message, and taken as it when left out
        self.omitted = omitted
        # the exact types a decoded value is taken as it is without a call (the rest go through ``check``)
        kinds = () if kind is None else kind if isinstance(kind, tuple) else (kind,)
        fast = {*kinds, *((type(None),) if optional else ())}
        fast |= {FrozenList for k in kinds if k is list} | {Record for k in kinds if k is dict}  # decoded frozen
        self.fast = frozenset() if decode is not None or kind is None else frozenset(fast)

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.decode is not None:
            return self.decode(value, self.name)
        return value if self.kind is None else _field(value, self.kind, self.name)


def _str(name: str) -> Field:
    """A field holding a str."""
    return Field(name, str)


def _int(name: str) -> Field:
    """A field holding an int (not a bool)."""
    return Field(name, int)


_REQ_ID = _int("req_id")


class Message:
    """A message's description: ``tag``, ``cls`` and the fields after the tag, in ``cls``'s field order."""

    __slots__ = ("_checks", "_values", "cls", "encoders", "fields", "least", "tag", "verify")

    def __init__(self, tag: str, cls: type, *fields: Field, verify: Any = None) -> None:
        self.tag, self.cls, self.fields = tag, cls, fields
        required = [i for i, f in enumerate(fields) if f.omitted is _REQUIRED]
        self.least = 1 + (required[-1] + 1 if required else 0)  # the shortest array (tag included)
        assert all(f.omitted is not _REQUIRED for f in fields[self.least - 1 :])
        self.verify = verify  # a rule across fields, run on the decoded message (ProtocolError)
        self.encoders = tuple(f.encode for f in fields) if any(f.encode for f in fields) else None
        # the fields a decoded value needs a look at (None: any value is taken as it is)
        self._checks = tuple(None if f.kind is None and f.decode is None else f for f in fields)
        names = [f.name for f in fields]
        getter = operator.attrgetter(*names)
        self._values = (lambda m: (getter(m),)) if len(names) == 1 else getter

    def to_wire(self, m: Any) -> list[Any]:
        if self.encoders is None:
            a = [self.tag, *self._values(m)]
        else:
            a = [self.tag, *(v if v is None or e is None else e(v) for e, v in zip(self.encoders, self._values(m), strict=True))]
        while len(a) > self.least and a[-1] is self.fields[len(a) - 2].omitted:  # (its value when left out)
            a.pop()
        return a

    def from_wire(self, a: list[Any]) -> Any:
        """The message from its array (its tag and length already checked)."""
        values = [v if f is None or type(v) in f.fast else f.check(v) for f, v in zip(self._checks, a[1:])]  # noqa: B905 (the length is checked)
        m = self.cls(*values)
        if self.verify is not None:
            self.verify(m)
        return m


class Catalogue:
    """One family of messages, looked up by tag (decoding) and by class (encoding)."""

    def __init__(self, what: str, *messages: Message) -> None:
        self.what = what  # how errors name a message of the family
        self.by_tag = {m.tag: m for m in messages}
        self.by_class = {m.cls: m for m in messages}
        self.arity = {m.tag: 1 + len(m.fields) for m in messages}  # array length, tag included
        self.least = {m.tag: m.least for m in messages if m.least < 1 + len(m.fields)} or None  # with fields left out

    def to_wire(self, m: Any) -> list[Any]:
        message = self.by_class.get(type(m))
        if message is None:
            raise TypeError(f"not a {self.what}: {m!r}")
        return message.to_wire(m)

    def from_wire(self, obj: Any) -> Any:
        a = _array(obj, self.arity, self.what, self.least)
        return self.by_tag[a[0]].from_wire(a)


# -- changes --------------------------------------------------------------------


def change_to_wire(change: Change) -> list[Any]:
    if type(change) is Put:  # the common one, a part of every batch: CHANGES.to_wire's result, made at once
        return ["put", change.table, change.namespace, change.records]
    return CHANGES.to_wire(change)


def _part_from_wire(item: Any) -> Change | None:
    """The common put or del, its fields checked inline (a batch holds one per operation), else None."""
    if type(item) in _ARRAYS and len(item) == 4:
        tag, table, namespace, x = item
        if type(table) is str and type(namespace) is str:
            if tag == "put" and type(x) in _ARRAYS and (_plain_record(x[0]) if len(x) == 1 else _plain_records(x)):
                return Put(table, namespace, tuple(x))
            if tag == "del" and type(x) is str:
                return Delete(table, namespace, x)
    return None


def change_from_wire(obj: Any) -> Change:
    """The change an unpacked message holds; ProtocolError naming the bad field if none."""
    return _part_from_wire(obj) or _change_from_wire(obj)


def _change_from_wire(obj: Any) -> Change:
    """``change_from_wire`` with every field checked in turn (what ``_part_from_wire`` leaves)."""
    return CHANGES.from_wire(obj)  # type: ignore[no-any-return]


def _batch_parts(value: Any, name: str) -> tuple[Put | Delete, ...]:
    """A batch change's parts: puts and deletes (a batch inside one is refused before it is decoded)."""
    parts: list[Put | Delete] = []
    for i, item in enumerate(_field(value, list, name)):
        if isinstance(item, list) and item and item[0] == "batch":  # refused before decoding: no recursion
            raise ProtocolError(f"field '{name}[{i}]' must be a put or a del, not a batch")
        part = change_from_wire(item)
        if type(part) is not Put and type(part) is not Delete:
            raise ProtocolError(f"field '{name}[{i}]' must be a put or a del, not {type(part).__name__}")
        parts.append(part)
    return tuple(parts)


CHANGES = Catalogue(
    "change",
    Message("put", Put, _str("table"), _str("namespace"), Field("records", decode=lambda v, n: tuple(_records(v, n)))),
    Message("del", Delete, _str("table"), _str("namespace"), _str("id")),
    Message("clear", Clear, _str("table")),
    Message("clear_ns", ClearNamespace, _str("table"), _str("namespace")),
    Message("drop_ns", DropNamespace, _str("namespace")),
    Message("batch", Batch, Field("changes", decode=_batch_parts, encode=lambda parts: [change_to_wire(c) for c in parts])),
)


# -- requests: client -> writer ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    req_id: int
    client_id: str


@dataclass(slots=True)  # not frozen: one per write, and a frozen one costs 4x to make (nothing changes it)
class Insert:
    """insert, insert_many and create (``create=True``)."""

    req_id: int
    table: str
    namespace: str
    prefix: str | None
    records: list[dict[str, Any]]
    create: bool


@dataclass(slots=True)  # not frozen: one per write, and a frozen one costs 4x to make (nothing changes it)
class Update:
    req_id: int
    table: str
    namespace: str
    id: str
    changes: dict[str, Any]


@dataclass(slots=True)  # not frozen: one per write, and a frozen one costs 4x to make (nothing changes it)
class Remove:
    """delete one record."""

    req_id: int
    table: str
    namespace: str
    id: str


@dataclass(frozen=True, slots=True)
class ClearTable:
    req_id: int
    table: str
    namespace: str | None  # None: every namespace


@dataclass(frozen=True, slots=True)
class Drop:
    """Remove one namespace from every table."""

    req_id: int
    namespace: str


@dataclass(frozen=True, slots=True)
class Lease:
    """Drop ``namespace`` from every table once ``client_id`` (and every other client leasing it) is gone."""

    req_id: int
    namespace: str
    client_id: str


@dataclass(frozen=True, slots=True)
class OnceClaim:
    """Ask to build a once key; the result says "build", "wait" or "done"."""

    req_id: int
    key: str
    client_id: str
    by: str
    namespace: str = "global"  # the key's scope (the pytest plugin: one per test run)


ONCE_OUTCOMES = ("value", "resource", "error", "release", "retire", "leave")


@dataclass(frozen=True, slots=True)
class OnceFinish:
    """The builder's outcome: "value" (payload: the value), "resource" (a value the builder tears down
    later), "error" (payload: [type, message, builder, traceback]), "release" (the build was interrupted;
    payload: ``[first, last]``, the request ids of the claims of the call giving it up, or None for
    any claim of the client's), "retire" (the value was torn down), or, from a client that is not its
    builder, "leave" (payload None: the client, closing, lets go of the value: its builder's teardown
    no longer waits for it)."""

    req_id: int
    key: str
    client_id: str
    outcome: str
    payload: Any
    namespace: str = "global"


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """``client.batch()``: inserts, creates, updates and deletes applied all or none, in order, as one
    change. Each op's own ``req_id`` is its index among the writes made in the block (an ``insert_many`` of
    no records takes one and sends nothing): errors name the failing op by it. The answer's result: for
    each op, the index of its part in the change (None: a delete of nothing)."""

    req_id: int
    ops: list[Insert | Update | Remove]
    # each op already encoded (the client packs an op when it is made: later changes to the caller's
    # dicts do not reach the batch); not part of the message's value
    packed: tuple[bytes, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Sync:
    """Publish a heartbeat now, then reply with the current (epoch, seq)."""

    req_id: int


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    req_id: int


@dataclass(frozen=True, slots=True)
class Compact:
    """Write a snapshot of the whole store to the data directory and start a fresh log."""

    req_id: int


@dataclass(frozen=True, slots=True)
class Stats:
    """The writer's figures. ``checksum``: with the CRC32 of every record (answered once it is taken, a step
    at a time: seconds on a store of millions); False for the figures alone, answered at once (what a probe
    asks: whether a writer is there and answers)."""

    req_id: int
    checksum: bool = True


@dataclass(frozen=True, slots=True)
class Beat:
    """A client's heartbeat; never answered."""

    client_id: str


@dataclass(frozen=True, slots=True)
class Bye:
    """A client closing; never answered."""

    client_id: str


Request = (
    Hello
    | Insert
    | Update
    | Remove
    | ClearTable
    | Drop
    | Lease
    | OnceClaim
    | OnceFinish
    | BatchWrite
    | Sync
    | SnapshotRequest
    | Stats
    | Compact
    | Beat
    | Bye
)


def encode_request(r: Request) -> bytes:
    if type(r) is BatchWrite and r.packed is not None:  # its ops packed as they were made
        return b"\x93" + pack("batch") + pack(r.req_id) + _array_head(len(r.ops)) + b"".join(r.packed)
    return pack(REQUESTS.to_wire(r))


def request_id_of(obj: Any) -> int | None:
    """The request id of a decoded but possibly invalid request, to address an error reply."""
    if isinstance(obj, list) and len(obj) in (4, 5) and obj[0] == "call":
        return request_id_of(obj[3])
    if isinstance(obj, list) and len(obj) > 1 and type(obj[1]) is int and obj[0] not in ("beat", "bye"):
        return obj[1]
    return None


@dataclass(frozen=True, slots=True)
class Call:
    """A request that may be sent more than once (Lazy Pirate).

    The writer answers a repeat of ``(client_id, request.req_id)`` with its first
    answer instead of applying it again, and refuses a call that arrives after
    ``expires`` (Unix time), so a call the client gave up on is never applied later.
    """

    client_id: str
    expires: float
    request: Request
    known: int = -1  # the seq the caller's replica held when it sent the call (-1: none): see Ok.before


def encode_call(call: Call) -> bytes:
    return call_bytes(call.client_id, call.expires, encode_request(call.request), call.known)


def call_bytes(client_id: str, expires: float, request: bytes, known: int) -> bytes:
    """``encode_call`` of a request already packed (``encode_request``): a msgpack array is its elements in a row."""
    return b"\x95" + pack("call") + pack(client_id) + pack(expires) + request + pack(known)


def call_from(obj: Any) -> Call | Request:
    """A Call, or a plain request, from an unpacked message."""
    if isinstance(obj, list) and obj and obj[0] == "call":
        if len(obj) not in (4, 5):
            raise ProtocolError(f"call has {len(obj) - 1} fields, expected 3 or 4")
        client_id = _field(obj[1], str, "client_id")
        expires = _field(obj[2], (int, float), "expires")
        inner = request_from(obj[3])
        if isinstance(inner, (Beat, Bye)):
            raise ProtocolError("a call cannot carry a beat or a bye")
        known = _field(obj[4], int, "known") if len(obj) == 5 else -1  # (without it: a client that knows nothing)
        return Call(client_id, float(expires), inner, known)
    return request_from(obj)


def decode_request(data: bytes) -> Request:
    return request_from(unpack(data))


def _op_from_wire(item: Any) -> Insert | Update | Remove | None:
    """A batch's common insert, update or delete, its fields checked inline, else None (``request_from``
    then decodes it, or names what is wrong)."""
    if type(item) not in _ARRAYS or len(item) < 5 or type(item[1]) is not int or type(item[2]) is not str:
        return None
    tag, namespace = item[0], item[3]
    if type(namespace) is not str:
        return None
    if tag == "insert" and len(item) == 7:
        prefix, records, create = item[4], item[5], item[6]
        if (prefix is None or type(prefix) is str) and type(records) in _ARRAYS and type(create) is bool:
            return Insert(item[1], item[2], namespace, prefix, records, create)
    elif tag == "update" and len(item) == 6:
        if type(item[4]) is str and type(item[5]) in _MAPS:
            return Update(item[1], item[2], namespace, item[4], item[5])
    elif tag == "delete" and len(item) == 5 and type(item[4]) is str:
        return Remove(item[1], item[2], namespace, item[4])
    return None


def request_from(obj: Any) -> Request:
    """The request an unpacked message holds; ProtocolError naming the bad field if none."""
    return REQUESTS.from_wire(obj)  # type: ignore[no-any-return]


def _outcome(value: Any, name: str) -> str:
    outcome = _field(value, str, name)
    if outcome not in ONCE_OUTCOMES:
        raise ProtocolError(f"field {name!r} must be one of {', '.join(ONCE_OUTCOMES)}, not {_shown(outcome)}")
    return outcome  # type: ignore[no-any-return]


def _batch_ops(value: Any, name: str) -> list[Insert | Update | Remove]:
    ops: list[Insert | Update | Remove] = []
    for i, item in enumerate(_field(value, list, name)):
        if isinstance(item, list) and item and item[0] == "batch":  # refused before decoding: no recursion
            raise ProtocolError(f"{name}[{i}] must be an insert, update or delete, not a batch")
        try:
            op = _op_from_wire(item) or request_from(item)
        except ProtocolError as e:
            raise ProtocolError(f"{name}[{i}]: {e}") from None
        if type(op) is not Insert and type(op) is not Update and type(op) is not Remove:
            raise ProtocolError(f"{name}[{i}] must be an insert, update or delete, not {type(op).__name__}")
        ops.append(op)
    if not ops:
        raise ProtocolError(f"field {name!r} must hold at least one operation")
    return ops


def _op_to_wire(ops: list[Insert | Update | Remove]) -> list[list[Any]]:
    return [REQUESTS.to_wire(op) for op in ops]


REQUESTS = Catalogue(
    "request",
    Message("hello", Hello, _REQ_ID, _str("client_id")),
    Message(
        "insert",
        Insert,
        _REQ_ID,
        _str("table"),
        _str("namespace"),
        Field("prefix", str, optional=True),
        Field("records", list),
        Field("create", bool),
    ),
    Message("update", Update, _REQ_ID, _str("table"), _str("namespace"), _str("id"), Field("changes", dict)),
    Message("delete", Remove, _REQ_ID, _str("table"), _str("namespace"), _str("id")),
    Message("clear", ClearTable, _REQ_ID, _str("table"), Field("namespace", str, optional=True)),
    Message("drop_ns", Drop, _REQ_ID, _str("namespace")),
    Message("lease", Lease, _REQ_ID, _str("namespace"), _str("client_id")),
    Message("once_claim", OnceClaim, _REQ_ID, _str("key"), _str("client_id"), _str("by"), _str("namespace")),
    Message(
        "once_finish",
        OnceFinish,
        _REQ_ID,
        _str("key"),
        _str("client_id"),
        Field("outcome", decode=_outcome),
        Field("payload"),
        _str("namespace"),
    ),
    Message("batch", BatchWrite, _REQ_ID, Field("ops", decode=_batch_ops, encode=_op_to_wire)),
    Message("sync", Sync, _REQ_ID),
    Message("snapshot", SnapshotRequest, _REQ_ID),
    Message("stats", Stats, _REQ_ID, Field("checksum", bool, omitted=True)),
    Message("compact", Compact, _REQ_ID),
    Message("beat", Beat, _str("client_id")),
    Message("bye", Bye, _str("client_id")),
)


# -- replies: writer -> client -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ok:
    """A request succeeded. ``change`` is the change it made (None: nothing changed), with seq ``seq``.

    ``before``: the changes after the seq the caller's replica held when it called (``Call.known``), the
    ones with the seqs just before (``seq - len(before)`` .. ``seq - 1`` with a change, up to ``seq``
    without), when the writer still holds them all and they are few: the
    calling thread applies them with its own change instead of waiting for its replica thread to
    receive their publication (which it then skips)."""

    req_id: int
    epoch: str
    seq: int
    change: Change | None
    result: Any = None
    before: tuple[Change, ...] = ()

    def first_before(self) -> int:
        """The seq of ``before[0]``."""
        return self.seq - len(self.before) + (0 if self.change is None else -1) + 1


@dataclass(frozen=True, slots=True)
class Failed:
    """A request was refused; nothing changed. ``kind`` names the exception to raise."""

    req_id: int | None
    kind: str  # "value", "type", "not_found", "already_exists", "protocol", "internal"
    message: str


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    req_id: int
    segments: list[tuple[str, str, list[Record]]]  # (table, namespace, records)


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    req_id: int
    epoch: str
    seq: int
    records: int


Reply = Ok | Failed | SnapshotChunk | SnapshotEnd


def checksum(store: Store) -> int:
    """A CRC32 of a store's whole content: tables and namespaces sorted, records in list order."""
    crc = 0
    for piece in checksum_pieces(store.content()):
        crc = zlib.crc32(piece, crc)
    return crc


def checksum_pieces(content: dict[str, dict[str, list[Record]]]) -> Iterator[bytes]:
    """The bytes ``checksum`` takes the CRC32 of, a piece at a time (each record packed as it is reached):
    ``pack([(table, namespace, records), ...])``, tables and namespaces sorted. ``content``: as
    ``Store.content()`` gives it (a view no later change alters: the writer walks it a step at a time)."""
    yield _array_head(sum(len(namespaces) for namespaces in content.values()))
    for table in sorted(content):
        namespaces = content[table]
        for namespace in sorted(namespaces):
            records = namespaces[namespace]
            yield b"\x93" + pack(table) + pack(namespace) + _array_head(len(records))
            for record in records:
                yield pack(record)


def pack_change(change: Change) -> bytes:
    """A change packed once, to embed in the log, the published message and the reply (a Put's records
    as they came, when it has them packed: ``Put.packed``)."""
    if type(change) is Put and change.packed is not None:  # ["put", table, namespace, records]
        return b"\x94\xa3put" + pack(change.table) + pack(change.namespace) + change.packed
    return pack(change_to_wire(change))


def insert_records_bytes(data: bytes) -> bytes | None:
    """The packed records array of an insert call (``encode_call`` of an ``Insert``: ``data``), as its
    bytes hold it; None for any other message. About 60 us for 1000 records of 200 bytes, where packing
    them again took about 600."""
    try:
        u = msgpack.Unpacker(None, max_buffer_size=len(data))
        u.feed(data)
        if not (_to_call_request(u) and _to_insert_records(u)):
            return None
        start = u.tell()
        u.skip()
        return data[start : u.tell()]
    except DECODE_ERRORS:  # (the call was decoded whole before: not expected)
        return None


def ok_bytes(
    req_id: int, epoch: str, seq: int, packed_change: bytes | None, result: Any = None, before: list[bytes] | None = None
) -> bytes:
    """``encode_reply(Ok(...))`` with already packed changes (a msgpack array is its parts in a row)."""
    tail = b"\x90" if not before else _array_head(len(before)) + b"".join(before)
    return b"\x97" + pack("ok") + pack(req_id) + pack(epoch) + pack(seq) + (packed_change or b"\xc0") + pack(result) + tail


def segments_bytes(packed_segments: list[bytes]) -> bytes:
    """A SnapshotChunk's ``segments`` field from segments packed one by one (``pack((table, namespace, records))``)."""
    return _array_head(len(packed_segments)) + b"".join(packed_segments)


_CHUNK_HEAD = b"\x93" + pack("chunk")  # how a snapshot chunk's bytes begin (then its request id)


def chunk_bytes(req_id: int, packed_segments: bytes) -> bytes:
    """``encode_reply(SnapshotChunk(...))`` with its segments already packed (``segments_bytes``): joiners
    sent one snapshot share them, each with its own request id."""
    return _CHUNK_HEAD + pack(req_id) + packed_segments


def chunk_req_id(data: bytes) -> int | None:
    """The request id of the snapshot chunk ``data``, read without decoding its records (a replica skips the
    chunks of a request it asked before: decoding each took longer than the writer took to send them);
    None if ``data`` is no chunk."""
    if not data.startswith(_CHUNK_HEAD):
        return None
    u = msgpack.Unpacker(raw=False)
    u.feed(data[len(_CHUNK_HEAD) : len(_CHUNK_HEAD) + 9])  # (an int packs to 9 bytes at most)
    try:
        req_id = u.unpack()
    except (msgpack.OutOfData, ValueError):
        return None
    return req_id if type(req_id) is int else None


def encode_reply(r: Reply) -> bytes:
    return pack(REPLIES.to_wire(r))


def _segments(value: Any, name: str) -> list[tuple[str, str, list[Record]]]:
    segments = []
    for segment in _field(value, list, name):
        if not isinstance(segment, list) or len(segment) != 3:
            raise ProtocolError(f"field {name!r} must hold [table, namespace, records] arrays")
        table, namespace, records = segment
        segments.append((_field(table, str, "table"), _field(namespace, str, "namespace"), _records(records, "records")))
    return segments


def _changes(value: Any, name: str) -> tuple[Change, ...]:
    return tuple(map(change_from_wire, _field(value, list, name)))


def _changes_to_wire(changes: tuple[Change, ...] | list[Change]) -> list[list[Any]]:
    return [change_to_wire(c) for c in changes]


def _fewer_before_than_seqs(ok: Ok) -> None:
    if ok.before and len(ok.before) + (ok.change is not None) > ok.seq:
        raise ProtocolError(f"field 'before' holds {len(ok.before)} changes, more than the seqs before {ok.seq}")


Own = dict[bytes, Record]  # records a client sent, by their packed bytes, decoded as the writer decodes them


def decode_reply(data: bytes, own: Own | None = None, hooks: Hooks = UNWALKED) -> Reply:
    """The reply ``data`` holds; ProtocolError naming the bad field if none. ``own``: the records of the
    call answered (``own_records``, ``own_batch_records``): a record of the answer whose bytes are one
    of them, stored as sent, is taken from them instead of decoded again (the answer carries every
    record back). ``hooks``: as for ``unpack_frozen`` (``WALKED`` for snapshot chunks)."""
    if own:
        reply = _ok_of_own_records(data, own)
        if reply is not None:
            return reply
    return REPLIES.from_wire(unpack_frozen(data, hooks))  # type: ignore[no-any-return]


def _frozen_unpacker(data: bytes) -> msgpack.Unpacker:
    """An Unpacker of ``data`` building what the client's replica stores (``UNWALKED``)."""
    hook, list_hook = UNWALKED
    u = msgpack.Unpacker(None, raw=False, strict_map_key=True, object_hook=hook, list_hook=list_hook, max_buffer_size=len(data))
    u.feed(data)
    return u


def own_records_of(request: Request, payload: bytes) -> Own | None:
    """The records a call carries (``payload``: its bytes), for ``decode_reply``: an insert's, a batch's
    inserts'; None for any other request."""
    if type(request) is Insert:
        stored = [_stored_as_sent(r) for r in request.records]
        return own_records(payload, stored) if any(stored) else None
    if type(request) is BatchWrite and request.packed is not None:
        stored_ops = [[_stored_as_sent(r) for r in op.records] if type(op) is Insert else [] for op in request.ops]
        return own_batch_records(request.packed, stored_ops)
    return None


def _stored_as_sent(record: Any) -> bool:
    """Whether the writer stores ``record`` as it is sent (a str id first, and a created): only those are
    worth decoding from the call (the writer fills the others in: their answer's bytes differ)."""
    return isinstance(record.get("id"), str) and "created" in record and next(iter(record)) == "id"


def own_records(payload: bytes, stored: list[bool] | None = None) -> Own | None:
    """The records of an insert call's bytes (``encode_call`` of an ``Insert``), by their bytes, decoded as
    the writer decodes them; None for any other call. A client decodes them while the writer works, so
    that ``decode_reply`` need not decode the answer's copy of each once it comes."""
    try:
        u = _frozen_unpacker(payload)
        if not _to_call_request(u):
            return None
        own: Own = {}
        if _own_insert(u, payload, own, stored):
            return own
    except DECODE_ERRORS:  # (bytes this client made: not expected) the answer is then decoded whole
        pass
    return None


def own_batch_records(packed_ops: tuple[bytes, ...], stored: list[list[bool]] | None = None) -> Own | None:
    """``own_records`` of a batch, from its operations packed one by one (``BatchWrite.packed``); ``stored``:
    for each operation, which of its records to take (all of them when None)."""
    own: Own = {}
    try:
        for i, op in enumerate(packed_ops):
            wanted = None if stored is None else stored[i]
            if op[1:8] == b"\xa6insert" and (wanted is None or any(wanted)):  # (after the array's header)
                _own_insert(_frozen_unpacker(op), op, own, wanted)
    except DECODE_ERRORS:
        return None
    return own or None


def peek_call(data: bytes) -> tuple[str, float, int] | None:
    """``(client_id, expires, req_id)`` of a call (``encode_call``) read from its first bytes, its request's
    fields after the id left undecoded; None for any other message (or one not well formed so far). A big
    call (an ``insert_many`` of megabytes) resent, or arriving past its deadline, is answered without
    decoding it whole again: each resend of a 10 MB insert cost the writer about 2 s of decoding before it
    was found to be a repeat."""
    try:
        u = msgpack.Unpacker(None, max_buffer_size=len(data), raw=False)
        u.feed(data[:_PEEK_BYTES])  # (more than the head of any call: a client id, a float, a tag, an id)
        if u.read_array_header() not in (4, 5) or u.unpack() != "call":
            return None
        client_id, expires = u.unpack(), u.unpack()
        if u.read_array_header() < 2 or type(u.unpack()) is not str:
            return None
        req_id = u.unpack()
    except (*DECODE_ERRORS, msgpack.OutOfData):
        return None
    if type(client_id) is not str or type(expires) not in (int, float) or type(req_id) is not int:
        return None
    return client_id, float(expires), req_id


_PEEK_BYTES = 4096


def _to_call_request(u: msgpack.Unpacker) -> bool:
    """Move ``u`` from the start of a call (``encode_call``) to its request; False if it is no call."""
    if u.read_array_header() != 5 or u.unpack() != "call":
        return False
    u.skip()  # client id
    u.skip()  # expiry
    return True


def _to_insert_records(u: msgpack.Unpacker) -> bool:
    """Move ``u`` from the start of a request to an insert's records array; False if it is no insert."""
    if u.read_array_header() != 7 or u.unpack() != "insert":
        return False
    for _ in range(4):  # req id, table, namespace, prefix
        u.skip()
    return True


def _own_insert(u: msgpack.Unpacker, data: bytes, own: Own, stored: list[bool] | None) -> bool:
    """Into ``own``, the records of the insert request ``u`` is at (in ``data``), those ``stored`` says (all
    when None); False if it is no insert."""
    if not _to_insert_records(u):
        return False
    count = u.read_array_header()
    if stored is not None and len(stored) != count:
        return False
    for i in range(count):
        if stored is not None and not stored[i]:
            u.skip()
            continue
        start = u.tell()
        record = u.unpack()
        if _plain_record(record):  # (what a reply's records are checked for: taken from here, they are not again)
            own[data[start : u.tell()]] = record
    return True


def _ok_of_own_records(data: bytes, own: Own) -> Ok | None:
    """An ok answer storing a put, or a batch of puts and deletes, each record whose bytes are in ``own``
    taken from it (the others decoded), checked as ``REPLIES`` checks it (field by field here; a record of
    ``own`` was checked as it was put there: ``_own_insert``); None for anything else or anything wrong
    (decoded whole then, where a fault is named)."""
    try:
        u = _frozen_unpacker(data)
        if u.read_array_header() != 7 or u.unpack() != "ok":
            return None
        req_id, epoch, seq = u.unpack(), u.unpack(), u.unpack()
        if type(req_id) is not int or type(epoch) is not str or type(seq) is not int:
            return None
        size, tag = u.read_array_header(), u.unpack()
        change: Put | Batch
        if tag == "put" and size == 4:
            put = _own_put(u, data, own)
            if put is None:
                return None
            change = put
        elif tag == "batch" and size == 2:
            parts: list[Put | Delete] = []
            for _ in range(u.read_array_header()):
                size, tag = u.read_array_header(), u.unpack()
                if tag == "put" and size == 4:
                    part: Put | Delete | None = _own_put(u, data, own)
                elif tag == "del" and size == 4:
                    table, namespace, id = u.unpack(), u.unpack(), u.unpack()
                    ok = type(table) is str and type(namespace) is str and type(id) is str
                    part = Delete(table, namespace, id) if ok else None
                else:
                    return None
                if part is None:
                    return None
                parts.append(part)
            change = Batch(tuple(parts))
        else:
            return None
        result, before = u.unpack(), u.unpack()
        if u.tell() != len(data) or type(before) not in _ARRAYS:
            return None
        reply = Ok(req_id, epoch, seq, change, result, _changes(before, "before") if before else ())
        _fewer_before_than_seqs(reply)
    except _NOT_OWN_OK:
        return None
    return reply


def _own_put(u: msgpack.Unpacker, data: bytes, own: Own) -> Put | None:
    """The put ``u`` is at, after its tag (``_ok_of_own_records``); None if a field is wrong."""
    table, namespace = u.unpack(), u.unpack()
    if type(table) is not str or type(namespace) is not str:
        return None
    records = []
    for _ in range(u.read_array_header()):
        start = u.tell()
        u.skip()
        end = u.tell()
        record = own.get(data[start:end])
        if record is None:
            record = unpack_frozen(data[start:end], UNWALKED)
            if not _plain_record(record):
                return None
        records.append(record)
    return Put(table, namespace, tuple(records))


_CHANGE = Field("change", optional=True, decode=lambda v, n: change_from_wire(v), encode=change_to_wire)
REPLIES = Catalogue(
    "reply",
    Message(
        "ok",
        Ok,
        _REQ_ID,
        _str("epoch"),
        _int("seq"),
        _CHANGE,
        Field("result"),
        Field("before", decode=_changes, encode=_changes_to_wire),
        verify=_fewer_before_than_seqs,
    ),
    Message("fail", Failed, Field("req_id", int, optional=True), _str("kind"), _str("message")),
    Message("chunk", SnapshotChunk, _REQ_ID, Field("segments", decode=_segments)),
    Message("end", SnapshotEnd, _REQ_ID, _str("epoch"), _int("seq"), _int("records")),
)


# -- published: writer PUB -> replica SUB ------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """One applied change, numbered: seq counts changes from 1 within an epoch."""

    epoch: str
    seq: int
    change: Change


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The writer is alive at (epoch, seq): every change up to seq was published before it."""

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class PublishedGroup:
    """Changes applied as one group (group commit), published as one message: ``changes[i]`` has seq
    ``seq - len(changes) + 1 + i`` (``seq`` is the last one's). A replica applies them in one go."""

    epoch: str
    seq: int
    changes: list[Change]


# Every published message is one frame: a topic (TOPIC_SIZE bytes, which SUB prefixes match), then the
# message (one frame, not two: a second frame cost the writer and every replica a send and a receive
# per publication). A change made by a client's call carries that client's topic, and the client's
# replica subscribes to every topic but its own: the calling thread applies the change from its reply,
# so the copy would only wake the replica thread.
TOPIC_SIZE = 3
EVERYONE = bytes(TOPIC_SIZE)  # heartbeats, and changes no reply carries (a once key released for a gone client)


def topic_of(client_id: str) -> bytes:
    """The topic of changes made by ``client_id``'s calls (EVERYONE for an id that is not hex)."""
    try:
        topic = bytes.fromhex(client_id[: 2 * TOPIC_SIZE])
    except ValueError:
        return EVERYONE
    return topic if len(topic) == TOPIC_SIZE else EVERYONE


def random_hex(n: int) -> str:
    """``n`` random bytes as ``2 * n`` hex digits: ``secrets.token_hex``'s own source, without the 3 ms of
    loading hashlib that importing ``secrets`` costs every process."""
    return os.urandom(n).hex()


def new_epoch() -> str:
    """A writer's epoch: 16 hex digits, the first 11 the time it started (milliseconds since 1970), the
    other 5 random; so a later writer's epoch sorts after an earlier one's (``epoch_started``), on one
    clock (a writer restarted on another host compares by that host's clock)."""
    return f"{int(wall() * 1000):011x}{random_hex(3)[:5]}"


def epoch_started(epoch: str) -> int | None:
    """When the writer of ``epoch`` started (milliseconds since 1970), or None for an epoch not made by
    ``new_epoch`` (of an older tiger)."""
    if len(epoch) != 16:
        return None
    try:
        return int(epoch[:11], 16)
    except ValueError:
        return None


def new_client_id() -> str:
    """16 random hex digits whose topic is not EVERYONE."""
    while True:
        client_id = random_hex(8)
        if topic_of(client_id) != EVERYONE:
            return client_id


def subscriptions(excluded: bytes) -> list[bytes]:
    """SUB prefixes matching every topic but ``excluded`` (a SUB filter is a prefix: 255 per topic byte)."""
    if excluded == EVERYONE:
        return [b""]
    return [excluded[:i] + bytes([b]) for i in range(TOPIC_SIZE) for b in range(256) if b != excluded[i]]


def encode_published(m: Published | PublishedGroup | Heartbeat) -> bytes:
    return pack(PUBLISHED.to_wire(m))


def _array_head(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements (its elements follow, packed, in a row)."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def group_bytes(epoch: str, seq: int, packed_changes: list[bytes]) -> bytes:
    """``encode_published(PublishedGroup(...))`` from already packed changes (``seq``: the last one's)."""
    return b"\x94" + pack("g") + pack(epoch) + pack(seq) + _array_head(len(packed_changes)) + b"".join(packed_changes)


def published_bytes(epoch: str, seq: int, packed_change: bytes) -> bytes:
    """``encode_published(Published(...))`` with an already packed change."""
    return b"\x94" + pack("c") + pack(epoch) + pack(seq) + packed_change


_PUBLISHED_HEADS = (b"\x94\xa1c", b"\x94\xa1g")
_UINT = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q"}


def peek_published(data: bytes) -> tuple[str, int] | None:
    """(epoch, seq) of a published change or group (its last seq) without decoding the changes; None if
    not that shape."""
    if not data.startswith(_PUBLISHED_HEADS) or len(data) < 22 or data[3] != 0xB0:
        return None
    epoch = data[4:20].decode("ascii", "replace")
    first = data[20]
    if first < 0x80:
        return epoch, first
    fmt = _UINT.get(first)
    if fmt is None or len(data) < 21 + struct.calcsize(fmt):
        return None
    return epoch, struct.unpack_from(fmt, data, 21)[0]


def decode_published(data: bytes) -> Published | PublishedGroup | Heartbeat:
    return PUBLISHED.from_wire(unpack_frozen(data, UNWALKED))  # type: ignore[no-any-return]


def _one_to_seq_changes(group: PublishedGroup) -> None:
    if not group.changes or len(group.changes) > group.seq:
        raise ProtocolError(f"field 'changes' must hold 1 to seq ({group.seq}) changes, not {len(group.changes)}")


PUBLISHED = Catalogue(
    "published message",
    Message(
        "c",
        Published,
        _str("epoch"),
        _int("seq"),
        Field("change", decode=lambda v, n: change_from_wire(v), encode=change_to_wire),
    ),
    Message("h", Heartbeat, _str("epoch"), _int("seq")),
    Message(
        "g",
        PublishedGroup,
        _str("epoch"),
        _int("seq"),
        Field("changes", decode=lambda v, n: list(_changes(v, n)), encode=_changes_to_wire),
        verify=_one_to_seq_changes,
    ),
)


# -- frames on a socket ------------------------------------------------------------------------

_MORE = int(zmq.SNDMORE)
# pyzmq's Cython backend sets a received Frame's ``more``; its cffi backend (PyPy) leaves it False
_FRAMES_KNOW_MORE = zmq.backend.Frame.__module__.startswith("zmq.backend.cython")


def receive(sock: zmq.Socket[Any], flags: int = 0) -> list[bytes]:
    """One multipart message, as ``recv_multipart`` gives it, for less (~1 us per 2-frame message on
    the test machine): no Python-level ``getsockopt(RCVMORE)`` per frame, as a frame received with
    ``copy=False`` knows if more follow. The frames after the first are there at once (a message
    arrives whole)."""
    if not _FRAMES_KNOW_MORE:
        return sock.recv_multipart(flags)
    frame = sock.recv(flags, copy=False)
    frames = [frame.bytes]
    while frame.more:
        frame = sock.recv(flags, copy=False)
        frames.append(frame.bytes)
    return frames


_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_zmq_poll = zmq.zmq_poll


_backend = vars(sys.modules[_zmq_poll.__module__]) if _zmq_poll.__module__ in sys.modules else {}  # zmq.backend.cython._zmq


def poll_on_a_real_clock() -> None:
    """Point pyzmq's ``zmq_poll`` at tiger's monotonic clock (``tiger._clock``): called before each of
    tiger's polls (a dict lookup). It reads ``monotonic`` from its module's globals, to go on after a
    signal with what is left of its timeout; freezegun's ``freeze_time`` replaces every module global
    that is ``time.monotonic`` with its fake, and then a date past 2038 failed every poll ("OverflowError:
    value too large to convert to int": pyzmq keeps the time in a C int), an earlier one restarted a
    poll's whole timeout at each signal. tiger's clock reads the same clock, and freezegun leaves it
    alone, but its ``stop()`` puts back what its ``start()`` found (tiger first used inside a freeze),
    hence the check at each poll. The name added beside it makes freezegun read the module's globals
    again (it keeps a module's clock globals by the module's names: the fake came back from that)."""
    if _backend.get("monotonic", monotonic) is not monotonic:
        _backend["monotonic"] = monotonic
        _backend["tiger_monotonic"] = monotonic


poll_on_a_real_clock()


def waiting(sock: zmq.Socket[Any]) -> bool:
    """Whether a message waits on ``sock`` now (``getsockopt(EVENTS)``): asked before another receive
    without waiting, for less than a receive that finds none (pyzmq builds its ``zmq.Again`` in Python:
    2.5 us against 6.8 us on the test machine), where most turns find one message and then none."""
    return bool(sock.get(_EVENTS) & _POLLIN)  # type: ignore[operator]  # (an int for EVENTS)


def readable_within(sock: zmq.Socket[Any], ms: int) -> bool:
    """Whether a message reached ``sock`` within ``ms`` milliseconds: ``sock.poll(ms)`` without the
    ``zmq.Poller`` it builds per call (1.9 us against 3.9 here). A poll interrupted by a signal goes on
    with what is left of its timeout (pyzmq's ``zmq_poll``)."""
    poll_on_a_real_clock()
    return bool(_zmq_poll([(sock, _POLLIN)], ms))


def _yield_holding_the_gil() -> Callable[[], object]:
    """libc's ``sched_yield`` called without letting the interpreter lock go (``ctypes.PyDLL``); a function
    doing nothing where there is none (Windows) or no ctypes. ``os.sched_yield`` lets the lock go, and with
    another thread of the process busy in Python, taking it back waited up to the switch interval: a review
    measured p90 8 ms of a round trip against 5.7 ms without the yield (the yield's own max here: 11.8 ms
    through ``os``, 60 us through this)."""
    try:
        import ctypes

        call = ctypes.PyDLL(None).sched_yield
        call.restype, call.argtypes = ctypes.c_int, ()
        return call
    except (ImportError, AttributeError, OSError, TypeError):
        return lambda: None


_sched_yield = _yield_holding_the_gil()
YIELD_AFTER_BYTES = 2048  # a message at least this big: its sender goes on with work of its own in proportion


def let_io_thread_send(size: int) -> None:
    """After queueing a message of ``size`` bytes on a socket, by a thread about to work on (decoding the
    records it sent while the writer works, a ``client.batch()`` or an ``insert_many``): give up the CPU
    once (``sched_yield``, holding the interpreter lock: no other Python thread takes this moment), so that
    libzmq's I/O thread, which moves the bytes out, sends them first. Without it, the bytes left about when
    this thread next blocked, as if the I/O thread, woken by the send, waited for this very CPU: a batch of
    100 writes reached the writer 550 to 600 us after its send, 130 to 160 us with the yield (medians of
    300, both processes timed on one clock, this 2-core VM), and the whole batch took about 6% less
    (alternating runs). A small message is not worth the system call: the wait after it is short (a single
    insert showed no difference). A resend, or a call with no records of its own to decode, yields too:
    one system call for nothing."""
    if size >= YIELD_AFTER_BYTES:
        _sched_yield()


def wire_text(text: str) -> str:
    """``text`` (a message, a path of the writer's own) as a str UTF-8 can carry: itself, or with what it
    cannot escaped, the bytes of a name that is not UTF-8 (as os.fsdecode holds them) as ``\\xff``, any
    other lone surrogate as ``\\udc80``. The writer's stats and error answers go through it: a data
    directory whose name was not UTF-8 made the first ``stats`` answer unencodable, and the writer died."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def say(text: str, file: Any = None, *, flush: bool = False) -> None:
    """Print one line of a command's output (``tiger load``, ``tiger keygen``, ``tiger serve``...) through
    ``wire_text``: a name that is not UTF-8 (a path given in bytes, held as os.fsdecode holds them) printed
    raw raised UnicodeEncodeError under a UTF-8 locale (after ``tiger load`` had loaded the file), or wrote
    its raw bytes (under C.UTF-8), where logs and answers show ``\\xff``. Under a locale that is not UTF-8,
    what its encoding cannot carry is escaped as well (``\\xe9``), not raised."""
    line, stream = wire_text(text), sys.stdout if file is None else file
    try:
        print(line, file=stream, flush=flush)
    except UnicodeEncodeError:  # a locale that is not UTF-8 (ASCII, Latin-1): what it cannot carry, escaped
        encoding = getattr(stream, "encoding", None) or "ascii"
        print(line.encode(encoding, "backslashreplace").decode(encoding), file=stream, flush=flush)


def unencodable(request: Request) -> str:
    """Where a request holds a str that UTF-8 cannot encode (a lone surrogate, as ``os.fsdecode`` makes of
    undecodable bytes), as the ValueError message naming the field; msgpack's own error names none."""
    if type(request) is BatchWrite:
        for i, op in enumerate(request.ops):
            try:
                encode_request(op)
            except UnicodeEncodeError:
                return f"operation {i}: {unencodable(op)}"
    for name in request.__dataclass_fields__:
        value = getattr(request, name)
        if name == "records":
            places = [("record" if len(value) == 1 else f"records[{i}]", r) for i, r in enumerate(value)]
        else:
            places = [("value" if name == "payload" else name, value)]
        for where, item in places:
            message = unencodable_value(item, where)
            if message is not None:
                return message
    return UNENCODABLE  # pragma: no cover - called only after such an error


def unencodable_value(value: Any, where: str) -> str | None:
    """The ValueError message naming the first str in ``value`` that UTF-8 cannot encode, or None."""
    found = _unencodable(value, where)
    return None if found is None else f"{found}: {UNENCODABLE}"


def _unencodable(value: Any, where: str) -> str | None:
    if type(value) is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) is str and _unencodable(key, "") is not None:
                return f"{where}: key {key!r}"
            found = _unencodable(item, f"{where}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _unencodable(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None
