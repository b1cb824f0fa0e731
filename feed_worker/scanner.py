"""The market scanner: every 5 s (clock), the 16 slots' current market and its book.

Per tick, for each slot (asset x 5m/15m):
- the current window starts at ``floor(now / window_s) * window_s``; its market is looked up
  on Gamma by slug (``/markets/slug/{slug}``); ``outcomes[i]`` is paired with
  ``clobTokenIds[i]`` (both JSON-encoded strings; Up is not assumed to come first);
- the next window's market is looked up too, and its absence is reported (``next_status``
  NOT_LISTED), never an error;
- the CLOB book of both tokens is read (``POST /books`` for all tokens at once when the server
  has it, else ``GET /book`` per token); bids ascend and asks descend, so the best level of
  each side is its LAST entry (the scanner takes the max bid / min ask, which is the same
  thing, and stays right if the order ever flips).
Then every row is written, and the tick is published: a ``TICK_DT`` record into the ticks
ring (strategies ``await reader.wait()`` on it), which carries a copy of the rows written for
this tick (a strategy evaluates tick t on tick t's markets, never on rows of a scan in
progress), and the control block's tick counter. The
scanner tick is the strategy tick, and it continues across feed restarts.

Market metadata (tokens, end, condition) never changes for a slug, so it is cached; the
mutable part (acceptingOrders) is re-read at most every ``gamma_refresh_s`` (clock) and
``gamma_refresh_wall_s`` (real). A slug not listed yet is re-asked every tick for the current
window, and at the refresh pace for the next one. One failing slot never stops the others:
its row says ERROR and keeps the last good data of its window; one malformed book (a "nan"
or "inf" price, say) spoils its own token only.

A 429 from Gamma or the CLOB closes that host for ``Retry-After`` real seconds (5 s when
absent or not a number, capped at 10 minutes): no request goes to it meanwhile, and the
slots depending on it keep their last good data (status ERROR, or OK for a known market's
metadata) until it opens again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np
import orjson

from core.clock import ClockLike, sleep_unless
from core.errors import InputError, RetryableError
from core.gamma import parse_market
from core.markets import Slot
from core.proc import truncate
from feed_worker.config import FeedConfig
from feed_worker.http import Response, Transport, retry_after_s
from feed_worker.reference import ReferencePublisher
from feed_worker.stats import FeedStats
from state.control import ControlBlock
from state.layout import MARKET_DT, TICK_DT, RefStatus, SeriesStatus, SlotStatus
from state.ring import RingWriter
from state.table import TableWriter

log = logging.getLogger(__name__)
NAN = math.nan


@dataclass
class MarketInfo:
    slug: str
    condition_id: str
    up_token: str
    down_token: str
    end_ts: int
    accepting: bool
    closed: bool
    tick_size: float = math.nan      # the market's own tick (Gamma orderPriceMinTickSize)
    min_size: float = math.nan       # its minimum order size, shares (Gamma orderMinSize)
    fetched_clock: float = 0.0
    fetched_mono_ns: int = 0


@dataclass(frozen=True)
class Quote:
    bid: float
    bid_size: float
    ask: float
    ask_size: float



def parse_gamma_market(body: bytes, slug: str, default_end: int) -> MarketInfo:
    """One Gamma market body -> MarketInfo (core.gamma parses). Raises InputError."""
    m = parse_market(body, slug)
    up, down = m.up_down_tokens()
    return MarketInfo(slug=m.slug, condition_id=m.condition_id, up_token=up, down_token=down,
                      end_ts=m.end_ts if m.end_ts is not None else default_end,
                      accepting=m.accepting, closed=m.closed,
                      tick_size=m.tick_size or math.nan, min_size=m.min_size or math.nan)


def _best(levels: object, pick: Callable[..., float]) -> tuple[float, float]:
    """(price, size) of the best level. The CLOB sorts bids ascending and asks descending
    (best LAST), but some of its own docs show the opposite order; taking the max bid and
    the min ask is right either way and costs nothing on books this small."""
    if not isinstance(levels, list):
        raise ValueError("book side is not a list")
    if not levels:
        return NAN, 0.0
    parsed = [(float(lv["price"]), float(lv["size"])) for lv in levels]
    for p, sz in parsed:
        # "nan"/"inf" parse as floats; a price is in [0, 1] and a size finite, or the book
        # is garbage (a NaN would also make "the level at the best price" impossible to find)
        if not (0.0 <= p <= 1.0 and math.isfinite(sz) and sz >= 0.0):
            raise ValueError(f"bad level price={p!r} size={sz!r}")
    price = pick(p for p, _ in parsed)
    return price, next(sz for p, sz in reversed(parsed) if p == price)


def parse_book(book: object) -> Quote:
    try:
        if not isinstance(book, dict):
            raise ValueError("book is not an object")
        bid, bsz = _best(book.get("bids", []), max)
        ask, asz = _best(book.get("asks", []), min)
        return Quote(bid, bsz, ask, asz)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"bad book: {type(e).__name__}: {e}") from None


def _quote_or_no_book(q: Quote) -> Quote | SlotStatus:
    """A book with no level on either side is no book to trade against."""
    return SlotStatus.NO_BOOK if math.isnan(q.bid) and math.isnan(q.ask) else q


class Scanner:
    def __init__(self, transport: Transport, gamma_url: str, clob_url: str,
                 markets: TableWriter, ticks: RingWriter, control: ControlBlock | None,
                 clock: ClockLike, stats: FeedStats, cfg: FeedConfig,
                 *, first_tick: int = 0, reference: ReferencePublisher | None = None) -> None:
        self.http = transport
        self.reference = reference
        self.gamma = gamma_url.rstrip("/")
        self.clob = clob_url.rstrip("/")
        self.markets = markets
        self.ticks = ticks
        self.control = control
        self.clock = clock
        self.stats = stats
        self.cfg = cfg
        self.slots = cfg.slots
        self.tick = first_tick
        self._sem = asyncio.Semaphore(cfg.scan_concurrency)
        self._cache: dict[str, MarketInfo] = {}
        self._unlisted: dict[str, tuple[float, int]] = {}   # slug -> (clock, mono) last 404
        self._books_post: bool | None = None     # does the CLOB have POST /books?
        self._errors_logged = 0
        self._hold_until: dict[str, int] = {}    # "gamma"/"clob" -> monotonic ns (429)
        self._tick_rows: dict[int, np.void] = {}  # this scan's rows, copied into its tick

    # -- rate limits --------------------------------------------------------------------------

    def held(self, host: str) -> bool:
        """True while ``host`` asked us (429) to send nothing."""
        return self.clock.monotonic_ns() < self._hold_until.get(host, 0)

    def _note_429(self, host: str, resp: Response) -> bool:
        """On a 429, close ``host`` for its Retry-After (real seconds). True if it was one."""
        if resp.status != 429:
            return False
        ra = resp.header("Retry-After")
        wait = retry_after_s(resp, self.cfg.scan_default_retry_after_wall_s,
                             self.cfg.scan_max_retry_after_wall_s)
        until = self.clock.monotonic_ns() + int(wait * 1e9)
        self._hold_until[host] = max(self._hold_until.get(host, 0), until)
        self.stats.rate_limited += 1
        log.warning("scanner: %s answered 429 (Retry-After %s): no requests to it for %.1f s",
                    host, ra, wait)
        return True

    # -- Gamma --------------------------------------------------------------------------------

    def _fresh(self, fetched_clock: float, fetched_mono: int) -> bool:
        age_clock = self.clock.now() - fetched_clock
        age_wall = (self.clock.monotonic_ns() - fetched_mono) / 1e9
        return age_clock < self.cfg.gamma_refresh_s or age_wall < self.cfg.gamma_refresh_wall_s

    async def market(self, slug: str, default_end: int, *, urgent: bool
                     ) -> tuple[SlotStatus, MarketInfo | None]:
        """The market for ``slug``: (OK, info), (NOT_LISTED, None) or (ERROR, None)."""
        cached = self._cache.get(slug)
        if cached is not None and self._fresh(cached.fetched_clock, cached.fetched_mono_ns):
            return SlotStatus.OK, cached
        miss = self._unlisted.get(slug)
        if cached is None and miss is not None and not urgent and self._fresh(*miss):
            return SlotStatus.NOT_LISTED, None
        try:
            async with self._sem:
                if self.held("gamma"):     # checked once a request slot is ours
                    return ((SlotStatus.OK, cached) if cached is not None
                            else (SlotStatus.ERROR, None))
                resp = await self.http.get(f"{self.gamma}/markets/slug/{quote(slug)}")
        except RetryableError as e:
            return self._error(f"gamma {slug}: {e}", cached)
        if self._note_429("gamma", resp):
            return self._error(f"gamma {slug}: HTTP 429", cached)
        if resp.status == 404:
            self._unlisted[slug] = (self.clock.now(), self.clock.monotonic_ns())
            return SlotStatus.NOT_LISTED, None
        if resp.status != 200:
            return self._error(f"gamma {slug}: HTTP {resp.status} {truncate(resp.body, 120)}",
                               cached)
        try:
            info = parse_gamma_market(resp.body, slug, default_end)
        except InputError as e:
            self.stats.parse_errors += 1
            return self._error(f"{e}: {truncate(resp.body)}", cached)
        info.fetched_clock, info.fetched_mono_ns = self.clock.now(), self.clock.monotonic_ns()
        self._cache[slug] = info
        self._unlisted.pop(slug, None)
        return SlotStatus.OK, info

    def _error(self, msg: str, cached: MarketInfo | None) -> tuple[SlotStatus, MarketInfo | None]:
        """Count and log a failed request. A market already known keeps its (immutable)
        tokens and end: only the ``acceptingOrders`` refresh failed, so the slot stays OK."""
        self.stats.scan_errors += 1
        self._errors_logged += 1
        if self._errors_logged <= 20 or self._errors_logged % 100 == 0:
            log.warning("scanner: %s", msg)
        return (SlotStatus.OK if cached is not None else SlotStatus.ERROR), cached

    # -- CLOB ---------------------------------------------------------------------------------

    async def books(self, tokens: list[str]) -> dict[str, Quote | SlotStatus]:
        """Best quotes per token, or NO_BOOK / ERROR for tokens without one.

        One ``POST /books`` for every token when the CLOB has it. The CLOB refuses the whole
        batch when one token has no book yet (a fresh market), so on a 4xx the tokens are
        read one by one for this tick; if they all had books after all, the server simply
        lacks ``POST /books`` and it is not tried again.
        """
        if not tokens:
            return {}
        if self.held("clob"):
            return dict.fromkeys(tokens, SlotStatus.ERROR)
        if self._books_post is not False:
            try:
                got = await self._books_batch(tokens)
            except RetryableError as e:
                self._error(f"POST /books: {e}", None)
                return dict.fromkeys(tokens, SlotStatus.ERROR)
            if got is not None:
                self._books_post = True
                return got
        results = await asyncio.gather(*(self._book_one(t) for t in tokens))
        out = dict(zip(tokens, results, strict=True))
        if self._books_post is None and all(isinstance(q, Quote) for q in results):
            self._books_post = False
            log.info("scanner: the CLOB has no POST /books; reading books one by one")
        return out

    async def _books_batch(self, tokens: list[str]) -> dict[str, Quote | SlotStatus] | None:
        """The batch answer, or None when the batch was refused (4xx): ask one by one."""
        resp = await self.http.post(f"{self.clob}/books", [{"token_id": t} for t in tokens])
        self._note_429("clob", resp)
        if 400 <= resp.status < 500 and resp.status != 429:
            return None
        if resp.status != 200:
            self._error(f"POST /books: HTTP {resp.status} {truncate(resp.body, 120)}", None)
            return dict.fromkeys(tokens, SlotStatus.ERROR)
        out: dict[str, Quote | SlotStatus] = dict.fromkeys(tokens, SlotStatus.NO_BOOK)
        try:
            body = orjson.loads(resp.body)
            if not isinstance(body, list):
                raise InputError("POST /books did not answer a list")
        except (orjson.JSONDecodeError, InputError) as e:
            self.stats.parse_errors += 1
            self._error(f"bad /books body ({e}): {truncate(resp.body)}", None)
            return dict.fromkeys(tokens, SlotStatus.ERROR)
        for b in body:                   # one bad book spoils its own token only
            if isinstance(b, dict) and str(b.get("asset_id")) in out:
                t = str(b["asset_id"])
                try:
                    out[t] = _quote_or_no_book(parse_book(b))
                except InputError as e:
                    self.stats.parse_errors += 1
                    self._error(f"bad book {t[:12]} ({e}): {truncate(orjson.dumps(b))}", None)
                    out[t] = SlotStatus.ERROR
        return out

    async def _book_one(self, token: str) -> Quote | SlotStatus:
        if self.held("clob"):
            return SlotStatus.ERROR
        try:
            async with self._sem:
                if self.held("clob"):          # a sibling request got a 429 meanwhile
                    return SlotStatus.ERROR
                resp = await self.http.get(f"{self.clob}/book", {"token_id": token})
        except RetryableError as e:
            self._error(f"book {token[:12]}: {e}", None)
            return SlotStatus.ERROR
        self._note_429("clob", resp)
        if resp.status == 404:
            return SlotStatus.NO_BOOK
        if resp.status != 200:
            self._error(f"book {token[:12]}: HTTP {resp.status}", None)
            return SlotStatus.ERROR
        try:
            return _quote_or_no_book(parse_book(orjson.loads(resp.body)))
        except (orjson.JSONDecodeError, InputError) as e:
            self.stats.parse_errors += 1
            self._error(f"bad book body ({e}): {truncate(resp.body)}", None)
            return SlotStatus.ERROR

    # -- one tick -----------------------------------------------------------------------------

    async def scan_once(self) -> int:
        """Refresh every slot, write the rows, publish the tick. Returns slots OK."""
        now = self.clock.now()
        tick_ms = int(now * 1000)
        cur = [s.window_start(now) for s in self.slots]
        found = await asyncio.gather(*(
            self.market(s.slug(w), w + s.window_s, urgent=True)
            for s, w in zip(self.slots, cur, strict=True)))
        nxt = await asyncio.gather(*(
            self.market(s.slug(w + s.window_s), w + 2 * s.window_s, urgent=False)
            for s, w in zip(self.slots, cur, strict=True)))
        self._prune({s.slug(w + k * s.window_s) for s, w in zip(self.slots, cur, strict=True)
                     for k in (-1, 0, 1)})
        tokens = [t for st, info in found if st is SlotStatus.OK and info is not None
                  for t in (info.up_token, info.down_token)]
        quotes = await self.books(tokens)
        self.tick += 1
        mono = self.clock.monotonic_ns()
        ok = 0
        self._tick_rows = {}
        for slot, w, (st, info), (nst, _) in zip(self.slots, cur, found, nxt, strict=True):
            status = self._write_slot(slot, w, st, info, nst, quotes, mono)
            ok += status is SlotStatus.OK
        self._publish_tick(tick_ms, ok)
        self.stats.scans += 1
        self.stats.slots_ok = ok
        return ok

    def _prune(self, keep: set[str]) -> None:
        for d in (self._cache, self._unlisted):
            for slug in [k for k in d if k not in keep]:
                del d[slug]

    def _write_slot(self, slot: Slot, w: int, st: SlotStatus, info: MarketInfo | None,
                    next_st: SlotStatus, quotes: dict[str, Quote | SlotStatus], mono: int
                    ) -> SlotStatus:
        prev = self.markets.read(slot.index)
        row = np.zeros((), dtype=MARKET_DT)
        same_window = int(prev["window_start"]) == w and int(prev["window_s"]) == slot.window_s
        if st is SlotStatus.ERROR and same_window:
            row = prev.copy()              # keep the last good data of this window
        row["slot"] = slot.index
        row["window_s"] = slot.window_s
        row["window_start"] = w
        row["end_ts"] = w + slot.window_s
        row["slug"] = slot.slug(w).encode()
        if not (st is SlotStatus.ERROR and same_window):
            for k in ("up_bid", "up_ask", "down_bid", "down_ask"):
                row[k] = NAN
        if info is not None and info.slug == slot.slug(w):
            row["condition_id"] = info.condition_id.encode()[:80]
            row["up_token"] = info.up_token.encode()[:80]
            row["down_token"] = info.down_token.encode()[:80]
            row["end_ts"] = info.end_ts
            row["accepting"] = int(info.accepting and not info.closed)
            row["tick_size"], row["min_size"] = info.tick_size, info.min_size
        if st is SlotStatus.OK and info is not None:
            up = quotes.get(info.up_token, SlotStatus.ERROR)
            down = quotes.get(info.down_token, SlotStatus.ERROR)
            for side, q in (("up", up), ("down", down)):
                if isinstance(q, Quote):
                    row[f"{side}_bid"], row[f"{side}_bid_size"] = q.bid, q.bid_size
                    row[f"{side}_ask"], row[f"{side}_ask_size"] = q.ask, q.ask_size
                elif same_window and q is SlotStatus.ERROR:
                    for k in ("bid", "ask", "bid_size", "ask_size"):
                        row[f"{side}_{k}"] = prev[f"{side}_{k}"]
            if SlotStatus.ERROR in (up, down):
                st = SlotStatus.ERROR
            elif SlotStatus.NO_BOOK in (up, down):
                st = SlotStatus.NO_BOOK
        row["status"] = int(st)
        row["next_status"] = int(next_st)
        row["series"] = int(_series_status(st, next_st, SeriesStatus(int(prev["series"]))))
        self._write_reference(row, slot, w)
        row["tick"] = self.tick
        row["updated_ns"] = mono
        self.markets.write(slot.index, row)
        self._tick_rows[slot.index] = row
        return st

    def _write_reference(self, row: np.ndarray, slot: Slot, w: int) -> None:
        """The reference the market resolves on: its newest value and freshness, and the
        window's price to beat, as the RTDS publisher knows them now."""
        ref = self.reference
        if ref is None:
            row["ref_price"], row["price_to_beat"] = NAN, NAN
            row["ref_status"] = int(RefStatus.NONE)
            return
        value, obs_ms, status = ref.newest(slot.chainlink, self.clock.now_ms())
        row["ref_price"], row["ref_ms"], row["ref_status"] = value, obs_ms, int(status)
        row["price_to_beat"], row["ptb_ms"] = ref.price_to_beat(slot, w)

    def _publish_tick(self, tick_ms: int, ok: int) -> None:
        mono = self.clock.monotonic_ns()
        rec = np.zeros((), dtype=TICK_DT)
        rec["tick"], rec["tick_time_ms"], rec["mono_ns"], rec["slots_ok"] = (
            self.tick, tick_ms, mono, ok)
        for i, row in self._tick_rows.items():
            rec["markets"][i] = row
        self.ticks.publish(rec)
        if self.control is not None:
            self.control.publish_tick(self.tick, tick_ms, mono)
        self.stats.tick = self.tick

    # -- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Scan on the clock's 5-second grid until ``stop`` is set."""
        interval = self.cfg.scan_interval_s
        while not stop.is_set():
            t0 = self.clock.monotonic_ns()
            try:
                await self.scan_once()
            except Exception:            # a scanner bug must not take the candles down
                self.stats.scan_errors += 1
                log.exception("scanner: tick %d failed", self.tick + 1)
            now = self.clock.now()
            wait = (math.floor(now / interval) + 1) * interval - now
            spent_wall = (self.clock.monotonic_ns() - t0) / 1e9
            floor = max(0.0, self.cfg.scan_min_wall_s - spent_wall) * self.clock.speed
            await sleep_unless(self.clock, max(wait, floor), stop)


def _series_status(st: SlotStatus, next_st: SlotStatus, prev: SeriesStatus) -> SeriesStatus:
    """The series check rides on every scan (no extra request): Gamma is asked for the
    current and the next window's market of every slot each tick, and production lists a
    market a window ahead, so a series with neither is not listed. An error keeps what was
    known."""
    listed = (SlotStatus.OK, SlotStatus.NO_BOOK)
    if st in listed or next_st in listed:
        return SeriesStatus.LISTED
    if st is SlotStatus.NOT_LISTED and next_st is SlotStatus.NOT_LISTED:
        return SeriesStatus.NOT_LISTED
    return prev
