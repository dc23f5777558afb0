"""``client.batch()``: writes across tables and namespaces as one command, all or none, one seq.

Real writer processes and clients (another client plays "another process": its replica is fed only by
what the writer publishes). The rules of preparing a batch against a store are in test_table.py
(``Staged``), the writer core's handling in test_core.py.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import tiger
from tiger import _protocol, _table


@pytest.fixture
def connect(connect_own: Callable[[], tiger.Client]) -> Callable[[], tiger.Client]:
    """A writer of the test's own: these tests compare seqs (see conftest's connect_own)."""
    return connect_own


def test_a_batch_of_mixed_writes_over_three_tables_and_two_namespaces_is_one_change(connect, ns):
    author, other = connect(), connect()
    author.sync()
    before = author.seq
    with author.batch() as b:
        plan = b.table("plans", prefix="plan").insert({"amount": 500})
        prices = b.table("prices").insert_many([{"id": "price_1"}, {"id": "price_2", "plan": "later"}])
        changed = b.table("prices").update("price_2", {"plan": "plan_x"})  # sees the insert before it
        with tiger.namespace(f"{ns}-other"):
            elsewhere = b.table("events").create({"id": "evt_1", "kind": "batch"})
        gone = b.table("prices").delete("price_1")
        assert len(b) == 5
    assert author.seq == before + 1  # one seq for the whole batch
    # results, once the block has ended
    assert plan.result["id"].startswith("plan_") and plan.result["amount"] == 500
    assert [r["id"] for r in prices.result] == ["price_1", "price_2"]
    assert changed.result["plan"] == "plan_x" and elsewhere.result["kind"] == "batch" and gone.result is None
    # read-your-writes on return
    assert author.table("plans")[plan.result["id"]] == plan.result
    assert "price_1" not in author.table("prices") and author.table("prices")["price_2"]["plan"] == "plan_x"
    # and the same, all of it, in another process's replica
    other.sync()
    assert other.table("plans")[plan.result["id"]] == plan.result
    assert other.table("prices").all() == [changed.result]
    with tiger.namespace(f"{ns}-other"):
        assert other.table("events")["evt_1"] == elsewhere.result
    author.drop_namespace(f"{ns}-other")


@pytest.mark.parametrize(
    ("failing", "error", "message"),
    [
        (lambda t: t.update("missing", {"a": 1}), tiger.NotFound, r"operation 2 \(update plans\): plans 'missing' is not in"),
        (
            lambda t: t.create({"id": "plan_taken"}),
            tiger.AlreadyExists,
            r"operation 2 \(create plans\): plans 'plan_taken' already",
        ),
    ],
    ids=["update-of-a-missing-id", "create-of-a-taken-id"],
)
def test_a_failing_op_in_the_middle_leaves_nothing_seen_from_another_process(connect, ns, failing, error, message):
    author, other = connect(), connect()
    author.table("plans").insert({"id": "plan_taken", "n": 0})
    other.sync()
    before = other.seq
    with pytest.raises(error, match=message) as raised, author.batch() as b:
        first = b.table("plans").insert({"id": "plan_new"})
        b.table("plans").update("plan_taken", {"n": 1})
        failing(b.table("plans"))
        b.table("prices").insert({"id": "price_after"})
    assert "nothing in the batch was applied" in str(raised.value)
    author.sync()
    other.sync()
    assert other.seq == before and author.seq == before  # no change at all: not even a seq
    for client in (author, other):
        assert "plan_new" not in client.table("plans") and client.table("plans")["plan_taken"]["n"] == 0
        assert "price_after" not in client.table("prices")
    with pytest.raises(tiger.TigerError, match="operation 0 \\(insert\\) has no result: the batch was refused"):
        first.result  # noqa: B018


def test_an_exception_inside_the_block_sends_nothing(connect, ns):
    author, other = connect(), connect()
    other.sync()
    before = other.seq
    with pytest.raises(RuntimeError, match="changed my mind"), author.batch() as b:
        pending = b.table("plans").insert({"id": "plan_never"})
        raise RuntimeError("changed my mind")
    other.sync()
    assert other.seq == before and "plan_never" not in author.table("plans")
    with pytest.raises(tiger.TigerError, match="the with block raised, so nothing of the batch was sent"):
        pending.result  # noqa: B018


def test_a_result_read_inside_the_block_says_when_it_will_be_there(client, ns):
    with client.batch() as b:
        pending = b.table("plans").insert({"amount": 1})
        with pytest.raises(tiger.TigerError, match="the batch is sent when its with block ends"):
            pending.result  # noqa: B018
        assert "pending" in repr(pending)
    assert pending.result["amount"] == 1


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda b: b.table("plans").insert({"id": 5}), TypeError, r"record\['id'\]"),
        (lambda b: b.table("plans", prefix="plan").insert({"id": "x_1"}), ValueError, r"must start with 'plan_'"),
        (lambda b: b.table("plans").insert({"when": object()}), TypeError, r"record\['when'\]"),
        (lambda b: b.table("plans").update("", {"a": 1}), ValueError, "id"),
        (lambda b: b.table("plans").update("plan_1", {"id": "plan_2"}), ValueError, r"changes\['id'\]"),
        (lambda b: b.table("plans").insert_many({"id": "x"}), TypeError, "records must be a list, not dict"),
        (lambda b: b.table("").insert({}), ValueError, "name must be 1 to 200 characters"),
    ],
)
def test_a_bad_argument_raises_at_the_call_naming_the_field_and_the_batch_goes_on(client, ns, call, error, message):
    with client.batch() as b:
        with pytest.raises(error, match=message):
            call(b)
        good = b.table("plans").insert({"id": "plan_fine"})
        assert len(b) == 1  # the bad call recorded nothing
    assert good.result["id"] == "plan_fine"


def test_insert_many_of_no_records_in_a_batch_raised_where_the_tables_own_returns_an_empty_list(client, ns):
    # A user trial: b.table(...).insert_many([]) raised TypeError ("non-empty list"), where
    # Table.insert_many([]) returns []; a batch's calls have the table's own checks.
    assert client.table("plans").insert_many([]) == []
    with client.batch() as b:
        nothing = b.table("plans").insert_many([])
        b.table("plans").insert({"id": "plan_one"})
        assert len(b) == 1  # nothing sent for it
        assert nothing.result == []
    assert nothing.result == [] and "plan_one" in client.table("plans")
    with pytest.raises(tiger.TigerError, match="inside its with block"):
        b.table("plans").insert_many([])


def test_a_str_utf8_cannot_encode_is_refused_at_its_call_naming_the_field_and_sends_nothing(connect, ns):
    author, other = connect(), connect()
    other.sync()
    before = other.seq
    with author.batch() as b:
        b.table("files").insert({"id": "f0"})
        with pytest.raises(ValueError, match=r"record\['meta'\]\['path'\]: a str UTF-8 cannot encode"):
            b.table("files").insert({"id": "f1", "meta": {"path": os.fsdecode(b"report-\xff.pdf")}})
        assert len(b) == 1
    other.sync()
    assert other.seq == before + 1 and "f1" not in other.table("files")


def test_a_record_changed_after_its_call_is_sent_as_it_was_at_the_call(client, ns):
    """As a plain insert would have stored it: the batch encodes each write when it is made."""
    record = {"id": "mut", "v": 1, "nested": {"a": 1}}
    with client.batch() as b:
        b.table("plans").insert(record)
        record["v"] = 2
        record["nested"]["a"] = 99
        record["when"] = object()  # not storable: had it been sent, the batch would fail at the end
    assert client.table("plans")["mut"] == {
        "id": "mut",
        "v": 1,
        "nested": {"a": 1},
        "created": client.table("plans")["mut"]["created"],
    }


def test_a_record_too_big_is_refused_at_its_call_naming_it(client, ns):
    with client.batch() as b:
        with pytest.raises(ValueError, match=r"record is \d+ bytes packed; a record may be at most"):
            b.table("plans").insert({"blob": b"x" * (9 << 20)})
        assert len(b) == 0


def test_a_batch_inside_a_batch_of_the_same_client_is_refused(connect, ns):
    client, other = connect(), connect()
    with client.batch() as outer:
        outer.table("plans").insert({"id": "outer"})
        with pytest.raises(tiger.TigerError, match="already open here"), client.batch():
            pass
        with other.batch() as elsewhere:  # another client's batch: its own command
            elsewhere.table("plans").insert({"id": "other"})
    assert "outer" in client.table("plans") and "other" in other.table("plans")
    with client.batch() as again:  # closed: a new one may open
        again.table("plans").insert({"id": "again"})


def test_an_empty_batch_sends_nothing(client, ns):
    client.sync()
    before = client.seq
    with client.batch() as b:
        pass
    client.sync()
    assert client.seq == before and len(b) == 0


def test_writes_outside_the_block_and_a_second_block_are_refused(client, ns):
    b = client.batch()
    with pytest.raises(tiger.TigerError, match="inside its with block"):
        b.table("plans").insert({})
    with b:
        b.table("plans").insert({})
    with pytest.raises(tiger.TigerError, match="one with block"), b:
        pass


def test_insert_then_update_then_delete_of_one_id_in_one_batch(client, ns):
    with client.batch() as b:
        t = b.table("plans")
        t.insert({"id": "plan_1", "n": 1})
        t.update("plan_1", {"n": 2})
        t.delete("plan_1")
        t.insert({"id": "plan_2", "n": 1})
        t.delete("plan_2")
        t.insert({"id": "plan_2", "n": 3})
    assert "plan_1" not in client.table("plans") and client.table("plans")["plan_2"]["n"] == 3


def test_a_batch_survives_a_writer_restart_from_its_data_directory(tmp_path):
    url, data = f"ipc://{tmp_path}/w", tmp_path / "data"
    with tiger.serve(url, data=data, fsync="always") as server:
        with tiger.connect(server.url) as client, client.batch() as b:
            b.table("plans").insert({"id": "plan_1"})
            b.table("prices").insert({"id": "price_1", "plan": "plan_1"})
            b.table("plans").update("plan_1", {"price": "price_1"})
    with tiger.serve(url, data=data) as server, tiger.connect(server.url) as client:
        assert client.table("plans")["plan_1"]["price"] == "price_1" and "price_1" in client.table("prices")


# -- the pure rule under it: a batch is prepared against the store as the ops before it leave it ----------------


def test_staged_reads_see_earlier_ops_and_change_nothing():
    store = _table.Store()
    store.apply(_table.Put("t", "global", (_table.freeze({"id": "a", "created": 1}),)))
    staged = _table.Staged(store)
    put = _table.prepare_insert(staged, "t", "global", None, [{"id": "b"}], create=True, now=2, token=lambda n: "0" * n)
    staged.stage(put)
    staged.stage(_table.Delete("t", "global", "a"))
    assert staged.get("t", "global", "b") is not None and staged.get("t", "global", "a") is None
    assert "a" not in staged.rows("t", "global") and "b" in staged.rows("t", "global")
    with pytest.raises(tiger.AlreadyExists):
        _table.prepare_insert(staged, "t", "global", None, [{"id": "b"}], create=True, now=2, token=lambda n: "0" * n)
    with pytest.raises(tiger.NotFound):
        _table.prepare_update(staged, "t", "global", "a", {"x": 1})
    assert store.content() == {"t": {"global": [{"id": "a", "created": 1}]}}  # the store itself is untouched


def test_a_batch_whose_block_ends_in_another_context_still_sends_and_leaves_none_open(client, ns):
    """The open-batch record is a contextvar: ending the block in another context (a thread, a task) raised
    on its reset, left the batch unsent, and every later batch in the first context was refused as nested."""
    import contextvars

    b = client.batch()
    b.__enter__()
    b.table("plans").insert({"id": "across"})
    contextvars.copy_context().run(b.__exit__, None, None, None)
    assert "across" in client.table("plans")
    with client.batch() as again:  # the first context can open a batch again
        again.table("plans").insert({"id": "again"})
    assert "again" in client.table("plans")


def test_a_batch_and_its_operations_are_freed_by_reference_counting_not_left_to_the_cyclic_gc(client, ns):
    # A batch and its Pending operations referred to each other: every batch was garbage only the cyclic
    # collector could free, and its collections cost the batch bench about 1 us a write.
    gc.disable()
    try:
        with client.batch() as b:
            op = b.table("plans").insert({"amount": 1})
        batch = weakref.ref(b)
        del b
        assert op.result["amount"] == 1
        del op
        assert batch() is None
    finally:
        gc.enable()


def test_tiger_serve_freezes_what_survives_so_full_collections_skip_the_records():
    # Every full collection of the writer's process walked every stored record: about 4 us of its CPU per
    # batched write at 100k records. `tiger serve` freezes what survives (gc.freeze) at start and after each
    # heartbeat with writes since.
    with tiger.serve() as server, tiger.connect(server.url) as client:
        at_start = client.stats()["gc_freezes"]
        assert at_start >= 1
        client.table("plans").insert_many([{"n": i} for i in range(1000)])
        deadline = time.monotonic() + 10.0
        while client.stats()["gc_freezes"] == at_start:
            assert time.monotonic() < deadline
            time.sleep(0.05)  # sleep-ok: polling the writer's stats, which change at its next heartbeat


def test_a_write_made_from_another_thread_as_the_block_ended_was_lost(client, ns, monkeypatch):
    # a second thread's write passed the batch's open-check, then, while it encoded (a 6 MB record takes a
    # few ms), the block ended and sent the ops: the write was appended after, returned a Pending and was
    # never sent (or, appended between the sending and the results, the owner's with raised
    # ValueError('zip() argument 2 is shorter...') although the batch was applied). Held here as it
    # encodes, past its open-check, while the block ends: the end waits for it, and it is sent.
    encoding, go_on = threading.Event(), threading.Event()
    encode = _protocol.encode_request

    def encode_holding_the_late_write(request: Any) -> bytes:
        if type(request) is _protocol.Insert and request.records[0]["id"] == "late":
            encoding.set()
            go_on.wait(10)
        return encode(request)

    monkeypatch.setattr(_protocol, "encode_request", encode_holding_the_late_write)
    batch = client.batch()
    batch._lock = _SaysWhenWaitedFor(go_on)  # the block's end waiting for the write lets it go on
    made: dict[str, Any] = {}
    late = threading.Thread(target=_write_late, args=(batch, made))
    with batch as b:
        first = b.table("x").insert({"id": "first"})
        late.start()
        assert encoding.wait(10)
    go_on.set()  # (the block's end did not wait for the write: it goes on now, the block sent)
    late.join(10)
    assert "refused" not in made, "made inside the block, it was refused"
    assert "late" in client.table("x"), "the write returned a Pending and was never sent"
    assert first.result["id"] == "first" and made["pending"].result["id"] == "late"


class _SaysWhenWaitedFor:
    """A lock (a batch's) that sets ``waited`` when a thread comes to take it while another holds it."""

    def __init__(self, waited: threading.Event) -> None:
        self._lock, self._waited = threading.Lock(), waited

    def __enter__(self) -> None:
        if self._lock.locked():
            self._waited.set()
        self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def _write_late(batch: Any, made: dict[str, Any]) -> None:
    """A write through ``batch`` from this thread: its Pending, or the error refusing it."""
    try:
        made["pending"] = batch.table("x").insert({"id": "late"})
    except tiger.TigerError as e:
        made["refused"] = e


def test_a_failing_op_after_an_insert_many_of_nothing_was_named_by_the_wrong_index(client, ns):
    # insert_many([]) sends nothing, and the ops were counted as sent: the 4th write failed and the error
    # said "operation 2" (the 3rd). Each write of the block is named by its index, counted from 0.
    client.table("plans").insert({"id": "p1"})
    with pytest.raises(tiger.NotFound, match=r"^operation 3 \(update plans\)"), client.batch() as b:
        plans = b.table("plans")
        ops = [plans.insert({"id": "p2"}), plans.insert_many([]), plans.update("p1", {"a": 1}), plans.update("nope", {"a": 1})]
    assert [repr(op).split(" ")[3] for op in ops] == ["0", "1", "2", "3"]


def test_a_batch_update_that_grew_a_record_past_the_limit_named_no_operation(connect, ns):
    # an insert then an update of one id in a batch, each under 8 MiB, merged past it: refused at commit
    # naming only the record; the error names the update's index like every failing op's
    client = connect()
    with pytest.raises(ValueError, match=r"^operation 2 \(update big\): .*nothing in the batch was applied"), client.batch() as b:
        big = b.table("big")
        big.insert({"id": "small"})
        big.insert({"id": "u2", "a": b"a" * (5 * 1024 * 1024)})
        big.update("u2", {"b": b"b" * (5 * 1024 * 1024)})
    client.sync()
    assert client.table("big").get("u2") is None and client.table("big").get("small") is None


def test_a_second_block_of_a_batch_whose_first_wrote_nothing_named_its_first_write_operation_1(client, ns):
    # a batch whose block made only writes of no records was not used up: a second block could open, its
    # writes counted on from the first's. A batch is used for one block; its writes are counted from 0.
    b = client.batch()
    with b:
        b.table("plans").insert_many([])
    with pytest.raises(tiger.TigerError, match="one with block"), b:
        pass
    with pytest.raises(tiger.NotFound, match=r"^operation 0 \(update plans\)"), client.batch() as again:
        again.table("plans").update("nope", {"a": 1})
