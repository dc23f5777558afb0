"""The table rules: records by (table, namespace, id), ids, merge, pagination, find.

Theory of operation
-------------------
Rule 1: everything that decides what a write does lives here. The writer turns a
command into a *change* with the ``prepare_*`` functions (which validate and read
the current state but never modify it), then applies the change with
:meth:`Store.apply`. Every replica applies the very same change records through
the very same :meth:`Store.apply`, so the writer and the replicas cannot drift.

Rule 2: this module is pure. It imports no zmq, socket, thread or clock: the
writer passes the current time and a token generator in.

Rule 3: stored records are frozen (:class:`Record`, :class:`FrozenList`), so a
read can hand out the stored object itself: no copy on the read path, and no
caller can change the replica by mutating what it was given.

Rule 4: ``Store.apply`` is written so that a reader in another thread (the
replica's owner) never sees a half-applied change: each change lands in the
dicts through a single C-level dict operation, and the structures readers
reach through (one dict per table) are never replaced, only updated.

Order: a namespace lists newest first, by ``created`` descending, ties broken
by insertion order (later inserted first). Replacing a record (``insert`` of an
existing id, ``update``) keeps its place; ``delete`` then ``insert`` moves it to
the end. Python dicts keep insertion order, and snapshots are sent in that order,
so the order is the same everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from msgpack import ExtType

from tiger._errors import AlreadyExists, NotFound, shown

GLOBAL = "global"
RESERVED_PREFIX = "tiger."  # table names tiger keeps for itself
ONCE_TABLE = "tiger.once"  # once keys: one record per key, in namespace "global"
LEASE_TABLE = "tiger.lease"  # namespace leases: one record per leasing client (its id), in the leased namespace
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
MAX_DEPTH = 32
MAX_NAME_LENGTH = 200
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_STORABLE = "None, bool, int, float, str, bytes, list, dict"
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
_FLAT = _SCALARS - {int}  # scalars storable whatever their value


# -- frozen records -------------------------------------------------------------


def _readonly(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(
        f"tiger {type(self).__name__} objects are read-only: "
        "copy with dict(record) or tiger.thaw(record), change the copy, then write it"
    )


class Record(dict):  # type: ignore[type-arg]
    """A stored record: a read-only ``dict``. ``dict(record)`` is a mutable shallow copy."""

    __slots__ = ()
    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _readonly
    __ior__ = _readonly

    def __reduce__(self) -> tuple[Any, ...]:
        return (Record, (dict(self),))

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return thaw(self)  # type: ignore[no-any-return]


class FrozenList(list):  # type: ignore[type-arg]
    """A list inside a stored record: read-only. ``list(value)`` is a mutable copy."""

    __slots__ = ()
    __setitem__ = __delitem__ = append = extend = insert = remove = pop = _readonly
    clear = sort = reverse = __iadd__ = __imul__ = _readonly

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenList, (list(self),))

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return thaw(self)  # type: ignore[no-any-return]


def _freeze_value(value: Any) -> Any:
    if type(value) in _SCALARS or type(value) is Record or type(value) is FrozenList:
        return value  # frozen values are made only by freeze() and the frozen decoder: frozen all the way down
    # Any mapping or list, subclasses included (OrderedDict, defaultdict...): copied
    # into frozen form, so the store never holds an object the caller can still mutate.
    if isinstance(value, Mapping):
        return Record({k: _freeze_value(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return FrozenList([_freeze_value(v) for v in value])
    return value


def freeze(record: Mapping[str, Any]) -> Record:
    """The frozen form of a record (already validated). A Record is returned as is."""
    if type(record) is Record:
        return record
    for v in record.values():
        t = type(v)
        if t not in _SCALARS and t is not Record and t is not FrozenList:
            return Record({k: _freeze_value(v) for k, v in record.items()})
    return Record(record)


def thaw(value: Any) -> Any:
    """A fully mutable deep copy of a record (or of any value inside one)."""
    if isinstance(value, dict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


# -- validation -----------------------------------------------------------------


UNENCODABLE = (
    "a str UTF-8 cannot encode (a lone surrogate, as os.fsdecode makes of undecodable bytes); "
    "store bytes, or decode with errors='replace'"
)


def check_name(value: object, what: str) -> str:
    """A table or namespace name (or a once key): a non-empty str of at most 200 characters that UTF-8 can
    encode (the wire's: msgpack, as ZeroMQ carries it). Checked where a name is first given (``namespace()``,
    ``client.table()``), so that one no write can carry is refused there, not at the first write."""
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} must be 1 to {MAX_NAME_LENGTH} characters, got {len(value)}")
    if not value.isascii():
        check_storable_str(value, what)
    return value


def check_table(table: object) -> str:
    """The table of a client's insert or update: ``check_name``, and none of tiger's own (``RESERVED_PREFIX``):
    its once keys and leases are stored only by their own requests, in their own shape. (``client.table()``
    refuses such a name; a client speaking the protocol itself wrote ``{"id": "k"}`` into ``tiger.once``,
    and the writer died reading that record's ``state`` at the next client's end, and again at every start
    on its data directory.) A delete or a clear may name them: the plugin's end of run and ``tiger drop``
    clear a namespace's once keys so."""
    name = check_name(table, "table")
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"table {name!r:.60}: names starting with {RESERVED_PREFIX!r} are reserved for tiger")
    return name


