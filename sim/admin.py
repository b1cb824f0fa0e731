"""The sim's admin HTTP API (JSON), for tests, chaos runs and ``noblink sim-fault``.

- ``GET /health``                     -> {"ok", "pid", "now", "clock", "ws_connections",
                                          "rtds_connections"}
- ``GET /faults``                     -> current fault switches
- ``POST /faults`` {switches...}      -> apply (see sim.faults); 400 {"error"} if invalid
- ``DELETE /faults``                  -> clear every switch
- ``GET /orders/log[?since=ID]``      -> [{"id","time","wall_time","path","method","body",
                                           "status"}] for every order request received
- ``DELETE /orders/log``              -> forget the log
- ``GET /markets/{slug}/resolution``  -> {"slug","open","close","outcome","resolved",...}
                                         (open/close: the Chainlink reference it settles on)
- ``GET /reference/{asset}?from=S&to=S`` -> the Chainlink series, [{"ts_ms", "value"}] per
                                         sim second in [from, to] (at most 3600)
- ``GET /accounts``                   -> CLOB accounts: address, balance, positions
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sim.context import SimContext
from sim.httputil import ascii_int, http_reason, json_response, log_unexpected, read_json

log = logging.getLogger("sim.admin")


class Admin:
    def __init__(self, ctx: SimContext, ws_count: Callable[[], int],
                 rtds_count: Callable[[], int] = lambda: 0) -> None:
        self.ctx = ctx
        self._ws_count = ws_count
        self._rtds_count = rtds_count

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/faults", self.get_faults)
        r.add_post("/faults", self.post_faults)
        r.add_delete("/faults", self.delete_faults)
        r.add_get("/orders/log", self.get_log)
        r.add_delete("/orders/log", self.delete_log)
        r.add_get("/markets/{slug}/resolution", self.resolution)
        r.add_get("/accounts", self.accounts)
        r.add_get("/reference/{asset}", self.reference)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            return json_response({"error": http_reason(e)}, e.status)
        except Exception:          # the last resort: a logged JSON 500, never a crash
            log_unexpected(log, request)
            return json_response({"error": "internal server error"}, 500)

    async def health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "pid": os.getpid(), "now": self.ctx.clock.now(),
                              "clock": self.ctx.clock.to_dict(), "seed": self.ctx.config.seed,
                              "ws_connections": self._ws_count(),
                              "rtds_connections": self._rtds_count()})

    async def get_faults(self, request: web.Request) -> web.Response:
        return json_response(self.ctx.faults.snapshot())

    async def post_faults(self, request: web.Request) -> web.Response:
        body, _ = await read_json(request)
        if isinstance(body, ValueError):
            return json_response({"error": f"invalid JSON: {body}"}, 400)
        try:
            return json_response(self.ctx.faults.apply(body))
        except ValueError as e:
            return json_response({"error": str(e)}, 400)

    async def delete_faults(self, request: web.Request) -> web.Response:
        self.ctx.faults.clear()
        return json_response(self.ctx.faults.snapshot())

    async def get_log(self, request: web.Request) -> web.Response:
        raw = request.query.get("since", "0")
        since = ascii_int(raw.removeprefix("-"))
        if since is None:
            return json_response({"error": "since must be an integer"}, 400)
        since = -since if raw.startswith("-") else since
        return json_response(self.ctx.order_log.entries(since))

    async def delete_log(self, request: web.Request) -> web.Response:
        self.ctx.order_log.clear()
        return json_response({"ok": True})

    async def resolution(self, request: web.Request) -> web.Response:
        markets = self.ctx.markets
        info: dict[str, Any] | None = None
        if markets is not None:
            info = markets.resolution_info(request.match_info["slug"])
        if info is None:
            return json_response({"error": "market not found"}, 404)
        return json_response(info)

    async def reference(self, request: web.Request) -> web.Response:
        cl = self.ctx.chainlink
        series = cl.by_asset.get(request.match_info["asset"]) if cl is not None else None
        if series is None:
            return json_response({"error": "unknown asset"}, 404)
        now = int(self.ctx.clock.now())
        lo = ascii_int(request.query.get("from", str(now - 60)))
        hi = ascii_int(request.query.get("to", str(now)))
        if lo is None or hi is None or hi < lo or hi - lo > 3600:
            return json_response({"error": "from/to must be unix seconds, to - from <= 3600"},
                                 400)
        hi = min(hi, now)                  # observations exist once their second has come
        return json_response([{"ts_ms": s * 1000, "value": series.value_at(s)}
                              for s in range(lo, hi + 1)])

    async def accounts(self, request: web.Request) -> web.Response:
        ex = self.ctx.exchange
        return json_response([] if ex is None else ex.accounts_info())
