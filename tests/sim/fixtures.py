"""Recorded examples of the real wire formats, from the services' public documentation.

Sources (see docs/sim.md):
- Binance: developers.binance.com, "WebSocket Streams" (kline event) and "Market Data
  endpoints" (GET /api/v3/klines), as summarised in /work/shared/reference/wire-formats.md.
- Polymarket: docs.polymarket.com (Gamma market object, CLOB order book, order post reply,
  trades and open orders), plus the field names py-clob-client-v2 parses.
The tests compare the sim's replies to these: same field names, same JSON types.
"""

from __future__ import annotations

from typing import Any

BINANCE_KLINE_EVENT: dict[str, Any] = {
    "e": "kline", "E": 1672515782136, "s": "BNBBTC",
    "k": {"t": 1672515780000, "T": 1672515839999, "s": "BNBBTC", "i": "1m", "f": 100,
          "L": 200, "o": "0.0010", "c": "0.0020", "h": "0.0025", "l": "0.0015", "v": "1000",
          "n": 100, "x": False, "q": "1.0000", "V": "500", "Q": "0.500", "B": "123456"},
}

BINANCE_KLINE_ROW: list[Any] = [
    1499040000000, "0.01634790", "0.80000000", "0.01575800", "0.01577100",
    "148976.11427815", 1499644799999, "2434.19055334", 308, "1756.87402397",
    "28.46694368", "0",
]

BINANCE_ERROR: dict[str, Any] = {"code": -1121, "msg": "Invalid symbol."}

GAMMA_MARKET: dict[str, Any] = {
    "id": "553820", "question": "Bitcoin Up or Down - September 9, 8:15PM-8:30PM ET",
    "conditionId": "0x" + "ab" * 32, "slug": "btc-updown-15m-1788999300",
    "resolutionSource": "https://data.chain.link/streams/btc-usd",
    "endDate": "2026-09-10T00:30:00Z", "startDate": "2026-09-09T00:31:24Z",
    "eventStartTime": "2026-09-10T00:15:00Z", "description": "This market will resolve ...",
    "outcomes": "[\"Up\", \"Down\"]", "outcomePrices": "[\"0.505\", \"0.495\"]",
    "clobTokenIds": "[\"1234\", \"5678\"]", "active": True, "closed": False,
    "acceptingOrders": True, "enableOrderBook": True, "negRisk": False,
    "orderPriceMinTickSize": 0.01, "orderMinSize": 5, "feesEnabled": True,
    "volume": "1234.5", "questionID": "0x" + "cd" * 32,
    "feeSchedule": {"exponent": 1, "rate": 0.07, "takerOnly": True, "rebateRate": 0},
    "umaResolutionStatus": "",
}

CLOB_BOOK: dict[str, Any] = {
    "market": "0x1b6f76e5b8587ee896c35847e12d11e75290a8c3934c5952e8a9d6e4c6f03cfa",
    "asset_id": "1234567890", "timestamp": "1672290687000", "hash": "a3f1",
    "bids": [{"price": "0.48", "size": "30"}, {"price": "0.49", "size": "20"}],
    "asks": [{"price": "0.52", "size": "25"}, {"price": "0.51", "size": "10"}],
    "min_order_size": "5", "tick_size": "0.01", "neg_risk": False,
    "last_trade_price": "0.50",
}

CLOB_POST_ORDER_REPLY: dict[str, Any] = {
    "success": True, "errorMsg": "", "orderID": "0xabc", "status": "matched",
    "makingAmount": "50", "takingAmount": "100", "transactionsHashes": ["0xdef"],
    "tradeIDs": ["28c4d2eb-bbea-40e7-a9f0-b2fdb56b2c2e"],
}

CLOB_TRADE: dict[str, Any] = {
    "id": "28c4d2eb-bbea-40e7-a9f0-b2fdb56b2c2e",
    "taker_order_id": "0x06bc63e346ed4ceddce9efd6b3af37c8f8f440c92fe7da6b2d0f9e4ccbc50c42",
    "market": "0xbd31dc8a20211944f6b70f31557f1001557b59905b7738480ca09bd4532f84af",
    "asset_id": "52114319501245915516055106046884209969926127482827954674443846427813813222426",
    "side": "BUY", "size": "40", "fee_rate_bps": "0", "price": "0.57", "status": "MATCHED",
    "match_time": "1672290701", "last_update": "1672290701", "outcome": "YES",
    "maker_address": "0x0000000000000000000000000000000000000001",
    "owner": "9180014b-33c8-9240-a14b-bdca11c0a465",
    "transaction_hash": "0xff354cd7ca7539dfa9c28d90943ab5779a4eca34b9b8c0ed6700b8b2a3b2a1b8",
    "bucket_index": 0, "type": "TAKER", "trader_side": "TAKER",
    "maker_orders": [{"order_id": "0xff35", "maker_address": "0x01", "owner": "x",
                      "matched_amount": "10", "fee_rate_bps": "0", "price": "0.57",
                      "asset_id": "5211", "outcome": "YES"}],
}

CLOB_OPEN_ORDER: dict[str, Any] = {
    "associate_trades": [], "id": "0xb816", "status": "LIVE",
    "market": "0xbd31dc8a20211944f6b70f31557f1001557b59905b7738480ca09bd4532f84af",
    "original_size": "10", "outcome": "YES", "maker_address": "0x01", "owner": "x",
    "price": "0.5", "side": "BUY", "size_matched": "0", "asset_id": "5211",
    "expiration": "0", "type": "GTC", "created_at": 1672290687,
}

CLOB_ERROR: dict[str, Any] = {"error": "Invalid order payload"}


def assert_same_shape(got: Any, want: Any, path: str = "$") -> None:
    """Every key of ``want`` is in ``got`` with the same JSON type (recursively, first item of
    lists); ints and floats count as one type only where the example uses a float."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: expected object, got {type(got).__name__}"
        missing = set(want) - set(got)
        assert not missing, f"{path}: missing keys {sorted(missing)}"
        for k, v in want.items():
            assert_same_shape(got[k], v, f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list), f"{path}: expected array, got {type(got).__name__}"
        if want and got and not _is_row(want):
            assert_same_shape(got[0], want[0], f"{path}[0]")
        elif _is_row(want):
            assert len(got) == len(want), f"{path}: {len(got)} fields, want {len(want)}"
            for i, (g, w) in enumerate(zip(got, want, strict=True)):
                assert_same_shape(g, w, f"{path}[{i}]")
    elif isinstance(want, bool):
        assert isinstance(got, bool), f"{path}: expected bool, got {got!r}"
    elif isinstance(want, int):
        assert isinstance(got, int) and not isinstance(got, bool), f"{path}: int, got {got!r}"
    elif isinstance(want, float):
        assert isinstance(got, int | float) and not isinstance(got, bool), f"{path}: {got!r}"
    elif isinstance(want, str):
        assert isinstance(got, str), f"{path}: expected string, got {got!r}"


def _is_row(v: list[Any]) -> bool:
    """A fixed-length positional row (mixed types), like Binance's kline array."""
    return len({type(x) for x in v}) > 1
