"""Every wire message, in one place.

Each message is one msgpack array in one ZeroMQ frame (the ROUTER's identity
frames aside): ``[tag, ...fields]``. Decoding checks the shape and the type of
every envelope field and raises :class:`ProtocolError` naming the field;
the *content* of records is checked by the table rules (``tiger._table``).

Sockets:
- command socket (writer ROUTER, client DEALER): requests, replies, snapshot chunks;
- publish socket (writer PUB, replica SUB): changes and heartbeats, each after a
  topic frame (see ``topic_of``: a client is not sent the changes its own calls made).
"""

from __future__ import annotations

import operator
import secrets
import struct
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from tiger._errors import ProtocolError
from tiger._table import Batch, Change, Clear, ClearNamespace, Delete, DropNamespace, FrozenList, Put, Record, Store

MAX_MESSAGE = 64 * 1024 * 1024  # bytes; the writer's MAXMSGSIZE as well
MAX_RECORD = 8 * 1024 * 1024  # bytes of one packed record


def check_record_sizes(records: Any, total: int, what: str = "records") -> None:
    """ValueError naming the first record over MAX_RECORD packed bytes (looked for only when ``total`` is over it)."""
    if total <= MAX_RECORD:
        return
    for i, record in enumerate(records):
        size = len(pack(record))
        if size > MAX_RECORD:
            where = what if len(records) == 1 else f"{what}[{i}]"
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


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types for bad bytes
        raise ProtocolError(f"not a msgpack message ({type(e).__name__}: {e})") from None


