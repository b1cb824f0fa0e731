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

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Book:
    bid: float
    ask: float
    bid_size: float
    ask_size: float


@dataclass(frozen=True)
class SlotView:
    """One market slot at one tick: the market, its books and the asset's closed candles."""

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


@dataclass(frozen=True)
class Decision:
    outcome: str                  # "Up" or "Down"
    max_price: float              # never pay more than this per share
    reason: str = ""


class StrategyLike(Protocol):
    def evaluate(self, view: SlotView) -> Decision | None: ...
    def get_state(self) -> dict: ...
    def set_state(self, state: dict) -> None: ...
