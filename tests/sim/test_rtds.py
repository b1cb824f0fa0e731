"""The sim's RTDS (Chainlink reference) socket, its series, its faults, and settlement on it."""

from __future__ import annotations

import asyncio
import time
import urllib.error
from typing import Any

import orjson
import pytest
import websockets

from core.markets import SLOTS, market_slug
from sim.chainlink import ChainlinkModel
from sim.prices import PriceModel
from sim.testing import admin_request, set_fault

T0 = 1_800_000_000


def sub(symbol: str | None, action: str = "subscribe") -> str:
    s: dict[str, Any] = {"topic": "crypto_prices_chainlink", "type": "*"}
    if symbol is not None:
        s["filters"] = orjson.dumps({"symbol": symbol}).decode()
    return orjson.dumps({"action": action, "subscriptions": [s]}).decode()


async def updates(ws, seconds: float) -> list[dict[str, Any]]:
    """Every data message (parsed) received during ``seconds`` of wall time; PONGs skipped."""
    out: list[dict[str, Any]] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            text = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            break
        if text != "PONG":
            out.append(orjson.loads(text))
    return out


# -- the series ------------------------------------------------------------------------------

def test_series_follows_binance_with_a_lag_and_a_small_deviation():
    prices = PriceModel(5, T0, keep_blocks=None)
    cl = ChainlinkModel(prices)
    for asset, s in cl.by_asset.items():
        assert s.lag_s in (1, 2) and s.symbol == f"{asset}/usd"
        path = prices.by_asset[asset]
        devs = [s.value_at(t) / path.price_at(t - s.lag_s) - 1 for t in range(T0 - 3000, T0)]
        assert max(abs(d) for d in devs) < 20e-4, asset          # a few bps, never 20
        assert sum(abs(d) for d in devs) / len(devs) > 0.3e-4, asset   # not identical
    again = ChainlinkModel(PriceModel(5, T0, keep_blocks=None))
    assert [again.by_asset["btc"].value_at(t) for t in range(T0 - 100, T0)] == \
        [cl.by_asset["btc"].value_at(t) for t in range(T0 - 100, T0)]
    other = ChainlinkModel(PriceModel(6, T0, keep_blocks=None))
    assert other.by_asset["btc"].value_at(T0 - 1) != cl.by_asset["btc"].value_at(T0 - 1)


async def test_a_window_where_binance_and_chainlink_disagree_settles_on_chainlink(inproc):
    """Search the last hours for windows whose Binance candles and reference disagree; each
    one settles on the reference (the sim's resolution, Gamma and the exchange's payout)."""
    reg, cl = inproc.ctx.markets, inproc.ctx.chainlink
    now = int(inproc.ctx.clock.now())
    found = []
    for slot in SLOTS:
        start = slot.window_start(now) - 2 * slot.window_s     # ended more than 5 s ago
        while start > now - 2 * 3600 and len(found) < 3:
            m = reg.get(slot.slug(start))
            assert m is not None
            reg._advance(m, now)
            info = reg.resolution_info(m.slug)
            assert info["resolved"] and info["source"] == "chainlink"
            o, c = cl.window_open_close(slot.asset, m.start, m.end)
            assert info["outcome"] == ("Up" if c >= o else "Down")
            if info["binance_outcome"] != info["outcome"]:
                found.append(m)
            start -= slot.window_s
    assert found, "no disagreeing window in two hours of eight assets (statistically absurd)"
    m = found[0]
    status, g = await inproc.call("gamma", "GET", f"/markets/slug/{m.slug}")
    assert status == 200 and g["closed"]
    assert orjson.loads(g["outcomePrices"]) == (["1", "0"] if m.outcome == "Up" else ["0", "1"])
    status, ev = await inproc.call("gamma", "GET", f"/events/slug/{m.slug}")
    assert ev["eventMetadata"]["priceToBeat"] == cl.by_asset[m.asset].value_at(m.start)
    assert "Chainlink" in g["description"] and "not according to other" in g["description"]


# -- the socket ---------------------------------------------------------------------------------

async def test_message_shape_cadence_and_ping(sim):
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("btc/usd"))
        got = await updates(ws, 1.5)
        await ws.send("PING")
        pong = None
        while pong != "PONG":
            pong = await asyncio.wait_for(ws.recv(), 5)
    assert len(got) >= 40                              # 1.5 wall s at speed 60: ~90 seconds
    for msg in got:
        assert set(msg) == {"topic", "type", "timestamp", "payload"}
        assert msg["topic"] == "crypto_prices_chainlink" and msg["type"] == "update"
        p = msg["payload"]
        assert set(p) == {"symbol", "timestamp", "value"} and p["symbol"] == "btc/usd"
        assert isinstance(p["value"], float) and p["timestamp"] % 1000 == 0
        assert msg["timestamp"] >= p["timestamp"]       # sent after it was observed
    ts = [m["payload"]["timestamp"] for m in got]
    assert ts == list(range(ts[0], ts[-1] + 1000, 1000)), "one observation per sim second"
    ref = admin_request(sim.admin, "GET",
                        f"/reference/btc?from={ts[0] // 1000}&to={ts[-1] // 1000}")
    assert [r["value"] for r in ref] == [m["payload"]["value"] for m in got]


