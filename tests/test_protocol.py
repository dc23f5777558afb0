"""The wire protocol: every message round-trips, and garbage is a ProtocolError.

Garbage never escapes as another exception type: the writer answers a
ProtocolError with a "protocol" error reply, and a replica resynchronises
on one, so a TypeError or KeyError out of a decoder is a bug.

What a message is comes from the protocol's own description of itself: the
``Request`` and ``Reply`` unions, what ``decode_published`` returns, the
``Change`` union, ``Call``, the tag tables and ``ONCE_OUTCOMES``; what a valid
decoded message holds comes from its dataclass's field annotations. A message
added to ``tiger._protocol`` and left out of the tables below fails
``test_the_tables_cover_every_message_the_protocol_declares``.

The last tests run ``send`` and ``receive`` over inproc sockets, every one of
them made by the ``open_socket`` fixture (conftest.py) (closed after the test, passed or not).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import zmq
from _util import Sockets
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tiger import _protocol as p
from tiger import _table
from tiger._errors import ProtocolError
from tiger._table import Clear, ClearNamespace, Delete, DropNamespace, Put, Record, freeze

EPOCH = "0123456789abcdef"
CLIENT = "0123456789abcdef"
RECORD = {
    "id": "plan_0123456789abcdef",
    "created": 1_700_000_000,
    "amount": 500,
    "ratio": 0.25,
    "active": True,
    "nothing": None,
    "blob": b"\x00\xff",
    "name": "Gold \u2728",
    "meta": {"tags": ["a", "b"], "nested": {"n": [1, 2.5, None, False, b""]}},
}
OTHER = {"id": "plan_1", "created": 0, "amount": -(2**63), "max": 2**64 - 1}

# -- what the protocol says its messages are --------------------------------------------------

REQUEST_TYPES: tuple[type, ...] = typing.get_args(p.Request)
REPLY_TYPES: tuple[type, ...] = typing.get_args(p.Reply)
PUBLISHED_TYPES: tuple[type, ...] = typing.get_args(typing.get_type_hints(p.decode_published)["return"])
CHANGE_TYPES: tuple[type, ...] = typing.get_args(_table.Change)
UNCALLABLE = (p.Beat, p.Bye)  # never answered, so never sent as a Call (call_from refuses them)

CHANGES: list[_table.Change] = [
    Put("plans", "global", (freeze(RECORD),)),
    Put("plans", "test-1", (freeze(RECORD), freeze(OTHER))),
    Delete("plans", "test-1", "plan_1"),
    Clear("plans"),
    ClearNamespace("plans", "test-1"),
    DropNamespace("test-1"),
    _table.Batch((Put("plans", "global", (freeze(RECORD),)), Delete("prices", "test-1", "price_1"))),
]

ONCE_PAYLOADS: dict[str, Any] = {  # what each outcome carries; an outcome not named here carries None
    "value": {"url": "postgres://x", "n": [1, 2.5, None]},
    "resource": ["a", b"b"],
    "error": ["ValueError", "boom", "gw0 pid 123", 'File "conftest.py", line 1'],
}

REQUESTS: list[p.Request] = [
    p.Hello(1, "client-1"),
    p.Insert(2, "plans", "global", "plan", [{"amount": 500}], False),
    p.Insert(3, "things", "test-1", None, [RECORD, OTHER, {}], True),
    p.Update(4, "plans", "global", "plan_1", {"amount": 600, "meta": {"a": [1]}}),
    p.Update(5, "plans", "global", "plan_1", {}),
    p.Remove(6, "plans", "test-1", "plan_1"),
    p.ClearTable(7, "plans", None),
    p.ClearTable(8, "plans", "test-1"),
    p.Sync(9),
    p.SnapshotRequest(10),
    p.Stats(11),
    p.Stats(11, checksum=False),  # a probe's: the figures alone
    p.Compact(12),
    p.Drop(13, "test-1"),
    p.Lease(13, "test-1", CLIENT),
    p.OnceClaim(14, "db", CLIENT, "gw0 pid 123"),  # the default namespace
    p.OnceClaim(15, "db", CLIENT, "", "run-1"),
    # every outcome there is, from the protocol's own list
    *(
        p.OnceFinish(16 + i, "db", CLIENT, outcome, ONCE_PAYLOADS.get(outcome), "run-1")
        for i, outcome in enumerate(p.ONCE_OUTCOMES)
    ),
    p.OnceFinish(30, "db", CLIENT, "value", None),  # the default namespace, a None value
    p.BatchWrite(
        31,
        [
            p.Insert(0, "plans", "global", "plan", [{"amount": 500}], True),
            p.Update(0, "plans", "test-1", "plan_1", {"amount": 600}),
            p.Remove(0, "prices", "global", "price_1"),
        ],
    ),
    p.Beat("client-1"),
    p.Bye("client-1"),
    p.Stats(0),
    p.Sync(2**64 - 1),  # the extremes of a msgpack int
    p.Stats(-(2**63)),
]

# a call around the first request of each type that can be called, and expiries of every kind
CALLS: list[p.Call] = [
    *(
        p.Call(CLIENT, 1_700_000_000.25, r)
        for r in {type(r): r for r in reversed(REQUESTS) if type(r) not in UNCALLABLE}.values()
    ),
    p.Call(CLIENT, math.inf, p.Sync(-1)),  # how a replica asks (never expires, negative req_id)
    p.Call("", -1.0, p.Stats(2**64 - 1)),
]

REPLIES: list[p.Reply] = [
    p.Ok(1, EPOCH, 0, None),
    p.Ok(2, EPOCH, 7, None, {"pub": "ipc:///tmp/x.pub", "heartbeat": 0.5, "pid": 123}),
    *(p.Ok(3, EPOCH, 8 + i, change, [1, "x"]) for i, change in enumerate(CHANGES)),
    p.Ok(4, EPOCH, 9, CHANGES[0], None, tuple(CHANGES[1:])),  # what the caller's replica may lack before its change
    p.Failed(None, "protocol", "not a msgpack message"),
    p.Failed(4, "not_found", "plans 'plan_1' is not in namespace 'global'"),
    p.SnapshotChunk(5, [("plans", "global", [RECORD]), ("plans", "test-1", [RECORD, OTHER])]),
    p.SnapshotChunk(6, []),
    p.SnapshotEnd(7, EPOCH, 9, 3),
]

PUBLISHED: list[p.Published | p.PublishedGroup | p.Heartbeat] = [
    p.Heartbeat(EPOCH, 0),
    p.Heartbeat(EPOCH, 2**64 - 1),
    *(p.Published(EPOCH, 1 + i, change) for i, change in enumerate(CHANGES)),
    p.PublishedGroup(EPOCH, len(CHANGES) + 3, list(CHANGES)),
]


def decode_command(data: bytes) -> p.Call | p.Request:
    """What the writer does with a payload on its command socket (tiger._writer.Writer.handle)."""
    return p.call_from(p.unpack_frozen(data))


def encode_command(m: p.Call | p.Request) -> bytes:
    return p.encode_call(m) if type(m) is p.Call else p.encode_request(m)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One way of decoding bytes: the messages it may give, how to encode them, and how errors name it."""

    types: tuple[type, ...]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    what: str  # as its ProtocolErrors name a message ("a request must be ...")
    tags: tuple[str, ...]


KINDS: dict[str, Kind] = {
    "request": Kind(REQUEST_TYPES, p.encode_request, p.decode_request, "request", tuple(p.REQUESTS.by_tag)),
    # the writer's decoding: calls, and plain requests (the request kind's tags, tested there)
    "command": Kind((*REQUEST_TYPES, p.Call), encode_command, decode_command, "request", ("call",)),
    "reply": Kind(REPLY_TYPES, p.encode_reply, p.decode_reply, "reply", tuple(p.REPLIES.by_tag)),
    "published": Kind(PUBLISHED_TYPES, p.encode_published, p.decode_published, "published message", tuple(p.PUBLISHED.by_tag)),
}
DECODERS: dict[str, Callable[[bytes], Any]] = {kind: k.decode for kind, k in KINDS.items()}
ENCODERS: dict[str, Callable[[Any], bytes]] = {kind: k.encode for kind, k in KINDS.items()}

MESSAGES: list[tuple[str, Any]] = [
    *(("request", m) for m in REQUESTS),
    *(("command", m) for m in CALLS),
    *(("reply", m) for m in REPLIES),
    *(("published", m) for m in PUBLISHED),
]

# every valid encoding, with the decoder it belongs to
ENCODED: list[tuple[str, bytes]] = [(kind, ENCODERS[kind](m)) for kind, m in MESSAGES]
ENCODED_IDS = [f"{kind}-{i}" for i, (kind, _) in enumerate(ENCODED)]


