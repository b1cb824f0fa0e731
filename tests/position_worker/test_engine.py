"""The engine against a scripted venue: decisions, limits, fills, settlement, recovery."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from core.clock import ManualClock
from core.errors import RetryableError
from core.markets import SLOTS
from position_worker.engine import Engine, EngineConfig
from position_worker.executors.base import OrderRequest, OrderResult, OrderStatus
from position_worker.intents import Intent
from position_worker.journal import Fill, Journal, OrderState
from position_worker.keys import client_key, order_metadata
from position_worker.markets import MarketsView
from position_worker.positions import PositionStore
from position_worker.reasons import RejectReason
from position_worker.risk import RiskConfig
from position_worker.stats import read_posstats
from state.control import ControlBlock, WorkerSlot
from state.layout import POSITION_DT, POSITION_STATS_DT, Outcome, PositionState, WorkerRole
from state.run import RunPaths
from state.table import TableReader
from tests.position_worker.fakes import FakeGamma, FakeVenue, MarketTable, up_token

T0 = 1_700_000_100            # aligned to 300 s and 900 s
EPOCH = 7


def intent(slot: int = 0, ws: int = T0, *, epoch: int = EPOCH, outcome: int = Outcome.UP,
           stake: float = 5.0, max_price: float = 0.6, seq: int = 0, lane: int = 0,
           slug: str | None = None) -> Intent:
    return Intent(lane=lane, seq=seq, epoch=epoch, intent_id=seq, created_ns=0, slot=slot,
                  outcome=outcome, window_start=ws, stake=stake, max_price=max_price,
                  slug=slug or (SLOTS[slot].slug(ws) if slot < len(SLOTS) else "x"),
                  reason="test")


@dataclass
class Rig:
    paths: RunPaths
    control: ControlBlock
    markets: MarketTable
    clock: RigClock
    venue: FakeVenue
    gamma: FakeGamma
    journal: Journal
    store: PositionStore
    view: MarketsView
    engine: Engine

    def restart(self, **cfg: object) -> Engine:
        """A new engine on the same journal and segments: what a restarted worker builds."""
        self.journal.close()
        self.store.close()
        self.journal = Journal(self.paths.journal)
        self.store = PositionStore(self.paths)
        self.engine = make_engine(self, **cfg)
        self.engine.load()
        return self.engine

    def positions(self) -> dict[str, int]:
        t = TableReader(self.paths.seg("positions"), POSITION_DT)
        try:
            rows = t.read_all()
        finally:
            t.close()
        return {bytes(r["client_key"]).rstrip(b"\0").decode(): int(r["state"])
                for r in rows if r["state"]}

    def posstats(self) -> dict:
        self.engine.flush_status()              # publishing is coalesced (every 0.25 s)
        t = TableReader(self.paths.seg("posstats"), POSITION_STATS_DT)
        try:
            return read_posstats(t.read(0))
        finally:
            t.close()


def make_engine(rig: Rig, **cfg: object) -> Engine:
    risk = RiskConfig(**{k: v for k, v in cfg.items() if k in RiskConfig.__dataclass_fields__})
    ecfg = EngineConfig(risk=risk, lookup_grace_s=float(cfg.get("grace", 60.0)))
    return Engine(journal=rig.journal, store=rig.store, executor=rig.venue, markets=rig.view,
                  gamma=rig.gamma, control=rig.control, clock=rig.clock, cfg=ecfg)


def register_lanes(control: ControlBlock, epoch0: int, epoch1: int) -> None:
    """Play the strategy workers: each registers its lane's slot with its epoch."""
    for lane, epoch in ((0, epoch0), (1, epoch1)):
        control.register(WorkerSlot.strategy(lane), WorkerRole.STRATEGY, lane=lane,
                         epoch=epoch, label=f"strategy{lane}")


class RigClock(ManualClock):
    """Manual market time; real monotonic time (the scanner stamps rows with it)."""

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


@pytest.fixture
def rig(run_paths: RunPaths, control: ControlBlock, markets: MarketTable):
    clock = RigClock(start=T0 + 10)
    markets.now_ms = clock.now_ms          # the reference is observed on the market clock
    control.set_active_epoch(EPOCH)
    register_lanes(control, EPOCH, EPOCH)
    r = Rig(run_paths, control, markets, clock, FakeVenue(), FakeGamma(),
            Journal(run_paths.journal), PositionStore(run_paths), MarketsView(run_paths),
            engine=None)  # type: ignore[arg-type]
    r.engine = make_engine(r)
    r.engine.load()
    yield r
    r.view.close()
    r.journal.close()
    r.store.close(unlink=True)


def rejected(rig: Rig) -> dict[str, int]:
    return rig.engine.stats().rejected


