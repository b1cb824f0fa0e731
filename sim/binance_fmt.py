"""Binance kline wire shapes: the WebSocket kline event and the REST 12-field row.

Field order follows Binance's documentation (see docs/sim.md for the sources): the event is
``{"e","E","s","k":{t,T,s,i,f,L,o,c,h,l,v,n,x,q,V,Q,B}}``, prices and quantities are strings
with 8 decimals, and the REST row is ``[t, o, h, l, c, v, T, q, n, V, Q, "0"]``.
"""

from __future__ import annotations

from typing import Any

from sim.prices import Kline, fmt_qty, fmt_ticks


def kline_event(k: Kline, symbol: str, interval: str, event_ms: int, dec: int) -> dict[str, Any]:
    return {
        "e": "kline", "E": event_ms, "s": symbol,
        "k": {
            "t": k.t, "T": k.T, "s": symbol, "i": interval, "f": k.f, "L": k.L,
            "o": fmt_ticks(k.o, dec), "c": fmt_ticks(k.c, dec), "h": fmt_ticks(k.h, dec),
            "l": fmt_ticks(k.low, dec), "v": fmt_qty(k.v), "n": k.n, "x": k.closed,
            "q": fmt_qty(k.q), "V": fmt_qty(k.V), "Q": fmt_qty(k.Q), "B": "0",
        },
    }


def kline_row(k: Kline, dec: int) -> list[Any]:
    return [k.t, fmt_ticks(k.o, dec), fmt_ticks(k.h, dec), fmt_ticks(k.low, dec),
            fmt_ticks(k.c, dec), fmt_qty(k.v), k.T, fmt_qty(k.q), k.n, fmt_qty(k.V),
            fmt_qty(k.Q), "0"]
