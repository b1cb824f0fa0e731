"""The real worker process in paper mode, on a fake venue clock and a fake Gamma (no sim)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

import orjson
import pytest

from core.clock import Clock
from core.markets import SLOTS
from position_worker.lifecycle import WorkerState
from state.control import ControlBlock, WorkerSlot
from state.intents import IntentWriter
from state.layout import Outcome, PositionState, WorkerRole
from state.run import RunPaths
from tests.position_worker.fakes import MarketTable
from tests.position_worker.harness import (
    FakeGammaServer,
    WorkerProc,
    cleanup_segments,
    read_positions,
    read_stats,
    wait_until,
)

EPOCH = 11
SPEED = 60.0


@pytest.fixture
def venue(run_paths: RunPaths, control: ControlBlock,
          markets: MarketTable) -> Iterator[tuple[Clock, FakeGammaServer]]:
    gamma = FakeGammaServer()
    now = time.time()
    clock = Clock(speed=SPEED, wall_epoch=now, sim_epoch=float(int(now) // 900 * 900 + 30))
    # the reference is observed on the market clock: stamped with wall time, it looked up
    # to 15 minutes old (or from the future) and the worker refused it as STALE_REFERENCE
    markets.now_ms = clock.now_ms
    info = {"binance_ws": "ws://127.0.0.1:9", "binance_rest": "http://127.0.0.1:9",
            "gamma": gamma.url, "clob": "http://127.0.0.1:9", "admin": None,
            "clock": clock.to_dict(), "pid": 0, "seed": 1}
    run_paths.sim_json.write_bytes(orjson.dumps(info))
    control.set_active_epoch(EPOCH)
    for lane, epoch in ((0, EPOCH), (1, EPOCH - 1)):        # play the strategy workers
        control.register(WorkerSlot.strategy(lane), WorkerRole.STRATEGY, lane=lane,
                         epoch=epoch)
    yield clock, gamma
    gamma.close()
    cleanup_segments(run_paths)


def open_window(clock: Clock, slot: int = 0, min_left_s: float = 120.0) -> int:
    """A window of ``slot`` that takes orders for at least ``min_left_s`` more market seconds
    (2 wall s at speed 60): the current one, else the next (listed ahead, like the real
    venue's). Chosen once the worker runs, so a slow start-up cannot eat the window."""
    ws = SLOTS[slot].window_start(clock.now())
    if ws + SLOTS[slot].window_s - clock.now() < min_left_s:
        ws += SLOTS[slot].window_s
    return ws


def start(paths: RunPaths, control: ControlBlock, *extra: str) -> WorkerProc:
    w = WorkerProc(paths, "--mode", "paper", "--settle-every", "0.2", "--reconcile-every",
                   "1", *extra)
    w.wait_running(control)
    return w


def test_paper_intent_fill_settle_and_fencing(run_paths: RunPaths, control: ControlBlock,
                                              markets: MarketTable, venue) -> None:
    clock, gamma = venue
    w = start(run_paths, control, "--unlink-on-exit")
    writer = IntentWriter(run_paths, 0, EPOCH)
    stale = IntentWriter(run_paths, 1, EPOCH - 1)
    try:
        hb = control.worker(WorkerSlot.POSITION)["heartbeat_ns"]
        wait_until(lambda: control.worker(WorkerSlot.POSITION)["heartbeat_ns"] > hb, 5,
                   "a heartbeat", w.tail)
        # the row right before the intent: at speed 60 a book is stale after 1 wall s
        ws = open_window(clock)
        markets.set(0, ws, up_ask=0.5)
        slug = SLOTS[0].slug(ws)
        writer.submit(0, ws, slug, Outcome.UP, 5.0, 0.6, "paper")
        stale.submit(2, ws, SLOTS[2].slug(ws), Outcome.UP, 5.0, 0.6, "zombie")
        pos = wait_until(lambda: [p for p in read_positions(run_paths)
                                  if p["state"] == PositionState.OPEN], 20, "an open position",
                         w.tail)[0]
        assert pos["shares"] == pytest.approx(10.0) and pos["avg_price"] == pytest.approx(0.5)
        wait_until(lambda: read_stats(run_paths)["rejected"] == {"STALE_EPOCH": 1}, 20,
                   "the stale intent's rejection", w.tail)
        gamma.resolve(slug, "up")        # settles once the window's (sim) end has passed
        wait_until(lambda: read_stats(run_paths)["settled"] == 1, 30, "settlement", w.tail)
        st = read_stats(run_paths)
        assert st["wins"] == 1 and st["pnl"] == pytest.approx(10 - 5 - 10 * 0.07 * 0.25)
        assert [p["state"] for p in read_positions(run_paths)] == [PositionState.SETTLED]
        writer.close()
        stale.close()
        assert w.stop() == 0
        assert control.worker(WorkerSlot.POSITION)["state"] == WorkerState.STOPPED
        left = [n for n in ("positions", "posstats", "intents0", "intents1")
                if run_paths.seg(n).exists()]
        assert left == [], f"--unlink-on-exit left {left}"
    finally:
        writer.close()
        stale.close()
        w.kill()


@pytest.mark.parametrize("point", ["after_journal", "after_send"])
def test_paper_kill9_then_restart(run_paths: RunPaths, control: ControlBlock,
                                  markets: MarketTable, venue, point: str) -> None:
    clock, _gamma = venue
    w = start(run_paths, control, "--crash-at", point, "--lookup-grace", "5")
    ws = open_window(clock)
    markets.set(0, ws, up_ask=0.5)
    writer = IntentWriter(run_paths, 0, EPOCH)
    w2 = None
    try:
        writer.submit(0, ws, SLOTS[0].slug(ws), Outcome.UP, 5.0, 0.6, "crash")
        assert w.wait_exit(30) == -9
        w2 = start(run_paths, control)
        want = PositionState.OPEN if point == "after_send" else PositionState.FAILED
        wait_until(lambda: [p["state"] for p in read_positions(run_paths)] == [want], 40,
                   f"the position to be {want.name}", w2.tail)
        # the intent was not taken again after the restart
        writer.submit(0, ws, SLOTS[0].slug(ws), Outcome.UP, 5.0, 0.6, "again")
        wait_until(lambda: read_stats(run_paths)["rejected"].get("DUPLICATE") == 1, 20,
                   "the duplicate", w2.tail)
        assert read_stats(run_paths)["orders"] == 1
        assert w2.stop() == 0
    finally:
        writer.close()
        w.kill()
        if w2 is not None:
            w2.kill()


def test_a_second_worker_on_the_run_dir_is_refused(run_paths: RunPaths, control: ControlBlock,
                                                   markets: MarketTable, venue) -> None:
    """Two workers on one run dir would both send orders for the same window (the review
    saw two POSTs). The second one exits 3 before touching anything, the first carries on."""
    clock, _gamma = venue
    w = start(run_paths, control)
    second = None
    writer = IntentWriter(run_paths, 0, EPOCH)
    try:
        second = WorkerProc(run_paths, "--mode", "paper")
        assert second.wait_exit(30) == 3, second.tail()
        assert "position.lock" in second.tail() and str(w.proc.pid) in second.tail()
        assert control.worker(WorkerSlot.POSITION)["pid"] == w.proc.pid     # slot untouched
        ws = open_window(clock)
        markets.set(0, ws, up_ask=0.5)
        writer.submit(0, ws, SLOTS[0].slug(ws), Outcome.UP, 5.0, 0.6, "one")
        wait_until(lambda: [p["state"] for p in read_positions(run_paths)]
                   == [PositionState.OPEN], 20, "the first worker's fill", w.tail)
        assert w.stop() == 0
    finally:
        writer.close()
        w.kill()
        if second is not None:
            second.kill()


def test_paper_kill_switch_is_carried_out_and_confirmed(run_paths: RunPaths,
                                                        control: ControlBlock,
                                                        markets: MarketTable, venue) -> None:
    """The heartbeat sees the kill flag: the worker cancels at the venue (paper: nothing
    rests), journals the cancel, sets kill_done; intents are refused until resumed."""
    clock, _gamma = venue
    w = start(run_paths, control)
    writer = IntentWriter(run_paths, 0, EPOCH)
    try:
        control.set_paused(True)
        control.set_killed(True)
        wait_until(lambda: control.kill_confirmed, 10, "kill_done", w.tail)
        # the flag is set before the log line is written
        wait_until(lambda: "kill switch carried out" in w.tail(), 10, "the kill logged", w.tail)
        ws = open_window(clock)
        markets.set(0, ws, up_ask=0.5)
        writer.submit(0, ws, SLOTS[0].slug(ws), Outcome.UP, 5.0, 0.6, "killed")
        wait_until(lambda: read_stats(run_paths)["rejected"] == {"PAUSED": 1}, 20,
                   "the refusal", w.tail)
        assert read_stats(run_paths)["paused"]
        assert w.stop() == 0
        con = sqlite3.connect(f"file:{run_paths.journal}?mode=ro", uri=True)
        try:
            (body,) = [orjson.loads(r[0]) for r in
                       con.execute("SELECT body FROM events WHERE kind='kill'")]
        finally:
            con.close()
        assert body["canceled"] == 0 and body["executor"] == "paper"
    finally:
        writer.close()
        w.kill()