async def test_intent_order_fill_settlement_pnl(rig: Rig) -> None:
    rig.markets.set(0, T0, up_ask=0.5)
    rig.venue.price = 0.5
    o = rig.engine.decide(intent())
    assert o is not None and o.state == OrderState.NEW
    assert rig.positions() == {o.client_key: PositionState.PENDING}
    await rig.engine.execute(o)
    assert o.state == OrderState.FILLED
    assert o.shares == pytest.approx(10.0) and o.cost == pytest.approx(5.0)
    assert o.fees == pytest.approx(10 * 0.07 * 0.25)
    assert rig.positions() == {o.client_key: PositionState.OPEN}
    assert rig.posstats()["exposure"] == pytest.approx(5.0)

    # not settled before the window ends, nor before the market resolves
    assert await rig.engine.settle_due() == 0
    rig.clock.advance(300)
    assert await rig.engine.settle_due() == 0
    rig.gamma.resolved[o.slug] = "up"
    rig.engine.settler.next_try.clear()
    assert await rig.engine.settle_due() == 1
    assert o.state == OrderState.SETTLED
    assert o.pnl == pytest.approx(10.0 - 5.0 - 0.175)
    assert rig.positions() == {o.client_key: PositionState.SETTLED}
    st = rig.posstats()
    assert st["settled"] == 1 and st["wins"] == 1 and st["losses"] == 0
    assert st["streak"] == 1 and st["win_rate_all"] == 1.0 and st["win_rate_100"] == 1.0
    assert st["pnl"] == pytest.approx(4.825) and st["fees"] == pytest.approx(0.175)
    assert st["open_positions"] == 0 and st["exposure"] == 0.0

    # a losing one: streak flips, totals add up
    ws2 = T0 + 300
    rig.markets.set(0, ws2, up_ask=0.5)
    o2 = rig.engine.decide(intent(ws=ws2, seq=1))
    assert o2 is not None
    await rig.engine.execute(o2)
    rig.clock.advance(300)
    rig.gamma.resolved[o2.slug] = "down"
    assert await rig.engine.settle_due() == 1
    st = rig.posstats()
    assert st["wins"] == 1 and st["losses"] == 1 and st["streak"] == -1
    assert st["win_rate_all"] == 0.5
    assert st["pnl"] == pytest.approx(4.825 - 5.175)
    assert rig.journal.settlements()[1]["win"] == 0


async def test_stale_epoch_is_rejected(rig: Rig) -> None:
    rig.markets.set(0, T0)
    assert rig.engine.decide(intent(epoch=EPOCH - 1)) is None
    rig.control.set_active_epoch(0)                         # nobody may trade
    assert rig.engine.decide(intent(epoch=EPOCH, seq=1)) is None
    assert rejected(rig) == {"STALE_EPOCH": 2}
    assert rig.venue.prepared == 0
    assert rig.posstats()["rejected"] == {"STALE_EPOCH": 2}
    rig.control.set_active_epoch(EPOCH)
    assert rig.engine.decide(intent(seq=2)) is not None


async def test_same_intent_twice_gives_one_order(rig: Rig) -> None:
    rig.markets.set(0, T0)
    first = rig.engine.decide(intent(seq=0))
    second = rig.engine.decide(intent(seq=1, lane=1))      # even from the other lane
    assert first is not None and second is None
    await rig.engine.execute(first)
    assert rig.engine.decide(intent(seq=2, outcome=Outcome.DOWN)) is None   # even after a fill
    assert len(rig.venue.placed) == 1
    assert rejected(rig) == {"DUPLICATE": 2}
    assert rig.journal.intent_count() == 3


async def test_pause_blocks_new_orders(rig: Rig) -> None:
    rig.markets.set(0, T0)
    rig.control.set_paused(True)
    assert rig.engine.decide(intent()) is None
    assert rejected(rig) == {"PAUSED": 1}
    rig.engine.flush_status()
    assert rig.posstats()["paused"] == 1
    rig.control.set_paused(False)
    assert rig.engine.decide(intent(seq=1)) is not None


@pytest.mark.parametrize(("cfg", "n_ok", "reason"), [
    ({"max_open": 2}, 2, "MAX_OPEN"),
    ({"max_exposure": 12.0}, 2, "MAX_EXPOSURE"),
])
async def test_position_limits(rig: Rig, cfg: dict, n_ok: int, reason: str) -> None:
    eng = rig.restart(**cfg)
    for slot in range(4):
        rig.markets.set(slot, T0)
    results = [eng.decide(intent(slot=s, seq=s)) for s in range(4)]
    assert [r is not None for r in results] == [True] * n_ok + [False] * (4 - n_ok)
    assert rejected(rig) == {reason: 4 - n_ok}
    # a failed order frees its room
    rig.venue.mode = "reject"
    await eng.execute(results[0])
    assert results[0].state == OrderState.REJECTED
    assert rig.positions()[results[0].client_key] == PositionState.FAILED
    assert eng.decide(intent(slot=3, seq=9)) is not None


async def test_daily_loss_limit(rig: Rig) -> None:
    eng = rig.restart(daily_loss_limit=4.0)
    rig.markets.set(0, T0)
    o = eng.decide(intent())
    await eng.execute(o)
    rig.clock.advance(300)
    rig.gamma.resolved[o.slug] = "down"
    await eng.settle_due()
    assert o.pnl < -4.0
    rig.markets.set(0, T0 + 300)
    assert eng.decide(intent(ws=T0 + 300, seq=1)) is None
    assert rejected(rig) == {"DAILY_LOSS": 1}
    rig.clock.advance(86_400)                # a new (UTC) day resets the limit
    ws = SLOTS[0].window_start(rig.clock.now())
    rig.markets.set(0, ws)
    assert eng.decide(intent(ws=ws, seq=2)) is not None


