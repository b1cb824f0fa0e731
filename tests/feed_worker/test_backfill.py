"""REST backfill against a scripted Binance: what it asks for, and how it treats limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import orjson
import pytest

from core.clock import ManualClock
from feed_worker.backfill import Backfiller, BinanceRest, RateLimited
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
    """Scripted /api/v3/klines: ``script`` is a list of statuses (or Responses, or exceptions
    to raise) to answer before the data. The server's clock is ``skew_ms`` behind ours;
    ``/api/v3/time`` tells it (when ``has_time``)."""

    def __init__(self, clock: ManualClock, script: list | None = None, skew_ms: int = 0,
                 has_time: bool = True) -> None:
        self.clock = clock
        self.script = list(script or [])
        self.sent_at: list[float] = []
        self.used = 0
        self.skew_ms = skew_ms
        self.has_time = has_time
        self.weight_header: str | None = None
        self.missing: set[int] = set()        # open times the exchange has no candle for

    def server_ms(self) -> int:
        return self.clock.now_ms() - self.skew_ms

    def __call__(self, method: str, url: str, params: dict) -> Response:
        self.used += 2
        headers = {"X-MBX-USED-WEIGHT-1M": str(self.used) if self.weight_header is None
                   else self.weight_header}
        if url.endswith("/api/v3/time"):
            if not self.has_time:
                return Response(404, b'{"code":-1000,"msg":"Unknown path."}', headers)
            return Response(200, orjson.dumps({"serverTime": self.server_ms()}), headers)
        self.sent_at.append(self.clock.now())
        if self.script:
            s = self.script.pop(0)
            if isinstance(s, Response):
                return s
            if isinstance(s, BaseException):
                raise s
            if s in (429, 418):
                return Response(s, b'{"code":-1003,"msg":"Too many requests"}',
                                {**headers, "Retry-After": "2"})
            return Response(s, b'{"code":-1001,"msg":"Internal error"}', headers)
        sym = params["symbol"]
        body = klines_body(sym, params["interval"], params, self.server_ms())
        if self.missing:
            body = orjson.dumps([k for k in orjson.loads(body) if k[0] not in self.missing])
        return Response(200, body, headers)


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
    clock = ManualClock(start=T0 + 3)       # the T0-60 candle closed 3 s ago (> 2 s margin)
    bf, _http, _stats = make(table, clock, Binance(clock))
    await bf.fill_row(R)
    assert bf.windows.last_open_time(R) == (T0 - 60) * 1000
    assert bf.audit() == []
    clock.advance(60)                       # the T0 candle closed 3 s ago: in grace
    assert bf.audit() == []
    clock.advance(10)                       # 5 s grace + 2 s margin are over, no stream
    assert bf.audit() == [R]


async def run_until_filled(bf: Backfiller, clock: ManualClock, **kw) -> None:
    task = asyncio.create_task(bf.run())
    bf.request_all("start")
    try:
        await drive(clock, bf.initial_done.is_set, **kw)
        assert not task.done(), "the backfill task ended"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_an_unexpected_error_is_counted_and_retried_never_fatal(table):
    clock = ManualClock(start=T0 + 30)
    server = Binance(clock, script=[ZeroDivisionError("a bug"), KeyError("another")])
    bf, _http, stats = make(table, clock, server)
    await run_until_filled(bf, clock)
    assert stats.rest_errors == 2 and bf.windows.count(R) == WINDOW_CAPACITY
    assert len(server.sent_at) == 3


@pytest.mark.parametrize("header", ["\u00b2", "\u0663", "1" * 5000, "-5", ""])
async def test_an_odd_weight_header_is_ignored(table, header):
    clock = ManualClock(start=T0 + 30)
    server = Binance(clock)
    server.weight_header = header          # "²" passes str.isdigit(), int() refuses it
    bf, _http, stats = make(table, clock, server)
    assert await bf.fill_row(R) == WINDOW_CAPACITY
    await run_until_filled(bf, clock)
    assert stats.rest_errors == 0 and bf.rest.used_weight == 0


@pytest.mark.parametrize("retry_after, expect_s", [
    ("nan", 60.0), ("inf", 3 * 86400.0), ("1e300", 3 * 86400.0), ("-3", 0.0), ("x", 60.0)])
async def test_retry_after_is_capped_and_must_be_finite(table, retry_after, expect_s):
    clock = ManualClock(start=T0 + 30)
    server = Binance(clock, script=[Response(429, b"{}", {"Retry-After": retry_after})])
    bf, _http, stats = make(table, clock, server)
    with pytest.raises(RateLimited):
        await bf.fill_row(R)
    assert stats.rate_limited == 1
    assert bf.rest.resume_at - clock.now() == pytest.approx(expect_s, abs=0.01)


def served_closed(server: Binance, start_ms: int) -> dict[int, float]:
    """Open time -> volume of the candles the server itself calls closed right now."""
    body = klines_body("BTCUSDT", "1m", {"startTime": start_ms, "limit": 1000},
                       server.server_ms())
    return {k[0]: float(k[5]) for k in orjson.loads(body) if k[6] < server.server_ms()}


@pytest.mark.parametrize("skew_s, has_time", [(30, True), (1.5, False), (1.5, True)])
async def test_a_local_clock_ahead_of_binance_never_stores_a_forming_candle(
        table, skew_s, has_time):
    # Our clock is skew_s ahead of the exchange's; at T0 + 1 we think the T0-60 candle has
    # closed, but for Binance it is still forming (and "volume 3.0" says so).
    clock = ManualClock(start=T0 + 1)
    server = Binance(clock, skew_ms=int(skew_s * 1000), has_time=has_time)
    bf, _http, _stats = make(table, clock, server)
    await run_until_filled(bf, clock, step=0.01, limit=100)
    row = table.read(R)
    c = row["candles"][:int(row["count"])]
    truth = served_closed(server, int(c["open_time"][0]))
    assert int(c["open_time"][-1]) in truth, "a candle Binance has not closed is in the window"
    assert all(float(v) == truth[int(t)] for t, v in zip(c["open_time"], c["volume"],
                                                         strict=True))
    if has_time:
        assert bf.rest.offset_ms == pytest.approx(-skew_s * 1000, abs=100)


async def test_the_audit_uses_binance_time_too(table):
    clock = ManualClock(start=T0 + 1)
    server = Binance(clock, skew_ms=30_000)          # Binance's clock is 30 s behind ours
    bf, _http, _stats = make(table, clock, server)
    await run_until_filled(bf, clock, step=0.01, limit=100)
    assert bf.windows.last_open_time(R) == (T0 - 120) * 1000
    clock.advance(20)       # for our clock the T0-60 candle closed 21 s ago, not for Binance
    assert bf.audit() == []
    clock.advance(20)       # Binance closed it 11 s ago: past grace and margin
    assert bf.audit() == [R]


async def test_a_hole_the_exchange_repairs_later_is_filled_back(table):
    clock = ManualClock(start=T0 + 30)
    server = Binance(clock)
    bf, _http, stats = make(table, clock, server)
    await bf.fill_row(R)
    clock.advance(20 * 60)                                # candles 0..19 after T0 close
    server.missing = {(T0 + 60 * k) * 1000 for k in range(3, 8)}    # an exchange outage
    await bf.fill_row(R)
    w = bf.windows
    assert w.count(R) == 12 and w.first_open_time(R) == (T0 + 8 * 60) * 1000  # after it
    assert bf.audit() == []                  # no history request before history_retry_s
    clock.advance(600)
    assert bf.audit() == [R]
    await bf.fill_row(R)                     # still a hole at Binance: nothing joins up
    assert w.count(R) == 22 and w.first_open_time(R) == (T0 + 8 * 60) * 1000
    server.missing = set()                   # Binance repaired its history
    clock.advance(600)
    before = stats.backfilled
    await bf.fill_row(R)
    row = table.read(R)
    c = row["candles"][:int(row["count"])]
    assert len(c) == WINDOW_CAPACITY and check_candles(c, IV) is None
    truth = served_closed(server, int(c["open_time"][0]))
    assert [float(truth[int(t)]) for t in c["open_time"]] == list(c["volume"])
    assert stats.backfilled - before == 10 + (WINDOW_CAPACITY - 32)    # forward + history
    assert bf.audit() == []
