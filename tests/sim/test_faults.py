"""Every fault switch of the admin API, and the order log."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from eth_account import Account
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import OrderArgs
from py_clob_client_v2.exceptions import PolyApiException

from core.markets import market_slug
from sim.testing import admin_request, clear_faults, order_log, set_fault
from tests.waiting import wait_for


async def aset(sim, **kw: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, \
            http.post(f"{sim.admin}/faults", json=kw) as r:
        assert r.status == 200, await r.text()
        return await r.json()


DEADLINE_S = 30.0      # generous: a loaded machine is slow, never wrong


async def frames_until(ws, done: Callable[[list[str]], bool],
                       timeout: float = DEADLINE_S) -> list[str]:
    """Text frames until ``done(frames)`` holds; fails if it does not within ``timeout``."""
    out: list[str] = []
    end = time.monotonic() + timeout
    while not done(out):
        out.append(await asyncio.wait_for(ws.recv(), end - time.monotonic()))
    return out


async def through_reply(ws, rid: int) -> dict[str, Any]:
    """Send LIST_SUBSCRIPTIONS and read up to its reply, which it returns. Replies and data
    share the connection's one send queue, so nothing after the reply was queued before the
    server handled the request: a fault set before it is in effect for every later frame."""
    await ws.send(orjson.dumps({"method": "LIST_SUBSCRIPTIONS", "id": rid}).decode())
    end = time.monotonic() + DEADLINE_S
    while True:
        msg = orjson.loads(await asyncio.wait_for(ws.recv(), end - time.monotonic()))
        if msg.get("id") == rid:
            return msg


def streams_of(texts: list[str]) -> list[str]:
    out = []
    for t in texts:
        msg = orjson.loads(t)
        if "stream" in msg:
            out.append(msg["stream"])
    return out


async def test_ws_drop_closes_every_connection_abruptly(sim):
    # 30 s per message: generous deadlines only; a passing run waits ~0.1 s for each
    url = sim.endpoints.binance_ws
    async with websockets.connect(url + "/ws/btcusdt@kline_1m") as a, \
            websockets.connect(url + "/stream?streams=ethusdt@kline_1m") as b:
        await asyncio.wait_for(a.recv(), 30)
        await asyncio.wait_for(b.recv(), 30)
        await aset(sim, ws_drop=True)
        for ws in (a, b):
            with pytest.raises(websockets.ConnectionClosed) as e:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            assert e.value.rcvd is None              # no close frame: the TCP link just died
    async with websockets.connect(url + "/ws/btcusdt@kline_1m") as c:   # reconnect works
        assert orjson.loads(await asyncio.wait_for(c.recv(), 30))["e"] == "kline"


async def test_ws_stall_one_stream_keeps_the_connection_open(sim):
    url = sim.endpoints.binance_ws + "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"

    def eth(texts: list[str]) -> list[dict[str, Any]]:
        return [m["data"] for m in map(orjson.loads, texts)
                if m.get("stream") == "ethusdt@kline_1m"]

    async with websockets.connect(url) as ws:
        await asyncio.wait_for(ws.recv(), DEADLINE_S)
        await aset(sim, ws_stall="btcusdt@kline_1m")
        # still answering; and from its reply on, every frame was queued under the stall
        assert await through_reply(ws, 9) == {
            "result": ["btcusdt@kline_1m", "ethusdt@kline_1m"], "id": 9}
        # until eth's final of a candle: a minute boundary, where btc's final was due too
        got = await frames_until(ws, lambda t: len(eth(t)) >= 5
                                 and any(e["k"]["x"] for e in eth(t)))
        assert "btcusdt@kline_1m" not in streams_of(got)
        await aset(sim, ws_stall="")
        await frames_until(ws, lambda t: "btcusdt@kline_1m" in streams_of(t))


async def test_ws_stall_everything_sends_no_data_but_pings_go_on(sim):
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(sim.endpoints.binance_ws + "/ws/btcusdt@kline_1m",
                            autoping=False) as ws:
        await ws.receive(timeout=DEADLINE_S)
        await aset(sim, ws_stall="*")
        # The reply to this marks the stall: data before it was queued before the stall.
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        replied, texts, pings = False, 0, 0
        end = time.monotonic() + DEADLINE_S
        while pings < 3:              # three ping periods: each one had data due in it
            msg = await ws.receive(timeout=end - time.monotonic())
            if msg.type == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
                if replied:
                    pings += 1
            elif msg.type == aiohttp.WSMsgType.TEXT:
                if replied:
                    texts += 1
                elif orjson.loads(msg.data).get("id") == 1:
                    replied = True
            else:
                pytest.fail(f"unexpected {msg.type}: {msg.data!r}")
        assert texts == 0 and not ws.closed


async def test_ws_malformed_sends_exactly_n_bad_frames(sim):
    def ok(t: str) -> bool:
        try:
            m = orjson.loads(t)
        except orjson.JSONDecodeError:
            return False
        return isinstance(m, dict) and isinstance(m.get("k"), dict) and isinstance(m.get("E"), int)

    async with websockets.connect(sim.endpoints.binance_ws + "/ws/bnbusdt@kline_1m") as ws:
        await asyncio.wait_for(ws.recv(), DEADLINE_S)
        await aset(sim, ws_malformed=5)
        # until 5 bad frames and then 5 good ones: a 6th bad one would be among them
        texts = await frames_until(ws, lambda t: [ok(x) for x in t].count(False) >= 5
                                   and all(ok(x) for x in t[-5:]))
    flags = [ok(t) for t in texts]
    first_bad = flags.index(False)
    assert flags[first_bad:first_bad + 5] == [False] * 5, flags     # the next 5, in a row
    assert flags.count(False) == 5, flags


async def test_server_shutdown_event_then_disconnect(sim):
    url = sim.endpoints.binance_ws + "/stream?streams=btcusdt@kline_1m"
    async with websockets.connect(url) as ws:
        await asyncio.wait_for(ws.recv(), 5)
        await aset(sim, ws_shutdown=0.3)
        seen = None
        with pytest.raises(websockets.ConnectionClosed) as e:
            while True:
                msg = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                if msg.get("stream") == "!serverShutdown":
                    seen = msg["data"]
        assert seen is not None and seen["e"] == "serverShutdown" and isinstance(seen["E"], int)
        assert e.value.rcvd is not None and e.value.rcvd.code == 1001


async def test_ws_refuse_rejects_new_connections_for_a_while(sim):
    await aset(sim, ws_refuse_s=30)
    with pytest.raises(websockets.InvalidStatus) as e:
        async with websockets.connect(sim.endpoints.binance_ws + "/ws/btcusdt@kline_1m"):
            pass
    assert e.value.response.status_code == 503
    clear_faults(sim.admin)
    async with websockets.connect(sim.endpoints.binance_ws + "/ws/btcusdt@kline_1m") as ws:
        await asyncio.wait_for(ws.recv(), 5)


def _get(url: str) -> tuple[int, Any, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def test_rest_error_for_n_requests_then_recovers(sim):
    kl = f"{sim.endpoints.binance_rest}/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=1"
    set_fault(sim.admin, rest_error=503, rest_error_count=3, rest_target="binance_rest")
    got = [_get(kl) for _ in range(4)]
    assert [g[0] for g in got] == [503, 503, 503, 200]
    assert set(got[0][1]) == {"code", "msg"} and "X-MBX-USED-WEIGHT-1M" in got[0][2]
    # Targeted: gamma and the CLOB were not touched.
    assert _get(f"{sim.endpoints.clob}/time")[0] == 200
    set_fault(sim.admin, rest_error=500, rest_target=["gamma", "clob"])
    status, body, _ = _get(f"{sim.endpoints.clob}/ok")
    assert status == 500 and set(body) == {"error"}
    assert _get(f"{sim.endpoints.gamma}/markets?limit=1")[0] == 500
    assert _get(kl)[0] == 200
    clear_faults(sim.admin)
    assert _get(f"{sim.endpoints.gamma}/markets?limit=1")[0] == 200


def test_rest_429_with_retry_after(sim):
    set_fault(sim.admin, rest_429=2)
    kl = f"{sim.endpoints.binance_rest}/api/v3/klines?symbol=ETHUSDT&interval=5m&limit=1"
    got = [_get(kl) for _ in range(3)]
    assert [g[0] for g in got] == [429, 429, 200]
    assert int(got[0][2]["Retry-After"]) >= 1 and got[0][1]["code"] == -1003


def test_bad_fault_is_refused_and_changes_nothing(sim):
    before = admin_request(sim.admin, "GET", "/faults")
    for body in ({"nope": 1}, {"ws_malformed": -1}, {"rest_error": 200}, {"ws_stall": 5},
                 {"order_delay_s": "x"}, {"ws_shutdown": 1e308}, {"ws_shutdown": -1},
                 {"ws_shutdown": "soon"}, {"rest_target": 5}, {"rest_target": {"clob": 1}}):
        with pytest.raises(urllib.error.HTTPError) as e:
            admin_request(sim.admin, "POST", "/faults", body)
        assert e.value.code == 400
    assert admin_request(sim.admin, "GET", "/faults") == before
    req = urllib.request.Request(f"{sim.admin}/faults", data=b"{oops", method="POST")
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(req, timeout=5)


def _client_and_market(sim) -> tuple[ClobClient, str, float]:
    c = ClobClient(sim.endpoints.clob, 137, key=Account.create().key.hex())
    c.set_api_creds(c.create_or_derive_api_key())
    # always the next window: listed and open for all of its 900 s, so the tests' resting
    # orders and delayed replies never race the end of the current one
    start = int(sim.clock.now()) // 900 * 900 + 900
    deadline = time.monotonic() + 10
    while True:
        status, m, _ = _get(f"{sim.endpoints.gamma}/markets/slug/"
                            f"{market_slug('eth', 900, start)}")
        if status == 200 and m["acceptingOrders"]:
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)                        # poll until the book opens
    up = json.loads(m["clobTokenIds"])[0]
    bid = float(c.get_order_book(up)["bids"][-1]["price"])
    return c, up, round(max(bid - 0.1, 0.01), 2)


def test_order_reject_then_accept(sim):
    c, up, price = _client_and_market(sim)
    set_fault(sim.admin, order_reject="sim says no", order_reject_count=1)
    with pytest.raises(PolyApiException) as e:
        c.create_and_post_order(OrderArgs(token_id=up, price=price, size=5, side="BUY"))
    assert e.value.status_code == 400 and e.value.error_msg == {"error": "sim says no"}
    r = c.create_and_post_order(OrderArgs(token_id=up, price=price, size=5, side="BUY"))
    assert r["success"] is True
    statuses = [e["status"] for e in order_log(sim.admin)[-2:]]
    assert statuses == [400, 200]
    c.cancel_all()


def test_order_delay_makes_the_reply_late_but_the_order_exists(sim):
    """The duplicate-order trap: the client times out, yet the exchange has the order."""
    c, up, price = _client_and_market(sim)
    order = c.create_order(OrderArgs(token_id=up, price=price, size=5, side="BUY"))
    from py_clob_client_v2.order_utils.model.order_data_v2 import order_to_json_v2
    body = json.dumps(order_to_json_v2(order, c.creds.api_key, "GTC"), separators=(",", ":"))
    headers = c._l2_headers("POST", "/order", body=body, serialized_body=body)
    headers["Content-Type"] = "application/json"
    n0 = len(order_log(sim.admin))
    set_fault(sim.admin, order_delay_s=1.5)
    req = urllib.request.Request(f"{sim.endpoints.clob}/order", data=body.encode(),
                                 method="POST", headers=headers)
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        urllib.request.urlopen(req, timeout=0.3)
    # it was placed despite the timeout (the sim handles the request on its own schedule:
    # under load that can be after our 0.3 s, so wait for it rather than look once)
    wait_for(lambda: len(c.get_open_orders()) == 1, 30, "the timed-out order to be resting")
    clear_faults(sim.admin)
    with pytest.raises(PolyApiException) as e:   # a blind resend is a duplicate
        c.post_order(order)
    assert "Duplicated" in e.value.error_msg["error"]
    log = order_log(sim.admin)[n0:]
    mine = [x for x in log if isinstance(x["body"], dict)
            and x["body"].get("order", {}).get("salt") == int(order.salt)]
    assert len(mine) == 2 and all(x["method"] == "POST" for x in mine)
    c.cancel_all()