def check_storable_str(value: str, what: str) -> str:
    """``value`` (a str already checked as one), or ``ValueError`` naming ``what`` if UTF-8 cannot encode it:
    no record, table or namespace can be named so, so a wait for one would wait in vain."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r:.60}: {UNENCODABLE}; nothing can be stored under it") from None
    return value


def check_prefix(value: object) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise TypeError(f"prefix must be a str or None, not {type(value).__name__}")
    if not value or len(value) > 50 or value.endswith("_"):
        raise ValueError(f"prefix must be 1 to 50 characters without a trailing '_', got {shown(value)}")
    if not value.isascii():
        check_storable_str(value, "prefix")
    return value


def check_id(value: object, what: str = "id") -> str:
    if type(value) is not str:
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def check_limit(value: object) -> int:
    """``limit`` of ``list``: an int from 1 to ``MAX_LIMIT``. ``TypeError`` for another type (a bool, a float
    too), ``ValueError`` out of that range."""
    if type(value) is not int:
        raise TypeError(f"limit must be an int from 1 to {MAX_LIMIT}, not {type(value).__name__} {shown(value)}")
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"limit must be an int from 1 to {MAX_LIMIT}, got {shown(value)}")
    return value


def _check_value(value: Any, where: str, depth: int) -> None:
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None or t is bytes:
        if t is int and not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"{where}: {_int_shown(value)} does not fit in 64 bits")
        return
    if depth >= MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"{where}: key {shown(k)} is a {type(k).__name__}; record keys must be str")
            _check_value(v, f"{where}[{shown(k)}]", depth + 1)
        return
    if isinstance(value, (list, tuple)) and not isinstance(value, ExtType):  # (a tuple msgpack packs as an extension)
        for i, v in enumerate(value):
            _check_value(v, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, (str, int, float, bytes)):  # subclasses: IntEnum, str enums, numpy scalars...
        base = next(b for b in (int, float, str, bytes) if isinstance(value, b))
        raise TypeError(f"{where}: {t.__name__} is a subclass of {base.__name__}; store a plain {base.__name__}")
    raise TypeError(f"{where}: {t.__name__} is not storable (a record holds {_STORABLE})")


def _int_shown(value: int) -> str:
    """An int as an error message names it: ``int 18446744073709551616``, or ``an int of 16610 bits``."""
    what = shown(value)
    return what if what.startswith("an int of") else f"int {what}"


def _storable(value: Any, depth: int) -> bool:
    """The fast check: True when ``value`` is storable. Builds no messages; _check_value explains a False."""
    t = type(value)
    if t is int:
        return _INT_MIN <= value <= _INT_MAX  # type: ignore[no-any-return]
    if t in _FLAT:
        return True
    if depth >= MAX_DEPTH:
        return False
    if t is dict or t is Record:
        return _flat_storable(value, depth + 1)
    if t is list or t is tuple or t is FrozenList:
        for v in value:
            t = type(v)
            if t in _FLAT:
                continue
            if not _storable(v, depth + 1):
                return False
        return True
    return False


def _flat_storable(record: Mapping[str, Any], depth: int = 1) -> bool:
    """``_storable`` for a map (a record: ``depth`` 1), with its scalars checked inline (the common case)."""
    for k, v in record.items():
        if type(k) is not str:
            return False
        t = type(v)
        if t in _FLAT:
            continue
        if t is int:
            if _INT_MIN <= v <= _INT_MAX:
                continue
            return False
        if not _storable(v, depth):
            return False
    return True


def check_record(value: object, where: str = "record") -> Mapping[str, Any]:
    """Validate a record a user wants to store; the error names the offending field."""
    plain = type(value) is dict or type(value) is Record
    if not plain and not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a mapping (dict), not {type(value).__name__}")
    record: Mapping[str, Any] = value  # type: ignore[assignment]
    if not (plain and _flat_storable(record)):
        _check_value(record, where, 0)  # slow: finds and names the offending field
    if "id" in record and record["id"] is not None:
        check_id(record["id"], f"{where}['id']")
    if "created" in record and type(record["created"]) is not int:
        raise TypeError(f"{where}['created'] must be an int (Unix seconds), not {type(record['created']).__name__}")
    return record


def check_fields(fields: Mapping[str, Any], where: str = "find") -> None:
    for k, v in fields.items():
        _check_value(v, f"{where}({k}=...)", 1)


# -- changes --------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: one per write, and a frozen one costs 4x to make (nothing changes it)
class Put:
    """Store these whole records (replacing any with the same id), in this order.

    ``packed``: the records as one packed msgpack array, when a writer has them so (a call's records it
    stores exactly as decoded): packing the change embeds these bytes instead of packing the records
    again. Not part of the change's value (equality ignores it)."""

    table: str
    namespace: str
    records: tuple[Record, ...]
    packed: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)  # not frozen: one per write, and a frozen one costs 4x to make (nothing changes it)
class Delete:
    table: str
    namespace: str
    id: str


@dataclass(frozen=True, slots=True)
class Clear:
    """Every namespace of one table."""

    table: str


@dataclass(frozen=True, slots=True)
class ClearNamespace:
    table: str
    namespace: str


