"""Candles built from the reference (Chainlink) stream, for assets without Binance candles."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import orjson
import pytest

from core.markets import (
    CHAINLINK_SYMBOLS,
    INTERVAL_MS,
    KLINE_INTERVALS,
    REFERENCE_CANDLE_IDS,
    SLOTS,
)
from feed_worker.refcandles import ReferenceCandles, refring_records
from feed_worker.reference import ReferencePublisher
from feed_worker.stats import FeedStats
from feed_worker.windows import N_ROWS, RollingWindows, check_candles, row_index
from state.layout import KLINE_DT, REF_DT, REF_ROW_DT, WINDOW_ROW_DT
from state.ring import RingReader, RingWriter
from state.table import TableReader, TableWriter

from .fakes import series_candle

AID = REFERENCE_CANDLE_IDS[0]              # HYPE in the default universe
T0 = 1_700_000_100_000 // 900_000 * 900_000 + 900_000     # a 15-minute boundary
ROWS = {iv: row_index(AID, i) for i, iv in enumerate(KLINE_INTERVALS)}


def value(t_ms: int) -> float:
    """A deterministic wiggly series, distinct values inside every minute."""
    s = t_ms // 1000
    return round(40.0 + (s * 7919 % 1013) / 1000.0, 3)


@pytest.fixture
def segs(run_paths) -> Iterator[tuple[RingWriter, TableWriter]]:
    ring = RingWriter(run_paths.seg("klines"), KLINE_DT, 4096, name="klines")
    table = TableWriter(run_paths.seg("windows"), WINDOW_ROW_DT, N_ROWS, name="windows")
    yield ring, table
    for s in (ring, table):
        s.unlink()
        s.close()


def builder(ring: RingWriter, table: TableWriter) -> tuple[ReferenceCandles, RollingWindows]:
    w = RollingWindows(table)
    w.recover()
    return ReferenceCandles(ring, w, REFERENCE_CANDLE_IDS), w


def window(table: TableWriter, interval: str) -> np.ndarray:
    rd = TableReader(table.path, WINDOW_ROW_DT)
    try:
        row = rd.read(ROWS[interval])
        return row["candles"][:int(row["count"])].copy()
    finally:
        rd.close()


def ring_records(ring: RingWriter) -> np.ndarray:
    rd = RingReader(ring.path, KLINE_DT, readonly=True, start="oldest")
    try:
        return rd.poll(4096).records
    finally:
        rd.close()


def feed(b: ReferenceCandles, times: list[int]) -> dict[int, float]:
    series = {}
    for t in times:
        series[t] = value(t)
        b.observe(AID, t, value(t), recv_ns=t)
    return series


def assert_matches(c: np.ndarray, series: dict[int, float], interval: str) -> None:
    iv = INTERVAL_MS[interval]
    assert check_candles(c, iv) is None
    for rec in c:
        want = series_candle(series, int(rec["open_time"]), iv)
        assert want is not None, int(rec["open_time"])
        got = (rec["open"], rec["high"], rec["low"], rec["close"], int(rec["trades"]))
        assert got == want, (interval, int(rec["open_time"]))
        assert rec["volume"] == rec["quote_volume"] == 0
        assert int(rec["close_time"]) == int(rec["open_time"]) + iv - 1


def test_ohlc_by_interval_closed_by_the_next_intervals_first_observation(segs):
    ring, table = segs
    b, _ = builder(ring, table)
    # one observation a second for 16 minutes, starting exactly on a 15m boundary
    series = feed(b, list(range(T0, T0 + 16 * 60_000, 1000)))
    one = window(table, "1m")
    assert len(one) == 15                 # minute 16 is still forming: not in the window
    assert int(one["open_time"][0]) == T0 and (one["trades"] == 60).all()
    assert_matches(one, series, "1m")
    assert_matches(window(table, "5m"), series, "5m")
    assert len(window(table, "5m")) == 3 and len(window(table, "15m")) == 1
    assert_matches(window(table, "15m"), series, "15m")
    # the first observation of the next minute closes minute 16
    b.observe(AID, T0 + 16 * 60_000 + 400, 1.0)
    assert len(window(table, "1m")) == 16
    # the ring holds every update, forming and closed, like Binance's stream
    recs = ring_records(ring)
    ones = recs[recs["interval_id"] == 0]
    closed = ones[ones["closed"] == 1]
    assert list(closed["open_time"]) == list(window(table, "1m")["open_time"])
    forming = ones[ones["closed"] == 0]
    assert len(forming) == 16 * 60 + 1 and (recs["symbol_id"] == AID).all()
    last = forming[forming["open_time"] == T0][-1]        # its last forming update
    assert last["close"] == closed[0]["close"] and last["trades"] == 60


def test_a_candle_joined_late_is_left_out(segs):
    ring, table = segs
    b, _ = builder(ring, table)
    series = feed(b, list(range(T0 + 30_000, T0 + 3 * 60_000 + 1000, 1000)))
    one = window(table, "1m")
    # minute 0 began before the first observation: its open is unknown
    assert list(one["open_time"]) == [T0 + 60_000, T0 + 120_000]
    assert_matches(one, series, "1m")
    assert not (ring_records(ring)["open_time"] == T0).any()
    assert len(window(table, "5m")) == 0      # the first 5m candle is still forming


def test_empty_intervals_become_flat_candles_at_the_previous_close(segs):
    ring, table = segs
    b, _ = builder(ring, table)
    # minutes 0-1 full, 2 half, 3-4 missing entirely, 5-6 full
    times = [t for t in range(T0, T0 + 7 * 60_000 + 1000, 1000)
             if not T0 + 150_000 <= t < T0 + 300_000]
    series = feed(b, times)
    one = window(table, "1m")
    assert check_candles(one, 60_000) is None and len(one) == 7
    assert list(one["trades"]) == [60, 60, 30, 0, 0, 60, 60]
    prev = one[2]["close"]
    for flat in one[3:5]:
        assert flat["open"] == flat["high"] == flat["low"] == flat["close"] == prev
    assert_matches(one[:3], series, "1m")
    assert_matches(one[5:], series, "1m")
    assert b.flat == 2
    # the 5m candle spanning the hole keeps what was observed
    five = window(table, "5m")
    assert len(five) == 1 and int(five[0]["trades"]) == 150


def test_repeated_and_out_of_order_observations_change_nothing(segs):
    ring, table = segs
    b, _ = builder(ring, table)
    series = {}
    for t in range(T0, T0 + 3 * 60_000 + 1000, 1000):
        series[t] = value(t)
        b.observe(AID, t, value(t))
        b.observe(AID, t, 1e9)                     # repeated with another value
        b.observe(AID, t - 5000, -1.0)             # late
    assert b.ignored == 2 * len(series)
    assert_matches(window(table, "1m"), series, "1m")
    b.observe(AID + 99, T0 + 10**7, 5.0)           # not a reference-sourced asset
    assert len(window(table, "1m")) == 3


def test_a_restart_continues_the_candle_in_progress(segs, run_paths):
    """A new builder on the adopted windows, replaying refring, ends up where one that never
    stopped would have: the candle in progress at the death is rebuilt, not lost."""
    ring, table = segs
    refring = RingWriter(run_paths.seg("refring"), REF_DT, 1024, name="refring")
    try:
        b1, _ = builder(ring, table)
        times = list(range(T0, T0 + 150_500, 1000))          # dies in the middle of minute 2
        rec = np.zeros((), dtype=REF_DT)
        for t in times:
            rec["asset_id"], rec["obs_ms"], rec["value"] = AID, t, value(t)
            refring.publish(rec)
            b1.observe(AID, t, value(t))
        rec["asset_id"], rec["obs_ms"], rec["value"] = AID, T0 + 10**9, 1.0
        refring.publish(rec)             # from a future clock: skipped by the replay
        assert len(window(table, "1m")) == 2
        b2, _ = builder(ring, table)                         # the restarted feed
        head = len(ring_records(ring))
        used = b2.resume(refring_records(refring.path), now_ms=T0 + 151_000)
        assert used == len(times)
        assert len(ring_records(ring)) == head               # a replay does not republish
        later = list(range(T0 + 151_000, T0 + 6 * 60_000 + 1000, 1000))
        series = {t: value(t) for t in times} | feed(b2, later)
        one = window(table, "1m")
        assert len(one) == 6 and (one["trades"] == 60).all()
        assert_matches(one, series, "1m")
        assert_matches(window(table, "5m"), series, "5m")
    finally:
        refring.unlink()
        refring.close()


def test_a_restart_after_an_outage_fills_the_dead_minutes_flat(segs):
    ring, table = segs
    b1, _ = builder(ring, table)
    feed(b1, list(range(T0, T0 + 120_000, 1000)))            # minutes 0, 1; 1 still forming
    assert len(window(table, "1m")) == 1
    b2, _ = builder(ring, table)                              # nothing in refring
    b2.resume(np.empty(0, dtype=REF_DT), now_ms=T0 + 300_000)
    feed(b2, [T0 + 300_000, T0 + 301_000, T0 + 360_000])
    one = window(table, "1m")
    # minute 1 died with the old feed (nothing to rebuild it from): flat, like 2-4
    assert check_candles(one, 60_000) is None
    assert list(one["trades"]) == [60, 0, 0, 0, 0, 2]
    assert (one["close"][1:5] == one["close"][0]).all()


def test_an_empty_row_is_filled_from_refring_at_start(segs):
    ring, table = segs
    b, _ = builder(ring, table)
    recs = np.zeros(4 * 60, dtype=REF_DT)
    recs["asset_id"] = AID
    recs["obs_ms"] = T0 - 30_000 + np.arange(len(recs)) * 1000
    recs["value"] = [value(int(t)) for t in recs["obs_ms"]]
    b.resume(recs, now_ms=T0 + 10**6)
    one = window(table, "1m")
    # T0 - 30 s .. T0 + 209 s: minute -1 joined late (left out), minute 3 still forming
    assert list(one["open_time"]) == [T0, T0 + 60_000, T0 + 120_000]
    assert_matches(one, {int(r["obs_ms"]): float(r["value"]) for r in recs}, "1m")
    assert len(ring_records(ring)) == 0


def test_the_reference_publisher_feeds_the_builder_newer_observations_only(segs, run_paths):
    ring, table = segs
    refring = RingWriter(run_paths.seg("refring"), REF_DT, 1024, name="refring")
    reftable = TableWriter(run_paths.seg("reference"), REF_ROW_DT, len(CHAINLINK_SYMBOLS),
                           name="reference")
    try:
        b, _ = builder(ring, table)
        pub = ReferencePublisher(refring, reftable, FeedStats(), CHAINLINK_SYMBOLS, SLOTS,
                                 lambda: 0, 10_000, on_observation=b.observe)
        sym = CHAINLINK_SYMBOLS[AID]

        def frame(t: int, v: float) -> bytes:
            return orjson.dumps({"topic": "crypto_prices_chainlink", "type": "update",
                                 "timestamp": t + 50,
                                 "payload": {"symbol": sym, "timestamp": t, "value": v}})
        series = {}
        for t in range(T0, T0 + 2 * 60_000 + 1000, 1000):
            series[t] = value(t)
            pub.handle(frame(t, value(t)), 0)
            pub.handle(frame(t - 3000, 1e6), 0)          # late: the builder never sees it
        assert b.ignored == 0
        assert_matches(window(table, "1m"), series, "1m")
        assert len(window(table, "1m")) == 2
    finally:
        for s in (refring, reftable):
            s.unlink()
            s.close()
