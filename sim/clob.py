"""Polymarket-CLOB-compatible HTTP API: the paths py-clob-client-v2 calls.

Auth: L1 endpoints (/auth/api-key, /auth/derive-api-key) need well-formed POLY_ADDRESS,
POLY_SIGNATURE, POLY_TIMESTAMP and POLY_NONCE headers (the EIP-712 signature is not checked:
there is no chain). L2 endpoints need POLY_ADDRESS, POLY_API_KEY, POLY_PASSPHRASE,
POLY_TIMESTAMP and a POLY_SIGNATURE that is the real HMAC-SHA256 of
``timestamp + METHOD + path + body`` under the account's secret, so a client that signs wrongly
fails here as it would in production. Timestamps are not checked against the (accelerated) sim
clock. Errors are ``{"error": "..."}`` with the real status codes; a price that needs an empty
(bought-out) book side gets the documented 404 "No orderbook exists ...". An unexpected
exception is logged and answered 500 ``{"error": "internal server error"}``, never a crash.

Every order request (POST /order, POST /orders, DELETE /order, /orders, /cancel-all,
/cancel-market-orders) is appended to the order log before faults or validation apply, and its
entry always gets the reply's status.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sim.context import SimContext
from sim.exchange import (
    Account,
    AccountLimit,
    Exchange,
    OrderError,
    fmt_c,
    order_id,
    parse_order,
)
from sim.httputil import (
    ascii_int,
    http_reason,
    injected_fault_reply,
    json_response,
    log_unexpected,
    read_json,
)
from sim.markets import Market
from sim.orderlog import loggable_body

log = logging.getLogger("sim.clob")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ADDRESS_RE = re.compile(r"^0x[0-9a-fA-F]{40}$")
SIG_RE = re.compile(r"^0x[0-9a-fA-F]{130}$")
ORDER_PATHS = {("POST", "/order"), ("POST", "/orders"), ("DELETE", "/order"),
               ("DELETE", "/orders"), ("DELETE", "/cancel-all"),
               ("DELETE", "/cancel-market-orders")}
PAGE = 100
END_CURSOR = "LTE="
MAX_BATCH = 15          # orders per POST /orders, as on Polymarket
MAX_BOOKS = 500
MAX_TOKEN_DIGITS = 78        # a 256-bit token id
UNAUTHORIZED = "Unauthorized/Invalid api key"
NO_BOOK = "No orderbook exists for the requested token id"


class ApiError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


class EmptySide(ApiError):
    """The book exists but the side a value needs is empty (everything there was bought)."""

    def __init__(self) -> None:
        super().__init__(404, NO_BOOK)


def _cursor(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode()


def _offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        val = int(base64.b64decode(cursor, validate=True).decode())
    except (ValueError, binascii.Error) as e:
        raise ApiError(400, "invalid next_cursor") from e
    return -1 if val < 0 else val


def _page(items: list[dict[str, Any]], cursor: str | None) -> dict[str, Any]:
    off = _offset(cursor)
    if off < 0:
        return {"data": [], "next_cursor": END_CURSOR, "limit": PAGE, "count": 0}
    chunk = items[off: off + PAGE]
    nxt = _cursor(off + PAGE) if off + PAGE < len(items) else END_CURSOR
    return {"data": chunk, "next_cursor": nxt, "limit": PAGE, "count": len(chunk)}


class Clob:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    @property
    def ex(self) -> Exchange:
        assert self.ctx.exchange is not None
        return self.ctx.exchange

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        for path in ("/", "/ok"):
            r.add_get(path, self.ok)
        r.add_get("/time", self.time)
        r.add_get("/version", self.version)
        r.add_post("/auth/api-key", self.create_api_key)
        r.add_get("/auth/derive-api-key", self.derive_api_key)
        r.add_get("/auth/api-keys", self.api_keys)
        r.add_delete("/auth/api-key", self.delete_api_key)
        r.add_get("/auth/ban-status/closed-only", self.closed_only)
        r.add_get("/book", self.book)
        r.add_post("/books", self.books)
        for name in ("price", "midpoint", "spread", "last-trade-price"):
            r.add_get(f"/{name}", self._one(name))
        for name, single in (("prices", "price"), ("midpoints", "midpoint"),
                             ("spreads", "spread"), ("last-trades-prices", "last-trade-price")):
            r.add_post(f"/{name}", self._many(single))
        r.add_get("/tick-size", self.tick_size)
        r.add_get("/neg-risk", self.neg_risk)
        r.add_get("/fee-rate", self.fee_rate)
        r.add_get("/clob-markets/{cid}", self.clob_market)
        r.add_get("/markets-by-token/{token}", self.market_by_token)
        r.add_get("/markets/{cid}", self.market)
        r.add_post("/order", self.post_order)
        r.add_post("/orders", self.post_orders)
        r.add_delete("/order", self.cancel_order)
        r.add_delete("/orders", self.cancel_orders)
        r.add_delete("/cancel-all", self.cancel_all)
        r.add_delete("/cancel-market-orders", self.cancel_market_orders)
        r.add_get("/data/orders", self.data_orders)
        r.add_get("/data/order/{id}", self.data_order)
        r.add_get("/data/trades", self.data_trades)
        r.add_post("/v1/heartbeats", self.heartbeats)
        r.add_get("/balance-allowance", self.balance_allowance)
        r.add_get("/balance-allowance/update", self.balance_allowance)
        r.add_get("/order-scoring", self.order_scoring)
        r.add_post("/orders-scoring", self.orders_scoring)
        r.add_get("/notifications", self.notifications)
        r.add_delete("/notifications", self.ok)
        return app

    # -- plumbing ------------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = None
        try:
            if (request.method, request.path) in ORDER_PATHS:
                entry, early = await self._log_order_request(request)
                resp = early if early is not None else await self._serve(request, handler)
            else:
                resp = await self._serve(request, handler)
        except Exception:          # the last resort: a logged JSON 500, never a crash
            log_unexpected(log, request)
            resp = json_response({"error": "internal server error"}, 500)
        # Before the reply leaves: what the client learns is on disk (sim/ledger.py).
        self.ctx.save_ledger()
        if entry is not None:
            entry["status"] = resp.status
            delay = self.ctx.faults.order_delay_s
            if delay > 0:
                # The order is already processed; only the reply is late, as when a client's
                # timeout fires on an order the exchange did take.
                await asyncio.sleep(delay)
        return resp

    async def _log_order_request(self, request: web.Request
                                 ) -> tuple[dict[str, Any], web.Response | None]:
        """Append the request to the order log (before auth, faults and validation); a body
        over aiohttp's size limit is answered 413 at once (a second read would see only the
        rest of the stream)."""
        now = self.ctx.clock.now()
        try:
            body, raw = await read_json(request)
        except web.HTTPRequestEntityTooLarge as e:
            entry = self.ctx.order_log.record(now, request.method, request.path,
                                              f"(body over the {request.client_max_size} "
                                              "byte limit)")
            return entry, json_response({"error": http_reason(e)}, e.status)
        entry = self.ctx.order_log.record(now, request.method, request.path,
                                          loggable_body(body, raw))
        return entry, None

    async def _serve(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        faulted = injected_fault_reply(self.ctx.faults.take_rest_fault("clob"))
        if faulted is not None:
            return faulted
        try:
            return await handler(request)
        except ApiError as e:
            return json_response({"error": e.msg}, e.status)
        except web.HTTPException as e:
            return json_response({"error": http_reason(e)}, e.status)

    def _l1(self, request: web.Request) -> tuple[str, int]:
        h = request.headers
        addr, sig = h.get("POLY_ADDRESS", ""), h.get("POLY_SIGNATURE", "")
        nonce = ascii_int(h.get("POLY_NONCE", "0"), 78)
        if not ADDRESS_RE.fullmatch(addr) or not SIG_RE.fullmatch(sig) \
                or ascii_int(h.get("POLY_TIMESTAMP", "")) is None or nonce is None:
            raise ApiError(401, "Invalid L1 Request headers")
        return addr, nonce

    async def _l2(self, request: web.Request) -> Account:
        h = request.headers
        acc = self.ex.by_key.get(h.get("POLY_API_KEY", ""))
        if acc is None or h.get("POLY_PASSPHRASE") != acc.passphrase \
                or h.get("POLY_ADDRESS", "").lower() != acc.address.lower():
            raise ApiError(401, UNAUTHORIZED)
        ts = h.get("POLY_TIMESTAMP", "")
        raw = (await request.read()).decode(errors="replace")
        msg = ts + request.method + request.path + (raw.replace("'", '"') if raw else "")
        try:
            key = base64.urlsafe_b64decode(acc.secret)
        except (ValueError, binascii.Error) as e:
            raise ApiError(401, UNAUTHORIZED) from e
        # errors="replace": a header or path that is not valid text cannot match anyway.
        want = base64.urlsafe_b64encode(
            hmac.new(key, msg.encode(errors="replace"), hashlib.sha256).digest())
        # compare_digest refuses non-ASCII str, so compare bytes.
        got = h.get("POLY_SIGNATURE", "").encode(errors="replace")
        if not hmac.compare_digest(want, got):
            raise ApiError(401, UNAUTHORIZED)
        self.ex.touch(acc)
        return acc

    async def _json(self, request: web.Request, empty: Any = None) -> Any:
        """The parsed JSON body; an empty body is ``empty`` if given, else invalid."""
        body, raw = await read_json(request)
        if empty is not None and not raw.strip():
            return empty
        if isinstance(body, ValueError):
            raise ApiError(400, "Invalid payload")
        return body

    def _market_of(self, token: str | None) -> Market:
        if ascii_int(token, MAX_TOKEN_DIGITS) is None:
            raise ApiError(400, "Invalid token id")
        reg = self.ctx.markets
        m = reg.token(token) if reg is not None else None
        if m is None or not m.book_exists(self.ctx.clock.now()):
            raise ApiError(404, NO_BOOK)
        return m

    # -- public --------------------------------------------------------------------------------

    async def ok(self, request: web.Request) -> web.Response:
        return json_response("OK")

    async def time(self, request: web.Request) -> web.Response:
        return json_response(int(self.ctx.clock.now()))

    async def version(self, request: web.Request) -> web.Response:
        return json_response({"version": 2})

    async def book(self, request: web.Request) -> web.Response:
        token = request.query.get("token_id")
        m = self._market_of(token)
        return json_response(self.ex.book(m, token, self.ctx.clock.now()))

    async def books(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if not isinstance(body, list) or not all(isinstance(b, dict) for b in body):
            raise ApiError(400, "Invalid payload")
        if len(body) > MAX_BOOKS:
            raise ApiError(400, "Payload exceeds the limit")
        now = self.ctx.clock.now()
        out = []
        for b in body:
            token = str(b.get("token_id", ""))
            m = self._market_of(token)
            out.append(self.ex.book(m, token, now))
        return json_response(out)

    def _value(self, name: str, token: str | None, side: str | None) -> dict[str, Any]:
        """One /price, /midpoint, /spread or /last-trade-price reply. A value that needs a
        book side which is empty (bought out) gets the documented 404 error, not a number."""
        m = self._market_of(token)
        q = self.ex.quote(m, self.ctx.clock.now(), token)
        if q is None:
            raise ApiError(404, NO_BOOK)
        if name == "last-trade-price":
            return {"price": f"{q['last']:.2f}", "side": ""}
        if name == "price":
            if side not in ("BUY", "SELL"):
                raise ApiError(400, "Invalid side")
            # BUY: the best bid; SELL: the best ask (Polymarket's documented convention).
            p = q["bid"] if side == "BUY" else q["ask"]
            if p is None:
                raise EmptySide()
            return {"price": f"{p:.2f}"}
        if q["bid"] is None or q["ask"] is None:
            raise EmptySide()
        if name == "midpoint":
            return {"mid": f"{(q['bid'] + q['ask']) / 2:.3f}".rstrip("0").rstrip(".")}
        return {"spread": f"{q['ask'] - q['bid']:.2f}"}

    def _one(self, name: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            q = request.query
            return json_response(self._value(name, q.get("token_id"), q.get("side")))
        return handler

    def _many(self, name: str) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            body = await self._json(request)
            if not isinstance(body, list) or not all(isinstance(b, dict) for b in body):
                raise ApiError(400, "Invalid payload")
            if len(body) > MAX_BOOKS:
                raise ApiError(400, "Payload exceeds the limit")
            out: dict[str, Any] = {}
            for b in body:
                token = str(b.get("token_id", ""))
                try:
                    val = self._value(name, token, b.get("side"))
                except EmptySide:
                    continue       # the batch forms document no 404: leave the token out
                if name == "price":
                    out.setdefault(token, {})[b.get("side")] = val["price"]
                else:
                    out[token] = next(iter(val.values()))
            return json_response(out)
        return handler

    async def tick_size(self, request: web.Request) -> web.Response:
        self._market_of(request.query.get("token_id"))
        return json_response({"minimum_tick_size": 0.01})

    async def neg_risk(self, request: web.Request) -> web.Response:
        self._market_of(request.query.get("token_id"))
        return json_response({"neg_risk": False})

    async def fee_rate(self, request: web.Request) -> web.Response:
        self._market_of(request.query.get("token_id"))
        return json_response({"base_fee": 0})

    def _by_condition(self, cid: str) -> Market:
        reg = self.ctx.markets
        m = reg.condition(cid) if reg is not None else None
        if m is None:
            raise ApiError(404, "market not found")
        return m

    async def clob_market(self, request: web.Request) -> web.Response:
        m = self._by_condition(request.match_info["cid"])
        now = self.ctx.clock.now()
        return json_response({
            "c": m.condition_id, "t": [{"t": m.up_token, "o": "Up"},
                                       {"t": m.down_token, "o": "Down"}],
            "mts": 0.01, "nr": False, "mos": 5, "fd": {"r": 0.07, "e": 1, "to": True},
            "ao": m.accepting_orders(now), "cl": m.outcome is not None,
        })

    async def market_by_token(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        m = self.ctx.markets.token(token) if self.ctx.markets else None
        if m is None:
            raise ApiError(404, "market not found")
        return json_response({"condition_id": m.condition_id, "primary_token_id": m.up_token,
                              "secondary_token_id": m.down_token})

    async def market(self, request: web.Request) -> web.Response:
        m = self._by_condition(request.match_info["cid"])
        now = self.ctx.clock.now()
        q = self.ex.quote(m, now)

        def tok(token: str, outcome: str) -> dict[str, Any]:
            if m.outcome is not None:
                price = 1.0 if m.outcome == outcome else 0.0
            else:
                up = q["mid"] if q else 0.5    # mid, or fair value when a side is empty
                price = up if outcome == "Up" else 1 - up
            return {"token_id": token, "outcome": outcome, "price": round(price, 3),
                    "winner": m.outcome == outcome}

        return json_response({
            "condition_id": m.condition_id, "question_id": m.question_id,
            "question": m.question, "market_slug": m.slug,
            "tokens": [tok(m.up_token, "Up"), tok(m.down_token, "Down")],
            "active": True, "closed": m.outcome is not None, "archived": False,
            "accepting_orders": m.accepting_orders(now), "enable_order_book": True,
            "minimum_order_size": 5, "minimum_tick_size": 0.01, "neg_risk": False,
            "end_date_iso": f"{m.end}", "game_start_time": None, "seconds_delay": 0,
            "maker_base_fee": 0, "taker_base_fee": 0,
        })

    # -- auth ------------------------------------------------------------------------------

    def _account(self, request: web.Request) -> Account:
        addr, nonce = self._l1(request)
        try:
            return self.ex.account_for(addr, nonce)
        except AccountLimit as e:
            raise ApiError(503, str(e)) from e

    async def create_api_key(self, request: web.Request) -> web.Response:
        return json_response(self._account(request).creds())

    async def derive_api_key(self, request: web.Request) -> web.Response:
        return json_response(self._account(request).creds())

    async def api_keys(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        return json_response({"apiKeys": [acc.api_key]})

    async def delete_api_key(self, request: web.Request) -> web.Response:
        await self._l2(request)
        return json_response("OK")

    async def closed_only(self, request: web.Request) -> web.Response:
        await self._l2(request)
        return json_response({"closed_only": False})

    # -- orders ----------------------------------------------------------------------------

    def _place(self, acc: Account, body: Any) -> dict[str, Any]:
        reject = self.ctx.faults.take_order_reject()
        if reject is not None:
            raise OrderError(reject)
        return self.ex.place(acc, body)

    async def post_order(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        body = await self._json(request)
        try:
            return json_response(self._place(acc, body))
        except OrderError as e:
            return json_response({"error": e.msg}, e.status)

    async def post_orders(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        body = await self._json(request)
        if not isinstance(body, list) or not body:
            raise ApiError(400, "Invalid payload")
        if len(body) > MAX_BATCH:
            raise ApiError(400, f"Too many orders in payload: max {MAX_BATCH}")
        out = []
        for item in body:
            try:
                out.append(self._place(acc, item))
            except Exception as e:
                # One bad item must not turn into a 500 for a batch whose other orders were
                # placed: the client would think none was.
                if isinstance(e, OrderError):
                    msg = e.msg
                else:
                    log_unexpected(log, request)
                    msg = "internal server error"
                oid = ""
                with contextlib.suppress(OrderError):
                    oid = order_id(parse_order(item)[0])
                out.append({"success": False, "errorMsg": msg, "orderID": oid,
                            "status": "", "makingAmount": "", "takingAmount": "",
                            "transactionsHashes": [], "tradeIDs": []})
        return json_response(out)

    async def cancel_order(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        body = await self._json(request)
        if not isinstance(body, dict) or not isinstance(body.get("orderID"), str):
            raise ApiError(400, "Invalid order payload")
        return json_response(self.ex.cancel(acc, [body["orderID"]]))

    async def cancel_orders(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        body = await self._json(request)
        if not isinstance(body, list) or not all(isinstance(i, str) for i in body):
            raise ApiError(400, "Invalid order payload")
        return json_response(self.ex.cancel(acc, body))

    async def cancel_all(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        return json_response(self.ex.cancel_where(acc))

    async def cancel_market_orders(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        # The middleware and _l2 have read the body already (aiohttp caches it), so
        # request.can_read_body is False here: parse the cached body, empty meaning {}.
        body = await self._json(request, empty={})
        if not isinstance(body, dict):
            raise ApiError(400, "Invalid payload")
        market, asset = body.get("market") or None, body.get("asset_id") or None
        if not isinstance(market, str | None) or not isinstance(asset, str | None):
            raise ApiError(400, "Invalid payload")
        return json_response(self.ex.cancel_where(acc, market, asset))

    async def data_orders(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        q = request.query
        items = [o.to_json() for o in self.ex.live.values() if o.account is acc
                 and (not q.get("id") or o.id == q["id"])
                 and (not q.get("market") or o.market.condition_id == q["market"])
                 and (not q.get("asset_id") or o.token == q["asset_id"])]
        return json_response(_page(items, q.get("next_cursor")))

    async def data_order(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        o = self.ex.orders.get(request.match_info["id"])
        if o is None or o.account is not acc:
            raise ApiError(404, "order not found")
        return json_response(o.to_json())

    async def data_trades(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        q = request.query
        now = self.ctx.clock.now()
        # Checked up front, so a bad value is a 400 even when there is no trade to filter.
        before = _int(q["before"]) if q.get("before") else None
        after = _int(q["after"]) if q.get("after") else None

        def keep(t: dict[str, Any]) -> bool:
            return (t["owner"] == acc.api_key
                    and (not q.get("id") or t["id"] == q["id"])
                    and (not q.get("market") or t["market"] == q["market"])
                    and (not q.get("asset_id") or t["asset_id"] == q["asset_id"])
                    and (before is None or int(t["match_time"]) < before)
                    and (after is None or int(t["match_time"]) > after))

        items = [self.ex.trade_view(t, now) for t in self.ex.trades if keep(t)]
        return json_response(_page(items, q.get("next_cursor")))

    async def heartbeats(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        return json_response(self.ex.heartbeat(acc))

    async def balance_allowance(self, request: web.Request) -> web.Response:
        acc = await self._l2(request)
        q = request.query
        asset_type = q.get("asset_type", "COLLATERAL")
        usdc_res, share_res = self.ex.reserved(acc)
        if asset_type == "CONDITIONAL":
            token = q.get("token_id", "")
            bal = acc.positions.get(token, 0) - share_res.get(token, 0)
        elif asset_type == "COLLATERAL":
            bal = acc.balance_u - usdc_res
        else:
            raise ApiError(400, "invalid asset type")
        allowance = str(2**256 - 1)
        return json_response({"balance": str(max(bal, 0)), "allowance": allowance,
                              "allowances": {"0xE111180000d2663C0091e4f400237545B87B996B":
                                             allowance}})

    async def order_scoring(self, request: web.Request) -> web.Response:
        await self._l2(request)
        return json_response({"scoring": False})

    async def orders_scoring(self, request: web.Request) -> web.Response:
        await self._l2(request)
        body = await self._json(request)
        ids = body if isinstance(body, list) else []
        return json_response({str(i): False for i in ids})

    async def notifications(self, request: web.Request) -> web.Response:
        await self._l2(request)
        return json_response([])


def _int(v: str) -> int:
    n = ascii_int(v)
    if n is None:
        raise ApiError(400, "invalid timestamp")
    return n


__all__ = ["Clob", "fmt_c"]
