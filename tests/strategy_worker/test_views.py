"""StateViews in one process: the feed's tables are written by the test, no worker runs.

A tick's views must be that tick's: its markets come from the tick record (never the live
markets table), its candles are those closed before the tick's time, and a windows row left
mid-write costs a refresh, not the cycle.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from core.markets import CANDLE_SYMBOLS, KLINE_INTERVALS, N_SLOTS, SLOTS
from state.layout import MARKET_DT, TICK_DT, WINDOW_ROW_DT, SlotStatus
from state.run import RunPaths
from state.table import TableWriter
from strategy_worker.api import Book, SlotView
from strategy_worker.views import StateViews

T0_MS = 1_777_467_600_000          # a 15-minute boundary: every window starts here
MINUTE_MS = 60_000
BTC, ONE_MINUTE = CANDLE_SYMBOLS.index("BTCUSDT"), KLINE_INTERVALS.index("1m")


@pytest.fixture
def windows(run_paths: RunPaths) -> Iterator[TableWriter]:
    """The feed's windows table (all rows empty until a test writes one)."""
    w = TableWriter(run_paths.seg("windows"), WINDOW_ROW_DT,
                    len(CANDLE_SYMBOLS) * len(KLINE_INTERVALS), name="windows")
    yield w
    w.unlink()
    w.close()


@pytest.fixture
def views(run_paths: RunPaths, windows: TableWriter) -> Iterator[StateViews]:
    v = StateViews(run_paths)
    yield v
    v.close()


def market_row(slot: int, *, tick: int, status: SlotStatus = SlotStatus.OK,
               up_bid: float = 0.45) -> np.ndarray:
    s = SLOTS[slot]
    start = T0_MS // 1000
    row = np.zeros((), MARKET_DT)
    row["slot"], row["status"], row["accepting"], row["tick"] = slot, status, 1, tick
    row["window_s"], row["window_start"], row["end_ts"] = s.window_s, start, start + s.window_s
    row["slug"] = s.slug(start).encode()
    row["up_bid"], row["up_ask"], row["up_bid_size"], row["up_ask_size"] = up_bid, 0.5, 10, 20
    row["down_bid"], row["down_ask"] = 0.48, 0.53
    return row


def tick_record(tick: int, tick_time_ms: int, rows: list[np.ndarray]) -> np.void:
    """A tick record as the scanner publishes it: the rows it wrote, copied in."""
    rec = np.zeros((), TICK_DT)
    rec["tick"], rec["tick_time_ms"] = tick, tick_time_ms
    for row in rows:
        rec["markets"][int(row["slot"])] = row
    return rec[()]


def window_row(symbol_id: int, interval_id: int, n: int) -> np.ndarray:
    """``n`` closed 1-minute candles from T0, candle k closing at T0 + (k+1) min - 1 ms."""
    row = np.zeros((), WINDOW_ROW_DT)
    row["symbol_id"], row["interval_id"], row["count"] = symbol_id, interval_id, n
    c = row["candles"]
    for k in range(n):
        c[k]["symbol_id"], c[k]["interval_id"], c[k]["closed"] = symbol_id, interval_id, 1
        c[k]["open_time"] = T0_MS + k * MINUTE_MS
        c[k]["close_time"] = T0_MS + (k + 1) * MINUTE_MS - 1
        c[k]["open"], c[k]["close"] = 100.0 + k, 100.5 + k
    row["last_open_time"] = T0_MS + (n - 1) * MINUTE_MS if n else -1
    return row


def seen(views: list[SlotView]) -> list[tuple]:
    """What a view says about its market (SlotView's candle arrays do not compare with ==)."""
    return [(v.tick, v.slot, v.label, v.window_start, v.end_ts, v.slug, v.accepting, v.up,
             v.down) for v in views]


def test_views_come_from_the_tick_records_own_market_rows(run_paths: RunPaths,
                                                         views: StateViews) -> None:
    rec = tick_record(7, T0_MS + 5_000, [
        market_row(0, tick=7, up_bid=0.41),                       # current: a view
        market_row(1, tick=6),                                    # left from tick 6: stale
        market_row(2, tick=7, status=SlotStatus.NO_BOOK),
        market_row(3, tick=7, status=SlotStatus.ERROR),
        market_row(4, tick=7, status=SlotStatus.NOT_LISTED),
        market_row(9, tick=7, up_bid=0.55),                       # current: a view
    ])                                                            # the rest: EMPTY
    now = (T0_MS + 5_000) / 1000
    got = views.slot_views(rec, now)
    start = T0_MS // 1000
    assert seen(got) == [
        (7, 0, "btc-5m", start, start + 300, SLOTS[0].slug(start), True,
         Book(0.41, 0.5, 10.0, 20.0), Book(0.48, 0.53, 0.0, 0.0)),
        (7, 9, "doge-15m", start, start + 900, SLOTS[9].slug(start), True,
         Book(0.55, 0.5, 10.0, 20.0), Book(0.48, 0.53, 0.0, 0.0)),
    ]
    assert all(v.now == now for v in got)
    # The scanner moves on and rewrites the live table for tick 8, every slot listed, other
    # prices: tick 7's views must not change (StateViews does not read that table at all).
    markets = TableWriter(run_paths.seg("markets"), MARKET_DT, N_SLOTS, name="markets")
    try:
        for s in SLOTS:
            markets.write(s.index, market_row(s.index, tick=8, up_bid=0.99))
        assert seen(views.slot_views(rec, now)) == seen(got)
    finally:
        markets.unlink()
        markets.close()


