"""The Binance-compatible feed: WebSocket klines, control frames, pings, REST klines."""

from __future__ import annotations

import asyncio
import itertools
import time
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest
import websockets

from tests.sim.fixtures import (
    BINANCE_ERROR,
    BINANCE_KLINE_EVENT,
    BINANCE_KLINE_ROW,
    assert_same_shape,
)

PRICE_FIELDS = ("o", "c", "h", "l", "v", "q", "V", "Q")


def check_kline_event(ev: dict[str, Any], symbol: str, interval: str, iv_ms: int) -> None:
    assert_same_shape(ev, BINANCE_KLINE_EVENT)
    assert set(ev) == set(BINANCE_KLINE_EVENT)
    assert set(ev["k"]) == set(BINANCE_KLINE_EVENT["k"])
    k = ev["k"]
    assert ev["e"] == "kline" and ev["s"] == symbol == k["s"] and k["i"] == interval
    assert k["t"] % iv_ms == 0 and k["T"] == k["t"] + iv_ms - 1
    vals = {f: Decimal(k[f]) for f in PRICE_FIELDS}
    assert all(len(k[f].split(".")[1]) == 8 for f in PRICE_FIELDS)
    assert vals["l"] <= min(vals["o"], vals["c"]) <= max(vals["o"], vals["c"]) <= vals["h"]
    assert 0 <= vals["V"] <= vals["v"] and vals["v"] > 0
    assert k["L"] - k["f"] + 1 == k["n"] > 0


async def next_data(ws, deadline: float) -> dict[str, Any]:
    """Next kline/stream frame, skipping control replies."""
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for a data frame"
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), left))
        if "id" not in msg and "code" not in msg:
            return msg


async def next_reply(ws, deadline: float) -> dict[str, Any]:
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for a control reply"
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), left))
        if "id" in msg or "code" in msg:
            return msg


async def test_raw_stream_event_matches_binance_format(sim):
    async with websockets.connect(sim.endpoints.binance_ws + "/ws/btcusdt@kline_1m") as ws:
        ev = await next_data(ws, time.monotonic() + 10)
    check_kline_event(ev, "BTCUSDT", "1m", 60_000)


async def test_combined_stream_cadence_and_exactly_one_final_per_candle(sim):
    """Structure, not wall-clock cadence: a loaded machine delays the sim's broadcaster by
    any amount, so how many updates a wall (or sim) second carries is no test of it. What
    load cannot change: one final per candle, after it closed and in order, no forming update
    for a closed candle, and never more forming updates than the broadcaster's period
    allows (it skips the ticks it fell behind on; it never bursts)."""
    streams = ["btcusdt@kline_1m", "ethusdt@kline_1m", "solusdt@kline_5m"]
    url = sim.endpoints.binance_ws + "/stream?streams=" + "/".join(streams)
    seen: dict[str, list[dict[str, Any]]] = {s: [] for s in streams}

    def enough() -> bool:
        return (sum(1 for e in seen["btcusdt@kline_1m"] if e["k"]["x"]) >= 3
                and all(sum(1 for e in seen[s] if not e["k"]["x"]) >= 10 for s in streams))

    deadline = time.monotonic() + 60
    async with websockets.connect(url) as ws:
        while not enough():
            msg = await next_data(ws, deadline)
            assert set(msg) == {"stream", "data"}
            seen[msg["stream"]].append(msg["data"])
    for name, iv, sym, interval in (("btcusdt@kline_1m", 60_000, "BTCUSDT", "1m"),
                                    ("ethusdt@kline_1m", 60_000, "ETHUSDT", "1m"),
                                    ("solusdt@kline_5m", 300_000, "SOLUSDT", "5m")):
        events = seen[name]
        for e in events:
            check_kline_event(e, sym, interval, iv)
        finals = [e for e in events if e["k"]["x"]]
        opens = [e["k"]["t"] for e in finals]
        assert len(opens) == len(set(opens)), f"{name}: a candle was finalised twice"
        assert all(b - a == iv for a, b in itertools.pairwise(opens))
        for f in finals:
            assert f["E"] > f["k"]["T"], "final update sent before the candle closed"
        # in order: a candle's forming updates, then its final, then the next candle's
        keys = [(e["k"]["t"], e["k"]["x"]) for e in events]
        assert keys == sorted(keys), f"{name}: out of order"
        # every candle seen forming that has closed since got its final
        forming = sorted({e["k"]["t"] for e in events if not e["k"]["x"]})
        assert set(forming[:-1]) <= set(opens), f"{name}: a closed candle had no final"
        for e in events:
            if not e["k"]["x"]:
                assert e["E"] <= e["k"]["T"] + 1, "forming update for a closed candle"
        # Forming updates every 2 sim s, clamped to >= 100 ms wall (6 sim s at speed 60):
        # n of them span at least (n - 2) periods, whatever the load (a factor 2 of slack:
        # the sim clock reads wall time, the broadcaster's timer the monotonic clock).
        sent = [e["E"] for e in events if not e["k"]["x"]]
        period_ms = max(2.0, 0.1 * sim.clock.speed) * 1000
        assert sent[-1] - sent[0] >= (len(sent) - 2) * period_ms / 2, (len(sent), sent)


