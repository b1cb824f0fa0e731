"""Parsing Binance kline frames and REST bodies into KLINE_DT records."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from core.errors import InputError
from feed_worker.klines import (
    KLINE_STRUCT,
    ControlReply,
    KlineUpdate,
    ServerShutdown,
    parse_frame,
    parse_rest_klines,
    record_of,
)
from state.layout import KLINE_DT

from .fakes import kline_event, klines_body

T0 = 1_700_000_040_000          # a minute boundary
DOC_EVENT = {"e": "kline", "E": 1672515782136, "s": "BNBUSDT",
             "k": {"t": 1672515780000, "T": 1672515839999, "s": "BNBUSDT", "i": "1m",
                   "f": 100, "L": 200, "o": "0.0010", "c": "0.0020", "h": "0.0025",
                   "l": "0.0015", "v": "1000", "n": 100, "x": False, "q": "1.0000",
                   "V": "500", "Q": "0.500", "B": "123456"}}


def test_struct_matches_the_dtype_field_by_field():
    raw = KLINE_STRUCT.pack(3, 2, 1, 10, 20, 1.5, 2.5, 0.5, 2.0, 7.0, 8.0, 99, 30, 40)
    r = np.frombuffer(raw, dtype=KLINE_DT)[0]
    assert (int(r["symbol_id"]), int(r["interval_id"]), int(r["closed"])) == (3, 2, 1)
    assert (int(r["open_time"]), int(r["close_time"])) == (10, 20)
    assert [float(r[k]) for k in ("open", "high", "low", "close", "volume", "quote_volume")] \
        == [1.5, 2.5, 0.5, 2.0, 7.0, 8.0]
    assert (int(r["trades"]), int(r["event_time"]), int(r["recv_ns"])) == (99, 30, 40)


def test_documented_event_raw_and_combined():
    for raw in (orjson.dumps(DOC_EVENT),
                orjson.dumps({"stream": "bnbusdt@kline_1m", "data": DOC_EVENT})):
        f = parse_frame(raw, recv_ns=777)
        assert isinstance(f, KlineUpdate)
        assert f.stream == "bnbusdt@kline_1m" and not f.closed
        r = record_of(f)
        assert int(r["symbol_id"]) == 5 and int(r["interval_id"]) == 0
        assert int(r["open_time"]) == 1672515780000 and int(r["close_time"]) == 1672515839999
        assert float(r["close"]) == 0.002 and float(r["high"]) == 0.0025
        assert int(r["trades"]) == 100 and int(r["event_time"]) == 1672515782136
        assert int(r["recv_ns"]) == 777 and int(r["closed"]) == 0


def test_closed_flag_only_from_x():
    f = parse_frame(kline_event("BTCUSDT", "5m", T0 - 60_000 * 4, T0 + 60_000, True), 1)
    assert isinstance(f, KlineUpdate) and f.closed and int(record_of(f)["closed"]) == 1


def test_server_shutdown_both_forms_and_control_replies():
    assert isinstance(parse_frame(b'{"e":"serverShutdown","E":5}', 0), ServerShutdown)
    assert isinstance(parse_frame(
        b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":5}}', 0), ServerShutdown)
    assert isinstance(parse_frame(b'{"result":null,"id":1}', 0), ControlReply)
    assert isinstance(parse_frame(b'{"code":2,"msg":"Invalid request"}', 0), ControlReply)


@pytest.mark.parametrize("e", [b'"x"', b"[1]", b'{"a":1}', b"1e30", b'"1e5"', b"null"])
def test_server_shutdown_with_a_bad_event_time_still_rotates(e):
    for raw in (b'{"e":"serverShutdown","E":%s}' % e,
                b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":%s}}' % e):
        f = parse_frame(raw, 0)
        assert isinstance(f, ServerShutdown) and isinstance(f.event_time, int)


@pytest.mark.parametrize("raw", [
    b"", b"\x00garbage{{{", b'{"stream":"btcusdt@kline_1m","data":{"e":"kline"',
    b'{"e":"kline","E":"not-a-number","k":null}', b"[1,2,3]", b'{"e":"trade"}',
    # x must be a real boolean, times must fit the interval, symbols must be known
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "x": "true"}}),
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "T": 1672515840000}}),
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "t": 1672515780001}}),
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "s": "FOOUSDT"}}),
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "i": "2h"}}),
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "c": "NaN"}}),
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "o": "abc"}}),
    orjson.dumps({**DOC_EVENT, "k": {**DOC_EVENT["k"], "n": 1e30}}),
    orjson.dumps(DOC_EVENT).replace(b'"E":1672515782136', b'"E":18446744073709551616'),
])
def test_malformed_frames_raise_input_error(raw):
    with pytest.raises(InputError):
        parse_frame(raw, 0)


def test_rest_keeps_only_candles_closed_before_the_request():
    now = T0 + 30_000                         # half-way through the candle opened at T0
    body = klines_body("ETHUSDT", "1m", {"startTime": T0 - 5 * 60_000, "limit": 10}, now)
    assert len(orjson.loads(body)) == 6       # 5 closed + the forming one
    c = parse_rest_klines(body, "ETHUSDT", "1m", closed_before_ms=now)
    assert list(c["open_time"]) == [T0 - k * 60_000 for k in range(5, 0, -1)]
    assert (c["closed"] == 1).all() and (c["symbol_id"] == 1).all()
    # a request sent before the T0-1 candle closed must not present it as closed
    c2 = parse_rest_klines(body, "ETHUSDT", "1m", closed_before_ms=T0 - 1)
    assert int(c2["open_time"][-1]) == T0 - 2 * 60_000


@pytest.mark.parametrize("body", [
    b"not json", b'{"code":-1121,"msg":"Invalid symbol."}', b"[[1,2]]",
    orjson.dumps([[T0, "1", "1", "1", "1", "1", T0 + 59_999, "1", 1, "1", "1", "0"],
                  [T0, "1", "1", "1", "1", "1", T0 + 59_999, "1", 1, "1", "1", "0"]]),
    orjson.dumps([[T0, "x", "1", "1", "1", "1", T0 + 59_999, "1", 1, "1", "1", "0"]]),
    orjson.dumps([[T0 + 1, "1", "1", "1", "1", "1", T0 + 60_000, "1", 1, "1", "1", "0"]]),
    # integers too large for int64 (OverflowError, not ValueError)
    orjson.dumps([[60000, "1", "1", "1", "1", "1", 119999, "1", 1e30]]),
    b'[[60000,"1","1","1","1","1",119999,"1",18446744073709551616]]',
    orjson.dumps([[1e30, "1", "1", "1", "1", "1", 119999, "1", 1]]),
])
def test_malformed_rest_bodies_raise_input_error(body):
    with pytest.raises(InputError):
        parse_rest_klines(body, "BTCUSDT", "1m", closed_before_ms=T0 + 10**9)
