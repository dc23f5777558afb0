"""Seed files and dumps (issue 11, items 6 and 7): a file loads whole or not at all, whatever the internal
batches; what tiger stores, ``tiger dump`` writes in a form ``tiger load`` reads back to the same records."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
import types

import msgpack
import pytest

import tiger
from tiger._seed import SeedError, dump_lines, from_json, read_file, to_json
from tiger._table import Put, Record, Store, check_record

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


def load_refused(tmp_path, name: str, content: str | bytes) -> str:
    """``tiger load`` of a file ``name`` holding ``content``, refused (exit 1, nothing loaded): its stderr."""
    seed = tmp_path / name
    seed.write_bytes(content if isinstance(content, bytes) else content.encode())
    with tiger.serve() as server:
        out = tiger_cli("load", str(seed), "--url", server.url)
        assert out.returncode == 1, out
        with tiger.connect(server.url) as client:
            assert client.tables() == []  # nothing loaded
    return out.stderr


def test_tiger_dump_piped_to_tiger_load_dash_said_no_such_file(tmp_path):
    # A user trial: `tiger dump --url A | tiger load - --url B` said "No such file or directory: '-'"; - reads
    # standard input now, and its errors name it <stdin>.
    with tiger.serve() as source, tiger.serve() as target:
        with tiger.connect(source.url) as client:
            client.table("t").insert_many([{"id": f"r{i}", "v": b"\x00" if i else {"$k": 1}} for i in range(3)])
        dumped = tiger_cli("dump", "--url", source.url).stdout
        out = subprocess.run([*TIGER, "load", "-", "--url", target.url], input=dumped, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "loaded 3 records" in out.stdout, out
        assert tiger_cli("dump", "--url", target.url).stdout == dumped
        bad = subprocess.run([*TIGER, "load", "-", "--url", target.url], input="{", capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and bad.stderr.startswith("tiger load: <stdin>:1: not JSON"), bad.stderr


DEEP = 5000  # levels of nesting: Python's json decoder raised RecursionError past about 1000
NESTED_TOO_DEEP = "nested deeper than 32 levels"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (  # one line of 5000 nested arrays: a json.decoder traceback, "RecursionError: maximum recursion depth exceeded"
            "deep.jsonl",
            '{"table": "plans", "record": {"id": "plan_a"}}\n'
            + json.dumps({"table": "t", "record": {"id": "x"}})[:-2]
            + ', "v": '
            + "[" * DEEP
            + "]" * DEEP
            + "}}\n",
            "deep.jsonl:2: record['v']" + "[0]" * 31 + f": {NESTED_TOO_DEEP}",
        ),
        (  # objects, and brackets in a string before them
            "objects.jsonl",
            '{"table": "t", "record": {"id": "x", "s": "[[{{", "v": ' + '{"k": ' * DEEP + "1" + "}" * DEEP + "}}\n",
            "objects.jsonl:1: record['v']" + "['k']" * 31 + f": {NESTED_TOO_DEEP}",
        ),
        (  # a document over lines, {table: [records]}
            "deep.json",
            '{\n  "t": [{"id": "x"}, {"id": "y", "v": ' + "[" * DEEP + "]" * DEEP + "}]\n}\n",
            "deep.json: t[1]: record['v']" + "[0]" * 31 + f": {NESTED_TOO_DEEP}",
        ),
        (  # a table holding arrays 5000 deep: no record
            "arrays.json",
            '{"t": ' + "[" * DEEP + "]" * DEEP + "}",
            "arrays.json: t[0]: record must be a mapping (dict), not list",
        ),
        (
            "open.jsonl",
            '{"table": "t", "record": {"id": "x", "v": ' + "[" * DEEP + "\n",
            (  # Python 3.13's decoder reads it to its end without a RecursionError: its own words then
                "open.jsonl:1: not JSON (an array or object is never closed)",
                "open.jsonl:1: not JSON (Expecting value)",
            ),
        ),
    ],
    ids=["arrays-line-2", "objects", "document", "no-record", "never-closed"],
)
def test_tiger_load_of_deeply_nested_json_printed_a_recursion_traceback(tmp_path, name, content, message):
    stderr = load_refused(tmp_path, name, content)
    said = (message,) if isinstance(message, str) else message
    assert stderr.splitlines() in [[f"tiger load: {tmp_path / m}"] for m in said], stderr


def test_a_dump_holding_bytes_or_a_dollar_map_at_the_depth_limit_did_not_load_back(tmp_path):
    # tiger load counted the depth of the dump's JSON, where {"$bytes": ...} and {"$dict": {...}} add a level:
    # a record tiger stores (32 levels) was refused, "nested deeper than 32 levels".
    blob, tagged = b"\x00", {"$k": 1}
    for _ in range(31):
        blob = [blob]
    for _ in range(30):
        tagged = {"$a": tagged}
    records = [{"id": "bytes", "v": blob}, {"id": "dollar", "v": tagged}]
    for record in records:
        check_record(record)  # storable
    seed = tmp_path / "dump.jsonl"
    seed.write_text("".join(json.dumps({"table": "t", "record": to_json(r)}) + "\n" for r in records))
    assert [record for _, _, record in read_file(seed)] == records
    tagged = {"$a": tagged}  # one level more, each level tagged: refused as deep, naming the field
    seed.write_text(json.dumps({"table": "t", "record": to_json({"id": "deeper", "v": tagged})}) + "\n")
    with pytest.raises(SeedError, match=re.escape("dump.jsonl:1: record['v']" + "['$a']" * 31 + f": {NESTED_TOO_DEEP}")):
        read_file(seed)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"table": "t", "record": {"id": "k1", "id": "k2"}}\n', "seed.jsonl:1: record: key 'id' is given twice"),
        ('{"table": "t", "record": {"id": "k", "v": {"a": 1, "a": 2}}}\n', "seed.jsonl:1: record['v']: key 'a' is given twice"),
        ('{"table": "t", "table": "u", "record": {"id": "k"}}\n', "seed.jsonl:1: key 'table' is given twice"),
        ('{"t": [{"id": "a"}], "t": [{"id": "b"}]}\n', "seed.jsonl: table 't' is given twice"),
        ('{"table": "t", "record": {"id": "k", "v": {"$dict": {"$x": 1, "$x": 2}}}}\n', "record['v']: key '$x' is given twice"),
    ],
    ids=["record-id", "nested", "envelope", "table-of-a-document", "in-a-dict-tag"],
)
def test_a_key_given_twice_in_a_seed_object_was_loaded_with_the_last_silently(tmp_path, content, message):
    stderr = load_refused(tmp_path, "seed.jsonl", content)
    assert message in stderr and "JSON keeps the last" in stderr, stderr


def test_a_seed_file_starting_with_a_utf8_bom_as_windows_editors_write_was_refused(tmp_path):
    (tmp_path / "lines.jsonl").write_bytes(b'\xef\xbb\xbf{"table": "t", "record": {"id": "a"}}\r\n')
    (tmp_path / "doc.json").write_bytes(b'\xef\xbb\xbf{\r\n  "u": [{"id": "b", "s": "\xc3\xa9"}]\r\n}\r\n')
    with tiger.serve() as server:
        for name in ("lines.jsonl", "doc.json"):
            out = tiger_cli("load", str(tmp_path / name), "--url", server.url)
            assert out.returncode == 0, out.stderr
        with tiger.connect(server.url) as client:
            assert client.table("t")["a"]["id"] == "a" and client.table("u")["b"]["s"] == "é"
    # a mark anywhere else (two files joined) is not taken: the file starts at line 1 only
    content = b'{"table": "t", "record": {"id": "a"}}\n\xef\xbb\xbf{"table": "t", "record": {"id": "b"}}\n'
    stderr = load_refused(tmp_path, "joined.jsonl", content)
    mark = "not JSON (a byte-order mark, U+FEFF, is taken only at the start of the file)"
    assert stderr.splitlines() == [f"tiger load: {tmp_path / 'joined.jsonl'}:2: {mark}"], stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"$dict": 5}, "record['v']: '$dict' must hold an object, not a number"),  # was stored as {"$dict": 5}
        ({"$bytes": 5}, "record['v']: '$bytes' must hold base64 text (a string), not a number"),
        ({"$bytes": None}, "record['v']: '$bytes' must hold base64 text (a string), not null"),
        ({"$byte": "AA=="}, "record['v']: '$byte' is no tag tiger knows ('$bytes', '$dict')"),  # a typo, stored as a map
        ([{"$foo": 1}], "record['v'][0]: '$foo' is no tag tiger knows"),
    ],
    ids=["dict-of-a-number", "bytes-of-a-number", "bytes-of-null", "unknown-tag", "unknown-in-a-list"],
)
def test_a_dollar_map_holding_the_wrong_kind_was_stored_as_a_literal_where_bad_base64_was_refused(tmp_path, value, message):
    stderr = load_refused(tmp_path, "seed.jsonl", json.dumps({"table": "t", "record": {"id": "d", "v": value}}) + "\n")
    assert f"seed.jsonl:1: {message}" in stderr, stderr


def test_a_map_whose_only_key_starts_with_a_dollar_loads_written_as_the_dump_writes_it():
    for value in [{"$foo": 1}, {"$dict": 5}, {"$bytes": 5}, {"$dict": {"$dict": {}}}]:
        assert from_json(json.loads(json.dumps(to_json(value)))) == value
    assert to_json({"$dict": 5}) == {"$dict": {"$dict": 5}}


@pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"), reason="a Python that reads ints of any length")
def test_an_int_of_more_than_4300_digits_was_refused_naming_no_file_nor_line(tmp_path):
    # Python's int parsing refuses it with a ValueError, not the JSONDecodeError tiger load caught: the
    # error said "Exceeds the limit (4300 digits)" alone
    stderr = load_refused(
        tmp_path,
        "seed.jsonl",
        '{"table": "t", "record": {"id": "a"}}\n{"table": "t", "record": {"id": "b", "v": ' + "7" * 5000 + "}}\n",
    )
    # (Python's own words: "(4300 digits)" on 3.11 and later, "(4300)" on 3.10)
    assert stderr.startswith(f"tiger load: {tmp_path / 'seed.jsonl'}:2: not JSON (Exceeds the limit (4300"), stderr
    assert len(stderr.splitlines()) == 1, stderr


def test_a_seed_whose_one_write_took_longer_than_the_clients_timeout_failed_to_load():
    # the seed went as one write within the client's timeout (the plugin's: 5 s), though the writer's work
    # grows with it: a 300k-record tiger_seed on 2 cores busy with a pytest -n 4 start failed every test
    from tiger._seed import load_entries

    def seed(namespace: str) -> list[tuple[str, str, dict[str, object]]]:
        return [("plans", namespace, {"id": f"plan_{i}", "n": i, "name": "x" * 40}) for i in range(100_000)]

    with tiger.serve() as writer:  # (its own: the 200k records stay out of the joins of later tests)
        with tiger.connect(writer.url, timeout=60) as client:
            began = time.monotonic()
            assert load_entries(client, seed("seeded-1")) == 100_000
            took = time.monotonic() - began  # the write alone: the records sent, applied and in the replica
        with tiger.connect(writer.url, timeout=60) as client:
            client.timeout = max(0.05, took / 4)  # (connected with more: the join of 100k records is not the point)
            assert load_entries(client, seed("seeded-2")) == 100_000  # given a second more per 10,000 records
            with tiger.namespace("seeded-2"):
                assert client.table("plans").count() == 100_000


def test_a_batchs_timeout_is_checked_as_every_timeout(writer):
    with tiger.connect(writer.url) as client:
        with pytest.raises(ValueError, match="timeout"):
            client.batch(timeout=0)
        with pytest.raises(TypeError, match="timeout"):
            client.batch(timeout="5")  # type: ignore[arg-type]
        with client.batch(timeout=30) as batch:
            pending = batch.table("plans", "plan").insert({"id": "plan_timed"})
        assert pending.result["id"] == "plan_timed"