async def test_final_candle_equals_rest_kline(sim):
    url = sim.endpoints.binance_ws + "/ws/xrpusdt@kline_1m"
    deadline = time.monotonic() + 10
    async with websockets.connect(url) as ws:
        while True:
            ev = await next_data(ws, deadline)
            if ev["k"]["x"]:
                break
    k = ev["k"]
    async with aiohttp.ClientSession() as http:
        url = (f"{sim.endpoints.binance_rest}/api/v3/klines?symbol=XRPUSDT&interval=1m"
               f"&startTime={k['t']}&limit=1")
        async with http.get(url) as r:
            row = (await r.json())[0]
    assert row[0] == k["t"] and row[6] == k["T"]
    assert row[1:6] == [k["o"], k["h"], k["l"], k["c"], k["v"]]
    assert row[7:11] == [k["q"], k["n"], k["V"], k["Q"]]


async def test_control_frames(sim):
    async with websockets.connect(sim.endpoints.binance_ws + "/ws") as ws:
        dl = time.monotonic() + 10
        await ws.send('{"method":"SUBSCRIBE","params":["ethusdt@kline_5m"],"id":1}')
        assert await next_reply(ws, dl) == {"result": None, "id": 1}
        ev = await next_data(ws, dl)                       # raw path: no wrapper
        check_kline_event(ev, "ETHUSDT", "5m", 300_000)
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":"abc"}')
        assert await next_reply(ws, dl) == {"result": ["ethusdt@kline_5m"], "id": "abc"}
        await ws.send('{"method":"UNSUBSCRIBE","params":["ethusdt@kline_5m"],"id":2}')
        assert await next_reply(ws, dl) == {"result": None, "id": 2}
        await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":3}')
        assert await next_reply(ws, dl) == {"result": [], "id": 3}
        await ws.send("{not json")
        assert (await next_reply(ws, dl))["code"] == 3
        await ws.send('{"method":"FOO","id":4}')
        r = await next_reply(ws, dl)
        assert r["code"] == 2 and r["msg"].startswith("Invalid request")
        await ws.send('{"method":"SUBSCRIBE","params":"btcusdt@kline_1m","id":5}')
        assert (await next_reply(ws, dl))["code"] == 2
        await ws.send('{"method":"SUBSCRIBE","params":[],"id":{"x":1}}')
        assert (await next_reply(ws, dl))["code"] == 2
        await ws.send('{"method":"SET_PROPERTY","params":["combined",true],"id":6}')
        assert await next_reply(ws, dl) == {"result": None, "id": 6}
        await ws.send('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":7}')
        await next_reply(ws, dl)
        wrapped = await next_data(ws, dl)
        assert wrapped["stream"] == "btcusdt@kline_1m"


async def test_server_disconnects_client_that_does_not_pong(own_sim):
    # a 3 s pong timeout: the good client's pongs come from this test's own loop, which a
    # loaded machine can stall for a second or more
    s = own_sim(speed=60, extra_args=("--ping-interval", "0.2", "--pong-timeout", "3"))
    url = s.endpoints.binance_ws + "/ws/btcusdt@kline_1m"
    async with aiohttp.ClientSession() as http, websockets.connect(url) as good:
        got: list[float] = []

        async def drain() -> None:            # a live client reads all the time
            async for _ in good:
                got.append(time.monotonic())

        reader = asyncio.create_task(drain())
        try:
            async with http.ws_connect(url, autoping=False) as bad:
                pings = 0
                deadline = time.monotonic() + 15
                while True:
                    msg = await asyncio.wait_for(bad.receive(), deadline - time.monotonic())
                    if msg.type == aiohttp.WSMsgType.PING:
                        pings += 1
                    elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                      aiohttp.WSMsgType.ERROR):
                        break
                closed_at = time.monotonic()
            assert pings >= 2
            # The client that answers pings (websockets does) is still being served.
            deadline = time.monotonic() + 30
            while not (got and got[-1] > closed_at):
                assert time.monotonic() < deadline and not reader.done()
                await asyncio.sleep(0.05)      # poll the condition above
        finally:
            reader.cancel()


