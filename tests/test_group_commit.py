"""Group commit with real processes: 4 processes write at once; order, read-your-writes and replicas hold.

The pure rule (any grouping of the same requests gives the same store, seqs and answers) is tested on the
writer's core in test_core.py; here the writer process groups what its socket holds, so groups form only
when processes really write at the same time (checked: fewer publications than changes).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import tiger

SPAWN = multiprocessing.get_context("spawn")
PROCESSES = 4
WRITES = 300


def writer_process(url: str, index: int, barrier: Any, results: Any) -> None:
    violations: list[str] = []
    with tiger.connect(url, timeout=10) as client, tiger.namespace("group-commit"):
        table = client.table("g")
        barrier.wait(60)
        seqs = []
        for i in range(WRITES):
            record = table.insert({"id": f"p{index}-{i}", "i": i})
            seqs.append(client.seq)
            if table.get(record["id"]) != record:
                violations.append(f"read-your-writes: {record['id']} not visible on return")
        barrier.wait(60)
        client.sync()
        results.put((index, {"seqs": seqs, "violations": violations, "checksum": client.checksum()}))


def test_four_processes_writing_at_once_keep_arrival_order_and_read_your_writes():
    with tiger.serve() as server, tiger.connect(server.url) as probe:
        before = probe.stats()
        barrier = SPAWN.Barrier(PROCESSES)
        results: Any = SPAWN.Queue()
        procs = [SPAWN.Process(target=writer_process, args=(server.url, i, barrier, results)) for i in range(PROCESSES)]
        for proc in procs:
            proc.start()
        try:
            reports = dict(results.get(timeout=120) for _ in procs)
        finally:
            for proc in procs:
                proc.join(30)
        assert [proc.exitcode for proc in procs] == [0] * PROCESSES
        after = probe.stats()
        probe.sync()
        with tiger.namespace("group-commit"):
            stored = probe.table("g").all()
        assert len(stored) == PROCESSES * WRITES
        for index, report in reports.items():
            assert report["violations"] == [], f"process {index}"
            assert report["seqs"] == sorted(report["seqs"])  # its replica never went back
            assert report["checksum"] == after["checksum"], f"process {index}'s replica differs from the writer"
        # each process's writes were applied in the order it made them: a namespace lists newest first
        # (created, then insertion order), so each process's records come in decreasing i
        for index in range(PROCESSES):
            mine = [r["i"] for r in stored if r["id"].startswith(f"p{index}-")]
            assert mine == sorted(mine, reverse=True) and len(mine) == WRITES, f"process {index}'s order"
        changes = after["seq"] - before["seq"]
        assert changes == PROCESSES * WRITES
        assert after["publications"] - before["publications"] < changes, "no group formed: the test proved nothing"
