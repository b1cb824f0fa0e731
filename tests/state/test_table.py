"""Tables: the per-row seqlock, and rows left torn by a writer killed with SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest

from core.errors import RetryableError, SegmentMismatchError
from state.run import RunPaths
from state.table import TableReader, TableWriter, TornRowError
from tests.state.helpers import wait_for
from tests.state.procs import ROW_DT, bad_records, make

NROWS = 6


def row(version: int) -> np.void:
    return make(ROW_DT, np.array([version], dtype=np.uint64))[0]


def test_write_update_read(run_paths: RunPaths) -> None:
    path = run_paths.seg("table")
    w = TableWriter(path, ROW_DT, NROWS)
    r = TableReader(path, ROW_DT)
    try:
        assert not w.adopted and w.torn_rows() == []
        assert r.version(2) == 0
        w.write(2, row(5))
        assert r.version(2) == 2                      # even: stable; +2 per write
        np.testing.assert_array_equal(r.read(2), row(5))
        with w.update(2) as live:
            live["seq"] = 6
            assert r.version(2) % 2 == 1              # odd while the edit is open
        assert r.version(2) == 4
        assert int(r.read(2)["seq"]) == 6
        everything = r.read_all()
        assert everything.shape == (NROWS,) and int(everything[2]["seq"]) == 6
        assert not everything[0].tobytes().strip(b"\0")
        with pytest.raises(ValueError):               # the reader's mapping is read-only
            r._data[0] = row(1)
    finally:
        r.close()
        r.close()
        w.unlink()
        w.close()
        w.close()


def test_shape_mismatches_are_refused_naming_both_sides(run_paths: RunPaths) -> None:
    path = run_paths.seg("table")
    w = TableWriter(path, ROW_DT, NROWS)
    try:
        with pytest.raises(SegmentMismatchError,
                           match=r"size \d+ \(segment\) != \d+ \(this code\)"):
            TableWriter(path, ROW_DT, 7)
        other = np.dtype([("seq", "<u8"), ("payload", "<u8", (ROW_DT["payload"].shape[0],)),
                          ("check", "<u4"), ("pad", "<u4")])           # same size, other type
        with pytest.raises(SegmentMismatchError, match=r"layout hash \w+ \(segment\) != \w+ "
                                                       r"\(this code\)"):
            TableReader(path, other)
    finally:
        w.unlink()
        w.close()


def _die_inside_an_edit(path: str, i: int) -> None:
    try:
        w = TableWriter(path, ROW_DT, NROWS)          # adopts the test's table
        with w.update(i) as live:
            live["seq"] = 99
            os.kill(os.getpid(), signal.SIGKILL)
    finally:
        os._exit(4)                                    # only if the kill failed


def _fork(target, *args) -> None:
    pid = os.fork()
    if pid == 0:                                       # pragma: no cover - child
        target(*args)
        os._exit(5)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status


def test_a_row_torn_by_a_killed_writer(run_paths: RunPaths) -> None:
    path = run_paths.seg("table")
    owner = TableWriter(path, ROW_DT, NROWS)
    r = TableReader(path, ROW_DT)
    try:
        for i in range(NROWS):
            owner.write(i, row(i + 1))
        _fork(_die_inside_an_edit, str(path), 3)
        t0 = time.monotonic()
        with pytest.raises(TornRowError, match="row 3"):
            r.read(3, patience_s=0.2)
        assert 0.15 < time.monotonic() - t0 < 5.0
        assert issubclass(TornRowError, RetryableError)
        np.testing.assert_array_equal(r.read(2), row(3))      # the other rows are fine
        # The writer's successor adopts, learns which row is torn, and rebuilds it.
        successor = TableWriter(path, ROW_DT, NROWS)
        assert successor.adopted and successor.torn_rows() == [3]
        successor.reset_row(3)
        assert successor.torn_rows() == []
        assert not r.read(3).tobytes().strip(b"\0")
        successor.write(3, row(4))
        np.testing.assert_array_equal(r.read(3), row(4))
        successor.close()
    finally:
        r.close()
        owner.unlink()
        owner.close()


@pytest.mark.parametrize("how", ["write", "update"])
def test_writing_over_a_torn_row_without_reset_heals_it(run_paths: RunPaths, how: str) -> None:
    """A successor that simply rewrites the torn row (no reset_row) must leave it stable,
    and must keep it marked busy (odd) while it writes."""
    path = run_paths.seg("table")
    owner = TableWriter(path, ROW_DT, NROWS)
    r = TableReader(path, ROW_DT)
    try:
        _fork(_die_inside_an_edit, str(path), 1)
        assert owner.torn_rows() == [1]
        if how == "write":
            owner.write(1, row(8))
        else:
            new = row(8)
            with owner.update(1) as live:
                assert r.version(1) % 2 == 1, "a row being written must read as busy"
                live["seq"], live["payload"], live["check"] = (new["seq"], new["payload"],
                                                               new["check"])
        assert owner.torn_rows() == []
        np.testing.assert_array_equal(r.read(1, patience_s=0.2), row(8))
    finally:
        r.close()
        owner.unlink()
        owner.close()


def _hammer(path: str, seed: int) -> None:
    """Rewrite rows forever, with the rows made up front so that most of the time is spent
    inside writes (where a kill leaves a torn row)."""
    try:
        rng = random.Random(seed)
        w = TableWriter(path, ROW_DT, NROWS)
        rows = make(ROW_DT, np.arange(1000, 1064, dtype=np.uint64))
        k = 0
        while True:
            k += 1
            i = rng.randrange(NROWS)
            new = rows[k % len(rows)]
            if k % 2:
                w.write(i, new)
            else:
                with w.update(i) as live:
                    live["seq"] = new["seq"]
                    live["payload"] = new["payload"]
                    live["check"] = new["check"]
    finally:
        os._exit(4)


def test_random_kills_leave_at_most_one_torn_row_and_no_garbage(run_paths: RunPaths) -> None:
    path = run_paths.seg("table")
    owner = TableWriter(path, ROW_DT, NROWS)
    r = TableReader(path, ROW_DT)
    rng = random.Random(os.getpid())
    torn_seen = 0
    try:
        for i in range(NROWS):
            owner.write(i, row(i + 1))
        for _ in range(20):
            before = sum(r.version(i) for i in range(NROWS))
            pid = os.fork()
            if pid == 0:                               # pragma: no cover - child
                _hammer(str(path), rng.randrange(1 << 30))
            try:
                assert wait_for(lambda b=before: sum(r.version(i) for i in range(NROWS))
                                > b + 200, timeout=20.0)
                time.sleep(rng.uniform(0, 0.002))
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            torn = owner.torn_rows()
            assert len(torn) <= 1
            torn_seen += len(torn)
            for i in range(NROWS):
                if i in torn:
                    with pytest.raises(TornRowError):
                        r.read(i, patience_s=0.05)
                    owner.reset_row(i)
                else:
                    got = r.read(i)
                    assert not len(bad_records(got.reshape(1))), f"row {i} is garbage"
        assert torn_seen >= 1, "no kill landed inside a row write"
    finally:
        r.close()
        owner.unlink()
        owner.close()
