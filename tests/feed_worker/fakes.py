"""Fakes for the feed worker's unit tests: a scripted HTTP transport and Binance-shaped data."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from core.markets import INTERVAL_MS
from feed_worker.http import Response

Handler = Callable[[str, str, dict], Response | Awaitable[Response]]


class FakeHttp:
    """Answers every request with ``handler(method, url, params_or_body)``; records calls."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[tuple[str, str, Any]] = []

    async def _call(self, method: str, url: str, arg: Any) -> Response:
        self.calls.append((method, url, arg))
        r = self.handler(method, url, arg)
        if isinstance(r, Awaitable):
            r = await r
        return r

    async def get(self, url: str, params: Mapping[str, Any] | None = None) -> Response:
        return await self._call("GET", url, dict(params or {}))

    async def post(self, url: str, body: Any) -> Response:
        return await self._call("POST", url, body)


def price(symbol: str, t: int) -> float:
    """A deterministic price path: the same candle always has the same values."""
    base = 100.0 + 10 * (sum(map(ord, symbol)) % 7)
    return round(base + 5 * math.sin(t / 3.7e6) + (t // 60_000) % 13 * 0.01, 2)


def kline_row(symbol: str, interval: str, t: int, now_ms: int) -> list:
    iv = INTERVAL_MS[interval]
    closed = t + iv <= now_ms
    o = price(symbol, t)
    c = price(symbol, t + iv - 1 if closed else now_ms)
    return [t, f"{o:.2f}", f"{max(o, c) + 1:.2f}", f"{min(o, c) - 1:.2f}", f"{c:.2f}",
            "12.5" if closed else "3.0", t + iv - 1, "1000.0", 42, "1.0", "1.0", "0"]


def klines_body(symbol: str, interval: str, params: dict, now_ms: int) -> bytes:
    """What Binance answers to /api/v3/klines (startTime mode), forming candle included."""
    iv = INTERVAL_MS[interval]
    start = -(-int(params["startTime"]) // iv) * iv
    limit = int(params.get("limit", 500))
    last = min(start + (limit - 1) * iv, now_ms // iv * iv)
    if "endTime" in params:
        last = min(last, int(params["endTime"]) // iv * iv)
    rows = [kline_row(symbol, interval, t, now_ms) for t in range(start, last + 1, iv)]
    return orjson.dumps(rows)


def kline_event(symbol: str, interval: str, t: int, now_ms: int, closed: bool,
                combined: bool = True) -> bytes:
    r = kline_row(symbol, interval, t, now_ms)
    ev = {"e": "kline", "E": now_ms, "s": symbol,
          "k": {"t": t, "T": r[6], "s": symbol, "i": interval, "f": 1, "L": 2, "o": r[1],
                "c": r[4], "h": r[2], "l": r[3], "v": r[5], "n": r[8], "x": closed,
                "q": r[7], "V": "0", "Q": "0", "B": "0"}}
    if combined:
        return orjson.dumps({"stream": f"{symbol.lower()}@kline_{interval}", "data": ev})
    return orjson.dumps(ev)


def series_candle(series: dict[int, float], open_time: int, iv: int
                  ) -> tuple[float, float, float, float, int] | None:
    """(open, high, low, close, observations) of the candle ``[open_time, open_time + iv)``
    built from a reference series ``{observation ms: value}``; None without observations."""
    vals = [v for t, v in sorted(series.items()) if open_time <= t < open_time + iv]
    if not vals:
        return None
    return vals[0], max(vals), min(vals), vals[-1], len(vals)