def raw(obj: Any) -> bytes:
    """msgpack bytes as any peer could send them: no checks, bin type for bytes."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


# -- what a valid decoded message is ---------------------------------------------------


def _once_outcome(m: p.OnceFinish) -> str | None:
    return None if m.outcome in p.ONCE_OUTCOMES else f"outcome {m.outcome!r} is not one of {p.ONCE_OUTCOMES}"


def _callable(m: p.Call) -> str | None:
    return f"a call carrying a {type(m.request).__name__}" if type(m.request) in UNCALLABLE else None


# what a message's field annotations cannot say
RULES: dict[type, Callable[[Any], str | None]] = {p.OnceFinish: _once_outcome, p.Call: _callable}
# fields whose items are content, which the table rules check at the writer (naming the record), so the
# envelope checks only the container: Insert.records is declared list[dict[str, Any]], decoded as any list
CONTENT: dict[tuple[type, str], Any] = {(p.Insert, "records"): list}


def mismatch(value: Any, hint: Any, where: str) -> str | None:
    """Where ``value`` is not what the annotation ``hint`` declares, or None.

    Records (``Record``) must be maps with a str id and an int created: what a replica keys and orders
    by. A ``dict[...]`` is checked to be a map only: record content is the table rules' to check.
    """
    if hint is Any:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if any(mismatch(value, arg, where) is None for arg in args):
            return None
        return f"{where}: {type(value).__name__} {value!r:.60} is none of {hint}"
    if hint is type(None):
        ok = value is None
    elif hint is Record:
        ok = isinstance(value, dict) and type(value.get("id")) is str and type(value.get("created")) is int
    elif hint in (bool, int, float, str, bytes):
        ok = type(value) is hint  # a bool is not an int here, as on the wire
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if type(value) is not hint:
            return f"{where}: a {type(value).__name__}, not a {hint.__name__}"
        hints = typing.get_type_hints(hint)
        for field in dataclasses.fields(hint):
            hint_of_field = CONTENT.get((hint, field.name), hints[field.name])
            found = mismatch(getattr(value, field.name), hint_of_field, f"{where}.{field.name}")
            if found is not None:
                return found
        rule = RULES.get(hint)
        return None if rule is None else rule(value)
    elif origin is list:
        if not isinstance(value, list):
            return f"{where}: {type(value).__name__}, not a list"
        return next((f for i, v in enumerate(value) if (f := mismatch(v, args[0], f"{where}[{i}]"))), None)
    elif origin is tuple:
        if not isinstance(value, tuple):
            return f"{where}: {type(value).__name__}, not a tuple"
        items = args[:1] * len(value) if args[-1:] == (...,) else args
        if len(items) != len(value):
            return f"{where}: {len(value)} items, not {len(items)}"
        return next(
            (f for i, (v, h) in enumerate(zip(value, items, strict=True)) if (f := mismatch(v, h, f"{where}[{i}]"))), None
        )
    elif origin is dict or hint in (list, dict):
        ok = isinstance(value, origin or hint)
    else:
        raise AssertionError(f"{where}: the test does not know the annotation {hint!r}; teach mismatch() it")
    return None if ok else f"{where}: {type(value).__name__} {value!r:.60} is not a {hint}"


def assert_valid(kind: str, m: object) -> None:
    """``m`` is a message ``kind`` may decode to, every field of the type its class declares."""
    assert type(m) in KINDS[kind].types, f"a {kind} decoded to a {type(m).__name__}"
    found = mismatch(m, type(m), type(m).__name__)
    assert found is None, found


def decode_or_protocol_error(kind: str, data: bytes) -> object | None:
    """Decode; a ProtocolError is fine, any other exception fails. A message decoded must be valid."""
    try:
        m = DECODERS[kind](data)
    except ProtocolError as e:
        assert str(e)
        return None
    assert_valid(kind, m)
    # what decodes re-encodes to bytes that decode to the same message (a fixpoint after one trip)
    again = ENCODERS[kind](m)
    assert ENCODERS[kind](DECODERS[kind](again)) == again
    return m


# -- the tables above against the protocol ---------------------------------------------------------


def test_the_tables_cover_every_message_the_protocol_declares():
    declared = {
        obj
        for obj in vars(p).values()
        if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == p.__name__
    }
    described = {t for kind in KINDS.values() for t in kind.types}
    assert declared - described == set(), "a message class no decoder is declared to return (add it to a union)"
    assert described - declared == set()
    assert declared - {type(m) for _, m in MESSAGES} == set(), "message classes the round-trip table leaves out"
    assert set(CHANGE_TYPES) - {type(c) for c in CHANGES} == set(), "changes the round-trip table leaves out"
    for kind, k in KINDS.items():  # (the command kind's plain requests are the request kind's)
        expected = {p.Call} if kind == "command" else set(k.types)
        assert expected - {type(m) for m_kind, m in MESSAGES if m_kind == kind} == set(), kind
    assert set(REQUEST_TYPES) - set(UNCALLABLE) - {type(c.request) for c in CALLS} == set(), "requests never called"
    # every tag on the wire, of every kind, is in an encoding above
    sent = {kind: {p.unpack(data)[0] for k, data in ENCODED if k == kind} for kind in KINDS}
    assert sent["request"] == set(p.REQUESTS.by_tag)
    assert sent["command"] == set(KINDS["command"].tags)
    assert sent["reply"] == set(p.REPLIES.by_tag)
    assert sent["published"] == set(p.PUBLISHED.by_tag)
    assert {p.change_to_wire(c)[0] for c in CHANGES} == set(p.CHANGES.by_tag)
    assert {m.outcome for m in REQUESTS if type(m) is p.OnceFinish} == set(p.ONCE_OUTCOMES)
    # and the hypothesis strategies below build every message and change there is
    assert set(REQUEST_STRATEGIES) == set(REQUEST_TYPES)
    assert set(REPLY_STRATEGIES) == set(REPLY_TYPES)
    assert set(PUBLISHED_STRATEGIES) == set(PUBLISHED_TYPES)
    assert set(CHANGE_STRATEGIES) == set(CHANGE_TYPES)


@pytest.mark.parametrize("kind", KINDS)
def test_the_validity_check_refuses_a_message_another_kind_decodes_to(kind):
    # the check the fuzz tests rely on can fail: a message of another kind, a field of the wrong type
    other = next(m for k, m in MESSAGES if type(m) not in KINDS[kind].types)
    with pytest.raises(AssertionError, match="decoded to a"):
        assert_valid(kind, other)
    m = next(m for k, m in MESSAGES if k == kind)
    field = dataclasses.fields(m)[0].name
    with pytest.raises(AssertionError, match=re.escape(f"{type(m).__name__}.{field}")):
        assert_valid(kind, dataclasses.replace(m, **{field: b"junk"}))


@pytest.mark.parametrize(
    "bad",
    [
        p.OnceFinish(1, "k", CLIENT, "nope", None),
        p.Call(CLIENT, 1.0, p.Beat(CLIENT)),
        p.Call(CLIENT, 1, p.Sync(1)),  # an int expiry: call_from makes it a float
        p.Ok(1, EPOCH, 1, Put("t", "ns", ({"id": "a"},))),  # a record without created
        p.Ok(1, EPOCH, True, None),
        p.SnapshotChunk(1, [("t", "ns")]),
        p.Failed(None, "protocol", None),
    ],
    ids=repr,
)
def test_the_validity_check_refuses_what_no_decoder_may_give(bad):
    with pytest.raises(AssertionError):
        assert_valid("command" if type(bad) is p.Call else "request" if type(bad) in REQUEST_TYPES else "reply", bad)


# -- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "message"), MESSAGES, ids=[f"{kind}-{m!r}"[:100] for kind, m in MESSAGES])
def test_every_message_round_trips(kind, message):
    decoded = DECODERS[kind](ENCODERS[kind](message))
    assert type(decoded) is type(message)
    assert decoded == message
    assert_valid(kind, decoded)


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda m: repr(m)[:80])
def test_the_writer_decodes_every_plain_request_as_decode_request_does(request_):
    # the writer decodes with call_from(unpack_frozen(...)), which takes plain requests as well as calls
    data = p.encode_request(request_)
    assert decode_command(data) == p.decode_request(data) == request_


@pytest.mark.parametrize("uncallable", UNCALLABLE)
def test_a_call_carrying_a_beat_or_a_bye_is_refused(uncallable):
    data = b"\x94" + p.pack("call") + p.pack(CLIENT) + p.pack(1.0) + p.encode_request(uncallable(CLIENT))
    with pytest.raises(ProtocolError, match="a call cannot carry a beat or a bye"):
        decode_command(data)


@pytest.mark.parametrize("change", CHANGES, ids=repr)
def test_every_change_round_trips_and_applies_like_the_original(change):
    decoded = p.change_from_wire(p.unpack(p.pack_change(change)))
    assert decoded == change
    direct, wired = _table.Store(), _table.Store()
    for store, c in ((direct, change), (wired, decoded)):
        store.apply(Put("plans", "test-1", (freeze(OTHER),)))
        store.apply(c)
        store.check()
    assert direct.content() == wired.content()


def test_snapshot_segments_decode_as_the_store_yields_them():
    store = _table.Store()
    store.apply(Put("plans", "global", (freeze(RECORD), freeze(OTHER))))
    store.apply(Put("prices", "test-1", (freeze(OTHER),)))
    chunks = list(store.snapshot(1))
    assert sum(len(records) for chunk in chunks for _, _, records in chunk) == 3  # the loop below is not empty
    for chunk in chunks:
        assert p.decode_reply(p.encode_reply(p.SnapshotChunk(1, chunk))) == p.SnapshotChunk(1, chunk)


def test_mappings_and_tuples_are_sent_as_maps_and_arrays():
    record = {"tags": ("a", "b"), "meta": types.MappingProxyType({"k": (1,)})}
    frozen = freeze({"id": "x", "created": 1, "tags": ["a"], "meta": {"k": [1]}})
    request = p.Insert(1, "t", "global", None, [record, frozen], False)
    assert p.decode_request(p.encode_request(request)).records == [  # type: ignore[union-attr]
        {"tags": ["a", "b"], "meta": {"k": [1]}},
        {"id": "x", "created": 1, "tags": ["a"], "meta": {"k": [1]}},
    ]


@pytest.mark.parametrize("change", [None, *CHANGES], ids=repr)
@pytest.mark.parametrize("result", [None, {"pub": "ipc:///tmp/w.pub", "pid": 1}, [1, 2], "x"], ids=repr)
def test_ok_bytes_is_encode_reply_of_ok(change, result):
    packed = None if change is None else p.pack_change(change)
    fast = p.ok_bytes(42, EPOCH, 7, packed, result)
    assert (
        p.decode_reply(fast)
        == p.decode_reply(p.encode_reply(p.Ok(42, EPOCH, 7, change, result)))
        == p.Ok(42, EPOCH, 7, change, result)
    )
    assert fast == p.encode_reply(p.Ok(42, EPOCH, 7, change, result))


@pytest.mark.parametrize("change", CHANGES, ids=repr)
def test_published_bytes_is_encode_published_of_published(change):
    fast = p.published_bytes(EPOCH, 12, p.pack_change(change))
    assert p.decode_published(fast) == p.decode_published(p.encode_published(p.Published(EPOCH, 12, change)))
    assert p.decode_published(fast) == p.Published(EPOCH, 12, change)
    assert fast == p.encode_published(p.Published(EPOCH, 12, change))


@pytest.mark.parametrize("size", [1, 2, 15, 16, 17, 2**16 - 1, 2**16])
def test_group_bytes_is_encode_published_of_a_group_at_every_array_size(size):
    changes = [CHANGES[i % len(CHANGES)] for i in range(size)]
    fast = p.group_bytes(EPOCH, size + 5, [p.pack_change(c) for c in changes])
    assert fast == p.encode_published(p.PublishedGroup(EPOCH, size + 5, changes))
    assert p.decode_published(fast) == p.PublishedGroup(EPOCH, size + 5, changes)
    assert p.peek_published(fast) == (EPOCH, size + 5)


@pytest.mark.parametrize("count", [0, 6])
def test_a_group_of_no_changes_or_more_changes_than_its_seq_is_refused(count):
    data = p.pack(["g", EPOCH, 5, [p.change_to_wire(CHANGES[0])] * count])
    with pytest.raises(ProtocolError, match="field 'changes' must hold 1 to seq"):
        p.decode_published(data)


# random numbers and epochs between the boundaries, which the next test checks every run (epochs here are
# at most 40 characters: an epoch of 256 or more, a str16 header, went unchecked by this test alone)
@settings(max_examples=200, deadline=None)
@given(
    req_id=st.integers(-(2**63), 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
    epoch=st.text(max_size=40),
    change=st.sampled_from([None, *CHANGES]),
)
def test_ok_and_published_bytes_agree_with_the_encoders_for_any_numbers(req_id, seq, epoch, change):
    packed = None if change is None else p.pack_change(change)
    assert p.ok_bytes(req_id, epoch, seq, packed) == p.encode_reply(p.Ok(req_id, epoch, seq, change))
    if change is not None:
        assert p.published_bytes(epoch, seq, packed) == p.encode_published(p.Published(epoch, seq, change))  # type: ignore[arg-type]


# every boundary between msgpack's int formats (fixint, uint8..64, negative fixint, int8..64) and its str
# formats (fixstr, str8..32): where a hand-built encoding goes wrong, checked every run, not when drawn
UINT_EDGES = [0, 127, 128, 255, 256, 2**16 - 1, 2**16, 2**32 - 1, 2**32, 2**64 - 1]  # fixint, uint 8, 16, 32, 64
INT_EDGES = [*UINT_EDGES, -1, -32, -33, -128, -129, -(2**15), -(2**15) - 1, -(2**31), -(2**31) - 1, -(2**63)]
STR_EDGES = [0, 31, 32, 255, 256, 65535, 65536]


@pytest.mark.parametrize("change", [None, *CHANGES], ids=repr)
def test_ok_and_published_bytes_agree_with_the_encoders_at_every_format_boundary(change):
    packed = None if change is None else p.pack_change(change)
    for n in INT_EDGES:
        for epoch in ("e" * size for size in STR_EDGES):
            assert p.ok_bytes(n, epoch, abs(n), packed, n) == p.encode_reply(p.Ok(n, epoch, abs(n), change, n))
            if change is not None:
                assert p.published_bytes(epoch, abs(n), packed) == p.encode_published(p.Published(epoch, abs(n), change))  # type: ignore[arg-type]


@pytest.mark.parametrize("seq", UINT_EDGES)
@pytest.mark.parametrize("change", CHANGES, ids=repr)
def test_peek_published_reads_what_decode_published_reads(seq, change):
    # the replica's fast path: (epoch, seq) of a change without decoding the change
    data = p.published_bytes(EPOCH, seq, p.pack_change(change))
    assert p.peek_published(data) == (EPOCH, seq) == (p.decode_published(data).epoch, p.decode_published(data).seq)


@pytest.mark.parametrize(
    ("kind", "data"),
    [(k, d) for k, d in ENCODED if k != "published"]
    + [
        ("published", p.encode_published(p.Heartbeat(EPOCH, 5))),
        ("published", p.published_bytes("short", 5, p.pack_change(CHANGES[0]))),
        ("published", p.published_bytes(EPOCH, 2**64 - 1, p.pack_change(CHANGES[0]))[:25]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_peek_published_is_none_for_anything_but_a_published_change(kind, data):
    assert p.peek_published(data) is None


def test_request_id_of_addresses_only_requests_that_carry_one():
    assert p.request_id_of(p.unpack(p.encode_request(p.Stats(7)))) == 7
    assert p.request_id_of(["nonsense", 8, "x"]) == 8  # an unknown request still gets its answer addressed
    assert p.request_id_of(["beat", 9]) is None  # beats carry a client id, not a request id
    assert p.request_id_of(["stats", True]) is None
    assert p.request_id_of(["stats", "1"]) is None
    assert p.request_id_of(["stats"]) is None
    assert p.request_id_of({"stats": 1}) is None
    assert p.request_id_of(None) is None
    assert p.request_id_of(p.unpack(p.encode_call(p.Call(CLIENT, 1.0, p.Stats(7))))) == 7  # a call: its request's
    assert p.request_id_of(["call", CLIENT, 1.0, ["beat", CLIENT]]) is None
    assert p.request_id_of(["call", CLIENT, 1.0]) is None


def test_pack_refuses_what_msgpack_cannot_carry():
    with pytest.raises(TypeError, match="set"):
        p.pack({"x": {1, 2}})
    with pytest.raises(OverflowError, match="cannot send int 18446744073709551616"):
        p.pack({"n": 2**64})
    with pytest.raises(OverflowError, match="cannot send int"):
        p.pack(-(2**63) - 1)


# -- each valid encoding whole, cut, and with trailing garbage ------------------------------


@pytest.mark.parametrize(("kind", "data"), ENCODED, ids=ENCODED_IDS)
def test_whole_encodings_decode(kind, data):
    assert decode_or_protocol_error(kind, data) is not None


@pytest.mark.parametrize(("kind", "data"), ENCODED, ids=ENCODED_IDS)
def test_an_encoding_cut_at_any_byte_is_a_protocol_error(kind, data):
    for cut in range(len(data)):
        with pytest.raises(ProtocolError, match="not a msgpack message"):
            DECODERS[kind](data[:cut])


@pytest.mark.parametrize(("kind", "data"), ENCODED, ids=ENCODED_IDS)
@pytest.mark.parametrize("trailer", [b"\x00", b"\xc0", b"\xc1", b"\x91\x01", b"\xff" * 9], ids=repr)
def test_trailing_garbage_is_a_protocol_error(kind, data, trailer):
    with pytest.raises(ProtocolError, match="not a msgpack message"):
        DECODERS[kind](data + trailer)


@pytest.mark.parametrize(("kind", "data"), ENCODED, ids=ENCODED_IDS)
def test_two_messages_in_one_frame_are_a_protocol_error(kind, data):
    with pytest.raises(ProtocolError):
        DECODERS[kind](data + data)


@pytest.mark.parametrize(("kind", "data"), ENCODED, ids=ENCODED_IDS)
def test_the_tail_of_an_encoding_from_any_byte_is_garbage_or_valid(kind, data):
    for start in range(1, len(data)):
        decode_or_protocol_error(kind, data[start:])


@pytest.mark.parametrize(("kind", "data"), ENCODED, ids=ENCODED_IDS)
def test_any_single_byte_changed_is_garbage_or_valid(kind, data):
    for i in range(len(data)):
        for b in (0x00, 0x7F, 0x90, 0xA0, 0xC0, 0xC1, 0xC3, 0xCC, 0xD9, 0xDC, 0xDE, 0xFF, data[i] ^ 0x01):
            decode_or_protocol_error(kind, data[:i] + bytes([b]) + data[i + 1 :])


# -- garbage, one kind at a time ------------------------------------------------------


@pytest.mark.parametrize("kind", DECODERS)
def test_empty_bytes_are_a_protocol_error(kind):
    with pytest.raises(ProtocolError, match="not a msgpack message"):
        DECODERS[kind](b"")


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",  # never used in msgpack
        b"\x91" * 100_000 + b"\xc0",  # nested deeper than msgpack's stack
        b"\xdd\xff\xff\xff\xff",  # an array header claiming 4 G elements
        b"\xdf\xff\xff\xff\xff",  # a map header claiming 4 G pairs
        b"\xdb\xff\xff\xff\xff",  # a str header claiming 4 GB
        b"\xc6\xff\xff\xff\xff",  # a bin header claiming 4 GB
    ],
    ids=["reserved-byte", "deep", "huge-array", "huge-map", "huge-str", "huge-bin"],
)
def test_malformed_msgpack_is_a_protocol_error(kind, data):
    with pytest.raises(ProtocolError, match="not a msgpack message"):
        DECODERS[kind](data)


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("obj", [1, -1, 1.5, True, None, "stats", b"stats", {"tag": "stats"}], ids=repr)
def test_a_message_that_is_not_an_array_is_a_protocol_error(kind, obj):
    with pytest.raises(ProtocolError, match=f"^a {KINDS[kind].what} must be a msgpack array, not {type(obj).__name__}$"):
        DECODERS[kind](raw(obj))


@pytest.mark.parametrize("kind", DECODERS)
def test_an_empty_array_is_a_protocol_error(kind):
    with pytest.raises(ProtocolError, match="non-empty msgpack array"):
        DECODERS[kind](raw([]))


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize(
    "tag",
    ["nope", "", "OK", "put", 0, 1.0, True, None, b"ok", b"hello", b"c"],
    ids=repr,
)
def test_an_unknown_tag_is_a_protocol_error(kind, tag):
    with pytest.raises(ProtocolError, match=f"^unknown {KINDS[kind].what}: tag "):
        DECODERS[kind](raw([tag, 1, "x", 2]))


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("tag", [[1], ["ok"], {"a": 1}, {}], ids=repr)
def test_an_unhashable_tag_is_a_protocol_error_not_a_type_error(kind, tag):
    # regression: the tag was looked up in a dict, so a list or map tag raised TypeError
    with pytest.raises(ProtocolError, match=f"^unknown {KINDS[kind].what}: tag a (list|dict)$"):
        DECODERS[kind](raw([tag, 1]))


@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("tag", ["x" * 1_000_000, b"x" * 1_000_000], ids=["str", "bin"])
def test_a_huge_unknown_tag_is_not_echoed_whole_in_the_error(kind, tag):
    # regression: the error (logged by the writer and sent back) repeated the whole tag
    with pytest.raises(ProtocolError, match=r"unknown .*\(1000000 (characters|bytes)\)") as info:
        DECODERS[kind](raw([tag, 1]))
    assert len(str(info.value)) < 200


def _messages(kind: str) -> list[list[Any]]:
    return [p.unpack(data) for k, data in ENCODED if k == kind]


@pytest.mark.parametrize("kind", DECODERS)
def test_every_message_with_a_field_too_many_or_too_few_is_a_protocol_error(kind):
    for message in _messages(kind):
        tag = message[0]
        for wrong in (message[:-1], [*message, None], [*message, *message[1:]], [tag]):
            if len(wrong) == len(message):
                continue
            # call_from names a call without quotes; the tag tables' check names the kind and the tag
            named = "call" if tag == "call" else f"{KINDS[kind].what} {tag!r}"
            catalogue = p.REQUESTS if kind in ("request", "command") else p.REPLIES if kind == "reply" else p.PUBLISHED
            most = catalogue.arity.get(tag, len(message))  # (its last fields may be left out: Stats' checksum)
            fewest = (catalogue.least or {}).get(tag, most)
            if fewest <= len(wrong) <= most and fewest < most:
                continue  # a length it may have: the fields' own checks (the tests below)
            between = f"{fewest - 1} or {most - 1}" if fewest < most else f"{len(message) - 1}"
            expected = f"{named} has {len(wrong) - 1} fields, expected {between}"
            if tag == "call":  # its last field, 'known', may be left out (a client that knows no seq)
                if len(wrong) == len(message) - 1:
                    assert type(DECODERS[kind](raw(wrong))) is p.Call
                    continue
                expected = f"call has {len(wrong) - 1} fields, expected 3 or 4"
            with pytest.raises(ProtocolError, match=f"^{re.escape(expected)}$"):
                DECODERS[kind](raw(wrong))


@pytest.mark.parametrize("kind", DECODERS)
def test_any_field_replaced_by_a_value_of_another_type_is_garbage_or_valid(kind):
    for message in _messages(kind):
        for i in range(1, len(message)):
            for alien in ALIENS:
                decode_or_protocol_error(kind, raw([*message[:i], alien, *message[i + 1 :]]))


ALIENS = [None, True, False, 0, -1, 2**64 - 1, 1.5, "", "x", b"x", [], [1], {}, {"k": 1}, msgpack.ExtType(5, b"x")]


def _or_error(decode: Callable[[Any], Any], obj: Any) -> Any:
    try:
        return decode(obj)
    except ProtocolError:
        return ProtocolError


def _variants(message: list[Any]) -> list[Any]:
    """The message, and it with each field replaced by each alien, as a peer's bytes decode (frozen)."""
    out = [message]
    for i in range(len(message)):
        out += [[*message[:i], alien, *message[i + 1 :]] for alien in ALIENS]
    return [p.unpack_frozen(raw(m)) for m in out]


