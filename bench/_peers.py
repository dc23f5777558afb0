"""tiger and what users would pick instead, behind one small interface.

Each subject has a server side (``setup``/``teardown``, run by the scenario) and
a client side (``connect(spec)``, run by the scenario or by a worker process
with the JSON-able ``spec``). A client offers:

- ``read``/``read_stmt`` and ``miss_stmt``: what one read of id ``k`` is, as a
  statement for the timing loop (``target`` is ``read``);
- ``write``/``write_stmt``: one write of record ``k`` (read-your-writes where the
  subject has replicas: tiger's ``insert`` returns once the local replica holds it);
- ``write_many(records)``: the subject's own bulk write.

Values are stored the way a user would: redis and sqlite hold msgpack blobs and
reads decode them (so a read returns a dict, as tiger's does); diskcache,
Manager and UltraDict pickle by themselves.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.managers import BaseManager, DictProxy
from pathlib import Path
from typing import Any, ClassVar

from bench._common import Children, Result, free_port, receive


class Unavailable(Exception):
    """This comparator cannot run here; the message is the one-line reason."""


class Client:
    read: Callable[[str], Any]
    read_stmt = "target(k)"
    miss_stmt = "target(k)"
    write: Callable[[dict[str, Any]], Any]
    write_stmt = "target(k)"

    def lookup(self, id: str) -> Any:
        """One read, for checking the subject holds what was written (not timed)."""
        return self.read(id)

    def put_function(self) -> Callable[[Any], Any]:
        """``write_stmt`` as a function of ``k`` (for loops outside the timing template)."""
        namespace: dict[str, Any] = {"target": self.write}
        exec(f"def put(k):\n    {self.write_stmt}\n", namespace)
        return namespace["put"]  # type: ignore[no-any-return]

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        for r in records:
            self.write(r)

    def close(self) -> None:
        pass


class Subject:
    """One comparator's server side."""

    name: ClassVar[str]
    role: ClassVar[str] = "peer"
    label: str = ""
    note: str = ""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.children = Children()
        self.spec: dict[str, Any] = {}
        self.server_pid: int | None = None  # the process serving the clients, where one does (its CPU is measured)

    def setup(self) -> None:
        pass

    def teardown(self) -> None:
        self.children.stop_all()

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        raise NotImplementedError

    def __enter__(self) -> Subject:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


def _packer() -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]]:
    import msgpack

    return (lambda obj: msgpack.packb(obj, use_bin_type=True)), (lambda data: msgpack.unpackb(data, raw=False))


# -- tiger -----------------------------------------------------------------------------


class _TigerClient(Client):
    def __init__(self, url: str) -> None:
        import tiger

        self.client = tiger.connect(url, timeout=30.0)
        self.table = self.client.table("plans", prefix="plan")
        self.read = self.table.get
        self.write = self.table.insert
        self.write_many = self.table.insert_many  # type: ignore[method-assign]

    def close(self) -> None:
        self.client.close()


class Tiger(Subject):
    """tiger's writer: in memory only, or with ``fsync`` given, keeping its store in a directory of ``tmp``
    (``tiger serve --data DIR --fsync FSYNC``)."""

    name = "tiger"
    role = "tiger"

    def __init__(self, tmp: Path, fsync: str | None = None) -> None:
        super().__init__(tmp)
        self.fsync = fsync

    def setup(self) -> None:
        import tiger

        if self.fsync is None:
            self.server = tiger.serve()
            durability = ""
        else:
            self.server = tiger.serve(data=self.tmp / "data", fsync=self.fsync)
            durability = f"; --data DIR on {filesystem_of(self.tmp)} --fsync {self.fsync}"
        self.spec = {"url": self.server.url}
        self.server_pid = self.server.pid
        self.label = f"tiger {_dist_version('tiger')} (replica read; insert over {self.server.url.split(':')[0]}{durability})"

    def teardown(self) -> None:
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()
        super().teardown()

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _TigerClient(spec["url"])


# -- the floors ------------------------------------------------------------------------


def tiger_insert_bytes(records: Sequence[dict[str, Any]], req_id: int = 1) -> bytes:
    """The bytes tiger's client sends for ``insert_many(records)``: the REQ/REP floor sends exactly these."""
    from tiger import _protocol as p

    request = p.Insert(req_id, "plans", "global", "plan", list(records), False)
    if hasattr(p, "encode_call"):  # a client wraps every write in a Call (client id, expiry) it may resend
        return p.encode_call(p.Call(secrets.token_hex(8), time.time() + 5.0, request))  # type: ignore[no-any-return]
    return p.encode_request(request)  # type: ignore[no-any-return]


