"""The writer survives bad input: garbage over raw zmq sockets, then a normal client.

Every answerable message gets a ``Failed`` reply (decoded with the protocol's
own ``decode_reply``) within a bounded poll, of the kind and naming what the test
expects; each test then asserts itself that the writer is alive, that its state
(epoch, seq, store checksum, record counts, the records themselves) is what it was
before the garbage, and that a normal client can still write and read back. The
normal client never sends any of this: it validates before sending, so these
go over raw pyzmq sockets, as a buggy or hostile peer would send them. Every raw
socket comes from the ``open_socket`` fixture, which closes it after the test,
passed or failed.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq
from _util import Sockets, read_line
from zmq.utils.monitor import recv_monitor_message

import tiger
from tiger import _protocol as p
from tiger._errors import ProtocolError

TIMEOUT_MS = 5000
NS = "garbage"
SEED_ID = "plan_seed1"


def raw(obj: Any) -> bytes:
    """msgpack bytes with no checks at all (bin type for bytes), as any peer could send them."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tiger.Server]:
    with tiger.serve() as server:
        yield server


@pytest.fixture(scope="module")
def seeded(server: tiger.Server) -> tiger.Server:
    """A writer holding a few records, so that 'unchanged' means something."""
    with tiger.connect(server.url) as client, tiger.namespace(NS):
        plans = client.table("plans", prefix="plan")
        plans.insert({"id": SEED_ID, "amount": 500, "meta": {"tier": "gold"}})
        plans.insert({"amount": 700, "tags": ["a", "b"]})
        client.table("things").insert({"x": 1})
        with tiger.namespace("global"):
            plans.insert({"amount": 1})
    return server


def writer_state(url: str) -> dict[str, Any]:
    """What garbage must not change, as a normal client sees it."""
    with tiger.connect(url) as client:
        stats = client.stats()
        records = {t: {ns: client.table(t).all(ns) for ns in stats["tables"][t]} for t in client.tables()}
    return {
        "epoch": stats["epoch"],
        "seq": stats["seq"],
        "checksum": stats["checksum"],
        "tables": stats["tables"],
        "records": records,
    }


def assert_still_serving(url: str) -> None:
    """A normal client can write and read back."""
    with tiger.connect(url) as client, tiger.namespace(f"after-garbage-{uuid.uuid4().hex[:8]}"):
        notes = client.table("notes", prefix="note")
        note = notes.insert({"text": "still here"})
        assert notes[note["id"]] == note
        assert notes.count() == 1
        notes.clear_namespace(tiger.current_namespace())


class Writer:
    """The seeded writer, with its state as it was before the test's garbage."""

    def __init__(self, server: tiger.Server) -> None:
        self.server = server
        self.url = server.url
        self.before = writer_state(server.url)
        self.checked = False

    def assert_unchanged(self) -> None:
        """The writer process is alive, its state is what it was before, and it still serves."""
        self.checked = True
        assert self.server.running, "the writer process died"
        after = writer_state(self.url)
        assert after["checksum"] == self.before["checksum"], "the store's content changed"
        assert after == self.before
        assert_still_serving(self.url)


@pytest.fixture
def unchanged(seeded: tiger.Server) -> Iterator[Writer]:
    """The seeded writer. A test calls ``assert_unchanged()`` after its garbage; for one that does not,
    this fixture does after the test."""
    writer = Writer(seeded)
    yield writer
    if not writer.checked:
        writer.assert_unchanged()


class Peer:
    """A raw socket to the writer, sending one payload frame after a fixed envelope."""

    def __init__(self, sock: zmq.Socket, envelope: tuple[bytes, ...] = (), writer: Writer | None = None) -> None:
        self.sock = sock
        self.envelope = envelope
        self.writer = writer

    def ask(self, payload: bytes) -> p.Reply:
        self.sock.send_multipart([*self.envelope, payload])
        assert self.sock.poll(TIMEOUT_MS), f"no answer within {TIMEOUT_MS} ms to {payload[:60]!r}"
        frames = self.sock.recv_multipart()
        assert frames[:-1] == list(self.envelope), "the writer must echo the envelope it was sent"
        return p.decode_reply(frames[-1])

    def refused(self, payload: bytes, kind: str, req_id: int | None = None, match: str = "") -> p.Failed:
        reply = self.ask(payload)
        assert type(reply) is p.Failed, reply
        assert (reply.kind, reply.req_id) == (kind, req_id), reply
        assert re.search(match, reply.message), reply.message
        assert len(reply.message) < 1000, "an error reply must not echo a huge input"
        return reply

    def assert_writer_unchanged(self) -> None:
        assert self.writer is not None, "a peer made without the writer it talks to"
        self.writer.assert_unchanged()


