"""The real strategy worker process against shared memory written by the test (playing the
feed) and intent rings read by the test (playing the position worker)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import psutil
import pytest

from core.clock import Clock
from core.markets import CANDLE_SYMBOLS, KLINE_INTERVALS, N_SLOTS, SLOTS
from core.proc import EXIT_BROKEN_CODE, EXIT_OPERATOR
from position_worker.intents import IntentSource
from state.control import ControlBlock, WorkerSlot
from state.layout import MARKET_DT, TICK_DT, WINDOW_ROW_DT, SlotStatus
from state.ring import RingWriter
from state.run import SNAPSHOT_CAPACITY, TICK_RING_CAPACITY, RunPaths
from state.snapshot import SnapshotRegion
from state.table import TableWriter
from strategy_worker.lifecycle import StrategyState
from strategy_worker.report import read_report
from tests.state.test_snapshot import flip_payload_byte
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

# Records, in evaluation order, [tick, slots evaluated at that tick]: a merged tick would be
# missing, a repeated one would show twice, a partial one would count fewer than N_SLOTS slots.
RECORDER = '''
SCHEMA_VERSION = 1
from strategy_worker.api import Decision
class Strategy:
    def __init__(self, params):
        self.evals = []
    def evaluate(self, view):
        if self.evals and self.evals[-1][0] == view.tick:
            self.evals[-1][1] += 1
        else:
            self.evals.append([view.tick, 1])
        return Decision("Up", 0.9, "always")
    def get_state(self):
        return {"evals": self.evals}
    def set_state(self, state):
        self.evals = state["evals"]
'''


class FakeFeed:
    """Creates the feed's segments and publishes ticks with every slot listed."""

    def __init__(self, paths: RunPaths, clock: Clock) -> None:
        self.clock = clock
        self.ticks = RingWriter(paths.seg("ticks"), TICK_DT, TICK_RING_CAPACITY)
        self.windows = TableWriter(paths.seg("windows"), WINDOW_ROW_DT,
                                   len(CANDLE_SYMBOLS) * len(KLINE_INTERVALS))
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

    def next_windows(self) -> None:
        """Move every slot on to its next market window (a scanner rollover), so that each
        tick published afterwards offers (slot, window) pairs no earlier tick offered."""
        for row in self.rows:
            s = SLOTS[int(row["slot"])]
            start = int(row["window_start"]) + s.window_s
            row["window_start"], row["end_ts"] = start, start + s.window_s
            row["slug"] = s.slug(start).encode()
            self.markets.write(s.index, row)

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

    def start(epoch: int, lane: int = 0, path: Path = strategy,
              auto_handoff: bool = True) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "strategy_worker", "--run-dir",
                              str(run_paths.run_dir), "--epoch", str(epoch), "--lane", str(lane),
                              "--strategy", str(path),
                              *(["--auto-handoff"] if auto_handoff else [])],
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


def in_state(control: ControlBlock, lane: int, pid: int, state: StrategyState) -> bool:
    w = control.worker(WorkerSlot.strategy(lane))
    return w["pid"] == pid and w["state"] == state


def write_strategy(world: dict, name: str, text: str) -> Path:
    path = world["paths"].run_dir / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def stopped(p: subprocess.Popen) -> Iterator[None]:
    """SIGSTOP ``p`` for the body (the kernel has stopped it when the body starts), then
    SIGCONT it: whatever the body publishes, the worker reads late, all at once."""
    proc = psutil.Process(p.pid)
    p.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: proc.status() == psutil.STATUS_STOPPED, what="worker stopped")
        yield
    finally:
        p.send_signal(signal.SIGCONT)


def start_active_recorder(world: dict, epoch: int) -> tuple[subprocess.Popen, list]:
    """An ACTIVE worker running RECORDER that has evaluated (and traded) tick 1; returns it
    and tick 1's intents (one per slot)."""
    control, feed, intents = world["control"], world["feed"], world["intents"]
    control.set_active_epoch(epoch)
    p = world["start"](epoch, path=write_strategy(world, "recorder.py", RECORDER))
    wait_for(lambda: in_state(control, 0, p.pid, StrategyState.ACTIVE), what="ACTIVE")
    t = feed.tick()
    wait_for(lambda: control.epoch_tick(epoch) == t, what="tick 1 evaluated")
    first = intents.poll()                   # submitted before the tick was marked evaluated
    assert sorted(i.slot for i in first) == list(range(N_SLOTS))
    return p, first


def evaluations(world: dict) -> list[list[int]]:
    return orjson.loads(world["snapshot"].read().data)["strategy"]["evals"]


