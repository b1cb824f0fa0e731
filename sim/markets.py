"""The recurring crypto up/down markets: which exist, their ids, and their lifecycle.

A market for window [start, end) of slot (asset, 5m|15m):
- exists from ``start - window`` (one window ahead, like production) until RETENTION_S after
  its end; before that, and after, it is unknown (404);
- its CLOB book opens CLOB_READY_S after creation (production lists a market on Gamma a moment
  before the CLOB can take orders for it);
- accepts orders until ``end``; then the exchange cancels its resting orders;
- resolves ``resolve_lag_s`` after ``end`` on the Chainlink reference series (sim/chainlink.py),
  as production does: Up iff the reference at ``end`` is >= the reference at ``start`` (the
  "price to beat"; ties go Up). The Binance candles of the window can say otherwise near the
  threshold, and the settlement follows the reference. The exchange then pays 1 per winning
  share and 0 per losing one.

Ids are deterministic from seed and slug: token ids are 256-bit decimals, the condition id is
"0x" + 64 hex, and the Gamma id is a number unique per (slot, start).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from core.markets import SLOTS, Slot, parse_slug
from sim.assets import BY_ASSET
from sim.context import SimContext
from sim.prices import fmt_ticks

log = logging.getLogger("sim.markets")

RETENTION_S = 24 * 3600
CLOB_READY_S = 10.0
ET = ZoneInfo("America/New_York")
_SLOT_BY_KEY = {(s.asset, s.window_s): s for s in SLOTS}


def iso(ts: float) -> str:
    """Unix seconds -> ``2026-11-24T23:10:00Z`` (Gamma's date format)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _digest(*parts: object) -> bytes:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()


def _question(name: str, start: int, end: int) -> str:
    a, b = datetime.fromtimestamp(start, ET), datetime.fromtimestamp(end, ET)

    def hm(d: datetime) -> str:
        return f"{d.hour % 12 or 12}:{d.minute:02d}{'AM' if d.hour < 12 else 'PM'}"

    return f"{name} Up or Down - {a.strftime('%B')} {a.day}, {hm(a)}-{hm(b)} ET"


@dataclass
class Market:
    slot: Slot
    start: int
    seed: int
    slug: str = ""
    id: str = ""
    condition_id: str = ""
    question_id: str = ""
    up_token: str = ""
    down_token: str = ""
    question: str = ""
    trading_closed: bool = False
    outcome: str | None = None           # "Up" / "Down" once resolved
    open_price: str | None = None        # the reference (Chainlink) at start and at end
    close_price: str | None = None
    resolved_at: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.slot
        self.slug = s.slug(self.start)
        self.id = str((self.start // 300) * 16 + s.index)
        self.condition_id = "0x" + _digest("condition", self.seed, self.slug).hex()
        self.question_id = "0x" + _digest("question", self.seed, self.slug).hex()
        self.up_token = str(int.from_bytes(_digest("token", self.seed, self.slug, "Up")))
        self.down_token = str(int.from_bytes(_digest("token", self.seed, self.slug, "Down")))
        self.question = _question(BY_ASSET[s.asset].name, self.start, self.end)

    @property
    def asset(self) -> str:
        return self.slot.asset

    @property
    def end(self) -> int:
        return self.start + self.slot.window_s

    @property
    def created(self) -> int:
        return self.start - self.slot.window_s

    def tokens(self) -> tuple[str, str]:
        return self.up_token, self.down_token

    def outcome_of(self, token: str) -> str:
        return "Up" if token == self.up_token else "Down"

    def other(self, token: str) -> str:
        return self.down_token if token == self.up_token else self.up_token

    def accepting_orders(self, now: float) -> bool:
        return self.created + CLOB_READY_S <= now < self.end and not self.trading_closed

    def book_exists(self, now: float) -> bool:
        return now >= self.created + CLOB_READY_S and self.outcome is None


class MarketRegistry:
    """Every market the sim knows, created lazily and driven by :meth:`run`."""

    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self.by_slug: dict[str, Market] = {}
        self.by_token: dict[str, Market] = {}
        self.by_condition: dict[str, Market] = {}
        self._open: set[str] = set()          # slugs not yet resolved

    # -- lookup ------------------------------------------------------------------------------

    def get(self, slug: str, now: float | None = None) -> Market | None:
        """The market with this slug if it exists at ``now`` (default: sim now), else None."""
        now = self.ctx.clock.now() if now is None else now
        parsed = parse_slug(slug)
        if parsed is None:
            return None
        asset, window_s, start = parsed
        slot = _SLOT_BY_KEY.get((asset, window_s))
        if slot is None or not self._exists(slot, start, now):
            return None
        return self._materialize(slot, start, now)

    def token(self, token_id: str) -> Market | None:
        return self.by_token.get(token_id)

    def condition(self, condition_id: str) -> Market | None:
        return self.by_condition.get(condition_id)

    def _exists(self, slot: Slot, start: int, now: float) -> bool:
        earliest = self.ctx.prices.earliest_ms // 1000
        return (start - slot.window_s <= now and start + slot.window_s + RETENTION_S > now
                and start >= earliest and slot.label not in self.ctx.faults.unlisted)

    def _materialize(self, slot: Slot, start: int, now: float) -> Market:
        slug = slot.slug(start)
        m = self.by_slug.get(slug)
        if m is None:
            m = Market(slot, start, self.ctx.config.seed)
            self.by_slug[slug] = m
            self.by_token[m.up_token] = m
            self.by_token[m.down_token] = m
            self.by_condition[m.condition_id] = m
            self._open.add(slug)
            self._advance(m, now)
        return m

    def listed(self, now: float | None = None) -> list[Market]:
        """Markets a Gamma listing can show: the current and next window of every slot, plus
        every market seen so far that is still retained."""
        now = self.ctx.clock.now() if now is None else now
        self.ensure_current(now)
        return sorted((m for m in self.by_slug.values() if self._exists(m.slot, m.start, now)),
                      key=lambda m: (m.start, m.slot.index))

    def ensure_current(self, now: float) -> None:
        for slot in SLOTS:
            cur = slot.window_start(now)
            self._materialize(slot, cur, now)
            self._materialize(slot, cur + slot.window_s, now)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Create, close, resolve and forget markets as sim time passes."""
        clock = self.ctx.clock
        period = max(clock.to_wall_seconds(1.0), 0.05)
        while True:
            try:
                self.tick(clock.now())
            except Exception:                  # keep the markets moving whatever happens
                log.exception("market tick failed")
            self.ctx.save_ledger()             # closes cancel orders, resolutions settle
            await asyncio.sleep(period)

    def tick(self, now: float) -> None:
        self.ensure_current(now)
        for slug in list(self._open):
            self._advance(self.by_slug[slug], now)
        for m in list(self.by_slug.values()):
            if m.end + RETENTION_S <= now:
                self._forget(m)

    def _advance(self, m: Market, now: float) -> None:
        ex = self.ctx.exchange
        if not m.trading_closed and now >= m.end:
            m.trading_closed = True
            if ex is not None:
                ex.on_market_closed(m)
        if m.outcome is None and now >= m.end + self.ctx.config.resolve_lag_s:
            o, c = self._reference(m)
            m.open_price, m.close_price = self._fmt(m, o), self._fmt(m, c)
            m.outcome = "Up" if c >= o else "Down"
            m.resolved_at = now
            self._open.discard(m.slug)
            if ex is not None:
                ex.on_market_resolved(m)

    def _forget(self, m: Market) -> None:
        self.by_slug.pop(m.slug, None)
        self.by_token.pop(m.up_token, None)
        self.by_token.pop(m.down_token, None)
        self.by_condition.pop(m.condition_id, None)
        self._open.discard(m.slug)
        if self.ctx.exchange is not None:
            self.ctx.exchange.on_market_forgotten(m)

    def _reference(self, m: Market) -> tuple[float, float]:
        cl = self.ctx.chainlink
        assert cl is not None, "the sim's Chainlink model is built before the markets run"
        return cl.window_open_close(m.asset, m.start, m.end)

    def _fmt(self, m: Market, value: float) -> str:
        cl = self.ctx.chainlink
        dec = cl.by_asset[m.asset].decimals if cl is not None else 8
        return f"{value:.{dec}f}"

    def resolution_info(self, slug: str) -> dict | None:
        """The market's settlement: ``open``/``close`` are the reference (Chainlink) at start
        and end (``open`` known once the window starts, ``close`` once it ended), ``source``
        says so; ``binance_open``/``binance_close`` are the window's Binance 1m candles (open
        of the first, close of the last), and ``binance_outcome`` what they would say."""
        m = self.get(slug)
        if m is None:
            return None
        path = self.ctx.prices.by_asset[m.asset]
        now = self.ctx.clock.now()
        info = {"slug": m.slug, "start": m.start, "end": m.end, "resolved": m.outcome is not None,
                "outcome": m.outcome, "open": m.open_price, "close": m.close_price,
                "resolved_at": m.resolved_at, "up_token": m.up_token,
                "down_token": m.down_token, "condition_id": m.condition_id,
                "source": "chainlink"}
        cl = self.ctx.chainlink
        if m.outcome is None and now >= m.start and cl is not None:
            info["open"] = self._fmt(m, cl.by_asset[m.asset].value_at(m.start))
        if m.outcome is None and now >= m.end and cl is not None:
            info["close"] = self._fmt(m, cl.by_asset[m.asset].value_at(m.end))
        dec = path.params.tick_decimals
        if now >= m.start:
            info["binance_open"] = fmt_ticks(path.window_open_close(m.start, m.start + 60)[0],
                                             dec)
        if now >= m.end:
            o, c = path.window_open_close(m.start, m.end)
            info["binance_close"] = fmt_ticks(c, dec)
            info["binance_outcome"] = "Up" if c >= o else "Down"
        return info
