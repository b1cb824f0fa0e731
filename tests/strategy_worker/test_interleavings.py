"""Deterministic interleavings of two strategy workers (in-process, one loop turn at a time)
and of the supervisor's reload steps, for the races a review found: a shadow run must not
drop the ticks a later hand-over needs, a failed drain must leave the worker trading, and a
flip must never go to a standby that died after it took the hand-over."""

from __future__ import annotations

import orjson

from core.clock import Clock
from core.markets import N_SLOTS
from state.layout import Decided, LaneCommand
from strategy_worker.lifecycle import StrategyState as S
from strategy_worker.loader import load_strategy
from strategy_worker.worker import StrategyWorker
from tests.strategy_worker.test_worker import RECORDER, write_strategy
from tests.strategy_worker.test_worker import world as world  # the fixture, re-exported
from tests.waiting import wait_for


def mk(world, epoch, lane, text=RECORDER, name="rec.py"):
    path = write_strategy(world, name, text)
    return StrategyWorker(
        world["paths"],
        Clock.accelerated(1.0),
        load_strategy(path, {}),
        epoch=epoch,
        lane=lane,
        stake=5.0,
    )


def cmd(w, c, **a):
    w.control.send_lane(w.lane, c, **a)
    w._handle_command()


def ready(w):
    """A standby verified and READY (its get_state runs once, in verification)."""
    w.fsm.to(S.VERIFYING)
    w.verify()
    w.fsm.to(S.READY)


def activate(w, control):
    """A first worker: verified, handed the empty state, epoch 1 active."""
    ready(w)
    w.handoff(gen=0, tick=0, epoch=0)
    control.set_active_epoch(1)


def loop_once(w):
    """One turn of StrategyWorker.run's loop (without the wait)."""
    w.turn()


def test_a_shadow_run_keeps_the_ticks_a_later_handover_needs(world):
    control, feed = world["control"], world["feed"]
    a = mk(world, 1, 0)
    b = mk(world, 2, 1)
    try:
        activate(a, control)
        ready(b)
        for _ in range(3):
            feed.tick()
            loop_once(a)
            loop_once(b)
        cmd(b, LaneCommand.SHADOW, n=1)
        feed.tick()  # 4
        loop_once(b)
        loop_once(a)  # b evaluates 4 in shadow, a evaluates 4
        feed.tick()  # 5: both woken
        loop_once(b)  # b: 5 skipped + cleared; compares 4 -> READY
        assert b.state == S.READY
        # supervisor posts DRAIN (to a) and TAKEOVER (to b) before a's next loop turn
        dseq = control.send_lane(0, LaneCommand.DRAIN, n=0)
        control.send_lane(1, LaneCommand.TAKEOVER, gen=dseq, n=0, epoch=1)
        loop_once(a)  # a: polls 5, then handles DRAIN first -> T=4
        control.lane(0)
        loop_once(b)
        assert b.state == S.HANDED
        control.set_active_epoch(2)
        feed.tick()  # 6
        loop_once(b)
        evals = orjson.loads(world["snapshot"].read().data)["strategy"]["evals"]
        assert 5 in [e[0] for e in evals], "tick 5 was never evaluated by anyone"
    finally:
        a.close()
        b.close()


FLAKY = """
SCHEMA_VERSION = 1
from strategy_worker.api import Decision
class Strategy:
    def __init__(self, params):
        self.n = 0
        self.calls = 0
    def evaluate(self, view):
        self.n += 1
        return None
    def get_state(self):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("transient")
        return {"n": self.n}
    def set_state(self, state):
        self.n = state["n"]
"""


def test_a_failed_drain_leaves_the_worker_trading_and_resumable(world):
    control, feed = world["control"], world["feed"]
    a = mk(world, 1, 0, FLAKY, "flaky.py")
    try:
        activate(a, control)  # get_state call 1
        loop_once(a)
        feed.tick()
        loop_once(a)  # commit: call 2
        feed.tick()
        loop_once(a)  # call 3
        cmd(a, LaneCommand.DRAIN, n=0)  # call 4 raises
        cmd(a, LaneCommand.RESUME)  # rollback
        feed.tick()
        loop_once(a)
        assert a.state == S.ACTIVE
    finally:
        a.close()


