"""The position engine: decide, execute, look up, settle, reconcile. No loops, no CLI.

Every state change is journaled first and mirrored into shared memory second, so a crash at
any point leaves the journal ahead of (or equal to) what readers saw, never behind.

Money-safety rules, in the order they bite:
1. An intent becomes an order only inside one journal transaction that also claims its
   idempotency key (UNIQUE), so one (slot, window) can never have two orders.
2. The signed request is journaled (SENDING, fsynced) before it is sent.
3. An order whose fate is unknown (no reply, crash, timeout) is looked up, never re-sent.
   It counts as exposure until its fate is known, and is failed only when the exchange has
   shown no trace of it until well after its window closed.
4. Fills found on the exchange for an order the journal had failed are adopted: the money
   was spent, so the position exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from core.clock import ClockLike
from core.errors import InputError, RetryableError
from position_worker.decide import deduplicate, fence, validate
from position_worker.executors.base import (
    Executor,
    OrderRequest,
    OrderResult,
    OrderStatus,
    PrepareError,
)
from position_worker.faults import CrashPoints
from position_worker.gamma import GammaClient
from position_worker.intents import Intent
from position_worker.journal import (
    FINAL_STATES,
    LIVE_STATES,
    Journal,
    OrderRow,
    OrderState,
)
from position_worker.keys import client_key, idem_key, order_metadata
from position_worker.markets import MarketsView
from position_worker.positions import PositionStore
from position_worker.reconcile import Reconciler
from position_worker.risk import Book, RiskConfig, check
from position_worker.settle import Settler
from position_worker.stats import Stats, compute
from state.control import ControlBlock
from state.layout import Outcome

log = logging.getLogger(__name__)
DAY_S = 86_400
_S = OrderState


@dataclass(frozen=True)
class EngineConfig:
    risk: RiskConfig = field(default_factory=RiskConfig)
    lookup_grace_s: float = 120.0   # clock s after window end before an unseen order fails
    settle_backoff_max_s: float = 30.0
    reconcile_horizon_s: int = 2 * DAY_S


class Engine:
    def __init__(self, *, journal: Journal, store: PositionStore, executor: Executor,
                 markets: MarketsView, gamma: GammaClient, control: ControlBlock,
                 clock: ClockLike, cfg: EngineConfig | None = None,
                 crash: CrashPoints | None = None) -> None:
        self.journal = journal
        self.store = store
        self.executor = executor
        self.markets = markets
        self.gamma = gamma
        self.control = control
        self.clock = clock
        self.cfg = cfg or EngineConfig()
        self.crash = crash or CrashPoints(None)
        self.book: dict[str, OrderRow] = {}          # every order not final
        self.ring_ids: dict[int, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        # Orders whose send is in progress in this process: only their own reply may move
        # them, a lookup must wait until the send has ended (with a reply or an error).
        self._inflight: set[str] = set()
        self.settler = Settler(self)
        self.reconciler = Reconciler(self)
        self._paused_seen = False

    # -- recovery ---------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the book and shared memory from the journal (start-up, before intake)."""
        live = self.journal.orders(tuple(s for s in _S if s not in FINAL_STATES))
        recent = self.journal.orders(limit=self.store.capacity)
        orders = list({o.client_key: o for o in [*recent, *live]}.values())
        self.book = {o.client_key: o for o in live}
        self.store.rebuild(orders)
        self.reconciler.load_reported()
        self.publish()
        log.info("journal: %d orders, %d not final (%s)", len(orders), len(self.book),
                 ", ".join(f"{o.client_key}={o.state}" for o in self.book.values()) or "-")

    async def recover(self) -> None:
        """Settle the fate of everything the last incarnation left in flight."""
        for o in [o for o in self.book.values() if o.state == _S.NEW]:
            # NEW: the request was never journaled, so it was never sent. Resume it while its
            # window is open and trading is allowed; otherwise it simply never happened.
            if self.clock.now() < o.end_ts and not self.paused():
                log.info("resuming unsent order %s (%s)", o.client_key, o.slug)
                self.launch(o)
            else:
                self.fail(o, "interrupted before sending; window over or paused")
        await self.resolve_pending(startup=True)
        await self.reconcile()

    # -- intents ----------------------------------------------------------------------------

    def paused(self) -> bool:
        return self.control.paused or self.control.killed

    def risk_book(self, now_s: float) -> Book:
        held = list(self.book.values())
        exposure = sum(o.cost if o.state == _S.FILLED else o.stake for o in held)
        day_start = float(int(now_s) // DAY_S * DAY_S)
        return Book(open_count=len(held), exposure=exposure,
                    realized_today=self.journal.realized_since(day_start))

    def decide(self, it: Intent) -> OrderRow | None:
        """Journal the intent and its decision; returns the new order when accepted."""
        now = self.clock.now()
        verdict = fence(it, self.control.active_epoch) or validate(it)
        quote = None
        if verdict is None:
            verdict = deduplicate(it, self.journal.has_order(idem_key(it.slot, it.window_start)))
        if verdict is None:
            quote = self.markets.quote(it.slot)
            verdict = check(it, quote, self.risk_book(now), self.cfg.risk, paused=self.paused(),
                            now_s=now, now_mono_ns=self.clock.monotonic_ns())
        order = None
        with self.journal.transaction():
            ck = client_key(it.slot, it.window_start) if verdict.ok else ""
            row = self.journal.record_intent(it, accepted=verdict.ok, reject=verdict.reason,
                                             detail=verdict.detail, client_key=ck)
            if verdict.ok:
                assert quote is not None
                order = OrderRow(
                    client_key=ck, idem_key=idem_key(it.slot, it.window_start), intent_row=row,
                    slot=it.slot, window_start=it.window_start, end_ts=quote.end_ts,
                    slug=it.slug, condition_id=quote.condition_id, outcome=it.outcome,
                    token=quote.token(it.outcome), stake=self.cfg.risk.stake,
                    max_price=it.max_price, epoch=it.epoch)
                self.journal.insert_order(order)
            self.journal.set_lane_cursor(it.lane, self.ring_ids.get(it.lane, 0), it.seq + 1)
        if order is None:
            assert verdict.reason is not None
            log.info("intent rejected: lane %d seq %d slot %d %s: %s (%s)", it.lane, it.seq,
                     it.slot, it.slug, verdict.reason.name, verdict.detail)
            self.publish()
            return None
        log.info("intent accepted: %s %s %s stake %.2f max %.2f -> order %s", it.slug,
                 Outcome(it.outcome).name, it.reason or "-", order.stake, it.max_price,
                 order.client_key)
        self.changed(order)
        return order

    # -- execution --------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("order task failed", exc_info=task.exception())

    def launch(self, o: OrderRow) -> None:
        """Execute ``o`` in its own task; it counts as in flight from this moment."""
        self._inflight.add(o.client_key)
        self.spawn(self.execute(o))

    async def execute(self, o: OrderRow) -> None:
        """prepare -> journal SENDING -> send once -> journal the reply."""
        self._inflight.add(o.client_key)
        try:
            await self._execute(o)
        finally:
            self._inflight.discard(o.client_key)

    async def _execute(self, o: OrderRow) -> None:
        req = OrderRequest.from_order(o, order_metadata(o.slot, o.window_start))
        try:
            p = await self.executor.prepare(req)
        except (PrepareError, RetryableError, InputError) as e:
            self.fail(o, f"prepare: {e}")
            return
        with self.journal.transaction():
            self.journal.update_order(o, _S.SENDING, order_id=p.order_id,
                                      request=orjson.dumps(p.payload).decode(),
                                      sent_ns=time.time_ns())
            self.journal.event(o.client_key, "request", p.payload)
        self.changed(o)
        self.crash.hit("after_journal")
        try:
            res = await self.executor.place(p)
        except Exception as e:           # SendUncertain, or anything mid-request: look it up
            with self.journal.transaction():
                self.journal.event(o.client_key, "send_uncertain", {"error": str(e)})
                self.journal.update_order(o, _S.UNKNOWN, error=str(e)[:500])
            log.warning("order %s: outcome unknown (%s); will look it up, never re-send",
                        o.client_key, e)
            self.changed(o)
            return
        self.crash.hit("after_send")
        self.apply(o, res, "reply")

    def apply(self, o: OrderRow, res: OrderResult, kind: str) -> None:
        """Journal what the venue said about ``o`` and move it accordingly."""
        with self.journal.transaction():
            self.journal.event(o.client_key, kind, {
                "status": str(res.status), "order_id": res.order_id, "error": res.error,
                "fills": [f.__dict__ for f in res.fills], "raw": res.raw})
            order_id = res.order_id or o.order_id
            if res.status == OrderStatus.FILLED and res.fills:
                self.journal.record_fills(o.client_key, res.fills)
                fills = self.journal.fills(o.client_key)
                shares = sum(f.size for f in fills)
                self.journal.update_order(
                    o, _S.FILLED if o.state != _S.SETTLED else None, order_id=order_id,
                    shares=shares, cost=sum(f.size * f.price for f in fills),
                    fees=sum(f.fee for f in fills), error="")
            elif res.status in (OrderStatus.ACKED, OrderStatus.FILLED):
                if o.state in (_S.SENDING, _S.UNKNOWN):
                    self.journal.update_order(o, _S.ACKED, order_id=order_id)
            elif res.status == OrderStatus.REJECTED and o.state in LIVE_STATES:
                self.journal.update_order(o, _S.REJECTED, order_id=order_id,
                                          error=res.error[:500])
        log.info("order %s %s: %s%s", o.client_key, kind, o.state,
                 f" {o.shares:.2f} sh @ {o.avg_price:.3f} fee {o.fees:.4f}"
                 if o.state == _S.FILLED else f" ({res.error})" if res.error else "")
        self.changed(o)

    def fail(self, o: OrderRow, why: str) -> None:
        with self.journal.transaction():
            self.journal.event(o.client_key, "failed", {"error": why})
            self.journal.update_order(o, _S.FAILED, error=why[:500])
        log.warning("order %s failed: %s", o.client_key, why)
        self.changed(o)

    # -- lookups, settlement, reconciliation (settle.py, reconcile.py) --------------------

    async def resolve_pending(self, *, startup: bool = False) -> None:
        """Look up every order whose fate is unknown; never re-send any of them."""
        await self.reconciler.resolve_pending(startup=startup)

    async def reconcile(self) -> None:
        """Compare the journal with the venue's trades and open orders."""
        await self.reconciler.reconcile()

    async def settle_due(self) -> int:
        """Settle filled positions whose window is over and whose market has resolved."""
        return await self.settler.settle_due()

    def mismatch(self, key_ck: str, kind: str, detail: Any, *, startup: bool = False) -> None:
        self.reconciler.mismatch(key_ck, kind, detail, startup=startup)

    def in_flight(self, client_key: str) -> bool:
        return client_key in self._inflight

    # -- shared memory ----------------------------------------------------------------------

    def changed(self, o: OrderRow) -> None:
        """Mirror ``o`` (just journaled) into the book, shared memory and the stats."""
        if o.state in FINAL_STATES:
            self.book.pop(o.client_key, None)
        else:
            self.book[o.client_key] = o
        self.store.upsert(o)
        self.publish()

    def stats(self) -> Stats:
        return compute(self.journal, list(self.book.values()), paused=self.paused())

    def publish(self) -> None:
        self._paused_seen = self.paused()
        self.store.publish(self.stats())

    def publish_if_paused_changed(self) -> None:
        if self.paused() != self._paused_seen:
            self.publish()

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight orders reach a journaled reply before stopping."""
        if self.tasks:
            log.info("waiting for %d in-flight order(s)", len(self.tasks))
            _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
            for t in pending:
                t.cancel()
