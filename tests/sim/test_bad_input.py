"""Malformed requests get the services' own error shapes and never a 5xx or a crash."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from yarl import URL

from sim.testing import order_log
from tests.sim.inproc import SERVICES, Trader, U, json_call, l1_headers, l2_headers, raw_http
from tests.sim.test_clob import tradable

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


# -- non-ASCII digits: str.isdigit() accepts '²', int() does not -----------------------------

SUP2 = "%C2%B2"                       # '²', URL-encoded


async def test_non_ascii_digits_get_4xx_json_and_the_order_log_status(sim):
    eps = sim.endpoints
    m = tradable(sim, min_left=600)     # at speed 60: 10 s of wall time to work in
    async with aiohttp.ClientSession() as http:
        for path in (f"/markets?limit={SUP2}", f"/markets?offset={SUP2}", f"/markets/{SUP2}",
                     f"/events?limit={SUP2}", "/markets?offset=" + "9" * 5000):
            status, body = await json_call(http, "GET", eps.gamma + path)
            assert status == 422 and body["type"] == "error", (path, status, body)
        addr = "0x" + secrets.token_hex(20)
        for bad in ({"POLY_NONCE": "²"}, {"POLY_TIMESTAMP": "²"}, {"POLY_NONCE": "9" * 5000}):
            status, body = await json_call(http, "GET", eps.clob + "/auth/derive-api-key",
                                           headers={**l1_headers(addr), **bad})
            assert (status, body) == (401, {"error": "Invalid L1 Request headers"}), bad
        for path in (f"/book?token_id={SUP2}", f"/price?side=BUY&token_id=1{SUP2}"):
            assert await json_call(http, "GET", eps.clob + path) == (
                400, {"error": "Invalid token id"})
        t = await Trader.at(http, eps.clob, addr)
        for field in ("makerAmount", "takerAmount", "expiration", "tokenId", "timestamp"):
            body = t.order(m["up"], "BUY", 100_000, 5 * U, **{field: "²"})
            assert await t.call("POST", "/order", body) == (
                400, {"error": "Invalid order payload"}), field
        since = max((e["id"] for e in order_log(sim.admin)), default=0)
        status, out = await t.call("POST", "/orders", [
            t.limit_buy(m["up"], 2, 5), t.order(m["up"], "BUY", 100_000, 5 * U,
                                                expiration="²")])
        assert status == 200 and [o["success"] for o in out] == [True, False], out
        assert out[1]["errorMsg"] == "Invalid order payload"
        assert [(e["path"], e["status"]) for e in order_log(sim.admin, since)] == [
            ("/orders", 200)]
        for q in (f"before={SUP2}", f"after={SUP2}", "before=" + "9" * 5000):
            assert await t.call("GET", f"/data/trades?{q}") == (
                400, {"error": "invalid timestamp"}), q
        status, body = await t.call("DELETE", "/cancel-all")
        assert status == 200 and body["not_canceled"] == {}
        status, body = await json_call(http, "GET", f"{sim.admin}/orders/log?since={SUP2}")
        assert status == 400 and set(body) == {"error"}
        status, body = await json_call(
            http, "GET", f"{eps.binance_rest}/api/v3/klines?symbol=BTCUSDT&interval=1m"
                         f"&limit={SUP2}")
        assert status == 400 and body["code"] == -1100


async def test_bad_auth_headers_and_oversized_bodies_get_json(sim):
    eps = sim.endpoints
    async with aiohttp.ClientSession() as http:
        t = await Trader.at(http, eps.clob, "0x" + secrets.token_hex(20))
        headers = l2_headers(t.creds, t.address, "GET", "/data/orders")
        for sig in ("²" * 44, "é"):           # hmac.compare_digest refuses non-ASCII str
            assert await json_call(http, "GET", eps.clob + "/data/orders",
                                   headers={**headers, "POLY_SIGNATURE": sig}) == (
                401, {"error": "Unauthorized/Invalid api key"})
        # Header bytes that are not UTF-8 (aiohttp's client would not send them).
        req = (b"GET /data/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in headers.items() if k != "POLY_TIMESTAMP")
            + b"POLY_TIMESTAMP: \xff\xfe\r\n\r\n")
        status, raw = await raw_http(eps.clob, req)
        assert status == 401 and orjson.loads(raw) == {"error": "Unauthorized/Invalid api key"}
        since = max((e["id"] for e in order_log(sim.admin)), default=0)
        status, body = await json_call(http, "POST", eps.clob + "/order",
                                       b'{"x":"' + b"a" * (1 << 20) + b'"}')
        assert status == 413 and set(body) == {"error"}
        entries = order_log(sim.admin, since)
        assert [(e["path"], e["status"]) for e in entries] == [("/order", 413)]
        assert isinstance(entries[0]["body"], str) and len(entries[0]["body"]) < 200
        status, body = await json_call(http, "POST", eps.gamma + "/markets", b"x" * (2 << 20))
        assert status in (405, 413) and body["type"] == "error"


# -- the generic fuzz: every route of every service, in process -------------------------------

JUNK = ["", "²", "١٢", "-1", "0x", "null", "\x00", "a" * 200, "9" * 200, "1e308", "NaN",
        "[]", "{", "'", "é", "%FF%FE"]
JUNK_JSON = [b"", b"{", b"null", b"[]", b"{}", b'"x"', b"\xff\xfe", b"[" * 5000, b"1e999",
             b"[null]", b'[{"token_id": "\xc2\xb2"}]', b'{"order": {}, "owner": []}',
             b'[{"order": {"makerAmount": "\xc2\xb2"}}]', b"[" + b'"0x1",' * 2000 + b'"0x"]']
PARAMS = ["token_id", "side", "market", "asset_id", "id", "next_cursor", "before", "after",
          "symbol", "interval", "startTime", "endTime", "limit", "offset", "slug", "closed",
          "active", "order", "ascending", "clob_token_ids", "condition_ids", "streams",
          "since", "asset_type", "order_id"]
NUMERIC = ["limit", "offset", "startTime", "endTime", "before", "after", "since", "id"]


def _enc(v: str) -> str:
    return v if v.startswith("%") else quote(v, safe="")


def _fill(template: str, v: str) -> str:
    return re.sub(r"\{[^}]+\}", _enc(v) or "x", template)


async def test_fuzz_every_route_gets_json_below_500_and_the_sim_still_serves(inproc, caplog):
    caplog.set_level(logging.ERROR, logger="sim")
    t = await Trader.make(inproc)
    m = inproc.market()
    sent = 0

    async def check(method: str, url: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> None:
        nonlocal sent
        sent += 1
        async with inproc.http.request(method, URL(url, encoded=True), data=body,
                                       headers=headers or {}) as r:
            raw = await r.read()
            assert r.status < 500, (method, url[:120], r.status, raw[:200])
            assert r.content_type == "application/json", (method, url[:120], r.status, raw[:200])
            orjson.loads(raw)

    for service in SERVICES:
        base = inproc.url[service]
        for method, template in inproc.routes(service):
            for v in JUNK:
                query = "&".join(f"{p}={_enc(v)}" for p in PARAMS)
                h = v if v.isprintable() else ""      # aiohttp refuses control characters
                await check(method, f"{base}{_fill(template, v)}?{query}",
                            v.encode() if method != "GET" else None,
                            {**l1_headers(t.address, h), "POLY_API_KEY": h,
                             "POLY_SIGNATURE": h, "POLY_PASSPHRASE": h})
            for p in NUMERIC:
                await check(method, f"{base}{_fill(template, '1')}?{p}={'9' * 5000}")
            if method in ("POST", "DELETE"):
                path = _fill(template, "1")
                for body in JUNK_JSON:        # well signed, so they reach the handlers
                    await check(method, base + path, body,
                                l2_headers(t.creds, t.address, method, path, body))
    # Well-signed orders with each field in turn made junk.
    valid = t.limit_buy(m.up_token, 2, 5)
    for field in [*valid["order"], "owner", "orderType", "postOnly"]:
        for v in (None, "", "²", "١٢", 1.5, -1, True, [], {}, "9" * 100, "0x" + "g" * 40):
            body = t.limit_buy(m.up_token, 2, 5)
            target = body if field in ("owner", "orderType", "postOnly") else body["order"]
            target[field] = v
            status, reply = await t.call("POST", "/order", body)
            assert status == 400 or (status == 200 and reply["success"]), (field, v, reply)
            status, reply = await t.call("POST", "/orders", [body])
            assert status == 200 and len(reply) == 1, (field, v, reply)
    assert sent > 1000, sent
    assert not [r for r in caplog.records if r.name.startswith("sim")], \
        [r.getMessage() for r in caplog.records][:5]
    # ... and normal requests are still served.
    assert (await inproc.call("clob", "GET", f"/book?token_id={m.up_token}"))[0] == 200
    status, r = await t.call("POST", "/order", t.limit_buy(m.up_token, 3, 5))
    assert status == 200 and r["success"]
    assert (await inproc.call("gamma", "GET", f"/markets/slug/{m.slug}"))[0] == 200
    status, rows = await inproc.call("binance_rest", "GET",
                                     "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=3")
    assert status == 200 and len(rows) == 3
    assert (await inproc.call("admin", "GET", "/health"))[1]["ok"] is True
    async with inproc.http.ws_connect(inproc.url["binance_ws"] + "/ws") as ws:
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert orjson.loads((await ws.receive(timeout=5)).data) == {"result": [], "id": 1}
