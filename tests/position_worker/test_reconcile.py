"""Reconciliation and recovery against awkward venues: horizons, races, junk replies."""

from __future__ import annotations

import asyncio
import dataclasses

from core.clock import ClockLike
from position_worker.executors.base import OrderResult, OrderStatus, Prepared
from position_worker.journal import JournalError, OrderState
from tests.position_worker.fakes import FakeVenue
from tests.position_worker.test_engine import T0, Rig, intent, rig  # noqa: F401


class HorizonVenue(FakeVenue):
    """Honours ``after`` like /data/trades does (trades matched before it are not listed)."""

    def __init__(self, clock: ClockLike) -> None:
        super().__init__()
        self.clock = clock
        self.when: dict[str, float] = {}

    async def place(self, p: Prepared) -> OrderResult:
        self.when[p.request.token] = self.clock.now()
        return await super().place(p)

    async def trades(self, after: int | None = None) -> list[dict]:
        return [t for t in await super().trades()
                if self.when[t["asset_id"]] >= (after or 0)]


async def test_orders_older_than_the_trades_horizon_are_not_compared(rig: Rig) -> None:  # noqa: F811
    """Review probe: orders are read a day further back than trades; a settled order 2-3
    days old was compared against 0 shares and reported."""
    rig.venue = HorizonVenue(rig.clock)
    eng = rig.restart(daily_loss_limit=1e9)
    rig.markets.set(0, T0)
    o = eng.decide(intent())
    await eng.execute(o)
    rig.clock.advance(300)
    rig.gamma.resolved[o.slug] = "up"
    await eng.settle_due()
    await eng.reconcile()
    assert eng.stats().mismatches == 0
    rig.clock.advance(2 * 86400 + 3600)        # 2 days later: still read, no trades listed
    with rig.journal.transaction():             # ... and two days older on the wall, too
        rig.journal.db.execute("UPDATE orders SET updated_ns = updated_ns - ?",
                               (int((2 * 86400 + 3600) * 1e9),))
    await eng.reconcile()
    assert rig.journal.events(kind="mismatch") == []


async def test_a_reply_landing_during_the_fetch_is_not_a_mismatch(rig: Rig) -> None:  # noqa: F811
    """Review probe: trades are fetched, the order's reply lands meanwhile, the venue has
    not indexed its trade yet: FILLED with 0 exchange shares is not reported."""

    class RacyVenue(FakeVenue):
        async def trades(self, after: int | None = None) -> list[dict]:
            assert self.gate is not None
            self.gate.set()                     # the reply arrives during the fetch
            for _ in range(5):
                await asyncio.sleep(0)
            return []                           # the trade is not indexed yet

    rig.venue = RacyVenue()
    eng = rig.restart()
    rig.venue.gate = asyncio.Event()
    rig.markets.set(0, T0)
    o = eng.decide(intent())
    eng.launch(o)
    for _ in range(500):
        if o.state == OrderState.SENDING:
            break
        await asyncio.sleep(0.01)
    await eng.reconcile()
    await eng.drain(5)
    assert o.state == OrderState.FILLED
    await eng.reconcile()                       # still within the grace
    assert rig.journal.events(kind="mismatch") == []
    # past the grace, a real disagreement is reported
    eng.cfg = dataclasses.replace(eng.cfg, reconcile_grace_s=0.0)
    await eng.reconcile()
    assert [e["body"]["kind"] for e in rig.journal.events(kind="mismatch")] == ["shares"]


async def test_open_order_of_an_acked_order_is_expected(rig: Rig) -> None:  # noqa: F811
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    rig.venue.mode = "uncertain_unsent"
    await rig.engine.execute(o)
    rig.venue.orders[o.token] = OrderResult(OrderStatus.ACKED, "venue-id")
    await rig.engine.resolve_pending()
    assert o.state == OrderState.ACKED
    # the venue lists it as open (a delayed order), by its own id: it is ours
    rig.venue.open = [{"id": "venue-id", "asset_id": o.token}]
    await rig.engine.reconcile()
    assert rig.journal.events(kind="mismatch") == []
    rig.venue.open.append({"id": "stranger", "asset_id": "999"})
    await rig.engine.reconcile()
    assert [e["body"]["kind"] for e in rig.journal.events(kind="mismatch")] == ["open_order"]


async def test_junk_from_the_venue_does_not_stop_recovery(rig: Rig, monkeypatch) -> None:  # noqa: F811
    """Non-dict open orders / trades, and a refused transition while applying a lookup,
    are logged; recover() returns and the worker can start."""
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    rig.venue.mode = "uncertain_sent"
    await rig.engine.execute(o)
    assert o.state == OrderState.UNKNOWN
    rig.venue.open = ["junk", 5, None]

    async def junk_trades(after: int | None = None) -> list:
        return ["junk", {"asset_id": o.token, "side": "BUY", "size": "nan"}]
    rig.venue.trades = junk_trades  # type: ignore[method-assign]
    eng = rig.restart()

    def refuse(*a: object, **k: object) -> None:
        raise JournalError("refused transition")
    monkeypatch.setattr(eng, "apply", refuse)
    await eng.recover()                         # must not raise
    assert rig.journal.order(o.client_key).state == OrderState.UNKNOWN
    monkeypatch.undo()
    await eng.resolve_pending()                 # the next pass gets it right
    assert rig.journal.order(o.client_key).state == OrderState.FILLED


async def test_recent_passes_look_an_hour_back_and_a_full_pass_two_days(rig: Rig) -> None:  # noqa: F811
    """A recent pass asks the venue for the last hour only and keeps what a full pass
    learnt; a late fill of an order failed two hours ago is adopted by the next full pass."""

    class Asked(HorizonVenue):
        def __init__(self, clock: ClockLike) -> None:
            super().__init__(clock)
            self.after: list[int | None] = []

        async def trades(self, after: int | None = None) -> list[dict]:
            self.after.append(after)
            return await super().trades(after)

    rig.venue = venue = Asked(rig.clock)
    eng = rig.restart()
    rig.markets.set(0, T0)
    venue.mode = "reject"
    o = eng.decide(intent())
    await eng.execute(o)
    assert o.state == OrderState.REJECTED
    rig.clock.advance(2 * 3600)
    venue._fill(venue.placed[0])              # two hours later the venue shows a trade
    await eng.reconcile(full=False)
    now = int(rig.clock.now())
    assert venue.after == [now - eng.cfg.reconcile_recent_s]
    assert rig.journal.order(o.client_key).state == OrderState.REJECTED   # not seen yet
    assert eng.stats().mismatches == 0
    await eng.reconcile(full=True)
    assert venue.after[-1] == now - eng.cfg.reconcile_horizon_s
    assert rig.journal.order(o.client_key).state == OrderState.FILLED     # adopted
    token = venue.placed[0].request.token
    assert token in eng.reconciler.venue_tokens
    await eng.reconcile(full=False)           # the token is older than the hour: kept
    assert token in eng.reconciler.venue_tokens
    assert eng.stats().mismatches == 1        # the adoption, reported once