@pytest.mark.parametrize("op", [r for r in REQUESTS if type(r) in (p.Insert, p.Update, p.Remove)], ids=repr)
def test_a_batch_op_decoded_the_quick_way_is_what_the_full_decoder_gives(op):
    """A batch's ops are decoded by _op_from_wire (fields checked inline), else by request_from: the quick way
    gives the same op or leaves it (None) to the full decoder, whatever a field holds."""
    for item in _variants(p.unpack(p.encode_request(op))):
        quick = p._op_from_wire(item)
        if quick is not None:
            assert quick == _or_error(p.request_from, item)
    assert p._op_from_wire(p.unpack_frozen(p.encode_request(op))) == op


@pytest.mark.parametrize("change", [c for c in CHANGES if type(c) in (Put, Delete)], ids=repr)
def test_a_change_decoded_the_quick_way_is_what_the_full_decoder_gives(change):
    for item in _variants(p.unpack(p.pack(p.change_to_wire(change)))):
        quick = p._part_from_wire(item)
        if quick is not None:
            assert quick == _or_error(p._change_from_wire, item)
    assert p._part_from_wire(p.unpack_frozen(p.pack(p.change_to_wire(change)))) == change


E = EPOCH
PUT_OK = ["put", "t", "ns", [{"id": "a", "created": 1}]]
WRONG_FIELDS: list[tuple[str, list[Any], str]] = [
    # requests
    ("request", ["hello", "1", "c"], "req_id"),
    ("request", ["hello", True, "c"], "req_id"),  # a bool is not an int
    ("request", ["hello", 1.0, "c"], "req_id"),
    ("request", ["hello", None, "c"], "req_id"),
    ("request", ["hello", 1, 5], "client_id"),
    ("request", ["hello", 1, b"c"], "client_id"),  # bin where str expected
    ("request", ["insert", 1, 5, "ns", None, [{}], False], "table"),
    ("request", ["insert", 1, 2**64 - 1, "ns", None, [{}], False], "table"),
    ("request", ["insert", 1, "t", None, None, [{}], False], "namespace"),
    ("request", ["insert", 1, "t", "ns", 5, [{}], False], "prefix"),
    ("request", ["insert", 1, "t", "ns", None, {"id": "a"}, False], "records"),
    ("request", ["insert", 1, "t", "ns", None, "records", False], "records"),
    ("request", ["insert", 1, "t", "ns", None, [{}], 1], "create"),  # an int is not a bool
    ("request", ["insert", 1, "t", "ns", None, [{}], None], "create"),
    ("request", ["update", 1, "t", "ns", 7, {}], "id"),
    ("request", ["update", 1, "t", "ns", "a", [["amount", 1]]], "changes"),
    ("request", ["update", 1, "t", "ns", "a", None], "changes"),
    ("request", ["delete", 1, "t", "ns", None], "id"),
    ("request", ["delete", 1, "t", ["ns"], "a"], "namespace"),
    ("request", ["clear", 1, "t", 5], "namespace"),
    ("request", ["clear", 1, {"t": 1}, None], "table"),
    ("request", ["sync", "1"], "req_id"),
    ("request", ["snapshot", 1.5], "req_id"),
    ("request", ["stats", False], "req_id"),
    ("request", ["stats", 1, 1], "checksum"),  # (a field left out of the array when True: see the next test)
    ("request", ["beat", 1], "client_id"),
    ("request", ["bye", None], "client_id"),
    ("request", ["compact", None], "req_id"),
    ("request", ["drop_ns", 1, None], "namespace"),
    ("request", ["drop_ns", 1, ["ns"]], "namespace"),
    ("request", ["lease", 1, None, "c"], "namespace"),
    ("request", ["lease", 1, "ns", 5], "client_id"),
    ("request", ["once_claim", "1", "k", "c", "by", "ns"], "req_id"),
    ("request", ["once_claim", 1, 5, "c", "by", "ns"], "key"),
    ("request", ["once_claim", 1, "k", b"c", "by", "ns"], "client_id"),
    ("request", ["once_claim", 1, "k", "c", None, "ns"], "by"),
    ("request", ["once_claim", 1, "k", "c", "by", None], "namespace"),
    ("request", ["once_finish", 1, None, "c", "value", 1, "ns"], "key"),
    ("request", ["once_finish", 1, "k", 5, "value", 1, "ns"], "client_id"),
    ("request", ["once_finish", 1, "k", "c", 1, 1, "ns"], "outcome"),
    ("request", ["once_finish", 1, "k", "c", "done", 1, "ns"], "outcome"),  # not one of ONCE_OUTCOMES
    ("request", ["once_finish", 1, "k", "c", "VALUE", 1, "ns"], "outcome"),
    ("request", ["once_finish", 1, "k", "c", "value", 1, 5], "namespace"),
    # calls, as the writer decodes them
    ("command", ["call", 5, 1.0, ["stats", 1]], "client_id"),
    ("command", ["call", None, 1.0, ["stats", 1]], "client_id"),
    ("command", ["call", "c", "soon", ["stats", 1]], "expires"),
    ("command", ["call", "c", None, ["stats", 1]], "expires"),
    ("command", ["call", "c", 1.0, ["stats", "1"]], "req_id"),  # the request inside
    ("command", ["call", "c", 1.0, ["drop_ns", 1, 5]], "namespace"),
    ("command", ["call", "c", 1.0, ["nope", 1]], "unknown request"),
    ("command", ["call", "c", 1.0, "stats"], "msgpack array"),
    ("command", ["call", "c", 1.0, ["call", "c", 1.0, ["stats", 1]]], "unknown request"),  # no call in a call
    # replies
    ("reply", ["ok", "1", E, 0, None, None, []], "req_id"),
    ("reply", ["ok", True, E, 0, None, None, []], "req_id"),
    ("reply", ["ok", 1, 5, 0, None, None, []], "epoch"),
    ("reply", ["ok", 1, E, "0", None, None, []], "seq"),
    ("reply", ["ok", 1, E, True, None, None, []], "seq"),
    ("reply", ["ok", 1, E, 1.0, None, None, []], "seq"),
    ("reply", ["ok", 1, E, 1, "put", None, []], "change"),
    ("reply", ["ok", 1, E, 1, ["put", 5, "ns", []], None, []], "table"),
    ("reply", ["ok", 1, E, 1, ["put", "t", 5, []], None, []], "namespace"),
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", {}], None, []], "records"),
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [1]], None, []], "records"),
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [{"created": 1}]], None, []], "records"),  # no id
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [{"id": 1, "created": 1}]], None, []], "records"),
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [{"id": "a"}]], None, []], "records"),  # no created
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [{"id": "a", "created": "1"}]], None, []], "records"),
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [{"id": "a", "created": True}]], None, []], "records"),
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [{"id": "a", "created": 1}, {"id": "b"}]], None, []], "records"),
    ("reply", ["ok", 1, E, 1, ["put", "t", "ns", [{"id": "a", "created": 1}, ["b", 1]]], None, []], "records"),
    ("reply", ["ok", 1, E, 1, ["del", "t", "ns", 5], None, []], "id"),
    ("reply", ["ok", 1, E, 1, ["clear", None], None, []], "table"),
    ("reply", ["ok", 1, E, 1, ["clear_ns", "t", None], None, []], "namespace"),
    ("reply", ["ok", 1, E, 1, ["nope", "t"], None, []], "change"),
    ("reply", ["ok", 1, E, 1, ["drop_ns", 5], None, []], "namespace"),
    ("reply", ["ok", 1, E, 1, ["drop_ns", "ns", "t"], None, []], "change"),
    ("reply", ["ok", 1, E, 1, None, None, None], "before"),
    ("reply", ["ok", 1, E, 1, None, None, [["drop_ns", 5]]], "namespace"),
    ("reply", ["fail", "1", "value", "m"], "req_id"),
    ("reply", ["fail", 1, 2, "m"], "kind"),
    ("reply", ["fail", 1, "value", None], "message"),
    ("reply", ["chunk", "1", []], "req_id"),
    ("reply", ["chunk", 1, {}], "segments"),
    ("reply", ["chunk", 1, [1]], "segments"),
    ("reply", ["chunk", 1, [["t", "ns"]]], "segments"),
    ("reply", ["chunk", 1, [["t", "ns", [], 1]]], "segments"),
    ("reply", ["chunk", 1, [[5, "ns", []]]], "table"),
    ("reply", ["chunk", 1, [["t", None, []]]], "namespace"),
    ("reply", ["chunk", 1, [["t", "ns", {}]]], "records"),
    ("reply", ["chunk", 1, [["t", "ns", [{"x": 1}]]]], "records"),
    ("reply", ["end", 1, E, 1, "1"], "records"),
    ("reply", ["end", 1, E, None, 1], "seq"),
    ("reply", ["end", 1, b"e", 1, 1], "epoch"),
    ("reply", ["end", None, E, 1, 1], "req_id"),
    # published
    ("published", ["h", 5, 0], "epoch"),
    ("published", ["h", E, "0"], "seq"),
    ("published", ["h", E, False], "seq"),
    ("published", ["c", E, 1, None], "change"),
    ("published", ["c", E, -0.5, PUT_OK], "seq"),
    ("published", ["c", E, 1, ["put", "t", "ns", [{"id": b"a", "created": 1}]]], "records"),
    ("published", ["c", E, 1, ["del", "t", "ns"]], "change"),
    ("published", ["c", E, 1, ["drop_ns", None]], "namespace"),
]


