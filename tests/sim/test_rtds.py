"""The sim's RTDS (Chainlink reference) socket, its series, its faults, and settlement on it."""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.error
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import websockets

from core.markets import SLOTS, market_slug
from sim.chainlink import ChainlinkModel
from sim.prices import PriceModel
from sim.rtds import MAX_CATCH_UP_S
from sim.testing import admin_request, set_fault

T0 = 1_800_000_000


def sub(symbol: str | None, action: str = "subscribe") -> str:
    s: dict[str, Any] = {"topic": "crypto_prices_chainlink", "type": "*"}
    if symbol is not None:
        s["filters"] = orjson.dumps({"symbol": symbol}).decode()
    return orjson.dumps({"action": action, "subscriptions": [s]}).decode()


DEADLINE_S = 30.0      # generous: a loaded machine is slow, never wrong


def symbols(msgs: list[dict[str, Any]]) -> set[str]:
    return {m["payload"]["symbol"] for m in msgs}


def wakes(msgs: list[dict[str, Any]]) -> set[int]:
    """The broadcaster wakes the messages came from (one send timestamp per wake)."""
    return {m["timestamp"] for m in msgs}


async def read_until(ws, done: Callable[[list[dict[str, Any]]], bool],
                     timeout: float = DEADLINE_S) -> list[dict[str, Any]]:
    """Data messages (parsed; PONGs skipped) until ``done(messages)`` holds; fails if it
    does not within ``timeout``."""
    out: list[dict[str, Any]] = []
    end = time.monotonic() + timeout
    while not done(out):
        left = end - time.monotonic()
        assert left > 0, f"condition not met; got {len(out)} messages: {out[-3:]}"
        text = await asyncio.wait_for(ws.recv(), left)
        if text != "PONG":
            out.append(orjson.loads(text))
    return out


async def through_pong(ws, timeout: float = DEADLINE_S) -> list[str]:
    """Send PING and read up to its PONG; returns the frames read before it. The server
    answers in order on the connection's one send queue, so after the PONG nothing comes
    that was queued before it handled the PING: whatever we sent (or set as a fault)
    before the PING is in effect for every frame that follows."""
    await ws.send("PING")
    before: list[str] = []
    end = time.monotonic() + timeout
    while (text := await asyncio.wait_for(ws.recv(), end - time.monotonic())) != "PONG":
        before.append(text)
    return before


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
        got = await read_until(ws, lambda m: len(m) >= 40)
        await through_pong(ws)                         # PING is answered
    for msg in got:
        assert set(msg) == {"topic", "type", "timestamp", "payload"}
        assert msg["topic"] == "crypto_prices_chainlink" and msg["type"] == "update"
        p = msg["payload"]
        assert set(p) == {"symbol", "timestamp", "value"} and p["symbol"] == "btc/usd"
        assert isinstance(p["value"], float) and p["timestamp"] % 1000 == 0
        assert msg["timestamp"] >= p["timestamp"]       # sent after it was observed
    # One observation per sim second, none skipped, unless the sim itself was paused (a
    # loaded machine) for longer than its catch-up limit: then the first message after the
    # gap was sent that limit after its observation.
    for a, b in itertools.pairwise(got):
        gap = b["payload"]["timestamp"] - a["payload"]["timestamp"]
        assert gap == 1000 or (gap > 1000 and b["timestamp"] - b["payload"]["timestamp"]
                               >= (MAX_CATCH_UP_S - 1) * 1000), (a, b)
    ts = [m["payload"]["timestamp"] for m in got]
    ref = admin_request(sim.admin, "GET",
                        f"/reference/btc?from={ts[0] // 1000}&to={ts[-1] // 1000}")
    by_ts = {r["ts_ms"]: r["value"] for r in ref}
    assert [by_ts[t] for t in ts] == [m["payload"]["value"] for m in got]


