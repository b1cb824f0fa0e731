"""Done-when checks against the sim, with the real py-clob-client-v2 and the real process.

One sim serves the module (speed 60: a 5-minute window passes in 5 s); each test has its own
run dir and run id, so its own throwaway account, and reads the sim's order log from the id
it started at. The test plays the feed (feedplay.py) and the strategy (IntentWriter).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from position_worker.journal import Journal, OrderState
from position_worker.keys import client_key, order_metadata
from state.control import ControlBlock, WorkerSlot
from state.intents import IntentWriter
from state.layout import Outcome, PositionState, WorkerRole
from state.run import RunPaths
from tests.position_worker.fakes import MarketTable
from tests.position_worker.feedplay import FeedPlayer, Scanned
from tests.position_worker.harness import (
    WorkerProc,
    cleanup_segments,
    read_positions,
    read_stats,
    wait_until,
)

sim_testing = pytest.importorskip("sim.testing")
EPOCH = 5


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with sim_testing.start_sim(tmp_path_factory.mktemp("sim"), speed=60.0, seed=7) as s:
        yield s


class Ctx:
    def __init__(self, sim: Any, paths: RunPaths, control: ControlBlock,
                 markets: MarketTable) -> None:
        self.sim = sim
        self.paths = paths
        self.control = control
        self.feed = FeedPlayer(markets, sim.endpoints, sim.clock)
        self.log_start = max((e["id"] for e in sim_testing.order_log(sim.admin)), default=0)
        self.workers: list[WorkerProc] = []
        self.writers: list[IntentWriter] = []

    def start(self, *extra: str) -> WorkerProc:
        w = WorkerProc(self.paths, "--mode", "sim", "--settle-every", "0.3",
                       "--reconcile-every", "1", *extra)
        self.workers.append(w)
        w.wait_running(self.control)
        return w

    def writer(self, lane: int = 0, epoch: int = EPOCH) -> IntentWriter:
        # play the strategy worker: it registers its lane's slot with its epoch
        self.control.register(WorkerSlot.strategy(lane), WorkerRole.STRATEGY, lane=lane,
                              epoch=epoch)
        w = IntentWriter(self.paths, lane, epoch)
        self.writers.append(w)
        return w

    def posts(self, sc: Scanned) -> list[dict]:
        """POST /order requests the sim received for this window's order, since the test began."""
        meta = order_metadata(sc.slot, sc.window_start)
        out = []
        for e in sim_testing.order_log(self.sim.admin, since=self.log_start):
            body = e.get("body")
            if e.get("method") == "POST" and e.get("path") == "/order" \
                    and isinstance(body, dict) and body.get("order", {}).get("metadata") == meta:
                out.append(e)
        return out

    def all_posts(self) -> list[dict]:
        return [e for e in sim_testing.order_log(self.sim.admin, since=self.log_start)
                if e.get("method") == "POST"]

    def position(self, sc: Scanned) -> dict | None:
        ck = client_key(sc.slot, sc.window_start)
        rows = [p for p in read_positions(self.paths) if p["client_key"] == ck]
        return rows[0] if rows else None

    def sim_account(self) -> dict:
        """The sim's ledger entry for this run's throwaway account (balance as a float)."""
        from eth_account import Account

        from position_worker.credentials import Credentials
        addr = Account.from_key(Credentials.sim_throwaway(self.paths.run_id).private_key).address
        accs = sim_testing.admin_request(self.sim.admin, "GET", "/accounts")
        acc = next(a for a in accs if a["address"].lower() == addr.lower())
        return {**acc, "balance": float(acc["balance"])}

    def sim_shares(self, sc: Scanned) -> float:
        """Shares of this window's tokens the sim holds (or paid out) for our account."""
        acc = self.sim_account()
        held = sum(float(acc["positions"].get(t, 0)) for t in (sc.up_token, sc.down_token))
        paid = sum(float(x["shares"]) for x in acc["settlements"] if x["slug"] == sc.slug)
        return held + paid

    def tail(self) -> str:
        return "\n".join(w.tail(3000) for w in self.workers)


@pytest.fixture
def ctx(sim: Any, run_paths: RunPaths, control: ControlBlock,
        markets: MarketTable) -> Iterator[Ctx]:
    shutil.copy(sim.run_dir / "sim.json", run_paths.sim_json)
    control.set_active_epoch(EPOCH)
    c = Ctx(sim, run_paths, control, markets)
    yield c
    for wr in c.writers:
        wr.close()
    for w in c.workers:
        w.kill()
    cleanup_segments(run_paths)


