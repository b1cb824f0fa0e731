"""The sim's state and HTTP apps inside the test process, on a clock that stands still.

A subprocess sim at speed 60 moves on by itself: a bought-out book side refills within a wall
second and resting orders get filled at random. This one does not: its clock advances one
micro-second of sim time per wall second and no background task runs, so a test can empty a
book side and then look at it, or rest orders that nothing will touch. The apps are the real
ones (middlewares included), served on 127.0.0.1 by aiohttp's TestServer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.clock import Clock
from core.markets import market_slug
from sim.admin import Admin
from sim.binance_rest import BinanceRest
from sim.binance_ws import BinanceWs
from sim.chainlink import ChainlinkModel
from sim.clob import Clob
from sim.context import SimConfig, SimContext
from sim.exchange import Exchange
from sim.faults import Faults
from sim.gamma import Gamma
from sim.markets import Market, MarketRegistry
from sim.orderlog import OrderLog
from sim.prices import PriceModel
from sim.rtds import Rtds

T0 = 1_800_000_300          # 5 minutes into the 15m window that starts at 1_800_000_000
U = 1_000_000
SERVICES = ("binance_ws", "binance_rest", "gamma", "clob", "admin", "rtds")


@dataclass
class InProc:
    ctx: SimContext
    url: dict[str, str]
    apps: dict[str, web.Application]
    http: aiohttp.ClientSession

    def routes(self, service: str) -> list[tuple[str, str]]:
        """(method, path template) of every route the service serves (HEAD left out)."""
        return [(r.method, r.resource.canonical) for r in self.apps[service].router.routes()
                if r.method != "HEAD" and r.resource is not None]

    @property
    def ex(self) -> Exchange:
        assert self.ctx.exchange is not None
        return self.ctx.exchange

    def market(self, asset: str = "btc", window: int = 900) -> Market:
        now = self.ctx.clock.now()
        m = self.ctx.markets.get(market_slug(asset, window, int(now) // window * window))
        assert m is not None and m.accepting_orders(now)
        return m

    async def call(self, service: str, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return await json_call(self.http, method, self.url[service] + path, body, headers)


async def json_call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
                    headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request (a bytes body goes as is, anything else as JSON); the reply must be JSON
    whatever its status."""
    data = body if body is None or isinstance(body, bytes) else orjson.dumps(body)
    async with http.request(method, url, data=data, headers=headers or {}) as r:
        assert r.content_type == "application/json", (method, url[:200], r.status,
                                                      r.content_type, await r.text())
        return r.status, orjson.loads(await r.read())


@asynccontextmanager
async def inproc_sim(tmp_path: Path, seed: int = 3, start: float = T0,
                     balance: float = 1_000_000.0) -> AsyncIterator[InProc]:
    cfg = SimConfig(speed=1.0, seed=seed, run_dir=tmp_path, start=start, balance=balance)
    clock = Clock(speed=1e-6, wall_epoch=time.time(), sim_epoch=start)
    ctx = SimContext(config=cfg, clock=clock, prices=PriceModel(seed, start), faults=Faults(),
                     order_log=OrderLog())
    ctx.chainlink = ChainlinkModel(ctx.prices)
    ctx.markets = MarketRegistry(ctx)
    ctx.exchange = Exchange(ctx)
    ws = BinanceWs(ctx)
    rtds = Rtds(ctx)
    apps = {"binance_ws": ws.app(), "binance_rest": BinanceRest(ctx).app(),
            "gamma": Gamma(ctx).app(), "clob": Clob(ctx).app(),
            "admin": Admin(ctx, lambda: len(ws.conns), lambda: len(rtds.conns)).app(),
            "rtds": rtds.app()}
    servers = {name: TestServer(apps[name]) for name in SERVICES}
    for s in servers.values():
        await s.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            yield InProc(ctx, {n: str(s.make_url("")).rstrip("/") for n, s in servers.items()},
                         apps, http)
    finally:
        await ws.stop()
        await rtds.stop()
        for s in servers.values():
            await s.close()


# -- CLOB auth and order bodies, built by hand (no chain: signatures are not checked) -------

def l1_headers(address: str, nonce: str = "0") -> dict[str, str]:
    return {"POLY_ADDRESS": address, "POLY_SIGNATURE": "0x" + "ab" * 65,
            "POLY_TIMESTAMP": str(int(time.time())), "POLY_NONCE": nonce}


def l2_headers(creds: dict[str, str], address: str, method: str, path: str,
               body: bytes = b"") -> dict[str, str]:
    """The L2 headers py-clob-client-v2 sends: an HMAC of ts + METHOD + path + body (the body
    as text with ' made ", as the client's build_hmac_signature does)."""
    ts = str(int(time.time()))
    key = base64.urlsafe_b64decode(creds["secret"])
    text = body.decode(errors="replace").replace("'", '"')
    msg = (ts + method + urlsplit(path).path + text).encode()
    sig = base64.urlsafe_b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()
    return {"POLY_ADDRESS": address, "POLY_API_KEY": creds["apiKey"],
            "POLY_PASSPHRASE": creds["passphrase"], "POLY_TIMESTAMP": ts,
            "POLY_SIGNATURE": sig}


@dataclass
class Trader:
    """A CLOB account (of the in-process sim or a subprocess one), signing requests as it."""

    http: aiohttp.ClientSession
    clob: str
    address: str
    creds: dict[str, str]
    salt: int = 0

    @classmethod
    async def make(cls, sim: InProc, n: int = 1) -> Trader:
        """Account number ``n`` of the in-process sim."""
        return await cls.at(sim.http, sim.url["clob"], "0x" + f"{n:040x}")

    @classmethod
    async def at(cls, http: aiohttp.ClientSession, clob: str, address: str) -> Trader:
        status, creds = await json_call(http, "GET", clob + "/auth/derive-api-key",
                                        headers=l1_headers(address))
        assert status == 200, creds
        return cls(http, clob, address, creds)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        raw = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
        return await json_call(self.http, method, self.clob + path, raw or None,
                               l2_headers(self.creds, self.address, method, path, raw))

    def order(self, token: str, side: str, maker_u: int, taker_u: int,
              order_type: str = "GTC", **fields: Any) -> dict[str, Any]:
        """A well-formed signed-order body; ``fields`` override order fields."""
        self.salt += 1
        order = {"salt": self.salt, "maker": self.address, "signer": self.address,
                 "tokenId": token, "makerAmount": str(maker_u), "takerAmount": str(taker_u),
                 "side": side, "expiration": "0", "signatureType": 0,
                 "timestamp": str(int(time.time() * 1000)), "metadata": "0x" + "0" * 64,
                 "builder": "0x" + "0" * 64, "signature": "0x" + "cd" * 65}
        order.update(fields)
        return {"order": order, "owner": self.creds["apiKey"], "orderType": order_type}

    def limit_buy(self, token: str, cents: int, shares: int) -> dict[str, Any]:
        return self.order(token, "BUY", shares * cents * U // 100, shares * U)

    def sweep_buy(self, token: str, dollars: int) -> dict[str, Any]:
        """A FAK buy at 0.99 for ``dollars``: takes every ask level it can reach."""
        return self.order(token, "BUY", dollars * 99 * U // 100, dollars * U, "FAK")


async def raw_http(url: str, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes as they are (aiohttp's client would refuse or re-encode bad header bytes);
    returns (status, body) of a ``Connection: close`` reply."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body
