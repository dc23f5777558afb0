"""Which values a record may hold, end to end: every kind accepted comes back the same through a real
writer's restart (its log, then its snapshot) and through ``tiger dump`` and ``tiger load``; every kind
refused is refused naming the field, by the client and by the writer alike, and changes nothing.
Real writer processes; each test is named after what broke."""

from __future__ import annotations

import collections
import datetime
import decimal
import math
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from test_table import STORABLE_VALUES, Color, Money, nested

import tiger
from tiger import _protocol as p
from tiger._table import MAX_DEPTH, check_record

TIGER = [sys.executable, "-m", "tiger"]
EXT = msgpack.ExtType(5, b"\x01\x02")
Point = collections.namedtuple("Point", "x y")


class Name(str):
    pass


class Blob(bytes):
    pass


# Every kind of value a record may hold (the README's list, and what is stored as one of them): each
# goes into a record of its own, as field "x".
ACCEPTED: dict[str, Any] = {
    **STORABLE_VALUES,
    "false": False,
    "negative": -1,
    "negative-zero": -0.0,
    "inf": math.inf,
    "-inf": -math.inf,
    "nan": math.nan,
    "subnormal": 5e-324,
    "float-max": sys.float_info.max,
    "str-unicode": "h\u00e9llo \u2603 \U0001d11e \u2028 \x00",
    "bytes-empty": b"",
    "bytes-all": bytes(range(256)),
    "list-empty": [],
    "list-nested": [1, [2.5, [None, "s", b"b"]]],
    "tuple": (1, "a", (2,)),
    "namedtuple": Point(1, 2),
    "dict-empty": {},
    "dict-like-a-tag": {"$bytes": "not base64 at all"},
    "dict-like-a-dict-tag": {"$dict": {"$bytes": "AA=="}},
    "ordered-dict": collections.OrderedDict([("b", 1), ("a", 2)]),
    "defaultdict": collections.defaultdict(list, {"a": [1]}),
    "mapping-proxy": types.MappingProxyType({"a": 1}),
}

# Every kind refused, with the error and the start of what it says about field "x" of a record
REFUSED: dict[str, tuple[Any, type[Exception], str]] = {
    "ExtType": (EXT, TypeError, "['x']: ExtType is not storable"),
    "ExtType-in-a-list": ([1, EXT], TypeError, "['x'][1]: ExtType is not storable"),
    "ExtType-in-a-dict": ({"a": [{"b": EXT}]}, TypeError, "['x']['a'][0]['b']: ExtType is not storable"),
    "ExtType-in-a-tuple": ((EXT,), TypeError, "['x'][0]: ExtType is not storable"),
    "Timestamp": (msgpack.Timestamp(1, 2), TypeError, "['x']: Timestamp is not storable"),
    "Timestamp-in-a-list": ([msgpack.Timestamp(1, 2)], TypeError, "['x'][0]: Timestamp is not storable"),
    "datetime": (datetime.datetime(2024, 1, 1), TypeError, "['x']: datetime is not storable"),
    "date": (datetime.date(2024, 1, 1), TypeError, "['x']: date is not storable"),
    "set": ({1}, TypeError, "['x']: set is not storable"),
    "frozenset": (frozenset({1}), TypeError, "['x']: frozenset is not storable"),
    "bytearray": (bytearray(b"x"), TypeError, "['x']: bytearray is not storable"),
    "memoryview": (memoryview(b"x"), TypeError, "['x']: memoryview is not storable"),
    "complex": (1j, TypeError, "['x']: complex is not storable"),
    "Decimal": (decimal.Decimal(1), TypeError, "['x']: Decimal is not storable"),
    "object": (object(), TypeError, "['x']: object is not storable"),
    "int-over-u64": (2**64, ValueError, "['x']: int 18446744073709551616 does not fit in 64 bits"),
    "int-under-i64": (-(2**63) - 1, ValueError, "['x']: int -9223372036854775809 does not fit in 64 bits"),
    "IntEnum": (Color.RED, TypeError, "['x']: Color is a subclass of int"),
    "str-subclass": (Name("a"), TypeError, "['x']: Name is a subclass of str"),
    "bytes-subclass": (Blob(b"a"), TypeError, "['x']: Blob is a subclass of bytes"),
    "float-subclass": (Money(1.0), TypeError, "['x']: Money is a subclass of float"),
    "int-key": ({1: "a"}, TypeError, "['x']: key 1 is a int; record keys must be str"),
    "bytes-key": ({b"k": "a"}, TypeError, "['x']: key b'k' is a bytes; record keys must be str"),
    "str-subclass-key": ({Name("k"): "a"}, TypeError, "['x']: key 'k' is a Name; record keys must be str"),
    "tuple-key": ({(1,): "a"}, TypeError, "['x']: key (1,) is a tuple; record keys must be str"),
    "too-deep": (nested(MAX_DEPTH), ValueError, "nested deeper than 32 levels"),
    "lone-surrogate": ("\udcff", ValueError, "['x']: a str UTF-8 cannot encode"),
}


