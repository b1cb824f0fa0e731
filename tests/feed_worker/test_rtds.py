"""The RTDS client: the parser on the documented messages, the price-to-beat rules, and
connection care against a local WebSocket server playing RTDS."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from core.clock import Clock
from core.errors import InputError
from core.markets import SLOTS
from feed_worker.config import FeedConfig
from feed_worker.lifecycle import ConnState
from feed_worker.reference import PriceToBeat
from feed_worker.rtds import RtdsStream
from feed_worker.rtds_frames import IGNORED, PONG, RefUpdate, action, parse_rtds
from feed_worker.stats import FeedStats

# The documented examples (wire-formats.md RTDS section; docs.polymarket.com RTDS pages).
DOC_CHAINLINK = (b'{"topic": "crypto_prices_chainlink", "type": "update", "timestamp": '
                 b'1776038400100, "payload": {"symbol": "btc/usd", "timestamp": 1776038400000, '
                 b'"value": 100000.0}}')
DOC_BINANCE_TOPIC = (b'{"topic": "crypto_prices", "type": "update", "timestamp": 1753314064237,'
                     b' "payload": {"symbol": "solusdt", "timestamp": 1753314064213, '
                     b'"value": 189.55}}')


def test_parser_reads_the_documented_chainlink_message():
    f = parse_rtds(DOC_CHAINLINK, 7)
    assert f == RefUpdate("btc/usd", 1776038400000, 100000.0, 1776038400100, 7)
    assert parse_rtds(DOC_CHAINLINK.decode(), 7) == f
    assert parse_rtds(b"PONG", 1) is PONG and parse_rtds("PONG", 1) is PONG
    # other topics and types are not data for us, and not errors either
    assert parse_rtds(DOC_BINANCE_TOPIC, 1) is IGNORED
    assert parse_rtds(b'{"topic":"crypto_prices_chainlink","type":"subscribe"}', 1) is IGNORED
    # an integer value and an upper-case symbol are fine
    f2 = parse_rtds(b'{"topic":"crypto_prices_chainlink","type":"update","timestamp":5,'
                    b'"payload":{"symbol":"ETH/USD","timestamp":4,"value":3}}', 1)
    assert f2.symbol == "eth/usd" and f2.value == 3.0 and f2.obs_ms == 4


@pytest.mark.parametrize("raw", [
    b"", b"\x00garbage{{{", DOC_CHAINLINK[: len(DOC_CHAINLINK) // 2], b"[1,2]", b"null",
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":null}',
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":{"symbol":"btc/usd",'
    b'"value":"not-a-number"}}',
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":{"symbol":"btc/usd",'
    b'"timestamp":1,"value":NaN}}',
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":{"symbol":"btc/usd",'
    b'"timestamp":1,"value":-5}}',
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":{"symbol":"btc/usd",'
    b'"timestamp":"1","value":5}}',
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":{"symbol":"btc/usd",'
    b'"timestamp":true,"value":5}}',
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":{"symbol":"btc/usd",'
    b'"timestamp":99999999999999999999999,"value":5}}',
    b'{"topic":"crypto_prices_chainlink","type":"update","payload":{"symbol":"",'
    b'"timestamp":1,"value":5}}',
    b'{"topic":"crypto_prices_chainlink","type":"update","timestamp":"x","payload":'
    b'{"symbol":"btc/usd","timestamp":1,"value":5}}',
])
def test_parser_refuses_malformed_frames(raw):
    with pytest.raises(InputError):
        parse_rtds(raw, 1)


def test_subscribe_action_has_a_json_string_filter():
    msg = orjson.loads(action("subscribe", ["btc/usd", "eth/usd"]))
    assert msg["action"] == "subscribe"
    assert msg["subscriptions"][0] == {"topic": "crypto_prices_chainlink", "type": "*",
                                       "filters": '{"symbol":"btc/usd"}'}
    assert orjson.loads(action("unsubscribe", ["x/usd"]))["action"] == "unsubscribe"


# -- price to beat --------------------------------------------------------------------------------

W = 1_800_000_000          # a 15-minute (and 5-minute) boundary, seconds


def ptb_for_btc() -> PriceToBeat:
    btc = [s for s in SLOTS if s.asset == "btc"]
    return PriceToBeat(btc, {"btc": 0})


def test_price_to_beat_is_the_first_observation_at_or_after_the_start():
    p = ptb_for_btc()
    p.observe(0, (W - 1) * 1000, 10.0)
    p.observe(0, W * 1000 + 400, 11.0)          # first at/after the start: this one
    p.observe(0, (W + 1) * 1000, 12.0)
    assert p.get(0, 300, W) == (11.0, W * 1000 + 400)
    assert p.get(0, 900, W) == (11.0, W * 1000 + 400)
    p.observe(0, (W + 300) * 1000, 13.0)        # exactly at the next 5m start: exact
    assert p.get(0, 300, W + 300) == (13.0, (W + 300) * 1000)
    assert p.get(0, 900, W) == (11.0, W * 1000 + 400)
    p.observe(0, (W + 299) * 1000, 99.0)         # older than the newest: changes nothing
    assert p.get(0, 300, W + 300)[0] == 13.0


def test_the_observation_at_the_start_wins_even_when_it_arrives_late():
    """Out of order: the start+1 s observation came first; the one stamped at the start,
    arriving after it, is the one the market settles on."""
    p = ptb_for_btc()
    p.observe(0, (W - 1) * 1000, 10.0)
    p.observe(0, (W + 1) * 1000, 12.0)
    assert p.get(0, 300, W) == (12.0, (W + 1) * 1000)
    p.observe(0, W * 1000, 11.0)                  # late, but the first at/after the start
    assert p.get(0, 300, W) == (11.0, W * 1000) and p.get(0, 900, W) == (11.0, W * 1000)
    p.observe(0, (W - 2) * 1000, 9.0)             # before the start: not this window's
    assert p.get(0, 300, W) == (11.0, W * 1000)


def test_price_to_beat_unknown_when_the_start_was_not_followed():
    p = ptb_for_btc()
    p.observe(0, (W + 5) * 1000, 11.0)           # joined 5 s after the start
    assert math.isnan(p.get(0, 300, W)[0])
    p.observe(0, (W + 297) * 1000, 1.0)
    p.lost()                                      # a malformed frame / a reconnect
    p.observe(0, (W + 300) * 1000 + 500, 2.0)
    assert math.isnan(p.get(0, 300, W + 300)[0])
    p.observe(0, (W + 598) * 1000, 3.0)
    p.observe(0, (W + 603) * 1000, 4.0)           # 3 s after the start: too late to trust
    assert math.isnan(p.get(0, 300, W + 600)[0])
    assert math.isnan(p.get(0, 300, W + 900)[0]) and p.get(0, 300, W + 900)[1] == 0


# -- connection care ----------------------------------------------------------------------------

FAKE_PERIOD_S = 0.02       # the fake server's own cadence: one update per symbol per period
DEADLINE_S = 30.0          # generous: a loaded machine is slow, never wrong


class FakeRtds:
    """Answers PING with PONG, records what clients send, streams every subscribed symbol
    once per FAKE_PERIOD_S unless ``silent`` (then only PONGs go on)."""

    def __init__(self) -> None:
        self.received: list[list[str]] = []
        self.sent: list[list[str]] = []     # per connection: the symbols of its data, in order
        # per connection: (client frame, how many data frames had been sent when it took
        # effect); data frames reach the client in order, so what it receives after that
        # many is what the server sent under the new subscriptions
        self.applied: list[list[tuple[str, int]]] = []
        self.silent = False
        self.muted: set[str] = set()        # symbols it stops sending (a paused feed)
        self.conns = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.conns += 1
        got: list[str] = []
        sent: list[str] = []
        applied: list[tuple[str, int]] = []
        self.received.append(got)
        self.sent.append(sent)
        self.applied.append(applied)
        subs: set[str] = set()

        async def reader() -> None:
            async for text in ws:
                got.append(text)
                if text == "PING":
                    await ws.send("PONG")
                    continue
                msg = orjson.loads(text)
                for s in msg["subscriptions"]:
                    sym = orjson.loads(s["filters"])["symbol"]
                    (subs.add if msg["action"] == "subscribe" else subs.discard)(sym)
                applied.append((text, len(sent)))

        task = asyncio.create_task(reader())
        try:
            t = 1
            while not task.done():
                await asyncio.sleep(FAKE_PERIOD_S)
                if self.silent:
                    continue
                for sym in sorted(subs - self.muted):
                    if sym not in subs:             # unsubscribed while we were sending
                        continue
                    t += 1
                    sent.append(sym)
                    await ws.send(orjson.dumps({
                        "topic": "crypto_prices_chainlink", "type": "update",
                        "timestamp": t, "payload": {"symbol": sym, "timestamp": t,
                                                    "value": 1.0}}).decode())
        except Exception:
            pass
        finally:
            task.cancel()


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeRtds, str]]:
    fake = FakeRtds()
    async with serve(fake.handler, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield fake, f"ws://127.0.0.1:{port}"


async def wait_until(cond, timeout: float = DEADLINE_S) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not met in time"
        await asyncio.sleep(0.01)      # polling interval of the condition


# Fast pings and backoff. The stall limits are what the tests set: a limit under a second or
# two would be tripped by this process pausing on a busy machine (the fake server and the
# stream share its event loop), so only the limit a test is about is short.
FAST = FeedConfig(rtds_ping_wall_s=0.1, stall_floor_wall_s=0.3, backoff_base_wall_s=0.05,
                  watchdog_wall_s=0.02, rtds_stall_s=2.0, rtds_symbol_stall_s=2.0)


def recording(seen: list[str]):
    """A frame handler that parses like the feed and records each update's symbol."""
    def handle(raw, recv_ns):
        f = parse_rtds(raw, recv_ns)
        if isinstance(f, RefUpdate):
            seen.append(f.symbol)
        return f
    return handle


