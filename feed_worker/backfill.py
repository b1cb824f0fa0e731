"""REST backfill: the windows have no holes, whatever the stream missed.

``BinanceRest`` is a polite /api/v3/klines client:
- one gate for every request: after a 429 or 418 nothing is sent until ``Retry-After``
  has passed (default 60 s when the header is missing or not a number, capped at 3 days,
  the longest ban Binance documents), and when ``X-MBX-USED-WEIGHT-1M`` reaches 80 % of the
  6000/min budget, new requests wait for the next minute; a weight header that is not plain
  ASCII digits is ignored;
- ``Retry-After`` is in real seconds (HTTP's meaning, and the sim's); the weight minute is
  a minute of the run's clock (the sim accelerates its rate-limit window with its time);
- "closed" is decided on Binance's clock, not ours: ``GET /api/v3/time`` gives the server's
  offset (the lowest-RTT of a few samples, re-read every 10 clock minutes), and a candle
  counts as closed only if it ended ``closed_margin_s`` (2 s) before
  ``min(our clock, our estimate of Binance's)``. A local clock running ahead of Binance's
  would otherwise present a still-forming candle as closed; one running behind only costs
  a little latency, so the estimate is never used to move the cut-off later;
- a malformed body is dropped, counted and logged (truncated), never a crash.

``Backfiller`` decides what to fetch. A row is (re)filled when:
- the feed starts (every row), and the stream (re)connects (every row): whatever closed
  while we were not listening is fetched, up to the last candle closed by the clock;
- the stream delivers a closed candle that does not follow the window (a gap);
- the periodic audit finds a row lagging the clock by more than a grace period (a closed
  frame that was lost or malformed, with no later closed frame yet to reveal the gap).
An empty row, or one too far behind to bridge, gets the newest ``capacity`` candles.
A row holding fewer than ``capacity`` candles (it restarted after a hole in the exchange's
data, which Binance usually repairs later) asks for the older history every
``history_retry_s`` and prepends what now joins up with it.
Rows are filled by a few workers; a row is never filled twice at once, and no error, even
an unexpected one, ends a worker: it is logged, counted (``rest_errors``) and retried with
backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

import numpy as np
import orjson

from core.clock import ClockLike
from core.errors import InputError, RetryableError
from core.markets import CANDLE_SYMBOLS, KLINE_INTERVALS
from core.proc import truncate
from feed_worker.config import FeedConfig
from feed_worker.http import Response, Transport, retry_after_s
from feed_worker.klines import parse_rest_klines
from feed_worker.stats import FeedStats
from feed_worker.windows import N_INTERVALS, RollingWindows, row_label

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
MAX_PASSES = 3              # requests per fill_row call
MAX_CLOCK_OFFSET_MS = 3600_000      # a larger "offset" is a broken answer, not a clock


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
        self.time_url = base_url.rstrip("/") + "/api/v3/time"
        self.resume_at = 0.0       # clock seconds: no request before this
        self.used_weight = 0
        self.offset_ms = 0         # Binance's clock minus ours (estimate), clock ms
        self.synced = False

    async def _gate(self) -> None:
        while (wait := self.resume_at - self.clock.now()) > 0:
            await self.clock.sleep(wait)

    def _note(self, resp: Response) -> None:
        used = resp.header("X-MBX-USED-WEIGHT-1M")
        # isdigit() alone accepts "²" (int() refuses it) and "٣" (int() reads 3)
        if used is not None and used.isascii() and used.isdigit() and len(used) <= 12:
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
            retry_after = retry_after_s(resp, self.cfg.default_retry_after_s,
                                        self.cfg.max_retry_after_s)
            self.resume_at = max(self.resume_at,
                                 self.clock.now() + retry_after * self.clock.speed)
            self.stats.rate_limited += 1
            log.warning("backfill: HTTP %d, Retry-After %s: no REST requests for %.1f s",
                        resp.status, ra, retry_after)
            raise RateLimited(f"HTTP {resp.status}", retry_after=retry_after)

    def closed_before_ms(self) -> int:
        """Clock time (ms): a candle that ended before it has surely closed on Binance."""
        now = self.clock.now_ms()
        return now + min(0, self.offset_ms) - int(self.cfg.closed_margin_s * 1000)

    async def sync_time(self) -> bool:
        """Estimate Binance's clock offset from ``GET /api/v3/time`` (lowest-RTT sample).
        Returns False, keeping the previous estimate, when the server does not answer."""
        best: tuple[float, int] | None = None
        for _ in range(max(1, self.cfg.time_sync_samples)):
            await self._gate()
            t0, m0 = self.clock.now_ms(), self.clock.monotonic_ns()
            try:
                resp = await self.transport.get(self.time_url)
            except RetryableError as e:
                log.warning("backfill: server time: %s", e)
                break
            rtt_ms = (self.clock.monotonic_ns() - m0) / 1e6 * self.clock.speed
            try:
                self._note(resp)
            except RateLimited:
                break
            if resp.status != 200:
                log.warning("backfill: server time: HTTP %d %s", resp.status,
                            truncate(resp.body, 120))
                break
            try:
                st = orjson.loads(resp.body)["serverTime"]
                if isinstance(st, bool) or not isinstance(st, int):
                    raise TypeError(f"serverTime {st!r} is not an integer")
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                self.stats.parse_errors += 1
                log.warning("backfill: server time: bad body (%s): %s", e, truncate(resp.body))
                break
            offset = st - (t0 + rtt_ms / 2)
            if best is None or rtt_ms < best[0]:
                best = (rtt_ms, round(offset))
        if best is None:
            return False
        if abs(best[1]) > MAX_CLOCK_OFFSET_MS:
            log.error("backfill: Binance's clock is %+.1f s from ours; ignoring it (is the "
                      "local clock set?)", best[1] / 1000)
            return False
        if not self.synced or abs(best[1] - self.offset_ms) > 500:
            log.info("backfill: Binance's clock is %+.3f s from ours (RTT %.0f ms)",
                     best[1] / 1000, best[0])
        self.offset_ms, self.synced = best[1], True
        return True

    async def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int,
                     limit: int) -> np.ndarray:
        """Closed candles of [start_ms, end_ms] (open times), oldest first, at most limit."""
        await self._gate()
        sent_ms = self.closed_before_ms()
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
        self._history_at: dict[int, tuple[float, int]] = {}   # row -> (clock, mono) last ask
        self.initial_done = asyncio.Event()

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

    # -- what is missing --------------------------------------------------------------------

    def latest_closed(self, r: int, cutoff_ms: int) -> int:
        """Open time of the newest candle of row ``r`` that ended before ``cutoff_ms``
        (``BinanceRest.closed_before_ms()``: Binance's time, less a safety margin)."""
        iv = self.windows.interval_ms[r]
        return cutoff_ms // iv * iv - iv

    def behind(self, r: int, cutoff_ms: int) -> bool:
        """The row misses candles it should have by now, beyond the stream's grace."""
        if self.windows.has_gap(r):
            return True
        grace_ms = int(1000 * max(self.cfg.audit_grace_s,
                                  self.cfg.audit_grace_wall_s * self.clock.speed))
        return self.windows.last_open_time(r) < self.latest_closed(r, cutoff_ms - grace_ms)

    def _history_due(self, r: int) -> bool:
        """A short row may ask for older history now (not more often than configured)."""
        n = self.windows.count(r)
        if n == 0 or n >= self.windows.capacity:
            return False
        last = self._history_at.get(r)
        if last is None:
            return True
        clock_s = self.clock.now() - last[0]
        wall_s = (self.clock.monotonic_ns() - last[1]) / 1e9
        return clock_s >= self.cfg.history_retry_s and wall_s >= self.cfg.history_retry_wall_s

    def audit(self) -> list[int]:
        cutoff = self.rest.closed_before_ms()
        late = [r for r in self.rows if self.behind(r, cutoff) or self._history_due(r)]
        for r in late:
            self.request(r, "audit")
        return late

    # -- filling ----------------------------------------------------------------------------

    async def fill_row(self, r: int) -> int:
        """Fetch and merge what row ``r`` misses; returns the candles written from REST."""
        sid, iid = divmod(r, N_INTERVALS)
        symbol, interval = CANDLE_SYMBOLS[sid], KLINE_INTERVALS[iid]
        iv = self.windows.interval_ms[r]
        cap = self.windows.capacity
        total = 0
        # A few passes at most: when the rate-limit gate holds each request for a minute, a
        # 1m row would otherwise chase its newest candle forever and starve the other rows.
        # What is left is found by the audit, and the row queues up behind the others.
        for _ in range(MAX_PASSES):
            latest = self.latest_closed(r, self.rest.closed_before_ms())
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
            if res.hole:
                # the exchange had no data right after our last candle: ask again for the
                # older part later, when Binance has (usually) repaired it
                self._history_at[r] = (self.clock.now(), self.clock.monotonic_ns())
            if len(candles) == 0 or res.backfilled == 0:
                break                      # nothing more to get now; the audit retries later
        if self._history_due(r):
            total += await self.fill_history(r)
        return total

    async def fill_history(self, r: int) -> int:
        """Prepend the older candles a short row lacks, as far as they join up with it."""
        sid, iid = divmod(r, N_INTERVALS)
        iv = self.windows.interval_ms[r]
        n = self.windows.count(r)
        want = self.windows.capacity - n
        first = self.windows.first_open_time(r)
        self._history_at[r] = (self.clock.now(), self.clock.monotonic_ns())
        candles = await self.rest.klines(CANDLE_SYMBOLS[sid], KLINE_INTERVALS[iid],
                                         first - want * iv, first - 1, want)
        got = self.windows.prepend(r, candles)
        self.stats.backfilled += got
        if got:
            log.info("backfill: %s: +%d older candles (now %d)", row_label(r), got,
                     self.windows.count(r))
        return got

    async def _worker(self) -> None:
        while True:
            r = await self._queue.get()
            self._queued.discard(r)
            self._busy.add(r)
            retry_in = None
            try:
                got = await self.fill_row(r)
                self._failures.pop(r, None)
                if got:
                    log.debug("backfill: %s +%d candles", row_label(r), got)
            except RateLimited:
                retry_in = 0.0                 # the gate holds every request back already
            except (RetryableError, InputError) as e:
                retry_in = self._retry_delay(r)
                log.warning("backfill: %s failed (%s); retry in %.2f s", row_label(r), e,
                            retry_in)
            except Exception:
                # Anything else (a bug, an answer we did not foresee) must not end the
                # worker, or the feed would exit: count it and retry like a network error.
                self.stats.rest_errors += 1
                retry_in = self._retry_delay(r)
                log.exception("backfill: %s failed unexpectedly; retry in %.2f s",
                              row_label(r), retry_in)
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

    def _retry_delay(self, r: int) -> float:
        """Jittered exponential backoff per row, 0.25 s .. 10 s of wall time."""
        k = self._failures[r] = self._failures.get(r, 0) + 1
        return min(10.0, 0.25 * 2 ** min(k, 6)) * random.uniform(0.5, 1.0)

    def _check_initial(self) -> None:
        if not self.initial_done.is_set() and all(
                self.windows.count(r) > 0 and not self.windows.has_gap(r) for r in self.rows):
            self.initial_done.set()
            log.info("backfill: every window is filled")

    async def _auditor(self) -> None:
        while True:
            await sleep_wall(self.clock, self.cfg.audit_wall_s)
            try:
                self.audit()
                self._check_initial()
            except Exception:           # a bug here must not end the backfill
                log.exception("backfill: audit failed")

    async def _sync_time_forever(self) -> None:
        every = max(self.cfg.time_sync_s, self.cfg.time_sync_wall_s * self.clock.speed)
        while True:
            await self.clock.sleep(every)
            try:
                await self.rest.sync_time()
            except Exception:
                log.exception("backfill: server time sync failed")

    async def run(self) -> None:
        """Learn Binance's clock, then fill rows as they are requested, until cancelled."""
        try:
            if not await self.rest.sync_time():
                log.warning("backfill: no server time; deciding 'closed' on our clock less "
                            "%.1f s", self.cfg.closed_margin_s)
        except Exception:
            log.exception("backfill: server time sync failed")
        tasks = [asyncio.create_task(self._worker(), name=f"backfill-{i}")
                 for i in range(self.cfg.backfill_concurrency)]
        tasks.append(asyncio.create_task(self._auditor(), name="backfill-audit"))
        tasks.append(asyncio.create_task(self._sync_time_forever(), name="backfill-time"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
