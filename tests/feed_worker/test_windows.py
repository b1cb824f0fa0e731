"""The rolling windows never hold a hole, a duplicate or a forming candle."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feed_worker.windows import N_ROWS, AddResult, RollingWindows, check_candles, row_index
from state.layout import KLINE_DT, WINDOW_CAPACITY, WINDOW_ROW_DT
from state.table import TableReader, TableWriter

IV = 60_000
T0 = 1_700_000_040_000
R = row_index(0, 0)                      # BTCUSDT / 1m


def candles(first: int, n: int, iv: int = IV, sid: int = 0, iid: int = 0) -> np.ndarray:
    c = np.zeros(n, dtype=KLINE_DT)
    c["symbol_id"], c["interval_id"], c["closed"] = sid, iid, 1
    c["open_time"] = T0 + np.arange(first, first + n) * iv
    c["close_time"] = c["open_time"] + iv - 1
    c["close"] = 100 + np.arange(first, first + n)
    return c


@pytest.fixture
def table(run_paths) -> Iterator[TableWriter]:
    t = TableWriter(run_paths.seg("windows"), WINDOW_ROW_DT, N_ROWS, name="windows")
    yield t
    t.unlink()
    t.close()


def shared_row(table: TableWriter, r: int = R) -> np.ndarray:
    """What a reader in another process sees."""
    rd = TableReader(table.path, WINDOW_ROW_DT)
    try:
        row = rd.read(r)
        return row["candles"][:int(row["count"])].copy()
    finally:
        rd.close()


def test_empty_row_parks_stream_candles_until_backfilled(table):
    w = RollingWindows(table)
    w.recover()
    assert w.add_closed(R, candles(10, 1)[0]) is AddResult.PENDING
    assert w.count(R) == 0 and w.has_gap(R)
    res = w.merge(R, candles(0, 10), replace=True)     # history ends right before it
    assert (res.backfilled, res.drained, res.gap) == (10, 1, False)
    got = shared_row(table)
    assert list(got["open_time"]) == list(candles(0, 11)["open_time"])
    assert w.last_open_time(R) == int(got["open_time"][-1])


def test_append_duplicate_and_gap(table):
    w = RollingWindows(table)
    w.recover()
    w.merge(R, candles(0, 5))
    assert w.add_closed(R, candles(5, 1)[0]) is AddResult.APPENDED
    assert w.add_closed(R, candles(5, 1)[0]) is AddResult.DUPLICATE
    assert w.add_closed(R, candles(3, 1)[0]) is AddResult.DUPLICATE
    assert w.add_closed(R, candles(8, 1)[0]) is AddResult.PENDING   # 6, 7 missing
    assert w.add_closed(R, candles(9, 1)[0]) is AddResult.PENDING
    assert w.count(R) == 6 and w.has_gap(R)
    res = w.merge(R, candles(6, 3))          # REST brings 6..8; 8 duplicates a pending one
    assert (res.backfilled, res.drained, res.gap) == (3, 1, False)
    got = shared_row(table)
    assert check_candles(got, IV) is None and len(got) == 10


def test_full_window_drops_the_oldest(table):
    w = RollingWindows(table, capacity=WINDOW_CAPACITY)
    w.recover()
    w.merge(R, candles(0, 600), replace=True)
    assert w.count(R) == WINDOW_CAPACITY
    for k in range(600, 610):
        assert w.add_closed(R, candles(k, 1)[0]) is AddResult.APPENDED
    got = shared_row(table)
    assert len(got) == WINDOW_CAPACITY and check_candles(got, IV) is None
    assert int(got["open_time"][0]) == T0 + (610 - WINDOW_CAPACITY) * IV
    assert int(got["open_time"][-1]) == T0 + 609 * IV


def test_source_hole_restarts_the_window_after_it(table):
    w = RollingWindows(table)
    w.recover()
    w.merge(R, candles(0, 5))
    res = w.merge(R, candles(8, 4))          # the exchange has nothing for 5..7
    assert res.hole
    got = shared_row(table)
    assert check_candles(got, IV) is None and int(got["open_time"][0]) == T0 + 8 * IV


def test_recover_resets_torn_and_inconsistent_rows_and_keeps_good_ones(table):
    w = RollingWindows(table)
    w.recover()
    good, torn, bad = row_index(1, 0), row_index(2, 1), row_index(3, 2)
    w.merge(good, candles(0, 50, sid=1))
    w.merge(torn, candles(0, 50, 300_000, sid=2, iid=1))
    w.merge(bad, candles(0, 50, 900_000, sid=3, iid=2))
    # a writer killed mid-row leaves an odd seqlock behind
    table._seqs[torn] += 1
    # and a row whose candles are not contiguous must not be trusted either
    with table.update(bad) as row:
        row["candles"][10]["open_time"] += 1
    w2 = RollingWindows(table)
    assert w2.recover() == sorted([torn, bad])
    assert w2.count(good) == 50 and w2.last_open_time(good) == T0 + 49 * IV
    assert w2.count(torn) == 0 and w2.count(bad) == 0 and w2.last_open_time(bad) == -1
    assert shared_row(table, torn).size == 0


def test_recover_resets_a_row_from_the_future(table):
    # e.g. the sim restarted with a new clock hours earlier: the row would freeze, taking
    # every new candle for a duplicate of one it already holds
    w = RollingWindows(table)
    w.recover()
    past, future = row_index(1, 0), row_index(2, 0)
    w.merge(past, candles(0, 50, sid=1))
    w.merge(future, candles(0, 50, sid=2))
    with table.update(future) as row:        # the same row, 10 days later
        row["candles"]["open_time"][:50] += 10 * 86_400_000
        row["candles"]["close_time"][:50] += 10 * 86_400_000
        row["last_open_time"] += 10 * 86_400_000
    now = T0 + 50 * IV + 5_000               # candle 49 closed 5 s ago
    w2 = RollingWindows(table)
    assert w2.recover(now_ms=now) == [future]
    assert w2.count(future) == 0 and w2.count(past) == 50
    assert RollingWindows(table).recover(now_ms=T0 + 50 * IV - 1) == [past]  # 49 still open


def test_prepend_fills_back_only_what_joins_up(table):
    w = RollingWindows(table)
    w.recover()
    w.merge(R, candles(100, 10))
    assert w.first_open_time(R) == T0 + 100 * IV
    assert w.prepend(R, candles(80, 19)) == 0            # ends at 98: does not join 100
    hole = np.concatenate([candles(50, 20), candles(75, 25)])
    assert w.prepend(R, hole) == 25                       # 75..99: the part after the hole
    got = shared_row(table)
    assert check_candles(got, IV) is None and len(got) == 35 == w.count(R)
    assert int(got["open_time"][0]) == T0 + 75 * IV == w.first_open_time(R)
    assert w.last_open_time(R) == T0 + 109 * IV
    assert w.add_closed(R, candles(110, 1)[0]) is AddResult.APPENDED


def test_prepend_never_overfills(table):
    w = RollingWindows(table, capacity=WINDOW_CAPACITY)
    w.recover()
    w.merge(R, candles(1000, WINDOW_CAPACITY - 5), replace=True)
    assert w.prepend(R, candles(0, 1000)) == 5
    got = shared_row(table)
    assert len(got) == WINDOW_CAPACITY and check_candles(got, IV) is None
    assert int(got["open_time"][0]) == T0 + 995 * IV
    assert w.prepend(R, candles(0, 995)) == 0            # full: nothing more


def test_check_candles_refuses_a_forming_candle():
    c = candles(0, 3)
    c["closed"][2] = 0
    assert "not closed" in check_candles(c, IV)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["stream", "drop", "backfill"]),
                          st.integers(1, 4)), min_size=1, max_size=60),
       st.integers(1, 40))
def test_any_mix_of_stream_drops_and_backfills_keeps_the_invariant(table, ops, initial):
    """Model: the truth is candles 0..N; the stream delivers some, loses some; a backfill
    delivers truth from the window's end up to 'now'. The window is always a contiguous
    suffix of the truth, and after a final backfill it is exactly the newest candles."""
    cap = 32
    table.reset_row(R)
    w = RollingWindows(table, capacity=cap)
    w.recover()
    w.merge(R, candles(0, initial), replace=True)
    nxt = initial                             # next candle to close
    for op, k in ops:
        if op == "stream":
            for _ in range(k):
                w.add_closed(R, candles(nxt, 1)[0])
                nxt += 1
        elif op == "drop":
            nxt += k                          # closed while disconnected: never streamed
        else:
            last = (w.last_open_time(R) - T0) // IV
            if nxt - 1 - last >= cap:
                w.merge(R, candles(nxt - cap, cap), replace=True)
            elif nxt - 1 > last:
                w.merge(R, candles(last + 1, nxt - 1 - last))
        got = shared_row(table)
        assert check_candles(got, IV) is None
        assert len(got) == w.count(R) <= cap
        idx = (got["open_time"] - T0) // IV
        assert (got["close"] == 100 + idx).all()          # right candle in the right place
        assert w.last_open_time(R) == int(got["open_time"][-1])
    last = (w.last_open_time(R) - T0) // IV
    if nxt - 1 - last >= cap:
        w.merge(R, candles(nxt - cap, cap), replace=True)
    elif nxt - 1 > last:
        w.merge(R, candles(last + 1, nxt - 1 - last))
    got = shared_row(table)
    assert not w.has_gap(R)
    assert list((got["open_time"] - T0) // IV) == list(range(max(0, nxt - cap), nxt))