@pytest.mark.parametrize(("kind", "message", "field"), WRONG_FIELDS, ids=lambda v: repr(v)[:60])
def test_a_field_of_the_wrong_type_is_a_protocol_error_naming_it(kind, message, field):
    with pytest.raises(ProtocolError, match=rf"\b{field}\b"):
        DECODERS[kind](raw(message))


def test_a_snapshot_chunk_decodes_to_what_a_replica_can_load():
    # regression: segments were not checked, so a bad chunk broke the replica's thread with a ValueError
    chunk = p.decode_reply(raw(["chunk", 3, [["plans", "global", [RECORD]]]]))
    assert chunk == p.SnapshotChunk(3, [("plans", "global", [RECORD])])
    store = _table.Store()
    store.load({table: {ns: records} for table, ns, records in chunk.segments})  # type: ignore[union-attr]
    store.check()


def test_a_put_without_an_int_created_is_refused_since_a_replica_orders_by_it():
    with pytest.raises(ProtocolError, match="created"):
        p.decode_published(raw(["c", E, 1, ["put", "t", "ns", [{"id": "a"}]]]))


@pytest.mark.parametrize("key", [1, -1, 1.5, None, True, (1, 2)], ids=repr)
@pytest.mark.parametrize(
    ("kind", "wrap"),
    [
        ("request", lambda m: ["insert", 1, "t", "ns", None, [m], False]),
        ("request", lambda m: ["insert", 1, "t", "ns", None, [{"meta": m}], False]),
        ("request", lambda m: ["update", 1, "t", "ns", "a", m]),
        ("reply", lambda m: ["ok", 1, E, 1, ["put", "t", "ns", [{"id": "a", "created": 1, "x": m}]], m]),
        ("published", lambda m: ["c", E, 1, ["put", "t", "ns", [{"id": "a", "created": 1, "x": m}]]]),
        ("published", lambda m: m),
    ],
    ids=["insert", "insert-nested", "update", "reply", "published", "top"],
)
def test_a_non_str_map_key_is_a_protocol_error(kind, wrap, key):
    with pytest.raises(ProtocolError, match="map key"):
        DECODERS[kind](raw(wrap({key: "v"})))


