"""The seeded price path of every asset, and the Binance candles cut from it.

Model (per asset, 1-second steps of the log price):
- Gaussian returns with a per-hour volatility regime (lognormal around the asset's vol);
- a trend: a drift redrawn every 15 minutes, small next to the noise (about a fifth of it over
  15 min), so momentum exists but is weak;
- jumps: Poisson, about one every two hours, ~20 seconds' worth of volatility each.
Prices are rounded to the asset's tick, and the rounded path is the only truth: candles,
window opens/closes and market resolutions are all read from it.

Memory: the path is generated an hour ("block") at a time, strictly in order, from an anchor
HISTORY_BLOCKS hours before the sim start (enough for 1000 closed 15m candles). The 1m candles
(60 rows of 10 numbers per asset per sim hour) are kept for the latest KEEP_MINUTE_BLOCKS
hours: the REST history window plus the markets' retention. Older ones are dropped a sim day at
a time, so memory stays flat however long the sim runs (at speed 60 a wall day is 60 sim days).
The per-second arrays are kept for the latest blocks only, to build forming candles. Block
``b`` is drawn from ``default_rng([seed, asset index, b - anchor])``, so a seed and a start
time fix every price.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.assets import ASSET_PARAMS, AssetParams

BLOCK_S = 3600
HISTORY_BLOCKS = 252          # 252 h > 1000 x 15 min = 250 h
TREND_SEGMENT_S = 900
JUMP_RATE_S = 1 / 7200
KEEP_SECOND_BLOCKS = 3
# 1m candles kept: the REST history window (HISTORY_BLOCKS) plus a market's retention after
# its end (sim.markets.RETENTION_S, 24 h) plus one block; dropped DROP_BLOCKS at a time.
KEEP_MINUTE_BLOCKS = HISTORY_BLOCKS + 25
DROP_BLOCKS = 24
TRADE_ID_BASE = 3_000_000_000


@dataclass(frozen=True)
class Kline:
    """One candle, prices in integer ticks (see :func:`fmt_ticks`)."""

    t: int        # open time, ms
    T: int        # close time, ms (t + interval - 1)
    o: int
    h: int
    low: int
    c: int
    v: float      # base volume
    q: float      # quote volume
    n: int        # number of trades
    V: float      # taker buy base volume
    Q: float      # taker buy quote volume
    f: int        # first trade id
    L: int        # last trade id
    closed: bool


def fmt_ticks(ticks: int, decimals: int) -> str:
    """Integer ticks -> Binance's 8-decimal price string, without float rounding."""
    scale = 10 ** decimals
    whole, frac = divmod(int(ticks), scale)
    return f"{whole}.{str(frac).rjust(decimals, '0') if decimals else ''}".ljust(
        len(str(whole)) + 1 + 8, "0")


def fmt_qty(x: float) -> str:
    return f"{x:.8f}"


class _Seconds:
    """Per-second arrays of one block."""

    __slots__ = ("first_id", "n", "qv", "tbq", "tbv", "ticks", "vol")

    def __init__(self, ticks, vol, qv, n, tbv, tbq, first_id) -> None:
        self.ticks, self.vol, self.qv, self.n = ticks, vol, qv, n
        self.tbv, self.tbq, self.first_id = tbv, tbq, first_id


