"""Gamma-compatible market discovery: /markets, /markets/{id}, /markets/slug/{slug},
/events and /events/slug/{slug}.

As on the real API, ``outcomes``, ``outcomePrices`` and ``clobTokenIds`` are JSON-encoded
strings, dates are ISO 8601 with a Z, ``startDate`` is when the market was listed and
``eventStartTime`` when its window starts. ``/markets`` hides closed markets unless ``closed``
is given. Unknown markets get 404; bad query values get 422.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from sim.books import fair_up
from sim.context import SimContext
from sim.httputil import (
    ascii_int,
    http_reason,
    injected_fault_reply,
    json_response,
    log_unexpected,
)
from sim.markets import Market, iso

log = logging.getLogger("sim.gamma")

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
FEE_SCHEDULE = {"exponent": 1, "rate": 0.07, "takerOnly": True, "rebateRate": 0}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class GammaError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status, self.msg = status, msg


def _fmt_prob(p: float) -> str:
    return f"{p:.3f}".rstrip("0").rstrip(".") if p not in (0.0, 1.0) else str(int(p))


def _description(m: Market) -> str:
    name = m.question.split(" Up or Down")[0]
    sym = m.asset.upper()
    return (f'This market will resolve to "Up" if the {name} price at the end of the time '
            "range specified in the title is greater than or equal to the price at the "
            'beginning of that range. Otherwise, it will resolve to "Down".\n'
            "The resolution source for this market is information from Chainlink, "
            f"specifically the {sym}/USD data stream (in the noblink simulator: its simulated "
            f"Chainlink series on RTDS, {m.asset}/usd). Please note that this market is about "
            f"the price according to Chainlink data stream {sym}/USD, not according to other "
            "sources or spot markets.")


class Gamma:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/markets", self.markets)
        r.add_get("/markets/slug/{slug}", self.market_by_slug)
        r.add_get("/markets/{id}", self.market_by_id)
        r.add_get("/events", self.events)
        r.add_get("/events/slug/{slug}", self.event_by_slug)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        faulted = injected_fault_reply(self.ctx.faults.take_rest_fault("gamma"))
        if faulted is not None:
            return faulted
        try:
            return await handler(request)
        except GammaError as e:
            return json_response({"type": "error", "error": e.msg}, e.status)
        except web.HTTPException as e:
            return json_response({"type": "error", "error": http_reason(e)}, e.status)
        except Exception:          # the last resort: a logged JSON 500, never a crash
            log_unexpected(log, request)
            return json_response({"type": "error", "error": "internal server error"}, 500)

    # -- shapes ------------------------------------------------------------------------------

    def market_json(self, m: Market, now: float) -> dict[str, Any]:
        ex = self.ctx.exchange
        if m.outcome is not None:
            prices = ["1", "0"] if m.outcome == "Up" else ["0", "1"]
            bid = ask = last = None
        else:
            q = ex.quote(m, now) if ex is not None else None
            mid = q["mid"] if q else fair_up(self.ctx.prices, self.ctx.chainlink, m,
                                                     now)
            prices = [_fmt_prob(mid), _fmt_prob(1 - mid)]
            bid, ask, last = (q["bid"], q["ask"], q["last"]) if q else (None, None, None)
        accepting = m.accepting_orders(now)
        vol = ex.volume(m) if ex is not None else 0.0
        out: dict[str, Any] = {
            "id": m.id, "question": m.question, "conditionId": m.condition_id, "slug": m.slug,
            "resolutionSource": f"https://data.chain.link/streams/{m.asset}-usd",
            "endDate": iso(m.end), "startDate": iso(m.created), "eventStartTime": iso(m.start),
            "createdAt": iso(m.created), "updatedAt": iso(now),
            "endDateIso": iso(m.end)[:10], "startDateIso": iso(m.created)[:10],
            "description": _description(m),
            "outcomes": orjson.dumps(["Up", "Down"], option=0).decode().replace(",", ", "),
            "outcomePrices": orjson.dumps(prices).decode().replace(",", ", "),
            "clobTokenIds": orjson.dumps([m.up_token, m.down_token]).decode().replace(",", ", "),
            "volume": f"{vol:.6f}", "volumeNum": vol, "volumeClob": vol,
            "liquidity": "0", "liquidityNum": 0.0,
            "active": True, "closed": m.outcome is not None, "archived": False,
            "new": False, "featured": False, "restricted": True,
            "acceptingOrders": accepting, "enableOrderBook": True,
            "questionID": m.question_id, "marketMakerAddress": "",
            "orderPriceMinTickSize": 0.01, "orderMinSize": 5, "negRisk": False,
            "feesEnabled": True, "feeSchedule": FEE_SCHEDULE,
            "umaResolutionStatus": "resolved" if m.outcome is not None else "",
            "groupItemTitle": "", "seriesSlug": f"{m.asset}-up-or-down-{m.slot.window_s // 60}m",
        }
        # A bought-out side has no best price: that field (and the spread) is left out.
        if bid is not None:
            out["bestBid"] = bid
        if ask is not None:
            out["bestAsk"] = ask
        if bid is not None and ask is not None:
            out["spread"] = round(ask - bid, 4)
        if last is not None:
            out["lastTradePrice"] = last
        return out

    def event_json(self, m: Market, now: float) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if now >= m.start:
            info = self.ctx.markets.resolution_info(m.slug) if self.ctx.markets else None
            if info and info.get("open"):
                meta["priceToBeat"] = float(info["open"])
        if m.close_price is not None:
            meta["finalPrice"] = float(m.close_price)
        return {
            "id": str(int(m.id) + 10_000_000), "ticker": m.slug, "slug": m.slug,
            "title": m.question, "description": _description(m),
            "startDate": iso(m.created), "creationDate": iso(m.created),
            "endDate": iso(m.end), "startTime": iso(m.start),
            "active": True, "closed": m.outcome is not None, "archived": False,
            "restricted": True, "enableOrderBook": True, "negRisk": False,
            "eventMetadata": meta, "markets": [self.market_json(m, now)],
        }

    # -- handlers ----------------------------------------------------------------------------

    def _get(self, slug: str) -> Market:
        reg = self.ctx.markets
        m = reg.get(slug) if reg is not None else None
        if m is None:
            raise GammaError(404, "not found")
        return m

    async def market_by_slug(self, request: web.Request) -> web.Response:
        m = self._get(request.match_info["slug"])
        return json_response(self.market_json(m, self.ctx.clock.now()))

    async def market_by_id(self, request: web.Request) -> web.Response:
        mid = request.match_info["id"]
        if ascii_int(mid) is None:
            raise GammaError(422, "id is invalid")
        now = self.ctx.clock.now()
        for m in self.ctx.markets.listed(now):
            if m.id == mid:
                return json_response(self.market_json(m, now))
        raise GammaError(404, "not found")

    async def event_by_slug(self, request: web.Request) -> web.Response:
        m = self._get(request.match_info["slug"])
        return json_response(self.event_json(m, self.ctx.clock.now()))

    def _select(self, request: web.Request) -> tuple[list[Market], float]:
        q = request.query
        now = self.ctx.clock.now()
        reg = self.ctx.markets
        slugs = q.getall("slug", [])
        if slugs:
            found = [reg.get(s, now) for s in slugs]
            ms = [m for m in found if m is not None]
        else:
            ms = reg.listed(now)
        ids = set(q.getall("id", []))
        tokens = set(q.getall("clob_token_ids", []))
        conds = set(q.getall("condition_ids", []))
        active, closed = _opt_bool(q, "active"), _opt_bool(q, "closed")
        if closed is None and not slugs and not ids:
            closed = False                     # /markets lists open markets unless asked
        out = []
        for m in ms:
            if ids and m.id not in ids:
                continue
            if tokens and not tokens & {m.up_token, m.down_token}:
                continue
            if conds and m.condition_id not in conds:
                continue
            if closed is not None and (m.outcome is not None) != closed:
                continue
            if active is False:               # every known market is active
                continue
            out.append(m)
        order = q.get("order")
        if order:
            keys = {"id": lambda m: int(m.id), "endDate": lambda m: m.end,
                    "startDate": lambda m: m.created, "eventStartTime": lambda m: m.start,
                    "slug": lambda m: m.slug}
            key = keys.get(order)
            if key is None:
                raise GammaError(422, f"order field {order!r} is not supported")
            out.sort(key=key, reverse=_opt_bool(q, "ascending") is False)
        limit = _opt_int(q, "limit", DEFAULT_LIMIT)
        offset = _opt_int(q, "offset", 0)
        return out[offset: offset + min(limit, MAX_LIMIT)], now

    async def markets(self, request: web.Request) -> web.Response:
        ms, now = self._select(request)
        return json_response([self.market_json(m, now) for m in ms])

    async def events(self, request: web.Request) -> web.Response:
        ms, now = self._select(request)
        return json_response([self.event_json(m, now) for m in ms])


def _opt_bool(q, name: str) -> bool | None:
    val = q.get(name)
    if val is None:
        return None
    if val.lower() in ("true", "1"):
        return True
    if val.lower() in ("false", "0"):
        return False
    raise GammaError(422, f"{name} must be true or false")


def _opt_int(q, name: str, default: int) -> int:
    val = q.get(name)
    if val is None or val == "":
        return default
    n = ascii_int(val, 18)
    if n is None:
        raise GammaError(422, f"{name} must be a non-negative integer")
    return n
