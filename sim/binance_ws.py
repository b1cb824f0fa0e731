"""Binance-compatible market-data WebSocket: kline streams, control frames, pings, faults.

Paths: ``/ws`` and ``/ws/<stream>[/<stream>...]`` (raw payloads) and
``/stream?streams=a/b/c`` (combined: ``{"stream": name, "data": payload}``).

Cadence (decided here, documented in docs/sim.md): one broadcaster task wakes every
``max(2 s / speed, 100 ms)`` of wall time and at every minute boundary of sim time. On each wake
it sends every subscribed kline stream its forming candle (``x=false``); at a boundary it first
sends, exactly once per candle, the final update (``x=true``) of every candle that closed since
the stream's last final. Events are built and serialised once per stream, then queued to each
subscriber; a subscriber whose queue overflows is disconnected, as Binance does with slow
consumers.

Pings: the server pings every 20 s of sim time (at least 250 ms wall) and closes a connection
whose last pong matching a ping is older than 60 s of sim time (at least 5 s wall). Both can be
set with ``--ping-interval`` / ``--pong-timeout`` (wall seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from core.markets import INTERVAL_MS
from sim.assets import BY_SYMBOL
from sim.binance_fmt import kline_event
from sim.context import SimContext
from sim.httputil import http_reason, log_unexpected
from sim.wsserve import WsConn, WsServer

log = logging.getLogger("sim.binance_ws")

STREAM_RE = re.compile(r"^([a-z0-9]+)@kline_(\w+)$")
WS_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h")
MAX_STREAMS = 1024
QUEUE_MAX = 4096
MAX_LIFETIME_SIM_S = 24 * 3600
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")


def parse_stream(name: str) -> tuple[str, str, int] | None:
    """``btcusdt@kline_1m`` -> ("BTCUSDT", "1m", 60000); None if the sim has no such data."""
    m = STREAM_RE.match(name)
    if not m or m.group(2) not in WS_INTERVALS:
        return None
    symbol = m.group(1).upper()
    if symbol not in BY_SYMBOL:
        return None
    return symbol, m.group(2), INTERVAL_MS[m.group(2)]


def _malformed(frame: str, n: int) -> str:
    """Three kinds of bad frame, in turn: cut-off JSON, not JSON at all, JSON missing fields."""
    kind = n % 3
    if kind == 0:
        return frame[: max(1, len(frame) // 2)]
    if kind == 1:
        return "\x00garbage{{{"
    return '{"e":"kline","E":"not-a-number","k":null}'


class Conn(WsConn):
    """One client connection: its streams, its keep-alive, its send queue."""

    def __init__(self, ws: web.WebSocketResponse, transport: Any, combined: bool,
                 sim_start: float) -> None:
        super().__init__(ws, transport, QUEUE_MAX)
        self.combined = combined
        self.streams: set[str] = set()
        self.sim_start = sim_start
        self.last_ack = time.monotonic()
        self.pings: set[bytes] = set()


class BinanceWs(WsServer):
    def __init__(self, ctx: SimContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.subs: dict[str, set[Conn]] = {}
        self.last_final: dict[str, int] = {}      # stream -> open time of last final sent
        self._malformed_n = 0
        ctx.faults.on_action("ws_drop", lambda _v: self.drop_all())
        ctx.faults.on_action("ws_shutdown", self._shutdown_action)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/ws", self.handle)
        app.router.add_get("/ws/{streams:.+}", self.handle)
        app.router.add_get("/stream", self.handle)
        return app

    # -- connection handling ----------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """HTTP-level errors (before the upgrade) as JSON; ``handle`` guards the rest."""
        try:
            return await handler(request)
        except web.HTTPException as e:
            return web.json_response({"code": -1000, "msg": http_reason(e)}, status=e.status)
        except Exception:
            log_unexpected(log, request)
            return web.json_response({"code": -1000, "msg": "An unknown error occurred while "
                                      "processing the request."}, status=500)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.ctx.faults.ws_refused():
            return web.Response(status=503, text="Service Unavailable")
        combined = request.path == "/stream"
        if combined:
            raw = request.query.get("streams", "")
        else:
            raw = request.match_info.get("streams", "")
        streams = [s for s in raw.split("/") if s]
        if len(streams) > MAX_STREAMS:
            return web.json_response({"code": -1, "msg": "Too many streams"}, status=400)
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 16)
        await ws.prepare(request)
        conn = Conn(ws, request.transport, combined, self.ctx.clock.now())
        for s in streams:
            self._subscribe(conn, s)
        await self.serve(conn, self._pinger(conn))
        return ws

    async def _reader(self, conn: Conn) -> None:
        async for msg in conn.ws:
            if msg.type == WSMsgType.TEXT:
                reply = self._control(conn, msg.data)
                if reply is not None and not conn.send(orjson.dumps(reply).decode()):
                    break
            elif msg.type == WSMsgType.PING:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await conn.ws.pong(msg.data)
            elif msg.type == WSMsgType.PONG:
                if bytes(msg.data) in conn.pings:    # unsolicited pongs do not count
                    conn.pings.clear()
                    conn.last_ack = time.monotonic()
            elif msg.type == WSMsgType.BINARY:
                if not conn.send(orjson.dumps(
                        {"code": 3, "msg": "Invalid JSON: binary frames are not supported"}
                ).decode()):
                    break
            else:  # CLOSE / ERROR
                break

    async def _pinger(self, conn: Conn) -> None:
        cfg = self.ctx.config
        while not conn.closed:
            await asyncio.sleep(cfg.ping_wall_s)
            if time.monotonic() - conn.last_ack > cfg.pong_wall_s:
                log.info("conn %d: no pong for %.1fs, disconnecting", conn.id, cfg.pong_wall_s)
                await self._close(conn, 1008, b"Pong timeout")
                return
            if self.ctx.clock.now() - conn.sim_start >= MAX_LIFETIME_SIM_S:
                await self._close(conn, 1000, b"Connection lifetime exceeded")
                return
            payload = str(self.ctx.clock.now_ms()).encode()
            conn.pings.add(payload)
            try:
                await conn.ws.ping(payload)
            except (ConnectionError, RuntimeError):
                return

    def _forget(self, conn: Conn) -> None:
        self.conns.discard(conn)
        for s in list(conn.streams):
            self._unsubscribe(conn, s)

    # -- subscriptions ----------------------------------------------------------------------

    def _subscribe(self, conn: Conn, stream: str) -> None:
        stream = stream.lower() if "@" in stream else stream
        conn.streams.add(stream)
        subs = self.subs.setdefault(stream, set())
        if not subs:
            parsed = parse_stream(stream)
            if parsed is not None:
                iv = parsed[2]
                # The candle forming now is the first whose final this stream will send.
                self.last_final[stream] = self.ctx.clock.now_ms() // iv * iv - iv
        subs.add(conn)

    def _unsubscribe(self, conn: Conn, stream: str) -> None:
        conn.streams.discard(stream)
        subs = self.subs.get(stream)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.subs[stream]
                self.last_final.pop(stream, None)

    def _control(self, conn: Conn, text: str) -> dict[str, Any] | None:
        """Handle one client text frame; returns the reply (Binance's documented shapes)."""
        try:
            req = orjson.loads(text)
        except orjson.JSONDecodeError:
            return {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}
        if not isinstance(req, dict):
            return {"code": 2, "msg": "Invalid request: expected a JSON object"}
        rid = req.get("id")
        if not _valid_id(rid):
            return {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}
        method = req.get("method")
        if method is None:
            return {"code": 2, "msg": "Invalid request: missing field `method`", "id": rid}
        if method not in METHODS:
            return {"code": 2, "id": rid, "msg": f"Invalid request: unknown variant `{method}`, "
                    "expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, "
                    "`SET_PROPERTY`, `GET_PROPERTY`"}
        params = req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return {"code": 2, "msg": "Invalid request: params must be a list of strings",
                        "id": rid}
            if method == "SUBSCRIBE":
                if len(conn.streams | set(params)) > MAX_STREAMS:
                    return {"code": 2, "msg": "Invalid request: too many streams", "id": rid}
                for p in params:
                    self._subscribe(conn, p)
            else:
                for p in params:
                    self._unsubscribe(conn, p.lower() if "@" in p else p)
            return {"result": None, "id": rid}
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": sorted(conn.streams), "id": rid}
        if method == "SET_PROPERTY":
            if params != ["combined", True] and params != ["combined", False]:
                return {"code": 1, "msg": "Invalid value type: expected Boolean", "id": rid}
            conn.combined = params[1]
            return {"result": None, "id": rid}
        if params != ["combined"]:
            return {"code": 0, "msg": "Unknown property", "id": rid}
        return {"result": conn.combined, "id": rid}

    # -- broadcasting -----------------------------------------------------------------------

    async def _broadcast_loop(self) -> None:
        clock, cfg = self.ctx.clock, self.ctx.config
        loop = asyncio.get_running_loop()
        period = cfg.update_wall_s
        next_periodic = loop.time() + period
        while True:
            now_ms = clock.now_ms()
            to_boundary = ((now_ms // 60_000 + 1) * 60_000 - now_ms) / 1000 / clock.speed
            delay = min(next_periodic - loop.time(), to_boundary + 0.002)
            await asyncio.sleep(max(delay, 0.0))
            periodic = loop.time() >= next_periodic - 0.001
            if periodic:
                next_periodic += period
                if next_periodic < loop.time():       # fell behind: do not burst to catch up
                    next_periodic = loop.time() + period
            try:
                self._tick(clock.now_ms(), periodic)
            except Exception:                          # a bug here must not stop the feed
                log.exception("broadcast tick failed")

    def _tick(self, now_ms: int, periodic: bool) -> None:
        prices, faults = self.ctx.prices, self.ctx.faults
        for stream, subs in list(self.subs.items()):
            parsed = parse_stream(stream)
            if parsed is None or not subs:
                continue
            symbol, interval, iv = parsed
            path = prices.paths[symbol]
            dec = path.params.tick_decimals
            cur_open = now_ms // iv * iv
            frames: list[dict[str, Any]] = []
            last = self.last_final.get(stream, cur_open - iv)
            if last < cur_open - iv:
                # Every candle that closed since the last final, oldest first (normally one).
                for k in path.klines(iv, last + iv, cur_open - iv, now_ms):
                    frames.append(kline_event(k, symbol, interval, now_ms, dec))
                self.last_final[stream] = cur_open - iv
            if periodic:
                k = path.kline_at(iv, cur_open, now_ms)
                if k is not None:
                    frames.append(kline_event(k, symbol, interval, now_ms, dec))
            if not frames or faults.stalled(stream):
                continue
            for ev in frames:
                raw = orjson.dumps(ev).decode()
                wrapped = f'{{"stream":"{stream}","data":{raw}}}'
                self._fanout(subs, raw, wrapped)

    def _fanout(self, subs: set[Conn], raw: str, wrapped: str) -> None:
        for conn in list(subs):
            text = wrapped if conn.combined else raw
            if self.ctx.faults.take_malformed():
                text = _malformed(text, self._malformed_n)
                self._malformed_n += 1
            if not conn.send(text):
                log.warning("conn %d: send queue full, disconnecting", conn.id)
                asyncio.get_running_loop().create_task(
                    self._close(conn, 1008, b"Client too slow"))

    # -- fault actions ----------------------------------------------------------------------

    def _shutdown_action(self, grace: float) -> None:
        """Send serverShutdown, then close after ``grace`` wall s (validated by Faults)."""
        ev = {"e": "serverShutdown", "E": self.ctx.clock.now_ms()}
        raw = orjson.dumps(ev).decode()
        wrapped = f'{{"stream":"!serverShutdown","data":{raw}}}'
        conns = list(self.conns)
        for conn in conns:
            conn.send(wrapped if conn.combined else raw)

        async def later() -> None:
            await asyncio.sleep(grace)
            for conn in conns:
                if not conn.closed:
                    await self._close(conn, 1001, b"Server shutdown")

        asyncio.get_running_loop().create_task(later())


def _valid_id(rid: Any) -> bool:
    if rid is None:
        return True
    if isinstance(rid, bool):
        return False
    if isinstance(rid, int):
        return -(2**63) <= rid < 2**63
    return (isinstance(rid, str) and len(rid) <= 36 and rid.isascii()
            and rid.replace("-", "").isalnum())