async def test_pings_subscriptions_and_stall_by_data(server):
    fake, url = server
    stats = FeedStats()
    seen: list[str] = []
    # the connection's stall is tested here (1 s: the production floor); one symbol's is not
    cfg = dataclasses.replace(FAST, rtds_stall_s=1.0, rtds_symbol_stall_s=60.0)
    stream = RtdsStream(url, ("btc/usd",), cfg, recording(seen), Clock.real(), stats,
                        rng=random.Random(1))
    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        await wait_until(lambda: "btc/usd" in seen and stats.rtds_connected == 1)
        await wait_until(lambda: fake.received[0].count("PING") >= 2)
        await stream.subscribe(["eth/usd"])              # on the open connection
        await wait_until(lambda: "eth/usd" in seen)
        await stream.unsubscribe(["btc/usd"])
        await wait_until(lambda: any('"unsubscribe"' in m for m, _ in fake.applied[0]))
        cut = next(n for m, n in fake.applied[0] if '"unsubscribe"' in m)
        await wait_until(lambda: len(seen) >= cut + 20)
        # everything sent after the unsubscription took effect, on the same connection
        assert fake.sent[0][:cut] == seen[:cut] and "btc/usd" not in seen[cut:]
        assert fake.conns == 1 and stats.rtds_reconnects == 0, "no reconnect needed"
        episodes, reconnects = stats.rtds_stale_episodes, stats.rtds_reconnects
        fake.silent = True                                # PONGs go on, data stops
        await wait_until(lambda: stats.rtds_stale_episodes >= episodes + 1)
        assert stats.rtds_reconnects >= reconnects + 1
        fake.silent = False
        await wait_until(lambda: fake.conns >= 2 and stats.rtds_connected == 1)
        # the new connection subscribed to what is wanted now: eth only
        await wait_until(lambda: any("eth/usd" in m for m in fake.received[-1]))
        assert not any("btc/usd" in m for m in fake.received[-1])
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)
    assert stats.rtds_connected == 0