async def test_market_and_price_checks(rig: Rig) -> None:
    eng = rig.engine
    cases = []
    rig.markets.set(0, T0, up_ask=0.70)
    cases.append((intent(slot=0, max_price=0.6), RejectReason.PRICE_ABOVE_MAX))
    rig.markets.set(1, T0, accepting=False)
    cases.append((intent(slot=1), RejectReason.NOT_ACCEPTING))
    rig.markets.set(2, T0 - 300)                       # the scanner still shows the old window
    cases.append((intent(slot=2), RejectReason.MARKET_MISMATCH))
    rig.markets.set(3, T0, updated_ns=time.monotonic_ns() - 60 * 10**9)
    cases.append((intent(slot=3), RejectReason.STALE_BOOK))
    rig.markets.set(4, T0, up_ask=0.0)
    cases.append((intent(slot=4), RejectReason.NO_BOOK))
    rig.markets.set(5, T0)
    cases.append((intent(slot=5, stake=50.0), RejectReason.STAKE))
    cases.append((intent(slot=99), RejectReason.BAD_INTENT))
    cases.append((intent(slot=6), RejectReason.NOT_ACCEPTING))      # no row for slot 6
    for i, (it, _) in enumerate(cases):
        assert eng.decide(it.__class__(**{**it.__dict__, "seq": i})) is None
    want: dict[str, int] = {}
    for _, r in cases:
        want[r.name] = want.get(r.name, 0) + 1
    assert rejected(rig) == want
    assert rig.venue.prepared == 0
    # every rejection is journaled with its reason and a detail
    rows = rig.journal.db.execute("SELECT reject_reason, detail FROM intents").fetchall()
    assert len(rows) == len(cases) and all(r[1] for r in rows)


async def test_the_limit_is_the_max_price_rounded_down_to_the_market_tick(rig: Rig) -> None:
    """A BUY limit off the market's tick grid is rounded down, never up (the client library
    rounds to the nearest), and the ask is compared with that limit."""
    rig.markets.set(0, T0, up_ask=0.56)
    o = rig.engine.decide(intent(slot=0, max_price=0.567))
    assert o is not None and o.max_price == 0.56
    rig.markets.set(1, T0, up_ask=0.567, tick_size=0.001)
    o = rig.engine.decide(intent(slot=1, seq=1, max_price=0.5679))
    assert o is not None and o.max_price == 0.567
    rig.markets.set(2, T0, up_ask=0.57)
    o = rig.engine.decide(intent(slot=2, seq=2, max_price=0.579))   # 0.5789999... in binary
    assert o is not None and o.max_price == 0.57
    rig.markets.set(3, T0, up_ask=0.58)
    assert rig.engine.decide(intent(slot=3, seq=3, max_price=0.579)) is None
    rig.markets.set(4, T0, up_ask=0.01)
    assert rig.engine.decide(intent(slot=4, seq=4, max_price=0.005)) is None
    assert rejected(rig) == {"PRICE_ABOVE_MAX": 1, "BAD_INTENT": 1}
    (detail,) = rig.journal.db.execute("SELECT detail FROM intents WHERE slot = 3").fetchone()
    assert detail == "ask 0.58 > max 0.579 (on the 0.01 tick: 0.57)"


