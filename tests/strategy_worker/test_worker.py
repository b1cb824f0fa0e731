"""The real strategy worker process against shared memory written by the test (playing the
feed) and intent rings read by the test (playing the position worker)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from core.clock import Clock
from core.markets import KLINE_INTERVALS, SLOTS, SYMBOLS
from position_worker.intents import IntentSource
from state.control import ControlBlock, WorkerSlot
from state.layout import MARKET_DT, TICK_DT, WINDOW_ROW_DT, SlotStatus
from state.ring import RingWriter
from state.run import SNAPSHOT_CAPACITY, TICK_RING_CAPACITY, RunPaths
from state.snapshot import SnapshotRegion
from state.table import TableWriter
from strategy_worker.lifecycle import StrategyState
from tests.waiting import wait_for

ALWAYS_UP = '''
SCHEMA_VERSION = 3
from strategy_worker.api import Decision
class Strategy:
    def __init__(self, params):
        self.seen = 0
    def evaluate(self, view):
        self.seen += 1
        if view.label == "fail-me":
            raise RuntimeError("boom")
        return Decision("Up", 0.9, "always")
    def get_state(self):
        return {"seen": self.seen}
    def set_state(self, state):
        self.seen = state["seen"]
'''


class FakeFeed:
    """Creates the feed's segments and publishes ticks with all 16 slots listed."""

    def __init__(self, paths: RunPaths, clock: Clock) -> None:
        self.clock = clock
        self.ticks = RingWriter(paths.seg("ticks"), TICK_DT, TICK_RING_CAPACITY)
        self.windows = TableWriter(paths.seg("windows"), WINDOW_ROW_DT,
                                   len(SYMBOLS) * len(KLINE_INTERVALS))
        self.markets = TableWriter(paths.seg("markets"), MARKET_DT, len(SLOTS))
        self.n = 0
        self.rows: list[np.void] = []
        now = clock.now()
        for s in SLOTS:
            row = np.zeros((), MARKET_DT)
            start = s.window_start(now)
            row["slot"], row["status"], row["accepting"] = s.index, SlotStatus.OK, 1
            row["window_s"], row["window_start"] = s.window_s, start
            row["end_ts"] = start + s.window_s
            row["slug"] = s.slug(start).encode()
            row["up_ask"] = row["down_ask"] = 0.5
            self.markets.write(s.index, row)
            self.rows.append(row)

    def tick(self) -> int:
        self.n += 1
        rec = np.zeros((), TICK_DT)
        rec["tick"], rec["tick_time_ms"] = self.n, self.clock.now_ms()
        for row in self.rows:                   # the scanner copies its rows into the tick
            row["tick"] = self.n
            rec["markets"][int(row["slot"])] = row
        self.ticks.publish(rec)
        return self.n

    def close(self) -> None:
        for r in (self.ticks, self.windows, self.markets):
            r.unlink()
            r.close()


@pytest.fixture
def world(run_paths: RunPaths, control: ControlBlock) -> Iterator[dict]:
    clock = Clock.accelerated(1.0)
    run_paths.sim_json.write_bytes(orjson.dumps({"clock": clock.to_dict()}))
    snap = SnapshotRegion.create(run_paths.seg("snapshot"), SNAPSHOT_CAPACITY)
    feed = FakeFeed(run_paths, clock)
    intents = IntentSource(run_paths)
    strategy = run_paths.run_dir / "always_up.py"
    strategy.write_text(ALWAYS_UP)
    procs: list[subprocess.Popen] = []

    def start(epoch: int, lane: int = 0, path: Path = strategy) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "strategy_worker", "--run-dir",
                              str(run_paths.run_dir), "--epoch", str(epoch), "--lane", str(lane),
                              "--strategy", str(path), "--auto-handoff"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    yield {"paths": run_paths, "control": control, "feed": feed, "intents": intents,
           "snapshot": snap, "start": start, "strategy": strategy}
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        assert p.poll() is not None
    intents.close(unlink=True)
    feed.close()
    snap.unlink()
    snap.close()


def registered(control: ControlBlock, lane: int, pid: int) -> bool:
    return control.worker(WorkerSlot.strategy(lane))["pid"] == pid


def test_active_worker_emits_one_intent_per_slot_window_and_snapshots(world: dict) -> None:
    control, feed, intents = world["control"], world["feed"], world["intents"]
    control.set_active_epoch(7)
    p = world["start"](7)
    wait_for(lambda: registered(control, 0, p.pid), what="registration")
    got: list = []

    def collect() -> bool:
        feed.tick()
        got.extend(intents.poll())
        return len(got) >= 16

    wait_for(collect, what="16 intents")
    for _ in range(3):                      # more ticks: the same windows are not re-proposed
        t = feed.tick()
        wait_for(lambda t=t: control.epoch_tick(7) == t, what="tick evaluated")
    got.extend(intents.poll())
    assert sorted(i.slot for i in got) == list(range(16))
    assert {i.epoch for i in got} == {7}
    snap = world["snapshot"].read()
    assert snap.schema_version == 3 and snap.epoch == 7
    doc = orjson.loads(snap.data)
    assert doc["strategy"]["seen"] >= 16 * 4 and len(doc["sent"]) == 16
    p.terminate()
    assert p.wait(30) == 0


def test_standby_worker_neither_trades_nor_snapshots(world: dict) -> None:
    control, feed, intents = world["control"], world["feed"], world["intents"]
    control.set_active_epoch(1)             # somebody else is active
    p = world["start"](2, lane=1)
    wait_for(lambda: registered(control, 1, p.pid), what="registration")
    wait_for(lambda: control.worker(WorkerSlot.strategy(1))["state"] == StrategyState.HANDED,
             what="HANDED (verified, waiting for its epoch)")
    for _ in range(3):
        feed.tick()
    # the worker has consumed every tick once its reader cursor reaches the head
    wait_for(lambda: any(r["name"] == "strategy1" and r["cursor"] == feed.ticks.head()
                         for r in feed.ticks.readers()), what="ticks consumed")
    p.terminate()
    assert p.wait(30) == 0
    assert intents.poll() == []
    with pytest.raises(Exception, match="no complete snapshot"):
        world["snapshot"].read()


def test_restart_restores_state_and_does_not_repeat_intents(world: dict) -> None:
    control, feed, intents = world["control"], world["feed"], world["intents"]
    control.set_active_epoch(1)
    p = world["start"](1)
    wait_for(lambda: registered(control, 0, p.pid), what="registration")
    first: list = []
    wait_for(lambda: (feed.tick(), first.extend(intents.poll()), len(first) >= 16)[-1])
    p.kill()                                  # crash: an unplanned reload
    p.wait(30)
    seen_before = orjson.loads(world["snapshot"].read().data)["strategy"]["seen"]
    control.set_active_epoch(2)
    q = world["start"](2)
    wait_for(lambda: registered(control, 0, q.pid), what="re-registration")
    t = feed.tick()
    wait_for(lambda: control.epoch_tick(2) == t, what="tick evaluated by the successor")
    assert intents.poll() == []               # every (slot, window) was already proposed
    doc = orjson.loads(world["snapshot"].read().data)
    assert doc["strategy"]["seen"] >= seen_before + 16
    q.terminate()
    assert q.wait(30) == 0


def test_broken_strategy_exits_with_code_4(world: dict) -> None:
    bad = world["paths"].run_dir / "bad.py"
    bad.write_text("def nope(:\n")
    p = world["start"](1, path=bad)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 4
    assert b"SyntaxError" in out
    assert os.path.exists(world["paths"].seg("snapshot"))
