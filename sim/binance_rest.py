"""Binance-compatible REST: GET /api/v3/klines (plus /ping and /time), with request weight.

Every reply carries ``X-MBX-USED-WEIGHT-1M``. The weight window is one minute of *sim* time
(so at --speed 60 it resets every wall second); past ``--weight-limit`` the server answers 429
with ``Retry-After`` (wall seconds until the window resets). Errors use ``{"code", "msg"}`` with
Binance's codes and messages.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from core.markets import INTERVAL_MS
from sim.assets import BY_SYMBOL
from sim.binance_fmt import kline_row
from sim.context import SimContext
from sim.httputil import json_response, log_unexpected

log = logging.getLogger("sim.binance_rest")

REST_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h")
SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
INT_RE = re.compile(r"^[0-9]{1,20}$")
MAX_LIMIT = 1000
DEFAULT_LIMIT = 500
WEIGHTS = {"/api/v3/klines": 2, "/api/v3/uiKlines": 2, "/api/v3/ping": 1, "/api/v3/time": 1}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def _mandatory(name: str) -> BinanceError:
    return BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                        "or malformed.")


def _illegal(name: str, legal: str) -> BinanceError:
    return BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range "
                        f"is '{legal}'.")


class BinanceRest:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self._window = -1
        self._used = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/api/v3/klines", self.klines)
        app.router.add_get("/api/v3/uiKlines", self.klines)
        app.router.add_get("/api/v3/ping", self.ping)
        app.router.add_get("/api/v3/time", self.time)
        return app

    def _retry_after(self) -> int:
        clock = self.ctx.clock
        left_sim = 60.0 - clock.now() % 60.0
        return max(1, math.ceil(clock.to_wall_seconds(left_sim)))

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        window = int(self.ctx.clock.now() // 60)
        if window != self._window:
            self._window, self._used = window, 0
        self._used += WEIGHTS.get(request.path, 1)
        headers = {"X-MBX-USED-WEIGHT-1M": str(self._used)}
        fault = self.ctx.faults.take_rest_fault("binance_rest")
        if self._used > self.ctx.config.weight_limit or fault == 429:
            headers["Retry-After"] = str(self._retry_after())
            return json_response({"code": -1003, "msg": (
                "Too many requests; current limit of IP(127.0.0.1) request weight is "
                f"{self.ctx.config.weight_limit} request weight per 1 MINUTE. Please use "
                "WebSocket Streams for live updates to avoid polling the API.")},
                status=429, headers=headers)
        if fault is not None:
            return json_response({"code": -1001, "msg": "Internal error; unable to process "
                                  "your request. Please try again."}, fault, headers)
        try:
            resp = await handler(request)
        except BinanceError as e:
            return json_response({"code": e.code, "msg": e.msg}, e.status, headers)
        except web.HTTPNotFound:
            return json_response({"code": -1000, "msg": "Unknown path."}, 404, headers)
        except web.HTTPMethodNotAllowed:
            return json_response({"code": -1000, "msg": "Method not allowed."}, 405, headers)
        except web.HTTPException as e:
            return json_response({"code": -1000, "msg": f"{e.reason}."}, e.status, headers)
        except Exception:          # the last resort: a logged JSON 500, never a crash
            log_unexpected(log, request)
            return json_response({"code": -1000, "msg": "An unknown error occurred while "
                                  "processing the request."}, 500, headers)
        resp.headers.update(headers)
        return resp

    async def ping(self, request: web.Request) -> web.Response:
        return json_response({})

    async def time(self, request: web.Request) -> web.Response:
        return json_response({"serverTime": self.ctx.clock.now_ms()})

    async def klines(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = q.get("symbol", "")
        if not symbol:
            raise _mandatory("symbol")
        if not SYMBOL_RE.fullmatch(symbol):
            raise _illegal("symbol", "^[A-Z0-9-_.]{1,20}$")
        interval = q.get("interval", "")
        if not interval:
            raise _mandatory("interval")
        start = _opt_int(q, "startTime")
        end = _opt_int(q, "endTime")
        limit = _opt_int(q, "limit")
        if symbol not in BY_SYMBOL:
            raise BinanceError(-1121, "Invalid symbol.")
        if interval not in REST_INTERVALS:
            raise BinanceError(-1120, "Invalid interval.")
        if start is not None and end is not None and start > end:
            raise BinanceError(-1023, "Start time is greater than end time.")
        if limit is None:
            limit = DEFAULT_LIMIT
        elif limit < 1:
            raise BinanceError(-1130, "Invalid data sent for a parameter.")
        limit = min(limit, MAX_LIMIT)
        iv = INTERVAL_MS[interval]
        now_ms = self.ctx.clock.now_ms()
        cur_open = now_ms // iv * iv
        path = self.ctx.prices.paths[symbol]
        if start is not None:
            # Like Binance, a startTime before the first candle it has means "from the first
            # candle" (the sim's earliest kept minute is hour-aligned, so aligned for iv).
            path.ensure(now_ms // 1000)
            start = max(start, path.earliest_ms)
            first = -(-start // iv) * iv                     # first open time >= startTime
            last = first + (limit - 1) * iv
            if end is not None:
                last = min(last, end // iv * iv)
        else:
            last = cur_open if end is None else min(cur_open, end // iv * iv)
            first = last - (limit - 1) * iv
        rows = [kline_row(k, path.params.tick_decimals)
                for k in path.klines(iv, first, last, now_ms)]
        return json_response(rows)


def _opt_int(q, name: str) -> int | None:
    val = q.get(name)
    if val is None or val == "":
        return None
    if not INT_RE.fullmatch(val):
        raise _illegal(name, "^[0-9]{1,20}$")
    return int(val)