def test_a_late_tick_sees_only_the_candles_closed_before_its_time(
        windows: TableWriter, views: StateViews) -> None:
    windows.write(BTC * len(KLINE_INTERVALS) + ONE_MINUTE, window_row(BTC, ONE_MINUTE, 3))
    # Tick 4 was scanned 2 min after T0; we read it after the third candle (closing at
    # T0 + 3 min - 1 ms) was already in the table: that candle is the future for tick 4.
    late = T0_MS + 2 * MINUTE_MS
    rec = tick_record(4, late, [market_row(0, tick=4)])
    (view,) = views.slot_views(rec, late / 1000)
    c = view.candles["1m"]
    assert list(c["close_time"]) == [T0_MS + MINUTE_MS - 1, T0_MS + 2 * MINUTE_MS - 1]
    assert (c["close_time"] < late).all()
    assert view.window_open_price == 100.0
    assert all(len(view.candles[iv]) == 0 for iv in ("5m", "15m"))    # rows never written
    assert len(views.candles(BTC, ONE_MINUTE, until_ms=late)) == 2
    assert len(views.candles(BTC, ONE_MINUTE)) == 3                    # no bound: all of it
    on_time = tick_record(5, T0_MS + 3 * MINUTE_MS, [market_row(0, tick=5)])
    (view,) = views.slot_views(on_time, (T0_MS + 3 * MINUTE_MS) / 1000)
    assert len(view.candles["1m"]) == 3


def test_a_row_left_mid_write_gives_the_previous_copy_not_an_error(
        windows: TableWriter, views: StateViews) -> None:
    i = BTC * len(KLINE_INTERVALS) + ONE_MINUTE
    windows.write(i, window_row(BTC, ONE_MINUTE, 2))
    before = views.candles(BTC, ONE_MINUTE)
    assert len(before) == 2 and views.torn_reads == 0
    new = window_row(BTC, ONE_MINUTE, 3)
    # A writer inside update() holds the row's seq odd: to a reader that is a writer
    # killed mid-row. The reader's patience (0.5 s) runs out while we are still inside.
    with windows.update(i) as row:
        row["candles"][2] = new["candles"][2]
        row["count"] = 3
        during = views.candles(BTC, ONE_MINUTE)
        assert views.torn_reads == 1
        assert np.array_equal(during, before)        # the previous copy, whole
    after = views.candles(BTC, ONE_MINUTE)            # the row is whole again: refreshed
    assert len(after) == 3 and views.torn_reads == 1
    assert np.array_equal(after[:2], before)


def test_reference_fields_come_from_the_tick_and_drive_the_default_strategy(views):
    import importlib.util
    from pathlib import Path

    import state.layout as lay

    row = market_row(0, tick=3)
    row["ref_price"], row["ref_ms"], row["ref_status"] = 101.0, T0_MS + 270_000, lay.RefStatus.OK
    row["price_to_beat"], row["ptb_ms"] = 100.0, T0_MS + 400
    row["tick_size"], row["min_size"] = 0.001, 15.0
    bare = market_row(1, tick=3)                      # the feed had no reference for it
    v, v_bare = views.slot_views(tick_record(3, T0_MS + 272_000, [row, bare]), T0_MS / 1000)
    assert v.reference_price == 101.0 and v.price_to_beat == 100.0
    assert v.reference_age_s == 2.0 and v.price_to_beat_age_s == 271.6
    assert not v.reference_stale and v.tick_size == 0.001 and v.min_size == 15.0
    assert v.move_from_price_to_beat == pytest.approx(0.01)
    assert v_bare.reference_stale and v_bare.move_from_price_to_beat is None
    assert v_bare.tick_size == 0.01 and v_bare.min_size == 5.0      # defaults when unknown

    # The default strategy trades late in the window on the move from the price to beat.
    spec = importlib.util.spec_from_file_location(
        "momentum_t", Path(__file__).resolve().parents[2] / "strategies" / "momentum.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    strat = mod.Strategy({"confirmations": 1})
    candles = np.zeros(3, dtype=WINDOW_ROW_DT["candles"].base)
    candles["open"], candles["close"] = 50.0, 50.5            # Binance: up in the last minute
    late = SlotView(**{**v.__dict__, "now": v.end_ts - 30, "candles": {"1m": candles}})
    d = strat.evaluate(late)
    assert d is not None and d.outcome == "Up"
    # Binance's 1m open is irrelevant now: no price to beat, no trade
    blind = SlotView(**{**late.__dict__, "price_to_beat": float("nan")})
    assert mod.Strategy({"confirmations": 1}).evaluate(blind) is None
    stale = SlotView(**{**late.__dict__, "reference_stale": True})
    assert mod.Strategy({"confirmations": 1}).evaluate(stale) is None
    below = SlotView(**{**late.__dict__, "reference_price": 99.0})   # Down is winning
    d2 = mod.Strategy({"confirmations": 1}).evaluate(below)
    assert d2 is None                      # the fast signal (Binance up) disagrees: no trade
