"""Malformed requests get the services' own error shapes and never a 5xx or a crash."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

JUNK_BODIES = [b"", b"{", b"null", b"[]", b"{}", b'{"order": 5}', b'"x"', b"\xff\xfe",
               orjson.dumps({"order": {"salt": -1}, "owner": 1, "orderType": "NOPE"}),
               orjson.dumps([{"token_id": None}] * 3), b"[" * 5000]

PATHS = {
    "binance_rest": ["/api/v3/klines", "/api/v3/klines?symbol=&interval=",
                     "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=-5",
                     "/api/v3/klines?symbol=BTCUSDT&interval=1m&endTime=99999999999999999999",
                     "/api/v3/nope"],
    "gamma": ["/markets?limit=-1", "/markets?closed=maybe", "/markets/slug/%00",
              "/markets/abc", "/events/slug/btc-updown-5m-x", "/markets?order=volume"],
    "clob": ["/book?token_id=" + "9" * 200, "/price?token_id=1&side=BUY", "/midpoint",
             "/clob-markets/0x00", "/markets-by-token/abc", "/data/order/0x1",
             "/data/trades?next_cursor=!!", "/tick-size?token_id=", "/nope"],
}
POSTS = {"clob": ["/order", "/orders", "/books", "/prices", "/v1/heartbeats"],
         "gamma": ["/markets"], "binance_rest": ["/api/v3/klines"]}


async def test_no_malformed_request_gets_a_5xx(sim):
    eps = sim.endpoints
    base = {"binance_rest": eps.binance_rest, "gamma": eps.gamma, "clob": eps.clob}
    async with aiohttp.ClientSession() as http:
        for svc, paths in PATHS.items():
            for path in paths:
                async with http.get(base[svc] + path) as r:
                    assert r.status < 500, (svc, path, r.status)
                    await r.json()                      # always JSON
        for svc, paths in POSTS.items():
            for path in paths:
                for body in JUNK_BODIES:
                    for method in ("POST", "DELETE"):
                        async with http.request(method, base[svc] + path, data=body) as r:
                            assert r.status < 500, (svc, method, path, body[:20], r.status)
        async with http.get(f"{sim.admin}/health") as r:
            assert (await r.json())["ok"] is True


@pytest.mark.parametrize("frame", ["", "[]", "null", '{"method":null}', '{"method":"SUBSCRIBE",'
                                   '"params":[1,2]}', "x" * 10_000, '{"id":"a b c"}'])
async def test_bad_ws_frames_get_errors_and_the_connection_survives(sim, frame):
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(sim.endpoints.binance_ws + "/ws") as ws:
        await ws.send_str(frame)
        reply = orjson.loads((await ws.receive(timeout=5)).data)
        assert isinstance(reply.get("code"), int) and reply["msg"]
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert orjson.loads((await ws.receive(timeout=5)).data) == {"result": [], "id": 1}
        await ws.send_bytes(b"\x00\x01")
        reply = orjson.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert reply["code"] == 3
