"""The strategy worker: the replaceable process.

It waits for each scanner tick, evaluates all 16 slots with the loaded strategy, sends order
intents on its lane (stamped with its epoch: the position worker drops them unless that epoch
is the active one), and commits its own state to the snapshot region every cycle, so a
successor (hot reload) or its own restart (crash) starts where it left off.

Lifecycle (published as the worker ``state`` byte in the control block)::

    STARTING -> STANDBY <-> ACTIVE -> DRAINING -> STOPPED ;  STARTING/ACTIVE/STANDBY -> FAILED

STANDBY evaluates but neither trades nor writes the snapshot: only the worker whose epoch is
the control block's active epoch does. SIGTERM drains: the current cycle finishes, a final
snapshot is written (if active), and the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import logging
import os
from pathlib import Path

import orjson

from core.clock import Clock, ClockLike
from core.config import load_json
from core.errors import SnapshotEmptyError, StrategyError
from core.fsm import StateMachine
from core.proc import EXIT_BROKEN_CODE, install_stop_signals, run_async, setup_logging
from position_worker.intents import IntentWriter
from state.control import ControlBlock, WorkerSlot
from state.layout import TICK_DT, Outcome, WorkerRole
from state.ring import RingReader
from state.run import RunPaths
from state.snapshot import SnapshotRegion
from strategy_worker.api import Decision
from strategy_worker.loader import LoadedStrategy, load_strategy
from strategy_worker.views import StateViews

log = logging.getLogger("strategy_worker")

DEFAULT_STRATEGY = Path(__file__).resolve().parent.parent / "strategies" / "momentum.py"
EXIT_STRATEGY_ERROR = EXIT_BROKEN_CODE   # the strategy did not load: restarting cannot help


class StrategyState(enum.IntEnum):
    STARTING = 1
    STANDBY = 2
    ACTIVE = 3
    DRAINING = 4
    STOPPED = 5
    FAILED = 6


_S = StrategyState
TRANSITIONS: dict[StrategyState, frozenset[StrategyState]] = {
    _S.STARTING: frozenset({_S.STANDBY, _S.ACTIVE, _S.DRAINING, _S.FAILED}),
    _S.STANDBY: frozenset({_S.ACTIVE, _S.DRAINING, _S.FAILED}),
    _S.ACTIVE: frozenset({_S.STANDBY, _S.DRAINING, _S.FAILED}),
    _S.DRAINING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset({_S.STOPPED}),
}


class StrategyWorker:
    """One strategy incarnation: epoch, lane, strategy file."""

    def __init__(self, paths: RunPaths, clock: ClockLike, strategy: LoadedStrategy, *,
                 epoch: int, lane: int, stake: float) -> None:
        self.paths, self.clock, self.strategy = paths, clock, strategy
        self.epoch, self.lane, self.stake = epoch, lane, stake
        self.slot = WorkerSlot.strategy(lane)
        self.control = ControlBlock.attach(paths.seg("control"))
        self.fsm = StateMachine("strategy", StrategyState.STARTING, TRANSITIONS,
                                on_change=lambda _o, n: self.control.heartbeat(
                                    self.slot, clock.monotonic_ns(), int(n)))
        self.control.register(self.slot, WorkerRole.STRATEGY, state=StrategyState.STARTING,
                              lane=lane, epoch=epoch, label=strategy.path.stem,
                              now_ns=clock.monotonic_ns())
        self.ticks = RingReader(paths.seg("ticks"), TICK_DT, name=f"strategy{lane}")
        self.views = StateViews(paths)
        self.snapshot = SnapshotRegion.attach(paths.seg("snapshot"))
        self.intents = IntentWriter(paths, lane, epoch)
        self.sent: set[tuple[int, int]] = set()      # (slot, window_start) already proposed
        self.last_tick = 0
        self.errors = 0

    # -- state handover -------------------------------------------------------------------

    def restore(self) -> None:
        """Load the newest snapshot (a predecessor's or our own), migrating its schema."""
        try:
            snap = self.snapshot.read()
        except SnapshotEmptyError:
            log.info("no snapshot yet: starting with empty strategy state")
            return
        try:
            doc = orjson.loads(snap.data)
        except orjson.JSONDecodeError as e:
            raise StrategyError(f"snapshot generation {snap.generation} is not JSON: {e}") from e
        state = self.strategy.migrate(snap.schema_version, doc.get("strategy", {}))
        try:
            self.strategy.instance.set_state(state)
        except Exception as e:
            raise StrategyError(f"set_state failed: {e!r}") from e
        self.sent = {(int(s), int(w)) for s, w in doc.get("sent", [])}
        self.last_tick = int(doc.get("tick", 0))
        log.info("restored snapshot generation %d (schema %d, epoch %d, tick %d)",
                 snap.generation, snap.schema_version, snap.epoch, self.last_tick)

    def commit(self) -> None:
        now = self.clock.now()
        # keep only keys of windows that can still matter (the last day)
        self.sent = {(s, w) for s, w in self.sent if w > now - 86_400}
        try:
            doc = {"strategy": self.strategy.instance.get_state(), "sent": sorted(self.sent),
                   "tick": self.last_tick, "epoch": self.epoch}
            data = orjson.dumps(doc)
        except Exception as e:      # get_state() raised or returned something not JSON-able
            raise StrategyError(f"get_state() could not be snapshotted: {e!r}") from e
        try:
            self.snapshot.write(data, schema_version=self.strategy.schema_version,
                                epoch=self.epoch)
        except ValueError as e:     # the state outgrew the snapshot region
            raise StrategyError(str(e)) from e

    # -- the cycle ------------------------------------------------------------------------

    def cycle(self, tick: int) -> int:
        """Evaluate every slot once; returns the number of intents sent."""
        active = self.control.active_epoch == self.epoch
        self.fsm.to(StrategyState.ACTIVE if active else StrategyState.STANDBY)
        sent = 0
        for view in self.views.slot_views(tick, self.clock.now()):
            try:
                decision = self.strategy.instance.evaluate(view)
            except Exception as e:      # one bad slot never stops the others
                self.errors += 1
                log.warning("strategy error on %s: %r", view.label, e)
                continue
            if not isinstance(decision, Decision) or not active:
                continue
            key = (view.slot, view.window_start)
            if key in self.sent:
                continue
            outcome = Outcome.UP if decision.outcome == "Up" else Outcome.DOWN
            self.intents.submit(view.slot, view.window_start, view.slug, int(outcome),
                                self.stake, decision.max_price, decision.reason)
            self.sent.add(key)
            sent += 1
            log.info("intent %s %s max %.2f (%s)", view.slug, decision.outcome,
                     decision.max_price, decision.reason)
        self.last_tick = tick
        if active:
            self.commit()
            self.control.set_epoch_tick(self.epoch, tick)
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        """Tick loop until ``stop``; then drain (finish, final snapshot) and return."""
        self.restore()
        self.fsm.to(StrategyState.STANDBY)
        while not stop.is_set():
            self.control.heartbeat(self.slot, self.clock.monotonic_ns())
            if not await self.ticks.wait(timeout=0.25):
                continue
            batch = self.ticks.poll()
            if len(batch) and not stop.is_set():
                self.cycle(int(batch.records["tick"][-1]))
        self.fsm.to(StrategyState.DRAINING, "stop requested")
        if self.control.active_epoch == self.epoch:
            self.commit()
        self.fsm.to(StrategyState.STOPPED)

    def close(self) -> None:
        for res in (self.intents, self.snapshot, self.views, self.ticks):
            res.close()
        self.control.clear(self.slot)
        self.control.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m strategy_worker")
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--strategy", type=Path, default=DEFAULT_STRATEGY)
    ap.add_argument("--params", default="{}", help="JSON object passed to Strategy(params)")
    ap.add_argument("--epoch", type=int, required=True)
    ap.add_argument("--lane", type=int, choices=(0, 1), default=0)
    ap.add_argument("--stake", type=float, default=5.0)
    ap.add_argument("--mode", choices=("sim", "paper", "live"), default="sim")
    return ap.parse_args(argv)


async def _amain(args: argparse.Namespace) -> int:
    paths, _ = RunPaths.load(args.run_dir)
    clock = (Clock.from_dict(load_json(str(paths.sim_json))["clock"]) if args.mode == "sim"
             else Clock.real())
    try:
        strategy = load_strategy(args.strategy, orjson.loads(args.params))
    except StrategyError as e:
        log.error("strategy rejected: %s", e)
        return EXIT_STRATEGY_ERROR
    stop = asyncio.Event()
    install_stop_signals(stop)
    worker = StrategyWorker(paths, clock, strategy, epoch=args.epoch, lane=args.lane,
                            stake=args.stake)
    try:
        await worker.run(stop)
    except StrategyError as e:
        log.error("strategy failed: %s", e)
        worker.fsm.to(StrategyState.FAILED, str(e))
        return EXIT_STRATEGY_ERROR
    finally:
        worker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = _parse(argv)
    log.info("strategy worker pid %d: %s epoch %d lane %d", os.getpid(), args.strategy.name,
             args.epoch, args.lane)
    return run_async(lambda: _amain(args))