async def test_subscribe_and_unsubscribe_without_reconnecting(sim):
    """Each change is followed by a PING: after its PONG the change is in effect, so what
    follows is judged over whole broadcaster wakes (reading until a later wake's message
    arrives means the earlier wake was received whole)."""
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("eth/usd"))
        first = symbols(await read_until(ws, lambda m: len(wakes(m)) >= 3))
        await ws.send(sub("sol/usd"))
        await through_pong(ws)
        both = symbols(await read_until(ws, lambda m: len(wakes(m)) >= 3))
        await ws.send(sub("eth/usd", "unsubscribe"))
        await through_pong(ws)
        after = symbols(await read_until(ws, lambda m: len(wakes(m)) >= 3))
        await ws.send(sub("nope/usd"))                 # unknown: accepted, silent
        await ws.send("{not json")                     # ignored, the connection stays
        await ws.send(sub(None))                       # no filter: every symbol
        await through_pong(ws)
        every = symbols(await read_until(
            ws, lambda m: {"btc/usd", "eth/usd", "hype/usd", "doge/usd"} <= symbols(m)))
        # Quiet before closing: a client that stopped reading nine fast symbols has a full
        # receive queue, and its close handshake would wait out the close timeout.
        await ws.send(sub(None, "unsubscribe"))
        await ws.send(sub("sol/usd", "unsubscribe"))
        await through_pong(ws)
    assert first == {"eth/usd"} and both == {"eth/usd", "sol/usd"} and after == {"sol/usd"}
    assert "nope/usd" not in every


# -- faults -------------------------------------------------------------------------------------

async def test_rtds_drop_and_refuse(sim):
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("btc/usd"))
        await read_until(ws, lambda m: len(m) >= 1)
        set_fault(sim.admin, rtds_drop=True, rtds_refuse_s=30)
        with pytest.raises(websockets.ConnectionClosed) as e:
            while True:
                await asyncio.wait_for(ws.recv(), DEADLINE_S)
        assert e.value.rcvd is None                    # no close frame: the TCP link died
    with pytest.raises(websockets.InvalidStatus) as e2:
        async with websockets.connect(sim.endpoints.rtds):
            pass
    assert e2.value.response.status_code == 503
    set_fault(sim.admin, rtds_refuse_s=0)
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("btc/usd"))
        await read_until(ws, lambda m: len(m) >= 1)


async def test_rtds_stall_one_symbol_while_pongs_go_on(sim):
    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("btc/usd"))
        await ws.send(sub("xrp/usd"))
        await read_until(ws, lambda m: {"btc/usd", "xrp/usd"} <= symbols(m))
        set_fault(sim.admin, rtds_stall="btc/usd")
        await through_pong(ws)          # PONGs go on; what was queued before the stall is read
        during = await read_until(ws, lambda m: len(wakes(m)) >= 3)
        assert symbols(during) == {"xrp/usd"}
        set_fault(sim.admin, rtds_stall="")
        await read_until(ws, lambda m: "btc/usd" in symbols(m))


async def test_rtds_malformed_sends_exactly_n_bad_frames(sim):
    def ok(t: str) -> bool:
        try:
            p = orjson.loads(t)["payload"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return False
        return isinstance(p.get("value"), float) and isinstance(p.get("timestamp"), int)

    async with websockets.connect(sim.endpoints.rtds) as ws:
        await ws.send(sub("bnb/usd"))
        await read_until(ws, lambda m: len(m) >= 1)
        set_fault(sim.admin, rtds_malformed=4)
        # Read until 4 bad frames and then 8 good ones: a 5th bad frame would be among them.
        flags: list[bool] = []
        end = time.monotonic() + DEADLINE_S
        while flags.count(False) < 4 or flags[-8:] != [True] * 8:
            flags.append(ok(await asyncio.wait_for(ws.recv(), end - time.monotonic())))
    first_bad = flags.index(False)
    assert flags[first_bad:first_bad + 4] == [False] * 4, flags    # the next 4, in a row
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