async def test_a_market_without_a_tick_trades_and_a_failing_check_refuses_one_intent(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Gamma without a tick size: the scanner writes NaN, which means "not known" (no
    rounding), never a crash. An exception in one intent's checks refuses that intent only:
    raised out of the batch it would roll back the others and crash-loop the worker."""
    rig.markets.set(0, T0, up_ask=0.55, tick_size=float("nan"), min_size=float("nan"))
    for slot in (1, 2):
        rig.markets.set(slot, T0)
    real = rig.engine.traded_on_venue

    def boom(it: Intent, quote: object) -> bool:
        if it.slot == 1:
            raise ValueError("a row nobody foresaw")
        return real(it, quote)                            # type: ignore[arg-type]

    monkeypatch.setattr(rig.engine, "traded_on_venue", boom)
    out = rig.engine.decide_all([intent(slot=s, seq=s, max_price=0.567) for s in range(3)])
    assert [o is not None for o in out] == [True, False, True]
    assert out[0].max_price == 0.567 and out[2].max_price == 0.56
    assert rejected(rig) == {"BAD_INTENT": 1} and rig.control.decided(0) == 3


async def test_window_over_and_min_size(rig: Rig) -> None:
    rig.markets.set(0, T0)
    rig.clock.advance(300)
    assert rig.engine.decide(intent()) is None
    eng = rig.restart(stake=2.0, min_order_size=5.0)
    rig.markets.set(1, SLOTS[1].window_start(rig.clock.now()), up_ask=0.5)
    assert eng.decide(intent(slot=1, ws=SLOTS[1].window_start(rig.clock.now()), stake=2.0,
                             max_price=0.6, seq=1)) is None
    assert rejected(rig) == {"NOT_ACCEPTING": 1, "MIN_SIZE": 1}


async def test_sent_order_is_looked_up_not_resent(rig: Rig) -> None:
    """Crash after sending, before the reply: restart finds the fill, never re-sends."""
    rig.markets.set(0, T0)
    rig.venue.mode = "uncertain_sent"              # the venue fills; the reply never comes
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    assert o.state == OrderState.UNKNOWN
    assert rig.positions()[o.client_key] == PositionState.PENDING
    eng = rig.restart()
    await eng.recover()
    o2 = rig.journal.order(o.client_key)
    assert o2.state == OrderState.FILLED and o2.shares > 0
    assert len(rig.venue.placed) == 1
    assert rig.positions()[o.client_key] == PositionState.OPEN
    kinds = [e["kind"] for e in rig.journal.events(o.client_key)]
    assert kinds[:2] == ["request", "send_uncertain"] and "lookup" in kinds


async def test_unsent_order_fails_after_grace(rig: Rig) -> None:
    """Journaled SENDING, never arrived: reported, kept as exposure, failed after the grace."""
    rig.markets.set(0, T0)
    rig.venue.mode = "uncertain_unsent"
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    eng = rig.restart(grace=30.0)
    await eng.recover()
    assert rig.journal.order(o.client_key).state == OrderState.UNKNOWN
    assert eng.stats().exposure == pytest.approx(5.0)      # counted until its fate is known
    rig.clock.advance(300 + 31)
    await eng.resolve_pending()
    assert rig.journal.order(o.client_key).state == OrderState.FAILED
    assert rig.positions()[o.client_key] == PositionState.FAILED
    assert len(rig.venue.placed) == 1
    assert eng.stats().exposure == 0.0


async def test_sending_row_left_by_crash(rig: Rig) -> None:
    """The journal says SENDING (the reply never got journaled); the venue has the fill."""
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    p = await rig.venue.prepare(OrderRequest.from_order(o, order_metadata(0, T0)))
    with rig.journal.transaction():
        rig.journal.update_order(o, OrderState.SENDING, order_id=p.order_id)
    rig.venue._fill(p)                      # the exchange got it before the "crash"
    eng = rig.restart()
    assert rig.positions()[o.client_key] == PositionState.PENDING   # rebuilt from the journal
    await eng.recover()
    assert rig.journal.order(o.client_key).state == OrderState.FILLED
    assert rig.venue.placed == []                                   # nothing was re-sent


async def test_new_order_is_failed_on_restart(rig: Rig) -> None:
    """A NEW row (crash between the decision and SENDING) was never sent; it is not resumed
    by the next process either: its epoch, the pause flag and the limits may have changed."""
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())          # crash right after the decision was journaled
    eng = rig.restart()
    await eng.recover()
    await eng.drain(5.0)
    assert rig.journal.order(o.client_key).state == OrderState.FAILED
    assert rig.venue.placed == [] and rig.venue.prepared == 0
    assert eng.decide(intent(seq=1)) is None          # the window's key stays claimed
    assert rejected(rig) == {"DUPLICATE": 1}


async def test_new_row_of_a_replaced_epoch_is_not_sent_after_restart(rig: Rig) -> None:
    """Review probe: hot reload while the worker was down; the old epoch's NEW row must not
    be sent by the restarted worker."""
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())              # crash before SENDING
    rig.control.set_active_epoch(EPOCH + 1)      # hot reload while we were down
    eng = rig.restart()
    await eng.recover()
    await eng.drain(5.0)
    assert rig.journal.order(o.client_key).state == OrderState.FAILED
    assert rig.venue.placed == []


async def test_reconcile_adopts_fills_of_a_failed_order(rig: Rig) -> None:
    rig.markets.set(0, T0)
    rig.venue.mode = "reject"
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    assert o.state == OrderState.REJECTED
    p = rig.venue.placed[0]
    rig.venue._fill(p)                       # ... yet the exchange shows our trade
    await rig.engine.reconcile()
    assert rig.journal.order(o.client_key).state == OrderState.FILLED
    assert rig.posstats()["mismatches"] == 1
    await rig.engine.reconcile()             # reported once, not on every pass
    assert rig.posstats()["mismatches"] == 1


async def test_reconcile_reports_unknown_trades(rig: Rig) -> None:
    rig.venue.orders["999"] = OrderResult(OrderStatus.FILLED, "x", [Fill("t9", 0.5, 10, 0)])
    await rig.engine.reconcile()
    assert rig.posstats()["mismatches"] == 1


async def test_positions_rebuilt_from_journal(rig: Rig) -> None:
    keys = []
    for slot in range(3):
        rig.markets.set(slot, T0)
        o = rig.engine.decide(intent(slot=slot, seq=slot))
        keys.append(o.client_key)
    await rig.engine.execute(rig.journal.order(keys[0]))
    before = rig.positions()
    stats_before = rig.posstats()
    # wipe shared memory as if the segments were lost, then restart from the journal
    rig.store.table.reset_row(0)
    rig.store.table.reset_row(1)
    rig.restart()
    assert rig.positions() == before
    assert rig.posstats() == stats_before
    assert before[keys[0]] == PositionState.OPEN
    assert before[keys[1]] == PositionState.PENDING
    assert keys[0] == client_key(0, T0)


async def test_lookups_leave_an_in_flight_send_alone(rig: Rig) -> None:
    """The lookup and reconcile loops must not race the send that is still waiting for its
    reply: only that reply (or its failure) moves the order."""
    import asyncio
    rig.markets.set(0, T0)
    rig.venue.gate = asyncio.Event()
    o = rig.engine.decide(intent())
    rig.engine.spawn(rig.engine.execute(o))
    for _ in range(100):
        if o.state == OrderState.SENDING:
            break
        await asyncio.sleep(0.01)
    assert o.state == OrderState.SENDING
    await rig.engine.resolve_pending()
    await rig.engine.reconcile()
    assert rig.journal.order(o.client_key).state == OrderState.SENDING
    assert [e["kind"] for e in rig.journal.events(o.client_key)] == ["request"]
    rig.venue.gate.set()
    await rig.engine.drain(5.0)
    assert o.state == OrderState.FILLED
    assert [e["kind"] for e in rig.journal.events(o.client_key)] == ["request", "reply"]
    assert rig.posstats()["mismatches"] == 0


async def test_streak_and_win_rate_over_many_settlements(rig: Rig) -> None:
    from position_worker.stats import compute
    eng = rig.restart(daily_loss_limit=1e9)
    rig.venue.price = 0.5
    outcomes = ["up"] * 30 + ["down"] * 80 + ["up"] * 3
    for i, w in enumerate(outcomes):
        ws = T0 + 300 * i
        rig.clock.advance(ws + 10 - rig.clock.now())
        rig.markets.set(0, ws)
        o = eng.decide(intent(ws=ws, seq=i))
        await eng.execute(o)
        rig.clock.advance(300)
        rig.gamma.resolved[o.slug] = w
        assert await eng.settle_due() == 1
    s = compute(rig.journal, [])
    assert s.settled == 113 and s.wins == 33 and s.streak == 3
    assert s.win_rate_all == pytest.approx(33 / 113)
    assert s.win_rate_100 == pytest.approx(20 / 100)    # last 100: 17 up, 80 down, 3 up
    assert s.pnl == pytest.approx(33 * 10 - 113 * 5 - 113 * 0.175)


# -- review fixes: pause/kill right up to the send ------------------------------------------


@pytest.mark.parametrize("change", ["pause", "kill"])
async def test_pause_or_kill_during_prepare_blocks_the_send(rig: Rig, change: str) -> None:
    """Pause/kill is checked again after prepare (which waits on the network), right before
    the SENDING transaction."""
    flip = {"pause": lambda: rig.control.set_paused(True),
            "kill": lambda: rig.control.set_killed(True)}[change]
    rig.venue.before_prepare = flip
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    assert o.state == OrderState.FAILED and rig.venue.placed == []
    assert rig.journal.order(o.client_key).state == OrderState.FAILED
    rig.control.set_killed(False)


@pytest.mark.parametrize("new_epoch", [EPOCH + 1, 0])
async def test_epoch_flip_during_prepare_still_sends(rig: Rig, new_epoch: int) -> None:
    """An order accepted under the active epoch (its lane open) is sent even if the epoch
    flips mid-prepare: to the reloaded worker's epoch, or to 0 after a strategy crash. The
    fence held at decide time, and the supervisor flips only once the old lane's intents
    below its fence are all decided, so this is a legitimate trade."""
    rig.venue.before_prepare = lambda: rig.control.set_active_epoch(new_epoch)
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    assert o is not None
    await rig.engine.execute(o)
    assert o.state == OrderState.FILLED and len(rig.venue.placed) == 1
    assert rig.journal.order(o.client_key).state == OrderState.FILLED


async def test_pause_during_prepare_blocks_even_after_an_epoch_flip(rig: Rig) -> None:
    """Dropping the epoch re-check did not drop the pause re-check with it."""
    def flip() -> None:
        rig.control.set_active_epoch(EPOCH + 1)
        rig.control.set_paused(True)
    rig.venue.before_prepare = flip
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    assert o.state == OrderState.FAILED and rig.venue.placed == []
    assert "pause" in rig.journal.order(o.client_key).error


async def test_two_engines_on_one_journal_send_once(rig: Rig) -> None:
    """Review probe, adapted: two writers holding the same NEW row both try to send it. The
    compare-and-set on the order's state lets exactly one through."""
    import asyncio
    rig.markets.set(0, T0)
    oa = rig.engine.decide(intent())
    jb = Journal(rig.paths.journal)
    try:
        b = Engine(journal=jb, store=rig.store, executor=rig.venue, markets=rig.view,
                   gamma=rig.gamma, control=rig.control, clock=rig.clock, cfg=rig.engine.cfg)
        b.load()
        ob = b.book[oa.client_key]
        assert ob is not oa and ob.state == OrderState.NEW
        await asyncio.gather(rig.engine.execute(oa), b.execute(ob))
        assert len(rig.venue.placed) == 1, f"{len(rig.venue.placed)} POSTs for one window"
        assert rig.journal.order(oa.client_key).state == OrderState.FILLED
        # the loser took the journal's word instead of keeping its stale copy
        assert {oa.state, b.book.get(oa.client_key, ob).state} == {OrderState.FILLED}
    finally:
        jb.close()


async def test_unexpected_prepare_error_fails_the_order(rig: Rig) -> None:
    """A KeyError from a malformed tick-size reply: nothing was sent, the order is failed
    (not left NEW forever)."""
    rig.venue.prepare_error = KeyError("minimum_tick_size")
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    rig.engine.launch(o)
    await rig.engine.drain(5.0)
    assert rig.journal.order(o.client_key).state == OrderState.FAILED
    assert "KeyError" in rig.journal.order(o.client_key).error
    assert rig.venue.placed == [] and not rig.engine.in_flight(o.client_key)


async def test_lane_must_be_registered_to_the_intent_epoch(rig: Rig) -> None:
    """The active epoch only trades from the lane its strategy worker registered."""
    register_lanes(rig.control, EPOCH, EPOCH + 1)       # lane 1 belongs to another epoch
    rig.markets.set(0, T0)
    assert rig.engine.decide(intent(lane=1)) is None
    assert rejected(rig) == {"STALE_EPOCH": 1}
    assert rig.engine.decide(intent(lane=0, seq=1)) is not None


async def test_daily_loss_counts_ended_unsettled_positions(rig: Rig) -> None:
    """A filled position whose window is over but not settled counts as lost (cost + fees)."""
    eng = rig.restart(daily_loss_limit=4.0)
    rig.markets.set(0, T0)
    o = eng.decide(intent())
    await eng.execute(o)
    rig.clock.advance(300)                    # window over; Gamma has not resolved it
    assert await eng.settle_due() == 0
    rig.markets.set(0, T0 + 300)
    assert eng.decide(intent(ws=T0 + 300, seq=1)) is None
    assert rejected(rig) == {"DAILY_LOSS": 1}
    rig.gamma.resolved[o.slug] = "up"         # it won after all
    eng.settler.next_try.clear()
    assert await eng.settle_due() == 1
    assert eng.decide(intent(ws=T0 + 300, seq=2)) is not None


async def test_account_trades_on_the_window_count_as_an_order(rig: Rig) -> None:
    """A fresh journal (same account): the start-up reconciliation sees trades on the
    window's token, so the window is a DUPLICATE even though no journal row names it."""
    rig.markets.set(0, T0)
    rig.venue.orders[up_token(0, T0)] = OrderResult(
        OrderStatus.FILLED, "0xold", [Fill("t-old", 0.5, 10, 0.1)])
    await rig.engine.recover()
    assert rig.engine.decide(intent(outcome=Outcome.DOWN)) is None
    assert rejected(rig) == {"DUPLICATE": 1}
    assert rig.venue.prepared == 0


async def test_a_rejection_with_an_order_id_is_looked_up_first(rig: Rig) -> None:
    rig.venue.mode = "reject_but_filled"
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    assert o.state == OrderState.FILLED and o.shares > 0
    kinds = [e["kind"] for e in rig.journal.events(o.client_key)]
    assert kinds == ["request", "reply", "lookup"]
    rig.venue.mode = "reject"                  # a real rejection stays one
    rig.markets.set(2, T0)
    o2 = rig.engine.decide(intent(slot=2, seq=1))
    await rig.engine.execute(o2)
    assert o2.state == OrderState.REJECTED and len(rig.venue.placed) == 2
    assert [e["kind"] for e in rig.journal.events(o2.client_key)] == \
        ["request", "reply", "lookup"]


async def test_reply_amounts_are_replaced_by_the_venue_trades(rig: Rig) -> None:
    """The reply is journaled first (provisional fill from its amounts); the venue's trade
    then replaces it, never adds to it."""
    rig.venue.mode = "provisional"
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    fills = rig.journal.fills(o.client_key)
    assert [f.trade_id for f in fills] == [f"t-0xid-{o.client_key}"]
    assert o.shares == pytest.approx(10.0) and o.fees == pytest.approx(0.175)
    kinds = [e["kind"] for e in rig.journal.events(o.client_key)]
    assert kinds == ["request", "reply", "fills"]
    await rig.engine.reconcile()
    assert o.shares == pytest.approx(10.0) and rig.posstats()["mismatches"] == 0


async def test_provisional_fill_kept_until_the_venue_shows_all_shares(rig: Rig) -> None:
    rig.venue.mode = "provisional"
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    real_lookup = rig.venue.lookup

    async def not_indexed_yet(order):          # the venue shows only part of the trade yet
        return OrderResult(OrderStatus.FILLED, order.order_id, [Fill("t-part", 0.5, 4.0, 0)])
    rig.venue.lookup = not_indexed_yet         # type: ignore[method-assign]
    await rig.engine.execute(o)
    assert [f.trade_id for f in rig.journal.fills(o.client_key)] == \
        [f"0xid-{o.client_key}:reply"]
    assert o.shares == pytest.approx(10.0)
    rig.venue.lookup = real_lookup             # type: ignore[method-assign]
    await rig.engine.reconcile()               # indexed now: the next pass replaces it
    assert [f.trade_id for f in rig.journal.fills(o.client_key)] == [f"t-0xid-{o.client_key}"]
    assert o.shares == pytest.approx(10.0)


async def test_settlement_backs_off_when_our_outcome_is_missing(rig: Rig) -> None:
    from core.gamma import Resolution
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    await rig.engine.execute(o)
    rig.clock.advance(300)
    calls = 0

    async def odd(slug: str) -> Resolution:
        nonlocal calls
        calls += 1
        return Resolution(slug, {"yes": 1.0, "no": 0.0})
    rig.gamma.resolution = odd                 # type: ignore[method-assign]
    for _ in range(5):
        assert await rig.engine.settle_due() == 0
    assert calls == 1 and o.state == OrderState.FILLED


@pytest.mark.parametrize(("speed", "stale"), [(1.0, False), (60.0, True)])
async def test_book_age_is_market_time(rig: Rig, speed: float, stale: bool) -> None:
    """A book 2 wall s old is fresh at speed 1 and 2 market minutes old at speed 60."""
    rig.clock.speed = speed
    rig.markets.set(0, T0, updated_ns=time.monotonic_ns() - 2 * 10**9)
    got = rig.engine.decide(intent())
    assert (got is None) == stale
    if stale:
        assert rejected(rig) == {"STALE_BOOK": 1}


async def test_a_settlement_seen_through_refresh_is_counted_once(rig: Rig) -> None:
    """The journal settled an order behind the book's back (a step failed after its commit,
    and the error path re-read the row): refresh must count that settlement, exactly once."""
    rig.markets.set(0, T0, up_ask=0.5)
    rig.venue.price = 0.5
    o = rig.engine.decide(intent())
    assert o is not None
    await rig.engine.execute(o)
    assert o.state == OrderState.FILLED and rig.posstats()["settled"] == 0
    row = rig.journal.order(o.client_key)           # the journal's own copy, not the book's
    assert row is not None and row is not o
    with rig.journal.transaction():
        rig.journal.record_settlement(row, winner="up", payout=10.0, settled_ts=float(row.end_ts),
                                      win=True)
    rig.engine.refresh(o.client_key)
    assert o.client_key not in rig.engine.book
    st = rig.posstats()
    assert st["settled"] == 1 and st["wins"] == 1
    assert st["pnl"] == pytest.approx(10.0 - 5.0 - 0.175)
    rig.engine.refresh(o.client_key)                # no longer held: not counted again
    assert rig.posstats()["settled"] == 1
    assert rig.positions() == {o.client_key: PositionState.SETTLED}


# -- hot reload: lane fences and the decided cursor ---------------------------------------


async def test_fenced_lane_refuses_intents_at_or_past_the_fence(rig: Rig) -> None:
    """A drained worker's lane is closed at its head H: below H still trades, H on does not."""
    rig.control.set_fence(0, 3)
    for slot in range(3):
        rig.markets.set(slot, T0)
    assert rig.engine.decide(intent(slot=0, seq=2)) is not None       # below the fence
    assert rig.engine.decide(intent(slot=1, seq=3)) is None           # at it
    assert rig.engine.decide(intent(slot=2, seq=4)) is None           # past it
    assert rejected(rig) == {"FENCED": 2}
    assert rig.posstats()["rejected"] == {"FENCED": 2}
    details = [r[0] for r in rig.journal.db.execute(
        "SELECT detail FROM intents WHERE accepted=0 ORDER BY seq")]
    assert details and all("lane 0 is fenced at seq 3" in d for d in details)
    assert rig.engine.decide(intent(slot=2, seq=5, lane=1)) is not None   # lane 1 is open


async def test_open_lane_accepts(rig: Rig) -> None:
    assert rig.control.fence(0) is None and rig.control.fence(1) is None
    rig.markets.set(0, T0)
    assert rig.engine.decide(intent(seq=10_000)) is not None
    rig.control.set_fence(0, 5)
    rig.control.set_fence(0, None)                    # reopened (reset_lane does this)
    rig.markets.set(1, T0)
    assert rig.engine.decide(intent(slot=1, seq=10_001)) is not None


async def test_stale_epoch_wins_over_fenced(rig: Rig) -> None:
    """A zombie's intent is STALE_EPOCH whatever its lane's fence says."""
    rig.control.set_fence(0, 0)
    rig.markets.set(0, T0)
    assert rig.engine.decide(intent(epoch=EPOCH - 1, seq=3)) is None
    register_lanes(rig.control, EPOCH + 1, EPOCH)          # lane 0 now held by another epoch
    assert rig.engine.decide(intent(seq=4)) is None
    assert rejected(rig) == {"STALE_EPOCH": 2}


async def test_decide_advances_the_decided_cursor(rig: Rig) -> None:
    """Every decision, accepted or rejected, moves the lane's published cursor past it."""
    assert rig.control.decided(0) == 0 and rig.control.decided(1) == 0
    rig.markets.set(0, T0)
    assert rig.engine.decide(intent(seq=0)) is not None                       # accepted
    assert rig.control.decided(0) == 1 and rig.control.decided(1) == 0
    assert rig.engine.decide(intent(seq=1, epoch=EPOCH - 1)) is None          # STALE_EPOCH
    assert rig.control.decided(0) == 2
    assert rig.engine.decide(intent(seq=2)) is None                           # DUPLICATE
    assert rig.control.decided(0) == 3
    rig.control.set_fence(1, 4)
    assert rig.engine.decide(intent(slot=1, seq=6, lane=1)) is None           # FENCED
    assert rig.control.decided(1) == 7 and rig.control.decided(0) == 3
    assert rejected(rig) == {"STALE_EPOCH": 1, "DUPLICATE": 1, "FENCED": 1}


async def test_a_batch_counts_its_own_orders_against_the_limits(rig: Rig) -> None:
    """One commit per batch: the limits and the duplicate check still see the orders the
    batch accepted before (they are in neither the book nor a committed row yet)."""
    eng = rig.restart(max_open=2)
    for slot in range(3):
        rig.markets.set(slot, T0)
    out = eng.decide_all([intent(slot=0, seq=0), intent(slot=0, seq=1),   # the same window
                          intent(slot=1, seq=2), intent(slot=2, seq=3)])
    assert [o is not None for o in out] == [True, False, True, False]
    assert rejected(rig) == {"DUPLICATE": 1, "MAX_OPEN": 1}
    assert rig.control.decided(0) == 4
    assert len(rig.positions()) == 2


async def test_a_failing_batch_decides_nothing(rig: Rig, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    """A crash in the middle of a batch rolls all of it back: no row, no order, no cursor,
    so the restarted worker reads every intent of the batch again."""
    for slot in range(2):
        rig.markets.set(slot, T0)
    real = rig.journal.insert_order
    calls = []

    def flaky(o: object) -> None:
        calls.append(o)
        if len(calls) == 2:
            raise OSError("disk full")
        real(o)                                     # type: ignore[arg-type]

    monkeypatch.setattr(rig.journal, "insert_order", flaky)
    with pytest.raises(OSError, match="disk full"):
        rig.engine.decide_all([intent(slot=0, seq=0), intent(slot=1, seq=1)])
    assert rig.control.decided(0) == 0 and not rig.positions()
    assert rig.journal.orders() == [] and rig.engine.stats().rejected == {}
    monkeypatch.setattr(rig.journal, "insert_order", real)
    assert all(o is not None for o in rig.engine.decide_all(
        [intent(slot=0, seq=0), intent(slot=1, seq=1)]))
    assert rig.control.decided(0) == 2


# -- the kill switch ------------------------------------------------------------------------


def kill_events(rig: Rig) -> list[dict]:
    return rig.journal.events(kind="kill")


async def test_kill_cancels_open_orders_journals_then_confirms(rig: Rig) -> None:
    """The supervisor's kill: intake refuses (PAUSED), every open order at the venue is
    cancelled, the cancel is journaled, and only then is kill_done set."""
    rig.venue.open = [{"id": "0xresting1"}, {"id": "0xresting2"}]
    assert not rig.engine.kill_due()
    rig.control.set_paused(True)
    rig.control.set_killed(True)
    assert rig.engine.kill_due() and not rig.control.kill_confirmed
    rig.markets.set(0, T0)
    assert rig.engine.decide(intent()) is None
    assert rejected(rig) == {"PAUSED": 1}

    assert await rig.engine.kill() == 2
    assert rig.venue.cancel_calls == 1 and rig.venue.open == []
    assert rig.control.kill_confirmed and not rig.engine.kill_due()
    (ev,) = kill_events(rig)
    assert ev["client_key"] == "" and ev["body"]["canceled"] == 2
    assert rig.posstats()["paused"]
    # a second kill (the supervisor cleared kill_done again) runs again
    rig.control.set_kill_confirmed(False)
    assert rig.engine.kill_due()
    assert await rig.engine.kill() == 0
    assert len(kill_events(rig)) == 2 and rig.control.kill_confirmed


@pytest.mark.parametrize("failure", ["cancel raises", "orders remain"])
async def test_kill_is_not_confirmed_until_the_venue_holds_no_open_order(
        rig: Rig, failure: str) -> None:
    rig.venue.open = [{"id": "0xresting"}]
    if failure == "cancel raises":
        rig.venue.cancel_error = RetryableError("cancel-all: 503: busy")
    else:
        rig.venue.keep_open = True
    rig.control.set_killed(True)
    with pytest.raises(RetryableError):
        await rig.engine.kill()
    assert not rig.control.kill_confirmed and rig.engine.kill_due()
    assert kill_events(rig) == []
    rig.venue.keep_open = False                  # the next attempt (a second later) works
    assert await rig.engine.kill() == 1
    assert rig.control.kill_confirmed and len(kill_events(rig)) == 1


async def test_kill_waits_for_a_send_in_flight_then_cancels(rig: Rig) -> None:
    """An order already on its way may come to rest (a delayed order): the cancel-all waits
    for its reply, so it cannot slip in after the cancel."""
    import asyncio

    rig.venue.gate = asyncio.Event()
    rig.markets.set(0, T0)
    o = rig.engine.decide(intent())
    rig.engine.launch(o)
    await asyncio.sleep(0.01)
    assert o.state == OrderState.SENDING
    rig.control.set_killed(True)
    task = asyncio.ensure_future(rig.engine.kill())
    await asyncio.sleep(0.05)
    assert not task.done() and rig.venue.cancel_calls == 0
    rig.venue.gate.set()
    assert await task == 0
    assert rig.venue.cancel_calls == 1 and o.state == OrderState.FILLED
    assert kill_events(rig)[0]["body"]["in_flight"] == 1 and rig.control.kill_confirmed


async def test_kill_cleared_meanwhile_is_not_confirmed(rig: Rig) -> None:
    """A resume that lands while the cancel-all runs wins: no stale kill_done is left."""
    rig.control.set_killed(True)
    orig = rig.venue.cancel_all

    async def cancel_then_resume() -> int:
        n = await orig()
        rig.control.set_killed(False)            # the operator's resume
        return n

    rig.venue.cancel_all = cancel_then_resume   # type: ignore[method-assign]
    await rig.engine.kill()
    assert not rig.control.kill_confirmed and not rig.engine.kill_due()


def test_a_stale_or_missing_reference_blocks_that_slot_only(rig: Rig) -> None:
    """The reference (Chainlink) a market resolves on: stale, absent, or without a price to
    beat for the window, and the slot is refused with STALE_REFERENCE; a fresh one trades."""
    now_ms = rig.clock.now_ms()
    rig.markets.set(0, T0, ref_ms=now_ms - 11_000)              # 11 clock s old: > 10 s
    rig.markets.set(1, T0, ref_ms=0)                            # never observed
    rig.markets.set(2, T0, price_to_beat=float("nan"))          # joined after the start
    rig.markets.set(3, T0, ref_ms=now_ms - 9_000)               # 9 s old: still fine
    for i, slot in enumerate((0, 1, 2)):
        assert rig.engine.decide(intent(slot=slot).__class__(
            **{**intent(slot=slot).__dict__, "seq": i})) is None
    assert rejected(rig) == {"STALE_REFERENCE": 3}
    assert rig.engine.decide(intent(slot=3).__class__(
        **{**intent(slot=3).__dict__, "seq": 3})) is not None
    details = [r[0] for r in rig.journal.db.execute(
        "SELECT detail FROM intents WHERE reject_reason = ? ORDER BY rowid",
        (int(RejectReason.STALE_REFERENCE),))]
    assert "11.0 clock s old" in details[0] and "no reference" in details[1]
    assert "no price to beat" in details[2]


def test_the_markets_own_minimum_size_is_used(rig: Rig) -> None:
    """$5 at a max price of 0.5 buys at least 10 shares: enough for a 5-share market, not
    for a market whose own minimum (Gamma orderMinSize) is 15."""
    rig.markets.set(0, T0, up_ask=0.45, min_size=15.0)
    rig.markets.set(1, T0, up_ask=0.45, min_size=5.0)
    it0, it1 = intent(slot=0, max_price=0.5), intent(slot=1, max_price=0.5)
    assert rig.engine.decide(it0) is None
    assert rig.engine.decide(it1.__class__(**{**it1.__dict__, "seq": 1})) is not None
    assert rejected(rig) == {"MIN_SIZE": 1}