def test_a_bin_map_key_passes_the_envelope_and_the_table_rules_refuse_it_by_name():
    # msgpack lets bin (bytes) keys through; record content is the table rules' to check, at the writer
    insert = p.decode_request(raw(["insert", 1, "plans", "global", None, [{"meta": {b"k": 1}}], False]))
    with pytest.raises(TypeError, match=r"record\['meta'\]: key b'k' is a bytes"):
        _table.prepare_insert(
            _table.Store(), "plans", "global", None, insert.records, create=False, now=1, token=lambda n: "0" * n
        )  # type: ignore[union-attr]
    update = p.decode_request(raw(["update", 1, "plans", "global", "a", {b"id": "b"}]))
    with pytest.raises(TypeError, match="key b'id'"):
        _table.check_record(update.changes, "changes")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("request", b"\x93\xa5hello\x01\xa2\xff\xfe"),  # client_id
        ("request", b"\x92\xa3\xe2\x82\x28\x01"),  # the tag
        ("request", b"\x97\xa6insert\x01\xa1t\xa2ns\xc0\x91\x81\xa1\xc3\x01\xc2"),  # a record key
        ("reply", b"\x94\xa4fail\x01\xa5value\xa1\x80"),  # message: a lone continuation byte
        ("published", b"\x93\xa1h\xa3\xed\xa0\x80\x00"),  # epoch: an encoded surrogate
    ],
    ids=["client_id", "tag", "record-key", "message", "surrogate"],
)
def test_invalid_utf8_in_a_str_is_a_protocol_error(kind, data):
    with pytest.raises(ProtocolError, match="utf-8"):
        DECODERS[kind](data)


