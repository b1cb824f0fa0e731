"""The simulated Chainlink reference series: what Polymarket's up/down markets resolve on.

Production's markets resolve on Chainlink's data stream for the asset, relayed by RTDS
(``crypto_prices_chainlink``), about one observation a second. That series follows the spot
markets, but it is not Binance's last trade: it is an aggregate of many venues, observed a
little later. So the sim's series, per asset, at every whole sim second ``t``:

    value(t) = binance_price(t - lag) * (1 + deviation(t)),   rounded to ``decimals``

- ``lag`` is 1 or 2 s, fixed per asset by the seed (the oracle trails the fastest venue);
- ``deviation`` is a few basis points (sd DEVIATION_BPS), piecewise linear between knots
  KNOT_S apart, each knot drawn from ``default_rng([seed, asset index, KNOT_TAG, knot])``: a
  slow wander, not a per-second noise, and the same for every process with the same seed;
- the observation time (RTDS ``payload.timestamp``) is ``t`` in sim ms.

So near a window's threshold the Binance candles and the reference can disagree on Up/Down,
as they do on production, and the sim settles on the reference (sim/markets.py).
"""

from __future__ import annotations

import numpy as np

from sim.prices import AssetPath, PriceModel

DEVIATION_BPS = 3.0
KNOT_S = 30
LAG_TAG = 0xC4A1
KNOT_TAG = 0xC4A2
KNOT_CACHE = 4096


class ChainlinkSeries:
    """One asset's reference series, derived from its (Binance) price path."""

    def __init__(self, path: AssetPath, seed: int) -> None:
        self.path = path
        self.seed = seed
        self.asset = path.params.asset
        self.symbol = f"{self.asset}/usd"          # RTDS's symbol for the Chainlink feed
        rng = np.random.default_rng([seed, path.index, LAG_TAG])
        self.lag_s = int(rng.integers(1, 3))        # 1 or 2 s
        # Two more decimals than the venue's tick: the oracle's median is finer than a tick.
        self.decimals = path.params.tick_decimals + 2
        self._knots: dict[int, float] = {}

    def _knot(self, k: int) -> float:
        v = self._knots.get(k)
        if v is None:
            rng = np.random.default_rng([self.seed, self.path.index, KNOT_TAG, k])
            v = float(rng.normal(0.0, DEVIATION_BPS * 1e-4))
            if len(self._knots) >= KNOT_CACHE:      # bounded: old knots are rarely asked again
                self._knots.clear()
            self._knots[k] = v
        return v

    def deviation(self, second: int) -> float:
        """Relative deviation from the lagged Binance price at ``second`` (a few bps)."""
        k, r = divmod(int(second), KNOT_S)
        a, b = self._knot(k), self._knot(k + 1)
        return a + (b - a) * r / KNOT_S

    def value_at(self, second: int) -> float:
        """The observation at sim second ``second`` (its payload timestamp is second * 1000)."""
        second = int(second)
        base = self.path.price_at(second - self.lag_s)
        return round(base * (1.0 + self.deviation(second)), self.decimals)


class ChainlinkModel:
    """Every asset's reference series, keyed by asset slug and by RTDS symbol."""

    def __init__(self, prices: PriceModel) -> None:
        self.by_asset: dict[str, ChainlinkSeries] = {
            a: ChainlinkSeries(p, prices.seed) for a, p in prices.by_asset.items()}
        self.by_symbol: dict[str, ChainlinkSeries] = {
            s.symbol: s for s in self.by_asset.values()}

    def window_open_close(self, asset: str, start: int, end: int) -> tuple[float, float]:
        """The reference at the window's start (the "price to beat") and at its end; the
        market resolves Up iff close >= open."""
        s = self.by_asset[asset]
        return s.value_at(start), s.value_at(end)