def test_active_worker_emits_one_intent_per_slot_window_and_snapshots(world: dict) -> None:
    control, feed, intents = world["control"], world["feed"], world["intents"]
    control.set_active_epoch(7)
    p = world["start"](7)
    wait_for(lambda: registered(control, 0, p.pid), what="registration")
    got: list = []

    def collect() -> bool:
        feed.tick()
        got.extend(intents.poll())
        return len(got) >= N_SLOTS

    wait_for(collect, what=f"{N_SLOTS} intents")
    for _ in range(3):                      # more ticks: the same windows are not re-proposed
        t = feed.tick()
        wait_for(lambda t=t: control.epoch_tick(7) == t, what="tick evaluated")
    got.extend(intents.poll())
    assert sorted(i.slot for i in got) == list(range(N_SLOTS))
    assert {i.epoch for i in got} == {7}
    snap = world["snapshot"].read()
    assert snap.schema_version == 3 and snap.epoch == 7
    doc = orjson.loads(snap.data)
    assert doc["strategy"]["seen"] >= N_SLOTS * 4 and len(doc["sent"]) == N_SLOTS
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
    wait_for(lambda: (feed.tick(), first.extend(intents.poll()), len(first) >= N_SLOTS)[-1])
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
    assert doc["strategy"]["seen"] >= seen_before + N_SLOTS
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


def test_ticks_read_late_are_each_evaluated_once_in_order(world: dict) -> None:
    """Five ticks published while the worker is stopped are five cycles, not one: each is
    evaluated on its own markets, in order; only the newest of the batch trades."""
    control, feed, intents = world["control"], world["feed"], world["intents"]
    p, sent = start_active_recorder(world, 5)
    with stopped(p):
        for _ in range(5):
            feed.next_windows()              # every tick offers windows no other tick did
            last = feed.tick()
    wait_for(lambda: control.epoch_tick(5) == last, what="the batch evaluated")
    assert last == 6
    assert evaluations(world) == [[t, N_SLOTS] for t in range(1, last + 1)]
    assert orjson.loads(world["snapshot"].read().data)["tick"] == last
    lane = control.lane(0)
    assert int(lane["skipped"]) == 0 and int(lane["evaluated"]) == last
    batch = intents.poll()
    # Only tick 6 traded: ticks 2..5's windows (their prices are gone) got no intent.
    assert sorted(i.slot for i in batch) == list(range(N_SLOTS))
    assert all(i.window_start == int(feed.rows[i.slot]["window_start"]) for i in batch)
    sent += batch
    t = feed.tick()                          # the same windows again: nothing new to send
    wait_for(lambda: control.epoch_tick(5) == t, what="one more tick evaluated")
    sent += intents.poll()
    keys = [(i.slot, i.window_start) for i in sent]
    assert len(keys) == len(set(keys)) == 2 * N_SLOTS
    assert {i.epoch for i in sent} == {5}
    p.terminate()
    assert p.wait(30) == 0


def test_a_lapped_tick_ring_is_counted_not_hidden(world: dict) -> None:
    control, feed = world["control"], world["feed"]
    p, _ = start_active_recorder(world, 3)
    with stopped(p):
        for _ in range(TICK_RING_CAPACITY + 40):
            last = feed.tick()
    wait_for(lambda: control.epoch_tick(3) == last, what="the newest tick evaluated")
    assert int(control.lane(0)["skipped"]) > 0
    ticks = [t for t, _ in evaluations(world)]
    assert ticks == sorted(set(ticks)) and ticks[0] == 1 and ticks[-1] == last
    assert len(ticks) < last                 # some were lost, and the worker knows it,
    assert int(control.lane(0)["skipped"]) == last - len(ticks)     # each counted once
    t = feed.tick()                          # and it goes on, one tick at a time again
    wait_for(lambda: control.epoch_tick(3) == t, what="a later tick evaluated")
    assert evaluations(world)[-2:] == [[last, N_SLOTS], [t, N_SLOTS]]
    assert p.poll() is None
    p.terminate()
    assert p.wait(30) == 0