async def test_rest_klines_format_and_history(sim):
    start_ms = int(sim.clock.sim_epoch * 1000)
    async with aiohttp.ClientSession() as http:
        rows_by_iv = {}
        for interval, iv in (("1m", 60_000), ("5m", 300_000), ("15m", 900_000)):
            url = (f"{sim.endpoints.binance_rest}/api/v3/klines?symbol=BTCUSDT"
                   f"&interval={interval}&endTime={start_ms - iv}&limit=1000")
            async with http.get(url) as r:
                assert r.status == 200
                assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) >= 2
                rows = await r.json()
            assert len(rows) == 1000, f"{interval}: only {len(rows)} candles of history"
            for row in rows[:3] + rows[-3:]:
                assert_same_shape(row, BINANCE_KLINE_ROW)
                assert row[6] == row[0] + iv - 1
            assert all(b[0] - a[0] == iv for a, b in itertools.pairwise(rows))
            assert rows[-1][6] < start_ms, "history must be closed candles"
            rows_by_iv[interval] = rows
        # A 5m candle is its five 1m candles.
        one = {r[0]: r for r in rows_by_iv["1m"]}
        for five in rows_by_iv["5m"][-5:]:
            parts = [one[five[0] + i * 60_000] for i in range(5)]
            assert five[1] == parts[0][1] and five[4] == parts[-1][4]
            assert Decimal(five[2]) == max(Decimal(p[2]) for p in parts)
            assert Decimal(five[3]) == min(Decimal(p[3]) for p in parts)
            assert five[8] == sum(p[8] for p in parts)
        # Without times: the latest candles, the last one still forming.
        async with http.get(f"{sim.endpoints.binance_rest}/api/v3/klines?symbol=ETHUSDT"
                            "&interval=1m&limit=5") as r:
            rows = await r.json()
        assert len(rows) == 5 and rows[-1][6] >= sim.clock.now_ms() - 60_000


async def test_rest_start_before_the_history_returns_from_the_first_candle(sim):
    """Binance answers a startTime before its first candle with candles from the first one."""
    base = f"{sim.endpoints.binance_rest}/api/v3/klines?symbol=SOLUSDT&interval=15m"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}&startTime=0&limit=5") as r:
            assert r.status == 200
            rows = await r.json()
        assert len(rows) == 5 and rows[0][0] % 900_000 == 0
        assert all(b[0] - a[0] == 900_000 for a, b in itertools.pairwise(rows))
        async with http.get(f"{base}&startTime={rows[0][0]}&limit=5") as r:
            assert await r.json() == rows
        async with http.get(f"{base}&endTime={rows[0][0] - 1}") as r:
            assert await r.json() == []            # nothing before the first candle


@pytest.mark.parametrize(("query", "code"), [
    ("interval=1m", -1102),
    ("symbol=BTCUSDT", -1102),
    ("symbol=btcusdt&interval=1m", -1100),
    ("symbol=FOOUSDT&interval=1m", -1121),
    ("symbol=BTCUSDT&interval=7m", -1120),
    ("symbol=BTCUSDT&interval=1m&startTime=20&endTime=10", -1023),
    ("symbol=BTCUSDT&interval=1m&limit=abc", -1100),
    ("symbol=BTCUSDT&interval=1m&limit=0", -1130),
])
async def test_rest_errors_use_binance_shape(sim, query, code):
    async with aiohttp.ClientSession() as http, \
            http.get(f"{sim.endpoints.binance_rest}/api/v3/klines?{query}") as r:
        assert r.status == 400
        assert "X-MBX-USED-WEIGHT-1M" in r.headers
        body = await r.json()
    assert_same_shape(body, BINANCE_ERROR)
    assert body["code"] == code


async def test_rest_weight_budget_gives_429_with_retry_after(own_sim):
    s = own_sim(speed=1, extra_args=("--weight-limit", "10"))
    url = f"{s.endpoints.binance_rest}/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1"
    async with aiohttp.ClientSession() as http:
        for _ in range(15):
            async with http.get(url) as r:
                used = int(r.headers["X-MBX-USED-WEIGHT-1M"])
                if r.status == 429:
                    body = await r.json()
                    assert body["code"] == -1003
                    assert 1 <= int(r.headers["Retry-After"]) <= 60
                    assert used > 10
                    return
                assert r.status == 200 and used <= 10
    pytest.fail("no 429 within 15 requests of weight 2 against a budget of 10")
