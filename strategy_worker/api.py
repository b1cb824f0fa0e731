"""What a strategy file sees and returns. This is the whole contract for strategy authors.

A strategy file (see strategies/momentum.py) defines:

- ``SCHEMA_VERSION: int``: the version of the state it snapshots.
- ``class Strategy`` with ``__init__(self, params: dict)``, ``evaluate(self, view: SlotView)
  -> Decision | None``, ``get_state(self) -> dict`` and ``set_state(self, state: dict)``.
- optionally ``migrate(old_version: int, state: dict) -> dict`` (Erlang's code_change): called
  when the snapshot was written by a different SCHEMA_VERSION. Raising rejects the deploy.

Strategies get copies, never live shared memory: a bug in a strategy cannot corrupt the
windows or the slot table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Book:
    bid: float
    ask: float
    bid_size: float
    ask_size: float


NAN = math.nan


@dataclass(frozen=True)
class SlotView:
    """One market slot at one tick: the market, its books and the asset's closed candles.

    The market resolves on the *reference* (Chainlink's stream, via Polymarket's RTDS), not
    on Binance: Up iff the reference at ``end_ts`` >= ``price_to_beat`` (the reference at
    ``window_start``). ``reference_price`` is its newest observation at this tick. Ages are
    clock seconds from the observation to the tick's time; NaN means not known (no price to
    beat for this window: don't trade it). Binance candles stay the fast signal.
    The fields after ``candles`` have defaults, so code written before them still works.
    """

    tick: int
    now: float                    # clock seconds (simulated in sim mode)
    slot: int
    label: str                    # "btc-5m"
    asset: str
    window_s: int
    window_start: int
    end_ts: int
    slug: str
    accepting: bool
    up: Book
    down: Book
    candles: dict[str, np.ndarray]   # interval -> KLINE_DT array of closed candles, oldest first
    reference_price: float = NAN  # newest reference (Chainlink) observation
    reference_age_s: float = NAN  # its age at this tick
    reference_stale: bool = True  # older than the staleness limit (the position worker refuses)
    price_to_beat: float = NAN    # the reference at window_start (what the market compares)
    price_to_beat_age_s: float = NAN
    tick_size: float = 0.01       # the market's own price tick
    min_size: float = 5.0         # the market's minimum order size, shares

    @property
    def seconds_left(self) -> float:
        return self.end_ts - self.now

    @property
    def window_open_price(self) -> float | None:
        """Open of the 1m candle that starts the window, if it has closed already."""
        c = self.candles.get("1m")
        if c is None or not len(c):
            return None
        hit = c[c["open_time"] == self.window_start * 1000]
        return float(hit["open"][0]) if len(hit) else None


    @property
    def move_from_price_to_beat(self) -> float | None:
        """(reference - price to beat) / price to beat: > 0 means Up is winning now; None
        when either is not known or the reference is stale."""
        ref, ptb = self.reference_price, self.price_to_beat
        if self.reference_stale or not (math.isfinite(ref) and math.isfinite(ptb)) or ptb <= 0:
            return None
        return (ref - ptb) / ptb


@dataclass(frozen=True)
class Decision:
    outcome: str                  # "Up" or "Down"
    max_price: float              # never pay more than this per share
    reason: str = ""

    def problem(self) -> str:
        """Why this decision cannot become an intent ("" when it can). The worker checks
        it per slot, so one malformed decision costs its own slot, not the tick's batch."""
        if self.outcome not in ("Up", "Down"):
            return f"outcome {self.outcome!r} is not 'Up' or 'Down'"
        if isinstance(self.max_price, bool) or not isinstance(self.max_price, int | float) \
                or not (0.0 < self.max_price <= 1.0):
            return f"max_price {self.max_price!r} is not a number in (0, 1]"
        if not isinstance(self.reason, str):
            return f"reason {self.reason!r} is not a string"
        return ""


class StrategyLike(Protocol):
    def evaluate(self, view: SlotView) -> Decision | None: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...
