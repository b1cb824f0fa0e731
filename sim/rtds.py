"""Polymarket's Real-Time Data Socket (RTDS), the Chainlink crypto-price topic only.

Production: ``wss://ws-live-data.polymarket.com``. The client sends JSON text frames

    {"action": "subscribe" | "unsubscribe",
     "subscriptions": [{"topic": "crypto_prices_chainlink", "type": "*",
                        "filters": "{\\"symbol\\":\\"btc/usd\\"}"}]}

(``filters`` is a JSON *string*; without it every symbol is meant) and may add or remove
subscriptions at any time without reconnecting. It sends the text ``PING`` about every 5 s;
the server answers ``PONG``. Data messages are

    {"topic": "crypto_prices_chainlink", "type": "update", "timestamp": <sent, ms>,
     "payload": {"symbol": "btc/usd", "timestamp": <observation, ms>, "value": 97000.1234}}

Here: one observation per sim second per symbol (sim/chainlink.py). A broadcaster wakes every
``max(1 s / speed, 100 ms)`` of wall time and sends, oldest first and one message each, every
observation due since its last wake, so at speed 60 nothing is skipped (60 messages a wall
second per symbol). A symbol subscribed mid-way gets observations from its next wake on; a
stalled symbol's observations are lost, as a real stall loses them. Other topics are accepted
and stay silent (production documents a few more; noblink needs only this one); a frame that
is not a valid action is ignored, as the server does not answer subscriptions either. A
connection that sends nothing (not even PING) for IDLE_TIMEOUT_WALL_S is closed.

Faults (sim/faults.py): ``rtds_drop`` aborts every connection, ``rtds_stall`` silences some
symbols (or ``*``) while PONGs go on, ``rtds_malformed`` spoils the next N data frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from sim.context import SimContext
from sim.httputil import http_reason, log_unexpected
from sim.wsserve import WsConn, WsServer

log = logging.getLogger("sim.rtds")

TOPIC = "crypto_prices_chainlink"
QUEUE_MAX = 8192
IDLE_TIMEOUT_WALL_S = 30.0     # production drops silent clients; ours PING every 5 s
MAX_CATCH_UP_S = 120           # after a long pause, send at most this many seconds per symbol


def malformed(frame: str, n: int) -> str:
    """Three kinds of bad data frame, in turn: cut-off JSON, not JSON, a payload of the
    wrong shape (a string value, no timestamp)."""
    kind = n % 3
    if kind == 0:
        return frame[: max(1, len(frame) // 2)]
    if kind == 1:
        return "\x00garbage{{{"
    return ('{"topic":"crypto_prices_chainlink","type":"update","timestamp":1,'
            '"payload":{"symbol":"btc/usd","value":"not-a-number"}}')


def update_message(symbol: str, obs_ms: int, value: float, sent_ms: int) -> str:
    return orjson.dumps({"topic": TOPIC, "type": "update", "timestamp": sent_ms,
                         "payload": {"symbol": symbol, "timestamp": obs_ms,
                                     "value": value}}).decode()


class Conn(WsConn):
    """One client: its subscribed symbols (``"*"`` = all) and its send queue."""

    def __init__(self, ws: web.WebSocketResponse, transport: Any) -> None:
        super().__init__(ws, transport, QUEUE_MAX)
        self.symbols: set[str] = set()
        self.last_heard = time.monotonic()

    def wants(self, symbol: str) -> bool:
        return "*" in self.symbols or symbol in self.symbols


def parse_action(text: str) -> tuple[str, list[str]] | None:
    """A client frame -> (action, symbols of the Chainlink topic; ["*"] for all), or None when
    it is not a subscribe/unsubscribe we understand."""
    try:
        req = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(req, dict) or req.get("action") not in ("subscribe", "unsubscribe"):
        return None
    subs = req.get("subscriptions")
    if not isinstance(subs, list):
        return None
    symbols: list[str] = []
    for sub in subs:
        if not isinstance(sub, dict) or sub.get("topic") != TOPIC:
            continue
        filters = sub.get("filters")
        if filters in (None, ""):
            symbols.append("*")
            continue
        try:
            f = orjson.loads(filters) if isinstance(filters, str) else filters
        except orjson.JSONDecodeError:
            continue
        sym = f.get("symbol") if isinstance(f, dict) else None
        if isinstance(sym, str) and sym:
            symbols.append(sym.lower())
    return req["action"], symbols


class Rtds(WsServer):
    label = "rtds conn"

    def __init__(self, ctx: SimContext) -> None:
        super().__init__()
        self.ctx = ctx
        self._last_sent: dict[str, int] = {}       # symbol -> last observation second sent
        self._malformed_n = 0
        ctx.faults.on_action("rtds_drop", lambda _v: self.drop_all())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/", self.handle)
        return app

    # -- connections --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            return web.json_response({"error": http_reason(e)}, status=e.status)
        except Exception:
            log_unexpected(log, request)
            return web.json_response({"error": "internal server error"}, status=500)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.ctx.faults.rtds_refused():
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 16)
        await ws.prepare(request)
        conn = Conn(ws, request.transport)
        await self.serve(conn, self._idle_watch(conn))
        return ws

    async def _reader(self, conn: Conn) -> None:
        async for msg in conn.ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
                continue                 # binary frames: ignored, like any frame we don't know
            conn.last_heard = time.monotonic()
            if msg.data == "PING":
                if not conn.send("PONG"):
                    break
                continue
            action = parse_action(msg.data)
            if action is None:
                log.debug("rtds conn %d: ignored frame %.80r", conn.id, msg.data)
                continue
            verb, symbols = action
            if verb == "subscribe":
                conn.symbols.update(symbols)
            else:
                conn.symbols.difference_update(symbols)

    async def _idle_watch(self, conn: Conn) -> None:
        while not conn.closed:
            await asyncio.sleep(1.0)
            if time.monotonic() - conn.last_heard > IDLE_TIMEOUT_WALL_S:
                log.info("rtds conn %d: silent for %.0f s, closing", conn.id,
                         IDLE_TIMEOUT_WALL_S)
                await self._close(conn, 1000, b"idle")
                return

    # -- broadcasting -------------------------------------------------------------------------

    async def _broadcast_loop(self) -> None:
        period = self.ctx.config.rtds_wake_wall_s
        while True:
            await asyncio.sleep(period)
            try:
                self.tick(self.ctx.clock.now_ms())
            except Exception:                       # a bug here must not stop the stream
                log.exception("rtds broadcast tick failed")

    def tick(self, now_ms: int) -> int:
        """Send every observation due since the last tick to its subscribers; returns the
        number of frames queued."""
        cl, faults = self.ctx.chainlink, self.ctx.faults
        if cl is None or not self.conns:
            self._last_sent.clear()                 # nobody listening: nothing to catch up
            return 0
        now_s = now_ms // 1000
        sent = 0
        for symbol, series in cl.by_symbol.items():
            subs = [c for c in self.conns if c.wants(symbol)]
            last = self._last_sent.get(symbol)
            self._last_sent[symbol] = now_s
            if not subs or last is None:
                continue
            if faults.rtds_stalled(symbol):
                continue
            for second in range(max(last + 1, now_s - MAX_CATCH_UP_S + 1), now_s + 1):
                text = update_message(symbol, second * 1000, series.value_at(second), now_ms)
                for conn in subs:
                    frame = text
                    if faults.take_rtds_malformed():
                        frame = malformed(text, self._malformed_n)
                        self._malformed_n += 1
                    if not conn.send(frame):
                        log.warning("rtds conn %d: send queue full, disconnecting", conn.id)
                        asyncio.get_running_loop().create_task(
                            self._close(conn, 1008, b"Client too slow"))
                    sent += 1
        return sent
