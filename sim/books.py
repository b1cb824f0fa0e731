"""Synthetic order books for the Up and Down tokens, priced from the fair probability.

Fair P(Up) at time t for window [start, end): with S the (Binance) price now, O the window's
price to beat (the Chainlink reference at its start, which the market resolves on) and sigma
the asset's per-second volatility, ``P = Phi(ln(S/O) / (sigma * sqrt(end - t)))`` (a
driftless walk; before the window starts it is 0.5; at the end it is the settlement). The
quoted mid is P plus noise (sd 0.004, redrawn every NOISE_EPOCH_S sim seconds), and the book
around it is:
- best bid = floor(mid - 0.5 tick), best ask = ceil(mid + 0.5 tick): a spread of 1-2 ticks;
- LEVELS price levels per side, one tick apart, sizes 20-400 shares growing with depth (sizes
  are redrawn every 30 sim s).
So a taker pays half the spread plus the 0.07*p*(1-p) fee over fair value, and a strategy that
only knows what the book knows cannot win on average.

Prices are integer cents (tick 0.01). The Down book is the mirror of the Up book (a Down bid
at q is an Up ask at 1-q), as on Polymarket, so both are views of one set of levels, keyed by
the Up price.
"""

from __future__ import annotations

import math
import random

from sim.chainlink import ChainlinkModel
from sim.markets import Market
from sim.prices import PriceModel

LEVELS = 10
NOISE_SD = 0.004
NOISE_EPOCH_S = 5
SIZE_EPOCH_S = 30


def norm_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def fair_up(prices: PriceModel, chainlink: ChainlinkModel, m: Market, now: float) -> float:
    """Fair probability that the window closes Up: the crowd watches the spot price and
    compares it with the price to beat (the reference the market resolves on)."""
    if now < m.start:
        return 0.5
    path = prices.by_asset[m.asset]
    series = chainlink.by_asset[m.asset]
    o = series.value_at(m.start)
    tau = m.end - now
    if tau <= 0:
        return 1.0 if series.value_at(m.end) >= o else 0.0
    c = path.price_at(min(int(now), m.end - 1))
    x = math.log(c / o) / (path.params.sigma_s * math.sqrt(tau))
    return norm_cdf(x)


def up_levels(m: Market, fair: float, now: float, seed: int
              ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(bids, asks) of the Up token as (cents, size), best first."""
    sec = int(now)
    rnd = random.Random(hash((seed, int(m.id), sec // NOISE_EPOCH_S)))
    mid = min(max(fair + rnd.gauss(0.0, NOISE_SD), 0.005), 0.995)
    best_bid = min(max(math.floor(mid * 100 - 0.5), 1), 98)
    best_ask = max(min(math.ceil(mid * 100 + 0.5), 99), best_bid + 1)
    epoch = sec // SIZE_EPOCH_S

    def size(cents: int, depth: int) -> float:
        r = random.Random(hash((seed, int(m.id), cents, epoch)))
        return round((20 + 380 * r.random()) * (1 + 0.5 * depth), 2)

    bids = [(c, size(c, i)) for i, c in enumerate(range(best_bid, max(best_bid - LEVELS, 0), -1))]
    asks = [(c, size(c, i)) for i, c in enumerate(range(best_ask, min(best_ask + LEVELS, 100)))]
    return bids, asks
