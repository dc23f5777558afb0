"""Seed files and dumps (issue 11, items 6 and 7): a file loads whole or not at all, whatever the internal
batches; what tiger stores, ``tiger dump`` writes in a form ``tiger load`` reads back to the same records."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types

import msgpack
import pytest

import tiger
from tiger._seed import SeedError, dump_lines, from_json, read_file, to_json
from tiger._table import Put, Record, Store

TIGER = [sys.executable, "-m", "tiger"]
EXT = msgpack.ExtType(5, b"\x01\x02")


def tiger_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TIGER, *args], capture_output=True, text=True, timeout=60)


def plans(n: int, **overrides: dict) -> list[str]:
    lines = [json.dumps({"table": "plans", "record": {"id": f"plan_{i}", "amount": i}}) for i in range(1, n + 1)]
    for number, record in overrides.items():
        lines[int(number.removeprefix("line")) - 1] = json.dumps(record)
    return lines


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (  # lines 1001 and 1002 give the same id: the second internal batch would have failed after the first loaded
            plans(1500, line1002={"table": "plans", "record": {"id": "plan_1001"}}),
            "seed.jsonl:1002: id 'plan_1001' is given twice (first on line 1001)",
        ),
        (  # lines 1 and 1001: once loaded with exit 0, the later one winning
            plans(1500, line1001={"table": "plans", "record": {"id": "plan_1", "amount": 0}}),
            "seed.jsonl:1001: id 'plan_1' is given twice (first on line 1)",
        ),
        (  # a reserved table after a valid line: the valid line was loaded
            plans(2, line2={"table": "tiger.once", "record": {"id": "k"}}),
            "seed.jsonl:2: table names starting with 'tiger.' are reserved for tiger",
        ),
        (  # a record over the size limit in the middle
            plans(1500, line1200={"table": "plans", "record": {"id": "big", "blob": "x" * (9 * 2**20)}}),
            "seed.jsonl:1200: record is",
        ),
        (  # a record that does not fit its table's rules (a value tiger cannot store cannot come from JSON; a lone surrogate can)
            plans(3, line3={"table": "plans", "record": {"id": "s", "name": "\udcff"}}),
            "seed.jsonl:3: record['name']: a str UTF-8 cannot encode",
        ),
    ],
    ids=["ids-1001-1002", "ids-1-1001", "reserved-table", "too-big", "surrogate"],
)
def test_a_refused_seed_file_was_loaded_in_part(tmp_path, lines, message):
    seed = tmp_path / "seed.jsonl"
    seed.write_text("\n".join(lines) + "\n")
    with tiger.serve() as server:
        out = tiger_cli("load", str(seed), "--url", server.url)
        assert out.returncode == 1, out
        assert message in out.stderr, out.stderr
        with tiger.connect(server.url) as client:
            assert client.tables() == []  # nothing loaded


def test_an_id_given_twice_across_seed_files_is_refused_as_within_one(tmp_path, tiger_client):
    (tmp_path / "a.jsonl").write_text(json.dumps({"table": "plans", "record": {"id": "plan_x"}}) + "\n")
    (tmp_path / "b.json").write_text(json.dumps({"plans": [{"id": "plan_x"}]}))
    from tiger._seed import load_files

    with pytest.raises(SeedError, match=r"b.json: id 'plan_x' of plans in global is given twice \(also in \S*a.jsonl\)"):
        load_files(tiger_client, [tmp_path / "a.jsonl", tmp_path / "b.json"])
    with pytest.raises(SeedError, match=r"c.json: plans\[1\]: id 'plan_y' is given twice \(first on plans\[0\]\)"):
        (tmp_path / "c.json").write_text(json.dumps({"plans": [{"id": "plan_y"}, {"id": "plan_y"}]}))
        read_file(tmp_path / "c.json")


ODD_VALUES = {
    "id": "odd_1",
    "created": 7,
    "blob": b"\x00\xffbytes",
    "nested": {"list": [b"a", 1.5, None, True], "deep": {"b": b""}},
    "nan": math.nan,
    "inf": math.inf,
    "ninf": -math.inf,
    "negzero": -0.0,
    "max": 2**63 - 1,
    "min": -(2**63),
    "looks_tagged": {"$bytes": "AAA="},
    "also": {"$dict": {"x": 1}},
    "text": "Zoë ✓",
    # what str.splitlines() also takes for a line end: tiger load split a dump's lines there, and a record
    # holding one (written raw by the dump, as JSON allows) failed to load ("not JSON")
    "separators": "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\x1dh\x1ei\rj",
}


def test_a_record_with_bytes_made_tiger_dump_fail_half_way(tmp_path):
    """dump -> load -> dump is byte-identical, and every record reads back the same."""
    with tiger.serve() as first:
        with tiger.connect(first.url) as client:
            client.table("odd").insert(ODD_VALUES)
            client.table("plans").insert({"id": "plan_a", "created": 1})
            with tiger.namespace("n1"):
                client.table("plans").insert({"id": "plan_b", "created": 2, "raw": b"\x01"})
        dumped = tiger_cli("dump", "--url", first.url)
        assert dumped.returncode == 0, dumped.stderr
    backup = tmp_path / "backup.jsonl"
    backup.write_text(dumped.stdout)
    with tiger.serve() as second:
        loaded = tiger_cli("load", str(backup), "--url", second.url)
        assert loaded.returncode == 0, loaded.stderr
        again = tiger_cli("dump", "--url", second.url)
        assert again.returncode == 0, again.stderr
        with tiger.connect(second.url) as client:
            record = dict(client.table("odd")["odd_1"])
    assert again.stdout == dumped.stdout
    assert math.isnan(record.pop("nan")) and repr(record.pop("negzero")) == "-0.0"
    expected = {k: v for k, v in ODD_VALUES.items() if k not in ("nan", "negzero")}
    assert tiger.thaw(record) == expected


@pytest.mark.parametrize("value", [b"", b"\xff", {"$bytes": "x"}, {"$dict": {}}, [{"$x": b"1"}], {"a": {"$bytes": b"\x00"}}])
def test_the_dump_form_reads_back_the_same_value(value):
    assert from_json(json.loads(json.dumps(to_json(value)))) == value


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (  # UTF-16 (a BOM), as an editor may save it: the codec's error named no file, no line, only a frozen frame
            "\n".join(plans(2)).encode("utf-16"),
            "seed.jsonl:1: not UTF-8 (byte 0xff at column 1): invalid start byte",
        ),
        (
            ("\n".join(plans(2)) + "\n").encode() + b'{"table": "plans", "record": {"id": "plan_x", "name": "caf\xe9"}}\n',
            "seed.jsonl:3: not UTF-8 (byte 0xe9 at column 59)",
        ),
        (  # a $bytes that is no base64: "Only base64 data is allowed", naming no field
            ("\n".join(plans(1)) + "\n" + json.dumps({"table": "plans", "record": {"id": "b", "x": {"$bytes": "no!"}}})).encode(),
            "seed.jsonl:2: record['x']: '$bytes' must hold base64",
        ),
    ],
    ids=["utf-16", "latin-1-byte", "bad-base64"],
)
def test_a_seed_file_that_is_not_utf8_or_holds_bad_base64_is_refused_naming_its_file_line_and_field(tmp_path, content, message):
    seed = tmp_path / "seed.jsonl"
    seed.write_bytes(content)
    with tiger.serve() as server:
        out = tiger_cli("load", str(seed), "--url", server.url)
        assert out.returncode == 1, out
        assert message in out.stderr, out.stderr


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{\n  "t": {"id": "d1"}\n}\n', "table 't' holds an object, not an array of records"),
        ("[\n  1, 2\n]\n", "a seed file is JSON lines, or one object {table: [records]}; this one is an array"),
        ("{\n}\n", "a seed file is JSON lines, or one object {table: [records]}; this one is an object with no table"),
    ],
    ids=["table-of-an-object", "an-array", "no-table"],
)
def test_a_seed_file_that_is_one_json_document_of_the_wrong_shape_says_so(tmp_path, document, message):
    # A user trial: valid JSON over several lines whose table held an object was refused as "line 1: not JSON
    # (Expecting property name enclosed in double quotes)", read as JSON lines.
    path = tmp_path / "seed.json"
    path.write_text(document)
    with pytest.raises(SeedError) as refused:
        read_file(path)
    assert str(refused.value).startswith(f"{path}: {message}")


def test_a_dump_of_an_ExtType_a_replica_held_wrote_it_as_a_list():
    # A replica fed by a writer of an older tiger (which stored ExtType values) dumped one as [code, data],
    # which tiger load then stored as a list. The dump now refuses, naming the record and its field.
    store = Store()
    store.apply(Put("t", "global", (Record({"id": "ok", "created": 1}), Record({"id": "a", "x": [1, EXT], "created": 1}))))
    client = types.SimpleNamespace(replica=types.SimpleNamespace(store=store))
    with pytest.raises(ValueError) as raised:
        dump_lines(client)  # type: ignore[arg-type]
    assert str(raised.value).startswith("table 't', namespace 'global', id 'a': record['x'][1]: ExtType is not storable")