@dataclass(frozen=True, slots=True)
class DropNamespace:
    """One namespace, in every table (a test's cleanup)."""

    namespace: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Puts and deletes applied as one change (``client.batch()``): one seq, one log entry, all or none."""

    changes: tuple[Put | Delete, ...]


Change = Put | Delete | Clear | ClearNamespace | DropNamespace | Batch
Rows = dict[str, Record]  # id -> record, in insertion order


# -- the store ------------------------------------------------------------------


class Store:
    """Every table, namespace and record; the writer's state and every replica's."""

    def __init__(self) -> None:
        # table -> namespace -> id -> record. The per-table dicts are never replaced
        # once created (readers hold them); namespace dicts are replaced whole.
        self.tables: dict[str, dict[str, Rows]] = {}
        # (table, namespace) -> the version of its rows, for the cached list order: a number drawn from one
        # counter, never used twice, so a namespace gone (and forgotten here) then made again cannot match an
        # order a reader thread cached for it before
        self._versions: dict[tuple[str, str], int] = {}
        self._versions_drawn = itertools.count(1)
        self._orders: dict[tuple[str, str], tuple[int, list[Record], dict[str, int]]] = {}

    # -- writing -----------------------------------------------------------------

    def namespaces_of(self, table: str) -> dict[str, Rows]:
        """The stable dict namespace -> rows of one table (created empty if unknown)."""
        found = self.tables.get(table)
        if found is None:
            found = self.tables.setdefault(table, {})
        return found

    def _touch(self, table: str, namespace: str) -> None:
        key = (table, namespace)
        found = self.tables.get(table)
        if found is not None and namespace in found:
            self._versions[key] = next(self._versions_drawn)
        else:  # gone (emptied, cleared, dropped): nothing kept for it (a test run makes and drops thousands)
            self._versions.pop(key, None)
        self._orders.pop(key, None)  # a stale order would keep deleted records alive

    def apply(self, change: Change) -> None:
        """Apply one change. Never raises for a change that ``prepare_*`` produced."""
        if type(change) is Put:
            self._put(change)
            self._touch(change.table, change.namespace)
        elif type(change) is Delete:
            if self._delete(change):
                self._touch(change.table, change.namespace)
        elif type(change) is ClearNamespace:
            found = self.tables.get(change.table)
            if found and found.pop(change.namespace, None) is not None:
                self._touch(change.table, change.namespace)
        elif type(change) is Clear:
            found = self.tables.get(change.table)
            if found:
                touched = list(found)
                found.clear()
                for ns in touched:
                    self._touch(change.table, ns)
        elif type(change) is Batch:  # the parts inline, each (table, namespace) touched once at the end
            self._apply_parts(change.changes)
        elif type(change) is DropNamespace:
            for table, found in list(self.tables.items()):
                if not dropped_with_namespace(table):
                    continue
                if found.pop(change.namespace, None) is not None:
                    self._touch(table, change.namespace)
        else:
            raise TypeError(f"not a change: {change!r}")

    def _put(self, change: Put) -> None:
        """Store a Put's records through one dict operation (reads take no lock: never a namespace seen
        empty or half filled)."""
        namespaces = self.namespaces_of(change.table)
        rows = namespaces.get(change.namespace)
        if len(change.records) == 1:
            record = freeze(change.records[0])
            if rows is None:
                namespaces[change.namespace] = {record["id"]: record}
            else:
                rows[record["id"]] = record
            return
        batch = {r["id"]: freeze(r) for r in change.records}
        if rows is None:
            namespaces[change.namespace] = batch
        else:
            rows.update(batch)

    def _delete(self, change: Delete) -> bool:
        """Remove a record (its namespace with it when it was the last); False when it was not there."""
        found = self.tables.get(change.table)
        rows = found.get(change.namespace) if found else None
        if found is None or rows is None or change.id not in rows:
            return False
        if len(rows) == 1:
            del found[change.namespace]
        else:
            del rows[change.id]
        return True

    def _apply_parts(self, parts: tuple[Put | Delete, ...]) -> None:
        """A Batch's parts, each as ``apply`` applies it, each (table, namespace) touched once at the end."""
        touched = set()
        for part in parts:
            if type(part) is Put:
                self._put(part)
            elif not self._delete(part):  # type: ignore[arg-type]
                continue
            touched.add((part.table, part.namespace))
        for table, namespace in touched:
            self._touch(table, namespace)

    def load(self, content: Mapping[str, Mapping[str, list[Record]]]) -> None:
        """Replace everything by a snapshot's content, in place.

        A reader in another thread sees, per namespace, either the old rows or the
        new ones, never an empty table in between. ``ValueError`` naming the place (nothing changed): content
        that is not table -> namespace -> list of records (maps) with a str ``id`` and an int ``created``,
        what every replica relies on (a data directory's record without ``created`` made every joiner skip
        the snapshot's chunk holding it, and hold a store short of its records).
        """
        check_content(content)
        self.load_rows(
            {
                table: {ns: {r["id"]: freeze(r) for r in records} for ns, records in namespaces.items() if records}
                for table, namespaces in content.items()
            }
        )

    def load_rows(self, fresh: dict[str, dict[str, Rows]]) -> None:
        """``load``, given the rows already built: table -> namespace -> id -> frozen record (none empty)."""
        # user threads may add table dicts meanwhile (Client.table): never iterate or replace the live dict
        for table, new in fresh.items():
            self.namespaces_of(table).update(new)
        for table, namespaces in list(self.tables.items()):
            new = fresh.get(table, {})
            for ns in [ns for ns in list(namespaces) if ns not in new]:
                del namespaces[ns]
        for key in list(self._versions):
            self._touch(*key)
        for table, namespaces in list(self.tables.items()):
            for ns in list(namespaces):
                self._touch(table, ns)

    # -- reading -----------------------------------------------------------------

    def rows(self, table: str, namespace: str) -> Rows:
        namespaces = self.tables.get(table)
        if namespaces is None:
            return {}
        return namespaces.get(namespace) or {}

    def get(self, table: str, namespace: str, id: str) -> Record | None:
        return self.rows(table, namespace).get(id)

    def _ordered(self, table: str, namespace: str) -> tuple[list[Record], dict[str, int]]:
        key = (table, namespace)
        version = self._versions.get(key)
        cached = self._orders.get(key)
        if cached is not None and cached[0] == version:
            return cached[1], cached[2]
        records = list(self.rows(table, namespace).values())  # one C call: a consistent copy
        records.reverse()  # newest insertion first, so the stable sort breaks ties that way
        records.sort(key=_created, reverse=True)
        index = {r["id"]: i for i, r in enumerate(records)}
        if version is not None:  # (a namespace with no version is gone: nothing cached for it)
            self._orders[key] = (version, records, index)
        return records, index

    def ordered(self, table: str, namespace: str) -> list[Record]:
        """Every record of a namespace in list order (newest first). Do not mutate."""
        return self._ordered(table, namespace)[0]

    def page(
        self,
        table: str,
        namespace: str,
        limit: int = DEFAULT_LIMIT,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> tuple[list[Record], bool]:
        """One page of a namespace, Stripe style: (records, has_more)."""
        check_limit(limit)
        if starting_after is not None and ending_before is not None:
            raise ValueError("pass starting_after or ending_before, not both")
        records, index = self._ordered(table, namespace)
        if starting_after is not None:
            start = _cursor(index, starting_after, "starting_after", table, namespace) + 1
            return records[start : start + limit], start + limit < len(records)
        if ending_before is not None:
            end = _cursor(index, ending_before, "ending_before", table, namespace)
            start = max(0, end - limit)
            return records[start:end], start > 0
        return records[:limit], len(records) > limit

    def find(self, table: str, namespace: str, fields: Mapping[str, Any]) -> list[Record]:
        """Records whose top-level fields equal every given value, in list order."""
        items = [(k, _freeze_value(v)) for k, v in fields.items()]  # a tuple matches the stored list
        missing = object()
        return [r for r in self.ordered(table, namespace) if all(r.get(k, missing) == v for k, v in items)]

    def table_names(self) -> list[str]:
        """Tables that hold at least one record, sorted."""
        return sorted(t for t, namespaces in list(self.tables.items()) if namespaces)

    def namespace_names(self) -> list[str]:
        """Namespaces that hold at least one record in some user table (tiger's own excluded), sorted."""
        tables = [namespaces for table, namespaces in list(self.tables.items()) if not table.startswith(RESERVED_PREFIX)]
        return sorted({ns for namespaces in tables for ns in list(namespaces)})

    def counts(self) -> dict[str, dict[str, int]]:
        """table -> namespace -> number of records."""
        return {
            t: {ns: len(rows) for ns, rows in sorted(namespaces.items())}
            for t, namespaces in sorted(self.tables.items())
            if namespaces
        }

    def __len__(self) -> int:
        return sum(len(rows) for namespaces in self.tables.values() for rows in namespaces.values())

    def snapshot(self, chunk_size: int) -> Iterator[list[tuple[str, str, list[Record]]]]:
        """The whole content in chunks of about ``chunk_size`` records, insertion order kept."""
        chunk: list[tuple[str, str, list[Record]]] = []
        size = 0
        for table, namespaces in self.tables.items():
            for ns, rows in namespaces.items():
                records = list(rows.values())
                for start in range(0, len(records), chunk_size):
                    part = records[start : start + chunk_size]
                    chunk.append((table, ns, part))
                    size += len(part)
                    if size >= chunk_size:
                        yield chunk
                        chunk, size = [], 0
        if chunk:
            yield chunk

    def content(self) -> dict[str, dict[str, list[Record]]]:
        """Everything as plain nested data, order included: for equality checks in tests."""
        return {
            t: {ns: list(rows.values()) for ns, rows in namespaces.items()} for t, namespaces in self.tables.items() if namespaces
        }

    def check(self) -> None:
        """Assert the invariants; intended for tests."""
        for table, namespaces in self.tables.items():
            for ns, rows in namespaces.items():
                assert rows, f"empty namespace dict kept: {table}/{ns}"
                for id, r in rows.items():
                    _check_frozen(r, f"{table}/{ns}/{id}")
                    assert r["id"] == id, f"{table}/{ns}/{id} stored under another id"
                    assert type(r["created"]) is int, f"{table}/{ns}/{id} has no int created"


def check_content(content: Any) -> None:
    """Raise ``ValueError`` naming the first place where ``content`` is not a store's content: a map of table
    (str) -> namespace (str) -> list of records, each a map with a str ``id`` and an int ``created``."""
    if not isinstance(content, Mapping):
        raise ValueError(f"tables: must be a map of table -> namespace -> records, not {type(content).__name__}")
    for table, namespaces in content.items():
        if type(table) is not str or not isinstance(namespaces, Mapping):
            raise ValueError(f"tables[{shown(table)}]: must be a map of namespace -> records under a str table name")
        for ns, records in namespaces.items():
            where = f"table {shown(table)}, namespace {shown(ns)}"
            if type(ns) is not str or not isinstance(records, list):
                raise ValueError(f"{where}: must be a list of records under a str namespace")
            for i, record in enumerate(records):
                if not isinstance(record, Mapping) or type(record.get("id")) is not str:
                    raise ValueError(f"{where}, record {i}: must be a map with a str 'id'")
                if type(record.get("created")) is not int:
                    raise ValueError(f"{where}, record {shown(record['id'])}: 'created' must be an int (Unix seconds)")


def _check_frozen(value: Any, where: str) -> None:
    t = type(value)
    if t is Record:
        for k, v in value.items():
            _check_frozen(v, f"{where}[{shown(k)}]")
    elif t is FrozenList:
        for i, v in enumerate(value):
            _check_frozen(v, f"{where}[{i}]")
    else:
        assert t in _SCALARS, f"{where} is a mutable {t.__name__}, not frozen"


def _created(record: Record) -> int:
    return record["created"]  # type: ignore[no-any-return]


def _cursor(index: dict[str, int], id: object, what: str, table: str, namespace: str) -> int:
    position = index.get(check_id(id, what))
    if position is None:
        raise NotFound(f"{what}: {table} {shown(id)} is not in namespace {namespace!r}")
    return position


# -- commands -> changes ----------------------------------------------------------


def check_records(records: Sequence[Mapping[str, Any]], table: str, prefix: str | None, *, single: bool) -> None:
    """Everything about a batch to insert that needs no store: values, given ids' prefix, ids given twice.

    The client runs it before sending (nothing bad is sent) and the writer in ``prepare_insert``.
    ``single``: name the record ``record``, not ``records[i]``.
    """
    given: dict[str, int] = {}
    id_start = prefix + "_" if prefix else ""
    for i, record in enumerate(records):
        if not _batch_record_ok(record, id_start, given, i):
            _check_batch_record(record, i, "record" if single else f"records[{i}]", table, prefix, given)


def _batch_record_ok(record: object, id_start: str, given: dict[str, int], i: int) -> bool:
    """The fast path of ``_check_batch_record`` (no messages built; the common case of a plain record): True,
    with a given id noted in ``given``, when the record passes every check; False: ``_check_batch_record``
    then raises the error naming the field (or accepts a Mapping that is not a dict). ``id_start``: the
    table's prefix and ``_``, or ``""`` with no prefix."""
    if not ((type(record) is dict or type(record) is Record) and _flat_storable(record)):
        return False
    if type(record.get("created", 0)) is not int:
        return False
    id = record.get("id")
    if id is None:
        return True
    if type(id) is not str or not id or not id.startswith(id_start) or id in given:
        return False
    given[id] = i
    return True


def _check_batch_record(record: object, i: int, where: str, table: str, prefix: str | None, given: dict[str, int]) -> None:
    """One record of a batch: its values, its given id's prefix, an id given twice (``given``: id -> index)."""
    check_record(record, where)
    id = record.get("id")  # type: ignore[attr-defined]
    if id is None:
        return
    if prefix and not id.startswith(prefix + "_"):
        raise ValueError(f"{where}['id']: {shown(id)} must start with {prefix + '_'!r} (the prefix of table {table!r})")
    if id in given:
        raise ValueError(f"{where}['id']: {shown(id)} appears twice in one batch (first at records[{given[id]}])")
    given[id] = i


def prepare_insert(
    store: Store,
    table: str,
    namespace: str,
    prefix: str | None,
    records: Sequence[Mapping[str, Any]],
    *,
    create: bool,
    now: int,
    token: Callable[[int], str],
) -> Put:
    """The change for ``insert``/``insert_many``/``create``: ids and ``created`` filled in.

    ``token(n)`` returns n random bytes as hex. All or nothing: any bad record
    rejects the whole batch.
    """
    check_table(table)
    check_name(namespace, "namespace")
    check_prefix(prefix)
    if not isinstance(records, list):
        raise TypeError(f"records must be a list, not {type(records).__name__}")
    if not records:
        raise ValueError("records must not be empty")
    rows = store.rows(table, namespace)
    taken: set[Any] | None = None  # generated ids avoid stored ids, given ids and each other: made at the first
    given: dict[str, int] = {}
    out: list[Record] = []
    single = len(records) == 1
    id_start = prefix + "_" if prefix else ""
    for i, record in enumerate(records):
        # per record, in this order, so the first bad record decides the error (as the client sees it)
        if not _batch_record_ok(record, id_start, given, i):
            _check_batch_record(record, i, "record" if single else f"records[{i}]", table, prefix, given)
        id = record.get("id")
        if id is None:
            if taken is None:
                taken = {r.get("id") for r in records if isinstance(r, Mapping) and type(r.get("id")) is str}
            while True:
                id = f"{prefix}_{token(8)}" if prefix else token(12)
                if id not in rows and id not in taken:
                    break
            taken.add(id)
        existing = rows.get(id)
        if create and existing is not None:
            raise AlreadyExists(f"{table} {shown(id)} already exists in namespace {namespace!r}")
        if type(record) is Record:  # frozen all the way down, as the writer decodes it
            if record.get("id") is id and "created" in record and next(iter(record)) == "id":
                out.append(record)  # complete, id first: stored as is
                continue
            frozen = Record(id=id)  # one copy, made frozen (Record's own setters refuse)
            dict.update(frozen, record)
            dict.__setitem__(frozen, "id", id)
            if "created" not in frozen:
                dict.__setitem__(frozen, "created", existing["created"] if existing is not None else now)
            out.append(frozen)
            continue
        stored = {"id": id}
        stored.update(record)
        stored["id"] = id
        if "created" not in stored:
            stored["created"] = existing["created"] if existing is not None else now
        out.append(freeze(stored))
    return Put(table, namespace, tuple(out))


class _StagedRows:
    """One namespace's rows as a batch's earlier operations leave them (None: deleted), over the store's."""

    __slots__ = ("base", "staged")

    def __init__(self, base: Rows) -> None:
        self.base = base
        self.staged: dict[str, Record | None] = {}

    def get(self, id: str, default: Any = None) -> Any:
        if id in self.staged:
            found = self.staged[id]
            return default if found is None else found
        return self.base.get(id, default)

    def __contains__(self, id: object) -> bool:
        return self.get(id) is not None  # type: ignore[arg-type]


class Staged(Store):
    """The store as the operations of a batch prepared so far would leave it, changing nothing: the
    ``prepare_*`` functions read it as a Store (``rows``, ``get``), ``stage`` records each change made."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._base = store
        self._staged: dict[tuple[str, str], _StagedRows] = {}

    def rows(self, table: str, namespace: str) -> Rows:
        key = (table, namespace)
        found = self._staged.get(key)
        if found is None:
            found = self._staged[key] = _StagedRows(self._base.rows(table, namespace))
        return found  # type: ignore[return-value]

    def get(self, table: str, namespace: str, id: str) -> Record | None:
        return self.rows(table, namespace).get(id)

    def stage(self, change: Put | Delete) -> None:
        staged = self.rows(change.table, change.namespace).staged  # type: ignore[attr-defined]
        if type(change) is Put:
            for record in change.records:
                staged[record["id"]] = record
        else:
            staged[change.id] = None  # type: ignore[union-attr]


def prepare_update(store: Store, table: str, namespace: str, id: str, changes: Mapping[str, Any]) -> Put:
    """The change for ``update``: a shallow merge of ``changes`` into the stored record."""
    check_table(table)
    check_name(namespace, "namespace")
    check_id(id)
    check_record(changes, "changes")
    current = store.get(table, namespace, id)
    if current is None:
        raise NotFound(f"{table} {shown(id)} is not in namespace {namespace!r}")
    check_update(id, changes, current)
    merged = dict(current)
    merged.update(changes)
    return Put(table, namespace, (freeze(merged),))


def check_update(id: str, changes: Mapping[str, Any], current: Mapping[str, Any] | None) -> None:
    """The rules of ``update`` that need no more than the changes and the record as known (``current``,
    None: not known here): the client checks them before sending (against its replica), the writer
    again (against the store)."""
    if "id" in changes and changes["id"] != id:
        raise ValueError(f"changes['id']: the id of {shown(id)} cannot be changed")
    if current is not None and "created" in changes and changes["created"] != current["created"]:
        raise ValueError(f"changes['created']: the created time of {shown(id)} cannot be changed")


def prepare_delete(store: Store, table: str, namespace: str, id: str) -> Delete | None:
    """The change for ``delete``, or None when there is nothing to delete."""
    check_name(table, "table")
    check_name(namespace, "namespace")
    check_id(id)
    if id not in store.rows(table, namespace):
        return None
    return Delete(table, namespace, id)


def prepare_clear(store: Store, table: str) -> Clear | None:
    check_name(table, "table")
    return Clear(table) if store.tables.get(table) else None


def prepare_clear_namespace(store: Store, table: str, namespace: str) -> ClearNamespace | None:
    check_name(table, "table")
    check_name(namespace, "namespace")
    return ClearNamespace(table, namespace) if store.rows(table, namespace) else None


def dropped_with_namespace(table: str) -> bool:
    """Whether a namespace's drop removes its records of ``table``: a user's table, or tiger's leases (a lease
    ends with its namespace); tiger's once keys are not a test's data, and stay."""
    return not table.startswith(RESERVED_PREFIX) or table == LEASE_TABLE


def prepare_drop_namespace(store: Store, namespace: str) -> DropNamespace | None:
    check_name(namespace, "namespace")
    if not any(namespace in found for table, found in store.tables.items() if dropped_with_namespace(table)):
        return None
    return DropNamespace(namespace)


def check_value(value: object, where: str = "value") -> None:
    """Validate a value a record could hold (a once value, a find argument)."""
    _check_value(value, where, 0)


# -- once keys ------------------------------------------------------------------------
#
# A once key is a record {"id": key, "state": "building" | "done" | "failed", "owner": client id,
# "by": who built it, "value": ..., "error": [type name, message, builder, traceback] | None,
# "teardown": whether its builder tears it down (a generator factory), "holders": [client ids that
# asked for it besides its builder, until they leave: only while it builds, or for a value with a
# teardown, which waits for them]} in
# ONCE_TABLE, in the namespace that scopes it ("global" by default; the pytest plugin uses one
# namespace per test run, so that two runs on one writer never share a key).
# Waiting callers watch that record in their replica; nothing polls the writer.

ONCE_ERROR_FIELDS = 4  # type name, message, builder, traceback (last frames)
ONCE_STATES = ("building", "done", "failed")


def well_formed_once(record: Record | None) -> Record | None:
    """``record`` if it is a once key's record as tiger writes it (its ``state``, ``owner`` and ``holders``),
    else None: a record of ONCE_TABLE that is not one is read as no record (a claim then takes the key, a
    client's end passes it by). A data directory of an earlier tiger may hold one: the writer took a client's
    insert into ``tiger.once`` (``{"id": "k"}``), and then died of KeyError 'state' at the next client's end
    and at every start on that directory."""
    if record is None:
        return None
    state = record.get("state")
    if state not in ONCE_STATES or type(record.get("owner")) is not str or type(record.get("id")) is not str:
        return None
    holders, error = record.get("holders"), record.get("error")
    if not isinstance(holders, list) or not all(type(h) is str for h in holders):
        return None
    if state == "failed" and not (isinstance(error, list) and len(error) == ONCE_ERROR_FIELDS):
        return None
    if state == "done" and "value" not in record:
        return None
    return record


def _once_at(store: Store, namespace: str, key: str) -> Record | None:
    """Once ``key``'s record in ``namespace`` (``well_formed_once``), or None."""
    return well_formed_once(store.get(ONCE_TABLE, namespace, key))


def once_owner(store: Store, namespace: object, key: object) -> str | None:
    """The client that builds once ``key`` of ``namespace``, or built it with a teardown of its own, else None
    (no key, a plain value, a failure; a key or namespace that is not a str)."""
    if type(namespace) is not str or type(key) is not str:
        return None
    record = _once_at(store, namespace, key)
    if record is None or not (record["state"] == "building" or (record["state"] == "done" and record.get("teardown"))):
        return None
    return record["owner"]  # type: ignore[no-any-return]


def _once_records(store: Store) -> Iterator[tuple[str, str, Record]]:
    """Every once key's record (``well_formed_once``), as (namespace, key, record)."""
    for namespace, rows in store.tables.get(ONCE_TABLE, {}).items():
        for key, record in rows.items():
            if well_formed_once(record) is not None:
                yield namespace, key, record


def prepare_once_claim(
    store: Store,
    key: str,
    client_id: str,
    by: str,
    live: Container[str],
    *,
    now: int,
    namespace: str = GLOBAL,
    claim: int | None = None,
) -> tuple[str, Put | None]:
    """The verdict for a caller of ``once``: ("build", change) | ("wait", None) | ("done", None).

    A key being built by a client that is no longer ``live`` is handed to this caller. ``claim``: what
    names this claim (its request id), kept in the record so that a release of an earlier claim by the
    same client id (sent late, or by another socket sharing the id) cannot give this one up.
    """
    check_name(key, "key")
    check_name(namespace, "namespace")
    check_id(client_id, "client_id")
    check_value(by, "by")
    current = _once_at(store, namespace, key)
    holders: list[str] = []
    if current is not None:
        if current["state"] != "building":
            return "done", _holding(namespace, current, client_id)
        if current["owner"] != client_id and current["owner"] in live:
            return "wait", _holding(namespace, current, client_id)
        holders = [h for h in current["holders"] if h != client_id]  # a key taken over keeps its waiting holders
    record = {
        "id": key,
        "state": "building",
        "owner": client_id,
        "by": by,
        "value": None,
        "error": None,
        "holders": holders,
        "teardown": False,
        "created": now,
        "claim": claim,
    }
    return "build", Put(ONCE_TABLE, namespace, (freeze(record),))


def _holding(namespace: str, current: Record, client_id: str) -> Put | None:
    """``client_id`` holds the value from now on (its builder's teardown waits for it to leave)."""
    if current["owner"] == client_id or client_id in current["holders"]:
        return None
    if current["state"] != "building" and not (current["state"] == "done" and current.get("teardown")):
        return None  # a value without a teardown needs no bookkeeping of who has it
    return Put(ONCE_TABLE, namespace, (freeze({**current, "holders": [*current["holders"], client_id]}),))


def prepare_once_finish(
    store: Store, key: str, client_id: str, value: Any, error: Any, namespace: str = GLOBAL, teardown: bool = False
) -> tuple[str, Change | None]:
    """Store the builder's value (or its error). ``teardown``: the builder will tear the value down, once
    every holder has left (the holders so far are kept); else holders are no longer tracked.

    ("stored", change), or ("superseded", None) when ``client_id`` no longer holds the key.
    """
    check_name(key, "key")
    check_name(namespace, "namespace")
    check_id(client_id, "client_id")
    current = _once_at(store, namespace, key)
    if current is None or current["state"] != "building" or current["owner"] != client_id:
        return "superseded", None
    if error is not None:
        if not (isinstance(error, list) and len(error) == ONCE_ERROR_FIELDS and all(type(x) is str for x in error)):
            raise TypeError("error must be [type name, message, builder, traceback], four str")
        return "stored", Put(ONCE_TABLE, namespace, (freeze({**current, "state": "failed", "error": error, "holders": []}),))
    check_value(value, "value")
    holders = current["holders"] if teardown else []
    done = {**current, "state": "done", "value": value, "teardown": teardown, "holders": holders}
    return "stored", Put(ONCE_TABLE, namespace, (freeze(done),))


def prepare_once_retire(store: Store, key: str, client_id: str, namespace: str = GLOBAL) -> Delete | None:
    """Its builder tore the value down (a generator factory's teardown): the key goes; a later caller builds anew."""
    current = _once_at(store, namespace, key)
    if current is None or current["state"] != "done" or current["owner"] != client_id:
        return None
    return Delete(ONCE_TABLE, namespace, key)


def prepare_once_let_go(store: Store, key: str, client_id: str, namespace: str = GLOBAL) -> Put | None:
    """``client_id`` lets go of once ``key``'s value (a closing client, before it waits for the holders of
    the values it built): its builder's teardown no longer waits for it. None when it does not hold it."""
    current = _once_at(store, namespace, key)
    if current is None or client_id not in current["holders"]:
        return None
    return Put(ONCE_TABLE, namespace, (freeze({**current, "holders": [h for h in current["holders"] if h != client_id]}),))


def prepare_once_leave(store: Store, client_id: str) -> list[Put]:
    """``client_id`` left (goodbye or silence): it holds no once value any more."""
    return [
        Put(ONCE_TABLE, namespace, (freeze({**record, "holders": [h for h in record["holders"] if h != client_id]}),))
        for namespace, _, record in _once_records(store)
        if client_id in record["holders"]
    ]


def prepare_once_orphans(store: Store, client_id: str) -> list[tuple[str, str, Delete]]:
    """``client_id`` is gone (killed) with values it built that it was to tear down itself (a generator
    factory's, ``teardown``): that teardown will not run, and what the value stood for (a server, a directory of
    its process) may have ended with it. Each is retired, as its teardown would have done (a later caller builds
    anew), as (namespace, key, change). Before, they stayed stored and were handed to later callers: a
    ``multiprocessing.Pool``'s workers ended by ``terminate()`` (SIGTERM), a user trial."""
    return [
        (namespace, key, Delete(ONCE_TABLE, namespace, key))
        for namespace, key, record in _once_records(store)
        if record["state"] == "done" and record.get("teardown") and record["owner"] == client_id
    ]


def prepare_once_kept(store: Store, client_id: str) -> list[Put]:
    """``client_id`` said goodbye with values it built and was to tear down itself, their teardowns not run (a
    cancelled ``close()``): they stay, as values of no teardown (holders no longer counted), so that nothing
    retires them later as a gone builder's (``prepare_once_orphans``): a beat of the client read after its
    goodbye, or a writer restarted on its data directory, took it for gone by silence (a review)."""
    return [
        Put(ONCE_TABLE, namespace, (freeze({**record, "teardown": False, "holders": []}),))
        for namespace, _, record in _once_records(store)
        if record["state"] == "done" and record.get("teardown") and record["owner"] == client_id
    ]


def prepare_once_release(
    store: Store, key: str, client_id: str, namespace: str = GLOBAL, claims: Sequence[int] | None = None
) -> Delete | None:
    """Give a key up (its builder was interrupted): waiting callers then claim it anew. ``claims``: the
    request ids of the first and the last claim of the call giving it up, ``[first, last]`` (a call
    claims again while the writer is unavailable, and any of its claims may be the one applied); a
    claim outside them is left alone: an async client's release goes on in a task after its caller was
    cancelled, and could reach the writer after a newer claim of the key by the same client id. None:
    whichever claim ``client_id`` holds (a silent client's). Raises ``TypeError`` for malformed
    ``claims``."""
    if claims is not None and not (
        isinstance(claims, (list, tuple)) and len(claims) == 2 and all(type(c) is int for c in claims) and claims[0] <= claims[1]
    ):
        raise TypeError(f"payload of a release must be [first, last], its claims' request ids, or None, not {claims!r:.80}")
    current = _once_at(store, namespace, key)
    if current is None or current["state"] != "building" or current["owner"] != client_id:
        return None
    claim = current.get("claim")
    if claims is not None and claim is not None and not claims[0] <= claim <= claims[1]:
        return None  # (a record from before claims were named: any release of its owner's)
    return Delete(ONCE_TABLE, namespace, key)


def claims_of(store: Store, client_id: str) -> list[tuple[str, str]]:
    """The once keys ``client_id`` is building, as (namespace, key) (to release them when it goes silent)."""
    return [
        (namespace, key)
        for namespace, key, record in _once_records(store)
        if record["state"] == "building" and record["owner"] == client_id
    ]


# -- namespace leases ---------------------------------------------------------------------
#
# A lease is a record {"id": client id, "created": ...} in LEASE_TABLE, in the namespace it leases: the
# writer drops that namespace from every table once the last client leasing it is gone (goodbye, or
# silence: see tiger._core). Stored, so replicated, logged and kept across a restart with a data
# directory; a DropNamespace removes the namespace's leases with it (the lease ends with its namespace).


def check_leasable(namespace: object) -> str:
    """A namespace a client may lease: any but ``"global"``, every process's default namespace (leased by a
    client that called ``lease_namespace()`` outside any namespace block, it went, seeds and every other
    client's records with it, when that client closed: a user trial)."""
    check_name(namespace, "namespace")
    if namespace == GLOBAL:
        raise ValueError(
            "namespace 'global' cannot be leased: it is every process's default namespace, dropped with every "
            "record in it when the lease ends; lease a namespace of its own (inside tiger.namespace(...), or name it)"
        )
    return namespace  # type: ignore[return-value]


def prepare_lease(store: Store, namespace: str, client_id: str, *, now: int) -> Put | None:
    """``client_id`` leases ``namespace``; None when it holds that lease already."""
    check_leasable(namespace)
    check_id(client_id, "client_id")
    if store.get(LEASE_TABLE, namespace, client_id) is not None:
        return None
    return Put(LEASE_TABLE, namespace, (freeze({"id": client_id, "created": now}),))


def leases_of(store: Store, client_id: str) -> list[str]:
    """The namespaces ``client_id`` leases."""
    return [namespace for namespace, rows in store.tables.get(LEASE_TABLE, {}).items() if client_id in rows]


def prepare_lease_end(store: Store, client_id: str, live: Container[str] = ()) -> list[tuple[str, Delete | DropNamespace]]:
    """``client_id`` is gone: each namespace it leased, with the changes that end its lease there: the
    namespace dropped when no other client leases it, with the once keys scoped to it that are settled (built
    or failed, with no teardown that a ``live`` builder will run: a key being built has a live builder, else
    it was released), else only its lease record deleted. (A dropped namespace's settled keys stayed, values
    and all: a killed run's, for good.)"""
    ends: list[tuple[str, Delete | DropNamespace]] = []
    for namespace in leases_of(store, client_id):
        if len(store.rows(LEASE_TABLE, namespace)) > 1:
            ends.append((namespace, Delete(LEASE_TABLE, namespace, client_id)))
            continue
        ends.extend(  # first: a disk fault after the drop would leave them, the lease (what a retry finds) gone
            (namespace, Delete(ONCE_TABLE, namespace, key))
            for key, record in store.rows(ONCE_TABLE, namespace).items()
            if well_formed_once(record) is None  # (no once key's: nothing but the namespace keeps it)
            or (
                record["state"] != "building"
                and not (record.get("teardown") and record.get("owner") in live and record.get("owner") != client_id)
            )
        )
        ends.append((namespace, DropNamespace(namespace)))
    return ends


def clients_awaited(store: Store) -> set[str]:
    """The clients a writer started on stored content gives ``CLIENT_SILENCE`` to be heard before it takes them
    for gone: the builders of once keys (then handed to others), of values they tear down themselves (then
    retired: ``prepare_once_orphans``), and the holders of leases (their lease grace then begins)."""
    builders = {
        record["owner"]
        for _, _, record in _once_records(store)
        if record["state"] == "building" or (record["state"] == "done" and record.get("teardown"))
    }
    return builders | {client_id for rows in store.tables.get(LEASE_TABLE, {}).values() for client_id in rows}
