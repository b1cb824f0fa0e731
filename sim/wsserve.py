"""What the sim's two WebSocket servers share (Binance's kline streams in binance_ws.py,
Polymarket's RTDS in rtds.py): a connection with a bounded send queue drained by its own
writer task, a broadcaster task, the life of one connection from accept to clean-up,
closing one politely and dropping all of them at the TCP level.

Formats, subscriptions and keep-alive rules differ between the two venues and stay in their
modules. A slow client is never waited for: when its queue is full, ``send`` says so and
the server drops it (what both venues do to a reader that falls behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)
_ids = itertools.count(1)


class WsConn:
    """One client connection: its send queue and its transport (for an abrupt drop)."""

    def __init__(self, ws: web.WebSocketResponse, transport: Any, queue_max: int) -> None:
        self.id = next(_ids)
        self.ws = ws
        self.transport = transport
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(queue_max)
        self.closed = False

    def send(self, text: str) -> bool:
        """Queue a frame; False when the client is too slow and must go."""
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            return False


class WsServer:
    """Connections and a broadcaster. Subclasses read frames (``_reader``) and broadcast
    (``_broadcast_loop``); ``_forget`` is where they drop a connection's subscriptions."""

    label = "conn"                      # names a connection in the logs

    def __init__(self) -> None:
        self.conns: set[Any] = set()
        self._task: asyncio.Task[None] | None = None

    async def _reader(self, conn: Any) -> None:
        raise NotImplementedError

    async def _broadcast_loop(self) -> None:
        raise NotImplementedError

    def _forget(self, conn: Any) -> None:
        self.conns.discard(conn)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the broadcaster."""
        self._task = asyncio.get_running_loop().create_task(self._broadcast_loop())

    async def stop(self) -> None:
        """Stop broadcasting, then close every connection with 1001 (going away)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for conn in list(self.conns):
            await self._close(conn, 1001, b"server stopping")

    # -- one connection ---------------------------------------------------------------------

    async def serve(self, conn: Any, watcher: Coroutine[Any, Any, None]) -> None:
        """Serve ``conn`` until its reader ends: its writer and ``watcher`` (keep-alive,
        idle limit) run beside the reader; then everything of it is stopped and closed."""
        self.conns.add(conn)
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._writer(conn))
        watch = loop.create_task(watcher)
        try:
            await self._reader(conn)
        except Exception:              # a bug here closes this connection, not the server
            log.exception("%s %d: reader failed", self.label, conn.id)
        finally:
            conn.closed = True
            self._forget(conn)
            watch.cancel()
            with contextlib.suppress(asyncio.QueueFull):
                conn.queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(writer, 1.0)
            writer.cancel()
            if not conn.ws.closed:
                with contextlib.suppress(Exception):
                    await conn.ws.close()

    async def _writer(self, conn: WsConn) -> None:
        while True:
            text = await conn.queue.get()
            if text is None or conn.ws.closed:
                return
            try:
                await conn.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    async def _close(self, conn: WsConn, code: int, reason: bytes) -> None:
        """Close with a close frame (waiting at most 2 s for it), then cut the TCP link."""
        conn.closed = True
        self._forget(conn)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(code=code, message=reason), 2.0)
        if conn.transport is not None:
            conn.transport.abort()

    def drop_all(self) -> int:
        """Abort every connection at the TCP level (clients see 1006, no close frame)."""
        n = 0
        for conn in list(self.conns):
            conn.closed = True
            self._forget(conn)
            if conn.transport is not None:
                conn.transport.abort()
                n += 1
        return n
