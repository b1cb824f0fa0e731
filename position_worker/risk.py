"""Risk checks, run on every accepted-so-far intent before any order exists.

Each check is a pure function of the intent, the slot's scanned market, the open book and
the configuration, so every limit can be tested without an exchange.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.reference import REF_STALE_S, stale_limit_s
from position_worker.intents import Intent
from position_worker.markets import MarketQuote
from position_worker.reasons import RejectReason


@dataclass(frozen=True)
class RiskConfig:
    stake: float = 5.0                # the fixed stake, $
    max_open: int = 16                # positions pending or open at once
    max_exposure: float = 80.0        # $ in pending + open positions, including this one
    daily_loss_limit: float = 50.0    # stop when today's PnL (see Book.pnl_today) <= -limit
    min_order_size: float = 5.0       # shares (Polymarket's minimum)
    max_book_age_s: float = 20.0      # market-clock seconds since the scanner wrote the row
    min_book_age_wall_s: float = 1.0  # ... but never less than this in wall seconds (jitter)
    stake_tolerance: float = 0.01
    # the reference (Chainlink) a market resolves on: older than this (clock s, floored at
    # 1 wall s: core.reference) and the slot is degraded, not traded
    max_reference_age_s: float = REF_STALE_S


@dataclass(frozen=True)
class Book:
    """What is at risk now: positions whose exposure is pending or open."""

    open_count: int
    exposure: float
    # realised PnL of windows that closed today (UTC, market clock), minus cost + fees of
    # every filled position whose window is over but which is not settled yet (worst case)
    pnl_today: float


@dataclass(frozen=True)
class Verdict:
    reason: RejectReason | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.reason is None


OK = Verdict(None)


def max_book_age_wall_s(cfg: RiskConfig, speed: float) -> float:
    """The book-age limit in wall seconds: ``max_book_age_s`` is market-clock time (prices
    move with the market clock: at sim speed 60, 20 wall s are 20 market minutes), floored
    at ``min_book_age_wall_s`` so scheduling jitter alone never makes a book stale."""
    return max(cfg.max_book_age_s / max(speed, 1e-9), cfg.min_book_age_wall_s)


def reference_problem(q: MarketQuote, cfg: RiskConfig, now_s: float, speed: float) -> str:
    """Why the slot's reference cannot be trusted now ("" when it can): no observation, one
    older than the limit, or no price to beat for this window. Judged on observation times
    (the stream's own clock ms), against the market clock."""
    if q.ref_ms <= 0 or not math.isfinite(q.ref_price):
        return "no reference price (Chainlink via RTDS) for this slot"
    age_s = now_s - q.ref_ms / 1000
    limit = stale_limit_s(speed, cfg.max_reference_age_s)
    if age_s > limit:
        return f"reference is {age_s:.1f} clock s old (limit {limit:.1f} s)"
    if not math.isfinite(q.price_to_beat):
        return f"no price to beat for the window {q.window_start}"
    return ""


def limit_price(max_price: float, tick: float) -> float:
    """The intent's max price on the market's tick grid, rounded DOWN (0 tick: unknown, as
    is). A BUY limit rounded to the nearest tick could pay more than the strategy allowed; the
    client library rounds to the nearest, so the engine hands it a price already on the grid."""
    if not (math.isfinite(tick) and tick > 0):     # not known: as is (NaN must not reach floor)
        return max_price
    return round(math.floor(max_price / tick + 1e-9) * tick, 10)


def check(it: Intent, q: MarketQuote | None, book: Book, cfg: RiskConfig, *, paused: bool,
          now_s: float, now_mono_ns: int, speed: float = 1.0) -> Verdict:
    """The first failed limit, in a fixed order (cheapest and most fundamental first)."""
    if paused:
        return Verdict(RejectReason.PAUSED, "pause/kill switch is set")
    if abs(it.stake - cfg.stake) > cfg.stake_tolerance:
        return Verdict(RejectReason.STAKE, f"stake {it.stake} != fixed stake {cfg.stake}")
    if book.pnl_today <= -cfg.daily_loss_limit:
        return Verdict(RejectReason.DAILY_LOSS,
                       f"today's PnL {book.pnl_today:.2f} (realised + unsettled worst case) "
                       f"<= -{cfg.daily_loss_limit}")
    if book.open_count >= cfg.max_open:
        return Verdict(RejectReason.MAX_OPEN, f"{book.open_count} open >= {cfg.max_open}")
    if book.exposure + cfg.stake > cfg.max_exposure + 1e-9:
        return Verdict(RejectReason.MAX_EXPOSURE,
                       f"exposure {book.exposure:.2f} + {cfg.stake} > {cfg.max_exposure}")
    if q is None or not q.ok:
        return Verdict(RejectReason.NOT_ACCEPTING,
                       "no scanned market" if q is None else f"slot status {q.status}")
    if q.window_start != it.window_start or q.slug != it.slug:
        return Verdict(RejectReason.MARKET_MISMATCH,
                       f"intent {it.slug}@{it.window_start} vs market {q.slug}@{q.window_start}")
    if not q.accepting:
        return Verdict(RejectReason.NOT_ACCEPTING, "market is not accepting orders")
    if now_s >= q.end_ts:
        return Verdict(RejectReason.NOT_ACCEPTING, f"window ended at {q.end_ts}")
    age_s = (now_mono_ns - q.updated_ns) / 1e9
    if q.updated_ns <= 0 or age_s > max_book_age_wall_s(cfg, speed):
        return Verdict(RejectReason.STALE_BOOK,
                       f"book is {age_s:.2f} wall s ({age_s * speed:.1f} market s) old")
    stale = reference_problem(q, cfg, now_s, speed)
    if stale:
        return Verdict(RejectReason.STALE_REFERENCE, stale)
    ask, _size = q.ask(it.outcome)
    if not (math.isfinite(ask) and 0.0 < ask < 1.0):
        return Verdict(RejectReason.NO_BOOK, f"no ask ({ask})")
    limit = limit_price(it.max_price, q.tick_size)
    if limit <= 0:
        return Verdict(RejectReason.BAD_INTENT,
                       f"max price {it.max_price} is below the market's tick {q.tick_size}")
    if ask > limit + 1e-9:
        return Verdict(RejectReason.PRICE_ABOVE_MAX, f"ask {ask} > max {it.max_price}"
                       + (f" (on the {q.tick_size} tick: {limit})" if limit != it.max_price
                          else ""))
    # The order may fill anywhere up to its limit, so the worst case buys the fewest shares.
    worst_shares = cfg.stake / limit
    min_size = q.min_size if q.min_size > 0 else cfg.min_order_size   # the market's own first
    if worst_shares < min_size:
        return Verdict(RejectReason.MIN_SIZE, f"{worst_shares:.2f} shares < minimum {min_size}")
    return OK