class AssetPath:
    """The path of one asset. Not thread-safe; the sim runs on one event loop."""

    _COLS_I = ("o", "h", "l", "c", "n", "f")
    _COLS_F = ("v", "q", "V", "Q")

    def __init__(self, params: AssetParams, index: int, seed: int, anchor_block: int,
                 keep_blocks: int | None = KEEP_MINUTE_BLOCKS) -> None:
        self.params = params
        self.index = index
        self.seed = seed
        self.anchor_block = anchor_block
        self.anchor_s = anchor_block * BLOCK_S
        self.next_block = anchor_block
        self.keep_blocks = keep_blocks        # None: keep every minute (tests compare)
        self._base = 0                        # minutes dropped from the front of _cols
        rng = np.random.default_rng([seed, index, 1_000_000_007])
        self._logp = math.log(params.start_price) + rng.normal(0.0, 0.05)
        self._next_trade_id = TRADE_ID_BASE + index * 10**8
        self._len = 0
        self._cols: dict[str, np.ndarray] = {}
        for k in self._COLS_I:
            self._cols[k] = np.zeros(4096, dtype=np.int64)
        for k in self._COLS_F:
            self._cols[k] = np.zeros(4096, dtype=np.float64)
        self._seconds: dict[int, _Seconds] = {}

    # -- generation ------------------------------------------------------------------------

    def ensure(self, second: int) -> None:
        """Generate blocks until the one holding ``second`` exists."""
        target = second // BLOCK_S
        while self.next_block <= target:
            self._generate(self.next_block)
            self.next_block += 1

    def _generate(self, block: int) -> None:
        p = self.params
        rng = np.random.default_rng([self.seed, self.index, block - self.anchor_block])
        sig = p.sigma_s * math.exp(rng.normal(0.0, 0.25))
        drift = rng.normal(0.0, sig / 150.0, BLOCK_S // TREND_SEGMENT_S).repeat(TREND_SEGMENT_S)
        z = rng.standard_normal(BLOCK_S)
        r = sig * z + drift
        n_jumps = rng.poisson(BLOCK_S * JUMP_RATE_S)
        if n_jumps:
            r[rng.integers(0, BLOCK_S, n_jumps)] += rng.normal(0.0, 20.0 * sig, n_jumps)
        logp = self._logp + np.cumsum(r)
        self._logp = float(logp[-1])
        ticks = np.maximum(np.rint(np.exp(logp) / p.tick), 1).astype(np.int64)
        price = ticks * p.tick
        # Activity: lognormal noise, busier when the price moves.
        act = np.exp(rng.normal(-0.18, 0.6, BLOCK_S)) * (0.6 + 0.5 * np.abs(z))
        vol = np.round(p.base_volume_s * act, p.lot_decimals)
        vol = np.maximum(vol, 10.0 ** -p.lot_decimals)
        n = np.maximum(np.rint(vol / p.avg_trade), 1).astype(np.int64)
        buy = np.clip(0.5 + 0.12 * z + rng.normal(0.0, 0.08, BLOCK_S), 0.05, 0.95)
        tbv = np.round(vol * buy, p.lot_decimals)
        qv = vol * price
        tbq = tbv * price
        first_id = self._next_trade_id + np.concatenate(([0], np.cumsum(n)[:-1]))
        self._next_trade_id += int(n.sum())
        self._seconds[block] = _Seconds(ticks, vol, qv, n, tbv, tbq, first_id)
        for old in [b for b in self._seconds if b <= block - KEEP_SECOND_BLOCKS]:
            del self._seconds[old]
        self._append_minutes(ticks, vol, qv, n, tbv, tbq, first_id)
        self._drop_old_minutes()

    def _drop_old_minutes(self) -> None:
        if self.keep_blocks is None:
            return
        keep = self.keep_blocks * (BLOCK_S // 60)
        if self._len < keep + DROP_BLOCKS * (BLOCK_S // 60):
            return
        drop = self._len - keep                # whole blocks: the earliest stays hour-aligned
        for arr in self._cols.values():
            arr[: keep] = arr[drop: self._len]
        self._len = keep
        self._base += drop

    @property
    def earliest_ms(self) -> int:
        """Open time of the oldest 1m candle kept (hour-aligned)."""
        return (self.anchor_s + self._base * 60) * 1000

    def _append_minutes(self, ticks, vol, qv, n, tbv, tbq, first_id) -> None:
        m = BLOCK_S // 60
        t2 = ticks.reshape(m, 60)
        rows = {
            "o": t2[:, 0], "h": t2.max(axis=1), "l": t2.min(axis=1), "c": t2[:, -1],
            "n": n.reshape(m, 60).sum(axis=1), "f": first_id[::60],
            "v": vol.reshape(m, 60).sum(axis=1), "q": qv.reshape(m, 60).sum(axis=1),
            "V": tbv.reshape(m, 60).sum(axis=1), "Q": tbq.reshape(m, 60).sum(axis=1),
        }
        if self._len + m > len(self._cols["o"]):
            for k, arr in self._cols.items():
                grown = np.zeros(len(arr) * 2, dtype=arr.dtype)
                grown[: self._len] = arr[: self._len]
                self._cols[k] = grown
        for k, vals in rows.items():
            self._cols[k][self._len: self._len + m] = vals
        self._len += m

    # -- queries -----------------------------------------------------------------------------

    def ticks_at(self, second: int) -> int:
        """Price (ticks) of the given second; the second must be in a retained block."""
        self.ensure(second)
        block = second // BLOCK_S
        sec = self._seconds.get(block)
        if sec is None:  # older than the retained blocks: fall back to the minute's close
            return int(self._cols["c"][max(self._minute(second * 1000), 0)])
        return int(sec.ticks[second - block * BLOCK_S])

    def price_at(self, second: int) -> float:
        return self.ticks_at(second) * self.params.tick

    def _minute(self, ms: int) -> int:
        """Row of the 1m candle holding ``ms`` (negative if it was dropped)."""
        return (ms // 1000 - self.anchor_s) // 60 - self._base

    def window_open_close(self, start_s: int, end_s: int) -> tuple[int, int]:
        """Open of the first 1m candle and close of the last one of [start_s, end_s). A window
        older than the kept minutes (never asked for: markets are forgotten long before) is
        read from the earliest kept candle rather than from a wrapped-around index."""
        self.ensure(end_s - 1)
        o = int(self._cols["o"][max(self._minute(start_s * 1000), 0)])
        c = int(self._cols["c"][max(self._minute(end_s * 1000) - 1, 0)])
        return o, c

    def _partial_minute(self, minute_open_s: int, upto_s: int) -> dict:
        """Aggregate seconds [minute_open_s, upto_s] of a forming minute."""
        block = minute_open_s // BLOCK_S
        sec = self._seconds[block]
        a = minute_open_s - block * BLOCK_S
        b = upto_s - block * BLOCK_S + 1
        t = sec.ticks[a:b]
        return {"o": int(t[0]), "h": int(t.max()), "l": int(t.min()), "c": int(t[-1]),
                "n": int(sec.n[a:b].sum()), "f": int(sec.first_id[a]),
                "v": float(sec.vol[a:b].sum()), "q": float(sec.qv[a:b].sum()),
                "V": float(sec.tbv[a:b].sum()), "Q": float(sec.tbq[a:b].sum())}

    def klines(self, interval_ms: int, first_open: int, last_open: int,
               now_ms: int) -> list[Kline]:
        """Candles with open times first_open..last_open (aligned), the last maybe forming."""
        self.ensure(now_ms // 1000)
        cur_open = now_ms // interval_ms * interval_ms
        first_open = max(first_open, self.earliest_ms)
        last_open = min(last_open, cur_open)
        if last_open < first_open:
            return []
        k = interval_ms // 60_000
        out: list[Kline] = []
        last_closed = min(last_open, cur_open - interval_ms)
        if last_closed >= first_open:
            count = (last_closed - first_open) // interval_ms + 1
            m0 = self._minute(first_open)
            sl = slice(m0, m0 + count * k)
            starts = np.arange(count) * k
            c = self._cols
            o = c["o"][m0: m0 + count * k: k]
            cl = c["c"][m0 + k - 1: m0 + count * k: k]
            h = np.maximum.reduceat(c["h"][sl], starts)
            lo = np.minimum.reduceat(c["l"][sl], starts)
            sums = {f: np.add.reduceat(c[f][sl], starts) for f in ("n", "v", "q", "V", "Q")}
            fid = c["f"][m0: m0 + count * k: k]
            for i in range(count):
                t = first_open + i * interval_ms
                n = int(sums["n"][i])
                out.append(Kline(t, t + interval_ms - 1, int(o[i]), int(h[i]), int(lo[i]),
                                 int(cl[i]), float(sums["v"][i]), float(sums["q"][i]), n,
                                 float(sums["V"][i]), float(sums["Q"][i]), int(fid[i]),
                                 int(fid[i]) + n - 1, True))
        if last_open == cur_open and cur_open >= first_open:
            out.append(self._forming(interval_ms, cur_open, now_ms))
        return out

    def _forming(self, interval_ms: int, open_ms: int, now_ms: int) -> Kline:
        cur_minute_s = now_ms // 60_000 * 60
        m0 = self._minute(open_ms)
        m1 = self._minute(cur_minute_s * 1000)          # closed minutes: [m0, m1)
        part = self._partial_minute(cur_minute_s, now_ms // 1000)
        c = self._cols
        if m1 > m0:
            o = int(c["o"][m0])
            h = max(int(c["h"][m0:m1].max()), part["h"])
            lo = min(int(c["l"][m0:m1].min()), part["l"])
            sums = {f: float(c[f][m0:m1].sum()) + part[f] for f in ("v", "q", "V", "Q")}
            n = int(c["n"][m0:m1].sum()) + part["n"]
            fid = int(c["f"][m0])
        else:
            o, h, lo, fid, n = part["o"], part["h"], part["l"], part["f"], part["n"]
            sums = {f: part[f] for f in ("v", "q", "V", "Q")}
        return Kline(open_ms, open_ms + interval_ms - 1, o, h, lo, part["c"], sums["v"],
                     sums["q"], n, sums["V"], sums["Q"], fid, fid + n - 1, False)

    def kline_at(self, interval_ms: int, open_ms: int, now_ms: int) -> Kline | None:
        ks = self.klines(interval_ms, open_ms, open_ms, now_ms)
        return ks[0] if ks else None


class PriceModel:
    """All assets' paths, sharing one seed and one anchor."""

    def __init__(self, seed: int, start_s: float,
                 assets: tuple[AssetParams, ...] = ASSET_PARAMS,
                 keep_blocks: int | None = KEEP_MINUTE_BLOCKS) -> None:
        self.seed = seed
        self.anchor_block = int(start_s) // BLOCK_S - HISTORY_BLOCKS
        self.paths: dict[str, AssetPath] = {
            p.symbol: AssetPath(p, i, seed, self.anchor_block, keep_blocks)
            for i, p in enumerate(assets)
        }
        self.by_asset: dict[str, AssetPath] = {p.params.asset: p for p in self.paths.values()}
        self.ensure(int(start_s))

    @property
    def earliest_ms(self) -> int:
        """The oldest candle every asset still has."""
        return max(p.earliest_ms for p in self.paths.values())

    def ensure(self, second: int) -> None:
        for path in self.paths.values():
            path.ensure(second)