# How a peer can frame a request: a DEALER (what tiger's client uses), a REQ (adds an empty
# delimiter frame), a DEALER sending the delimiter itself, and a DEALER sending extra frames,
# which the writer takes for envelope and echoes back.
SHAPES: dict[str, tuple[int, tuple[bytes, ...]]] = {
    "dealer": (zmq.DEALER, ()),
    "req": (zmq.REQ, ()),
    "dealer-with-delimiter": (zmq.DEALER, (b"",)),
    "dealer-multiframe": (zmq.DEALER, (b"frame-1", p.encode_request(p.ClearTable(1, "plans", None)), b"")),
}


@pytest.fixture(params=list(SHAPES))
def peer(request: pytest.FixtureRequest, unchanged: Writer, open_socket: Sockets) -> Peer:
    kind, envelope = SHAPES[request.param]
    return Peer(open_socket(kind, unchanged.url), envelope, unchanged)


# -- garbage of every kind, from every shape of peer ----------------------------------------


def test_random_bytes_get_a_protocol_error(peer):
    # Seeded: the same 150 payloads every run, so this is deterministic (a smoke test of the writer's whole
    # path on junk; the decoders' own fuzzing, thousands of examples a run, is in test_protocol.py).
    rng = random.Random(20240601)
    prefixes = [b"", b"\x96\xa6insert", b"\x97\xa6insert\x01", b"\x92\xa5stats", b"\x94\xa1c", b"\xff"]
    for i in range(150):
        payload = prefixes[i % len(prefixes)] + rng.randbytes(rng.randrange(1, 300))
        reply = peer.refused(payload, "protocol", req_id=p.request_id_of(_unpacked(payload)))
        assert reply.message
    peer.assert_writer_unchanged()


def _unpacked(payload: bytes) -> Any:
    try:
        return p.unpack(payload)
    except ProtocolError:
        return None


def test_empty_frame_gets_a_protocol_error(peer):
    peer.refused(b"", "protocol", match="not a msgpack message")
    peer.assert_writer_unchanged()


def test_truncated_msgpack_gets_a_protocol_error(peer):
    insert = p.encode_request(p.Insert(5, "plans", NS, "plan", [{"amount": 1, "meta": {"k": [1, 2]}}], False))
    for cut in range(len(insert)):
        peer.refused(insert[:cut], "protocol", match="not a msgpack message")
    peer.assert_writer_unchanged()


@pytest.mark.parametrize("trailer", [b"\x00", b"\xc1", b"\x91\xc0"], ids=repr)
def test_a_valid_insert_with_trailing_garbage_is_refused_not_applied(peer, trailer):
    insert = p.encode_request(p.Insert(6, "plans", NS, "plan", [{"amount": 1}], False))
    peer.refused(insert + trailer, "protocol", match="not a msgpack message")
    peer.refused(insert + insert, "protocol", match="not a msgpack message")
    peer.assert_writer_unchanged()  # not applied: the checksum and seq are what they were


@pytest.mark.parametrize(
    ("payload", "req_id", "match"),
    [
        (raw(1), None, "must be a msgpack array, not int"),
        (raw("stats"), None, "must be a msgpack array, not str"),
        (raw(None), None, "must be a msgpack array"),
        (raw({"command": "stats", "req_id": 1}), None, "must be a msgpack array, not dict"),
        (raw([]), None, "non-empty"),
        (raw([[1], 2]), 2, "unknown request: tag a list"),
        (raw([{"insert": 1}, 3]), 3, "unknown request: tag a dict"),
        (raw([None]), None, "unknown request"),
        (b"\x91" * 100_000 + b"\xc0", None, "not a msgpack message"),  # nested past msgpack's stack
        (b"\xdd\xff\xff\xff\xff", None, "not a msgpack message"),  # an array header claiming 4 G items
    ],
    ids=["int", "str", "nil", "map", "empty-array", "list-tag", "map-tag", "nil-tag", "deep", "huge-header"],
)
def test_valid_msgpack_of_the_wrong_shape_gets_a_protocol_error(peer, payload, req_id, match):
    peer.refused(payload, "protocol", req_id, match)
    peer.assert_writer_unchanged()


