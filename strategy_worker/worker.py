"""The strategy worker: one incarnation (epoch, lane, strategy file) of the replaceable process.

It verifies itself, then waits as a standby until the supervisor hands it the state and flips
the active epoch to its own. While ACTIVE it evaluates every scanner tick once, in order (a
tick read late is evaluated on that tick's own markets; only the newest tick of a batch may
trade), sends intents on its lane stamped with its epoch, and commits its state to the
snapshot region after every cycle. The supervisor talks to it through its lane mailbox in the
control block (state/control.py) and wakes it with SIGUSR1; it answers there and wakes the
supervisor the same way (``notify_pid``). The lifecycle is in strategy_worker/lifecycle.py.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import gc
import logging
import os
import signal
import statistics
import time
from pathlib import Path

import numpy as np
import orjson

from core.clock import ClockLike, first_of
from core.errors import NoblinkError, SnapshotEmptyError, StrategyError
from core.fsm import InvalidTransition, StateMachine
from state.control import ControlBlock, WorkerSlot
from state.intents import IntentWriter
from state.layout import (
    DECISION_HISTORY,
    EVAL_BUCKETS_MS,
    MAX_SLOTS,
    TICK_DT,
    Decided,
    LaneAck,
    LaneCommand,
    Outcome,
    WorkerRole,
)
from state.ring import RingReader
from state.run import TICK_RING_CAPACITY, RunPaths
from state.snapshot import Snapshot, SnapshotRegion
from strategy_worker.api import Decision, SlotView
from strategy_worker.lifecycle import TRANSITIONS, StrategyState
from strategy_worker.loader import LoadedStrategy
from strategy_worker.report import Report
from strategy_worker.views import StateViews

log = logging.getLogger("strategy_worker")

_S = StrategyState
# Ticks kept between polls and evaluations: as many as the ring holds, so a worker that fell
# behind (or a drained one that is resumed) evaluates every tick still there.
PENDING_TICKS = TICK_RING_CAPACITY
LATENCY_WINDOW = 256
_NOTIFY_STATES = frozenset({_S.READY, _S.FAILED, _S.RETIRED})


class StrategyWorker:
    """One strategy incarnation. ``run()`` is the whole life; the methods below it are steps."""

    def __init__(self, paths: RunPaths, clock: ClockLike, strategy: LoadedStrategy, *,
                 epoch: int, lane: int, stake: float, sha256: str = "",
                 notify_pid: int = 0, auto_handoff: bool = False) -> None:
        self.paths, self.clock, self.strategy = paths, clock, strategy
        self.epoch, self.lane, self.stake = epoch, lane, stake
        self.notify_pid = notify_pid
        self.auto_handoff = auto_handoff
        self.slot = WorkerSlot.strategy(lane)
        self.report = Report(paths.run_dir, epoch, lane=lane, pid=os.getpid(),
                             strategy=str(strategy.path), sha256=sha256,
                             schema_version=strategy.schema_version)
        self.control = ControlBlock.attach(paths.seg("control"))
        self.fsm = StateMachine(f"strategy e{epoch}", _S.STARTING, TRANSITIONS,
                                on_change=self._published)
        self.control.register(self.slot, WorkerRole.STRATEGY, state=_S.STARTING, lane=lane,
                              epoch=epoch, label=strategy.path.stem,
                              now_ns=clock.monotonic_ns())
        self.handled_seq = self.control.lane_command(lane)[0]   # older commands are not ours
        self.ticks = RingReader(paths.seg("ticks"), TICK_DT, name=f"strategy{lane}",
                                start="oldest")
        self.views = StateViews(paths)
        self.snapshot = SnapshotRegion.attach(paths.seg("snapshot"))
        self.intents = IntentWriter(paths, lane, epoch)
        self.instance = strategy.instance
        self.pending: collections.deque[np.void] = collections.deque(maxlen=PENDING_TICKS)
        self.sent: set[tuple[int, int]] = set()      # (slot, window_start) already proposed
        self.last_tick = 0
        self.evaluated = 0
        self.errors = 0
        self.skipped = 0
        self.trading = False
        self.latencies: collections.deque[int] = collections.deque(maxlen=LATENCY_WINDOW)
        self.first_lat_ns = -1
        self.active_tick = 0
        self.shadow: dict | None = None
        self.follow: dict | None = None              # a TAKEOVER waiting for a drain
        self.wake = asyncio.Event()

    @property
    def state(self) -> StrategyState:
        return self.fsm.state

    def _published(self, _old: StrategyState, new: StrategyState) -> None:
        self.control.heartbeat(self.slot, self.clock.monotonic_ns(), int(new))
        if new in _NOTIFY_STATES:      # the others are followed by an acknowledgement,
            self._notify()             # which wakes the supervisor once, when it matters

    def _notify(self) -> None:
        """Wake the supervisor (SIGUSR1): a reload's critical phases must not wait for its
        next loop turn."""
        if self.notify_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.notify_pid, signal.SIGUSR1)

    # -- the whole life ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Verify, wait for the handoff, trade until retired or stopped; then leave cleanly.

        Raises StrategyError (the strategy's fault) or another NoblinkError; the caller maps
        them to exit codes after marking the worker FAILED.
        """
        self.fsm.to(_S.VERIFYING)
        self.verify()
        # Everything loaded so far (modules, the strategy, numpy) lives as long as we do:
        # collect once now and move it out of the collector's way, so that a collection of
        # that whole graph does not land on the first ticks after the flip.
        gc.collect()
        gc.freeze()
        self.fsm.to(_S.READY, f"verified in {self.report.doc['verify_ms']:.1f} ms")
        self.report.update(state="READY")
        if self.auto_handoff:          # a worker run alone (tests, tools): take the newest
            self.handoff(**self._newest_args())
        while not stop.is_set() and self.state != _S.RETIRED:
            self.turn()
            if self.state != _S.RETIRED:
                await self._wait(stop, 0.25)
        if self.state == _S.ACTIVE:    # SIGTERM while trading: a final snapshot, then leave
            self.fsm.to(_S.DRAINING, "stop requested")
            self.commit()
            self.fsm.to(_S.DRAINED)
        if self.state != _S.RETIRED:
            self.fsm.to(_S.RETIRED, "stop requested")

    def turn(self) -> None:
        """One turn of the loop, between two waits: read ticks, answer the supervisor, and
        evaluate what the state calls for. Never blocks (the tests drive it directly)."""
        self.control.heartbeat(self.slot, self.clock.monotonic_ns())
        self._poll_ticks()
        self._handle_command()
        self._follow_drain()
        if self.state == _S.HANDED and self.control.active_epoch == self.epoch:
            self._activate()
        if self.state == _S.ACTIVE:
            self._evaluate_pending()
        elif self.state == _S.SHADOW:
            self._shadow_step()

    async def _wait(self, stop: asyncio.Event, timeout: float) -> None:
        """Until a tick, a supervisor wake-up (SIGUSR1) or a stop, or ``timeout``."""
        if self.wake.is_set():
            self.wake.clear()
            return
        await first_of(self.ticks.wait(timeout), self.wake.wait(), stop.wait(),
                       timeout=timeout)
        self.wake.clear()

    # -- verification (standby) -------------------------------------------------------------

    def verify(self) -> None:
        """Restore + migrate the live snapshot into the loaded instance, evaluate every listed
        slot on the current tick (no intents; any exception fails), round-trip get_state()
        through orjson within the snapshot's capacity, and run self_test() if defined."""
        t0 = time.perf_counter()
        snap = self._newest_snapshot()
        if snap is not None:
            self._restore_into(self.instance, snap)
        t1 = time.perf_counter()
        self._poll_ticks()
        n = 0
        if self.pending:                 # the current tick, through the cycle's own code path
            rec = self.pending[-1]
            codes, _ = self.evaluate_tick(self.instance, rec, strict=True)
            n = int(np.count_nonzero(codes))
        t2 = time.perf_counter()
        data = self._encode(self.instance)
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as e:     # pragma: no cover - orjson round-trips
            raise StrategyError(f"get_state() does not round-trip: {e}") from e
        test = getattr(self.instance, "self_test", None)
        if callable(test):
            try:
                ok = test()
            except Exception as e:
                raise StrategyError(f"self_test() raised: {e!r}") from e
            if ok is False:
                raise StrategyError("self_test() returned False")
        t3 = time.perf_counter()
        self.report.doc.update(
            verify_ms=(t3 - t0) * 1000, restore_ms=(t1 - t0) * 1000,
            dry_eval_ms=(t2 - t1) * 1000, dry_evaluations=n,
            snapshot_generation=snap.generation if snap else 0, state_bytes=len(data))
        log.info("verified: restored generation %s, %d slots evaluated dry, state %d B, "
                 "%.1f ms", snap.generation if snap else "-", n, len(data), (t3 - t0) * 1000)

    def _newest_snapshot(self) -> Snapshot | None:
        """The newest generation, None when none was ever written. An unreadable one raises
        SnapshotCorruptError: starting empty would erase the history at the next commit."""
        try:
            return self.snapshot.read()
        except SnapshotEmptyError:
            return None

    def _decode(self, snap: Snapshot) -> dict:
        try:
            doc = orjson.loads(snap.data)
        except orjson.JSONDecodeError as e:
            raise StrategyError(f"snapshot generation {snap.generation} is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise StrategyError(f"snapshot generation {snap.generation} is not an object")
        return doc

    def _restore_into(self, instance: object, snap: Snapshot) -> dict:
        doc = self._decode(snap)
        state = self.strategy.migrate(snap.schema_version, doc.get("strategy", {}))
        try:
            instance.set_state(state)            # type: ignore[attr-defined]
        except Exception as e:
            raise StrategyError(f"set_state() failed: {e!r}") from e
        return doc

    def _encode(self, instance: object) -> bytes:
        try:
            doc = {"strategy": instance.get_state(),          # type: ignore[attr-defined]
                   "sent": sorted(self.sent), "tick": self.last_tick, "epoch": self.epoch}
            data = orjson.dumps(doc)
        except Exception as e:      # get_state() raised or returned something not JSON-able
            raise StrategyError(f"get_state() could not be snapshotted: {e!r}") from e
        if len(data) > self.snapshot.capacity:
            raise StrategyError(f"state of {len(data)} B exceeds the snapshot region's "
                                f"{self.snapshot.capacity} B")
        return data

    # -- commands from the supervisor -------------------------------------------------------

    def _handle_command(self) -> None:
        seq, cmd, args = self.control.lane_command(self.lane)
        if seq <= self.handled_seq:
            return
        self.handled_seq = seq
        steps = {LaneCommand.DRAIN: self.drain, LaneCommand.RESUME: self.resume,
                 LaneCommand.HANDOFF: self.handoff, LaneCommand.RETIRE: self.retire,
                 LaneCommand.SHADOW: self.start_shadow, LaneCommand.TAKEOVER: self.takeover}
        self.follow = None                       # a newer command replaces a takeover
        step = steps.get(cmd)
        try:
            if step is None:
                raise StrategyError(f"unknown lane command {cmd!r}")
            report = step(**args)
        except (NoblinkError, InvalidTransition) as e:
            log.error("%s failed: %s", cmd.name, e)
            self.report.failed(e, cmd.name.lower())
            self.control.ack_lane(self.lane, seq, False, tick=self.last_tick)
            self._notify()
            return
        if report is not None:        # a shadow run or a takeover acknowledges when it ends
            self.control.ack_lane(self.lane, seq, True, **report)
            if cmd == LaneCommand.DRAIN and args["n"]:
                # the standby is next on the hand-over's critical path: wake it first
                with contextlib.suppress(ProcessLookupError):
                    os.kill(args["n"], signal.SIGUSR1)
            self._notify()

    def handoff(self, gen: int, tick: int, epoch: int, **_: int) -> dict:
        """Restore exactly generation ``gen`` (written by ``epoch`` at ``tick``) into a fresh
        instance; from now on only ticks after ``tick`` are evaluated (once we are active)."""
        instance = self.strategy.new_instance()
        self.sent = set()
        if gen:
            snap = self.snapshot.read_generation(gen)
            doc = self._restore_into(instance, snap)
            if int(doc.get("tick", -1)) != tick or snap.epoch != epoch:
                raise StrategyError(f"generation {gen} is tick {doc.get('tick')} of epoch "
                                    f"{snap.epoch}, expected tick {tick} of epoch {epoch}")
            self.sent = {(int(s), int(w)) for s, w in doc.get("sent", [])}
        self.instance = instance
        self.last_tick = tick
        while self.pending and int(self.pending[0]["tick"]) <= tick:
            self.pending.popleft()
        self.fsm.to(_S.HANDED, f"generation {gen}, tick {tick} of epoch {epoch}")
        return {"gen": gen, "tick": tick}

    def takeover(self, gen: int, n: int, epoch: int, **_: int) -> None:
        """Follow lane ``n``'s drain (its acknowledgement of command ``gen``) and restore
        the generation it reports as soon as it does (see _follow_drain)."""
        if self.state != _S.READY:
            raise StrategyError(f"takeover in state {self.state.name}")
        self.follow = {"seq": self.handled_seq, "lane": n, "drain_seq": gen, "epoch": epoch}
        self._follow_drain()
        return None

    def _follow_drain(self) -> None:
        f = self.follow
        if f is None:
            return
        seq, ack = self.control.lane_ack(f["lane"])
        if seq < f["drain_seq"]:
            return
        self.follow = None
        try:
            if ack != LaneAck.OK:
                raise StrategyError(f"lane {f['lane']} did not drain")
            rec = self.control.lane(f["lane"])
            report = self.handoff(gen=int(rec["gen"]), tick=int(rec["tick"]),
                                  epoch=f["epoch"])
        except (NoblinkError, InvalidTransition) as e:
            log.error("takeover failed: %s", e)
            self.report.failed(e, "takeover")
            self.control.ack_lane(self.lane, f["seq"], False, tick=self.last_tick)
        else:
            self.control.ack_lane(self.lane, f["seq"], True, **report)
        self._notify()

    def _newest_args(self) -> dict:
        snap = self._newest_snapshot()
        if snap is None:
            return {"gen": 0, "tick": 0, "epoch": 0}
        return {"gen": snap.generation, "tick": int(self._decode(snap).get("tick", 0)),
                "epoch": snap.epoch}

    def _activate(self) -> None:
        self.trading = True
        self.active_tick = 0                     # set to the first tick evaluated
        self.first_lat_ns = -1
        self.fsm.to(_S.ACTIVE, f"active epoch is {self.epoch}; next tick {self.last_tick + 1}")

    def drain(self, **_: int) -> dict:
        """At this cycle boundary: commit a final snapshot, stop trading and committing, and
        report (generation, last tick, intent lane head)."""
        self.fsm.to(_S.DRAINING)
        try:
            gen = self.commit()
        except Exception:
            # nothing was handed over: keep trading as before (the supervisor rolls back)
            self.fsm.to(_S.ACTIVE, "the drain's commit failed")
            raise
        self.trading = False
        head = self.intents.head()
        self.fsm.to(_S.DRAINED, f"generation {gen}, tick {self.last_tick}, head {head}")
        return {"gen": gen, "tick": self.last_tick, "head": head}

    def resume(self, **_: int) -> dict:
        """Back to trading after a drain (the reload was rolled back). Ticks that arrived
        meanwhile are evaluated now, in order."""
        self.trading = True
        self.fsm.to(_S.ACTIVE, "resumed")
        self._evaluate_pending()
        return {"tick": self.last_tick}

    def retire(self, **_: int) -> dict:
        self.trading = False
        self.fsm.to(_S.RETIRED, "retired by the supervisor")
        return {"tick": self.last_tick}

    # -- ticks ------------------------------------------------------------------------------

    def _poll_ticks(self) -> None:
        batch = self.ticks.poll()
        if batch.lost:       # counted as skipped by the gap check when it matters (active)
            log.error("tick ring lapped: %d ticks lost", batch.lost)
        for rec in batch.records:
            self.pending.append(rec.copy())

    def _evaluate_pending(self) -> None:
        """Evaluate every pending tick after the last one, in order; only the newest may
        trade (an older one's prices are gone)."""
        todo = [r for r in self.pending if int(r["tick"]) > self.last_tick]
        self.pending.clear()
        for i, rec in enumerate(todo):
            t = int(rec["tick"])
            if self.last_tick and t > self.last_tick + 1:
                self.skipped += t - self.last_tick - 1
                log.error("ticks %d..%d were never seen: skipped", self.last_tick + 1, t - 1)
            self.cycle(rec, trade=i == len(todo) - 1)

    def evaluate_tick(self, instance: object, rec: np.void, *, strict: bool = False,
                      count: bool = True) -> tuple[np.ndarray, list[tuple[SlotView, Decision]]]:
        """Evaluate every listed slot of tick ``rec`` with ``instance``: the decision code of
        each slot and the decisions taken. ``strict`` (verification) turns the first
        exception or a return value that is not a Decision or None into a StrategyError;
        otherwise one bad slot never stops the others (counted when ``count``)."""
        codes = np.zeros(MAX_SLOTS, dtype=np.uint8)
        decided: list[tuple[SlotView, Decision]] = []
        logged = False
        for view in self.views.slot_views(rec, int(rec["tick_time_ms"]) / 1000):
            try:
                d = instance.evaluate(view)                 # type: ignore[attr-defined]
                if d is not None and not isinstance(d, Decision):
                    raise TypeError(f"evaluate() returned {type(d).__name__}, not a Decision "
                                    "or None")
                bad = d.problem() if d is not None else ""
                if bad:
                    raise ValueError(f"evaluate() returned a bad Decision: {bad}")
            except StrategyError:
                raise
            except Exception as e:
                if strict:
                    raise StrategyError(f"evaluate() raised on {view.label} at tick "
                                        f"{view.tick}: {e!r}") from e
                codes[view.slot] = Decided.ERROR
                if count:
                    self.errors += 1
                    if not logged:
                        log.warning("strategy error on %s at tick %d: %r", view.label,
                                    view.tick, e)
                        logged = True
                continue
            if not isinstance(d, Decision):
                codes[view.slot] = Decided.NONE
                continue
            codes[view.slot] = Decided.UP if d.outcome == "Up" else Decided.DOWN
            decided.append((view, d))
        return codes, decided

    def cycle(self, rec: np.void, *, trade: bool) -> int:
        """Evaluate every slot of tick ``rec`` once, send the new decisions (only when
        ``trade``), commit; returns the number of intents sent."""
        tick = int(rec["tick"])
        trade = trade and self.trading and self.control.active_epoch == self.epoch
        t0 = time.perf_counter_ns()
        codes, decided = self.evaluate_tick(self.instance, rec)
        self._observe_eval(time.perf_counter_ns() - t0)
        batch: list[dict] = []
        for view, decision in decided if trade else ():
            key = (view.slot, view.window_start)
            if key in self.sent:
                continue
            outcome = Outcome.UP if decision.outcome == "Up" else Outcome.DOWN
            batch.append({"slot": view.slot, "window_start": view.window_start,
                          "slug": view.slug, "outcome": int(outcome), "stake": self.stake,
                          "max_price": decision.max_price, "reason": decision.reason})
        if batch:
            # the whole tick at once, before any logging: the position worker wakes once
            # and journals the batch in one commit
            self.intents.submit_many(batch)
            for it in batch:
                self.sent.add((it["slot"], it["window_start"]))
                log.info("intent %s %s max %.2f (%s)", it["slug"], Outcome(it["outcome"]).name,
                         it["max_price"], it["reason"])
        sent = len(batch)
        self.last_tick = tick
        self.evaluated += 1
        self.commit()
        self.control.set_epoch_tick(self.epoch, tick)
        self._publish_cycle(tick, codes, rec, fresh=trade)
        return sent

    def _observe_eval(self, ns: int) -> None:
        """One sample of the 16-slot evaluation time into the lane's histogram (cumulated
        by the reader: status.json, /metrics)."""
        lane = self.control.lanes[self.lane]
        lane["eval_buckets"][bisect.bisect_left(EVAL_BUCKETS_MS, ns / 1e6)] += 1
        lane["eval_sum_ns"] += ns

    def _publish_cycle(self, tick: int, codes: np.ndarray, rec: np.void, *, fresh: bool) -> None:
        if fresh:
            lat = time.monotonic_ns() - int(rec["mono_ns"])
            self.latencies.append(lat)
            if self.first_lat_ns < 0:
                self.first_lat_ns = lat
        if not self.active_tick:
            self.active_tick = tick
        lane = self.control.lanes[self.lane]
        i = self.evaluated % DECISION_HISTORY
        lane["dec_ticks"][i] = 0                 # invalidate, write the codes, then the tick
        lane["decisions"][i] = codes
        lane["dec_ticks"][i] = tick
        lane["tick"] = tick
        lane["evaluated"] = self.evaluated
        lane["eval_errors"] = self.errors
        lane["skipped"] = self.skipped
        lane["first_lat_ns"] = self.first_lat_ns
        lane["active_tick"] = self.active_tick
        if self.latencies:              # <= 256 samples: cheap enough for every tick
            lane["lat_p50_ns"] = int(statistics.median(self.latencies))

    def commit(self) -> int:
        """Write the state as the next snapshot generation (only an active or draining
        worker does: a standby's or a drained worker's state is not the bot's)."""
        now = self.clock.now()
        self.sent = {(s, w) for s, w in self.sent if w > now - 86_400}
        data = self._encode(self.instance)
        return self.snapshot.write(data, schema_version=self.strategy.schema_version,
                                   epoch=self.epoch)

    # -- shadow -----------------------------------------------------------------------------

    def start_shadow(self, n: int, **_: int) -> None:
        """Evaluate the next ``n`` live ticks with a copy of the live state, beside the active
        worker, and compare decisions; acknowledged when done (see _shadow_step)."""
        instance = self.strategy.new_instance()
        snap = self._newest_snapshot()
        if snap is not None:
            self._restore_into(instance, snap)
        start = max(self.control.tick()[0], self.last_tick)
        self.shadow = {"instance": instance, "n": n, "after": start, "mine": {}, "done": set(),
                       "diffs": [], "compared": 0, "uncompared": 0, "seq": self.handled_seq}
        self.fsm.to(_S.SHADOW, f"{n} ticks after tick {start}")
        return None

    def _shadow_step(self) -> None:
        """Evaluate the pending ticks not seen yet. ``pending`` is left as it is: a hand-over
        after the shadow run needs every tick after the drained worker's last one."""
        sh = self.shadow
        assert sh is not None
        for rec in self.pending:
            t = int(rec["tick"])
            if t <= sh["after"] or t in sh["done"] or len(sh["done"]) >= sh["n"]:
                continue
            sh["done"].add(t)
            codes, _ = self.evaluate_tick(sh["instance"], rec, count=False)
            sh["mine"][t] = codes
        self._shadow_compare()

    def _shadow_compare(self) -> None:
        sh = self.shadow
        assert sh is not None
        active = next((lane for lane in range(2) if lane != self.lane), 0)
        rec = self.control.lane(active)
        theirs = {int(t): rec["decisions"][i] for i, t in enumerate(rec["dec_ticks"]) if t}
        newest = max(theirs, default=0)
        for t in sorted(sh["mine"]):
            if t in theirs:
                mine = sh["mine"].pop(t)
                sh["compared"] += 1
                for slot in np.flatnonzero(mine != theirs[t]):
                    sh["diffs"].append({"tick": t, "slot": int(slot),
                                        "old": Decided(int(theirs[t][slot])).name,
                                        "new": Decided(int(mine[slot])).name})
            elif newest > t + DECISION_HISTORY:      # gone from the active's history
                sh["mine"].pop(t)
                sh["uncompared"] += 1
        if sh["compared"] + sh["uncompared"] >= sh["n"]:
            self.report.update(shadow={k: sh[k] for k in ("n", "after", "compared",
                                                          "uncompared", "diffs")})
            self.fsm.to(_S.READY, f"shadow: {len(sh['diffs'])} decisions differ")
            self.control.ack_lane(self.lane, sh["seq"], True, shadow_diffs=len(sh["diffs"]))
            self.shadow = None
            self._notify()

    # -- teardown ---------------------------------------------------------------------------

    def close(self) -> None:
        for res in (self.intents, self.snapshot, self.views, self.ticks):
            res.close()
        self.control.clear(self.slot, pid=os.getpid())
        self.control.close()


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


__all__ = ["StrategyWorker", "sha256_of"]
