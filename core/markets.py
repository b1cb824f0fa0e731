"""The fixed universe: 8 assets x {5m, 15m} = 16 market slots, and their naming rules.

Slot order is fixed and shared by every process: slot = asset_index * 2 + (0 for 5m, 1 for 15m).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.reference import chainlink_symbol

# (asset slug used by Polymarket, Binance symbol)
ASSETS: tuple[tuple[str, str], ...] = (
    ("btc", "BTCUSDT"),
    ("eth", "ETHUSDT"),
    ("sol", "SOLUSDT"),
    ("xrp", "XRPUSDT"),
    ("doge", "DOGEUSDT"),
    ("bnb", "BNBUSDT"),
    ("ada", "ADAUSDT"),
    ("link", "LINKUSDT"),
)
WINDOWS_S: tuple[int, ...] = (300, 900)           # market windows: 5m and 15m
KLINE_INTERVALS: tuple[str, ...] = ("1m", "5m", "15m")
INTERVAL_MS: dict[str, int] = {"1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000,
                               "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000}
N_SLOTS = len(ASSETS) * len(WINDOWS_S)


@dataclass(frozen=True)
class Slot:
    index: int
    asset: str       # "btc"
    symbol: str      # "BTCUSDT"
    window_s: int    # 300 or 900

    @property
    def chainlink(self) -> str:
        """RTDS's Chainlink symbol of the asset: the series this market resolves on."""
        return chainlink_symbol(self.asset)

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


SLOTS: tuple[Slot, ...] = tuple(
    Slot(index=i * len(WINDOWS_S) + j, asset=a, symbol=s, window_s=w)
    for i, (a, s) in enumerate(ASSETS)
    for j, w in enumerate(WINDOWS_S)
)
SYMBOLS: tuple[str, ...] = tuple(s for _, s in ASSETS)
# The reference (Chainlink on RTDS) symbols, one per asset, in asset order.
CHAINLINK_SYMBOLS: tuple[str, ...] = tuple(chainlink_symbol(a) for a, _ in ASSETS)