class _DictClient(Client):
    read_stmt = "target[k]"
    miss_stmt = "target.get(k)"
    write_stmt = "target[k['id']] = k"

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.read = self.data  # type: ignore[assignment]
        self.write = self.data  # type: ignore[assignment]

    def lookup(self, id: str) -> Any:
        return self.data.get(id)

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        self.data.update({r["id"]: r for r in records})


class PlainDict(Subject):
    name = "dict"
    role = "floor"
    label = "plain dict: d[id] (miss: d.get(id)), in process"

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _DictClient()


class _Rows:
    """The least a read API that is a Python method can do: one call, one dict lookup."""

    __slots__ = ("_rows",)

    def __init__(self, rows: dict[str, Any]) -> None:
        self._rows = rows

    def get(self, id: str, default: Any = None) -> Any:
        try:
            return self._rows[id]
        except KeyError:
            return default


class _MethodClient(_DictClient):
    read_stmt = "target(k)"
    miss_stmt = "target(k)"

    def __init__(self) -> None:
        super().__init__()
        self.read = _Rows(self.data).get


class PythonMethod(Subject):
    """The read floor of any Python-level ``get``: a method whose body is one dict lookup."""

    name = "Python method"
    role = "floor"
    label = "a Python method whose body is one dict lookup (try: return rows[id] / except KeyError), in process"

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _MethodClient()


class _EchoClient(Client):
    def __init__(self, url: str, warm_up: bytes = b"warm-up") -> None:
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(url)
        send, recv = self.sock.send, self.sock.recv

        def round_trip(payload: bytes) -> bytes:
            send(payload)
            return recv()  # type: ignore[no-any-return]

        self.write = round_trip  # type: ignore[assignment]
        round_trip(warm_up)  # one warm-up round trip before any timer

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class ZmqEcho(Subject):
    """The write floor: a raw pyzmq REQ/REP round trip, the REP peer echoing in its own process."""

    name = "pyzmq REQ/REP"
    role = "floor"

    def __init__(self, tmp: Path, transport: str = "ipc") -> None:
        super().__init__(tmp)
        self.transport = transport

    def _endpoint(self, name: str) -> str:
        """Where a floor's peer binds: ipc in this run's temp dir, or any loopback tcp port."""
        return f"ipc://{self.tmp}/{name}" if self.transport == "ipc" else "tcp://127.0.0.1:*"

    def setup(self) -> None:
        try:
            import zmq  # noqa: F401
        except ImportError as e:  # tiger itself needs pyzmq; kept for symmetry
            raise Unavailable(f"pyzmq not importable: {e}") from None
        url = self._endpoint("echo")
        proc = self.children.worker("echo", url)
        self.server_pid = proc.pid
        ready = receive(proc, 20.0)
        self.spec = {"url": ready["url"]}
        self.label = f"raw pyzmq REQ/REP round trip over {self.transport}, same payload, echo peer in its own process"

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _EchoClient(spec["url"])


class _PublishEchoClient(_EchoClient):
    def __init__(self, url: str, pub_url: str, topic: str) -> None:
        import zmq

        from tiger import _protocol as p

        super().__init__(url, warm_up=p.pack({"id": "warm-up"}))
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for prefix in p.subscriptions(bytes.fromhex(topic)):  # every topic but the caller's own, as tiger's replica
            self.sub.setsockopt(zmq.SUBSCRIBE, prefix)
        self.sub.connect(pub_url)
        send, recv, pack, unpack = self.sock.send, self.sock.recv, p.pack, p.unpack_frozen

        def round_trip(record: dict[str, Any]) -> Any:
            send(pack(record))
            return unpack(recv())

        self.write = round_trip  # type: ignore[assignment]

    def close(self) -> None:
        self.sub.close(linger=0)
        super().close()


class ZmqPublishEcho(ZmqEcho):
    """The write floor with tiger's least work: the REQ/REP round trip plus the msgpack codec at both ends
    and a publish of the change, the REP peer in its own process."""

    name = "pyzmq REQ/REP + msgpack + PUB"

    def setup(self) -> None:
        url, pub_url = self._endpoint("codec"), self._endpoint("codec-pub")
        proc = self.children.worker("publish_echo", url, pub_url)
        ready = receive(proc, 20.0)
        self.spec = {"url": ready["url"], "pub_url": ready["pub_url"], "topic": ready["topic"]}
        self.label = (
            f"REQ/REP over {self.transport}; the client packs the record and decodes the answer, the peer decodes, "
            "encodes, publishes (PUB, the caller's topic filtered out) and answers: no rules, no store, no replica"
        )

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _PublishEchoClient(spec["url"], spec["pub_url"], spec["topic"])


