"""CLOB edge cases on the in-process sim (tests/sim/inproc.py), whose clock stands still: a
bought-out book side, cancels by market, the account limit, what the exchange forgets."""

from __future__ import annotations

import asyncio
import json

from eth_account import Account
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import OrderArgs, OrderMarketCancelParams

from sim.books import fair_up
from sim.exchange import MAX_SETTLEMENTS
from tests.sim.inproc import InProc, Trader, U, l1_headers

NO_BOOK = {"error": "No orderbook exists for the requested token id"}


async def one_sided_checks(sim: InProc, token: str, has_bid: bool) -> None:
    """Every price endpoint, for a token whose asks are gone (and maybe its bids)."""
    status, book = await sim.call("clob", "GET", f"/book?token_id={token}")
    assert status == 200 and book["asks"] == [] and bool(book["bids"]) == has_bid
    status, body = await sim.call("clob", "GET", f"/price?token_id={token}&side=BUY")
    assert (status, "price" in body) == (200, True) if has_bid else (status, body) == (404,
                                                                                       NO_BOOK)
    for path in (f"/price?token_id={token}&side=SELL", f"/midpoint?token_id={token}",
                 f"/spread?token_id={token}"):
        assert await sim.call("clob", "GET", path) == (404, NO_BOOK), path
    status, body = await sim.call("clob", "GET", f"/last-trade-price?token_id={token}")
    assert status == 200 and 0 < float(body["price"]) < 1
    # The batch forms document no 404: a token without the needed side is left out.
    assert await sim.call("clob", "POST", "/midpoints", [{"token_id": token}]) == (200, {})
    assert await sim.call("clob", "POST", "/spreads", [{"token_id": token}]) == (200, {})
    status, body = await sim.call("clob", "POST", "/prices", [
        {"token_id": token, "side": "BUY"}, {"token_id": token, "side": "SELL"}])
    assert status == 200 and body == ({token: {"BUY": body[token]["BUY"]}} if has_bid else {})


async def gamma_and_market_checks(sim: InProc, slug: str, cid: str) -> dict:
    status, g = await sim.call("gamma", "GET", f"/markets/slug/{slug}")
    assert status == 200, g
    up, down = (float(p) for p in json.loads(g["outcomePrices"]))
    assert 0 <= up <= 1 and abs(up + down - 1) < 1e-9
    for path in (f"/events/slug/{slug}", f"/markets?slug={slug}", "/markets", "/events"):
        status, body = await sim.call("gamma", "GET", path)
        assert status == 200, (path, body)
    status, cm = await sim.call("clob", "GET", f"/markets/{cid}")
    assert status == 200, cm
    prices = [t["price"] for t in cm["tokens"]]
    assert all(0 <= p <= 1 for p in prices) and abs(sum(prices) - 1) < 0.002
    return g


async def test_bought_out_book_sides_get_documented_errors_not_500s(inproc):
    t = await Trader.make(inproc)
    m = inproc.market()
    # Take every ask level of Up: Up has bids only (and Down, its mirror, asks only).
    status, r = await t.call("POST", "/order", t.sweep_buy(m.up_token, 50_000))
    assert status == 200 and r["success"] and len(r["tradeIDs"]) >= 5, r
    await one_sided_checks(inproc, m.up_token, has_bid=True)
    g = await gamma_and_market_checks(inproc, m.slug, m.condition_id)
    assert "bestBid" in g and "bestAsk" not in g and "spread" not in g
    # Buying every Down ask takes the Up bids too: both sides of Up are empty.
    status, r = await t.call("POST", "/order", t.sweep_buy(m.down_token, 50_000))
    assert status == 200 and r["success"], r
    await one_sided_checks(inproc, m.up_token, has_bid=False)
    await one_sided_checks(inproc, m.down_token, has_bid=False)
    g = await gamma_and_market_checks(inproc, m.slug, m.condition_id)
    assert not {"bestBid", "bestAsk", "spread"} & set(g)
    # With no book to take a mid from, the prices are the crowd's fair value.
    fair = fair_up(inproc.ctx.prices, inproc.ctx.chainlink, m, inproc.ctx.clock.now())
    assert abs(float(json.loads(g["outcomePrices"])[0]) - fair) <= 0.0005
    _, cm = await inproc.call("clob", "GET", f"/markets/{m.condition_id}")
    assert abs(cm["tokens"][0]["price"] - fair) <= 0.0005