def test_no_flip_to_a_standby_that_died_after_the_handover(tmp_path, run_paths, control):
    import time

    from state.control import WorkerSlot
    from state.run import SNAPSHOT_CAPACITY
    from state.snapshot import SnapshotRegion
    from supervisor.lanes import LaneConfig, Lanes
    from supervisor.reload import Reload, ReloadPhase, ReloadRequest
    from supervisor.workers import Child, ChildSpec, ChildState

    snap = SnapshotRegion.create(run_paths.seg("snapshot"), SNAPSHOT_CAPACITY)
    lanes = None
    try:
        lanes = Lanes(
            LaneConfig(run_dir=run_paths.run_dir, mode="sim", stake=5.0, probation_ticks=0),
            control,
            snap,
            lambda: 3,
            lambda: None,
        )
        (run_paths.run_dir / "s.py").write_text("x=1\n")
        dep = lanes.deploys.stage(run_paths.run_dir / "s.py", {})
        for lane in (0, 1):
            c = Child(
                ChildSpec(f"strategy{lane}", lambda: ["-c", "import time; time.sleep(60)"]),
                run_paths.run_dir / "logs",
            )
            c.start()
            c.fsm.to(ChildState.RUNNING)
            lanes.children[lane] = c
            control.workers[WorkerSlot.strategy(lane)]["pid"] = c.pid
            control.workers[WorkerSlot.strategy(lane)]["epoch"] = lane + 1
        lanes.epochs = [1, 2]
        lanes.active = 0
        lanes.current = dep
        control.set_active_epoch(1)
        r = Reload(ReloadRequest("command", dep), lanes, lanes.timeouts)
        # state after DRAIN ok and standby's HANDED ack, waiting for decided
        r.new, r.to_epoch = 1, 2
        r.fsm.state = ReloadPhase.HANDOFF
        r.drained = {"gen": 7, "tick": 9, "head": 5}
        r.handed = {"gen": 7, "tick": 9, "epoch": 1}
        r.drain_req_mono = time.monotonic()
        r._seq = control.send_lane(1, 6)
        control.ack_lane(1, r._seq, True, gen=7, tick=9)
        r._deadline = time.monotonic() + 20
        lanes.reload = r
        control.set_decided(0, 3)
        lanes.step()
        assert r.phase == ReloadPhase.HANDOFF
        # between two supervisor turns: the standby dies, the position worker decides H
        lanes.children[1].proc.kill()
        lanes.children[1].proc.wait()
        control.set_decided(0, 5)

        def turn() -> bool:
            """One supervisor turn; the safety property holds after every one of them."""
            lanes.step()
            assert lanes.active != 1 and control.active_epoch != 2, "flipped to the dead standby"
            assert lanes.active is None or lanes.alive(lanes.active) or lanes.queue
            # done when the reload ended and the old worker (a stand-in that cannot resume)
            # is gone
            return lanes.reload is None and lanes.children[0].proc.poll() is not None
        wait_for(turn, 30, "the reload rolled back and the old worker gone")
        assert lanes.history[0]["result"] == "rolled_back", lanes.history
    finally:
        for c in lanes.children if lanes else []:
            if c and c.proc and c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        snap.unlink()
        snap.close()


MIXED = """
SCHEMA_VERSION = 1
from strategy_worker.api import Decision
BAD = {0: Decision("Up", float("nan")), 1: Decision("Sideways", 0.5),
       2: Decision("Up", 0.5, None), 3: "Up"}
class Strategy:
    def __init__(self, params):
        self.armed = False             # the test arms the live instance after verification
    def evaluate(self, view):
        if self.armed and view.slot in BAD:
            return BAD[view.slot]
        return Decision("Down", 0.6, "fine")
    def get_state(self):
        return {}
    def set_state(self, state):
        pass
"""


def test_a_malformed_decision_costs_its_own_slot_not_the_ticks_batch(world):
    """A Decision with a NaN price, an unknown outcome, a non-string reason, or no Decision
    at all is that slot's error; every other slot's intent of the tick still goes out."""
    control, feed, intents = world["control"], world["feed"], world["intents"]
    w = mk(world, 1, 0, MIXED, "mixed.py")
    try:
        activate(w, control)
        w.instance.armed = True
        feed.tick()
        loop_once(w)
        got = intents.poll()
        bad = {0, 1, 2, 3}
        assert {i.slot for i in got} == set(range(N_SLOTS)) - bad
        assert got and {i.reason for i in got} == {"fine"}
        assert w.errors == len(bad)
        assert {int(c) for c in control.lane(0)["decisions"][w.evaluated % 4][:4]} == {
            int(Decided.ERROR)}
    finally:
        w.close()
