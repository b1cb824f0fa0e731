"""The universe's market slots and their naming rules.

The assets come from the process's universe (core.universe: noblink.toml, resolved once per
process before this module is imported). Slot order is shared by every process: the assets
in universe order, each with its windows ascending (5m before 15m). With the default
universe (7 assets x 5m/15m) that is slot = asset_index * 2 + (0 for 5m, 1 for 15m).

Candle rows (the klines ring's ``symbol_id``, the windows table's rows) are one per asset:
``symbol_id`` is the asset index, named by ``CANDLE_SYMBOLS`` (the Binance symbol, or
``HYPE/USD`` for candles built from the reference). ``SYMBOLS`` lists only the Binance ones:
the feed subscribes to those.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.universe import AssetSpec, current

UNIVERSE = current()
ASSETS: tuple[AssetSpec, ...] = UNIVERSE.assets
ASSET_SLUGS: tuple[str, ...] = tuple(a.slug for a in ASSETS)
WINDOWS_S: tuple[int, ...] = (300, 900)           # the market windows that exist: 5m and 15m
KLINE_INTERVALS: tuple[str, ...] = ("1m", "5m", "15m")
INTERVAL_MS: dict[str, int] = {"1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000,
                               "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000}


@dataclass(frozen=True)
class Slot:
    index: int
    asset: str       # "btc"
    symbol: str      # candle symbol: "BTCUSDT" (Binance) or "HYPE/USD" (reference candles)
    window_s: int    # 300 or 900
    asset_index: int  # index into ASSETS (= the candle rows' symbol_id)
    chainlink: str   # RTDS's Chainlink symbol: the series this market resolves on

    @property
    def label(self) -> str:
        return f"{self.asset}-{self.window_s // 60}m"

    def window_start(self, now_s: float) -> int:
        return int(now_s) // self.window_s * self.window_s

    def slug(self, window_start: int) -> str:
        return market_slug(self.asset, self.window_s, window_start)


def market_slug(asset: str, window_s: int, window_start: int) -> str:
    """``btc-updown-15m-1777467600``: the recurring crypto up/down market slug."""
    return f"{asset}-updown-{window_s // 60}m-{window_start}"


def parse_slug(slug: str) -> tuple[str, int, int] | None:
    """Inverse of :func:`market_slug`; None when the slug is not an up/down slug."""
    parts = slug.split("-")
    if len(parts) != 4 or parts[1] != "updown" or not parts[2].endswith("m"):
        return None
    try:
        window_s = int(parts[2][:-1]) * 60
        start = int(parts[3])
    except ValueError:
        return None
    if window_s not in WINDOWS_S or start % window_s:
        return None
    return parts[0], window_s, start


def _slots() -> tuple[Slot, ...]:
    out: list[Slot] = []
    for i, a in enumerate(ASSETS):
        for w in a.windows:
            out.append(Slot(index=len(out), asset=a.slug, symbol=a.candle_symbol, window_s=w,
                            asset_index=i, chainlink=a.chainlink))
    return tuple(out)


SLOTS: tuple[Slot, ...] = _slots()
N_SLOTS = len(SLOTS)
# Candle row names, one per asset (symbol_id = asset index).
CANDLE_SYMBOLS: tuple[str, ...] = tuple(a.candle_symbol for a in ASSETS)
# The Binance spot symbols the feed subscribes to (assets with ``binance:`` candles).
SYMBOLS: tuple[str, ...] = tuple(a.binance_symbol for a in ASSETS if a.binance_symbol)
# Assets whose candles are built from the reference stream (symbol ids).
REFERENCE_CANDLE_IDS: tuple[int, ...] = tuple(i for i, a in enumerate(ASSETS)
                                              if a.binance_symbol is None)
# The reference (Chainlink on RTDS) symbols, one per asset, in asset order.
CHAINLINK_SYMBOLS: tuple[str, ...] = tuple(a.chainlink for a in ASSETS)