def unpack_frozen(data: bytes) -> Any:
    """``unpack``, building maps and arrays in their frozen form at once (what replicas store): no copy later."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, object_hook=Record, list_hook=FrozenList)
    except Exception as e:
        raise ProtocolError(f"not a msgpack message ({type(e).__name__}: {e})") from None


def _field(value: Any, kind: type | tuple[type, ...], name: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(f"field {name!r} must be {expected}, not {_type_name(value)}")
    return value


_SHOWN_MAX = 40  # characters of a peer's str shown in an error message


def _shown(value: Any) -> str:
    """A short description of a value a peer sent, for an error message (which is logged and sent back)."""
    if isinstance(value, (str, bytes)):
        if len(value) <= _SHOWN_MAX:
            return repr(value)
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:_SHOWN_MAX]!r}... ({len(value)} {unit})"
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return f"a {_type_name(value)}"


def _array(obj: Any, tags: dict[str, int], what: str) -> list[Any]:
    if not isinstance(obj, list):
        raise ProtocolError(f"a {what} must be a msgpack array, not {_type_name(obj)}")
    if not obj:
        raise ProtocolError(f"a {what} must be a non-empty msgpack array, got an empty one")
    tag = obj[0]
    arity = tags.get(tag) if type(tag) is str else None  # a list or map tag is unhashable: not a lookup
    if arity is None:
        raise ProtocolError(f"unknown {what}: tag {_shown(tag)}")
    if len(obj) != arity:
        raise ProtocolError(f"{what} {tag!r} has {len(obj) - 1} fields, expected {arity - 1}")
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


# -- changes --------------------------------------------------------------------

_CHANGE_TAGS = {"put": 4, "del": 4, "clear": 2, "clear_ns": 3, "drop_ns": 2, "batch": 2}


def change_to_wire(change: Change) -> list[Any]:
    if type(change) is Put:
        return ["put", change.table, change.namespace, change.records]
    if type(change) is Delete:
        return ["del", change.table, change.namespace, change.id]
    if type(change) is Clear:
        return ["clear", change.table]
    if type(change) is ClearNamespace:
        return ["clear_ns", change.table, change.namespace]
    if type(change) is DropNamespace:
        return ["drop_ns", change.namespace]
    if type(change) is Batch:
        return ["batch", [change_to_wire(c) for c in change.changes]]
    raise TypeError(f"not a change: {change!r}")


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
    a = _array(obj, _CHANGE_TAGS, "change")
    tag = a[0]
    if tag == "drop_ns":
        return DropNamespace(_field(a[1], str, "namespace"))
    if tag == "batch":
        parts = []
        for i, item in enumerate(_field(a[1], list, "changes")):
            if isinstance(item, list) and item and item[0] == "batch":  # refused before decoding: no recursion
                raise ProtocolError(f"field 'changes[{i}]' must be a put or a del, not a batch")
            part = change_from_wire(item)
            if type(part) is not Put and type(part) is not Delete:
                raise ProtocolError(f"field 'changes[{i}]' must be a put or a del, not {type(part).__name__}")
            parts.append(part)
        return Batch(tuple(parts))
    table = _field(a[1], str, "table")
    if tag == "put":
        return Put(table, _field(a[2], str, "namespace"), tuple(_records(a[3], "records")))
    if tag == "del":
        return Delete(table, _field(a[2], str, "namespace"), _field(a[3], str, "id"))
    if tag == "clear":
        return Clear(table)
    return ClearNamespace(table, _field(a[2], str, "namespace"))


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
class OnceClaim:
    """Ask to build a once key; the result says "build", "wait" or "done"."""

    req_id: int
    key: str
    client_id: str
    by: str
    namespace: str = "global"  # the key's scope (the pytest plugin: one per test run)


ONCE_OUTCOMES = ("value", "resource", "error", "release", "retire")


@dataclass(frozen=True, slots=True)
class OnceFinish:
    """The builder's outcome: "value" (payload: the value), "resource" (a value the builder tears down
    later), "error" (payload: [type, message, builder, traceback]), "release" (the build was interrupted)
    or "retire" (the value was torn down)."""

    req_id: int
    key: str
    client_id: str
    outcome: str
    payload: Any
    namespace: str = "global"


@dataclass(frozen=True, slots=True)
class BatchWrite:
    """``client.batch()``: inserts, creates, updates and deletes applied all or none, in order, as one
    change. Each op's own ``req_id`` is not used (0). The answer's result: for each op, the index of its
    part in the change (None: a delete of nothing)."""

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
    req_id: int


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

_REQUEST_TAGS = {
    "hello": 3,
    "insert": 7,
    "update": 6,
    "delete": 5,
    "clear": 4,
    "drop_ns": 3,
    "once_claim": 6,
    "once_finish": 7,
    "batch": 3,
    "sync": 2,
    "snapshot": 2,
    "stats": 2,
    "compact": 2,
    "beat": 2,
    "bye": 2,
}


def encode_request(r: Request) -> bytes:
    t = type(r)
    if t is Insert:
        return pack(["insert", r.req_id, r.table, r.namespace, r.prefix, r.records, r.create])  # type: ignore[union-attr]
    if t is Update:
        return pack(["update", r.req_id, r.table, r.namespace, r.id, r.changes])  # type: ignore[union-attr]
    if t is Remove:
        return pack(["delete", r.req_id, r.table, r.namespace, r.id])  # type: ignore[union-attr]
    if t is ClearTable:
        return pack(["clear", r.req_id, r.table, r.namespace])  # type: ignore[union-attr]
    if t is Hello:
        return pack(["hello", r.req_id, r.client_id])  # type: ignore[union-attr]
    if t is Drop:
        return pack(["drop_ns", r.req_id, r.namespace])  # type: ignore[union-attr]
    if t is OnceClaim:
        return pack(["once_claim", r.req_id, r.key, r.client_id, r.by, r.namespace])  # type: ignore[union-attr]
    if t is OnceFinish:
        return pack(["once_finish", r.req_id, r.key, r.client_id, r.outcome, r.payload, r.namespace])  # type: ignore[union-attr]
    if t is BatchWrite:
        packed = r.packed if r.packed is not None else map(encode_request, r.ops)  # type: ignore[union-attr]
        return b"\x93" + pack("batch") + pack(r.req_id) + _array_head(len(r.ops)) + b"".join(packed)  # type: ignore[union-attr]
    if t is Beat or t is Bye:
        return pack(["beat" if t is Beat else "bye", r.client_id])  # type: ignore[union-attr]
    tag = "sync" if t is Sync else "snapshot" if t is SnapshotRequest else "compact" if t is Compact else "stats"
    return pack([tag, r.req_id])  # type: ignore[union-attr]


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
    # a msgpack array is its elements in a row: the inner request is packed as usual
    return b"\x95" + pack("call") + pack(call.client_id) + pack(call.expires) + encode_request(call.request) + pack(call.known)


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
    a = _array(obj, _REQUEST_TAGS, "request")
    tag = a[0]
    if tag in ("beat", "bye"):
        client_id = _field(a[1], str, "client_id")
        return Beat(client_id) if tag == "beat" else Bye(client_id)
    req_id = _field(a[1], int, "req_id")
    if tag == "insert":
        prefix = a[4]
        if prefix is not None:
            _field(prefix, str, "prefix")
        records = _field(a[5], list, "records")
        return Insert(
            req_id, _field(a[2], str, "table"), _field(a[3], str, "namespace"), prefix, records, _field(a[6], bool, "create")
        )
    if tag == "update":
        return Update(
            req_id,
            _field(a[2], str, "table"),
            _field(a[3], str, "namespace"),
            _field(a[4], str, "id"),
            _field(a[5], dict, "changes"),
        )
    if tag == "delete":
        return Remove(req_id, _field(a[2], str, "table"), _field(a[3], str, "namespace"), _field(a[4], str, "id"))
    if tag == "clear":
        ns = a[3]
        if ns is not None:
            _field(ns, str, "namespace")
        return ClearTable(req_id, _field(a[2], str, "table"), ns)
    if tag == "hello":
        return Hello(req_id, _field(a[2], str, "client_id"))
    if tag == "drop_ns":
        return Drop(req_id, _field(a[2], str, "namespace"))
    if tag == "once_claim":
        key, client_id, by = _field(a[2], str, "key"), _field(a[3], str, "client_id"), _field(a[4], str, "by")
        return OnceClaim(req_id, key, client_id, by, _field(a[5], str, "namespace"))
    if tag == "once_finish":
        outcome = _field(a[4], str, "outcome")
        if outcome not in ONCE_OUTCOMES:
            raise ProtocolError(f"field 'outcome' must be one of {', '.join(ONCE_OUTCOMES)}, not {_shown(outcome)}")
        return OnceFinish(
            req_id, _field(a[2], str, "key"), _field(a[3], str, "client_id"), outcome, a[5], _field(a[6], str, "namespace")
        )
    if tag == "batch":
        ops: list[Insert | Update | Remove] = []
        for i, item in enumerate(_field(a[2], list, "ops")):
            if isinstance(item, list) and item and item[0] == "batch":  # refused before decoding: no recursion
                raise ProtocolError(f"ops[{i}] must be an insert, update or delete, not a batch")
            try:
                op = _op_from_wire(item) or request_from(item)
            except ProtocolError as e:
                raise ProtocolError(f"ops[{i}]: {e}") from None
            if type(op) is not Insert and type(op) is not Update and type(op) is not Remove:
                raise ProtocolError(f"ops[{i}] must be an insert, update or delete, not {type(op).__name__}")
            ops.append(op)
        if not ops:
            raise ProtocolError("field 'ops' must hold at least one operation")
        return BatchWrite(req_id, ops)
    if tag == "sync":
        return Sync(req_id)
    if tag == "snapshot":
        return SnapshotRequest(req_id)
    if tag == "compact":
        return Compact(req_id)
    return Stats(req_id)


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
_REPLY_TAGS = {"ok": 7, "fail": 4, "chunk": 3, "end": 5}


def checksum(store: Store) -> int:
    """A CRC32 of a store's whole content: tables and namespaces sorted, records in list order."""
    content = store.content()
    return zlib.crc32(pack([(t, ns, content[t][ns]) for t in sorted(content) for ns in sorted(content[t])]))