@pytest.mark.parametrize("value", [msgpack.ExtType(1, b"x"), msgpack.Timestamp(1, 0)], ids=repr)
def test_an_extension_type_where_a_str_is_expected_is_a_protocol_error(value):
    with pytest.raises(ProtocolError, match="table"):
        p.decode_request(raw(["delete", 1, value, "ns", "a"]))


# -- hypothesis: anything at all decodes or is a ProtocolError --------------------------------

msgpack_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | st.sampled_from(["id", "created", "put", "del", "clear", "clear_ns", "ok", "c", "h", "insert", "hello", "beat"])
)
msgpack_objects = st.recursive(
    msgpack_scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10) | st.sampled_from(["id", "created"]), children, max_size=5)
    ),
    max_leaves=30,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(kind=st.sampled_from(list(DECODERS)), data=st.binary(max_size=200))
def test_random_bytes_decode_or_raise_protocol_error(kind, data):
    decode_or_protocol_error(kind, data)


@FUZZ
@given(kind=st.sampled_from(list(DECODERS)), obj=msgpack_objects)
def test_random_msgpack_objects_decode_or_raise_protocol_error(kind, obj):
    decode_or_protocol_error(kind, raw(obj))


def _fields_of(kind: str, tag: str) -> list[list[Any]]:
    """The fields of every valid message of ``kind`` under ``tag`` in the tables above."""
    return [message[1:] for message in _messages(kind) if message[0] == tag]


KNOWN_TAGS = [(kind, tag) for kind, k in KINDS.items() for tag in k.tags]


# One test per tag of every kind, every run: a tag drawn at random among ~35 went unexercised in some runs
# (the fuzz once drew a tag whose messages the validity check did not know). Half the examples keep the
# tag's arity, each field valid (taken from a message above) or random, so the field checks are reached.
@pytest.mark.parametrize(("kind", "tag"), KNOWN_TAGS, ids=[f"{kind}-{tag}" for kind, tag in KNOWN_TAGS])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_fields_under_a_known_tag_decode_or_raise_protocol_error(kind, tag, data):
    valid = _fields_of(kind, tag)
    assert valid, f"no {kind} message with tag {tag!r} in the tables above"
    if data.draw(st.booleans()):
        base = data.draw(st.sampled_from(valid))
        fields = [data.draw(st.just(v) | msgpack_objects) for v in base]
    else:
        fields = data.draw(st.lists(msgpack_objects, min_size=0, max_size=7))
    decode_or_protocol_error(kind, raw([tag, *fields]))


@FUZZ
@given(data=st.data())
def test_a_valid_message_with_one_part_replaced_decodes_or_raises_protocol_error(data):
    kind, encoded = data.draw(st.sampled_from(ENCODED))
    message = p.unpack(encoded)
    # walk down to a random list or map inside the message and replace one item there
    node: Any = message
    while True:
        keys = list(range(len(node))) if isinstance(node, list) else list(node)
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], (list, dict)) and node[key] and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(msgpack_objects)
        break
    decode_or_protocol_error(kind, raw(message))


ids = st.text(min_size=1, max_size=12)
names = st.text(min_size=1, max_size=12)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
plain_records = st.dictionaries(st.text(max_size=8), values, max_size=4)
stored_records = st.builds(lambda r, id, created: {**r, "id": id, "created": created}, plain_records, ids, st.integers(0, 2**40))
req_ids = st.integers(-(2**63), 2**64 - 1)
seqs = st.integers(0, 2**64 - 1)
# one strategy per class: test_the_tables_cover_every_message_the_protocol_declares checks none is missing
CHANGE_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Put: st.builds(Put, names, names, st.lists(stored_records, max_size=3).map(tuple)),
    Delete: st.builds(Delete, names, names, ids),
    Clear: st.builds(Clear, names),
    ClearNamespace: st.builds(ClearNamespace, names, names),
    DropNamespace: st.builds(DropNamespace, names),
}
CHANGE_STRATEGIES[_table.Batch] = st.builds(
    _table.Batch, st.lists(CHANGE_STRATEGIES[Put] | CHANGE_STRATEGIES[Delete], max_size=3).map(tuple)
)
changes = st.one_of(*CHANGE_STRATEGIES.values())
REQUEST_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    p.Hello: st.builds(p.Hello, req_ids, st.text()),
    p.Insert: st.builds(p.Insert, req_ids, names, names, st.none() | names, st.lists(plain_records, max_size=3), st.booleans()),
    p.Update: st.builds(p.Update, req_ids, names, names, ids, plain_records),
    p.Remove: st.builds(p.Remove, req_ids, names, names, ids),
    p.ClearTable: st.builds(p.ClearTable, req_ids, names, st.none() | names),
    p.Drop: st.builds(p.Drop, req_ids, names),
    p.Lease: st.builds(p.Lease, req_ids, names, st.text()),
    p.OnceClaim: st.builds(p.OnceClaim, req_ids, st.text(), st.text(), st.text(), st.text()),
    p.OnceFinish: st.builds(p.OnceFinish, req_ids, st.text(), st.text(), st.sampled_from(p.ONCE_OUTCOMES), values, st.text()),
    p.Sync: st.builds(p.Sync, req_ids),
    p.SnapshotRequest: st.builds(p.SnapshotRequest, req_ids),
    p.Stats: st.builds(p.Stats, req_ids),
    p.Compact: st.builds(p.Compact, req_ids),
    p.Beat: st.builds(p.Beat, st.text()),
    p.Bye: st.builds(p.Bye, st.text()),
}
REQUEST_STRATEGIES[p.BatchWrite] = st.builds(
    p.BatchWrite,
    req_ids,
    st.lists(REQUEST_STRATEGIES[p.Insert] | REQUEST_STRATEGIES[p.Update] | REQUEST_STRATEGIES[p.Remove], min_size=1, max_size=3),
)
requests = st.one_of(*REQUEST_STRATEGIES.values())
calls = st.builds(
    p.Call,
    st.text(),
    st.floats(allow_nan=False),
    st.one_of(*(s for t, s in REQUEST_STRATEGIES.items() if t not in UNCALLABLE)),
)
REPLY_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    p.Ok: st.builds(p.Ok, req_ids, st.text(), seqs, st.none() | changes, values, st.lists(changes, max_size=2).map(tuple)).filter(
        lambda ok: ok.seq >= len(ok.before) + 1
    ),
    p.Failed: st.builds(p.Failed, st.none() | req_ids, st.text(), st.text()),
    p.SnapshotChunk: st.builds(
        p.SnapshotChunk, req_ids, st.lists(st.tuples(names, names, st.lists(stored_records, max_size=3)), max_size=3)
    ),
    p.SnapshotEnd: st.builds(p.SnapshotEnd, req_ids, st.text(), seqs, st.integers(0, 2**32)),
}
replies = st.one_of(*REPLY_STRATEGIES.values())
PUBLISHED_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    p.Published: st.builds(p.Published, st.text(), seqs, changes),
    p.Heartbeat: st.builds(p.Heartbeat, st.text(), seqs),
    p.PublishedGroup: st.lists(changes, min_size=1, max_size=4).flatmap(
        lambda cs: st.builds(p.PublishedGroup, st.text(), st.integers(len(cs), 2**64 - 1), st.just(cs))
    ),
}
published = st.one_of(*PUBLISHED_STRATEGIES.values())


