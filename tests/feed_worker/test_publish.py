"""The hot path (frame -> ring + window) and the counters that describe it."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from core.clock import ManualClock
from feed_worker.publish import KlinePublisher
from feed_worker.stats import FeedStats, LatencyReservoir
from feed_worker.windows import N_ROWS, RollingWindows, row_index
from state.layout import FEED_STATS_DT, KLINE_DT, WINDOW_ROW_DT
from state.ring import RingReader, RingWriter
from state.table import TableReader, TableWriter

from .fakes import kline_event
from .test_windows import T0, candles

IV = 60_000
R = row_index(0, 0)


@pytest.fixture
def segs(run_paths) -> Iterator[tuple[RingWriter, TableWriter, TableWriter]]:
    ring = RingWriter(run_paths.seg("klines"), KLINE_DT, 1024, name="klines")
    table = TableWriter(run_paths.seg("windows"), WINDOW_ROW_DT, N_ROWS, name="windows")
    fs = TableWriter(run_paths.seg("feedstats"), FEED_STATS_DT, 1, name="feedstats")
    yield ring, table, fs
    for s in (ring, table, fs):
        s.unlink()
        s.close()


def test_every_update_to_the_ring_only_closed_ones_to_the_window(segs):
    ring, table, _ = segs
    clock = ManualClock()
    w = RollingWindows(table)
    w.recover()
    w.merge(R, candles(0, 3), replace=True)            # window: candles 0..2
    gaps: list[int] = []
    stats = FeedStats()
    pub = KlinePublisher(ring, w, stats, [R], lambda r, why: gaps.append(r),
                         clock.monotonic_ns)
    reader = RingReader(ring.path, KLINE_DT, start="oldest")
    try:
        t3 = T0 + 3 * IV
        pub.handle(kline_event("BTCUSDT", "1m", t3, t3 + 1000, False), 0)   # forming
        pub.handle(kline_event("BTCUSDT", "1m", t3, t3 + IV, True), 0)       # closed: next
        pub.handle(kline_event("BTCUSDT", "1m", t3 + 2 * IV, t3 + 3 * IV, True), 0)  # gap
        pub.handle(b"\x00garbage{{{", 0)
        recs = reader.poll().records
    finally:
        reader.close()
    assert list(recs["closed"]) == [0, 1, 1]
    assert w.count(R) == 4 and w.last_open_time(R) == t3
    assert gaps == [R] and w.pending(R) == 1
    assert stats.messages == 4 and stats.parse_errors == 1
    assert stats.latency.total == 3


def test_latency_percentiles():
    r = LatencyReservoir(size=100)
    assert all(math.isnan(x) for x in r.percentiles_us())
    for ns in range(1000, 201_000, 1000):          # 200 samples; only the last 100 kept
        r.add(ns)
    p50, p99 = r.percentiles_us()
    assert 150 <= p50 <= 151 and 199 <= p99 <= 200


def test_counters_survive_a_restart_through_shared_memory(segs):
    _, _, fs = segs
    st = FeedStats(messages=10, reconnects=2, gaps_filled=7, starts=1, tick=99)
    st.latency.add(5000)
    st.flush(fs)
    reader = TableReader(fs.path, FEED_STATS_DT)
    try:
        row = reader.read(0)
        assert int(row["reconnects"]) == 2 and float(row["latency_p50_us"]) == 5.0
    finally:
        reader.close()
    again = FeedStats.load(fs)
    assert (again.messages, again.reconnects, again.gaps_filled, again.tick) == (10, 2, 7, 99)
