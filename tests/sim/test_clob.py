"""The CLOB, driven by the real py-clob-client-v2 with a throwaway key: sign, post, list,
cancel, fills, fees, settlement, and the error shapes."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from eth_account import Account
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import (
    BalanceAllowanceParams,
    BookParams,
    MarketOrderArgs,
    OrderArgs,
    OrderPayload,
    OrderType,
    TradeParams,
)
from py_clob_client_v2.exceptions import PolyApiException

from core.markets import market_slug
from sim.testing import order_log
from tests.sim.fixtures import (
    CLOB_BOOK,
    CLOB_ERROR,
    CLOB_OPEN_ORDER,
    CLOB_POST_ORDER_REPLY,
    CLOB_TRADE,
    assert_same_shape,
)

U = 1_000_000


def http_json(url: str, method: str = "GET", body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else
                                      json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def client(sim) -> ClobClient:
    """A fresh account: a new throwaway key, its API creds made by the sim."""
    c = ClobClient(sim.endpoints.clob, 137, key=Account.create().key.hex())
    c.set_api_creds(c.create_or_derive_api_key())
    return c


def tradable(sim, asset: str = "btc", window: int = 900, min_left: float = 120.0
             ) -> dict[str, Any]:
    """A market of ``asset`` with at least ``min_left`` sim seconds of trading left."""
    now = sim.clock.now()
    start = int(now) // window * window
    if start + window - now < min_left:
        start += window
    deadline = time.monotonic() + 10
    while True:
        status, m = http_json(f"{sim.endpoints.gamma}/markets/slug/"
                              f"{market_slug(asset, window, start)}")
        if status == 200 and m["acceptingOrders"]:
            up, down = json.loads(m["clobTokenIds"])
            return {**m, "up": up, "down": down, "start": start, "end": start + window}
        assert time.monotonic() < deadline, f"no tradable {asset} market: {status} {m}"
        time.sleep(0.05)            # poll: the next window's book opens a moment after listing


def best(c: ClobClient, token: str) -> tuple[float, float]:
    book = c.get_order_book(token)
    return float(book["bids"][-1]["price"]), float(book["asks"][-1]["price"])


def market_buy(c: ClobClient, token: str, amount: float, slip: float = 0.05,
               order_type: str = OrderType.FOK) -> dict[str, Any]:
    """Buy ``amount`` dollars at up to ``slip`` above the best ask. At speed 60 the book can
    move between reading it and posting (a few sim seconds), so a kill is retried with a
    fresh book; the property under test is the fill, not the race."""
    for attempt in range(5):
        _, ask = best(c, token)
        order = c.create_market_order(MarketOrderArgs(
            token_id=token, amount=amount, side="BUY", price=min(round(ask + slip, 2), 0.99),
            order_type=order_type))
        try:
            return c.post_order(order, order_type)
        except PolyApiException as e:
            if attempt == 4 or "killed" not in str(e.error_msg):
                raise
    raise AssertionError("unreachable")


def usdc(c: ClobClient) -> int:
    return int(c.get_balance_allowance(BalanceAllowanceParams(asset_type="COLLATERAL"))
               ["balance"])


def shares(c: ClobClient, token: str) -> int:
    return int(c.get_balance_allowance(BalanceAllowanceParams(
        asset_type="CONDITIONAL", token_id=token))["balance"])


def test_sign_post_list_cancel_with_the_real_client(sim):
    c = client(sim)
    m = tradable(sim)
    bid, _ = best(c, m["up"])
    price = round(max(bid - 0.10, 0.01), 2)
    r = c.create_and_post_order(OrderArgs(token_id=m["up"], price=price, size=10, side="BUY"))
    assert_same_shape(r, {k: v for k, v in CLOB_POST_ORDER_REPLY.items()
                          if k not in ("transactionsHashes", "tradeIDs")})
    assert r["success"] is True and r["status"] == "live" and r["orderID"].startswith("0x")
    oid = r["orderID"]
    open_orders = c.get_open_orders()
    assert [o["id"] for o in open_orders] == [oid]
    assert_same_shape(open_orders[0], CLOB_OPEN_ORDER)
    o = c.get_order(oid)
    assert o["status"] == "LIVE" and o["original_size"] == "10" and o["size_matched"] == "0"
    assert float(o["price"]) == price and o["side"] == "BUY" and o["asset_id"] == m["up"]
    assert o["market"] == m["conditionId"] and o["outcome"] == "Up"
    # The resting order shows in the public book, at its price.
    book = c.get_order_book(m["up"])
    level = [b for b in book["bids"] if float(b["price"]) == price]
    assert level and float(level[0]["size"]) >= 10
    # While it rests its cost is reserved.
    assert usdc(c) == 1000 * U - round(10 * price * U)
    assert c.cancel_order(OrderPayload(orderID=oid)) == {"canceled": [oid], "not_canceled": {}}
    assert c.get_open_orders() == []
    assert c.get_order(oid)["status"] == "CANCELED"
    again = c.cancel_order(OrderPayload(orderID=oid))
    assert again["canceled"] == [] and oid in again["not_canceled"]
    # The order log saw both requests, with their bodies.
    log = [e for e in order_log(sim.admin)
           if isinstance(e["body"], dict) and (e["body"].get("orderID") == oid
               or e["body"].get("order", {}).get("signer") == c.get_address())]
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("POST", "/order", 200), ("DELETE", "/order", 200), ("DELETE", "/order", 200)]
    assert {"id", "time", "path", "method", "body"} <= set(log[0])


def test_fok_market_buy_fills_with_the_fee_formula(sim):
    c = client(sim)
    m = tradable(sim)
    r = market_buy(c, m["up"], 10)
    assert_same_shape(r, CLOB_POST_ORDER_REPLY)
    assert r["status"] == "matched" and r["tradeIDs"] and r["transactionsHashes"]
    spent = float(r["makingAmount"])
    assert 9.999 <= spent <= 10.0
    trades = [c.get_trades(TradeParams(id=t))[0] for t in r["tradeIDs"]]
    cost = fee = bought = 0.0
    for t in trades:
        assert_same_shape(t, CLOB_TRADE)
        assert t["taker_order_id"] == r["orderID"] and t["trader_side"] == "TAKER"
        assert t["side"] == "BUY" and t["asset_id"] == m["up"] and t["outcome"] == "Up"
        size, p = float(t["size"]), float(t["price"])
        assert 0.01 <= p <= 0.99
        assert abs(float(t["fee"]) - size * 0.07 * p * (1 - p)) <= 1e-6
        cost += size * p
        fee += float(t["fee"])
        bought += size
    assert abs(cost - spent) < 1e-4 and abs(bought - float(r["takingAmount"])) < 1e-6
    assert abs(usdc(c) / U - (1000 - spent - fee)) < 1e-5
    assert abs(shares(c, m["up"]) / U - bought) < 1e-6
    o = c.get_order(r["orderID"])
    assert o["status"] == "MATCHED" and len(o["associate_trades"]) == len(trades)


def test_fok_that_cannot_fill_is_killed_and_fak_fills_what_it_can(sim):
    c = client(sim)
    m = tradable(sim)
    bid, _ = best(c, m["down"])
    below = round(max(bid - 0.10, 0.01), 2)
    fok = c.create_market_order(MarketOrderArgs(token_id=m["down"], amount=20, side="BUY",
                                                price=below))
    with pytest.raises(PolyApiException) as e:
        c.post_order(fok, OrderType.FOK)
    assert e.value.status_code == 400
    assert_same_shape(e.value.error_msg, CLOB_ERROR)
    assert "FOK" in e.value.error_msg["error"]
    fak = c.create_market_order(MarketOrderArgs(token_id=m["down"], amount=20, side="BUY",
                                                price=below, order_type=OrderType.FAK))
    with pytest.raises(PolyApiException) as e:
        c.post_order(fak, OrderType.FAK)
    assert "FAK" in e.value.error_msg["error"]
    assert usdc(c) == 1000 * U                  # nothing filled, nothing spent
    # A FAK larger than the best level at its limit fills partially.
    r = market_buy(c, m["down"], 900, slip=0.0, order_type=OrderType.FAK)
    assert r["status"] == "matched"
    assert 0 < float(r["makingAmount"]) < 900
    assert c.get_open_orders() == []             # the rest was killed, not rested


def test_gtc_that_crosses_fills_and_sell_needs_shares(sim):
    c = client(sim)
    m = tradable(sim, "sol")
    _, ask = best(c, m["up"])
    r = c.create_and_post_order(OrderArgs(token_id=m["up"], price=min(ask + 0.02, 0.99),
                                          size=10, side="BUY"))
    assert r["status"] == "matched"
    o = c.get_order(r["orderID"])
    assert o["status"] == "MATCHED" and float(o["size_matched"]) == 10
    assert shares(c, m["up"]) == 10 * U
    with pytest.raises(PolyApiException) as e:   # cannot sell what it does not hold
        c.create_and_post_order(OrderArgs(token_id=m["up"], price=0.01, size=20, side="SELL"))
    assert e.value.error_msg == {"error": "not enough balance / allowance"}
    bid, _ = best(c, m["up"])
    r = c.create_and_post_order(OrderArgs(token_id=m["up"], price=max(round(bid - 0.05, 2),
                                                                      0.01),
                                          size=10, side="SELL"), order_type=OrderType.FOK)
    assert r["status"] == "matched" and shares(c, m["up"]) == 0


def test_book_format_order_and_mirror(sim):
    c = client(sim)
    m = tradable(sim, "xrp")
    books = c.get_order_books([BookParams(token_id=m["up"]), BookParams(token_id=m["down"])])
    up, down = books
    for b in books:
        assert_same_shape(b, CLOB_BOOK)
        bids = [float(x["price"]) for x in b["bids"]]
        asks = [float(x["price"]) for x in b["asks"]]
        assert bids == sorted(bids) and asks == sorted(asks, reverse=True)  # best last
        assert bids[-1] < asks[-1]
        assert b["hash"] == c.get_order_book_hash(dict(b))
        assert b["market"] == m["conditionId"] and b["tick_size"] == "0.01"
    assert float(down["bids"][-1]["price"]) == pytest.approx(1 - float(up["asks"][-1]["price"]))
    assert float(down["asks"][-1]["price"]) == pytest.approx(1 - float(up["bids"][-1]["price"]))
    mid = float(c.get_midpoint(m["up"])["mid"])
    assert 0 < mid < 1
    assert c.get_tick_size(m["up"]) == "0.01" and c.get_neg_risk(m["up"]) is False
    info = c.get_clob_market_info(m["conditionId"])
    assert info["fd"] == {"r": 0.07, "e": 1, "to": True}
    assert {t["t"] for t in info["t"]} == {m["up"], m["down"]}


@pytest.mark.timeout(60)
def test_positions_settle_at_one_or_zero(sim):
    c = client(sim)
    # Enough time left that neither side is nearly certain (and so has a thin book).
    m = tradable(sim, "hype", window=300, min_left=150)
    fills = {token: float(market_buy(c, token, 20)["takingAmount"])
             for token in (m["up"], m["down"])}
    before = usdc(c)
    deadline = time.monotonic() + 30
    while True:                                  # poll until the market resolves
        _status, g = http_json(f"{sim.endpoints.gamma}/markets/slug/{m['slug']}")
        if g["closed"]:
            break
        assert time.monotonic() < deadline, "market did not resolve"
        time.sleep(0.05)
    winner = m["up"] if json.loads(g["outcomePrices"]) == ["1", "0"] else m["down"]
    assert shares(c, m["up"]) == 0 and shares(c, m["down"]) == 0
    assert abs((usdc(c) - before) / U - fills[winner]) < 1e-6


def test_auth_and_bad_input_get_the_real_error_shapes(sim):
    clob = sim.endpoints.clob
    status, body = http_json(f"{clob}/order", "POST", {"order": {}})
    assert status == 401 and body == {"error": "Unauthorized/Invalid api key"}
    c = client(sim)
    # A body the HMAC was not computed over is refused.
    headers = c._l2_headers("POST", "/order", body={}, serialized_body="{}")
    status, body = http_json(f"{clob}/order", "POST", b'{"x":1}', headers)
    assert status == 401
    # A well-signed but malformed order.
    raw = json.dumps({"order": {"salt": "x"}, "owner": c.creds.api_key, "orderType": "GTC"})
    headers = c._l2_headers("POST", "/order", body=raw, serialized_body=raw)
    status, body = http_json(f"{clob}/order", "POST", raw.encode(), headers)
    assert status == 400 and body == {"error": "Invalid order payload"}
    for url, want in ((f"{clob}/book?token_id=abc", 400), (f"{clob}/book?token_id=123", 404),
                      (f"{clob}/book", 400)):
        status, body = http_json(url)
        assert status == want and set(body) == {"error"}
    m = tradable(sim)
    status, body = http_json(f"{clob}/price?token_id={m['up']}&side=FOO")
    assert status == 400 and body == {"error": "Invalid side"}
    # Posting the same signed order twice: the second is a duplicate.
    bid, _ = best(c, m["up"])
    order = c.create_order(OrderArgs(token_id=m["up"], price=max(round(bid - 0.1, 2), 0.01),
                                     size=5, side="BUY"))
    assert c.post_order(order)["success"] is True
    with pytest.raises(PolyApiException) as e:
        c.post_order(order)
    assert "Duplicated" in e.value.error_msg["error"]
    assert c.cancel_all()["canceled"]
    assert c.post_heartbeat()["heartbeat_id"]


def test_batch_post_and_cancels(sim):
    from py_clob_client_v2.clob_types import OrderMarketCancelParams, PostOrdersV2Args

    c = client(sim)
    m = tradable(sim, "bnb")
    o1 = c.create_order(OrderArgs(token_id=m["up"], price=0.02, size=5, side="BUY"))
    o2 = c.create_order(OrderArgs(token_id=m["down"], price=0.02, size=5, side="BUY"))
    r = c.post_orders([PostOrdersV2Args(order=o1, orderType=OrderType.GTC),
                       PostOrdersV2Args(order=o2, orderType=OrderType.GTC),
                       PostOrdersV2Args(order=o1, orderType=OrderType.GTC)])
    assert [x["success"] for x in r] == [True, True, False]
    assert "Duplicated" in r[2]["errorMsg"] and r[2]["orderID"] == r[0]["orderID"]
    assert c.cancel_orders([r[0]["orderID"]])["canceled"] == [r[0]["orderID"]]
    out = c.cancel_market_orders(OrderMarketCancelParams(market=m["conditionId"]))
    assert out["canceled"] == [r[1]["orderID"]]
    assert c.get_open_orders() == []
