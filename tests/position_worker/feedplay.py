"""The test plays the feed worker: scan one slot from the sim (Gamma + CLOB /book) and write
its row of the "markets" table, as the scanner would. No dependency on feed_worker/."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
import orjson

from core.clock import Clock
from core.config import Endpoints
from core.markets import SLOTS
from state.layout import MARKET_DT, SlotStatus
from tests.position_worker.fakes import MarketTable


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as r:
        return orjson.loads(r.read())


def get_book(url: str, deadline_s: float = 15.0) -> object:
    """A freshly listed market is on Gamma before its CLOB book exists (the sim opens it a few
    sim seconds later, as production does): wait for the book instead of failing on 404."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return get_json(url)
        except urllib.error.HTTPError as e:
            if e.code != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


@dataclass
class Scanned:
    slot: int
    window_start: int
    slug: str
    up_token: str
    down_token: str
    up_ask: float
    down_ask: float
    up_ask_size: float
    down_ask_size: float


def best(levels: list[dict]) -> tuple[float, float]:
    """The best level is LAST in both bids and asks (Polymarket's order)."""
    if not levels:
        return 0.0, 0.0
    lv = levels[-1]
    return float(lv["price"]), float(lv["size"])


class FeedPlayer:
    def __init__(self, table: MarketTable, endpoints: Endpoints, clock: Clock) -> None:
        self.table = table
        self.ep = endpoints
        self.clock = clock

    def _avoid_rollover(self, window_s: int, min_left: float = 0.4) -> None:
        """If the next window is about to become the current one (its price then starts to
        move fast at speed 60), wait for the rollover first: the test's order should meet
        the book it was priced from. A wait on the clock, with a deadline."""
        deadline = time.monotonic() + 60
        while (window_s - self.clock.now() % window_s) < min_left * window_s:
            if time.monotonic() > deadline:
                raise AssertionError("the sim clock does not advance")
            time.sleep(0.02)

    def scan(self, slot: int, *, window_start: int | None = None,
             next_window: bool = True) -> Scanned:
        """Write the slot's row for the NEXT window (default) or the current one.

        The next window's market already takes orders, and before its window starts its
        fair price is 0.5, so its book is steady; near the end of the current window the sim's
        fair price (rightly) moves by several cents per wall second at speed 60, and a FOK
        order priced from a scan 0.1 s old may be killed."""
        s = SLOTS[slot]
        if window_start is None and next_window:
            self._avoid_rollover(s.window_s)
        ws = s.window_start(self.clock.now())
        if window_start is not None:
            ws = window_start
        elif next_window:
            ws += s.window_s
        slug = s.slug(ws)
        m = get_json(f"{self.ep.gamma}/markets/slug/{slug}")
        assert isinstance(m, dict)
        names = orjson.loads(m["outcomes"])
        toks = orjson.loads(m["clobTokenIds"])
        tok = {str(n).lower(): str(t) for n, t in zip(names, toks, strict=True)}
        books = {}
        for side in ("up", "down"):
            b = get_book(f"{self.ep.clob}/book?token_id={tok[side]}")
            assert isinstance(b, dict)
            books[side] = best(b.get("asks", []))
        # a market listed a moment ago opens for orders a few sim seconds later
        deadline = time.monotonic() + 15
        while not m.get("acceptingOrders") and time.monotonic() < deadline:
            time.sleep(0.02)
            m = get_json(f"{self.ep.gamma}/markets/slug/{slug}")
            assert isinstance(m, dict)
        r = np.zeros((), dtype=MARKET_DT)
        r["slot"] = slot
        r["status"] = SlotStatus.OK
        r["accepting"] = int(bool(m.get("acceptingOrders")))
        r["window_s"] = s.window_s
        r["window_start"] = ws
        r["end_ts"] = ws + s.window_s
        r["slug"] = slug.encode()
        r["condition_id"] = str(m.get("conditionId", "")).encode()
        r["up_token"] = tok["up"].encode()
        r["down_token"] = tok["down"].encode()
        (r["up_ask"], r["up_ask_size"]), (r["down_ask"], r["down_ask_size"]) = (
            books["up"], books["down"])
        r["updated_ns"] = time.monotonic_ns()
        # the feed's reference fields: a fresh observation (market clock) and a price to beat
        r["ref_ms"], r["ref_price"], r["price_to_beat"] = self.clock.now_ms(), 100.0, 100.0
        self.table.w.write(slot, r)
        return Scanned(slot, ws, slug, tok["up"], tok["down"], books["up"][0],
                       books["down"][0], books["up"][1], books["down"][1])