class _FanoutEchoClient(Client):
    """A client process of the fan-out floor: DEALER round trips from the calling thread (send, poll with a
    timeout, receive), and a second thread whose SUB takes every published frame and msgpack-decodes it."""

    def __init__(self, url: str, pub_url: str) -> None:
        import msgpack
        import zmq

        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 200_000)  # tiger's replica's SUB_HWM
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")  # every frame, this process's own writes' too
        self.sub.connect(pub_url)
        self.received = 0
        self._stop = threading.Event()
        topic_size = 3  # tiger's TOPIC_SIZE

        def receive() -> None:  # as tiger's replica thread: poll, then take all that is queued
            sub, again, unpack, stop = self.sub, zmq.Again, msgpack.unpackb, self._stop
            poller = zmq.Poller()
            poller.register(sub, zmq.POLLIN)
            recv, noblock = sub.recv, zmq.NOBLOCK
            while not stop.is_set():
                if poller.poll(100):
                    while True:
                        try:
                            frame = recv(noblock)
                        except again:
                            break
                        unpack(frame[topic_size:], raw=False)
                        self.received += 1
            sub.close(linger=0)

        self._thread = threading.Thread(target=receive, name="fanout-sub", daemon=True)
        self._thread.start()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(url)
        send, poll, recv, pollin = self.sock.send, self.sock.poll, self.sock.recv, zmq.POLLIN

        def round_trip(payload: bytes) -> bytes:
            send(payload)
            if not poll(5000, pollin):  # as tiger's client: poll with a timeout, then receive
                raise TimeoutError("the fan-out echo did not answer within 5 s")
            return recv()  # type: ignore[no-any-return]

        self.write = round_trip  # type: ignore[assignment]
        round_trip(tiger_insert_bytes([{"id": "plan_warm-up"}], 0))  # one warm-up round trip before any timer

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sock.close(linger=0)
        self.ctx.term()


class ZmqFanoutEcho(ZmqEcho):
    """The transport floor of tiger's design with N clients: each request is published to every client process
    (each decodes it on a second thread) and answered."""

    name = "pyzmq REQ/REP + PUB fan-out"

    def setup(self) -> None:
        try:
            import zmq  # noqa: F401
        except ImportError as e:
            raise Unavailable(f"pyzmq not importable: {e}") from None
        url, pub_url = self._endpoint("fanout"), self._endpoint("fanout-pub")
        proc = self.children.worker("fanout_echo", url, pub_url)
        self.server_pid = proc.pid
        ready = receive(proc, 20.0)
        self.spec = {"url": ready["url"], "pub_url": ready["pub_url"]}
        self.label = (
            f"one process: a ROUTER that publishes each request's bytes (3-byte topic + payload, one frame) on a PUB "
            f"and echoes them; each client process: DEALER round trips over {self.transport} (send, poll, recv) of the "
            "bytes tiger would send, and a thread whose SUB (subscribed to everything) msgpack-decodes every frame"
        )

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _FanoutEchoClient(spec["url"], spec["pub_url"])


# -- the peers -------------------------------------------------------------------------


_SHARED: dict[str, Any] = {}  # the Manager server's dict (lives in the manager process)


def _shared_table() -> dict[str, Any]:
    return _SHARED


class TableManager(BaseManager):
    """Serves one dict (``table()``) from the manager process."""


TableManager.register("table", callable=_shared_table, proxytype=DictProxy)


class _ManagerClient(Client):
    write_stmt = "target[k['id']] = k"

    def __init__(self, address: tuple[str, int], authkey: bytes) -> None:
        manager = TableManager(address=address, authkey=authkey)
        manager.connect()
        self.proxy = manager.table()
        self.read = self.proxy.get
        self.write = self.proxy  # __setitem__: one round trip to the manager process

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        self.proxy.update({r["id"]: r for r in records})