@pytest.mark.parametrize(
    ("message", "req_id", "match"),
    [
        (["drop_all", 7], 7, r"unknown request: tag 'drop_all'"),
        (["INSERT", 8, "plans", NS, None, [{}], False], 8, "unknown request: tag 'INSERT'"),
        ([b"stats", 9], 9, r"unknown request: tag b'stats'"),  # bin, not str
        (["ok", 10, "epoch", 1, None, None], 10, "unknown request: tag 'ok'"),  # a reply sent as a request
        (["x" * 1_000_000, 11], 11, r"\(1000000 characters\)"),  # not echoed back whole
        (["stats", 12, True, "extra"], 12, "request 'stats' has 3 fields, expected 1 or 2"),
        (["insert", 13, "plans"], 13, "request 'insert' has 2 fields, expected 6"),
        (["delete"], None, "request 'delete' has 0 fields, expected 4"),
        (["call", "c", 1e18], None, "call has 2 fields, expected 3"),
        (["call", "c", 1e18, ["beat", "c"]], None, "a call cannot carry a beat or a bye"),
        (["call", "c", 1e18, ["nope", 14]], 14, "unknown request: tag 'nope'"),  # answered to the inner req_id
    ],
    ids=[
        "unknown",
        "upper-case",
        "bin-tag",
        "reply-tag",
        "huge-tag",
        "arity-plus",
        "arity-minus",
        "tag-only",
        "call-arity",
        "call-beat",
        "call-unknown",
    ],
)
def test_unknown_commands_and_wrong_arity_get_a_protocol_error(peer, message, req_id, match):
    peer.refused(raw(message), "protocol", req_id, match)
    peer.assert_writer_unchanged()


@pytest.mark.parametrize(
    ("message", "req_id", "field"),
    [
        (["stats", "13"], None, "req_id"),
        (["stats", True], None, "req_id"),  # a bool is not an int
        (["sync", 1.0], None, "req_id"),
        (["hello", 14, None], 14, "client_id"),
        (["insert", 15, 5, NS, None, [{}], False], 15, "table"),
        (["insert", 16, 2**64 - 1, NS, None, [{}], False], 16, "table"),  # the largest msgpack int, as a name
        (["insert", 17, "plans", b"garbage", None, [{}], False], 17, "namespace"),
        (["insert", 18, "plans", NS, 5, [{}], False], 18, "prefix"),
        (["insert", 19, "plans", NS, "plan", {"amount": 1}, False], 19, "records"),
        (["insert", 20, "plans", NS, "plan", [{}], 1], 20, "create"),  # an int is not a bool
        (["update", 21, "plans", NS, SEED_ID, [["amount", 1]]], 21, "changes"),
        (["update", 22, "plans", NS, None, {"amount": 1}], 22, "id"),
        (["delete", 23, "plans", NS, 123], 23, "id"),
        (["clear", 24, "plans", 5], 24, "namespace"),  # not "clear every namespace"
        (["clear", 25, ["plans"], None], 25, "table"),
        (["snapshot", "26"], None, "req_id"),
        (["beat", 27], None, "client_id"),  # a well-formed beat is never answered; a bad one is
        (["bye", None], None, "client_id"),
        (["compact", "28"], None, "req_id"),
        (["drop_ns", 29, 5], 29, "namespace"),
        (["once_claim", 30, 5, "c", "by", NS], 30, "key"),
        (["once_claim", 31, "k", "c", None, NS], 31, "by"),
        (["once_finish", 32, "k", "c", "done", None, NS], 32, "outcome"),  # not one of ONCE_OUTCOMES
        (["once_finish", 33, "k", "c", 5, None, NS], 33, "outcome"),
        (["once_finish", 34, "k", "c", "value", None, None], 34, "namespace"),
        (["call", 5, 1e18, ["stats", 35]], 35, "client_id"),
        (["call", "c", "soon", ["stats", 36]], 36, "expires"),
        (["call", "c", 1e18, ["delete", 37, "plans", NS, None]], 37, "id"),  # the request inside
    ],
    ids=lambda v: repr(v)[:40],
)
def test_known_commands_with_wrong_field_types_get_a_protocol_error_naming_the_field(peer, message, req_id, field):
    peer.refused(raw(message), "protocol", req_id, rf"\b{field}\b")
    peer.assert_writer_unchanged()


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _insert(
    req_id: int, records: list[Any], prefix: Any = "plan", table: Any = "plans", ns: Any = NS, create: bool = False
) -> bytes:
    return raw(["insert", req_id, table, ns, prefix, records, create])


