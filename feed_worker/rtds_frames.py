"""RTDS frames (Polymarket's Real-Time Data Socket) -> what the feed needs, and back.

Client -> server: a subscribe / unsubscribe action per Chainlink symbol, and the text ``PING``
(about every 5 s). Server -> client, for topic ``crypto_prices_chainlink``::

    {"topic": "crypto_prices_chainlink", "type": "update", "timestamp": 1776038400100,
     "payload": {"symbol": "btc/usd", "timestamp": 1776038400000, "value": 100000.0}}

The top-level ``timestamp`` is when RTDS sent the message; ``payload.timestamp`` is when the
price was observed, and is the one that counts (the price to beat is read on it). ``PONG``
answers our ``PING``. Messages of other topics, or other types, are not data for us and are
ignored (never an error): the socket serves more than this topic. A frame of our topic
that does not carry a finite positive value, an integer observation time and a symbol, or
that is not JSON at all, is malformed: ``InputError`` (the caller counts and logs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson

from core.errors import InputError

TOPIC = "crypto_prices_chainlink"
MAX_INT64 = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class RefUpdate:
    symbol: str        # "btc/usd", lower case
    obs_ms: int        # payload.timestamp
    value: float
    sent_ms: int       # top-level timestamp (0 when absent)
    recv_ns: int


class Pong:
    """The server's answer to our PING (liveness of the connection, not of the data)."""


class Ignored:
    """A well-formed message that is not a Chainlink price (another topic, an ack...)."""


PONG = Pong()
IGNORED = Ignored()
RtdsFrame = RefUpdate | Pong | Ignored


def _int_ms(v: object, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InputError(f"{what} is not a number: {v!r}"[:120])
    if isinstance(v, float) and not math.isfinite(v):
        raise InputError(f"{what} is not finite")
    i = int(v)
    if not 0 < i <= MAX_INT64:
        raise InputError(f"{what} out of range: {v!r}"[:120])
    return i


def parse_rtds(raw: bytes | str, recv_ns: int) -> RtdsFrame:
    """One text frame from RTDS. Raises InputError when it is malformed."""
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", errors="replace")
    if text.strip() == "PONG":
        return PONG
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InputError(f"not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise InputError(f"not a JSON object: {type(msg).__name__}")
    if msg.get("topic") != TOPIC or msg.get("type") != "update":
        return IGNORED
    p = msg.get("payload")
    if not isinstance(p, dict):
        raise InputError("payload is not an object")
    symbol = p.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise InputError(f"bad symbol {symbol!r}"[:120])
    value = p.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value) or value <= 0:
        raise InputError(f"bad value {value!r}"[:120])
    obs = _int_ms(p.get("timestamp"), "payload.timestamp")
    sent_raw = msg.get("timestamp")
    sent = 0 if sent_raw is None else _int_ms(sent_raw, "timestamp")
    return RefUpdate(symbol.lower(), obs, float(value), sent, recv_ns)


def action(verb: str, symbols: list[str] | tuple[str, ...]) -> str:
    """A ``subscribe`` or ``unsubscribe`` frame for these Chainlink symbols (one subscription
    each: the filter takes one symbol, and ``filters`` is a JSON *string*)."""
    if verb not in ("subscribe", "unsubscribe"):
        raise ValueError(f"unknown action {verb!r}")
    subs = [{"topic": TOPIC, "type": "*",
             "filters": orjson.dumps({"symbol": s}).decode()} for s in symbols]
    return orjson.dumps({"action": verb, "subscriptions": subs}).decode()
