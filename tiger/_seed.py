"""Seed files: ``tiger load``, ``tiger dump`` and the plugin's ``tiger_seed`` (PaperTiger's init_data).

Two formats, told apart by content:
- JSON lines: one ``{"table": ..., "record": {...}}`` per line (optional ``"namespace"``,
  default ``"global"``); this is also what ``tiger dump`` writes;
- one JSON object ``{table: [records]}``, loaded into ``"global"``.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from typing import Any

from tiger import _protocol as p
from tiger._client import Client
from tiger._client import namespace as in_namespace
from tiger._table import GLOBAL, RESERVED_PREFIX, check_name, check_record, check_records

BATCH = 1000


class SeedError(ValueError):
    """A seed file that cannot be loaded; the message names the file and line."""


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _check_document(path: str | os.PathLike[str], whole: Any) -> None:
    """A seed file that is one JSON document (over several lines) must be {table: [records]}."""
    what = _JSON_TYPES.get(type(whole), "null")
    if not isinstance(whole, dict) or not whole:
        raise SeedError(
            f"{path}: a seed file is JSON lines, or one object {{table: [records]}}; this one is {what}"
            + (" with no table" if isinstance(whole, dict) else "")
        )
    for table, records in whole.items():
        if not isinstance(records, list):
            raise SeedError(
                f"{path}: table {table!r} holds {_JSON_TYPES.get(type(records), 'null')}, not an array of records "
                "(a seed file that is one object is {table: [records]})"
            )


def read_file(path: str | os.PathLike[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(table, namespace, record) for every record in a seed file, in file order, each checked as a
    write would be (``SeedError`` naming the file and line, or table and index, of the first bad one)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # (the codec's own message names no file nor line)
        number = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SeedError(f"{path}:{number}: not UTF-8 (byte 0x{data[e.start]:02x} at column {column}): {e.reason}") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    entries: list[tuple[str, str, dict[str, Any]]] = []
    first_seen: dict[tuple[str, str, str], str] = {}
    if whole is not None and sum(1 for line in text.split("\n") if line.strip()) > 1:  # one JSON document
        _check_document(path, whole)  # (over lines: not JSON lines, whose lines would each be "not JSON")
    if isinstance(whole, dict) and whole and all(isinstance(v, list) for v in whole.values()):
        for table, records in whole.items():
            for i, record in enumerate(records):
                entries.append(_entry(f"{path}: ", f"{table}[{i}]", {"table": table, "record": record}, first_seen))
        return entries
    # JSON Lines end at "\n" only: str.splitlines() also splits at U+2028, U+2029, \x85 and more, which a
    # JSON string may hold raw (tiger dump writes them so)
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SeedError(f"{path}:{number}: not JSON ({e.msg})") from None
        entries.append(_entry(f"{path}:", f"{number}", obj, first_seen))
    return entries


def _entry(file: str, place: str, obj: Any, first_seen: dict[tuple[str, str, str], str]) -> tuple[str, str, dict[str, Any]]:
    """One seed entry, checked whole before anything is written: a file that is refused loads nothing.

    An id given twice for one table and namespace is refused (as ``insert_many`` refuses it), naming both
    places: which one a seed meant is not for the loader to guess."""
    try:
        if not isinstance(obj, dict) or set(obj) - {"table", "namespace", "record"} or "table" not in obj or "record" not in obj:
            raise ValueError('expected {"table": ..., "record": {...}} (and optionally "namespace")')
        table = check_name(obj["table"], "table")
        if table.startswith(RESERVED_PREFIX):
            raise ValueError(f"table names starting with {RESERVED_PREFIX!r} are reserved for tiger")
        namespace = check_name(obj.get("namespace", GLOBAL), "namespace")
        record = from_json(check_record(obj["record"], "record"))
        check_records([record], table, None, single=True)
        try:
            size = len(p.pack(record))
        except UnicodeEncodeError:
            raise ValueError(p.unencodable_value(record, "record")) from None
        if size > p.MAX_RECORD:
            raise ValueError(f"record is {size} bytes packed; a record may be at most {p.MAX_RECORD} bytes")
    except (TypeError, ValueError) as e:
        raise SeedError(f"{file}{place}: {e}") from None
    if "id" in record:
        key = (table, namespace, record["id"])
        if key in first_seen:
            first = first_seen[key]
            raise SeedError(
                f"{file}{place}: id {record['id']!r} is given twice (first on {'line ' if first.isdigit() else ''}{first})"
            )
        first_seen[key] = place
    return table, namespace, record


def load_files(client: Client, paths: Iterable[str | os.PathLike[str]]) -> int:
    """Read and check every file first (so a bad one loads nothing), then insert; returns the record count.

    An id given twice across the files (same table and namespace) is refused as within one file."""
    first_seen: dict[tuple[str, str, str], str] = {}
    entries = []
    for path in paths:
        for table, namespace, record in read_file(path):
            place = (table, namespace, record.get("id", ""))
            if "id" in record and place in first_seen:
                twice = f"id {record['id']!r} of {table} in {namespace} is given twice"
                raise SeedError(f"{path}: {twice} (also in {first_seen[place]})")
            first_seen[place] = str(path)
            entries.append((table, namespace, record))
    return load_entries(client, entries)


def load_entries(client: Client, entries: list[tuple[str, str, dict[str, Any]]]) -> int:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for table, namespace, record in entries:
        groups.setdefault((table, namespace), []).append(record)
    for (table, namespace), records in groups.items():
        handle = client.table(table)
        with in_namespace(namespace):
            for start in range(0, len(records), BATCH):
                handle.insert_many(records[start : start + BATCH])
    return len(entries)


def dump_lines(client: Client) -> list[str]:
    """Every record as JSON lines, each in the form ``tiger load`` reads back to the same record (bytes
    and a dict that looks like a tag go tagged, see ``to_json``; NaN and infinities as Python's json
    writes them): tables and namespaces sorted, records in insertion order. Built whole before any is
    written: a dump is all or nothing. ``ValueError`` naming the record and its field for a value no write
    takes (a log of an older tiger may hold one): dumped, it would not load back the same."""
    store = client.replica.store
    lines = []
    for table, namespaces in sorted(store.counts().items()):
        if table.startswith(RESERVED_PREFIX):
            continue
        for namespace in sorted(namespaces):
            for record in list(store.rows(table, namespace).values()):
                try:  # (a value no write takes, an ExtType a log of an older tiger holds, would change on its way)
                    check_record(record)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        f"table {table!r}, namespace {namespace!r}, id {record['id']!r}: {e}; nothing was dumped"
                    ) from None
                lines.append(json.dumps({"table": table, "namespace": namespace, "record": to_json(record)}, ensure_ascii=False))
    return lines


# Values JSON has no form for, tagged: bytes as {"$bytes": base64}; a dict whose only key starts with "$"
# (it could read as a tag) as {"$dict": {...}}. Floats NaN, Infinity and -Infinity are written as Python's
# json module writes and reads them.


def to_json(value: Any) -> Any:
    """A storable value in the form ``dump_lines`` writes (``from_json`` reads it back)."""
    if type(value) is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        inner = {key: to_json(item) for key, item in value.items()}
        if len(inner) == 1 and next(iter(inner)).startswith("$"):
            return {"$dict": inner}
        return inner
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def from_json(value: Any, where: str = "record") -> Any:
    """A value as ``to_json`` wrote it, back in its stored form; ``ValueError`` naming where (``where``) a
    ``$bytes`` holds no base64."""
    if isinstance(value, dict):
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "$bytes" and type(inner) is str:
                try:
                    return base64.b64decode(inner, validate=True)
                except ValueError as e:  # binascii.Error: "Only base64 data is allowed", naming nothing
                    raise ValueError(f"{where}: '$bytes' must hold base64 ({e})") from None
            if key == "$dict" and isinstance(inner, dict):
                return {k: from_json(v, f"{where}[{k!r}]") for k, v in inner.items()}
        return {k: from_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value