@pytest.fixture
def data_dir(tmp_path) -> Iterator[str]:
    yield str(tmp_path / "data")


def stored(client: tiger.Client) -> dict[str, bytes]:
    """Every record of table "kinds" as packed bytes, by id: equal bytes for equal records, NaN and the sign
    of a zero included (Python's == says neither)."""
    client.sync()
    return {r["id"]: p.pack(r) for r in client.table("kinds").all()}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TIGER, *args], capture_output=True, text=True, timeout=60)


def test_an_ExtType_value_was_stored_and_a_dump_load_or_a_restart_changed_every_kind_it_holds(data_dir, tmp_path):
    # A user trial: plans.insert({"x": msgpack.ExtType(5, b"..")}) was accepted (an ExtType is a tuple), and
    # tiger dump wrote it as a list. Every kind accepted must come back the same, every kind refused change nothing.
    names = list(ACCEPTED)
    half = len(names) // 2
    server = tiger.serve(data=data_dir, fsync="always")
    try:
        with tiger.connect(server.url) as client:
            kinds = client.table("kinds")
            for name in names[:half]:
                record = kinds.insert({"id": name, "x": ACCEPTED[name]})
                assert p.pack(record["x"]) == p.pack(ACCEPTED[name]), name  # a tuple as a list, a mapping as a dict
            compacted = cli("compact", "--url", server.url)  # the first half in the snapshot, the rest in the log
            assert compacted.returncode == 0, compacted.stderr
            kinds.insert_many([{"id": name, "x": ACCEPTED[name]} for name in names[half:]])
            before = stored(client)
            assert set(before) == set(names)
            seq = client.stats()["seq"]
            for name, (value, error, message) in REFUSED.items():
                with pytest.raises(error) as raised:
                    kinds.insert({"id": name, "x": value})
                assert message in str(raised.value) and "record[" in str(raised.value), (name, raised.value)
                with pytest.raises(error) as raised:
                    kinds.update("none", {"x": value})
                assert message in str(raised.value), (name, raised.value)
            assert stored(client) == before and client.stats()["seq"] == seq
    finally:
        server.stop()
    server = tiger.serve(data=data_dir)  # replays the snapshot, then the log
    try:
        with tiger.connect(server.url) as client:
            assert stored(client) == before
        dump = cli("dump", "--url", server.url)
        assert dump.returncode == 0, dump.stderr
    finally:
        server.stop()
    seed = tmp_path / "dump.jsonl"
    seed.write_text(dump.stdout, encoding="utf-8")
    server = tiger.serve()
    try:
        loaded = cli("load", "--url", server.url, str(seed))
        assert loaded.returncode == 0, loaded.stderr
        with tiger.connect(server.url) as client:
            assert stored(client) == before
    finally:
        server.stop()