async def test_one_silent_symbol_is_resubscribed_not_a_reconnect(server):
    """A paused feed for one asset must not interrupt the others: a stale episode and a
    resubscription on the same connection, and the other symbol keeps streaming."""
    fake, url = server
    stats = FeedStats()
    seen: list[str] = []
    lost = []
    # one symbol's stall is tested here; the connection's (2 s) is not
    cfg = dataclasses.replace(FAST, rtds_symbol_stall_s=0.3)
    stream = RtdsStream(url, ("btc/usd", "eth/usd"), cfg, recording(seen), Clock.real(),
                        stats, on_disconnect=lambda: lost.append(1), rng=random.Random(1))

    def eth_frames() -> list[str]:       # the first subscribes both; then the resubscriptions
        return [m for m in fake.received[0] if m != "PING" and "eth/usd" in m]

    stop = asyncio.Event()
    task = asyncio.create_task(stream.run(stop))
    try:
        await wait_until(lambda: {"btc/usd", "eth/usd"} <= set(seen))
        episodes = stats.rtds_stale_episodes
        fake.muted.add("eth/usd")
        await wait_until(lambda: len(eth_frames()) >= 5)             # judged, and again
        assert stats.rtds_stale_episodes >= episodes + 2
        n = len(seen)
        await wait_until(lambda: seen[n:].count("btc/usd") > 20)      # btc streams on
        assert fake.conns == 1 and stats.rtds_reconnects == 0 and not lost
        resub = eth_frames()
        assert '"unsubscribe"' in resub[1] and '"subscribe"' in resub[2]
        assert '"unsubscribe"' in resub[3] and '"subscribe"' in resub[4]
        fake.muted.clear()
        n = len(seen)
        await wait_until(lambda: "eth/usd" in seen[n:])
    finally:
        stop.set()
        await asyncio.wait_for(task, DEADLINE_S)


def _unreachable(backoff_s: float, cap_s: float
                 ) -> tuple[RtdsStream, FeedStats, asyncio.Event, asyncio.Task[None]]:
    """A stream running against a port nobody listens on."""
    cfg = FeedConfig(backoff_base_wall_s=backoff_s, backoff_cap_wall_s=cap_s)
    stats = FeedStats()
    stream = RtdsStream("ws://127.0.0.1:9", ("btc/usd",), cfg, lambda r, n: None,
                        Clock.real(), stats)
    stop = asyncio.Event()
    return stream, stats, stop, asyncio.create_task(stream.run(stop))


async def test_unreachable_server_backs_off_and_stops_promptly():
    # backs off: attempt after attempt, each after a (short) pause
    _stream, stats, stop, task = _unreachable(0.05, 0.2)
    await wait_until(lambda: stats.rtds_reconnects >= 3)
    stop.set()
    await asyncio.wait_for(task, DEADLINE_S)
    # stops promptly: in the middle of a long backoff, stop cuts it short
    stream, stats, stop, task = _unreachable(60.0, 60.0)
    await wait_until(lambda: stats.rtds_reconnects >= 1 and stream.sm.state is ConnState.BACKOFF)
    stop.set()
    # the alternative, waiting the backoff out, takes at least half its base
    await asyncio.wait_for(task, 60.0 / 2)
    assert stream.sm.state is ConnState.STOPPED
