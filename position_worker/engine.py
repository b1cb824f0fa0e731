"""The position engine: decide, execute, look up, settle, reconcile. No loops, no CLI.

Every state change is journaled first and mirrored into shared memory second, so a crash at
any point leaves the journal ahead of (or equal to) what readers saw, never behind.

Money-safety rules, in the order they bite:
1. An intent becomes an order only inside one journal transaction that also claims its
   idempotency key (UNIQUE), so one (slot, window) can never have two orders; a window the
   account already trades on at the venue counts as ordered too.
2. Pause/kill and the window's end are checked again after prepare, right before SENDING;
   the epoch is not: the fence held when the order was decided, and the supervisor flips the
   epoch only after every intent of the old lane below its fence is decided, so a flip
   mid-prepare (hot reload, or 0 after a crash) must not drop an accepted order. A NEW row
   left by a crash is failed, never resumed. Every state change is compare-and-set.
   The signed request is journaled (SENDING, fsynced) before it is sent.
3. An order whose fate is unknown (no reply, crash, timeout) is looked up, never re-sent.
   It counts as exposure until its fate is known, and is failed only when the exchange has
   shown no trace of it until well after its window closed.
4. Fills found on the exchange for an order the journal had failed are adopted: the money
   was spent, so the position exists.
5. The kill switch (``kill``): with the flag set nothing new is sent (rules 2 and the PAUSED
   reject); sends already under way get a moment to reach their reply, then every open order
   at the venue is cancelled, the venue is checked to hold none, the cancel is journaled
   (event ``kill``) and only then is kill_done set for the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
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
    JournalError,
    OrderConflict,
    OrderRow,
    OrderState,
)
from position_worker.keys import client_key, idem_key, order_metadata
from position_worker.markets import MarketQuote, MarketsView
from position_worker.positions import PositionStore
from position_worker.reasons import RejectReason
from position_worker.reconcile import Reconciler
from position_worker.risk import Book, RiskConfig, Verdict, check, limit_price
from position_worker.settle import Settler
from position_worker.stats import Stats, StatsKeeper
from state.control import ControlBlock, WorkerSlot
from state.layout import Outcome

log = logging.getLogger(__name__)
DAY_S = 86_400
_S = OrderState


@dataclass(frozen=True)
class EngineConfig:
    risk: RiskConfig = field(default_factory=RiskConfig)
    lookup_grace_s: float = 120.0   # clock s after window end before an unseen order fails
    settle_backoff_max_s: float = 30.0
    reconcile_horizon_s: int = 2 * DAY_S   # clock s back, a full reconciliation pass
    reconcile_recent_s: int = 3600         # clock s back, a recent pass (> window + grace)
    # wall s: an order changed this recently is not compared with the venue's trades yet
    # (its reply may land during the fetch, the venue may not have indexed its trade yet)
    reconcile_grace_s: float = 60.0
    publish_every_s: float = 0.25    # wall s between posstats writes (changes are coalesced)


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
        self.counters = StatsKeeper()
        self._paused_seen = False
        self._dirty = False
        self._published_ns = -(1 << 62)

    # -- recovery ---------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the book and shared memory from the journal (start-up, before intake)."""
        live = self.journal.orders(tuple(s for s in _S if s not in FINAL_STATES))
        recent = self.journal.orders(limit=self.store.capacity)
        orders = list({o.client_key: o for o in [*recent, *live]}.values())
        self.book = {o.client_key: o for o in live}
        self.store.rebuild(orders)
        self.reconciler.load_reported()
        self.counters.seed(self.journal, live)
        self.publish(force=True)
        log.info("journal: %d orders, %d not final (%s)", len(orders), len(self.book),
                 ", ".join(f"{o.client_key}={o.state}" for o in self.book.values()) or "-")

    async def recover(self) -> None:
        """Settle the fate of everything the last incarnation left in flight.

        A NEW row was never sent (sending happens only once SENDING is durable), but it is
        not resumed either: while we were down its strategy may have been replaced (epoch),
        trading paused, or the limits used up, and re-checking all of that against a decision
        taken by an earlier process is easy to get wrong. Failing it costs one window's trade.
        Each step is guarded: a bad venue reply must not stop the worker from starting (the
        loops will try again)."""
        for o in [o for o in self.book.values() if o.state == _S.NEW]:
            try:
                self.fail(o, "interrupted before sending; not resumed after a restart")
            except JournalError as e:
                log.error("order %s: %s", o.client_key, e)
                self.refresh(o.client_key)
        for name, step in (("lookups", lambda: self.resolve_pending(startup=True)),
                           ("reconciliation", self.reconcile)):
            try:
                await step()
            except Exception:
                log.exception("start-up %s failed; the loop will try again", name)

    # -- intents ----------------------------------------------------------------------------

    def paused(self) -> bool:
        return self.control.paused or self.control.killed

    # -- the kill switch --------------------------------------------------------------------

    def kill_due(self) -> bool:
        """The supervisor set the kill flag and it is not carried out yet (no kill_done)."""
        return self.control.killed and not self.control.kill_confirmed

    async def kill(self, drain_s: float = 5.0) -> int:
        """Carry out the kill switch; returns the number of orders the venue cancelled.

        Intake already refuses (PAUSED) and no unsent order passes ``send_blocked``. A send
        under way may still leave an order resting (a delayed one), so those get up to
        ``drain_s`` to reach their reply first. Then cancel-all, and the venue must list no
        open order afterwards; anything else raises (RetryableError: the caller tries again)
        and kill_done stays clear. kill_done is set only after the journal's ``kill`` event
        is durable, and only while the kill flag is still set (a resume meanwhile wins)."""
        sending = set(self.tasks)
        if sending:
            _done, late = await asyncio.wait(sending, timeout=drain_s)
            if late:
                log.warning("kill: %d send(s) still in flight after %.0fs; cancelling anyway",
                            len(late), drain_s)
        canceled = await self.executor.cancel_all()
        left = await self.executor.open_orders()
        if left:
            raise RetryableError(f"kill: the venue still lists {len(left)} open order(s) "
                                 "after cancel-all")
        with self.journal.transaction():
            self.journal.event("", "kill", {"canceled": canceled, "in_flight": len(sending),
                                            "executor": self.executor.name})
        if self.control.killed:
            self.control.set_kill_confirmed(True)
        log.warning("kill switch carried out: %d open order(s) canceled at the venue; trading "
                    "stays paused until an operator resumes", canceled)
        self.publish(force=True)
        return canceled

    def lane_epoch(self, lane: int) -> int:
        """The epoch registered by the strategy worker that holds ``lane``'s slot (0: none)."""
        try:
            slot = WorkerSlot.strategy(lane)
        except ValueError:
            return 0
        return int(self.control.worker(slot)["epoch"])

    def risk_book(self, now_s: float, pending: Sequence[OrderRow] = ()) -> Book:
        """The book the risk limits see: every held order, plus ``pending`` (accepted earlier
        in the batch being decided, not committed yet, so not in ``self.book``)."""
        held = [*self.book.values(), *pending]
        exposure = sum(o.cost if o.state == _S.FILLED else o.stake for o in held)
        day_start = float(int(now_s) // DAY_S * DAY_S)
        # A position whose window is over but which is not settled yet counts as lost (cost
        # and fees), so a slow or failing resolution cannot hide a day's losses.
        unsettled = sum(o.cost + o.fees for o in held
                        if o.state == _S.FILLED and now_s >= o.end_ts)
        return Book(open_count=len(held), exposure=exposure,
                    pnl_today=self.journal.realized_since(day_start) - unsettled)

    def traded_on_venue(self, it: Intent, quote: MarketQuote | None) -> bool:
        """Whether the account already has trades or open orders on this window's tokens
        (as last seen by reconciliation): an order for it exists even if no journal of
        ours names it (a journal lost or replaced)."""
        if quote is None or quote.window_start != it.window_start:
            return False
        tokens = {t for t in (quote.up_token, quote.down_token) if t}
        return not tokens.isdisjoint(self.reconciler.venue_tokens)

    def decide(self, it: Intent) -> OrderRow | None:
        """Journal the intent and its decision; returns the new order when accepted."""
        return self.decide_all([it])[0]

    def decide_all(self, intents: Sequence[Intent]) -> list[OrderRow | None]:
        """Journal the decisions of ``intents`` (typically one tick's) in one commit; per
        intent, the new order when accepted.

        One fsynced commit for the batch, not one per intent: a commit costs about a
        millisecond here, and one each made the 16th decision of a tick wait for fifteen.
        Nothing acts on a decision before that commit: the decided cursor, the book, the logs
        and the caller's launches come after it, so a crash mid-batch leaves every intent of
        the batch undecided (re-read from the lane cursor), never half-sent.
        """
        decided: list[tuple[Intent, Verdict, OrderRow | None]] = []
        accepted: list[OrderRow] = []
        with self.journal.transaction():
            for it in intents:
                verdict, order = self._journal_decision(it, accepted)
                if order is not None:
                    accepted.append(order)
                decided.append((it, verdict, order))
        for it, verdict, order in decided:
            self._decided(it, verdict, order)
        return [order for _, _, order in decided]

    def _journal_decision(self, it: Intent, accepted: Sequence[OrderRow]
                          ) -> tuple[Verdict, OrderRow | None]:
        """Check ``it`` and write its decision (and order) inside the open transaction.
        ``accepted``: the batch's orders so far, which the risk limits must count."""
        try:
            verdict, quote = self._verdict(it, accepted)
        except (ValueError, TypeError, ArithmeticError, KeyError, IndexError) as e:
            # A row or an intent the checks did not foresee refuses this intent only: raised
            # out of the batch, it would roll the others back and crash-loop the worker on it.
            log.exception("checking intent lane %d seq %d failed", it.lane, it.seq)
            verdict, quote = Verdict(RejectReason.BAD_INTENT, f"check failed: {e!r}"), None
        order = None
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
                max_price=limit_price(it.max_price, quote.tick_size), epoch=it.epoch)
            self.journal.insert_order(order)
        self.journal.set_lane_cursor(it.lane, self.ring_ids.get(it.lane, 0), it.seq + 1)
        return verdict, order

    def _verdict(self, it: Intent, accepted: Sequence[OrderRow]
                 ) -> tuple[Verdict, MarketQuote | None]:
        now = self.clock.now()
        verdict = fence(it, self.control.active_epoch, self.lane_epoch(it.lane),
                        self.control.fence(it.lane)) or validate(it)
        quote = None
        if verdict is None:
            quote = self.markets.quote(it.slot)
            # has_order reads the journal inside this transaction: it sees the batch's rows
            verdict = deduplicate(it, self.journal.has_order(idem_key(it.slot, it.window_start)),
                                  self.traded_on_venue(it, quote))
        if verdict is None:
            verdict = check(it, quote, self.risk_book(now, accepted), self.cfg.risk,
                            paused=self.paused(), now_s=now,
                            now_mono_ns=self.clock.monotonic_ns(), speed=self.clock.speed)
        return verdict, quote

    def _decided(self, it: Intent, verdict: Verdict, order: OrderRow | None) -> None:
        """After the commit: publish the decision."""
        # Only now that the decision is durable: the supervisor flips the epoch once every
        # intent of a drained lane below its fence is decided, and reads that from here.
        self.control.set_decided(it.lane, it.seq + 1)
        self.counters.on_intent(verdict.ok, verdict.reason)
        if order is None:
            assert verdict.reason is not None
            log.info("intent rejected: lane %d seq %d slot %d %s: %s (%s)", it.lane, it.seq,
                     it.slot, it.slug, verdict.reason.name, verdict.detail)
            self.publish()
            return
        log.info("intent accepted: %s %s %s stake %.2f max %.2f -> order %s", it.slug,
                 Outcome(it.outcome).name, it.reason or "-", order.stake, it.max_price,
                 order.client_key)
        self.changed(order)

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
        """prepare -> re-check -> journal SENDING -> send once -> journal the reply."""
        self._inflight.add(o.client_key)
        try:
            await self._execute(o)
        except OrderConflict as e:
            # Someone else moved the row (the run-dir lock should make this impossible):
            # never act on a stale copy; take the journal's word.
            log.error("order %s: %s", o.client_key, e)
            self.refresh(o.client_key)
        finally:
            self._inflight.discard(o.client_key)

    def send_blocked(self, o: OrderRow) -> str | None:
        """Why ``o`` may no longer be sent (checked after prepare, right before SENDING).

        The epoch is deliberately not checked again: ``o`` was fenced when it was decided
        (its epoch active, its lane open), and the supervisor flips the epoch only after
        every intent of the old lane below its fence is decided. A flip during prepare (to
        the new worker's epoch, or to 0 when a strategy crashed) is therefore no reason to
        drop a trade that was legitimately accepted; pause/kill is, because an operator
        means it to stop orders that are not sent yet."""
        if self.paused():
            return "pause/kill switch set before sending"
        if self.clock.now() >= o.end_ts:
            return "window ended before sending"
        return None

    async def _execute(self, o: OrderRow) -> None:
        if o.state != _S.NEW:
            log.error("order %s is %s, not NEW: not sending", o.client_key, o.state)
            return
        req = OrderRequest.from_order(o, order_metadata(o.slot, o.window_start))
        try:
            p = await self.executor.prepare(req)
        except (PrepareError, RetryableError, InputError) as e:
            self.fail(o, f"prepare: {e}")
            return
        except Exception as e:          # a bug or a malformed reply: still nothing was sent
            log.exception("order %s: prepare failed unexpectedly", o.client_key)
            self.fail(o, f"prepare: {type(e).__name__}: {e}")
            return
        # prepare may have taken a while (network): the world may have changed meanwhile
        why = self.send_blocked(o)
        if why is not None:
            self.fail(o, why)
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
        if res.status == OrderStatus.REJECTED and (res.order_id or o.order_id):
            # The exchange said no, but an id exists: make sure it has no trace of the order
            # before the rejection becomes final (journal the reply first, then look).
            self.record(o, res, "reply")
            seen = await self._lookup(o)
            if seen is not None and seen.status in (OrderStatus.FILLED, OrderStatus.ACKED):
                self.apply(o, seen, "lookup")
            else:
                if seen is not None:
                    self.record(o, seen, "lookup")
                self.apply(o, res, "reply", journal_event=False)
            return
        self.apply(o, res, "reply")
        if o.state == _S.FILLED and self.journal.has_provisional_fills(o.client_key):
            # The reply's amounts are booked; now the venue's own trades (their ids, fees).
            seen = await self._lookup(o)
            if seen is not None and seen.status == OrderStatus.FILLED:
                self.apply(o, seen, "fills")

    async def _lookup(self, o: OrderRow) -> OrderResult | None:
        try:
            return await self.executor.lookup(o)
        except Exception as e:            # read-only: the loops look again later
            log.warning("lookup of %s failed: %s", o.client_key, e)
            return None

    def record(self, o: OrderRow, res: OrderResult, kind: str) -> None:
        """Journal what the venue said, without moving the order."""
        with self.journal.transaction():
            self.journal.event(o.client_key, kind, _result_body(res))

    def apply(self, o: OrderRow, res: OrderResult, kind: str, *,
              journal_event: bool = True) -> None:
        """Journal what the venue said about ``o`` and move it accordingly."""
        with self.journal.transaction():
            if journal_event:
                self.journal.event(o.client_key, kind, _result_body(res))
            order_id = res.order_id or o.order_id
            if res.status == OrderStatus.FILLED and res.fills:
                if not self._book_fills(o, res):
                    log.warning("order %s: the venue shows %.4f shares, fewer than the reply's "
                                "%.4f; keeping the reply's until it shows all", o.client_key,
                                res.shares, o.shares)
                fills = self.journal.fills(o.client_key)
                self.journal.update_order(
                    o, _S.FILLED if o.state != _S.SETTLED else None, order_id=order_id,
                    shares=sum(f.size for f in fills),
                    cost=sum(f.size * f.price for f in fills),
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

    def _book_fills(self, o: OrderRow, res: OrderResult) -> bool:
        """Journal ``res``'s fills. The venue's trades replace fills taken from a reply's
        amounts (provisional) once they add up to at least as many shares; False when they
        do not yet (then they are not booked)."""
        real = [f for f in res.fills if not f.provisional]
        if real and self.journal.has_provisional_fills(o.client_key):
            booked = sum(f.size for f in self.journal.fills(o.client_key))
            if sum(f.size for f in real) + 1e-6 < booked:
                return False
            self.journal.drop_provisional_fills(o.client_key)
            self.journal.record_fills(o.client_key, real)
            return True
        if not real and self.journal.fills(o.client_key):
            return True                   # a reply's amounts never replace venue trades
        self.journal.record_fills(o.client_key, res.fills)
        return True

    def fail(self, o: OrderRow, why: str) -> None:
        with self.journal.transaction():
            self.journal.event(o.client_key, "failed", {"error": why})
            self.journal.update_order(o, _S.FAILED, error=why[:500])
        log.warning("order %s failed: %s", o.client_key, why)
        self.changed(o)

    def refresh(self, ck: str) -> None:
        """Replace the in-memory copy of an order with the journal's row.

        ``changed`` takes the old copy out of the book itself: that is how it sees a row the
        book held reach SETTLED here, and counts that settlement (once)."""
        row = self.journal.order(ck)
        if row is not None:
            self.changed(row)

    # -- lookups, settlement, reconciliation (settle.py, reconcile.py) --------------------

    async def resolve_pending(self, *, startup: bool = False) -> None:
        """Look up every order whose fate is unknown; never re-send any of them."""
        await self.reconciler.resolve_pending(startup=startup)

    async def reconcile(self, *, full: bool = True) -> None:
        """Compare the journal with the venue's trades and open orders (full: over the whole
        horizon; else over the recent one)."""
        await self.reconciler.reconcile(full=full)

    async def settle_due(self) -> int:
        """Settle filled positions whose window is over and whose market has resolved."""
        return await self.settler.settle_due()

    def mismatch(self, key_ck: str, kind: str, detail: Any, *, startup: bool = False) -> None:
        self.reconciler.mismatch(key_ck, kind, detail, startup=startup)

    def in_flight(self, client_key: str) -> bool:
        return client_key in self._inflight

    # -- shared memory ----------------------------------------------------------------------

    def changed(self, o: OrderRow) -> None:
        """Mirror ``o`` (just journaled) into the book, shared memory and the counters."""
        was_held = self.book.pop(o.client_key, None) is not None
        if o.state not in FINAL_STATES:
            self.book[o.client_key] = o
        self.store.upsert(o)
        self.counters.on_order(o, settled_now=was_held and o.state == _S.SETTLED)
        self.publish()

    def stats(self) -> Stats:
        return self.counters.snapshot(list(self.book.values()), paused=self.paused())

    def publish(self, *, force: bool = False) -> None:
        """Write the posstats row, at most every ``publish_every_s`` (the rest is marked
        dirty and written by ``flush_status`` from the heartbeat)."""
        now = self.clock.monotonic_ns()
        if not force and now - self._published_ns < self.cfg.publish_every_s * 1e9:
            self._dirty = True
            return
        self._published_ns = now
        self._dirty = False
        self._paused_seen = self.paused()
        self.store.publish(self.stats())

    def flush_status(self) -> None:
        """Publish what is pending, and any change of the pause/kill flags (heartbeat)."""
        if self._dirty or self.paused() != self._paused_seen:
            self.publish(force=True)

    async def drain(self, timeout_s: float) -> None:
        """Let in-flight orders reach a journaled reply before stopping."""
        if self.tasks:
            log.info("waiting for %d in-flight order(s)", len(self.tasks))
            _done, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
            for t in pending:
                t.cancel()


def _result_body(res: OrderResult) -> dict[str, Any]:
    return {"status": str(res.status), "order_id": res.order_id, "error": res.error,
            "fills": [f.__dict__ for f in res.fills], "raw": res.raw}

