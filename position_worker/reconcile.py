"""Lookups and reconciliation: what the venue knows, compared with what the journal says.

- ``resolve_pending``: every order whose fate is unknown (SENDING left by a crash, UNKNOWN
  after a lost reply, ACKED) is looked up, never re-sent. Not found: reported; failed only once
  its window ended more than ``lookup_grace_s`` ago. Orders whose send is in flight in this
  process are left to their own reply.
- ``reconcile``: the account's recent trades, summed per token, against the journal's orders
  of the same horizon, and its open orders (this worker only places FOK orders). Fills found
  for an order the journal had failed are adopted. Each mismatch is journaled and counted once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from position_worker.executors.base import OrderStatus
from position_worker.journal import OrderState

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
                res = await self.eng.executor.lookup(o)
            except Exception as e:        # read-only: safe to try again next round
                log.warning("lookup of %s failed: %s", o.client_key, e)
                continue
            if res.status != OrderStatus.NOT_FOUND:
                self.eng.apply(o, res, "lookup")
                continue
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
        self.eng.publish()

    async def reconcile(self) -> None:
        """Compare the journal with the venue's trades and open orders."""
        async with self._lock:
            await self._reconcile()

    async def _reconcile(self) -> None:
        # Only the recent past: windows that started within the horizon, trades matched
        # within it (a window's trades happen inside it), so a pass stays cheap forever.
        since = int(self.eng.clock.now()) - self.eng.cfg.reconcile_horizon_s
        try:
            trades = await self.eng.executor.trades(after=since)
            opened = await self.eng.executor.open_orders()
        except Exception as e:
            log.warning("reconciliation skipped: %s", e)
            return
        held: dict[str, float] = defaultdict(float)
        for t in trades:
            if str(t.get("side", "")).upper() == "BUY" and t.get("status") != "FAILED":
                held[str(t.get("asset_id", ""))] += float(t.get("size") or 0.0)
        # the book's own objects where they exist, so the book never holds a stale copy
        orders = [self.eng.book.get(o.client_key, o)
                  for o in self.eng.journal.orders_since(since - DAY_S)]
        ids = {o.order_id: o.client_key for o in orders if o.order_id}
        for o in orders:
            ex = held.pop(o.token, 0.0)
            if self.eng.in_flight(o.client_key):
                continue                       # its own reply is on the way
            if o.state in (_S.FILLED, _S.SETTLED):
                if abs(ex - o.shares) > 0.01:
                    self.mismatch(o.client_key, "shares",
                                  f"journal {o.shares:.4f} vs exchange {ex:.4f} shares")
            elif ex > 0.0:
                if o.state in (_S.REJECTED, _S.FAILED):
                    self.mismatch(o.client_key, "adopted",
                                  f"{ex:.4f} shares on the exchange for a {o.state} order")
                try:
                    res = await self.eng.executor.lookup(o)
                except Exception as e:
                    log.warning("lookup of %s failed: %s", o.client_key, e)
                    continue
                if res.status == OrderStatus.FILLED:
                    self.eng.apply(o, res, "reconcile")
        for token, size in held.items():
            if self.eng.journal.has_token(token):
                continue                       # an order older than the horizon
            self.mismatch(token[:16], "unknown_trades",
                          f"{size:.4f} shares bought on a token no order of ours names")
        for oo in opened:
            oid = str(oo.get("id", ""))
            self.mismatch(ids.get(oid, oid[:16]), "open_order",
                          f"open order {oid} (this worker only places FOK orders)")
