"""Per-asset parameters of the simulated market: price level, volatility, tick and volume.

The numbers are realistic orders of magnitude for the real Binance spot pairs (tick sizes and
lot steps as listed in Binance's exchangeInfo filters), not live values. Volatility is
annualised; the random walk converts it to a per-second figure.

The sim knows more assets than any one universe trades (a config may list fewer or more).
HYPE has no Binance spot market (a public check of ``/api/v3/exchangeInfo`` found none), so
the simulated Binance does not serve it (``binance=False``): its price path exists only as a
Chainlink reference series on RTDS. New assets go at the end, so that the seeded paths of
the others (drawn per asset index) never change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.universe import AssetSpec

SECONDS_PER_YEAR = 365 * 24 * 3600


@dataclass(frozen=True)
class AssetParams:
    asset: str            # "btc"  (Polymarket slug part)
    symbol: str           # "BTCUSDT"
    name: str             # "Bitcoin" (market questions)
    start_price: float    # centre of the seeded starting price
    annual_vol: float     # e.g. 0.5 = 50 % a year
    tick: float           # Binance PRICE_FILTER tickSize
    tick_decimals: int    # decimals of ``tick``
    lot_decimals: int     # decimals of the LOT_SIZE step, for volumes
    base_volume_s: float  # mean traded base quantity per second
    avg_trade: float      # mean base quantity per trade
    binance: bool = True  # served by the simulated Binance (False: RTDS reference only)

    @property
    def sigma_s(self) -> float:
        """Per-second standard deviation of the log price."""
        return self.annual_vol / math.sqrt(SECONDS_PER_YEAR)


_PARAMS: dict[str, tuple[str, float, float, float, int, int, float, float]] = {
    # asset: (name, price, vol, tick, tick_dec, lot_dec, volume/s, avg trade)
    "btc": ("Bitcoin", 97_000.0, 0.50, 0.01, 2, 5, 0.25, 0.004),
    "eth": ("Ethereum", 3_400.0, 0.65, 0.01, 2, 4, 4.0, 0.08),
    "sol": ("Solana", 190.0, 0.85, 0.01, 2, 3, 40.0, 1.5),
    "xrp": ("XRP", 2.2, 0.80, 0.0001, 4, 1, 9_000.0, 400.0),
    "doge": ("Dogecoin", 0.33, 0.95, 0.00001, 5, 0, 60_000.0, 3_000.0),
    "bnb": ("BNB", 680.0, 0.50, 0.01, 2, 3, 3.0, 0.4),
    "ada": ("Cardano", 0.95, 0.80, 0.0001, 4, 1, 12_000.0, 700.0),
    "link": ("Chainlink", 22.0, 0.85, 0.01, 2, 2, 300.0, 15.0),
    "hype": ("Hyperliquid", 38.0, 1.00, 0.001, 3, 2, 200.0, 10.0),
}
_NO_BINANCE = frozenset({"hype"})

ASSET_PARAMS: tuple[AssetParams, ...] = tuple(
    AssetParams(a, f"{a.upper()}USDT", *v, binance=a not in _NO_BINANCE)
    for a, v in _PARAMS.items()
)
# Symbols the simulated Binance serves (WS and REST); every asset has a path in PriceModel.
BY_SYMBOL: dict[str, AssetParams] = {p.symbol: p for p in ASSET_PARAMS if p.binance}
BY_ASSET: dict[str, AssetParams] = {p.asset: p for p in ASSET_PARAMS}


def check_universe(assets: tuple[AssetSpec, ...]) -> None:
    """Refuse a universe the sim cannot serve like production would, naming the asset: an
    asset it has no parameters for (add it at the end of ``_PARAMS``), or Binance candles
    for a pair the simulated Binance does not list (HYPE: use ``candles = "reference"``).
    A clear refusal beats generated parameters that no test has ever looked at."""
    for a in assets:
        p = BY_ASSET.get(a.slug)
        if p is None:
            raise ValueError(f"the sim does not simulate asset {a.slug!r} (it knows "
                             f"{', '.join(BY_ASSET)}; add it to sim/assets.py)")
        sym = a.binance_symbol
        if sym is not None and (not p.binance or sym != p.symbol):
            raise ValueError(f"the sim's Binance has no {sym} market for {a.slug!r} "
                             f"(use candles = \"reference\" or binance:{p.symbol})"
                             if p.binance else
                             f"the sim's Binance has no market for {a.slug!r}, like the "
                             f"real one (use candles = \"reference\")")
        if a.chainlink != f"{a.slug}/usd":
            raise ValueError(f"the sim's RTDS publishes {a.slug}/usd, not {a.chainlink!r}")
