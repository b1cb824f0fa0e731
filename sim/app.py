"""SimApp: builds the shared state, serves the six endpoints, publishes sim.json.

Start-up (``start``), in order: clock and price history (and the Chainlink series derived
from it) -> markets and exchange -> bind the six sockets -> start the servers -> start
background tasks -> write sim.json atomically. Only then does anyone learn the URLs, so a
reader of sim.json can connect at once.
Shut-down (``stop``) is the mirror: remove sim.json -> stop background tasks -> close
WebSockets -> stop the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from core.clock import Clock
from core.config import write_json_atomic
from sim.admin import Admin
from sim.binance_rest import BinanceRest
from sim.binance_ws import BinanceWs
from sim.chainlink import ChainlinkModel
from sim.clob import Clob
from sim.context import SimConfig, SimContext
from sim.exchange import Exchange
from sim.faults import Faults
from sim.gamma import Gamma
from sim.ledger import LedgerError, LedgerStore, current_run_id
from sim.markets import MarketRegistry
from sim.orderlog import OrderLog
from sim.prices import PriceModel
from sim.rtds import Rtds

log = logging.getLogger("sim.app")

# port = base + index; rtds comes last so the first five keep the ports they always had
SERVICES = ("binance_ws", "binance_rest", "gamma", "clob", "admin", "rtds")
WS_SERVICES = ("binance_ws", "rtds")


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


class SimApp:
    """One simulator. ``start`` -> ``info``; ``stop`` is idempotent."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.ctx: SimContext | None = None
        self.info: dict[str, Any] | None = None
        self._runners: list[web.AppRunner] = []
        self._ws: BinanceWs | None = None
        self._rtds: Rtds | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @property
    def sim_json(self) -> Path:
        return self.config.run_dir / "sim.json"

    async def start(self) -> dict[str, Any]:
        """Build state, listen on every port, write sim.json; returns the published info."""
        assert not self._started, "SimApp.start() called twice"
        self._started = True
        cfg = self.config
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        clock = (Clock.accelerated(cfg.speed, cfg.start) if cfg.start_wall is None else
                 Clock(speed=cfg.speed, wall_epoch=cfg.start_wall, sim_epoch=cfg.start))
        prices = PriceModel(cfg.seed, clock.now())
        ctx = SimContext(config=cfg, clock=clock, prices=prices, faults=Faults(),
                         order_log=OrderLog())
        ctx.chainlink = ChainlinkModel(prices)
        ctx.markets = MarketRegistry(ctx)
        ctx.exchange = Exchange(ctx)
        # A sim restarted on the same run (the supervisor restarts a dead one) is the same
        # exchange: the accounts, their credentials and their ledger come back.
        # ctx.ledger is set after the load, so the restore itself saves nothing half-done.
        store = LedgerStore(cfg.run_dir, cfg.seed, current_run_id(cfg.run_dir))
        try:
            store.load(ctx.exchange)
        except LedgerError:
            with contextlib.suppress(OSError):      # kept for a look, never loaded again
                os.replace(store.path, store.path.with_name(store.path.name + ".bad"))
            ctx.exchange = Exchange(ctx)
        ctx.ledger = store
        self.ctx = ctx
        self._ws = BinanceWs(ctx)
        self._rtds = Rtds(ctx)
        apps = {
            "binance_ws": self._ws.app(),
            "binance_rest": BinanceRest(ctx).app(),
            "gamma": Gamma(ctx).app(),
            "clob": Clob(ctx).app(),
            "admin": Admin(ctx, lambda: len(self._ws.conns) if self._ws else 0,
                           lambda: len(self._rtds.conns) if self._rtds else 0).app(),
            "rtds": self._rtds.app(),
        }
        ports: dict[str, int] = {}
        socks: dict[str, socket.socket] = {}
        try:
            for i, name in enumerate(SERVICES):
                socks[name] = _bind(cfg.port_base + i if cfg.port_base else 0)
            for name in SERVICES:
                runner = web.AppRunner(apps[name], access_log=None, handle_signals=False,
                                       shutdown_timeout=1.0)
                await runner.setup()
                self._runners.append(runner)
                await web.SockSite(runner, socks[name]).start()
                ports[name] = socks[name].getsockname()[1]
        except BaseException:
            await self._cleanup_runners()
            for sock in socks.values():
                sock.close()
            raise
        self._ws.start()
        self._rtds.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(ctx.markets.run()))
        self._tasks.append(loop.create_task(ctx.exchange.run()))
        self.info = {
            **{n: f"{'ws' if n in WS_SERVICES else 'http'}://127.0.0.1:{ports[n]}"
               for n in SERVICES},
            "clock": clock.to_dict(), "pid": os.getpid(), "seed": cfg.seed,
            "speed": cfg.speed, "ports": ports,
        }
        write_json_atomic(self.sim_json, self.info)
        return self.info

    async def stop(self) -> None:
        """Unpublish, stop tasks, close sockets. Safe to call more than once."""
        if self.info is not None:
            with contextlib.suppress(OSError, ValueError):
                current = orjson.loads(self.sim_json.read_bytes())
                if current.get("pid") == os.getpid():
                    self.sim_json.unlink()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._ws is not None:
            await self._ws.stop()
        if self._rtds is not None:
            await self._rtds.stop()
        await self._cleanup_runners()
        if self.ctx is not None:
            self.ctx.save_ledger()

    async def _cleanup_runners(self) -> None:
        # Sequential and reversed: admin goes first, the feed last.
        while self._runners:
            runner = self._runners.pop()
            with contextlib.suppress(Exception):
                await runner.cleanup()