@settings(max_examples=300, deadline=None)
@given(request_=requests)
def test_any_request_round_trips(request_):
    assert p.decode_request(p.encode_request(request_)) == request_
    assert decode_command(p.encode_request(request_)) == request_


@settings(max_examples=300, deadline=None)
@given(call=calls)
def test_any_call_round_trips(call):
    decoded = decode_command(p.encode_call(call))
    assert decoded == call
    assert_valid("command", decoded)


@settings(max_examples=300, deadline=None)
@given(reply=replies)
def test_any_reply_round_trips(reply):
    assert p.decode_reply(p.encode_reply(reply)) == reply


@settings(max_examples=300, deadline=None)
@given(message=published)
def test_any_published_message_round_trips(message):
    assert p.decode_published(p.encode_published(message)) == message


# -- publish topics -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    excluded=st.binary(min_size=p.TOPIC_SIZE, max_size=p.TOPIC_SIZE),
    other=st.binary(min_size=p.TOPIC_SIZE, max_size=p.TOPIC_SIZE),
)
# the cases random topics rarely or never hit, run every time: no topic of its own, its own topic, the extremes
@example(excluded=p.EVERYONE, other=b"\x00\x00\x01")
@example(excluded=b"\x00\x00\x01", other=b"\x00\x00\x01")
@example(excluded=b"\xff\xff\xff", other=b"\xff\xff\xff")
@example(excluded=b"\xff\xff\xff", other=p.EVERYONE)
@example(excluded=b"\x01\x00\x00", other=b"\x01\x00\x01")
def test_a_replica_subscribes_to_every_topic_but_its_own(excluded, other):
    prefixes = p.subscriptions(excluded)
    matches = sum(other.startswith(prefix) for prefix in prefixes)
    if excluded == p.EVERYONE:
        assert prefixes == [b""]  # an id without a topic of its own gets everything
        assert matches == 1
    else:
        assert len(prefixes) == 255 * p.TOPIC_SIZE
        assert sum(excluded.startswith(prefix) for prefix in prefixes) == 0
        assert matches == (0 if other == excluded else 1)
        for i in range(p.TOPIC_SIZE):  # the topics nearest the excluded one, which random ones rarely hit
            near = excluded[:i] + bytes([excluded[i] ^ 1]) + excluded[i + 1 :]
            assert sum(near.startswith(prefix) for prefix in prefixes) == 1
    assert sum(p.EVERYONE.startswith(prefix) for prefix in prefixes) == 1  # heartbeats reach every replica


def test_client_ids_have_a_topic_of_their_own(monkeypatch):
    # Deterministic: a random id's topic is EVERYONE once in 2**24, so no number of random tries would
    # catch new_client_id handing one out; the token source is made to offer such ids first.
    offered = iter(["000000ffffffffff", "000000abcdef0123", "abcdef0123456789"])
    monkeypatch.setattr(p, "random_hex", lambda n: next(offered))
    client_id = p.new_client_id()
    assert client_id == "abcdef0123456789"
    assert p.topic_of(client_id) == bytes.fromhex("abcdef") != p.EVERYONE


def test_new_client_ids_are_16_hex_digits():
    for _ in range(20):
        client_id = p.new_client_id()
        assert re.fullmatch(r"[0-9a-f]{16}", client_id)
        assert p.topic_of(client_id) == bytes.fromhex(client_id[:6]) != p.EVERYONE


@pytest.mark.parametrize("odd", ["", "abc", "zzzzzzzzzzzzzzzz", "a b c d e f", "000000ffffffffff", "00000"])
def test_odd_ids_publish_to_everyone(odd):
    assert p.topic_of(odd) == p.EVERYONE


# -- frames on a socket: send and receive --------------------------------------------------------------

POLL_MS = 5000  # how long a test waits for a message it sent itself (inproc: microseconds, normally)


def inproc_pair(open_socket: Sockets, bound: int, connected: int) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    url = f"inproc://test-protocol-{uuid.uuid4().hex}"  # no port, no file: nothing to collide with
    a, b = open_socket(bound, None), open_socket(connected, None)
    a.bind(url)
    b.connect(url)
    return a, b


@pytest.mark.parametrize("frames_know_more", [True, False], ids=["cython-frames", "recv_multipart"])
@pytest.mark.parametrize(
    "frames",
    [[b""], [b"x"], [b"", b""], [b"a", b"", b"c"], [b"\x00" * 100_000, b"y"], [b"%d" % i for i in range(20)]],
    ids=["empty", "one", "two-empty", "delimiter", "large", "twenty"],
)
def test_receive_carries_each_message_whole(open_socket, monkeypatch, frames_know_more, frames):
    if frames_know_more and not p._FRAMES_KNOW_MORE:
        pytest.skip("this pyzmq backend's frames do not say whether more follow")
    monkeypatch.setattr(p, "_FRAMES_KNOW_MORE", frames_know_more)
    a, b = inproc_pair(open_socket, zmq.PAIR, zmq.PAIR)
    a.send_multipart(frames)
    a.send_multipart([b"next"])
    assert b.poll(POLL_MS)
    assert p.receive(b) == frames
    assert b.poll(POLL_MS)
    assert p.receive(b) == [b"next"]  # no frame of one message spills into the next
    assert not b.poll(0)
    with pytest.raises(zmq.Again):
        p.receive(b, zmq.NOBLOCK)


def test_receive_gives_a_routers_envelope_that_answers_through_it(open_socket):
    router, dealer = inproc_pair(open_socket, zmq.ROUTER, zmq.DEALER)
    dealer.send_multipart([b"", p.encode_request(p.Stats(1))])
    assert router.poll(POLL_MS)
    identity, *rest = p.receive(router)
    assert identity and rest == [b"", p.encode_request(p.Stats(1))]
    router.send_multipart([identity, b"", p.encode_reply(p.Failed(1, "value", "no"))])
    assert dealer.poll(POLL_MS)
    assert dealer.recv_multipart() == [b"", p.encode_reply(p.Failed(1, "value", "no"))]


def test_a_change_nested_in_batches_is_a_protocol_error_not_a_recursion_error():
    """A batch inside a batch was decoded before being refused: nested some 500 deep (msgpack still unpacks
    that), the replica thread died of a RecursionError instead of resynchronising on a ProtocolError."""
    change: Any = ["put", "t", "ns", [{"id": "a", "created": 1}]]
    for _ in range(450):  # 900 msgpack levels: msgpack's own limit is 1024
        change = ["batch", [change]]
    with pytest.raises(ProtocolError, match=r"changes\[0\]' must be a put or a del, not a batch"):
        p.change_from_wire(p.unpack_frozen(raw(change)))


def test_each_message_is_described_by_its_class_fields_in_order():
    # a description drifting from its class would pack fields under the wrong names
    for catalogue in (p.CHANGES, p.REQUESTS, p.REPLIES, p.PUBLISHED):
        for message in catalogue.by_tag.values():
            wire = [f.name for f in dataclasses.fields(message.cls) if f.compare]  # BatchWrite.packed is not sent
            assert [f.name for f in message.fields] == wire, message.tag
            assert catalogue.arity[message.tag] == 1 + len(wire)


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: type(c).__name__)
def test_change_to_wire_is_the_description_of_the_change(change):
    assert p.change_to_wire(change) == p.CHANGES.by_class[type(change)].to_wire(change)


def test_a_batch_of_ops_packed_as_they_were_made_encodes_as_its_description():
    ops = [
        p.Insert(0, "plans", "ns", "plan", [{"id": "plan_a"}], False),
        p.Update(0, "plans", "ns", "plan_a", {"x": 1}),
        p.Remove(0, "t", "ns", "a"),
    ]
    packed = p.BatchWrite(9, ops, tuple(p.encode_request(op) for op in ops))
    assert p.encode_request(packed) == p.pack(p.REQUESTS.to_wire(p.BatchWrite(9, ops))) == p.encode_request(p.BatchWrite(9, ops))


# -- an insert's answer, its records taken from the call's own --------------------------------------