def pack_change(change: Change) -> bytes:
    """A change packed once, to embed in both the published message and the reply."""
    return pack(change_to_wire(change))


def ok_bytes(
    req_id: int, epoch: str, seq: int, packed_change: bytes | None, result: Any = None, before: list[bytes] | None = None
) -> bytes:
    """``encode_reply(Ok(...))`` with already packed changes (a msgpack array is its parts in a row)."""
    tail = b"\x90" if not before else _array_head(len(before)) + b"".join(before)
    return b"\x97" + pack("ok") + pack(req_id) + pack(epoch) + pack(seq) + (packed_change or b"\xc0") + pack(result) + tail


def segments_bytes(packed_segments: list[bytes]) -> bytes:
    """A SnapshotChunk's ``segments`` field from segments packed one by one (``pack((table, namespace, records))``)."""
    return _array_head(len(packed_segments)) + b"".join(packed_segments)


def chunk_bytes(req_id: int, packed_segments: bytes) -> bytes:
    """``encode_reply(SnapshotChunk(...))`` with its segments already packed (``segments_bytes``): joiners
    sent one snapshot share them, each with its own request id."""
    return b"\x93" + pack("chunk") + pack(req_id) + packed_segments


def encode_reply(r: Reply) -> bytes:
    t = type(r)
    if t is Ok:
        change = None if r.change is None else change_to_wire(r.change)  # type: ignore[union-attr]
        before = [change_to_wire(c) for c in r.before]  # type: ignore[union-attr]
        return pack(["ok", r.req_id, r.epoch, r.seq, change, r.result, before])  # type: ignore[union-attr]
    if t is Failed:
        return pack(["fail", r.req_id, r.kind, r.message])  # type: ignore[union-attr]
    if t is SnapshotChunk:
        return pack(["chunk", r.req_id, r.segments])  # type: ignore[union-attr]
    return pack(["end", r.req_id, r.epoch, r.seq, r.records])  # type: ignore[union-attr]


