"""One hot reload of the strategy: its lifecycle, its deadlines, its record.

The arbiter's loop calls :meth:`Reload.step` on every turn (and on every wake-up a worker
sends), and the reload moves along its transition table::

    PENDING -> SPAWN -> [SHADOW] -> DRAIN -> HANDOFF -> FLIP -> RETIRE -> DONE
       |         |         |          |         |
       +---------+---------+----------+---------+--> ROLLBACK -> ROLLED_BACK

- SPAWN: the standby (epoch e+1, the other lane) loads and verifies itself; READY or fail.
- SHADOW (``--shadow N``): the standby evaluates N live ticks beside the active worker; the
  decisions that differ go into the record. ``--dry-run`` stops here (rolled back on purpose).
- DRAIN: the active worker finishes its cycle, commits generation G and reports (G, last
  tick T, its lane's head H). Its lane is fenced at H at once: nothing it sends later trades.
- HANDOFF: once the position worker has decided every intent of that lane below H, the
  standby restores exactly G and discards ticks <= T.
- FLIP: ``active_epoch = e+1``; the standby wakes and evaluates T+1.
- RETIRE: the old worker exits 0 (it is not restarted); the record is completed once the new
  worker evaluated its first tick.
- ROLLBACK: from any phase before the flip: the standby is retired (or killed), and a drained
  old worker resumes trading (its fence is lifted). A bad deploy never stops the running
  strategy.

A reload with no active worker (the first start, or after a crash) has no DRAIN: the
standby is handed the newest snapshot. The orchestration's I/O (spawning, signalling,
reading the control block) goes through :class:`Lanes` (supervisor/lanes.py); this module
only decides.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.fsm import StateMachine
from state.layout import LaneAck, LaneCommand
from strategy_worker.lifecycle import StrategyState

if TYPE_CHECKING:
    from supervisor.lanes import Deployment, Lanes

log = logging.getLogger("supervisor.reload")


class ReloadPhase(enum.IntEnum):
    PENDING = 0
    SPAWN = 1
    SHADOW = 2
    DRAIN = 3
    HANDOFF = 4
    FLIP = 5
    RETIRE = 6
    DONE = 7
    ROLLBACK = 8
    ROLLED_BACK = 9


_P = ReloadPhase
RELOAD_TRANSITIONS: dict[ReloadPhase, frozenset[ReloadPhase]] = {
    _P.PENDING: frozenset({_P.SPAWN, _P.ROLLBACK}),
    _P.SPAWN: frozenset({_P.SHADOW, _P.DRAIN, _P.HANDOFF, _P.ROLLBACK}),
    _P.SHADOW: frozenset({_P.DRAIN, _P.HANDOFF, _P.ROLLBACK}),
    _P.DRAIN: frozenset({_P.HANDOFF, _P.ROLLBACK}),
    _P.HANDOFF: frozenset({_P.FLIP, _P.ROLLBACK}),
    _P.FLIP: frozenset({_P.RETIRE}),
    _P.RETIRE: frozenset({_P.DONE}),
    _P.DONE: frozenset(),
    _P.ROLLBACK: frozenset({_P.ROLLED_BACK}),
    _P.ROLLED_BACK: frozenset(),
}
# Phases in which the loop polls fast: a worker's answer is due within milliseconds.
CRITICAL = frozenset({_P.DRAIN, _P.HANDOFF, _P.FLIP})


@dataclass
class ReloadTimeouts:
    verify_s: float = 30.0       # spawn -> READY: covers a hanging import or __init__
    drain_s: float = 10.0        # drain request -> DRAINED
    decide_s: float = 10.0       # DRAINED -> position worker decided the lane up to H
    handoff_s: float = 10.0      # handoff request -> HANDED
    retire_s: float = 10.0       # RETIRE -> old worker gone (then it is killed)
    first_tick_s: float = 30.0   # flip -> first tick evaluated (the record waits for it)
    shadow_tick_s: float = 15.0  # per shadow tick, on top of verify


@dataclass
class ReloadRequest:
    trigger: str                        # "command", "sighup", "start", "crash", "probation"
    deployment: Deployment
    command_id: str | None = None
    shadow: int = 0
    dry_run: bool = False
    verify_timeout_s: float | None = None   # overrides ReloadTimeouts.verify_s
    received_mono: float = field(default_factory=time.monotonic)


class Reload:
    """One attempt to make ``request.deployment`` the active strategy."""

    def __init__(self, request: ReloadRequest, lanes: Lanes, timeouts: ReloadTimeouts,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.req = request
        self.lanes = lanes
        self.to = timeouts
        self._now = now
        self.id = secrets.token_hex(4)
        self.fsm = StateMachine(f"reload {self.id}", _P.PENDING, RELOAD_TRANSITIONS,
                                on_change=self._phase_changed)
        self.old = lanes.active_lane()            # None: nothing to drain
        self.new: int | None = None
        self.from_epoch = lanes.active_epoch()
        self.to_epoch = 0
        self.result: str | None = None
        self.error: str | None = None
        self.phase_ms: dict[str, float] = {}
        self._phase_t0 = now()
        self._deadline = 0.0
        self._seq = 0                             # the lane command we wait on
        self.drained: dict[str, int] | None = None
        self.handed: dict[str, int] | None = None
        self.shadow_report: dict | None = None
        self.flip_mono = 0.0
        self.drain_req_mono = 0.0
        self.old_lat_p50_ns = 0
        self._takeover_seq = 0
        self._retire_sent = False

    @property
    def _verify_s(self) -> float:
        return self.req.verify_timeout_s or self.to.verify_s

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def phase(self) -> ReloadPhase:
        return self.fsm.state

    @property
    def finished(self) -> bool:
        return self.phase in (_P.DONE, _P.ROLLED_BACK)

    @property
    def critical(self) -> bool:
        return self.phase in CRITICAL

    def _phase_changed(self, old: ReloadPhase, _new: ReloadPhase) -> None:
        t = self._now()
        if old == _P.SPAWN:                 # split into spawn (load) and verify below
            self.phase_ms.setdefault("spawn", (t - self._phase_t0) * 1000)
            self.phase_ms["verify"] = (t - self._phase_t0) * 1000 - self.phase_ms["spawn"]
        elif old != _P.PENDING:
            key = old.name.lower()
            self.phase_ms[key] = self.phase_ms.get(key, 0.0) + (t - self._phase_t0) * 1000
        self._phase_t0 = t

    def _go(self, phase: ReloadPhase, why: str = "", deadline_s: float = 0.0) -> None:
        self.fsm.to(phase, why)
        self._deadline = self._now() + deadline_s if deadline_s else 0.0

    def _late(self) -> bool:
        return bool(self._deadline) and self._now() > self._deadline

    def fail(self, why: str) -> None:
        """Roll back from any phase before the flip."""
        if self.finished or self.phase in (_P.FLIP, _P.RETIRE, _P.ROLLBACK):
            return
        log.error("reload %s failed in %s: %s", self.id, self.phase.name, why)
        self.error = why
        self.result = "rolled_back"
        self._go(_P.ROLLBACK, why)

    # -- the step the loop calls -------------------------------------------------------------

    def step(self) -> None:
        """Advance as far as the workers' answers allow; never blocks."""
        for _ in range(8):                # a few phases may complete in one turn
            before = self.phase
            getattr(self, f"_step_{self.phase.name.lower()}")()
            if self.phase == before or self.finished:
                return

    def _step_pending(self) -> None:
        self.new, self.to_epoch = self.lanes.spawn_standby(self.req.deployment, self)
        self._go(_P.SPAWN, f"epoch {self.to_epoch} on lane {self.new}", self._verify_s)

    def _step_spawn(self) -> None:
        assert self.new is not None
        st = self.lanes.worker_state(self.new)
        if st is not None and st >= StrategyState.VERIFYING and "spawn" not in self.phase_ms:
            self.phase_ms["spawn"] = (self._now() - self._phase_t0) * 1000   # loaded
        if st in (StrategyState.READY, StrategyState.HANDED):
            if self.req.shadow:
                self._seq = self.lanes.send(self.new, LaneCommand.SHADOW, n=self.req.shadow)
                self._go(_P.SHADOW, f"{self.req.shadow} ticks",
                         self.to.shadow_tick_s * self.req.shadow + self._verify_s)
            else:
                self._begin_drain()
            return
        why = self.lanes.standby_failure(self.new)
        if why:
            self.fail(f"verification failed: {why}")
        elif self._late():
            self.fail(f"the standby was not READY within {self._verify_s:.0f}s (state "
                      f"{st.name if st else 'not registered'}): a hang in import, "
                      "__init__ or the dry evaluation")

    def _step_shadow(self) -> None:
        assert self.new is not None
        if self.old is not None and not self.lanes.alive(self.old):
            # the active worker died: no decisions to compare any more, and nobody trades
            if self.req.dry_run:
                self.fail("the active worker died during the shadow run")
            else:
                self._begin_drain()           # hands the standby the newest snapshot
            return
        ack = self._ack(self.new)
        if ack == LaneAck.OK:
            self.shadow_report = self.lanes.report(self.to_epoch).get("shadow", {})
            if self.req.dry_run:
                self.result = "dry_run"
                self._go(_P.ROLLBACK, "dry run: reported, not promoted")
            else:
                self._begin_drain()
            return
        why = self.lanes.standby_failure(self.new) or (ack == LaneAck.ERROR and "shadow failed")
        if why:
            self.fail(f"shadow: {why}")
        elif self._late():
            self.fail("shadow run timed out")

    def _begin_drain(self) -> None:
        if self.old is None or not self.lanes.alive(self.old):
            self.old = None
            self._begin_handoff(**self.lanes.newest_snapshot())
            return
        assert self.new is not None
        self.drain_req_mono = self._now()
        # The standby follows the drain itself (TAKEOVER): the old worker wakes it along with
        # us, and it restores generation G as soon as G is reported, one hop sooner.
        self._seq = self.lanes.send(self.old, LaneCommand.DRAIN,
                                    n=self.lanes.pid(self.new))
        self._takeover_seq = self.lanes.send(self.new, LaneCommand.TAKEOVER, gen=self._seq,
                                             n=self.old, epoch=self.from_epoch)
        self._go(_P.DRAIN, f"lane {self.old}", self.to.drain_s)

    def _step_drain(self) -> None:
        assert self.old is not None
        ack = self._ack(self.old)
        if ack == LaneAck.OK:
            rec = self.lanes.lane_record(self.old)
            self.drained = {"gen": int(rec["gen"]), "tick": int(rec["tick"]),
                            "head": int(rec["head"])}
            self.old_lat_p50_ns = int(rec["lat_p50_ns"])
            self.lanes.fence(self.old, self.drained["head"])
            self.handed = {"gen": self.drained["gen"], "tick": self.drained["tick"],
                           "epoch": self.from_epoch}
            self._seq = self._takeover_seq
            self._go(_P.HANDOFF, f"generation {self.handed['gen']}, tick "
                     f"{self.handed['tick']}", self.to.decide_s + self.to.handoff_s)
        elif ack == LaneAck.ERROR:
            self.fail("the active worker could not drain: "
                      + self.lanes.report(self.from_epoch).get("error", "?"))
        elif not self.lanes.alive(self.old):
            # killed mid-drain: an unplanned reload; the verified standby takes the newest
            # snapshot (the old worker's last complete commit)
            log.warning("reload %s: the active worker died mid-drain; handing over the "
                        "newest snapshot", self.id)
            self.old = None
            self._begin_handoff(**self.lanes.newest_snapshot())
        elif self._late():
            self.fail(f"the active worker did not drain within {self.to.drain_s:.0f}s")
        else:
            self._standby_check()

    def _begin_handoff(self, *, gen: int, tick: int, epoch: int) -> None:
        """Hand a given generation over (no worker to drain, or it died mid-drain)."""
        self.handed = {"gen": gen, "tick": tick, "epoch": epoch}
        self._seq = self._send_handoff()
        self._go(_P.HANDOFF, f"generation {gen}, tick {tick}",
                 self.to.decide_s + self.to.handoff_s)

    def _send_handoff(self) -> int:
        assert self.new is not None and self.handed is not None
        return self.lanes.send(self.new, LaneCommand.HANDOFF, **self.handed)

    def _step_handoff(self) -> None:
        assert self.new is not None and self.handed is not None
        ack = self._ack(self.new)
        if ack == LaneAck.ERROR:
            self.fail("handoff: " + self.lanes.report(self.to_epoch).get("error", "?"))
            return
        if ack == LaneAck.OK:
            rec = self.lanes.lane_record(self.new)
            got = {"gen": int(rec["gen"]), "tick": int(rec["tick"])}
            if got != {"gen": self.handed["gen"], "tick": self.handed["tick"]}:
                self.fail(f"the standby restored {got}, not {self.handed}")
                return
            # every intent the old worker sent is decided while its epoch is still active:
            # none is refused as stale, and its `sent` keys are all in generation G
            decided = self.drained is None or self.lanes.decided(self.old or 0) >= \
                self.drained["head"]
            # and the standby still lives: a flip to a dead worker would leave nobody
            # trading with nothing to restart it
            if decided and self.lanes.alive(self.new):
                self._go(_P.FLIP)
                self._flip()
                return
        if self.lanes.standby_failure(self.new):
            self.fail(f"handoff: {self.lanes.standby_failure(self.new)}")
        elif self._late():
            self.fail("the hand-over did not complete in time (standby restore "
                      f"{'done' if ack == LaneAck.OK else 'pending'}, position worker "
                      f"decided {self.lanes.decided(self.old or 0)} of "
                      f"{self.drained['head'] if self.drained else '-'})")

    def _flip(self) -> None:
        assert self.new is not None
        self.lanes.flip(self.new, self.to_epoch)
        self.flip_mono = self._now()
        self._retire_sent = False
        self._go(_P.RETIRE, f"epoch {self.to_epoch} active")

    def _step_flip(self) -> None:       # pragma: no cover - _flip moves on at once
        self._flip()

    def _step_retire(self) -> None:
        assert self.new is not None
        rec = self.lanes.lane_record(self.new)
        evaluated = int(rec["active_tick"]) > 0
        waited = self._now() - self.flip_mono
        if not self._retire_sent and (evaluated or waited > self.to.first_tick_s
                                      or not self.lanes.alive(self.new)):
            # The old worker (drained, fenced, no longer the active epoch) exits only once
            # the new one evaluated its first tick: a process tearing down competes for the
            # CPU, and on two cores that shows in the first tick's latency.
            self._retire_sent = True
            if self.old is not None:
                self.lanes.send(self.old, LaneCommand.RETIRE)
            self._deadline = self._now() + self.to.retire_s
        if not self._retire_sent:
            return
        old_gone = self.old is None or not self.lanes.alive(self.old)
        if not old_gone and self._late():
            self.lanes.kill(self.old)
            return
        if old_gone and (evaluated or waited > self.to.first_tick_s
                         or not self.lanes.alive(self.new)):
            self.result = self.result or "ok"
            self._go(_P.DONE)

    def _step_rollback(self) -> None:
        if self.new is not None:
            self.lanes.discard_standby(self.new)
        if self.old is not None and self.lanes.alive(self.old) and self.drain_req_mono:
            # asked to drain (maybe still draining, maybe drained): trade again. A RESUME
            # that overtakes the DRAIN in the mailbox leaves the worker ACTIVE, as it was.
            self.lanes.fence(self.old, None)
            self.lanes.send(self.old, LaneCommand.RESUME)
        self.result = self.result or "rolled_back"
        self._go(_P.ROLLED_BACK, self.error or "")

    def _step_done(self) -> None:        # pragma: no cover - terminal
        pass

    def _step_rolled_back(self) -> None:  # pragma: no cover - terminal
        pass

    def _standby_check(self) -> None:
        assert self.new is not None
        why = self.lanes.standby_failure(self.new)
        if why:
            self.fail(f"the standby failed: {why}")

    def _ack(self, lane: int) -> LaneAck:
        seq, ack = self.lanes.ack(lane)
        return ack if seq >= self._seq > 0 else LaneAck.NONE

    # -- the record --------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """The reload's entry in status.json and reloads.jsonl."""
        d = self.req.deployment
        last_old = self.handed["tick"] if self.handed else None
        first_new = missed = dup = None
        first_extra = None
        if self.phase == _P.DONE and self.new is not None:
            rec = self.lanes.lane_record(self.new)
            if int(rec["active_tick"]):
                first_new = int(rec["active_tick"])
                if int(rec["first_lat_ns"]) >= 0 and self.old_lat_p50_ns > 0:
                    first_extra = round((int(rec["first_lat_ns"]) - self.old_lat_p50_ns)
                                        / 1e6, 3)
                if last_old is not None:
                    missed = max(0, first_new - last_old - 1)
                    dup = max(0, last_old + 1 - first_new)
        handoff_ms = None
        if self.flip_mono and self.drain_req_mono:
            handoff_ms = (self.flip_mono - self.drain_req_mono) * 1000
        command_ms = (self.flip_mono - self.req.received_mono) * 1000 if self.flip_mono else None
        return {
            "id": self.id, "trigger": self.req.trigger, "command_id": self.req.command_id,
            "result": self.result, "error": self.error, "phase": self.phase.name,
            "from_epoch": self.from_epoch, "to_epoch": self.to_epoch,
            "from_lane": self.old, "to_lane": self.new,
            "strategy": d.source, "sha256": d.sha256, "params": d.params,
            "phases_ms": {k: round(v, 3) for k, v in self.phase_ms.items()},
            "handoff_ms": None if handoff_ms is None else round(handoff_ms, 3),
            "command_to_active_ms": None if command_ms is None else round(command_ms, 3),
            "first_tick_extra_ms": first_extra,
            "last_tick_old": last_old, "first_tick_new": first_new,
            "missed_ticks": missed, "duplicate_ticks": dup,
            "drained": self.drained, "shadow": self.shadow_report,
        }