def test_an_unreadable_snapshot_stops_the_worker_and_is_not_overwritten(world: dict) -> None:
    control, snap = world["control"], world["snapshot"]
    for g in (1, 2):                         # a generation in each buffer
        doc = {"strategy": {"seen": g}, "sent": [], "tick": g, "epoch": 1}
        assert snap.write(orjson.dumps(doc), schema_version=3, epoch=1) == g
    for b in "AB":
        flip_payload_byte(snap, b)
    before = snap.status()
    assert not any(b["crc_ok"] for b in before["buffers"])
    control.set_active_epoch(2)
    p = world["start"](2)
    # Exited, or (the bug) got past verification and is trading on empty state.
    wait_for(lambda: p.poll() is not None or in_state(control, 0, p.pid, StrategyState.ACTIVE),
             what="the worker to exit")
    report = read_report(world["paths"].run_dir, 2)
    assert p.returncode == EXIT_OPERATOR, report
    assert report["state"] == "FAILED"
    assert report["error"].startswith("SnapshotCorruptError"), report
    assert snap.status() == before           # same generations, same (bad) bytes: untouched


VERIFY_BASE = '''
SCHEMA_VERSION = 1
class Strategy:
    def __init__(self, params):
        self.n = 0
    def evaluate(self, view):
        self.n += 1
        return None
    def get_state(self):
        return {"n": self.n}
    def set_state(self, state):
        self.n = state["n"]
'''


@pytest.mark.parametrize("extra, error", [
    ("    def evaluate(self, view):\n"
     "        if view.label == 'eth-15m':\n"
     "            raise KeyError('missing history')\n",
     "evaluate() raised on eth-15m at tick 1"),
    ("    def get_state(self):\n"
     "        return {'seen': {1, 2}}\n",
     "get_state() could not be snapshotted"),
    ("    def self_test(self):\n"
     "        return False\n",
     "self_test() returned False"),
], ids=["evaluate-raises-on-one-slot", "state-not-json", "self-test-false"])
def test_verification_rejects_a_broken_strategy(world: dict, extra: str, error: str) -> None:
    world["feed"].tick()                     # verification evaluates the newest tick dry
    path = write_strategy(world, "broken.py", VERIFY_BASE + extra)
    p = world["start"](4, path=path, auto_handoff=False)
    run_dir = world["paths"].run_dir
    # Exited, or (the bug) passed verification and waits as a standby.
    wait_for(lambda: p.poll() is not None or read_report(run_dir, 4).get("state") == "READY",
             what="verification to end")
    report = read_report(run_dir, 4)
    assert p.returncode == EXIT_BROKEN_CODE, report
    assert (report["state"], report["phase"]) == ("FAILED", "verifying")
    assert report["error"].startswith("StrategyError") and error in report["error"], report
    assert world["intents"].poll() == []


def test_verification_passes_a_good_strategy_which_then_waits(world: dict) -> None:
    control, feed = world["control"], world["feed"]
    feed.tick()
    control.set_active_epoch(4)              # its epoch, but nobody handed it the state
    path = write_strategy(world, "good.py", VERIFY_BASE + "    def self_test(self):\n"
                          "        return True\n")
    p = world["start"](4, path=path, auto_handoff=False)
    report = wait_for(lambda: (r := read_report(world["paths"].run_dir, 4)).get("state")
                      == "READY" and r, what="READY report")
    assert in_state(control, 0, p.pid, StrategyState.READY)
    assert report["verify_ms"] > 0 and report["dry_evaluations"] == N_SLOTS
    t = feed.tick()                          # a standby reads ticks but never trades them
    wait_for(lambda: any(r["name"] == "strategy0" and r["cursor"] == t
                         for r in feed.ticks.readers()), what="tick consumed")
    assert in_state(control, 0, p.pid, StrategyState.READY)
    assert control.epoch_tick(4) is None and world["intents"].poll() == []
    p.terminate()
    assert p.wait(30) == 0


def test_the_strategy_worker_never_imports_the_exchange_side() -> None:
    """Strategy code runs in this process: it must not even have the order-placing modules
    (position_worker, the CLOB client) loaded to reach for."""
    prog = ("import strategy_worker.main, sys; print(sorted(m for m in sys.modules "
            "if m.startswith('position_worker') or m.startswith('py_clob')))")
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "[]"


def test_an_active_worker_catches_up_on_every_tick_still_in_the_ring(world: dict) -> None:
    control, feed = world["control"], world["feed"]
    p, _ = start_active_recorder(world, 3)
    with stopped(p):
        for _ in range(100):                 # < TICK_RING_CAPACITY: nothing is lapped
            last = feed.tick()
    wait_for(lambda: control.epoch_tick(3) == last, what="the newest tick evaluated")
    evals, skipped = evaluations(world), int(control.lane(0)["skipped"])
    p.terminate()
    assert p.wait(30) == 0
    assert (evals, skipped) == ([[t, N_SLOTS] for t in range(1, last + 1)], 0)
