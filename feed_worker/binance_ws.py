"""Connection care for the one combined Binance kline WebSocket.

What it does, and why:
- **Pings.** The websockets library answers every server ping with a pong carrying the same
  payload, as Binance requires (it disconnects after a minute without one); we also send our
  own keepalive pings, which Binance allows as unsolicited pongs' counterpart.
- **Stalls**, at two levels. Binance pushes a kline update at most every 2 s (1 s for 1s
  klines), and only when the candle changed: one stream on a quiet market can be silent for
  several seconds without anything being wrong. So:
  - the *connection* is stalled when no message at all arrived on it for ``stall_factor`` x
    the fastest stream's update interval (4 s of clock): with 24 streams, silence
    everywhere means the connection is dead;
  - a *single stream* is stalled only after ``stream_stall_factor`` x its candle interval,
    at least ``stream_stall_floor_s`` (90 s for 1m, 450 s for 5m, 1350 s for 15m, clock);
    meanwhile the backfill audit fetches any closed candle it missed.
  Both are measured on the run's clock with a wall-time floor (``stall_floor_wall_s``, 1 s):
  under an accelerated sim 4 s of clock is a few wall milliseconds, inside the hiccups of a
  busy machine. A stall counts one stale episode and drops the connection. Only streams we
  subscribed to are tracked; a frame tagged with any other name refreshes nothing.
- **Reconnects** use jittered exponential backoff (``base * 2^k``, capped, drawn uniformly
  from the upper half). A connection that lived ``backoff_reset_wall_s`` resets the backoff.
- **Rotation.** Binance closes a connection at 24 h; we rotate at ``rotate_after_s`` (23 h on
  the clock, so the sim's accelerated limit is respected too). A ``serverShutdown`` event
  rotates at once. Rotation is make-before-break: the new connection is open before the old
  one is closed.
- Every (re)connect calls ``on_connect`` so the backfill fetches what closed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from core.clock import ClockLike, sleep_unless
from feed_worker.config import FeedConfig
from feed_worker.klines import Frame, KlineUpdate, ServerShutdown
from feed_worker.lifecycle import CONN_TRANSITIONS, ConnState, StateMachine
from feed_worker.stats import FeedStats

log = logging.getLogger(__name__)

Handler = Callable[[bytes | str, int], Frame | None]
OPEN_ERRORS = (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed)


def combined_url(base: str, streams: tuple[str, ...]) -> str:
    return f"{base.rstrip('/')}/stream?streams={'/'.join(streams)}"


@dataclass
class Backoff:
    """Jittered exponential backoff, in wall seconds."""

    base: float
    cap: float
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        self.attempt += 1
        d = min(self.cap, self.base * 2 ** (self.attempt - 1))
        return self.rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempt = 0


class _Conn:
    """One open connection and what we know about its streams."""

    def __init__(self, ws: ClientConnection, opened_ns: int, streams: tuple[str, ...]) -> None:
        self.ws = ws
        self.opened_ns = opened_ns
        self.last_msg_ns = opened_ns      # any message at all, even one we could not parse
        self.last_seen: dict[str, int] = dict.fromkeys(streams, opened_ns)
        self.shutdown = False
        self.reader: asyncio.Task[None] | None = None
        self.close_reason = ""
        self.rotate_not_before_ns = 0     # after a failed rotation, when to try again


class BinanceStream:
    """Keeps one combined kline stream flowing into ``handler`` until ``stop`` is set."""

    def __init__(self, base_url: str, cfg: FeedConfig, handler: Handler, clock: ClockLike,
                 stats: FeedStats, *, on_connect: Callable[[str], None] = lambda why: None,
                 on_state: Callable[[ConnState], None] = lambda s: None,
                 rng: random.Random | None = None) -> None:
        self.streams = cfg.streams
        self.url = combined_url(base_url, self.streams)
        self.cfg = cfg
        self.handler = handler
        self.clock = clock
        self.stats = stats
        self.on_connect = on_connect
        self._on_state = on_state
        self.sm: StateMachine[ConnState] = StateMachine(
            "binance-ws", ConnState.IDLE, CONN_TRANSITIONS, lambda _o, n: self._on_state(n))
        self.backoff = Backoff(cfg.backoff_base_wall_s, cfg.backoff_cap_wall_s,
                               rng=rng or random.Random())
        self.stall_ns = int(cfg.stall_after_wall_s(clock.speed) * 1e9)
        self.stream_stall_ns = {
            s: int(cfg.stream_stall_after_wall_s(s.rsplit("_", 1)[1], clock.speed) * 1e9)
            for s in self.streams}
        self._wake = asyncio.Event()
        self.connects = 0

    # -- plumbing -----------------------------------------------------------------------------

    async def _nap(self, wall_s: float, stop: asyncio.Event, *, wakeable: bool = True) -> None:
        """Sleep ``wall_s`` real seconds, or less if stopped (or woken by a reader)."""
        await sleep_unless(self.clock, wall_s * self.clock.speed, stop,
                           *((self._wake,) if wakeable else ()))
        self._wake.clear()

    async def _open(self) -> _Conn:
        ws = await connect(
            self.url, open_timeout=self.cfg.open_timeout_wall_s,
            ping_interval=self.cfg.ping_interval_wall_s, ping_timeout=20, close_timeout=2,
            compression=None, max_queue=1024, max_size=1 << 20)
        conn = _Conn(ws, self.clock.monotonic_ns(), self.streams)
        conn.reader = asyncio.create_task(self._read(conn), name="binance-ws-reader")
        self.connects += 1
        log.info("connected to %s (%d streams)", self.url.split("?")[0], len(self.streams))
        return conn

    async def _read(self, conn: _Conn) -> None:
        ws, handle, mono = conn.ws, self.handler, self.clock.monotonic_ns
        last_seen = conn.last_seen
        try:
            while True:
                raw = await ws.recv(decode=False)
                now = mono()
                conn.last_msg_ns = now
                frame = handle(raw, now)
                if type(frame) is KlineUpdate:
                    if frame.stream in last_seen:     # never add a name we did not ask for
                        last_seen[frame.stream] = now
                elif type(frame) is ServerShutdown:
                    log.warning("serverShutdown received: rotating the connection")
                    conn.shutdown = True
                    self._wake.set()
        except ConnectionClosed as e:
            conn.close_reason = f"closed by peer: code {e.rcvd.code if e.rcvd else 1006}"
        except Exception:
            # A bug on the hot path: say so loudly, then recover like from a drop (the
            # backfill closes whatever gap this leaves).
            log.exception("the frame handler failed; reconnecting")
            conn.close_reason = "handler error"
        finally:
            self._wake.set()

    async def _close(self, conn: _Conn) -> None:
        if conn.reader is not None:
            conn.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await conn.reader
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(), 3.0)

    # -- decisions -----------------------------------------------------------------------------

    def stalled_streams(self, conn: _Conn, now_ns: int) -> list[str]:
        """Streams silent for longer than their own (long) limit."""
        lim = self.stream_stall_ns
        return [s for s, t in conn.last_seen.items() if now_ns - t > lim[s]]

    def _why_leave(self, conn: _Conn) -> str | None:
        assert conn.reader is not None
        if conn.reader.done():
            return "closed"
        if conn.shutdown:
            return "shutdown"
        now = self.clock.monotonic_ns()
        if now - conn.last_msg_ns > self.stall_ns:
            log.warning("stalled: no message at all on the connection for %.2f s",
                        (now - conn.last_msg_ns) / 1e9)
            return "stall"
        stalled = self.stalled_streams(conn, now)
        if stalled:
            log.warning("stalled: no update for %.2f s on %s (the connection is alive)",
                        (now - min(conn.last_seen[s] for s in stalled)) / 1e9,
                        ", ".join(stalled[:4]) + (" ..." if len(stalled) > 4 else ""))
            return "stall"
        age_clock_s = (now - conn.opened_ns) / 1e9 * self.clock.speed
        if age_clock_s >= self.cfg.rotate_after_s and now >= conn.rotate_not_before_ns:
            return "rotate"
        return None

    # -- the loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, watch, rotate, reconnect, until ``stop`` is set. Never raises for
        network trouble; cancellation closes the connection."""
        conn: _Conn | None = None
        try:
            while not stop.is_set():
                if conn is None:
                    conn = await self._connect(stop)
                    if conn is None:
                        continue
                why = None
                while why is None and not stop.is_set():
                    await self._nap(self.cfg.watchdog_wall_s, stop)
                    why = self._why_leave(conn)
                if stop.is_set():
                    break
                if why in ("rotate", "shutdown"):
                    conn = await self._rotate(conn, why)
                    if conn is not None:
                        continue
                else:
                    await self._drop(conn, why or "closed")
                    conn = None
                await self._wait_backoff(stop)
        finally:
            if conn is not None:
                await self._close(conn)
            self.stats.connected = 0
            if self.sm.can(ConnState.STOPPED):
                self.sm.to(ConnState.STOPPED, "stop")

    async def _connect(self, stop: asyncio.Event) -> _Conn | None:
        self.sm.to(ConnState.CONNECTING)
        try:
            conn = await self._open()
        except OPEN_ERRORS as e:
            log.warning("connect to %s failed: %s: %s", self.url.split("?")[0],
                        type(e).__name__, e)
            self.stats.reconnects += 1
            await self._wait_backoff(stop)
            return None
        self.sm.to(ConnState.STREAMING, f"connection #{self.connects}")
        self.stats.connected = 1
        self.on_connect("connect")
        return conn

    async def _rotate(self, old: _Conn, why: str) -> _Conn | None:
        """Make-before-break. Returns the connection to keep watching, or None when both
        are gone (the caller backs off and reconnects)."""
        self.sm.to(ConnState.ROTATING, why)
        try:
            new = await self._open()
        except OPEN_ERRORS as e:
            assert old.reader is not None
            if why == "rotate" and not old.reader.done():
                # The old connection still works and has an hour of margin: keep it.
                delay = self.backoff.next_delay()
                log.warning("rotation: the new connection failed (%s); keeping the old one, "
                            "retrying in %.2f s", e, delay)
                old.rotate_not_before_ns = self.clock.monotonic_ns() + int(delay * 1e9)
                self.sm.to(ConnState.STREAMING, "rotation postponed")
                return old
            log.warning("rotation: the new connection failed (%s); reconnecting", e)
            self.sm.to(ConnState.CLOSED, "rotation failed")
            self.stats.connected = 0
            self.stats.reconnects += 1
            await self._close(old)
            return None
        await self._close(old)
        self.backoff.reset()
        self.stats.rotations += 1
        self.sm.to(ConnState.STREAMING, f"rotated ({why})")
        self.on_connect(why)
        return new

    async def _drop(self, conn: _Conn, why: str) -> None:
        if why == "stall":
            self.sm.to(ConnState.STALLED)
            self.stats.stale_episodes += 1
        else:
            self.sm.to(ConnState.CLOSED, conn.close_reason or why)
        self.stats.connected = 0
        self.stats.reconnects += 1
        lived_s = (self.clock.monotonic_ns() - conn.opened_ns) / 1e9
        if lived_s >= self.cfg.backoff_reset_wall_s:
            self.backoff.reset()
        await self._close(conn)

    async def _wait_backoff(self, stop: asyncio.Event) -> None:
        self.sm.to(ConnState.BACKOFF)
        delay = self.backoff.next_delay()
        log.info("reconnecting in %.2f s (attempt %d)", delay, self.backoff.attempt)
        await self._nap(delay, stop, wakeable=False)
