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
import re
import sys
from collections.abc import Iterable
from typing import Any

from tiger import _protocol as p
from tiger._batch import BatchTooBig
from tiger._calls import MAX_SECONDS
from tiger._client import Client
from tiger._client import namespace as in_namespace
from tiger._errors import shown
from tiger._table import GLOBAL, MAX_DEPTH, RESERVED_PREFIX, check_name, check_record, check_records

BATCH = 1000
SEED_RATE = 10_000  # records a second a seed's one write is given, beyond the client's timeout
BOM = b"\xef\xbb\xbf"  # UTF-8's byte-order mark, which editors on Windows write at the start of a file


class SeedError(ValueError):
    """A seed file that cannot be loaded; the message names the file and line."""


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _json_kind(value: Any) -> str:
    """What a value parsed from JSON is, in JSON's words: ``an object``, ``an array``, ``a string``..."""
    return "an object" if isinstance(value, dict) else _JSON_TYPES.get(type(value), "null")


def _check_document(path: str | os.PathLike[str], whole: Any) -> None:
    """A seed file that is one JSON document (over several lines) must be {table: [records]}."""
    what = _json_kind(whole)
    if not isinstance(whole, dict) or not whole:
        raise SeedError(
            f"{path}: a seed file is JSON lines, or one object {{table: [records]}}; this one is {what}"
            + (" with no table" if isinstance(whole, dict) else "")
        )
    for table, records in whole.items():
        if not isinstance(records, list):
            raise SeedError(
                f"{path}: table {table!r} holds {_json_kind(records)}, not an array of records "
                "(a seed file that is one object is {table: [records]})"
            )


def read_file(path: str | os.PathLike[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(table, namespace, record) for every record in a seed file, in file order, each checked as a
    write would be (``SeedError`` naming the file and line, or table and index, of the first bad one).

    UTF-8, with a byte-order mark taken at the very start of the file (only there: one starting a later
    line is refused). A key given twice in one JSON object is refused, naming it (JSON parsers keep the
    last, silently). Nesting of any depth is refused as "nested deeper than 32 levels", naming the field
    (Python's decoder raised ``RecursionError`` past about 1000 levels: see ``_loads``). ``-`` reads standard
    input, named ``<stdin>`` in errors (``tiger dump | tiger load -``: it said "No such file or directory: '-'")."""
    if os.fspath(path) == "-":
        data, path = sys.stdin.buffer.read(), "<stdin>"
    else:
        with open(path, "rb") as f:
            data = f.read()
    if data.startswith(BOM):  # (not part of line 1: an editor shows none, so columns count from after it)
        data = data[len(BOM) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # (the codec's own message names no file nor line)
        number = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SeedError(f"{path}:{number}: not UTF-8 (byte 0x{data[e.start]:02x} at column {column}): {e.reason}") from None
    try:
        whole = _loads(text)
    except ValueError:  # (a JSONDecodeError; or an int of more than 4300 digits, which Python refuses to read)
        whole = None
    entries: list[tuple[str, str, dict[str, Any]]] = []
    first_seen: dict[tuple[str, str, str], str] = {}
    if whole is not None and sum(1 for line in text.split("\n") if line.strip()) > 1:  # one JSON document
        _check_document(path, whole)  # (over lines: not JSON lines, whose lines would each be "not JSON")
    if isinstance(whole, dict) and whole and all(isinstance(v, list) for v in whole.values()):
        if type(whole) is _Twice:
            raise SeedError(f"{path}: table {shown(whole.key)} is given twice ({_TWICE})")
        for table, records in whole.items():
            for i, record in enumerate(records):
                entries.append(_entry(f"{path}: ", f"{table}[{i}]", {"table": table, "record": record}, first_seen))
        return entries
    # JSON Lines end at "\n" only: str.splitlines() also splits at U+2028, U+2029, \x85 and more, which a
    # JSON string may hold raw (tiger dump writes them so)
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if line.startswith("\ufeff"):  # (json's own message says "decode using utf-8-sig")
            raise SeedError(f"{path}:{number}: not JSON (a byte-order mark, U+FEFF, is taken only at the start of the file)")
        try:
            obj = _loads(line)
        except ValueError as e:
            raise SeedError(f"{path}:{number}: not JSON ({e.msg if isinstance(e, json.JSONDecodeError) else e})") from None
        entries.append(_entry(f"{path}:", f"{number}", obj, first_seen))
    return entries


_TWICE = "JSON keeps the last, silently: which one was meant is not for the loader to guess"


class _Twice(dict[str, Any]):
    """A JSON object of a seed file that gives a key twice (``key``: the first one given again), refused
    where it is read, naming its place."""

    key = ""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The ``object_pairs_hook`` of ``_DECODER``: a dict, or a ``_Twice`` when a key is given twice."""
    value = dict(pairs)
    if len(value) == len(pairs):
        return value
    twice = _Twice(value)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            twice.key = key
            break
        seen.add(key)
    return twice


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs)  # (one, reused: json.loads with a hook makes one per call)

# Nesting deeper than any storable record's JSON form can be (32 levels of maps and lists, each map
# perhaps in a {"$dict": ...}, a {"$bytes": ...} at the bottom, the envelope above): what ``_loads`` cuts
_JSON_DEPTH = 2 * MAX_DEPTH + 4
# A JSON string (to its end, or the text's: one left open), or a run of brackets opening or closing
_SCAN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{]+|[\]}]+', re.DOTALL)


