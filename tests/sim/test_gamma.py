"""Gamma-compatible market discovery: shapes, existence rules, filters, resolution."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import pytest

from core.markets import SLOTS, market_slug
from sim.testing import admin_request, resolution
from tests.sim.fixtures import GAMMA_MARKET, assert_same_shape

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def ts(iso: str) -> int:
    return int(datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, object]:
    async with http.get(url) as r:
        return r.status, await r.json()


async def test_current_and_next_windows_exist_and_later_ones_404(sim):
    now = sim.clock.now()
    async with aiohttp.ClientSession() as http:
        for slot in SLOTS:
            cur = slot.window_start(now + 1)       # +1: not on a boundary race
            for start, want in ((cur, 200), (cur + slot.window_s, 200),
                                (cur + 3 * slot.window_s, 404)):
                status, _ = await get(http, f"{sim.endpoints.gamma}/markets/slug/"
                                      f"{slot.slug(start)}")
                assert status == want, (slot.slug(start), status)
        for bad in ("nope", "btc-updown-5m-123", "btc-updown-7m-1795562100", "zzz-updown-5m-0"):
            status, body = await get(http, f"{sim.endpoints.gamma}/markets/slug/{bad}")
            assert status == 404 and "error" in body


async def test_market_fields_match_gamma(sim):
    now = sim.clock.now()
    start = int(now + 1) // 900 * 900
    slug = market_slug("eth", 900, start)
    async with aiohttp.ClientSession() as http:
        status, m = await get(http, f"{sim.endpoints.gamma}/markets/slug/{slug}")
    assert status == 200
    assert_same_shape(m, GAMMA_MARKET)
    assert m["slug"] == slug and m["negRisk"] is False and m["orderMinSize"] == 5
    assert m["orderPriceMinTickSize"] == 0.01 and m["feesEnabled"] is True
    assert json.loads(m["outcomes"]) == ["Up", "Down"]
    tokens = json.loads(m["clobTokenIds"])
    assert len(tokens) == 2 and all(t.isdigit() and len(t) > 60 for t in tokens)
    prices = [Decimal(p) for p in json.loads(m["outcomePrices"])]
    assert len(prices) == 2 and abs(sum(prices) - 1) < Decimal("0.0011")
    assert re.fullmatch(r"0x[0-9a-f]{64}", m["conditionId"])
    for f in ("endDate", "startDate", "eventStartTime"):
        assert ISO_Z.match(m[f]), m[f]
    assert ts(m["eventStartTime"]) == start and ts(m["endDate"]) == start + 900
    assert m["active"] is True and m["closed"] is False
    assert "Ethereum Up or Down" in m["question"] and m["question"].endswith("ET")


async def test_ids_are_deterministic_from_seed_and_slug(sim, own_sim):
    same, other = own_sim(seed=7), own_sim(seed=8)
    # Each sim has its own clock; this window is current in the new ones and past (but
    # retained) in the older shared one.
    slug = market_slug("btc", 900, int(same.clock.now()) // 900 * 900)
    async with aiohttp.ClientSession() as http:
        ms = [(await get(http, f"{g}/markets/slug/{slug}"))[1]
              for g in (sim.endpoints.gamma, same.endpoints.gamma, other.endpoints.gamma)]
    keys = ("clobTokenIds", "conditionId", "id")
    assert all(ms[0][k] == ms[1][k] for k in keys)
    assert ms[0]["clobTokenIds"] != ms[2]["clobTokenIds"]


async def test_listing_and_filters(sim):
    g = sim.endpoints.gamma
    async with aiohttp.ClientSession() as http:
        status, ms = await get(http, f"{g}/markets?limit=500")
        assert status == 200 and len(ms) >= 2 * len(SLOTS)    # current + next window
        assert all(m["closed"] is False for m in ms)
        slug = ms[0]["slug"]
        _, one = await get(http, f"{g}/markets?slug={slug}")
        assert [m["slug"] for m in one] == [slug]
        token = json.loads(ms[1]["clobTokenIds"])[1]
        _, by_tok = await get(http, f"{g}/markets?clob_token_ids={token}")
        assert [m["slug"] for m in by_tok] == [ms[1]["slug"]]
        # a window rolling over between two listings shifts them (every ~5 s wall at 60x):
        # ask for the page and the whole list again until a pair comes from one moment
        deadline = time.monotonic() + 30
        while True:
            _, page = await get(http, f"{g}/markets?limit=5&offset=5")
            _, again = await get(http, f"{g}/markets?limit=500")
            _, page2 = await get(http, f"{g}/markets?limit=5&offset=5")
            if page == page2:
                break
            assert time.monotonic() < deadline, "the listing never held still"
        assert [m["slug"] for m in page] == [m["slug"] for m in again[5:10]]
        _, none = await get(http, f"{g}/markets?active=false")
        assert none == []
        status, err = await get(http, f"{g}/markets?limit=abc")
        assert status == 422 and "error" in err
        status, ev = await get(http, f"{g}/events/slug/{slug}")
        assert status == 200 and ev["slug"] == slug
        assert ev["markets"][0]["conditionId"] == ms[0]["conditionId"]


@pytest.mark.timeout(60)
async def test_market_closes_and_resolves_from_the_feed(sim):
    g, rest = sim.endpoints.gamma, sim.endpoints.binance_rest
    start = int(sim.clock.now()) // 300 * 300
    slug = market_slug("doge", 300, start)
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:                                   # poll until resolved
            asked = sim.clock.now()       # before the request: the reply is at least this late
            status, m = await get(http, f"{g}/markets/slug/{slug}")
            assert status == 200
            if asked >= start + 300:
                assert m["acceptingOrders"] is False
            if m["closed"]:
                break
            assert time.monotonic() < deadline, "market did not resolve"
            await asyncio.sleep(0.05)
        assert m["umaResolutionStatus"] == "resolved"
        url = (f"{rest}/api/v3/klines?symbol=DOGEUSDT&interval=1m&startTime={start * 1000}"
               "&limit=5")
        _, rows = await get(http, url)
    # The market settles on the Chainlink reference at its start and end (sim/chainlink.py),
    # the admin API also shows what the window's Binance candles say.
    ref = admin_request(sim.admin, "GET", f"/reference/doge?from={start}&to={start + 300}")
    o, c = Decimal(str(ref[0]["value"])), Decimal(str(ref[-1]["value"]))
    assert ref[0]["ts_ms"] == start * 1000 and ref[-1]["ts_ms"] == (start + 300) * 1000
    want = ["1", "0"] if c >= o else ["0", "1"]
    assert json.loads(m["outcomePrices"]) == want
    info = resolution(sim.admin, slug)
    assert info["source"] == "chainlink"
    assert info["outcome"] == ("Up" if c >= o else "Down")
    assert Decimal(info["open"]) == o and Decimal(info["close"]) == c
    bo, bc = Decimal(rows[0][1]), Decimal(rows[4][4])
    assert Decimal(info["binance_open"]) == bo and Decimal(info["binance_close"]) == bc
    assert info["binance_outcome"] == ("Up" if bc >= bo else "Down")