def _segments(value: Any) -> list[tuple[str, str, list[Record]]]:
    segments = []
    for segment in _field(value, list, "segments"):
        if not isinstance(segment, list) or len(segment) != 3:
            raise ProtocolError("field 'segments' must hold [table, namespace, records] arrays")
        table, namespace, records = segment
        segments.append((_field(table, str, "table"), _field(namespace, str, "namespace"), _records(records, "records")))
    return segments


def decode_reply(data: bytes) -> Reply:
    a = _array(unpack_frozen(data), _REPLY_TAGS, "reply")
    tag = a[0]
    if tag == "ok":
        change = None if a[4] is None else change_from_wire(a[4])
        seq = _field(a[3], int, "seq")
        before = _field(a[6], list, "before")
        if before and len(before) + (change is not None) > seq:
            raise ProtocolError(f"field 'before' holds {len(before)} changes, more than the seqs before {seq}")
        return Ok(
            _field(a[1], int, "req_id"), _field(a[2], str, "epoch"), seq, change, a[5], tuple(map(change_from_wire, before))
        )
    if tag == "fail":
        req_id = a[1] if a[1] is None else _field(a[1], int, "req_id")
        return Failed(req_id, _field(a[2], str, "kind"), _field(a[3], str, "message"))
    if tag == "chunk":
        return SnapshotChunk(_field(a[1], int, "req_id"), _segments(a[2]))
    return SnapshotEnd(
        _field(a[1], int, "req_id"), _field(a[2], str, "epoch"), _field(a[3], int, "seq"), _field(a[4], int, "records")
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


_PUBLISHED_TAGS = {"c": 4, "h": 3, "g": 4}

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


def new_client_id() -> str:
    """16 random hex digits whose topic is not EVERYONE."""
    while True:
        client_id = secrets.token_hex(8)
        if topic_of(client_id) != EVERYONE:
            return client_id


def subscriptions(excluded: bytes) -> list[bytes]:
    """SUB prefixes matching every topic but ``excluded`` (a SUB filter is a prefix: 255 per topic byte)."""
    if excluded == EVERYONE:
        return [b""]
    return [excluded[:i] + bytes([b]) for i in range(TOPIC_SIZE) for b in range(256) if b != excluded[i]]


def encode_published(m: Published | PublishedGroup | Heartbeat) -> bytes:
    if type(m) is Published:
        return pack(["c", m.epoch, m.seq, change_to_wire(m.change)])
    if type(m) is PublishedGroup:
        return pack(["g", m.epoch, m.seq, [change_to_wire(c) for c in m.changes]])
    return pack(["h", m.epoch, m.seq])


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
    a = _array(unpack_frozen(data), _PUBLISHED_TAGS, "published message")
    epoch = _field(a[1], str, "epoch")
    seq = _field(a[2], int, "seq")
    if a[0] == "h":
        return Heartbeat(epoch, seq)
    if a[0] == "g":
        changes = _field(a[3], list, "changes")
        if not changes or len(changes) > seq:
            raise ProtocolError(f"field 'changes' must hold 1 to seq ({seq}) changes, not {len(changes)}")
        return PublishedGroup(epoch, seq, [change_from_wire(c) for c in changes])
    return Published(epoch, seq, change_from_wire(a[3]))


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


def send(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    """``send_multipart`` without its per-call checks and flag arithmetic (~1 us per message here)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _MORE if i < last else 0)


_UNENCODABLE = (
    "a str UTF-8 cannot encode (a lone surrogate, as os.fsdecode makes of undecodable bytes); "
    "store bytes, or decode with errors='replace'"
)


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
    return _UNENCODABLE  # pragma: no cover - called only after such an error


def unencodable_value(value: Any, where: str) -> str | None:
    """The ValueError message naming the first str in ``value`` that UTF-8 cannot encode, or None."""
    found = _unencodable(value, where)
    return None if found is None else f"{found}: {_UNENCODABLE}"


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