def _frozen_shape(value: Any) -> Any:
    """``value`` with each map and list tagged by its exact type: equal only if frozen in the same places."""
    if isinstance(value, dict):
        return (type(value).__name__, [(k, _frozen_shape(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_frozen_shape(v) for v in value])
    return value


def _answer_to(payload: bytes, before: tuple = ()) -> bytes:
    """What the writer answers to an insert call: its records prepared (ids and created filled in, some
    stored as sent), packed once."""
    call = p.call_from(p.unpack_frozen(payload))
    insert = call.request
    tokens = iter(range(10**6))
    put = _table.prepare_insert(
        _table.Store(),
        insert.table,
        insert.namespace,
        "plan",
        insert.records,
        create=False,
        now=7,
        token=lambda n: f"{next(tokens):0{2 * n}x}",
    )
    return p.ok_bytes(insert.req_id, EPOCH, 9 + len(before), p.pack_change(put), None, [p.pack_change(c) for c in before])


inserted_records = st.lists(
    st.builds(
        lambda r, id, created, id_first: (
            {
                **({"id": id} if id_first and id else {}),
                **r,
                **({"id": id} if id and not id_first else {}),
                **({"created": created} if created is not None else {}),
            }
        ),
        plain_records.map(lambda r: {k: v for k, v in r.items() if k not in ("id", "created")}),
        st.none() | ids.map(lambda i: f"plan_{i}"),
        st.none() | st.integers(0, 2**40),
        st.booleans(),
    ),
    min_size=1,
    max_size=5,
    unique_by=lambda r: r.get("id") or id(r),
)


@settings(max_examples=300, deadline=None)
@given(records=inserted_records, before=st.lists(changes, max_size=2).map(tuple))
def test_an_insert_answer_decoded_with_the_calls_own_records_is_the_answer_decoded_whole(records, before):
    payload = p.encode_call(p.Call("c" * 16, 1e12, p.Insert(5, "plans", "ns", "plan", records, False), 3))
    answer = _answer_to(payload, before)
    whole = p.decode_reply(answer)
    with_own = p.decode_reply(answer, p.own_records(payload))
    assert with_own == whole
    assert _frozen_shape(with_own.change.records) == _frozen_shape(whole.change.records)


def test_records_stored_as_sent_are_taken_from_the_call_not_decoded_again():
    sent = [{"id": "plan_a", "amount": 1, "created": 5}, {"amount": 2}]  # the second gets an id and created
    payload = p.encode_call(p.Call("c" * 16, 1e12, p.Insert(5, "plans", "ns", "plan", sent, False), 3))
    own = p.own_records(payload)
    (first,) = own.values()  # (the second, without a str id and an int created, is no record an answer holds)
    reply = p.decode_reply(_answer_to(payload), own)
    assert reply.change.records[0] is first
    assert reply.change.records[1]["id"].startswith("plan_") and reply.change.records[1]["amount"] == 2


def _batch_answer(ops: list) -> bytes:
    """What the writer answers to a batch of these ops (prepared against an empty store)."""
    from tiger._core import WriterCore

    tokens = iter(range(10**6))
    core = WriterCore(EPOCH, heartbeat=0.5, now=0.0, token=lambda n: f"{next(tokens):0{2 * n}x}", info={"pid": 1})
    batch = p.BatchWrite(7, ops, tuple(p.encode_request(op) for op in ops))
    core.handle([b"peer", p.encode_call(p.Call("c" * 16, 1e12, batch, -1))], 1.0, 100.0)
    core.commit(1.0)
    return core.take_outbox().replies[-1][-1]


@settings(max_examples=200, deadline=None)
@given(records=inserted_records, deletes=st.integers(0, 2))
def test_a_batch_answer_decoded_with_its_inserts_own_records_is_the_answer_decoded_whole(records, deletes):
    ops: list = [p.Insert(0, "plans", "ns", "plan", [r], False) for r in records]
    ops += [p.Remove(0, "plans", "ns", f"plan_gone{i}") for i in range(deletes)]
    ops.append(p.Insert(0, "prices", "ns2", "price", [{"id": "price_1", "n": 1, "created": 3}], False))  # stored as sent
    answer = _batch_answer(ops)
    own = p.own_batch_records(tuple(p.encode_request(op) for op in ops))
    whole = p.decode_reply(answer)
    assert type(whole) is p.Ok, whole
    with_own = p.decode_reply(answer, own)
    assert with_own == whole and _frozen_shape(with_own.change) == _frozen_shape(whole.change)
    price = next(r for part in with_own.change.changes if type(part) is Put for r in part.records if r["id"] == "price_1")
    assert any(price is mine for mine in own.values())  # taken from the call, not decoded again


def _decoded_or_error(data: bytes, own: Any = None) -> Any:
    try:
        return _frozen_shape(p.decode_reply(data, own))
    except ProtocolError as e:
        return str(e)


@pytest.mark.parametrize("reply", [d for k, d in ENCODED if k == "reply"], ids=lambda d: d[:12].hex())
def test_a_reply_cut_changed_or_extended_decodes_the_same_with_the_calls_own_records(reply):
    sent = [{"id": "plan_a", "created": 1}, {"id": "plan_b", "created": 2}]
    payload = p.encode_call(p.Call("c" * 16, 1e12, p.Insert(5, "plans", "ns", "plan", sent, False), 3))
    own = p.own_records(payload)
    ops = [p.Insert(0, "plans", "ns", "plan", [r], False) for r in sent] + [p.Remove(0, "plans", "ns", "plan_a")]
    batch_own = p.own_batch_records(tuple(p.encode_request(op) for op in ops))
    for data, mine in ((reply, own), (_answer_to(payload), own), (_batch_answer(ops), batch_own)):
        variants = [data[:cut] for cut in range(len(data))] + [data + b"\x00", data + data]
        variants += [data[:i] + bytes([b]) + data[i + 1 :] for i in range(len(data)) for b in (0x00, 0xC0, 0xC1, data[i] ^ 1)]
        for bad in variants:
            assert _decoded_or_error(bad, mine) == _decoded_or_error(bad)


@pytest.mark.parametrize("record", [{"id": "plan_a", "created": True}, {"id": "plan_a", "created": 1.5}, {"amount": 1}])
def test_an_answer_echoing_a_record_without_an_int_created_is_refused_with_the_calls_own_records_too(record):
    # A review: an answer decoded into its Ok at once took the records of the call's own as they were,
    # unchecked, where the whole decode refuses a record without a str id and an int created (a bool is no
    # int): a writer echoing one was answered Ok with own records, ProtocolError without. The client's own
    # checks refuse such a record before it is sent; the decode no longer leans on them.
    insert = p.Insert(5, "plans", "ns", "plan", [record], False)
    own = p.own_records(p.encode_call(p.Call("c" * 16, 1e12, insert, 3)))  # (every record: not only those stored as sent)
    batch_own = p.own_batch_records((p.encode_request(insert),))
    answers = [
        p.pack(["ok", 5, EPOCH, 1, ["put", "plans", "ns", [record]], None, []]),
        p.pack(["ok", 7, EPOCH, 1, ["batch", [["put", "plans", "ns", [record]]]], [0], []]),
    ]
    for answer, mine in zip(answers, (own, batch_own), strict=True):
        with pytest.raises(ProtocolError, match="must hold records"):
            p.decode_reply(answer)
        with pytest.raises(ProtocolError, match="must hold records"):
            p.decode_reply(answer, mine)


def test_own_records_are_none_for_any_call_but_an_insert_or_a_batch_with_one():
    assert p.own_records(p.encode_call(p.Call("c" * 16, 1e12, p.Remove(5, "plans", "ns", "plan_a"), 3))) is None
    assert p.own_batch_records((p.encode_request(p.Remove(0, "plans", "ns", "plan_a")),)) is None
    assert p.own_records(b"\xc1") is None


def test_only_records_the_writer_stores_as_sent_are_decoded_from_the_call():
    # a review: records without an id or a created (the common insert) were decoded from the call for nothing
    # (the writer fills them in, so their answer's bytes never match): the common insert_many got slower
    def own_of(records: list) -> Any:
        insert = p.Insert(5, "plans", "ns", "plan", records, False)
        return p.own_records_of(insert, p.encode_call(p.Call("c" * 16, 1e12, insert, 3)))

    assert own_of([{"amount": 1}, {"id": "plan_a", "amount": 2}, {"amount": 3, "id": "plan_b", "created": 1}]) is None
    own = own_of([{"amount": 1}, {"id": "plan_a", "created": 1, "amount": 2}])
    assert list(own.values()) == [{"id": "plan_a", "created": 1, "amount": 2}]
    ops = [
        p.Insert(0, "plans", "ns", "plan", [{"amount": 1}], False),
        p.Insert(0, "t", "ns", None, [{"id": "x", "created": 2}], False),
    ]
    batch = p.BatchWrite(6, ops, tuple(p.encode_request(op) for op in ops))
    assert list(p.own_records_of(batch, b"").values()) == [{"id": "x", "created": 2}]


def test_a_stats_request_of_before_its_checksum_field_is_read_as_asking_for_it():
    """Stats gained a last field (``checksum``: False for a probe, answered at once): an array without it, as
    a client of before sends, asks for the checksum, and one asking for it is sent as before (a writer of
    before reads it); more fields than the message has are refused, naming how many it takes."""
    assert p.decode_request(p.pack(["stats", 7])) == p.Stats(7, checksum=True)
    assert p.unpack(p.encode_request(p.Stats(7))) == ["stats", 7]
    assert p.unpack(p.encode_request(p.Stats(7, checksum=False))) == ["stats", 7, False]
    with pytest.raises(ProtocolError, match="'stats' has 3 fields, expected 1 or 2"):
        p.decode_request(p.pack(["stats", 7, True, 1]))