@pytest.mark.parametrize(
    ("payload", "kind", "req_id", "match"),
    [
        (_insert(30, [{b"k": 1}]), "type", 30, r"record: key b'k' is a bytes"),
        (_insert(31, [{"meta": {b"k": 1}}]), "type", 31, r"record\['meta'\]: key b'k'"),
        (_insert(32, [{1: "x"}]), "protocol", None, "map key"),  # refused before it is even a request
        (_insert(33, [{"at": msgpack.Timestamp(1, 0)}]), "type", 33, r"record\['at'\]: Timestamp"),
        (_insert(34, [{"created": "yesterday"}]), "type", 34, r"record\['created'\]"),
        (_insert(35, [{"id": 5}]), "type", 35, r"record\['id'\]"),
        (_insert(36, [{"id": ""}]), "value", 36, r"record\['id'\]"),
        (_insert(37, [{"id": "cus_1"}]), "value", 37, r"'cus_1' must start with 'plan_'"),
        (_insert(38, [{}], prefix="plan_"), "value", 38, "prefix"),
        (_insert(39, [{}], prefix=""), "value", 39, "prefix"),
        (_insert(40, [{}], prefix="p" * 51), "value", 40, "prefix"),
        (_insert(41, []), "value", 41, "records must not be empty"),
        (_insert(42, [1]), "type", 42, "must be a mapping"),
        (_insert(43, [{"id": "plan_a"}, {"id": "plan_a"}]), "value", 43, "appears twice"),
        (_insert(44, [{}], table=""), "value", 44, "table"),
        (_insert(45, [{}], table="t" * 201), "value", 45, "table"),
        (_insert(46, [{}], ns=""), "value", 46, "namespace"),
        (_insert(47, [{"deep": _nested(40)}]), "value", 47, "nested deeper"),
        # all or none: a batch whose second record is bad stores neither, huge int or not
        (_insert(48, [{"n": 2**64 - 1, "m": -(2**63)}, {"id": 7}]), "type", 48, r"records\[1\]\['id'\]"),
        (_insert(49, [{"id": SEED_ID}], create=True), "already_exists", 49, "already exists"),
        # a create conflict in a batch: the new first record is not stored either
        (_insert(57, [{"id": "plan_new57"}, {"id": SEED_ID}], create=True), "already_exists", 57, SEED_ID),
        # a call past its deadline is refused unapplied (a delete of a seeded record, were it applied)
        (raw(["call", "c", 1.0, ["delete", 58, "plans", NS, SEED_ID]]), "expired", 58, "after its deadline"),
        (raw(["update", 50, "plans", NS, SEED_ID, {"id": "plan_other"}]), "value", 50, r"changes\['id'\]"),
        (raw(["update", 51, "plans", NS, SEED_ID, {"created": 1}]), "value", 51, r"changes\['created'\]"),
        (raw(["update", 52, "plans", NS, SEED_ID, {b"amount": 1}]), "type", 52, "key b'amount'"),
        (raw(["update", 53, "plans", NS, "plan_missing", {"amount": 1}]), "not_found", 53, "plan_missing"),
        (raw(["update", 54, "plans", "", SEED_ID, {"amount": 1}]), "value", 54, "namespace"),
        (raw(["delete", 55, "plans", NS, ""]), "value", 55, "id"),
        (raw(["clear", 56, "", None]), "value", 56, "table"),
        (raw(["update", 2**64 - 1, "plans", NS, SEED_ID, {"id": "x"}]), "value", 2**64 - 1, "id"),  # largest req_id
        (raw(["update", -(2**63), "plans", NS, SEED_ID, {"id": "x"}]), "value", -(2**63), "id"),
    ],
    ids=lambda v: repr(v)[:50] if isinstance(v, bytes) else None,
)
def test_valid_commands_with_invalid_arguments_are_refused_by_the_table_rules(peer, payload, kind, req_id, match):
    peer.refused(payload, kind, req_id, match)
    peer.assert_writer_unchanged()  # what makes "stores neither" and "all or none" above true