def test_a_raw_message_carrying_an_ExtType_was_applied_by_the_writer(open_socket):
    # A hostile client sends what tiger's client refuses to: the writer refuses it as the client does, names
    # the field, changes nothing and serves on.
    with tiger.serve() as own_writer, tiger.connect(own_writer.url) as client:
        client.table("t").insert({"id": "a", "x": 1})
        claim = p.OnceClaim(100, "k", "raw", "by", "global")
        sock = open_socket(zmq.DEALER, own_writer.url)

        def call(request: p.Request) -> Any:
            sock.send(p.encode_call(p.Call("raw", time.time() + 30, request)))
            assert sock.poll(10_000), f"no answer to {request}"
            return p.decode_reply(sock.recv())

        assert type(call(claim)) is p.Ok
        client.sync()
        before, seq = client.replica.store.content(), client.stats()["seq"]

        def expected(value: Any, where: str = "record") -> str:
            with pytest.raises((TypeError, ValueError)) as raised:
                check_record({"id": "b", "x": value}, where)
            return str(raised.value)  # what the client says of it

        ts = msgpack.Timestamp(1, 2)
        refused = [
            (p.Insert(1, "t", "global", None, [{"id": "b", "x": EXT}], False), "type", expected(EXT)),
            (p.Insert(2, "t", "global", None, [{"id": "b", "x": [1, {"y": EXT}]}], False), "type", expected([1, {"y": EXT}])),
            (p.Insert(3, "t", "global", None, [{"id": "b", "x": ts}], False), "type", expected(ts)),
            (p.Insert(4, "t", "global", None, [{"id": "b", "x": {b"k": 1}}], False), "type", expected({b"k": 1})),
            (p.Insert(5, "t", "global", None, [{"id": "b"}, {"id": "c", "x": EXT}], False), "type", "records[1]['x']: ExtType"),
            (p.Insert(6, "t", "global", None, [{"id": EXT}], False), "type", "record['id']: ExtType is not storable"),
            (p.Update(7, "t", "global", "a", {"x": EXT}), "type", expected(EXT, "changes")),
            (p.OnceFinish(8, "k", "raw", "value", [EXT], "global"), "type", "value[0]: ExtType is not storable"),
            (
                p.BatchWrite(9, [p.Insert(0, "t", "global", None, [{"id": "b", "x": EXT}], False)]),
                "type",
                "operation 0 (insert t): record['x']: ExtType is not storable",
            ),
            (p.Insert(10, EXT, "global", None, [{"id": "b"}], False), "protocol", "field 'table' must be str, not ExtType"),
            (p.Insert(11, "t", EXT, None, [{"id": "b"}], False), "protocol", "field 'namespace' must be str, not ExtType"),
            (p.Insert(12, "t", "global", EXT, [{"id": "b"}], False), "protocol", "field 'prefix' must be str, not ExtType"),
            (p.Update(13, "t", "global", EXT, {"x": 1}), "protocol", "field 'id' must be str, not ExtType"),
            (p.Remove(14, "t", "global", EXT), "protocol", "field 'id' must be str, not ExtType"),
            (p.OnceClaim(15, EXT, "raw", "by", "global"), "protocol", "field 'key' must be str, not ExtType"),
            (p.OnceClaim(16, "k2", EXT, "by", "global"), "protocol", "field 'client_id' must be str, not ExtType"),
            (p.OnceClaim(17, "k2", "raw", EXT, "global"), "protocol", "field 'by' must be str, not ExtType"),
            (p.Drop(18, EXT), "protocol", "field 'namespace' must be str, not ExtType"),
        ]
        for request, kind, message in refused:
            answer = call(request)
            assert type(answer) is p.Failed and answer.kind == kind, (request, answer)
            assert message in answer.message, (request, answer.message, message)
        assert own_writer.running
        client.sync()
        assert client.replica.store.content() == before and client.stats()["seq"] == seq
        client.table("t").insert({"id": "d"})  # and it serves on
