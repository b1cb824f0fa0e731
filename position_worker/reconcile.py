"""Lookups and reconciliation: what the venue knows, compared with what the journal says.

- ``resolve_pending``: every order whose fate is unknown (SENDING left by a crash, UNKNOWN
  after a lost reply, ACKED) is looked up, never re-sent. Not found: reported; failed only once
  its window ended more than ``lookup_grace_s`` ago. Orders whose send is in flight in this
  process are left to their own reply.
- ``reconcile``: the account's recent trades, summed per token, against the journal's orders
  of the same horizon, and its open orders (this worker only places FOK orders). A *full*
  pass looks ``reconcile_horizon_s`` back (two days: late fills of failed orders are still
  adopted); a *recent* pass only ``reconcile_recent_s`` (an hour: every open window and its
  lookup grace). The worker runs recent passes often and a full one now and then: a full
  pass re-reads every trade and order of two days, which on a busy account is thousands of
  records per pass (venue requests, and memory the allocator keeps after each peak). Fills found
  for an order the journal had failed are adopted. Each mismatch is journaled and counted once.
  Shares are compared only for orders whose window started inside the trades' horizon, and
  not for orders changed less than ``reconcile_grace_s`` (wall) before the trades were
  fetched: their reply may land during the fetch, and a venue indexes trades with a delay.
  The tokens the account has trades or open orders on are kept in ``venue_tokens``: intake
  treats them as already ordered (a journal lost or replaced must not mean a second order).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from position_worker.executors.base import OrderResult, OrderStatus
from position_worker.journal import FINAL_STATES, LIVE_STATES, OrderRow, OrderState

if TYPE_CHECKING:
    from position_worker.engine import Engine

log = logging.getLogger(__name__)
DAY_S = 86_400
_S = OrderState


class Reconciler:
    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self._reported: set[str] = set()
        self._lock = asyncio.Lock()          # one lookup/reconcile pass at a time
        self.venue_tokens: set[str] = set()  # tokens with our trades / open orders (last pass)

    def load_reported(self) -> None:
        """Mismatches journaled by earlier incarnations are not reported again."""
        for ev in self.eng.journal.events(kind="mismatch"):
            self._reported.add(str(ev["body"].get("key", "")))

    async def resolve_pending(self, *, startup: bool = False) -> None:
        """Look up every order whose fate is unknown; never re-send any of them."""
        async with self._lock:
            await self._resolve_pending(startup)

    async def _resolve_pending(self, startup: bool) -> None:
        pending = [o for o in self.eng.book.values()
                   if o.state in (_S.SENDING, _S.UNKNOWN, _S.ACKED)
                   and not self.eng.in_flight(o.client_key)]
        for o in pending:
            try:
                await self._resolve_one(o, startup)
            except Exception:             # one order's bad reply must not stop the others
                log.exception("lookup of %s: could not apply the result", o.client_key)
                self.eng.refresh(o.client_key)

    async def _resolve_one(self, o: OrderRow, startup: bool) -> None:
        try:
            res = await self.eng.executor.lookup(o)
        except Exception as e:            # read-only: safe to try again next round
            log.warning("lookup of %s failed: %s", o.client_key, e)
            return
        if self.eng.in_flight(o.client_key) or o.state in FINAL_STATES:
            return                        # moved while we waited for the venue
        if res.status != OrderStatus.NOT_FOUND:
            self.eng.apply(o, res, "lookup")
            return
        expired = self.eng.clock.now() > o.end_ts + self.eng.cfg.lookup_grace_s
        if o.state == _S.SENDING:
            self.mismatch(o.client_key, "sent_not_found",
                          "journaled as sent, unknown to the exchange", startup=startup)
        if expired:
            self.eng.fail(o, "never found on the exchange")
        elif o.state == _S.SENDING:
            with self.eng.journal.transaction():
                self.eng.journal.event(o.client_key, "lookup", {"status": "NOT_FOUND"})
                self.eng.journal.update_order(o, _S.UNKNOWN,
                                              error="sent without reply; not found yet")
            self.eng.changed(o)

    def mismatch(self, key_ck: str, kind: str, detail: Any, *, startup: bool = False) -> None:
        """Record a journal/exchange disagreement once (per key and kind)."""
        key = f"{kind}:{key_ck}"
        if key in self._reported:
            return
        self._reported.add(key)
        with self.eng.journal.transaction():
            self.eng.journal.event(key_ck, "mismatch", {"key": key, "kind": kind,
                                                        "detail": detail, "startup": startup})
        log.warning("reconciliation mismatch %s: %s", key, detail)
        self.eng.counters.on_mismatch()
        self.eng.publish()

    async def reconcile(self, *, full: bool = True) -> None:
        """Compare the journal with the venue's trades and open orders: over the full
        horizon, or (``full=False``) over the recent one."""
        async with self._lock:
            await self._reconcile(full)

    async def _reconcile(self, full: bool) -> None:
        # Only the recent past: windows that started within the horizon, trades matched
        # within it (a window's trades happen inside it), so a pass stays cheap forever.
        eng = self.eng
        horizon = eng.cfg.reconcile_horizon_s if full else eng.cfg.reconcile_recent_s
        since = int(eng.clock.now()) - horizon
        fetched_ns = time.time_ns()       # wall, like the journal's updated_ns
        try:
            trades = await eng.executor.trades(after=since)
            opened = await eng.executor.open_orders()
        except Exception as e:
            log.warning("reconciliation skipped: %s", e)
            return
        trades = _dicts(trades, "trade")
        opened = _dicts(opened, "open order")
        held: dict[str, float] = defaultdict(float)
        for t in trades:
            if str(t.get("side", "")).upper() == "BUY" and t.get("status") != "FAILED":
                held[str(t.get("asset_id", ""))] += _size(t.get("size"))
        seen = ({str(t.get("asset_id", "")) for t in trades}
                | {str(oo.get("asset_id", "")) for oo in opened}) - {""}
        # a recent pass only adds: the tokens it does not list are older than its horizon,
        # not gone (the next full pass replaces the set)
        self.venue_tokens = seen if full else self.venue_tokens | seen
        # the book's own objects where they exist, so the book never holds a stale copy;
        # orders are read further back than trades (a window's trades can follow its start)
        orders = [eng.book.get(o.client_key, o)
                  for o in eng.journal.orders_since(since - min(DAY_S, horizon))]
        ids = {o.order_id: o for o in orders if o.order_id}
        by_token = {o.token: o for o in orders if o.token}
        recent_ns = fetched_ns - int(eng.cfg.reconcile_grace_s * 1e9)
        for o in orders:
            ex = held.pop(o.token, 0.0)       # older orders' tokens leave the totals too
            if eng.in_flight(o.client_key):
                continue                       # its own reply is on the way
            try:
                await self._compare(o, ex, in_horizon=o.window_start >= since,
                                    settling=o.updated_ns > recent_ns)
            except Exception:
                log.exception("reconciliation of %s failed", o.client_key)
                eng.refresh(o.client_key)
        for token, size in held.items():
            if eng.journal.has_token(token):
                continue                       # an order older than the horizon
            self.mismatch(token[:16], "unknown_trades",
                          f"{size:.4f} shares bought on a token no order of ours names")
        for oo in opened:
            oid = str(oo.get("id", ""))
            o = ids.get(oid) or by_token.get(str(oo.get("asset_id", "")))
            if o is not None and (o.state in LIVE_STATES or eng.in_flight(o.client_key)):
                continue                       # e.g. a delayed order we know is ACKED
            self.mismatch(o.client_key if o is not None else oid[:16], "open_order",
                          f"open order {oid} (this worker only places FOK orders)")

    async def _compare(self, o: OrderRow, ex: float, *, in_horizon: bool,
                       settling: bool) -> None:
        """One order against the venue's share count ``ex`` for its token."""
        eng = self.eng
        if o.state in (_S.FILLED, _S.SETTLED):
            if o.state == _S.FILLED and eng.journal.has_provisional_fills(o.client_key):
                res = await self._lookup(o)    # the venue's own trades for the reply's amounts
                if res is not None and res.status == OrderStatus.FILLED:
                    eng.apply(o, res, "reconcile")
                return
            if in_horizon and not settling and abs(ex - o.shares) > 0.01:
                self.mismatch(o.client_key, "shares",
                              f"journal {o.shares:.4f} vs exchange {ex:.4f} shares")
        elif ex > 0.0:
            if o.state in (_S.REJECTED, _S.FAILED):
                self.mismatch(o.client_key, "adopted",
                              f"{ex:.4f} shares on the exchange for a {o.state} order")
            res = await self._lookup(o)
            if res is not None and res.status == OrderStatus.FILLED \
                    and not eng.in_flight(o.client_key):
                eng.apply(o, res, "reconcile")

    async def _lookup(self, o: OrderRow) -> OrderResult | None:
        try:
            return await self.eng.executor.lookup(o)
        except Exception as e:
            log.warning("lookup of %s failed: %s", o.client_key, e)
            return None


def _dicts(items: object, what: str) -> list[dict]:
    """The well-formed records of a venue listing; the rest is dropped and logged."""
    if not isinstance(items, list):
        log.warning("reconciliation: %s list is a %s, ignored", what, type(items).__name__)
        return []
    good = [x for x in items if isinstance(x, dict)]
    if len(good) != len(items):
        log.warning("reconciliation: %d malformed %s record(s) ignored", len(items) - len(good),
                    what)
    return good


def _size(v: object) -> float:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) else 0.0