class Manager(Subject):
    name = "Manager().dict()"
    label = (
        "a multiprocessing manager's dict (DictProxy, as Manager().dict() gives), "
        "used from this process; the dict lives in the manager process"
    )

    def setup(self) -> None:
        # the manager's server in a child of our own (python -m bench._worker manager), stopped by pid like the others
        authkey = secrets.token_hex(16)
        proc = self.children.worker("manager", authkey)
        ready = receive(proc, 30.0)
        self.spec = {"address": ready["address"], "authkey": authkey}

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _ManagerClient((spec["address"][0], spec["address"][1]), bytes.fromhex(spec["authkey"]))


class _RedisClient(Client):
    def __init__(self, port: int) -> None:
        import redis

        pack, unpack = _packer()
        self.redis = redis.Redis(host="127.0.0.1", port=port)
        get, set_ = self.redis.get, self.redis.set

        def read(k: str) -> Any:
            value = get(k)
            return None if value is None else unpack(value)

        def write(r: dict[str, Any]) -> None:
            set_(r["id"], pack(r))

        self.read = read
        self.write = write
        self._pack = pack

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        self.redis.mset({r["id"]: self._pack(r) for r in records})

    def close(self) -> None:
        self.redis.close()


class Redis(Subject):
    name = "redis"

    def setup(self) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise Unavailable("redis-py not installed (pip install redis)") from None
        binary = shutil.which("redis-server")
        if binary is None:
            raise Unavailable("redis-server not on PATH (e.g. apt-get install redis-server)")
        version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
        server_version = next((w[2:] for w in version if w.startswith("v=")), "?")
        self.label = f"redis-server {server_version} on 127.0.0.1 (redis-py {_dist_version('redis')}), msgpack values"
        for _ in range(5):  # a free port can be taken between the probe and the bind: try another
            port = free_port()
            proc = self.children.start(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait(port, proc):
                self.spec = {"port": port}
                return
        raise Unavailable("redis-server did not start on a free port (5 tries)")

    def _wait(self, port: int, proc: subprocess.Popen[str]) -> bool:
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5) as r:
                    if r.ping():
                        return True
            except redis.ConnectionError:
                time.sleep(0.05)
        return False

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _RedisClient(spec["port"])


class _DiskcacheClient(Client):
    write_stmt = "target[k['id']] = k"

    def __init__(self, directory: str) -> None:
        import diskcache

        self.cache = diskcache.Cache(directory)
        self.read = self.cache.get
        self.write = self.cache  # type: ignore[assignment]

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        cache = self.cache
        with cache.transact():
            for r in records:
                cache[r["id"]] = r

    def close(self) -> None:
        self.cache.close()


class Diskcache(Subject):
    name = "diskcache"

    def setup(self) -> None:
        try:
            import diskcache
        except ImportError:
            raise Unavailable("diskcache not installed (pip install diskcache)") from None
        self.label = f"diskcache {diskcache.__version__} Cache (sqlite underneath), pickled values"
        self.spec = {"directory": str(self.tmp / "diskcache")}
        self.connect(self.spec).close()  # created here, not by N worker processes at once

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _DiskcacheClient(spec["directory"])


class _SqliteClient(Client):
    def __init__(self, path: str) -> None:
        import sqlite3

        pack, unpack = _packer()
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS plans (id TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID")
        execute = self.db.execute

        def read(k: str) -> Any:
            row = execute("SELECT data FROM plans WHERE id = ?", (k,)).fetchone()
            return None if row is None else unpack(row[0])

        def write(r: dict[str, Any]) -> None:
            execute("INSERT OR REPLACE INTO plans (id, data) VALUES (?, ?)", (r["id"], pack(r)))

        self.read = read
        self.write = write
        self._pack = pack

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "INSERT OR REPLACE INTO plans (id, data) VALUES (?, ?)", [(r["id"], self._pack(r)) for r in records]
            )
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


class Sqlite(Subject):
    name = "sqlite3 WAL"

    def setup(self) -> None:
        import sqlite3

        self.label = (
            f"sqlite3 {sqlite3.sqlite_version}, WAL, synchronous=NORMAL, one autocommit statement per write, msgpack values"
        )
        self.spec = {"path": str(self.tmp / "sqlite.db")}
        self.connect(self.spec).close()  # WAL mode and the table, set here, not by N worker processes at once

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _SqliteClient(spec["path"])


class _UltraClient(Client):
    write_stmt = "target[k['id']] = k"

    def __init__(self, name: str) -> None:
        from UltraDict import UltraDict

        self.ud = UltraDict(name=name, create=False)
        self.read = self.ud.get
        self.write = self.ud  # type: ignore[assignment]

    def write_many(self, records: Sequence[dict[str, Any]]) -> None:
        self.ud.update({r["id"]: r for r in records})

    def close(self) -> None:
        self.ud.close()


