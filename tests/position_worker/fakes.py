"""Test doubles: a scripted venue, a scripted Gamma, and a markets table played by the test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from core.gamma import Resolution
from core.markets import N_SLOTS, SLOTS
from position_worker.executors.base import (
    Executor,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Prepared,
    SendUncertain,
    taker_fee,
)
from position_worker.journal import Fill, OrderRow
from state.layout import MARKET_DT, SlotStatus
from state.run import RunPaths
from state.table import TableWriter


def up_token(slot: int, ws: int) -> str:
    return f"{slot}{ws}1"


def down_token(slot: int, ws: int) -> str:
    return f"{slot}{ws}2"


class MarketTable:
    """Plays the feed worker: owns the "markets" table and writes slot rows."""

    def __init__(self, paths: RunPaths, now_ms: Callable[[], int] | None = None) -> None:
        self.w = TableWriter(paths.seg("markets"), MARKET_DT, N_SLOTS, name="markets")
        self.now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)

    def set(self, slot: int, window_start: int, *, up_ask: float = 0.55, down_ask: float = 0.47,
            size: float = 500.0, accepting: bool = True, status: int = SlotStatus.OK,
            updated_ns: int | None = None, slug: str | None = None,
            ref_ms: int | None = None, price_to_beat: float = 100.0,
            min_size: float = 5.0, tick_size: float = 0.01) -> None:
        """A scanned row; the reference is fresh (observed now) unless ``ref_ms`` says
        otherwise (0: none), with the window's price to beat (NaN: unknown)."""
        s = SLOTS[slot]
        r = np.zeros((), dtype=MARKET_DT)
        r["slot"] = slot
        r["status"] = status
        r["accepting"] = int(accepting)
        r["window_s"] = s.window_s
        r["window_start"] = window_start
        r["end_ts"] = window_start + s.window_s
        r["slug"] = (slug or s.slug(window_start)).encode()
        r["condition_id"] = f"0xcond{slot}-{window_start}".encode()
        r["up_token"] = up_token(slot, window_start).encode()
        r["down_token"] = down_token(slot, window_start).encode()
        r["up_ask"], r["up_ask_size"] = up_ask, size
        r["down_ask"], r["down_ask_size"] = down_ask, size
        r["up_bid"], r["down_bid"] = up_ask - 0.02, down_ask - 0.02
        r["updated_ns"] = time.monotonic_ns() if updated_ns is None else updated_ns
        r["ref_ms"] = self.now_ms() if ref_ms is None else ref_ms
        r["ref_price"] = 100.0 if r["ref_ms"] > 0 else float("nan")
        r["price_to_beat"] = price_to_beat
        r["tick_size"], r["min_size"] = tick_size, min_size
        self.w.write(slot, r)

    def close(self) -> None:
        self.w.unlink()
        self.w.close()


@dataclass
class FakeVenue(Executor):
    """Fills every order at its token's scripted price unless told otherwise.

    ``mode``: "fill" | "reject" | "uncertain_sent" (the venue fills it, the reply is lost) |
    "uncertain_unsent" (the request never arrived) | "reject_but_filled" (the reply says no,
    the venue has the fill) | "provisional" (the reply carries only amounts: a provisional
    fill; the venue's trade is what lookups see).
    ``before_prepare`` runs inside prepare (the world changing while it waits on the network);
    ``prepare_error`` is raised by prepare.
    """

    price: float = 0.5
    mode: str = "fill"
    placed: list[Prepared] = field(default_factory=list)
    orders: dict[str, OrderResult] = field(default_factory=dict)    # by token
    prepared: int = 0
    name: str = "fake"
    gate: asyncio.Event | None = None        # when set, place() waits for it (a slow reply)
    before_prepare: Callable[[], None] | None = None
    prepare_error: BaseException | None = None
    open: list = field(default_factory=list)   # what open_orders() returns
    cancel_error: BaseException | None = None  # raised by cancel_all() (once)
    keep_open: bool = False                    # cancel_all() "succeeds" but cancels nothing
    cancel_calls: int = 0

    async def prepare(self, req: OrderRequest) -> Prepared:
        self.prepared += 1
        if self.before_prepare is not None:
            self.before_prepare()
        await asyncio.sleep(0)                   # a real prepare yields to the loop
        if self.prepare_error is not None:
            raise self.prepare_error
        return Prepared(req, f"0xid-{req.client_key}", {"token": req.token,
                                                        "metadata": req.metadata})

    def _fill(self, p: Prepared) -> OrderResult:
        shares = round(p.request.stake / self.price, 2)
        res = OrderResult(OrderStatus.FILLED, p.order_id,
                          [Fill(f"t-{p.order_id}", self.price, shares,
                                taker_fee(shares, self.price))])
        self.orders[p.request.token] = res
        return res

    async def place(self, p: Prepared) -> OrderResult:
        self.placed.append(p)
        if self.gate is not None:
            self._fill(p)                        # the venue has it at once...
            await self.gate.wait()               # ... the reply is slow
        if self.mode == "reject":
            return OrderResult(OrderStatus.REJECTED, p.order_id, error="no liquidity")
        if self.mode == "reject_but_filled":
            self._fill(p)
            return OrderResult(OrderStatus.REJECTED, p.order_id, error="timeout in matching")
        if self.mode == "provisional":
            real = self._fill(p)
            f = real.fills[0]
            return OrderResult(OrderStatus.FILLED, p.order_id,
                               [Fill(f"{p.order_id}:reply", f.price, f.size, 0.0)])
        if self.mode == "uncertain_unsent":
            raise SendUncertain("connection reset")
        res = self._fill(p)
        if self.mode == "uncertain_sent":
            raise SendUncertain("timeout")
        return res

    async def lookup(self, o: OrderRow) -> OrderResult:
        return self.orders.get(o.token) or OrderResult(OrderStatus.NOT_FOUND, o.order_id)

    async def open_orders(self) -> list[dict]:
        return list(self.open)

    async def cancel_all(self) -> int:
        self.cancel_calls += 1
        await asyncio.sleep(0)
        if self.cancel_error is not None:
            e, self.cancel_error = self.cancel_error, None
            raise e
        if self.keep_open:
            return 0
        n, self.open = len(self.open), []
        return n

    async def trades(self, after: int | None = None) -> list[dict]:
        return [{"id": r.fills[0].trade_id, "asset_id": tok, "side": "BUY",
                 "price": r.fills[0].price, "size": r.shares}
                for tok, r in self.orders.items() if r.fills]


class FakeGamma:
    def __init__(self) -> None:
        self.resolved: dict[str, str] = {}      # slug -> "up" | "down"
        self.calls = 0

    async def resolution(self, slug: str) -> Resolution | None:
        self.calls += 1
        w = self.resolved.get(slug)
        if w is None:
            return None
        return Resolution(slug, {"up": float(w == "up"), "down": float(w == "down")})

    async def close(self) -> None:
        return None
