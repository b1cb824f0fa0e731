"""REST backfill against a scripted Binance: what it asks for, and how it treats limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from core.clock import ManualClock
from feed_worker.backfill import Backfiller, BinanceRest
from feed_worker.config import FeedConfig
from feed_worker.http import Response
from feed_worker.stats import FeedStats
from feed_worker.windows import N_ROWS, RollingWindows, check_candles, row_index
from state.layout import WINDOW_CAPACITY, WINDOW_ROW_DT
from state.table import TableWriter

from .fakes import FakeHttp, klines_body

IV = 60_000
T0 = 1_700_000_040          # seconds, a minute boundary
R = row_index(0, 0)         # BTCUSDT 1m
R15 = row_index(0, 2)       # BTCUSDT 15m


@pytest.fixture
def table(run_paths) -> Iterator[TableWriter]:
    t = TableWriter(run_paths.seg("windows"), WINDOW_ROW_DT, N_ROWS, name="windows")
    yield t
    t.unlink()
    t.close()


class Binance:
    """Scripted /api/v3/klines: ``script`` is a list of statuses to answer before the data."""

    def __init__(self, clock: ManualClock, script: list | None = None) -> None:
        self.clock = clock
        self.script = list(script or [])
        self.sent_at: list[float] = []
        self.used = 0

    def __call__(self, method: str, url: str, params: dict) -> Response:
        self.sent_at.append(self.clock.now())
        self.used += 2
        headers = {"X-MBX-USED-WEIGHT-1M": str(self.used)}
        if self.script:
            s = self.script.pop(0)
            if isinstance(s, Response):
                return s
            if s in (429, 418):
                return Response(s, b'{"code":-1003,"msg":"Too many requests"}',
                                {**headers, "Retry-After": "2"})
            return Response(s, b'{"code":-1001,"msg":"Internal error"}', headers)
        sym = params["symbol"]
        return Response(200, klines_body(sym, params["interval"], params, self.clock.now_ms()),
                        headers)


def make(table, clock, server, rows=(R,), **cfg) -> tuple[Backfiller, FakeHttp, FeedStats]:
    http = FakeHttp(server)
    stats = FeedStats()
    config = FeedConfig(**cfg)
    w = RollingWindows(table, mono_ns=clock.monotonic_ns)
    w.recover()
    rest = BinanceRest(http, "http://binance", clock, stats, config)
    return Backfiller(rest, w, clock, stats, config, rows), http, stats


async def drive(clock: ManualClock, done: Callable[[], bool], step: float = 0.05,
                limit: int = 4000) -> None:
    """Let the tasks run, moving the manual clock forward a little at a time."""
    for _ in range(limit):
        for _ in range(5):
            await asyncio.sleep(0)
        if done():
            return
        clock.advance(step)
    raise AssertionError("condition not reached")


async def test_initial_fill_is_full_and_excludes_the_forming_candle(table):
    clock = ManualClock(start=T0 + 30)
    bf, http, stats = make(table, clock, Binance(clock))
    got = await bf.fill_row(R)
    w = bf.windows
    assert got == WINDOW_CAPACITY == w.count(R) == stats.backfilled
    assert w.last_open_time(R) == T0 * 1000 - IV           # the candle forming at T0 is out
    (_, url, p), = http.calls
    assert url == "http://binance/api/v3/klines"
    assert p["startTime"] == T0 * 1000 - WINDOW_CAPACITY * IV and p["endTime"] == T0 * 1000 - 1
    assert stats.gaps_filled == 0                              # history, not a gap


async def test_reconnect_fills_exactly_the_missing_range(table):
    clock = ManualClock(start=T0 + 30)
    bf, http, stats = make(table, clock, Binance(clock))
    await bf.fill_row(R)
    clock.advance(10 * 60)                                     # 10 candles closed meanwhile
    got = await bf.fill_row(R)
    assert got == 10 and stats.gaps_filled == 10
    assert http.calls[-1][2]["startTime"] == T0 * 1000
    row = table.read(R)
    assert check_candles(row["candles"][:int(row["count"])], IV) is None


async def test_a_row_too_far_behind_restarts_with_the_newest_candles(table):
    clock = ManualClock(start=T0 + 30)
    bf, http, _stats = make(table, clock, Binance(clock))
    await bf.fill_row(R)
    clock.advance(3 * 24 * 3600)
    await bf.fill_row(R)
    assert len(http.calls) == 2 and bf.windows.count(R) == WINDOW_CAPACITY
    assert bf.windows.last_open_time(R) == (T0 + 3 * 24 * 3600) * 1000 - IV


@pytest.mark.parametrize("status", [429, 418])
async def test_rate_limit_honours_retry_after_and_still_completes(table, status):
    clock = ManualClock(start=T0 + 30)
    server = Binance(clock, script=[status])
    bf, _http, stats = make(table, clock, server, rows=(R, R15))
    task = asyncio.create_task(bf.run())
    bf.request_all("start")
    try:
        await drive(clock, bf.initial_done.is_set)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert stats.rate_limited == 1
    first = server.sent_at[0]
    later = server.sent_at[1:]
    assert later and all(t >= first + 2.0 for t in later), server.sent_at   # Retry-After: 2
    for r in (R, R15):
        assert bf.windows.count(r) == WINDOW_CAPACITY


async def test_used_weight_near_the_limit_pauses_until_the_next_minute(table):
    clock = ManualClock(start=T0 + 10)
    server = Binance(clock)
    server.used = 5000                       # 80 % of 6000 is 4800
    bf, _http, _stats = make(table, clock, server, rows=(R, R15), backfill_concurrency=1)
    task = asyncio.create_task(bf.run())
    bf.request_all("start")
    try:
        await drive(clock, bf.initial_done.is_set, step=0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert server.sent_at[1] >= T0 + 60, server.sent_at


async def test_malformed_body_and_5xx_are_counted_and_retried(table):
    clock = ManualClock(start=T0 + 30)
    server = Binance(clock, script=[Response(200, b"[[garbage"), 503])
    bf, _http, stats = make(table, clock, server)
    task = asyncio.create_task(bf.run())
    bf.request_all("start")
    try:
        await drive(clock, bf.initial_done.is_set)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert stats.parse_errors == 1 and stats.rest_errors == 1
    assert len(server.sent_at) == 3 and bf.windows.count(R) == WINDOW_CAPACITY


async def test_audit_finds_a_row_lagging_the_clock(table):
    clock = ManualClock(start=T0 + 1)
    bf, _http, _stats = make(table, clock, Binance(clock))
    await bf.fill_row(R)
    assert bf.audit() == []
    clock.advance(60)                       # the T0 candle closed 1 s ago: in grace
    assert bf.audit() == []
    clock.advance(10)                       # 5 s of grace are over, no stream delivered it
    assert bf.audit() == [R]