def submit(wr: IntentWriter, sc: Scanned, outcome: int = Outcome.UP, *,
           max_price: float | None = None, reason: str = "test") -> None:
    ask = sc.up_ask if outcome == Outcome.UP else sc.down_ask
    mp = max_price if max_price is not None else min(0.99, round(ask + 0.04, 2))
    wr.submit(sc.slot, sc.window_start, sc.slug, outcome, 5.0, mp, reason)


def test_intent_order_fill_settlement_pnl(ctx: Ctx) -> None:
    w = ctx.start()
    sc = ctx.feed.scan(0)
    outcome = Outcome.UP if sc.up_ask <= sc.down_ask else Outcome.DOWN   # the cheaper side
    submit(ctx.writer(), sc, outcome)
    # a stale strategy on the other lane is fenced off
    sc2 = ctx.feed.scan(2)
    submit(ctx.writer(lane=1, epoch=EPOCH - 1), sc2, Outcome.UP)

    pos = wait_until(lambda: (p := ctx.position(sc)) and p["state"] == PositionState.OPEN and p,
                     30, "an open position", ctx.tail)
    assert pos["shares"] >= 5.0 / 0.99 and 0 < pos["avg_price"] <= 0.99
    assert pos["order_id"].startswith("0x")
    assert len(ctx.posts(sc)) == 1
    wait_until(lambda: read_stats(ctx.paths)["rejected"] == {"STALE_EPOCH": 1}, 20,
               "the stale-epoch rejection", ctx.tail)
    assert ctx.posts(sc2) == []

    pos = wait_until(lambda: (p := ctx.position(sc)) and p["state"] == PositionState.SETTLED
                     and p, 60, "settlement", ctx.tail)
    res = sim_testing.resolution(ctx.sim.admin, sc.slug)
    won = res["outcome"].lower() == Outcome(outcome).name.lower()
    payout = pos["shares"] if won else 0.0
    cost = pos["shares"] * pos["avg_price"]
    assert cost == pytest.approx(5.0, abs=0.02)
    assert pos["fees"] == pytest.approx(pos["shares"] * 0.07 * pos["avg_price"]
                                        * (1 - pos["avg_price"]), rel=0.05)
    assert pos["pnl"] == pytest.approx(payout - cost - pos["fees"], abs=1e-6)
    # the sim's own ledger: the same shares, and its balance moved by exactly our PnL
    assert ctx.sim_shares(sc) == pytest.approx(pos["shares"], abs=1e-6)
    assert ctx.sim_account()["balance"] == pytest.approx(1000.0 + pos["pnl"], abs=1e-4)
    # posstats is written after the positions row, at most every 0.25 s
    st = wait_until(lambda: (s := read_stats(ctx.paths))["settled"] == 1 and s, 10,
                    "the settlement in the stats", ctx.tail)
    assert st["wins"] == int(won) and st["losses"] == int(not won)
    assert st["pnl"] == pytest.approx(pos["pnl"]) and st["open_positions"] == 0
    assert st["mismatches"] == 0, ctx.tail()
    assert w.stop() == 0
    j = Journal(ctx.paths.journal)
    try:
        o = j.order(client_key(sc.slot, sc.window_start))
        assert o is not None and o.state == OrderState.SETTLED and o.request
        kinds = [e["kind"] for e in j.events(o.client_key)]
        assert kinds[:2] == ["request", "reply"]
        assert j.settlements()[0]["winner"] == res["outcome"].lower()
    finally:
        j.close()


def test_same_intent_twice_gives_one_order(ctx: Ctx) -> None:
    ctx.start()
    sc = ctx.feed.scan(4)
    wr0, wr1 = ctx.writer(0), ctx.writer(1)
    submit(wr0, sc)
    submit(wr0, sc)
    submit(wr1, sc, Outcome.DOWN)             # same window from the other lane: same key
    wait_until(lambda: read_stats(ctx.paths)["rejected"].get("DUPLICATE") == 2, 20,
               "two duplicates", ctx.tail)
    wait_until(lambda: (p := ctx.position(sc)) and p["state"] != PositionState.PENDING, 30,
               "the order's fate", ctx.tail)
    assert len(ctx.posts(sc)) == 1
    wait_until(lambda: read_stats(ctx.paths)["orders"] == 1, 10, "one order counted",
               ctx.tail)


