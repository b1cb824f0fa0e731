"""Cross-process stress: one writer process hammers a ring and a table while reader processes
verify every record and row they accept (seq-derived payload + checksum)."""

from __future__ import annotations

import os

from state.run import RunPaths
from tests.state.helpers import Child

CAPACITY = 1024
SECONDS = 2.5


def test_ring_and_table_under_fire(run_paths: RunPaths, spawn) -> None:
    ring, table = str(run_paths.seg("stress")), str(run_paths.seg("stresstab"))
    writer: Child = spawn("stress_writer", ring=ring, table=table, capacity=CAPACITY,
                          seconds=SECONDS, max_records=5_000_000, seed=os.getpid())
    writer.expect_ready()
    modes = {"blocking": 4096, "async": 512, "slow": 64}
    readers = {m: spawn("stress_reader", ring=ring, table=table, mode=m, max_records=n,
                        seconds=30.0) for m, n in modes.items()}
    for r in readers.values():
        r.expect_ready()
    writer.send("GO")
    w = writer.report(timeout=30)
    reports = {m: r.report(timeout=40) for m, r in readers.items()}
    writer.send("EXIT")
    assert writer.wait() == 0, writer.stderr()
    for r in readers.values():
        assert r.wait() == 0, r.stderr()

    total = w["total"]
    assert total > 20 * CAPACITY, f"the writer barely ran: {w}"
    assert w["singles"] > 100 and w["batches"] > 100
    for mode, rep in reports.items():
        assert rep["errors"] == [], f"{mode} reader accepted bad data: {rep}"
        assert not rep["timed_out"], f"{mode} reader did not finish: {rep}"
        # Every record published since the reader's start was either seen or counted lost.
        assert rep["end"] == total
        assert rep["seen"] + rep["lost"] == total, rep
        assert rep["lost_total"] == rep["lost"], rep
        assert (rep["lapped"] > 0) == (rep["lost"] > 0), rep
        assert rep["row_reads"] > 50, rep
    slow = reports["slow"]
    assert slow["lost"] > 0 and slow["lapped"] > 1, f"the slow reader was never lapped: {slow}"
    assert slow["seen"] > 0
