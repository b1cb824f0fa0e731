"""Connection care for Polymarket's Real-Time Data Socket (RTDS): the Chainlink reference.

One connection to ``wss://ws-live-data.polymarket.com`` (the sim's ``rtds`` in sim mode),
topic ``crypto_prices_chainlink``, one subscription per asset symbol (``btc/usd``).

- **Subscriptions** are sent after every (re)connect; :meth:`RtdsStream.subscribe` and
  :meth:`RtdsStream.unsubscribe` change them on the open connection, without reconnecting,
  as RTDS allows.
- **PING**: the text ``PING`` every ``rtds_ping_wall_s`` (5 s, what RTDS asks for); the
  ``PONG`` answers prove the connection, not the data.
- **Stalls are judged by data**, not by pongs (a socket can keep answering PING while its
  data stops): the connection is stalled when no observation at all arrived for
  ``rtds_stall_s`` clock seconds (both limits with the 1 s wall floor of the Binance stream,
  for the same reason; RTDS observes about once a second, so 5 s / 10 s are many missed
  updates). That counts a stale episode and drops the connection. One symbol that had been
  sending and is silent for ``rtds_symbol_stall_s`` counts a stale episode too, but is only
  resubscribed on the open connection: dropping it would interrupt every other asset (and
  risk their prices to beat) for one feed that may simply be paused upstream. Its own
  staleness is judged downstream by age (the slot's reference turns STALE), and its next
  window start gets no price to beat unless the stream was followed across it.
- **Reconnects**: the Binance stream's jittered exponential backoff; a connection that lived
  ``backoff_reset_wall_s`` resets it. Every interruption tells the publisher that data may
  have been lost (a window start crossed meanwhile gets no price to beat).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from core.clock import ClockLike, sleep_unless
from feed_worker.binance_ws import OPEN_ERRORS, Backoff
from feed_worker.config import FeedConfig
from feed_worker.lifecycle import CONN_TRANSITIONS, ConnState, StateMachine
from feed_worker.rtds_frames import RefUpdate, RtdsFrame, action
from feed_worker.stats import FeedStats

log = logging.getLogger(__name__)

Handler = Callable[[bytes | str, int], RtdsFrame | None]


class _Conn:
    def __init__(self, ws: ClientConnection, opened_ns: int) -> None:
        self.ws = ws
        self.opened_ns = opened_ns
        self.last_data_ns = opened_ns         # any observation of a subscribed symbol
        self.last_seen: dict[str, int] = {}   # symbol -> last observation (once it sent one)
        self.reader: asyncio.Task[None] | None = None
        self.pinger: asyncio.Task[None] | None = None
        self.close_reason = ""


class RtdsStream:
    """Keeps the Chainlink reference flowing into ``handler`` until ``stop`` is set."""

    def __init__(self, url: str, symbols: tuple[str, ...], cfg: FeedConfig, handler: Handler,
                 clock: ClockLike, stats: FeedStats, *,
                 on_state: Callable[[ConnState], None] = lambda s: None,
                 on_disconnect: Callable[[], None] = lambda: None,
                 rng: random.Random | None = None) -> None:
        self.url = url
        self.symbols: set[str] = {s.lower() for s in symbols}
        self.cfg = cfg
        self.handler = handler
        self.clock = clock
        self.stats = stats
        self.on_disconnect = on_disconnect
        self._on_state = on_state
        self.sm: StateMachine[ConnState] = StateMachine(
            "rtds", ConnState.IDLE, CONN_TRANSITIONS, self._state_changed)
        self.backoff = Backoff(cfg.backoff_base_wall_s, cfg.backoff_cap_wall_s,
                               rng=rng or random.Random())
        self.stall_ns = int(cfg.rtds_stall_after_wall_s(clock.speed) * 1e9)
        self.symbol_stall_ns = int(cfg.rtds_symbol_stall_after_wall_s(clock.speed) * 1e9)
        self._conn: _Conn | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()     # resubscriptions in flight
        self.connects = 0

    def _state_changed(self, _old: ConnState, new: ConnState) -> None:
        self.stats.rtds_state = int(new)
        self._on_state(new)

    # -- subscriptions ----------------------------------------------------------------------------

    async def subscribe(self, symbols: list[str]) -> None:
        """Add symbols; on an open connection, without reconnecting."""
        new = [s.lower() for s in symbols if s.lower() not in self.symbols]
        self.symbols.update(new)
        if new:
            await self._send(action("subscribe", new))

    async def unsubscribe(self, symbols: list[str]) -> None:
        """Drop symbols; on an open connection, without reconnecting."""
        gone = [s.lower() for s in symbols if s.lower() in self.symbols]
        self.symbols.difference_update(gone)
        conn = self._conn
        if conn is not None:
            for s in gone:
                conn.last_seen.pop(s, None)
        if gone:
            await self._send(action("unsubscribe", gone))

    async def _send(self, text: str) -> None:
        conn = self._conn
        if conn is None:
            return                   # the next connection subscribes to self.symbols
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.send(text)

    # -- plumbing --------------------------------------------------------------------------------

    async def _nap(self, wall_s: float, stop: asyncio.Event, *, wakeable: bool = True) -> None:
        """Sleep ``wall_s`` real seconds, or less if stopped (or woken by a reader)."""
        await sleep_unless(self.clock, wall_s * self.clock.speed, stop,
                           *((self._wake,) if wakeable else ()))
        self._wake.clear()

    async def _open(self) -> _Conn:
        ws = await connect(self.url, open_timeout=self.cfg.open_timeout_wall_s,
                           ping_interval=20.0, ping_timeout=20, close_timeout=2,
                           compression=None, max_queue=4096, max_size=1 << 20)
        conn = _Conn(ws, self.clock.monotonic_ns())
        if self.symbols:
            await ws.send(action("subscribe", sorted(self.symbols)))
        conn.reader = asyncio.create_task(self._read(conn), name="rtds-reader")
        conn.pinger = asyncio.create_task(self._ping(conn), name="rtds-ping")
        self.connects += 1
        log.info("rtds: connected to %s (%d symbols)", self.url, len(self.symbols))
        return conn

    async def _read(self, conn: _Conn) -> None:
        ws, handle, mono = conn.ws, self.handler, self.clock.monotonic_ns
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = mono()
                frame = handle(raw, now)
                if type(frame) is RefUpdate and frame.symbol in self.symbols:
                    conn.last_data_ns = now
                    conn.last_seen[frame.symbol] = now
        except ConnectionClosed as e:
            conn.close_reason = f"closed by peer: code {e.rcvd.code if e.rcvd else 1006}"
        except Exception:
            log.exception("rtds: the frame handler failed; reconnecting")
            conn.close_reason = "handler error"
        finally:
            self._wake.set()

    async def _ping(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.clock.sleep(self.cfg.rtds_ping_wall_s * self.clock.speed)
                await conn.ws.send("PING")

    async def _close(self, conn: _Conn) -> None:
        for t in (conn.reader, conn.pinger):
            if t is not None:
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(), 3.0)

    # -- decisions --------------------------------------------------------------------------------

    def _why_leave(self, conn: _Conn) -> str | None:
        assert conn.reader is not None
        if conn.reader.done():
            return "closed"
        now = self.clock.monotonic_ns()
        if self.symbols and now - conn.last_data_ns > self.stall_ns:
            log.warning("rtds stalled: no observation for %.2f s (PONGs do not count)",
                        (now - conn.last_data_ns) / 1e9)
            return "stall"
        silent = sorted(s for s, t in conn.last_seen.items() if now - t > self.symbol_stall_ns)
        if silent:
            log.warning("rtds: no observation of %s for %.2f s: resubscribing it (the other "
                        "symbols stream on)", ", ".join(silent),
                        (now - min(conn.last_seen[s] for s in silent)) / 1e9)
            self.stats.rtds_stale_episodes += 1
            for s in silent:
                conn.last_seen[s] = now        # judged again one stall period from now
            task = asyncio.ensure_future(self._resubscribe(silent))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return None

    async def _resubscribe(self, symbols: list[str]) -> None:
        await self._send(action("unsubscribe", symbols))
        await self._send(action("subscribe", symbols))

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, watch, reconnect, until ``stop`` is set. Never raises for network
        trouble; cancellation closes the connection."""
        try:
            while not stop.is_set():
                if self._conn is None:
                    self._conn = await self._connect(stop)
                    if self._conn is None:
                        continue
                why = None
                while why is None and not stop.is_set():
                    await self._nap(self.cfg.watchdog_wall_s, stop)
                    why = self._why_leave(self._conn)
                if stop.is_set():
                    break
                conn, self._conn = self._conn, None
                await self._drop(conn, why or "closed")
                await self._wait_backoff(stop)
        finally:
            if self._conn is not None:
                await self._close(self._conn)
                self._conn = None
            self.stats.rtds_connected = 0
            if self.sm.can(ConnState.STOPPED):
                self.sm.to(ConnState.STOPPED, "stop")

    async def _connect(self, stop: asyncio.Event) -> _Conn | None:
        self.sm.to(ConnState.CONNECTING)
        try:
            conn = await self._open()
        except OPEN_ERRORS as e:
            log.warning("rtds: connect to %s failed: %s: %s", self.url, type(e).__name__, e)
            self.stats.rtds_reconnects += 1
            await self._wait_backoff(stop)
            return None
        self.sm.to(ConnState.STREAMING, f"connection #{self.connects}")
        self.stats.rtds_connected = 1
        return conn

    async def _drop(self, conn: _Conn, why: str) -> None:
        if why == "stall":
            self.sm.to(ConnState.STALLED)
            self.stats.rtds_stale_episodes += 1
        else:
            self.sm.to(ConnState.CLOSED, conn.close_reason or why)
        self.stats.rtds_connected = 0
        self.stats.rtds_reconnects += 1
        self.on_disconnect()
        lived_s = (self.clock.monotonic_ns() - conn.opened_ns) / 1e9
        if lived_s >= self.cfg.backoff_reset_wall_s:
            self.backoff.reset()
        await self._close(conn)

    async def _wait_backoff(self, stop: asyncio.Event) -> None:
        self.sm.to(ConnState.BACKOFF)
        delay = self.backoff.next_delay()
        log.info("rtds: reconnecting in %.2f s (attempt %d)", delay, self.backoff.attempt)
        await self._nap(delay, stop, wakeable=False)
