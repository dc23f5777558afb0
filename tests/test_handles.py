"""tiger's objects copied and pickled (``tiger._handles``): what users' code, other libraries and
``multiprocessing`` do with them. A client, a server and a lease are handles of this process: a copy is the
object itself, and pickling says what to send another process instead."""

from __future__ import annotations

import asyncio
import copy
import multiprocessing
import pickle

import pytest

import tiger
import tiger.aio
from tiger._server import NamespaceLease


def records_seen_by_another_process(url: str, table: str, namespace: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a spawned process: the records of ``table`` in ``namespace``, read through a client of its own."""
    with tiger.connect(url) as client, tiger.namespace(namespace):
        queue.put(sorted(r["id"] for r in client.table(table).all()))


def test_a_table_given_to_a_spawned_process_failed_with_pyzmqs_self_handle_cannot_be_converted(tiger_url, ns):
    # multiprocessing's spawn (macOS's default, Linux's from Python 3.14) pickles a Process's arguments: a
    # Table among them failed with pyzmq's "self.handle cannot be converted to a Python object for pickling"
    spawn = multiprocessing.get_context("spawn")
    with tiger.connect(tiger_url) as client:
        plans = client.table("plans", prefix="plan")
        plans.insert({"id": "plan_shared", "amount": 5})
        queue = spawn.Queue()
        with pytest.raises(TypeError) as raised:
            spawn.Process(target=records_seen_by_another_process, args=(plans, "plans", ns, queue)).start()
        message = str(raised.value)
        assert "a tiger.Table cannot be pickled" in message
        assert "tiger.connect(url).table(name, prefix)" in message and "name ('plans') and prefix ('plan')" in message
        assert "spawn" in message
        # what it says to do works: the url, the name and the namespace, and a client of the child's own
        child = spawn.Process(target=records_seen_by_another_process, args=(client.url, "plans", ns, queue))
        child.start()
        try:
            assert queue.get(timeout=30) == ["plan_shared"]
        finally:
            child.join(30)
        assert child.exitcode == 0


def test_closing_a_copy_of_a_client_closed_the_sockets_of_the_client_it_was_copied_from(tiger_url, ns):
    # copy.copy(client) made a second Client over the same sockets: closing it left the first one open in
    # name, its next write failing with ZeroMQ's "Socket operation on non-socket"
    client = tiger.connect(tiger_url)
    try:
        assert copy.copy(client) is client and copy.deepcopy(client) is client
        copy.copy(client).close()
        with pytest.raises(tiger.TigerError, match="this client is closed"):
            client.table("plans").insert({"amount": 1})
    finally:
        client.close()


def test_a_deep_copy_of_settings_holding_a_client_a_table_and_a_server_failed(writer, ns):
    # Django's setUpTestData deep-copies its class attributes for each test, pydantic its fields: a dict
    # holding tiger's objects raised "cannot pickle '_thread.RLock' object"
    with tiger.connect(writer.url) as client:
        plans = client.table("plans", prefix="plan")
        plan = plans.insert({"amount": 7})
        settings = {"client": client, "plans": plans, "server": writer}
        copied = copy.deepcopy(settings)
        assert copied["client"] is client and copied["server"] is writer
        table = copied["plans"]
        assert table is not plans and isinstance(table, tiger.Table)  # a new handle on the same table
        assert table[plan["id"]] == plan
        table.insert({"id": "plan_through_the_copy"})
        assert "plan_through_the_copy" in plans
        table.fallback_to_global = True  # its own setting
        assert plans.fallback_to_global is False
        assert copy.copy(plans).name == "plans" and copy.copy(plans).prefix == "plan"

        class Plans(tiger.Table):  # a user's subclass, with an attribute of its own
            pass

        mine = Plans(client, "plans", "plan", False)
        mine.label = "mine"  # type: ignore[attr-defined]
        assert copy.copy(mine).label == "mine" and copy.deepcopy(mine)["plan_through_the_copy"]["id"] == "plan_through_the_copy"


def _pickled(obj: object) -> str:
    with pytest.raises(TypeError) as raised:
        pickle.dumps(obj)
    return str(raised.value)


def test_pickling_each_of_tigers_objects_of_a_process_says_what_to_send_instead(writer, ns):
    with tiger.connect(writer.url) as client:
        plans = client.table("plans", prefix="plan")
        assert "a tiger.Client cannot be pickled" in _pickled(client) and "tiger.connect(url)" in _pickled(client)
        assert "a tiger.Server cannot be pickled" in _pickled(writer) and "server.url" in _pickled(writer)
        with plans.watch() as feed:
            assert "a tiger.Feed cannot be pickled" in _pickled(feed) and "watch()" in _pickled(feed)
            for copier in (copy.copy, copy.deepcopy):
                with pytest.raises(TypeError, match=r"a tiger\.Feed cannot be copied"):
                    copier(feed)
        with client.batch() as batch:
            assert "a tiger.Batch cannot be pickled" in _pickled(batch)
            with pytest.raises(TypeError, match=r"a tiger\.Batch cannot be copied"):
                copy.deepcopy(batch.table("plans"))  # (a batch's table handle holds its batch)
            batch.table("plans", "plan").insert({"id": "plan_batched"})
        assert "plan_batched" in plans  # the block still sent its writes
        lease = NamespaceLease(writer.url, f"{ns}-leased")
        try:
            assert copy.deepcopy(lease) is lease and "cannot be pickled" in _pickled(lease)
        finally:
            lease.close()
        record = plans["plan_batched"]  # values are data: they pickle and copy as before
        assert pickle.loads(pickle.dumps(record)) == record and copy.deepcopy(record) == record


def test_pickling_an_async_client_or_table_says_to_connect_with_tiger_aio(writer, ns):
    async def main() -> tuple[str, str]:
        async with await tiger.aio.connect(writer.url) as client:
            plans = client.table("plans", prefix="plan")
            assert copy.deepcopy(client) is client and copy.copy(plans).name == "plans"
            return _pickled(client), _pickled(plans)

    said_client, said_table = asyncio.run(main())
    assert "a tiger.aio.AsyncClient cannot be pickled" in said_client and "tiger.aio.connect(url)" in said_client
    assert "a tiger.aio.AsyncTable cannot be pickled" in said_table and "tiger.aio.connect(url).table" in said_table
