"""The reference price (Chainlink, relayed by Polymarket's RTDS): the shared rules.

Every process that judges a reference price uses these numbers, so the feed (which marks a
slot's reference STALE), the strategy view (which shows its age) and the position worker
(which refuses to trade on a stale one) agree.

- RTDS sends about one observation a second per symbol. A reference older than
  ``REF_STALE_S`` clock seconds is stale. Under an accelerated sim a few clock seconds are a
  few wall milliseconds, well inside the scheduling noise of a busy 2-core machine, so the
  limit never drops below ``REF_STALE_FLOOR_WALL_S`` of wall time (the same floor the
  Binance stall detection uses).
- The price to beat of a window is the first observation at or after the window's start,
  by observation time (``payload.timestamp``), never by arrival time. It is taken only when
  the stream was followed across the start: an observation at most ``PTB_GAP_S`` before it,
  the first one at most ``PTB_GAP_S`` after it, and nothing lost in between (no malformed
  frame, no reconnect). Otherwise it is unknown (NaN) and the slot is not traded that window:
  a guessed threshold is worse than none.
"""

from __future__ import annotations

REF_STALE_S = 10.0
REF_STALE_FLOOR_WALL_S = 1.0
PTB_GAP_S = 2.0


def stale_limit_s(speed: float, limit_s: float = REF_STALE_S,
                  floor_wall_s: float = REF_STALE_FLOOR_WALL_S) -> float:
    """The staleness limit in clock seconds at this clock speed."""
    return max(limit_s, floor_wall_s * speed)


def chainlink_symbol(asset: str) -> str:
    """RTDS's symbol of an asset's Chainlink feed: ``btc`` -> ``btc/usd``."""
    return f"{asset.lower()}/usd"
