"""The seeded price model, in-process: determinism, candle arithmetic, realism bounds."""

from __future__ import annotations

import math

import numpy as np

from sim.assets import ASSET_PARAMS
from sim.markets import RETENTION_S
from sim.prices import (
    BLOCK_S,
    DROP_BLOCKS,
    HISTORY_BLOCKS,
    KEEP_MINUTE_BLOCKS,
    PriceModel,
    fmt_ticks,
)

START = 1_795_000_000.0


def test_same_seed_and_start_give_the_same_path():
    a, b, c = PriceModel(5, START), PriceModel(5, START), PriceModel(6, START)
    now_ms = int(START * 1000)
    for sym in ("BTCUSDT", "DOGEUSDT"):
        ka = a.paths[sym].klines(60_000, 0, now_ms, now_ms)[-500:]
        kb = b.paths[sym].klines(60_000, 0, now_ms, now_ms)[-500:]
        kc = c.paths[sym].klines(60_000, 0, now_ms, now_ms)[-500:]
        assert ka == kb
        assert [k.c for k in ka] != [k.c for k in kc]


def test_history_covers_1000_closed_15m_candles():
    m = PriceModel(1, START)
    assert START - m.earliest_ms / 1000 >= 1000 * 900 + 900
    assert HISTORY_BLOCKS * 3600 >= 1000 * 900


def test_higher_intervals_aggregate_the_1m_candles():
    m = PriceModel(3, START)
    p = m.paths["ETHUSDT"]
    now_ms = int(START * 1000) + 123_456
    for iv in (300_000, 900_000):
        for k in p.klines(iv, now_ms - 20 * iv, now_ms, now_ms):
            ones = p.klines(60_000, k.t, min(k.T, now_ms), now_ms)
            assert k.o == ones[0].o and k.c == ones[-1].c
            assert k.h == max(x.h for x in ones) and k.low == min(x.low for x in ones)
            assert k.n == sum(x.n for x in ones) and k.f == ones[0].f
            assert math.isclose(k.v, sum(x.v for x in ones), rel_tol=1e-9)
            assert k.closed == (now_ms > k.T)


def test_window_open_close_are_candle_open_and_close():
    m = PriceModel(2, START)
    p = m.paths["SOLUSDT"]
    start = int(START) // 300 * 300 - 600
    o, c = p.window_open_close(start, start + 300)
    ks = p.klines(60_000, start * 1000, (start + 240) * 1000, int(START * 1000))
    assert (o, c) == (ks[0].o, ks[-1].c)


def test_volatility_and_levels_are_realistic():
    m = PriceModel(4, START)
    for params in ASSET_PARAMS:
        p = m.paths[params.symbol]
        ks = p.klines(60_000, 0, int(START * 1000), int(START * 1000))[:-1]
        closes = np.array([k.c for k in ks], dtype=float) * params.tick
        r = np.diff(np.log(closes))
        annual = r.std() * math.sqrt(365 * 24 * 60)
        assert 0.4 * params.annual_vol < annual < 2.5 * params.annual_vol, params.symbol
        assert 0.5 < closes[-1] / params.start_price < 2.0


def test_fmt_ticks_is_exact():
    assert fmt_ticks(9_512_345, 2) == "95123.45000000"
    assert fmt_ticks(5, 5) == "0.00005000"
    assert fmt_ticks(31_445, 5) == "0.31445000"


def test_old_minutes_are_dropped_and_what_is_kept_is_unchanged():
    """Memory stays flat over a long run (at speed 60 a wall day is 60 sim days)."""
    assert KEEP_MINUTE_BLOCKS * BLOCK_S >= HISTORY_BLOCKS * BLOCK_S + RETENTION_S + BLOCK_S
    params = ASSET_PARAMS[:1]
    sym = params[0].symbol
    everything = PriceModel(5, START, params, keep_blocks=None).paths[sym]
    kept = PriceModel(5, START, params).paths[sym]
    later = int(START) + 20 * 86_400
    now_ms = later * 1000 + 12_345
    for p in (everything, kept):
        p.ensure(later)
    assert everything._len > 20 * 24 * 60
    assert kept._len <= (KEEP_MINUTE_BLOCKS + DROP_BLOCKS) * 60
    assert len(kept._cols["o"]) <= 32_768
    assert kept.earliest_ms % (BLOCK_S * 1000) == 0
    assert kept.earliest_ms >= now_ms - (KEEP_MINUTE_BLOCKS + DROP_BLOCKS + 1) * BLOCK_S * 1000
    for iv in (60_000, 300_000, 900_000):          # the latest 1000 candles are all there
        first = now_ms // iv * iv - 999 * iv
        got = kept.klines(iv, first, now_ms, now_ms)
        assert len(got) == 1000 and got == everything.klines(iv, first, now_ms, now_ms)
    # Asked from before the kept history: from its earliest candle, like Binance.
    got = kept.klines(60_000, 0, kept.earliest_ms + 4 * 60_000, now_ms)
    assert [k.t for k in got] == [kept.earliest_ms + i * 60_000 for i in range(5)]
    assert got == everything.klines(60_000, kept.earliest_ms, kept.earliest_ms + 4 * 60_000,
                                    now_ms)
    start = (later - RETENTION_S) // 900 * 900     # the oldest market still retained
    assert kept.window_open_close(start, start + 900) == \
        everything.window_open_close(start, start + 900)
    assert kept.ticks_at(later - 5) == everything.ticks_at(later - 5)