def real_client(sim: InProc) -> ClobClient:
    c = ClobClient(sim.url["clob"], 137, key=Account.create().key.hex())
    c.set_api_creds(c.create_or_derive_api_key())
    return c


async def test_cancel_market_orders_cancels_only_the_named_market_and_asset(inproc):
    """With py-clob-client-v2 (in a thread; the sim serves on this loop)."""
    c = await asyncio.to_thread(real_client, inproc)
    m1, m2 = inproc.market("btc"), inproc.market("eth")
    ids = {}
    for name, token in (("m1up", m1.up_token), ("m1down", m1.down_token),
                        ("m2up", m2.up_token), ("m2down", m2.down_token)):
        r = await asyncio.to_thread(c.create_and_post_order, OrderArgs(
            token_id=token, price=0.05, size=10, side="BUY"))
        assert r["status"] == "live", r
        ids[name] = r["orderID"]

    async def cancel(**kw: str) -> list[str]:
        out = await asyncio.to_thread(c.cancel_market_orders, OrderMarketCancelParams(**kw))
        assert out["not_canceled"] == {}
        return out["canceled"]

    assert await cancel(market=m1.condition_id, asset_id=m1.up_token) == [ids["m1up"]]
    assert await cancel(asset_id=m2.down_token) == [ids["m2down"]]
    assert await cancel(market=m1.condition_id) == [ids["m1down"]]
    assert [o["id"] for o in await asyncio.to_thread(c.get_open_orders)] == [ids["m2up"]]
    assert await cancel(market=m1.condition_id) == []
    assert await cancel() == [ids["m2up"]]          # no filter: every order of the account


async def test_account_limit_evicts_only_accounts_that_never_traded(inproc):
    ex = inproc.ex
    ex.max_accounts = 4
    traders = [await Trader.make(inproc, n) for n in range(1, 5)]
    m = inproc.market()
    status, _ = await traders[0].call("POST", "/order", traders[0].limit_buy(m.up_token, 5, 10))
    assert status == 200
    for n in range(5, 9):                      # four more addresses: four evictions
        await Trader.make(inproc, n)
    assert len(ex.by_address) == 4 and len(ex.by_key) == 4
    assert traders[0].address in ex.by_address       # it has an order: never evicted
    status, orders = await traders[0].call("GET", "/data/orders")
    assert status == 200 and orders["count"] == 1
    assert await traders[1].call("GET", "/data/orders") == (401, {
        "error": "Unauthorized/Invalid api key"})
    again = await Trader.make(inproc, 2)       # deriving again rebuilds the same account
    assert again.creds == traders[1].creds
    for t in [again, *[await Trader.make(inproc, n) for n in (7, 8)]]:
        status, _ = await t.call("POST", "/v1/heartbeats", {"heartbeat_id": ""})
        assert status == 200
    status, body = await inproc.call("clob", "GET", "/auth/derive-api-key",
                                     headers=l1_headers("0x" + "f" * 40))
    assert status == 503 and set(body) == {"error"}
    assert len(ex.by_address) == 4


async def test_resolution_settles_and_forgetting_a_market_drops_its_state(inproc):
    t = await Trader.make(inproc)
    m = inproc.market()
    # the cheaper side, so that a buy at 0.50 finds asks whatever the seed's path did
    fair = fair_up(inproc.ctx.prices, inproc.ctx.chainlink, m, inproc.ctx.clock.now())
    token = m.up_token if fair <= 0.5 else m.down_token
    status, r = await t.call("POST", "/order", t.order(token, "BUY", 10 * U, 20 * U, "FAK"))
    assert status == 200 and r["success"], r
    ex, reg = inproc.ex, inproc.ctx.markets
    acc = ex.by_key[t.creds["apiKey"]]
    assert token in ex._last_price and acc.positions[token] > 0
    reg._advance(m, m.end + 60)                # close and resolve now
    assert m.outcome is not None and acc.positions.get(token, 0) == 0
    assert [s["slug"] for s in acc.settlements] == [m.slug]
    assert acc.settlements.maxlen == MAX_SETTLEMENTS
    reg._forget(m)
    assert not {m.up_token, m.down_token} & set(ex._last_price)
    assert not [o for o in ex.orders.values() if o.market is m]
    assert not [x for x in ex.trades if x["market"] == m.condition_id]
    assert not [k for k in ex._taken if k[0] == m.id]
