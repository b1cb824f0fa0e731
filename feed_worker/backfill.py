"""REST backfill: the windows have no holes, whatever the stream missed.

``BinanceRest`` is a polite /api/v3/klines client:
- one gate for every request: after a 429 or 418 nothing is sent until ``Retry-After``
  has passed (default 60 s when the header is missing), and when ``X-MBX-USED-WEIGHT-1M``
  reaches 80 % of the 6000/min budget, new requests wait for the next minute;
- ``Retry-After`` is in real seconds (HTTP's meaning, and the sim's); the weight minute is
  a minute of the run's clock (the sim accelerates its rate-limit window with its time);
- a malformed body is dropped, counted and logged (truncated), never a crash.

``Backfiller`` decides what to fetch. A row is (re)filled when:
- the feed starts (every row), and the stream (re)connects (every row): whatever closed
  while we were not listening is fetched, up to the last candle closed by the clock;
- the stream delivers a closed candle that does not follow the window (a gap);
- the periodic audit finds a row lagging the clock by more than a grace period (a closed
  frame that was lost or malformed, with no later closed frame yet to reveal the gap).
An empty row, or one too far behind to bridge, gets the newest ``capacity`` candles.
Rows are filled by a few workers; a row is never filled twice at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

import numpy as np

from core.clock import ClockLike
from core.errors import InputError, RetryableError
from core.markets import KLINE_INTERVALS, SYMBOLS
from core.proc import truncate
from feed_worker.config import FeedConfig
from feed_worker.http import Response, Transport
from feed_worker.klines import parse_rest_klines
from feed_worker.stats import FeedStats
from feed_worker.windows import N_INTERVALS, RollingWindows, row_label

log = logging.getLogger(__name__)

MAX_LIMIT = 1000


class RateLimited(RetryableError):
    """429 (over the weight budget) or 418 (banned for ignoring 429s)."""


async def sleep_wall(clock: ClockLike, wall_s: float) -> None:
    """Sleep ``wall_s`` real seconds through the injected clock (tests drive it)."""
    await clock.sleep(wall_s * clock.speed)


class BinanceRest:
    def __init__(self, transport: Transport, base_url: str, clock: ClockLike, stats: FeedStats,
                 cfg: FeedConfig) -> None:
        self.transport = transport
        self.url = base_url.rstrip("/") + "/api/v3/klines"
        self.clock = clock
        self.stats = stats
        self.cfg = cfg
        self.resume_at = 0.0       # clock seconds: no request before this
        self.used_weight = 0

    async def _gate(self) -> None:
        while (wait := self.resume_at - self.clock.now()) > 0:
            await self.clock.sleep(wait)

    def _note(self, resp: Response) -> None:
        used = resp.header("X-MBX-USED-WEIGHT-1M")
        if used is not None and used.isdigit():
            self.used_weight = int(used)
            if self.used_weight >= self.cfg.weight_soft_fraction * self.cfg.weight_limit_1m:
                now = self.clock.now()
                nxt = (int(now) // 60 + 1) * 60
                if nxt > self.resume_at:
                    log.warning("backfill: used weight %d/%d; pausing until the next minute",
                                self.used_weight, self.cfg.weight_limit_1m)
                    self.resume_at = nxt
        if resp.status in (429, 418):
            ra = resp.header("Retry-After")
            try:
                retry_after = float(ra) if ra is not None else self.cfg.default_retry_after_s
            except ValueError:
                retry_after = self.cfg.default_retry_after_s
            retry_after = max(0.0, retry_after)
            self.resume_at = max(self.resume_at,
                                 self.clock.now() + retry_after * self.clock.speed)
            self.stats.rate_limited += 1
            log.warning("backfill: HTTP %d, Retry-After %s: no REST requests for %.1f s",
                        resp.status, ra, retry_after)
            raise RateLimited(f"HTTP {resp.status}", retry_after=retry_after)

    async def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int,
                     limit: int) -> np.ndarray:
        """Closed candles of [start_ms, end_ms] (open times), oldest first, at most limit."""
        await self._gate()
        sent_ms = self.clock.now_ms()
        params = {"symbol": symbol, "interval": interval, "startTime": start_ms,
                  "endTime": end_ms, "limit": min(limit, MAX_LIMIT)}
        try:
            resp = await self.transport.get(self.url, params)
        except RetryableError:
            self.stats.rest_errors += 1
            raise
        self._note(resp)
        if resp.status >= 500:
            self.stats.rest_errors += 1
            raise RetryableError(f"klines {symbol} {interval}: HTTP {resp.status}")
        if resp.status != 200:
            self.stats.rest_errors += 1
            log.warning("backfill: klines %s %s: HTTP %d %s", symbol, interval, resp.status,
                        truncate(resp.body))
            raise InputError(f"klines {symbol} {interval}: HTTP {resp.status}")
        try:
            return parse_rest_klines(resp.body, symbol, interval, sent_ms, sent_ms)
        except InputError as e:
            self.stats.parse_errors += 1
            log.warning("backfill: dropped klines body (%s): %s", e, truncate(resp.body))
            raise


class Backfiller:
    """Keeps the configured rows filled up to the last candle the clock says has closed."""

    def __init__(self, rest: BinanceRest, windows: RollingWindows, clock: ClockLike,
                 stats: FeedStats, cfg: FeedConfig, rows: Iterable[int]) -> None:
        self.rest = rest
        self.windows = windows
        self.clock = clock
        self.stats = stats
        self.cfg = cfg
        self.rows = sorted(rows)
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._queued: set[int] = set()
        self._busy: set[int] = set()
        self._again: set[int] = set()
        self._failures: dict[int, int] = {}
        self.initial_done = asyncio.Event()
        self.fills = 0

    # -- requests ---------------------------------------------------------------------------

    def request(self, r: int, why: str = "") -> None:
        """Ask for row ``r`` to be brought up to date (cheap; duplicates collapse)."""
        if r in self._busy:
            self._again.add(r)
        elif r not in self._queued:
            self._queued.add(r)
            self._queue.put_nowait(r)
            if why:
                log.debug("backfill: %s queued (%s)", row_label(r), why)

    def request_all(self, why: str) -> None:
        log.info("backfill: all %d rows requested (%s)", len(self.rows), why)
        for r in self.rows:
            self.request(r)

    def idle(self) -> bool:
        return not self._queued and not self._busy and not self._again

    # -- what is missing --------------------------------------------------------------------

    def latest_closed(self, r: int, now_ms: int) -> int:
        """Open time of the newest candle of row ``r`` that has closed at ``now_ms``."""
        iv = self.windows.interval_ms[r]
        return now_ms // iv * iv - iv

    def behind(self, r: int, now_ms: int) -> bool:
        """The row misses candles it should have by now, beyond the stream's grace."""
        if self.windows.has_gap(r):
            return True
        grace_ms = int(1000 * max(self.cfg.audit_grace_s,
                                  self.cfg.audit_grace_wall_s * self.clock.speed))
        return self.windows.last_open_time(r) < self.latest_closed(r, now_ms - grace_ms)

    def audit(self) -> list[int]:
        now_ms = self.clock.now_ms()
        late = [r for r in self.rows if self.behind(r, now_ms)]
        for r in late:
            self.request(r, "audit")
        return late

    # -- filling ----------------------------------------------------------------------------

    async def fill_row(self, r: int) -> int:
        """Fetch and merge what row ``r`` misses; returns the candles written from REST."""
        sid, iid = divmod(r, N_INTERVALS)
        symbol, interval = SYMBOLS[sid], KLINE_INTERVALS[iid]
        iv = self.windows.interval_ms[r]
        cap = self.windows.capacity
        total = 0
        while True:
            latest = self.latest_closed(r, self.clock.now_ms())
            n, last = self.windows.count(r), self.windows.last_open_time(r)
            if n and last >= latest:
                break
            replace = n == 0 or (latest - last) // iv >= cap
            start = latest - (cap - 1) * iv if replace else last + iv
            want = (latest - start) // iv + 1
            candles = await self.rest.klines(symbol, interval, start, latest + iv - 1, want)
            res = self.windows.merge(r, candles, replace=replace)
            self.stats.backfilled += res.backfilled
            if not replace and n:
                self.stats.gaps_filled += res.backfilled
            total += res.backfilled
            if len(candles) == 0 or res.backfilled == 0:
                break                      # nothing more to get now; the audit retries later
        return total

    async def _worker(self) -> None:
        while True:
            r = await self._queue.get()
            self._queued.discard(r)
            self._busy.add(r)
            retry_in = None
            try:
                got = await self.fill_row(r)
                self.fills += 1
                self._failures.pop(r, None)
                if got:
                    log.debug("backfill: %s +%d candles", row_label(r), got)
            except RateLimited:
                retry_in = 0.0                 # the gate holds every request back already
            except (RetryableError, InputError) as e:
                k = self._failures[r] = self._failures.get(r, 0) + 1
                retry_in = min(10.0, 0.25 * 2 ** min(k, 6)) * random.uniform(0.5, 1.0)
                log.warning("backfill: %s failed (%s); retry in %.2f s", row_label(r), e,
                            retry_in)
            finally:
                self._busy.discard(r)
            if retry_in is not None:
                if retry_in:
                    await sleep_wall(self.clock, retry_in)
                self.request(r)
            elif r in self._again:
                self._again.discard(r)
                self.request(r)
            self._check_initial()

    def _check_initial(self) -> None:
        if not self.initial_done.is_set() and all(
                self.windows.count(r) > 0 and not self.windows.has_gap(r) for r in self.rows):
            self.initial_done.set()
            log.info("backfill: every window is filled")

    async def _auditor(self) -> None:
        while True:
            await sleep_wall(self.clock, self.cfg.audit_wall_s)
            self.audit()
            self._check_initial()

    async def run(self) -> None:
        """Fill rows as they are requested, until cancelled."""
        tasks = [asyncio.create_task(self._worker(), name=f"backfill-{i}")
                 for i in range(self.cfg.backfill_concurrency)]
        tasks.append(asyncio.create_task(self._auditor(), name="backfill-audit"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