async def test_subscribe_and_unsubscribe_without_reconnecting(sim):
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("eth/usd"))
        first = {m["payload"]["symbol"] for m in await updates(ws, 0.6)}
        await ws.send(sub("sol/usd"))
        await updates(ws, 0.3)
        both = {m["payload"]["symbol"] for m in await updates(ws, 0.6)}
        await ws.send(sub("eth/usd", "unsubscribe"))
        await updates(ws, 0.3)
        after = {m["payload"]["symbol"] for m in await updates(ws, 0.6)}
        await ws.send(sub("nope/usd"))                 # unknown: accepted, silent
        await ws.send("{not json")                     # ignored, the connection stays
        await ws.send(sub(None))                       # no filter: every symbol
        await updates(ws, 0.3)
        every = {m["payload"]["symbol"] for m in await updates(ws, 0.6)}
    assert first == {"eth/usd"} and both == {"eth/usd", "sol/usd"} and after == {"sol/usd"}
    assert {"btc/usd", "eth/usd", "hype/usd", "doge/usd"} <= every


# -- faults -------------------------------------------------------------------------------------

async def test_rtds_drop_and_refuse(sim):
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("btc/usd"))
        assert await updates(ws, 0.5)
        set_fault(sim.admin, rtds_drop=True, rtds_refuse_s=30)
        with pytest.raises(websockets.ConnectionClosed) as e:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert e.value.rcvd is None                    # no close frame: the TCP link died
    with pytest.raises(websockets.InvalidStatus) as e2:
        async with websockets.connect(sim.endpoints.rtds):
            pass
    assert e2.value.response.status_code == 503
    set_fault(sim.admin, rtds_refuse_s=0)
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("btc/usd"))
        assert await updates(ws, 0.5)


async def test_rtds_stall_one_symbol_while_pongs_go_on(sim):
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("btc/usd"))
        await ws.send(sub("xrp/usd"))
        await updates(ws, 0.3)
        set_fault(sim.admin, rtds_stall="btc/usd")
        await updates(ws, 0.2)                         # in flight before the stall
        await ws.send("PING")
        end = time.monotonic() + 1.0
        texts: list[str] = []
        while (left := end - time.monotonic()) > 0:
            try:
                texts.append(await asyncio.wait_for(ws.recv(), left))
            except TimeoutError:
                break
        syms = {orjson.loads(t)["payload"]["symbol"] for t in texts if t != "PONG"}
        assert "PONG" in texts and syms == {"xrp/usd"}
        set_fault(sim.admin, rtds_stall="")
        assert "btc/usd" in {m["payload"]["symbol"] for m in await updates(ws, 0.6)}


async def test_rtds_malformed_sends_exactly_n_bad_frames(sim):
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("bnb/usd"))
        await updates(ws, 0.3)
        set_fault(sim.admin, rtds_malformed=4)
        texts = [await asyncio.wait_for(ws.recv(), 5) for _ in range(12)]

    def ok(t: str) -> bool:
        try:
            p = orjson.loads(t)["payload"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False
        return isinstance(p.get("value"), float) and isinstance(p.get("timestamp"), int)

    flags = [ok(t) for t in texts]
    assert flags.count(False) == 4, flags


def test_bad_rtds_faults_are_refused(sim):
    before = admin_request(sim.admin, "GET", "/faults")
    for body in ({"rtds_stall": 5}, {"rtds_malformed": -1}, {"rtds_refuse_s": 1e9},
                 {"rtds_malformed": True}):
        with pytest.raises(urllib.error.HTTPError) as e:
            admin_request(sim.admin, "POST", "/faults", body)
        assert e.value.code == 400
    assert admin_request(sim.admin, "GET", "/faults") == before


def test_resolution_slug_is_reference_based(sim):
    now = int(sim.clock.now())
    start = now // 300 * 300 - 300
    info = admin_request(sim.admin, "GET", f"/markets/{market_slug('eth', 300, start)}"
                         "/resolution")
    ref = admin_request(sim.admin, "GET", f"/reference/eth?from={start}&to={start}")
    assert float(info["open"]) == ref[0]["value"] and info["source"] == "chainlink"
