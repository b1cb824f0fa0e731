"""Binance kline wire formats -> ``KLINE_DT`` records.

Two inputs:
- WebSocket frames, raw (``/ws/<stream>``) or combined (``{"stream": ..., "data": ...}``),
  parsed with orjson. A kline event becomes one 96-byte record packed with ``struct`` (about a
  microsecond, much cheaper than filling a numpy record field by field on the hot path).
- REST ``/api/v3/klines`` bodies: arrays of 12-element arrays. Only candles that had closed
  when the request was sent are kept: Binance returns the forming candle as the last element,
  and a forming candle must never be presented as closed.

Anything malformed raises ``InputError``; the caller drops it, counts it and logs it truncated.
Formats: /work/shared/reference/wire-formats.md (Binance "Kline/Candlestick Streams" and
"Kline/Candlestick data" docs).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import orjson

from core.errors import InputError
from core.markets import CANDLE_SYMBOLS, INTERVAL_MS, KLINE_INTERVALS
from state.layout import KLINE_DT

# symbol_id, interval_id, closed, pad, open_time, close_time, o h l c v q, trades, E, recv_ns
KLINE_STRUCT = struct.Struct("<HHB3xqq6dqqq")
assert KLINE_STRUCT.size == KLINE_DT.itemsize

# symbol -> symbol_id (the asset's index); Binance symbols and reference candle names alike
SYMBOL_ID: dict[str, int] = {s: i for i, s in enumerate(CANDLE_SYMBOLS)}
INTERVAL_ID: dict[str, int] = {s: i for i, s in enumerate(KLINE_INTERVALS)}


@dataclass(slots=True)
class KlineUpdate:
    """One parsed kline event. ``record`` is the packed KLINE_DT bytes."""

    stream: str
    symbol_id: int
    interval_id: int
    closed: bool
    open_time: int
    record: bytes


@dataclass(slots=True)
class ServerShutdown:
    """Binance announced a restart of this connection's server: move to a new connection."""

    event_time: int


@dataclass(slots=True)
class ControlReply:
    """A reply to SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS, or an error object."""

    body: dict


Frame = KlineUpdate | ServerShutdown | ControlReply


def stream_name(symbol: str, interval: str) -> str:
    return f"{symbol.lower()}@kline_{interval}"


def _num(v: object) -> float:
    # Binance sends decimal strings; float() refuses garbage, isfinite refuses nan/inf.
    x = float(v)  # type: ignore[arg-type]
    if not math.isfinite(x):
        raise ValueError(f"non-finite number {v!r}")
    return x


def _event_time(v: object) -> int:
    """``E`` as an int, or 0 when it is missing or not a sane integer."""
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        return 0
    try:
        t = int(v)
    except (TypeError, ValueError, OverflowError):
        return 0
    return t if 0 <= t < 1 << 62 else 0


def _check_times(interval: str, open_time: int, close_time: int) -> None:
    iv = INTERVAL_MS[interval]
    if open_time % iv or close_time != open_time + iv - 1:
        raise ValueError(f"times t={open_time} T={close_time} do not fit interval {interval}")


def parse_frame(raw: bytes | str, recv_ns: int) -> Frame:
    """Parse one WebSocket message. Raises InputError for anything malformed or unknown."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InputError(f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise InputError(f"not a JSON object: {type(msg).__name__}")
    stream = ""
    data = msg
    if "data" in msg and "stream" in msg:
        stream = msg["stream"]
        data = msg["data"]
        if not isinstance(data, dict) or not isinstance(stream, str):
            raise InputError("combined frame without an object payload")
    event = data.get("e")
    if event == "kline":
        return _parse_kline(data, stream, recv_ns)
    if event == "serverShutdown" or stream == "!serverShutdown":
        # The notice is what matters (the server is going away); its time is only logged,
        # so a bad one must not turn a rotation into a dropped connection.
        return ServerShutdown(_event_time(data.get("E")))
    if ("id" in data and ("result" in data or "error" in data)) or "code" in data:
        return ControlReply(data)
    raise InputError(f"unknown event {event!r}")


def _parse_kline(d: dict, stream: str, recv_ns: int) -> KlineUpdate:
    try:
        k = d["k"]
        symbol = k["s"]
        interval = k["i"]
        sid = SYMBOL_ID[symbol]
        iid = INTERVAL_ID[interval]
        t = int(k["t"])
        tc = int(k["T"])
        _check_times(interval, t, tc)
        closed = k["x"]
        if not isinstance(closed, bool):
            raise ValueError(f"x={closed!r} is not a boolean")
        rec = KLINE_STRUCT.pack(
            sid, iid, int(closed), t, tc,
            _num(k["o"]), _num(k["h"]), _num(k["l"]), _num(k["c"]), _num(k["v"]),
            _num(k["q"]), int(k["n"]), int(d["E"]), recv_ns)
    except (KeyError, TypeError, ValueError, OverflowError, struct.error) as e:
        raise InputError(f"bad kline event: {type(e).__name__}: {e}") from None
    return KlineUpdate(stream or stream_name(symbol, interval), sid, iid, closed, t, rec)


def record_of(update: KlineUpdate) -> np.void:
    """The numpy view of a parsed update (for the windows, which store KLINE_DT)."""
    return np.frombuffer(update.record, dtype=KLINE_DT, count=1)[0]


def parse_rest_klines(body: bytes, symbol: str, interval: str, closed_before_ms: int,
                      event_time_ms: int = 0) -> np.ndarray:
    """Parse a /api/v3/klines body into closed candles, oldest first.

    Only candles with ``close_time < closed_before_ms`` are kept; pass the clock time at which
    the request was *sent*: any candle that closed before that had closed when the server
    answered, whatever the network delay. Raises InputError on a malformed body.
    """
    try:
        rows = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InputError(f"klines body is not JSON: {e}") from None
    if not isinstance(rows, list):
        raise InputError(f"klines body is not an array: {str(rows)[:80]}")
    sid = SYMBOL_ID[symbol]
    iid = INTERVAL_ID[interval]
    out = np.zeros(len(rows), dtype=KLINE_DT)
    n = 0
    prev = None
    for r in rows:
        try:
            if not isinstance(r, list) or len(r) < 9:
                raise ValueError(f"row is not a 12-element array: {str(r)[:80]}")
            t, tc = int(r[0]), int(r[6])
            _check_times(interval, t, tc)
            if prev is not None and t <= prev:
                raise ValueError(f"rows out of order at t={t}")
            prev = t
            if tc >= closed_before_ms:
                continue                 # still forming when we asked: not a closed candle
            out[n] = (sid, iid, 1, (0, 0, 0), t, tc, _num(r[1]), _num(r[2]), _num(r[3]),
                      _num(r[4]), _num(r[5]), _num(r[7]), int(r[8]), event_time_ms, 0)
            n += 1
        except (TypeError, ValueError, OverflowError) as e:
            # OverflowError: an integer beyond int64 (e.g. 1e30 trades) in a numpy field
            raise InputError(f"bad klines row: {type(e).__name__}: {e}") from None
    return out[:n]