@pytest.mark.parametrize("point", ["after_journal", "after_send"])
def test_kill9_no_duplicate_no_lost_position(ctx: Ctx, point: str) -> None:
    w = ctx.start("--crash-at", point, "--lookup-grace", "10")
    sc = ctx.feed.scan(6)
    submit(ctx.writer(), sc)
    assert w.wait_exit(30) == -9, ctx.tail()
    sent = len(ctx.posts(sc))
    assert sent == (1 if point == "after_send" else 0)
    # the journal says SENDING: the request was durable before the crash
    j = Journal(ctx.paths.journal)
    try:
        assert j.order(client_key(sc.slot, sc.window_start)).state == OrderState.SENDING
    finally:
        j.close()

    w2 = ctx.start()
    if point == "after_send":
        # the exchange has it: the restarted worker finds it and holds the position
        wait_until(lambda: (p := ctx.position(sc)) and p["state"] in (
            PositionState.OPEN, PositionState.SETTLED), 30, "the position found", ctx.tail)
        pos = ctx.position(sc)
        assert pos["shares"] > 0
        held = ctx.sim_shares(sc)           # the sim's ledger for our account agrees
        assert held == pytest.approx(pos["shares"], abs=1e-6), (held, pos)
    else:
        # never arrived: counted as pending until well after its window, then failed
        wait_until(lambda: (p := ctx.position(sc)) and p["state"] == PositionState.FAILED,
                   60, "the unsent order to fail", ctx.tail)
    assert len(ctx.posts(sc)) == sent                     # nothing was re-sent
    wait_until(lambda: read_stats(ctx.paths)["orders"] == 1, 5, "one order", ctx.tail)
    assert w2.stop() == 0


def test_risk_limits_and_pause(ctx: Ctx) -> None:
    ctx.start("--max-open", "1")
    wr = ctx.writer()
    # each slot is scanned right before its intent: at speed 60 a book is stale after 1 wall s
    a = ctx.feed.scan(8)
    submit(wr, a, max_price=round(a.up_ask - 0.05, 2))      # below the ask
    wait_until(lambda: read_stats(ctx.paths)["rejected"] == {"PRICE_ABOVE_MAX": 1}, 20,
               "price above max", ctx.tail)
    b = ctx.feed.scan(10)
    submit(wr, b)
    wait_until(lambda: (p := ctx.position(b)) and p["state"] == PositionState.OPEN, 30,
               "the one allowed position", ctx.tail)
    c = ctx.feed.scan(12)
    submit(wr, c)
    wait_until(lambda: read_stats(ctx.paths)["rejected"].get("MAX_OPEN") == 1, 20,
               "max open", ctx.tail)
    ctx.control.set_paused(True)
    wait_until(lambda: read_stats(ctx.paths)["paused"] == 1, 10, "paused in status", ctx.tail)
    d = ctx.feed.scan(6)
    submit(wr, d)
    wait_until(lambda: read_stats(ctx.paths)["rejected"].get("PAUSED") == 1, 20, "paused",
               ctx.tail)
    ctx.control.set_paused(False)
    assert [len(ctx.posts(x)) for x in (a, b, c, d)] == [0, 1, 0, 0]
    assert len(ctx.all_posts()) >= 1


def test_exchange_reject_and_lost_reply(ctx: Ctx) -> None:
    ctx.start()
    wr = ctx.writer()
    sim_testing.set_fault(ctx.sim.admin, order_reject="sim says no", order_reject_count=1)
    a = ctx.feed.scan(1)
    submit(wr, a)
    wait_until(lambda: (p := ctx.position(a)) and p["state"] == PositionState.FAILED, 30,
               "the rejected order", ctx.tail)
    # the reply is held longer than the client's 5 s timeout: the worker must look it up
    sim_testing.set_fault(ctx.sim.admin, order_delay_s=7.0)
    try:
        b = ctx.feed.scan(3)
        submit(wr, b)
        wait_until(lambda: (p := ctx.position(b)) and p["state"] == PositionState.OPEN, 60,
                   "the order found by lookup", ctx.tail)
    finally:
        sim_testing.clear_faults(ctx.sim.admin)
    assert len(ctx.posts(a)) == 1 and len(ctx.posts(b)) == 1
    assert ctx.workers[0].stop() == 0
    j = Journal(ctx.paths.journal)
    try:
        kinds = [e["kind"] for e in j.events(client_key(b.slot, b.window_start))]
        assert kinds[:2] == ["request", "send_uncertain"] and "lookup" in kinds, kinds
        assert j.order(client_key(a.slot, a.window_start)).state == OrderState.REJECTED
    finally:
        j.close()
