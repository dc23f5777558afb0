"""Seed files: ``tiger load``, ``tiger dump`` and the plugin's ``tiger_seed`` (PaperTiger's init_data).

Two formats, told apart by content:
- JSON lines: one ``{"table": ..., "record": {...}}`` per line (optional ``"namespace"``,
  default ``"global"``); this is also what ``tiger dump`` writes;
- one JSON object ``{table: [records]}``, loaded into ``"global"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from tiger._client import Client
from tiger._client import namespace as in_namespace
from tiger._table import GLOBAL, RESERVED_PREFIX, check_name, check_record

BATCH = 1000


class SeedError(ValueError):
    """A seed file that cannot be loaded; the message names the file and line."""


def read_file(path: str | os.PathLike[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(table, namespace, record) for every record in a seed file, in file order."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and whole and all(isinstance(v, list) for v in whole.values()):
        out = []
        for table, records in whole.items():
            for i, record in enumerate(records):
                out.append(_entry(path, f"{table}[{i}]", {"table": table, "record": record}))
        return out
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SeedError(f"{path}:{number}: not JSON ({e.msg})") from None
        entries.append(_entry(path, f"line {number}", obj))
    return entries


def _entry(path: object, where: str, obj: Any) -> tuple[str, str, dict[str, Any]]:
    try:
        if not isinstance(obj, dict) or set(obj) - {"table", "namespace", "record"} or "table" not in obj or "record" not in obj:
            raise ValueError('expected {"table": ..., "record": {...}} (and optionally "namespace")')
        table = check_name(obj["table"], "table")
        namespace = check_name(obj.get("namespace", GLOBAL), "namespace")
        record = check_record(obj["record"], "record")
    except (TypeError, ValueError) as e:
        raise SeedError(f"{path}: {where}: {e}") from None
    return table, namespace, dict(record)


def load_files(client: Client, paths: Iterable[str | os.PathLike[str]]) -> int:
    """Read every file first (so a bad one loads nothing), then insert; returns the record count."""
    entries = [entry for path in paths for entry in read_file(path)]
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


def dump_lines(client: Client) -> Iterator[str]:
    """Every record as JSON lines: tables and namespaces sorted, records in insertion order."""
    store = client.replica.store
    for table, namespaces in sorted(store.counts().items()):
        if table.startswith(RESERVED_PREFIX):
            continue
        for namespace in sorted(namespaces):
            for record in list(store.rows(table, namespace).values()):
                try:
                    yield json.dumps({"table": table, "namespace": namespace, "record": record}, ensure_ascii=False)
                except (TypeError, ValueError) as e:
                    raise SeedError(f"cannot dump {table}/{namespace}/{record['id']}: {e}") from None
