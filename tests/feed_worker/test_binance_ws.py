"""Connection care against a local WebSocket server playing Binance."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from core.clock import Clock
from core.errors import InputError
from core.markets import SYMBOLS
from feed_worker.binance_ws import Backoff, BinanceStream
from feed_worker.config import FeedConfig
from feed_worker.klines import parse_frame
from feed_worker.lifecycle import ConnState
from feed_worker.stats import FeedStats

from .fakes import kline_event

SPEED = 60.0
T0 = 1_699_999_200_000          # a 15-minute boundary
FAKE_PERIOD_S = 0.02            # the fake exchange's own update cadence
DEADLINE_S = 30.0               # generous: a loaded machine is slow, never wrong


class FakeBinance:
    """Streams a forming-candle update for each subscribed stream every FAKE_PERIOD_S."""

    def __init__(self) -> None:
        self.conns: list[dict] = []
        self.stall: dict[int, set[str]] = {}      # connection index -> silent streams
        self.on_open: Callable[[int, ServerConnection], None] | None = None
        self.garbage_first = 0
        self.refuse = False                       # answer new handshakes with 503
        self.refused = 0
        self.round_robin_s: float | None = None   # one stream per period, in turn
        self.stranger: str | None = None          # first send a frame tagged with this stream

    def process_request(self, conn: ServerConnection, request):
        if self.refuse:
            self.refused += 1
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        return None

    def open_conns(self) -> list[dict]:
        return [c for c in self.conns if c["closed"] is None]

    async def handler(self, ws: ServerConnection) -> None:
        q = parse_qs(urlsplit(ws.request.path).query)
        streams = q["streams"][0].split("/")
        idx = len(self.conns)
        info = {"ws": ws, "opened": time.monotonic(), "closed": None, "streams": streams,
                "overlap": len(self.open_conns())}
        self.conns.append(info)
        if self.on_open:
            self.on_open(idx, ws)
        try:
            for _ in range(self.garbage_first):
                await ws.send(b"\x00garbage{{{".decode())
            if self.stranger:
                ev = orjson.loads(kline_event("BTCUSDT", "1m", T0, T0 + 1000, False))
                ev["stream"] = self.stranger
                await ws.send(orjson.dumps(ev).decode())
            k = 0
            while self.round_robin_s is not None:   # like quiet Binance streams: each one
                s = streams[k % len(streams)]        # speaks only now and then
                k += 1
                sym, iv = s.split("@kline_")
                await ws.send(kline_event(sym.upper(), iv, T0, T0 + 1000, False).decode())
                await asyncio.sleep(self.round_robin_s)
            while ws.state is State.OPEN:     # (a silent handler would never see the close)
                for s in streams:
                    if s in self.stall.get(idx, ()):
                        continue
                    sym, iv = s.split("@kline_")
                    await ws.send(kline_event(sym.upper(), iv, T0, T0 + 1000, False).decode())
                await asyncio.sleep(FAKE_PERIOD_S)
        except ConnectionClosed:
            pass
        finally:
            info["closed"] = time.monotonic()


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeBinance, str]]:
    fb = FakeBinance()
    async with serve(fb.handler, "127.0.0.1", 0, process_request=fb.process_request) as server:
        port = server.sockets[0].getsockname()[1]
        yield fb, f"ws://127.0.0.1:{port}"


def make_stream(url: str, speed: float = SPEED, **cfg
                ) -> tuple[BinanceStream, FeedStats, list[str]]:
    """A stream with fast watchdog and backoff. The stall floor stays 2 s unless a test is
    about it: the fake server and the stream share this process's event loop, so a pause
    of the process on a busy machine silences the connection for as long."""
    cfg = {"symbols": ("BTCUSDT", "ETHUSDT"), "intervals": ("1m", "5m"),
           "stall_floor_wall_s": 2.0, "watchdog_wall_s": 0.02, "backoff_base_wall_s": 0.05,
           "backoff_cap_wall_s": 0.4, **cfg}
    config = FeedConfig(**cfg)
    stats = FeedStats()
    connects: list[str] = []

    def handle(raw, ns):
        stats.messages += 1
        try:
            return parse_frame(raw, ns)
        except InputError:
            stats.parse_errors += 1
            return None

    s = BinanceStream(url, config, handle, Clock.accelerated(speed), stats,
                      on_connect=connects.append, rng=random.Random(1))
    return s, stats, connects


async def until(cond: Callable[[], bool], timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)      # polling interval of the condition


async def run_until(stream: BinanceStream, cond: Callable[[], bool],
                    timeout: float = DEADLINE_S):
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        await until(cond, timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    assert stream.sm.state is ConnState.STOPPED


async def test_subscribes_all_streams_and_answers_pings(fake):
    fb, url = fake
    pongs: list[float] = []

    def on_open(idx, ws):
        async def ping():
            waiter = await ws.ping(b"20s-ping")
            pongs.append(await asyncio.wait_for(waiter, 5))
        asyncio.get_running_loop().create_task(ping())

    fb.on_open = on_open
    stream, stats, connects = make_stream(url, ping_interval_wall_s=None)
    await run_until(stream, lambda: bool(pongs) and stats.messages > 20)
    assert fb.conns[0]["streams"] == ["btcusdt@kline_1m", "btcusdt@kline_5m",
                                      "ethusdt@kline_1m", "ethusdt@kline_5m"]
    assert connects == ["connect"] and stats.reconnects == 0


async def test_a_silent_connection_is_a_stall_and_reconnects(fake, caplog):
    fb, url = fake
    fb.stall[0] = {"btcusdt@kline_1m", "btcusdt@kline_5m", "ethusdt@kline_1m",
                   "ethusdt@kline_5m"}                  # like the sim's ws_stall "*"
    # The connection's wall floor is the subject: 0.5 s. Per-stream limit 600 s of clock =
    # 10 s wall: far from it.
    stream, stats, connects = make_stream(url, stall_floor_wall_s=0.5,
                                          stream_stall_floor_s=600.0)
    with caplog.at_level(logging.WARNING, logger="feed_worker.binance_ws"):
        await run_until(stream, lambda: len(fb.conns) >= 2 and stats.connected == 1)
    lived = fb.conns[0]["closed"] - fb.conns[0]["opened"]
    assert stream.cfg.stall_after_wall_s(SPEED) == 0.5   # the wall floor, not 2 x 2 s / 60
    assert lived >= stream.cfg.stall_after_wall_s(SPEED)
    # the connection's own limit fired, not the per-stream one
    assert "no message at all on the connection" in caplog.text
    assert "(the connection is alive)" not in caplog.text
    assert stats.stale_episodes == stats.reconnects >= 1    # each reconnect was a stall
    assert connects[:2] == ["connect", "connect"]


async def test_one_silent_stream_is_a_stall_only_after_the_long_per_stream_limit(fake, caplog):
    fb, url = fake
    fb.stall[0] = {"ethusdt@kline_1m"}
    # per-stream limit 150 s of clock (> 1.5 x 60 s) = 2.5 s wall at speed 60, above the
    # connection's 2 s floor, which never applies: the connection was busy all along
    stream, stats, connects = make_stream(url, stream_stall_floor_s=150.0)
    limit = stream.cfg.stream_stall_after_wall_s("1m", SPEED)
    assert limit > stream.cfg.stall_after_wall_s(SPEED)
    with caplog.at_level(logging.WARNING, logger="feed_worker.binance_ws"):
        await run_until(stream, lambda: len(fb.conns) >= 2 and stats.connected == 1)
    lived = fb.conns[0]["closed"] - fb.conns[0]["opened"]
    assert lived >= limit
    assert "ethusdt@kline_1m (the connection is alive)" in caplog.text
    assert "no message at all on the connection" not in caplog.text
    assert stats.stale_episodes == stats.reconnects >= 1    # each reconnect was a stall
    assert connects[:2] == ["connect", "connect"]


async def test_quiet_streams_on_a_busy_connection_are_not_stalls(fake):
    # Binance only pushes a kline update when something changed: 4-5 s gaps per stream are
    # normal. Speed 10, 12 streams: the connection limit is 2 s wall (its floor); each stream
    # is heard every 1.2 s wall (12 s of clock), while the connection hears something every
    # 0.1 s (20x under its limit, so a busy machine's hiccup does not trip it).
    fb, url = fake
    fb.round_robin_s = 0.1
    stream, stats, connects = make_stream(url, speed=10.0, symbols=SYMBOLS,
                                          intervals=("1m", "5m"))
    assert len(stream.streams) == 2 * len(SYMBOLS) == 12
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        await until(lambda: stats.messages >= 40)       # >= 4 s: each stream heard 3 times
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    assert stats.stale_episodes == 0 and stats.reconnects == 0 and connects == ["connect"]


async def test_a_frame_for_a_stream_we_did_not_subscribe_is_no_stall(fake):
    fb, url = fake
    fb.stranger = "xrpusdt@kline_1m"
    # per-stream limit 30 s of clock = 0.5 s wall, raised to the 2 s floor: a never-refreshed
    # key would trip it
    stream, stats, connects = make_stream(url, stream_stall_floor_s=30.0,
                                          stream_stall_factor=0.5)
    limit = stream.cfg.stream_stall_after_wall_s("1m", SPEED)
    # The window, counted in frames: the fake sends at most len(streams) per period, so
    # this many take at least 1.5 x the limit, however slow the machine is.
    window = int(1.5 * limit / FAKE_PERIOD_S) * len(stream.streams)
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        await until(lambda: stats.messages > 0)           # the stranger came first
        await until(lambda: stats.messages > window or stats.stale_episodes > 0)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    assert stats.stale_episodes == 0 and connects == ["connect"]


async def test_server_shutdown_rotates_make_before_break(fake):
    fb, url = fake

    def on_open(idx, ws):
        if idx == 0:
            async def later():
                await asyncio.sleep(0.1)    # let some data flow first
                await ws.send('{"stream":"!serverShutdown","data":'
                              '{"e":"serverShutdown","E":1}}')
            asyncio.get_running_loop().create_task(later())

    fb.on_open = on_open
    stream, stats, connects = make_stream(url)
    await run_until(stream, lambda: stats.rotations == 1 and fb.conns[0]["closed"] is not None)
    assert fb.conns[1]["overlap"] == 1       # the old one was still open when the new came
    assert fb.conns[1]["opened"] <= fb.conns[0]["closed"]
    assert stats.reconnects == 0 and stats.stale_episodes == 0
    assert connects == ["connect", "shutdown"]


async def test_rotates_before_the_connection_age_limit(fake):
    fb, url = fake
    stream, stats, connects = make_stream(url, rotate_after_s=0.5 * SPEED)   # 0.5 s wall
    await run_until(stream, lambda: stats.rotations >= 2)
    assert stats.reconnects == 0 and connects[:3] == ["connect", "rotate", "rotate"]
    assert all(c["overlap"] == 1 for c in fb.conns[1:3])


async def test_failed_rotation_keeps_the_working_connection(fake):
    fb, url = fake

    def on_open(idx, ws):
        if idx == 0:
            fb.refuse = True        # every handshake after the first (a rotation) is refused

    fb.on_open = on_open
    stream, stats, connects = make_stream(url, rotate_after_s=0.3 * SPEED)
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        await until(lambda: fb.refused >= 2)          # two rotation attempts refused...
        n = stats.messages
        await until(lambda: stats.messages > n + 20)  # ...and the old connection streams on
        assert stats.reconnects == 0 and stats.rotations == 0 and len(fb.open_conns()) == 1
        fb.refuse = False
        await until(lambda: stats.rotations >= 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    assert connects[:2] == ["connect", "rotate"] and stats.reconnects == 0


async def test_dropped_connection_reconnects_and_requests_backfill(fake):
    fb, url = fake

    def on_open(idx, ws):
        if idx == 0:
            asyncio.get_running_loop().call_later(0.1, ws.transport.abort)

    fb.on_open = on_open
    stream, stats, connects = make_stream(url)
    await run_until(stream, lambda: len(fb.conns) >= 2 and stats.messages > 30)
    assert stats.reconnects >= 1 and stats.stale_episodes == 0      # a drop, not a stall
    assert connects[:2] == ["connect", "connect"]


async def test_malformed_frames_are_dropped_not_fatal(fake):
    fb, url = fake
    fb.garbage_first = 5
    stream, stats, _connects = make_stream(url)
    await run_until(stream, lambda: stats.messages > 20)
    assert stats.parse_errors == 5 and stats.reconnects == 0 and len(fb.conns) == 1


async def test_unreachable_server_backs_off_and_stops_promptly():
    # backs off: attempt after attempt, each after a (short) pause
    stream, stats, connects = make_stream("ws://127.0.0.1:1")
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    await until(lambda: stats.reconnects >= 4)
    stop.set()
    await asyncio.wait_for(task, DEADLINE_S)
    assert connects == []
    # stops promptly: in the middle of a long backoff, stop cuts it short
    stream, stats, connects = make_stream("ws://127.0.0.1:1", backoff_base_wall_s=60.0,
                                          backoff_cap_wall_s=60.0)
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    await until(lambda: stats.reconnects >= 1 and stream.sm.state is ConnState.BACKOFF)
    stop.set()
    # the alternative, waiting the backoff out, takes at least half its base
    await asyncio.wait_for(task, stream.cfg.backoff_base_wall_s / 2)
    assert stream.sm.state is ConnState.STOPPED and connects == []


def test_backoff_is_jittered_exponential_and_capped():
    b = Backoff(base=0.25, cap=30.0, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(12)]
    for k, d in enumerate(delays):
        hi = min(30.0, 0.25 * 2 ** k)
        assert hi / 2 <= d <= hi
    assert len(set(delays)) == len(delays)       # jittered
    b.reset()
    assert b.next_delay() <= 0.25