class Ultra(Subject):
    name = "UltraDict"
    BUFFER = 64 * 1024 * 1024  # the shared update stream; a full dump happens when it fills up

    def setup(self) -> None:
        try:
            from UltraDict import UltraDict
        except ImportError:
            raise Unavailable("UltraDict not installed (pip install UltraDict)") from None
        import logging

        logging.getLogger("UltraDict").setLevel(logging.ERROR)
        self.owner = UltraDict(name=f"tb_{os.getpid()}_{secrets.token_hex(4)}", create=True, buffer_size=self.BUFFER)
        self.spec = {"name": self.owner.name}
        self.label = (
            f"UltraDict {_dist_version('UltraDict')} (shared memory stream, {self.BUFFER >> 20} MiB buffer, no shared_lock), "
            "read from a second handle"
        )

    def teardown(self) -> None:
        owner = getattr(self, "owner", None)
        if owner is not None:
            owner.close(unlink=True)
        super().teardown()

    @classmethod
    def connect(cls, spec: dict[str, Any]) -> Client:
        return _UltraClient(spec["name"])


PEERS: list[type[Subject]] = [Manager, Redis, Diskcache, Sqlite, Ultra]
ALL: dict[str, type[Subject]] = {
    s.name: s for s in [Tiger, PlainDict, PythonMethod, ZmqEcho, ZmqPublishEcho, ZmqFanoutEcho, *PEERS]
}
KINDS: dict[str, type[Subject]] = {
    "tiger": Tiger,
    "dict": PlainDict,
    "method": PythonMethod,
    "echo": ZmqEcho,
    "publish_echo": ZmqPublishEcho,
    "fanout_echo": ZmqFanoutEcho,
    "manager": Manager,
    "redis": Redis,
    "diskcache": Diskcache,
    "sqlite": Sqlite,
    "ultradict": Ultra,
}
KIND_OF: dict[type[Subject], str] = {v: k for k, v in KINDS.items()}


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (/proc/mounts, longest mount point that contains it): a tmpfs
    makes fsync free, so a figure with fsync means little without it."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return "?"
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if resolved == m[0] or resolved.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return best[1] if best else "?"


def _dist_version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def versions() -> dict[str, str | None]:
    """The versions of every comparator library present (for the results files)."""
    import sqlite3

    out: dict[str, str | None] = {"sqlite": sqlite3.sqlite_version}
    for dist in ("redis", "diskcache", "UltraDict", "filelock", "pytest", "pytest-xdist", "matplotlib"):
        v = _dist_version(dist)
        out[dist] = None if v == "?" else v
    binary = shutil.which("redis-server")
    if binary:
        words = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()
        out["redis-server"] = next((w[2:] for w in words if w.startswith("v=")), None)
    else:
        out["redis-server"] = None
    out["executable"] = sys.executable
    return out


# -- running subjects in a scenario ----------------------------------------------------------


@dataclass
class Context:
    """What a scenario is given: quick or full, and a private temporary directory."""

    quick: bool
    tmp: Path

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def skip_failed(cls: type[Subject], res: Result, e: Exception, what: str = "failed") -> None:
    """A subject raised: tiger's failure stops the run; a peer's is skipped with a one-line reason."""
    if cls.role == "tiger":
        raise e
    res.skip(cls.name, f"{what}: {type(e).__name__}: {e}")


@contextmanager
def opened(
    cls: type[Subject], ctx: Context, res: Result, connect: bool = True, **kwargs: Any
) -> Iterator[tuple[Subject, Client] | None]:
    """Set up a subject (and a client in this process); yields None, after a one-line skip, if it cannot run."""
    tmp = Path(tempfile.mkdtemp(dir=ctx.tmp, prefix=KIND_OF[cls] + "-"))
    subject = cls(tmp, **kwargs)
    client: Client | None = None
    skipped = False
    try:
        try:
            subject.setup()
            if connect:
                client = cls.connect(subject.spec)
        except Unavailable as e:
            res.skip(cls.name, str(e))
            skipped = True
        except Exception as e:
            skip_failed(cls, res, e, "failed to start")
            skipped = True
        yield None if skipped else (subject, client)  # type: ignore[misc]
    finally:
        if client is not None:
            client.close()
        subject.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