# -- multi-frame and oversized messages, from a DEALER ----------------------------------------


def test_a_request_inside_the_envelope_is_not_executed(unchanged, open_socket):
    dealer = open_socket(zmq.DEALER, unchanged.url)
    clear = p.encode_request(p.ClearTable(60, "plans", None))
    peer = Peer(dealer, (clear, clear), unchanged)
    peer.refused(b"\xc1", "protocol", match="not a msgpack message")
    peer.refused(p.encode_request(p.Insert(61, "plans", NS, "plan", [{"id": "x"}], False)), "value", 61, "plan_")
    peer.assert_writer_unchanged()  # the clears in the envelope cleared nothing


def test_any_envelope_gets_its_answer(unchanged, open_socket):
    for envelope in [(), (b"",), (b"a",), (b"a", b"", b"b"), tuple(b"%d" % i for i in range(50)), (b"\x00" * 10_000,)]:
        reply = Peer(open_socket(zmq.DEALER, unchanged.url), envelope).ask(p.encode_request(p.Stats(62)))
        assert type(reply) is p.Ok and reply.req_id == 62, reply
    unchanged.assert_unchanged()


def test_an_oversized_envelope_is_dropped_and_the_writer_goes_on(unchanged, open_socket):
    # frames before the payload are echoed in the answer: megabytes of them are dropped, not echoed
    dealer = open_socket(zmq.DEALER, unchanged.url)
    dealer.send_multipart([b"x" * (2 * 1024 * 1024), p.encode_request(p.Stats(64))])
    # the writer handles one connection's messages in order: the answer to the next one, on the same
    # connection, comes after any answer to the oversized one, so no waiting for an answer not to come
    reply = Peer(dealer).ask(p.encode_request(p.Stats(65)))
    assert type(reply) is p.Ok and reply.req_id == 65, reply
    assert not dealer.poll(0)
    unchanged.assert_unchanged()


def test_a_message_of_exactly_max_message_bytes_is_answered(unchanged, open_socket):
    # the largest message the writer accepts: an unknown tag filling MAX_MESSAGE, answered briefly
    tag_length = p.MAX_MESSAGE - len(raw(["", 63])) - 4  # str32 header: 5 bytes, not the fixstr's 1
    payload = raw(["x" * tag_length, 63])
    assert len(payload) == p.MAX_MESSAGE
    Peer(open_socket(zmq.DEALER, unchanged.url)).refused(payload, "protocol", 63, r"unknown request: tag 'x+'\.\.\.")
    unchanged.assert_unchanged()


def test_an_oversized_message_drops_that_connection_only(unchanged, open_socket):
    bystander = Peer(open_socket(zmq.DEALER, unchanged.url))
    assert type(bystander.ask(p.encode_request(p.Stats(70)))) is p.Ok  # connected before the oversized message

    dealer = open_socket(zmq.DEALER, None)
    monitor = open_socket.monitor(dealer, zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    dealer.connect(unchanged.url)
    wait_for_event(monitor, zmq.EVENT_CONNECTED)
    dealer.send(b"\xc1" + b"\x00" * p.MAX_MESSAGE)  # one byte over the writer's MAXMSGSIZE
    wait_for_event(monitor, zmq.EVENT_DISCONNECTED)  # libzmq at the writer hung up: no reply is coming
    assert not dealer.poll(0)
    # the socket reconnects by itself, and the writer answers it as any other peer
    wait_for_event(monitor, zmq.EVENT_CONNECTED)
    reply = Peer(dealer).ask(p.encode_request(p.Stats(71)))
    assert type(reply) is p.Ok and reply.req_id == 71, reply
    reply = bystander.ask(p.encode_request(p.Stats(72)))
    assert type(reply) is p.Ok and reply.req_id == 72, reply
    unchanged.assert_unchanged()


def wait_for_event(monitor: zmq.Socket, event: int) -> None:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        remaining = int((deadline - time.monotonic()) * 1000)
        assert remaining > 0 and monitor.poll(remaining), f"no socket event {zmq.Event(event).name} in time"
        if recv_monitor_message(monitor)["event"] == event:
            return


# -- bytes that are not even ZMTP ------------------------------------------------------------


def test_raw_bytes_on_the_writers_ipc_endpoints_are_dropped(unchanged, open_socket):
    hello = Peer(open_socket(zmq.DEALER, unchanged.url)).ask(p.encode_request(p.Hello(80, "garbage-test")))
    assert type(hello) is p.Ok
    rng = random.Random(7)
    for url in (unchanged.url, hello.result["pub"]):
        assert url.startswith("ipc://")
        for junk in [
            rng.randbytes(4096),
            b"\xff" + rng.randbytes(100),  # a ZMTP 2+ signature, then nonsense
            b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03\x00NULL" + b"\x00" * 100,  # a plausible greeting start
            b"GET / HTTP/1.1\r\nHost: tiger\r\n\r\n",
        ]:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT_MS / 1000)
                conn.connect(url[len("ipc://") :])
                try:
                    conn.sendall(junk)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):  # until the writer's side closes (a timeout fails the test)
                        pass
                except (ConnectionResetError, BrokenPipeError):
                    pass  # closed by the writer's side before we were done: as good
    unchanged.assert_unchanged()