def _loads(text: str) -> Any:
    """``text`` as JSON, an object giving a key twice as a ``_Twice``; ``ValueError`` (``JSONDecodeError``,
    or Python's refusal of an int of more than 4300 digits) if it is not.

    Python's decoder recurses, one level of nesting a call: past about 1000 levels (fewer where the stack
    is already deep, as in a pytest fixture) it raised ``RecursionError``. Text that deep is read again
    with every array or object nested deeper than ``_JSON_DEPTH`` levels cut to ``null``: that depth no
    record reaches, so the record's check refuses it, naming the field as for 40 levels, and what is
    kept has the shape of the whole (one document, or JSON lines)."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        pass
    return _DECODER.decode(_cut_deeper(text, _JSON_DEPTH))


def _cut_deeper(text: str, limit: int) -> str:
    """``text`` with every array or object opened deeper than ``limit`` levels replaced by ``null``;
    ``JSONDecodeError`` if one is never closed. Brackets in strings are skipped; the text is read once,
    a run of brackets at a time."""
    parts: list[str] = []
    depth = 0
    kept = 0  # where the text still to copy starts (while inside a cut: where the cut started)
    for match in _SCAN.finditer(text):
        run = match.group()
        if run[0] == '"':
            continue
        if run[0] in "[{":
            if depth <= limit < depth + len(run):  # opens level limit + 1: cut from its bracket
                cut = match.start() + limit - depth
                parts.append(text[kept:cut])
                parts.append("null")
                kept = -1
            depth += len(run)
        else:
            if depth > limit >= depth - len(run):  # closes level limit + 1: copy again after its bracket
                kept = match.start() + depth - limit
            depth -= len(run)
    if kept < 0:  # (cut to its end, the text read as "Expecting ',' delimiter")
        raise json.JSONDecodeError("an array or object is never closed", text, cut)
    parts.append(text[kept:])
    return "".join(parts)


def _entry(file: str, place: str, obj: Any, first_seen: dict[tuple[str, str, str], str]) -> tuple[str, str, dict[str, Any]]:
    """One seed entry, checked whole before anything is written: a file that is refused loads nothing.

    An id given twice for one table and namespace is refused (as ``insert_many`` refuses it), naming both
    places: which one a seed meant is not for the loader to guess."""
    try:
        if type(obj) is _Twice:
            raise ValueError(f"key {shown(obj.key)} is given twice ({_TWICE})")
        if not isinstance(obj, dict) or set(obj) - {"table", "namespace", "record"} or "table" not in obj or "record" not in obj:
            raise ValueError('expected {"table": ..., "record": {...}} (and optionally "namespace")')
        table = check_name(obj["table"], "table")
        if table.startswith(RESERVED_PREFIX):
            raise ValueError(f"table names starting with {RESERVED_PREFIX!r} are reserved for tiger")
        namespace = check_name(obj.get("namespace", GLOBAL), "namespace")
        if not isinstance(obj["record"], dict):  # (before its values: a list 5000 deep is no record, whatever its depth)
            raise TypeError(f"record must be a mapping (dict), not {type(obj['record']).__name__}")
        record = from_json(obj["record"])  # (its depth counted as stored: tags add levels a dump's JSON has)
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
    """Insert checked ``entries`` (table, namespace, record); returns their count. In one write
    (``client.batch()``: all or none) when they fit in one message (``p.MAX_MESSAGE`` bytes packed): a seed
    of two tables on a full disk loaded the first and said "nothing was applied" of the second (a user
    trial). A bigger seed goes in several writes (``BATCH`` records each): one that fails after others were
    applied says how many records were loaded before it.

    The one write is given the client's timeout and a second more per ``SEED_RATE`` records: the writer's
    work grows with the seed, and a 300k-record seed (a few seconds' work for the writer on 2 cores busy
    with a parallel run's start) failed every test of the run at the client's 5 s."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for table, namespace, record in entries:
        groups.setdefault((table, namespace), []).append(record)
    try:
        with client.batch(timeout=min(MAX_SECONDS, client.timeout + len(entries) / SEED_RATE)) as batch:
            for (table, namespace), records in groups.items():
                with in_namespace(namespace):
                    batch.table(table).insert_many(records)
        return len(entries)
    except BatchTooBig:  # (nothing of it was sent)
        pass
    loaded = 0
    for (table, namespace), records in groups.items():
        handle = client.table(table)
        with in_namespace(namespace):
            for start in range(0, len(records), BATCH):
                try:
                    handle.insert_many(records[start : start + BATCH])
                except Exception as e:
                    if loaded and e.args and isinstance(e.args[0], str):
                        e.args = (
                            f"{e.args[0]} (this seed is more than {p.MAX_MESSAGE // (1024 * 1024)} MiB packed, so it is "
                            f"loaded in several writes: {loaded} of its {len(entries)} records were loaded before this one)",
                            *e.args[1:],
                        )
                    raise
                loaded += len(records[start : start + BATCH])
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


# Values JSON has no form for, tagged: a map whose only key starts with "$" is a tag. Bytes are written as
# {"$bytes": base64}; a dict whose only key starts with "$" (it would read as a tag) as {"$dict": {...}}.
# Read back, any other map whose only key starts with "$" (an unknown tag, one holding the wrong kind of
# value) is refused, naming the field: no dump writes one, and stored as it reads it would differ from
# what a seed's author most likely meant. Floats NaN, Infinity and -Infinity are written as Python's
# json module writes and reads them.
TAGS = {"$bytes": "base64 text (a string)", "$dict": "an object"}


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


def from_json(value: Any, where: str = "record", depth: int = 0) -> Any:
    """A value as ``to_json`` wrote it (a value parsed from JSON), back in its stored form.

    ``ValueError`` naming the field (``where``, its path) of: a map whose only key starts with ``$`` and
    is no tag of ``TAGS`` holding the kind of value it holds (``{"$bytes": "!!!"}``, ``{"$dict": 5}``,
    ``{"$byte": ...}``); a key given twice in one object (parsed by ``read_file``); a map or list nested
    deeper than ``MAX_DEPTH`` levels, counted as stored (``depth``: the levels above ``value``; a
    ``$dict`` adds none, so that whatever tiger stores, its dump loads back)."""
    if isinstance(value, dict):
        if len(value) == 1 and type(value) is not _Twice:
            ((key, inner),) = value.items()
            if key.startswith("$"):
                return _tagged(key, inner, where, depth)
        return _map(value, where, depth)
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
        return [from_json(item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value)]
    return value


def _tagged(key: str, inner: Any, where: str, depth: int) -> Any:
    """The value of the tag ``{key: inner}`` (``from_json``'s)."""
    if key == "$bytes" and type(inner) is str:
        try:
            return base64.b64decode(inner, validate=True)
        except ValueError as e:  # binascii.Error: "Only base64 data is allowed", naming nothing
            raise ValueError(f"{where}: '$bytes' must hold base64 ({e})") from None
    if key == "$dict" and isinstance(inner, dict):
        return _map(inner, where, depth)  # (its items as they are: {"$dict": {"$dict": 5}} is {"$dict": 5})
    if key in TAGS:
        raise ValueError(f"{where}: {key!r} must hold {TAGS[key]}, not {_json_kind(inner)}")
    raise ValueError(
        f"{where}: {shown(key)} is no tag tiger knows ({', '.join(repr(tag) for tag in TAGS)}), and a map whose only key "
        'starts with "$" is read as a tag: write this map as {"$dict": {...}}'
    )


def _map(value: dict[str, Any], where: str, depth: int) -> dict[str, Any]:
    """A map's items, each ``from_json`` (``from_json``'s)."""
    if type(value) is _Twice:
        raise ValueError(f"{where}: key {shown(value.key)} is given twice ({_TWICE})")
    if depth >= MAX_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    return {k: from_json(v, f"{where}[{shown(k)}]", depth + 1) for k, v in value.items()}