# -- what the writer logs ------------------------------------------------------------------


def test_the_writer_logs_one_short_line_per_refused_request(open_socket):
    # a writer of its own, run as `tiger serve`, to read its log
    proc = subprocess.Popen(
        [sys.executable, "-m", "tiger", "serve", "--url", "tcp://127.0.0.1:*", "--owner-pid", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = read_line(proc).strip().rsplit(" ", 1)[-1]
        assert url.startswith("tcp://127.0.0.1:"), url
        peer = Peer(open_socket(zmq.DEALER, url))
        stats = peer.ask(p.encode_request(p.Stats(5)))
        assert type(stats) is p.Ok, stats
        garbage = [  # (payload, the kind of error, the req_id it is answered to)
            (b"", "protocol", None),
            (b"\xc1\x00", "protocol", None),
            (raw({"a": 1}), "protocol", None),
            (raw(["x" * 1_000_000, 1]), "protocol", 1),
            (raw(["stats", True]), "protocol", None),
            (raw(["insert", 2, "t", "global", None, [{b"k": 1}], False]), "type", 2),
            (raw(["update", 3, "t", "global", "x", {"id": 5}]), "type", 3),  # (a missing id is an answer, not bad input)
            (raw(["insert", 4, "t", "global", "plan", [{"id": "cus_1"}], False]), "value", 4),
        ]
        for payload, kind, req_id in garbage:
            peer.refused(payload, kind, req_id)
        after = peer.ask(p.encode_request(p.Stats(6)))
        assert type(after) is p.Ok, after
        assert (after.seq, after.result["checksum"]) == (stats.seq, stats.result["checksum"]), "garbage changed the store"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, log = proc.communicate(timeout=10)
    assert proc.returncode == 0, log
    refused = [line for line in log.splitlines() if "refused a request" in line]
    assert len(refused) == len(garbage), log[:5000]  # (the two stats are not refused)
    assert all(len(line) < 500 for line in refused), [line[:200] for line in refused]
    assert "Traceback" not in log and " ERROR " not in log, log[:5000]


HUGE = "h" * 1_000_000


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (["insert", 90, "plans", NS, "plan", [{"id": HUGE}], False], "value"),
        (["insert", 91, "plans", NS, HUGE, [{}], False], "value"),
        (["insert", 92, "plans", NS, None, [{HUGE: {b"k": 1}}], False], "type"),
        (["update", 93, "plans", NS, HUGE, {"amount": 1}], "not_found"),
    ],
    ids=["id-without-prefix", "prefix", "key", "missing-id"],
)
def test_an_error_reply_is_short_even_for_a_huge_argument(unchanged, open_socket, message, kind):
    reply = Peer(open_socket(zmq.DEALER, unchanged.url)).ask(raw(message))
    assert type(reply) is p.Failed and (reply.kind, reply.req_id) == (kind, message[1]), reply
    assert len(reply.message) < 1000, f"a {len(reply.message)}-character error for one bad argument"
    unchanged.assert_unchanged()
