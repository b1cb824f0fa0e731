"""The strategy side of the supervisor: two lanes, at most one active, reloads one at a time.

Each lane holds at most one strategy worker process (``strategy0``, ``strategy1``: a child,
a log file and a control-block slot each). A new worker starts on a lane only after the
previous occupant was reaped, and its mailbox and fence are reset first. Everything that
changes which worker trades goes through a :class:`~supervisor.reload.Reload`:

- an operator's reload (control.json, the CLI, SIGHUP);
- the first start (a reload from nothing: the newest snapshot is handed over);
- a crash of the active worker (an unplanned reload of the same deployment, with backoff and
  Erlang's restart intensity; exit codes 3 and 4 are not retried);
- probation: a freshly flipped strategy that raises on too many evaluations in its first
  ticks is replaced by the previous deployment (result ``reverted``).

Reloads are queued and run in order. Every finished reload is kept (the last 50 in memory
and status.json) and appended to ``reloads.jsonl``.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from core.errors import SnapshotCorruptError, SnapshotEmptyError
from core.proc import EXIT_BROKEN_CODE, NO_RESTART_EXITS
from state.control import ControlBlock, WorkerSlot
from state.layout import EVAL_BUCKETS_MS, N_LANES, LaneAck, LaneCommand
from state.snapshot import SnapshotRegion
from strategy_worker.lifecycle import StrategyState
from strategy_worker.report import read_report
from supervisor import reloadlog
from supervisor.deploys import Deployment, DeployStore
from supervisor.reload import Reload, ReloadRequest, ReloadTimeouts
from supervisor.workers import Child, ChildSpec, ChildState, RestartPolicy

log = logging.getLogger("supervisor.lanes")
KEEP_RELOADS = 50


@dataclass
class LaneConfig:
    run_dir: Path
    mode: str
    stake: float
    heartbeat_timeout: float = 15.0
    probation_ticks: int = 12
    probation_max_errors: int = 3
    restart: RestartPolicy | None = None
    timeouts: ReloadTimeouts | None = None
    extra_argv: tuple[str, ...] = ()
    # A strategy worker over this resident size is killed (a leak would take the VM, and
    # with it the feed and the position worker); its restart then counts as a crash.
    rss_limit_mb: float = 1024.0
    # A slow crash loop (a strategy that hangs or leaks every few minutes never trips the
    # restart intensity) also gives up: this many crash restarts in this many seconds.
    crash_loop_restarts: int = 10
    crash_loop_period: float = 900.0


@dataclass
class Probation:
    record: dict[str, Any]
    lane: int
    epoch: int
    previous: Deployment | None
    ticks_left: int


class Lanes:
    """Owns the strategy children, the active lane, the reload queue and its history."""

    def __init__(self, cfg: LaneConfig, control: ControlBlock, snapshot: SnapshotRegion,
                 allocate_epoch: Callable[[], int], on_change: Callable[[], None]) -> None:
        self.cfg = cfg
        self.control = control
        self.snapshot = snapshot
        self._allocate_epoch = allocate_epoch
        self._on_change = on_change            # wake the loop / write status
        self.deploys = DeployStore(cfg.run_dir)
        self.timeouts = cfg.timeouts or ReloadTimeouts()
        self.children: list[Child | None] = [None] * N_LANES
        self.epochs = [0] * N_LANES
        self.deployed: list[Deployment | None] = [None] * N_LANES
        self.active: int | None = None
        self.current: Deployment | None = None
        self.last_requested: Deployment | None = None
        self.queue: collections.deque[ReloadRequest] = collections.deque()
        self.reload: Reload | None = None
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP_RELOADS)
        self.probation: Probation | None = None
        self.failed_for_good: str | None = None
        self.policy = cfg.restart or RestartPolicy()
        self._restart_times: collections.deque[float] = collections.deque()
        self._slow_restarts: collections.deque[float] = collections.deque()
        # at least twice the fast budget: an operator who allows 20 restarts a minute does
        # not mean 10 in 15 minutes
        self._slow_limit = max(cfg.crash_loop_restarts, 2 * self.policy.intensity)
        self._restart_at = 0.0
        self._rss_checked = [0.0] * N_LANES
        self._now = time.monotonic
        self.done_callbacks: list[Callable[[Reload, dict[str, Any]], None]] = []
        self._load_history()

    # -- requests ---------------------------------------------------------------------------

    def request(self, req: ReloadRequest) -> None:
        """Queue a reload; it starts when the one before it has finished."""
        self.queue.append(req)
        self.last_requested = req.deployment
        self._restart_at = 0.0        # a pending crash restart is superseded (and re-planned
                                      # with its backoff if this reload leaves nobody active)
        log.info("reload queued (%s): %s %s", req.trigger, req.deployment.source,
                 req.deployment.short)

    def latest_deployment(self) -> Deployment | None:
        """The deployment that is, or is about to be, current (SIGHUP re-reads its file)."""
        if self.queue:
            return self.queue[-1].deployment
        if self.reload is not None:
            return self.reload.req.deployment
        # nothing active yet (a strategy that failed at start): the file it was started with
        return self.current or self.last_requested

    @property
    def busy(self) -> bool:
        return self.reload is not None or bool(self.queue)

    @property
    def critical(self) -> bool:
        return self.reload is not None and self.reload.critical

    # -- the step the arbiter's loop calls ---------------------------------------------------

    def step(self) -> None:
        """Reap strategy children, drive the reload in progress, start the next one, watch
        probation, and restart a crashed strategy when nothing else is in flight."""
        self.reap()
        if self.active is not None and not self.alive(self.active):
            # reaped in the same turn as its flip (before it was the active lane): it is
            # down all the same
            self._active_gone(self.active)
        if self.reload is not None:
            self.reload.step()
            if self.reload.finished:
                self._finish(self.reload)
                self.reload = None
        if self.reload is None and self.queue:
            if self.probation is not None:      # replaced before its probation ended
                self._end_probation("superseded")
            self.reload = Reload(self.queue.popleft(), self, self.timeouts)
            self.failed_for_good = None
            self.reload.step()
        self._watch_probation()
        self._restart_if_down()

    def _finish(self, r: Reload) -> None:
        rec = r.record()
        if r.result == "ok":
            prev = self.current
            self.current = r.req.deployment
            self.deploys.record_active(r.req.deployment, r.id)
            if r.req.trigger == "probation":
                rec["result"] = "reverted"
            if prev is not None and prev.sha256 != r.req.deployment.sha256 \
                    and r.req.trigger not in ("probation",) and self.cfg.probation_ticks > 0:
                rec["probation"] = "running"
                self.probation = Probation(rec, r.new or 0, r.to_epoch, prev,
                                           self.cfg.probation_ticks)
        elif r.req.trigger in ("start", "crash") and self.active is None:
            code = self._exit_code(r.new)
            if code in NO_RESTART_EXITS or code == EXIT_BROKEN_CODE:
                self.failed_for_good = rec["error"]
                log.error("the strategy cannot start (%s): the bot keeps its feed and "
                          "positions but does not trade; fix the strategy and reload",
                          rec["error"])
        self.history.append(rec)
        self._append_history(rec)
        log.info("reload %s %s: %s", r.id, rec["result"], rec.get("error") or
                 f"epoch {rec['to_epoch']} active, handoff {rec['handoff_ms']} ms")
        for cb in self.done_callbacks:
            cb(r, rec)
        self._on_change()

    def _exit_code(self, lane: int | None) -> int | None:
        child = None if lane is None else self.children[lane]
        if child is None or child.proc is None:
            return None
        return child.proc.poll()       # reaped or not: the code the standby exited with

    def _append_history(self, line: dict[str, Any]) -> None:
        reloadlog.append(Path(self.cfg.run_dir), line)

    def _load_history(self) -> None:
        self.history.extend(reloadlog.read_tail(Path(self.cfg.run_dir), KEEP_RELOADS))

    def _end_probation(self, outcome: str) -> None:
        """Record the running probation's outcome, in memory and in reloads.jsonl."""
        p, self.probation = self.probation, None
        if p is None:
            return
        p.record["probation"] = outcome
        with contextlib.suppress(OSError):
            self._append_history({"id": p.record.get("id"), "update": {"probation": outcome}})

    # -- probation and crash restarts --------------------------------------------------------

    def _watch_probation(self) -> None:
        p = self.probation
        if p is None:
            return
        rec = self.control.lane(p.lane)
        alive = self.alive(p.lane) and self.active == p.lane
        evaluated_since = int(rec["evaluated"])
        errors = int(rec["eval_errors"])
        if alive and errors <= self.cfg.probation_max_errors:
            if evaluated_since >= p.ticks_left:
                self._end_probation("passed")
            return
        why = (f"{errors} evaluation errors in its first {evaluated_since} ticks" if alive
               else "the new worker died during probation")
        self._end_probation(f"failed: {why}")
        if p.previous is None or self.reload is not None:
            return
        # from now on the previous version is the one to restart if the revert fails too
        self.current = p.previous
        log.error("probation failed (%s): reverting to %s", why, p.previous.short)
        self.request(ReloadRequest("probation", p.previous))

    def _restart_if_down(self) -> None:
        """No active strategy and nothing in flight: restart the current deployment."""
        if self.active is not None or self.busy or self.current is None \
                or self.failed_for_good is not None:
            return
        now = self._now()
        if not self._restart_at:
            while self._restart_times and now - self._restart_times[0] > self.policy.period:
                self._restart_times.popleft()
            while self._slow_restarts and \
                    now - self._slow_restarts[0] > self.cfg.crash_loop_period:
                self._slow_restarts.popleft()
            if len(self._restart_times) >= self.policy.intensity:
                self.failed_for_good = (f"{len(self._restart_times)} restarts in "
                                        f"{self.policy.period:.0f}s")
            elif len(self._slow_restarts) >= self._slow_limit:
                self.failed_for_good = (f"{len(self._slow_restarts)} restarts in "
                                        f"{self.cfg.crash_loop_period:.0f}s")
            if self.failed_for_good is not None:
                log.error("strategy restarted too often (%s): giving up until an operator "
                          "reloads", self.failed_for_good)
                return
            delay = min(self.policy.backoff_max,
                        self.policy.backoff_min * (2 ** len(self._restart_times)))
            self._restart_at = now + delay
            log.warning("no active strategy: restarting %s in %.1fs", self.current.short,
                        delay)
            return
        if now >= self._restart_at:
            self._restart_at = 0.0
            self._restart_times.append(now)
            self._slow_restarts.append(now)
            self.request(ReloadRequest("crash", self.current))

    # -- children -----------------------------------------------------------------------------

    def reap(self) -> None:
        for lane, child in enumerate(self.children):
            if child is None:
                continue
            code = child.poll()
            if code is None:
                if child.state == ChildState.STARTING and self._registered(lane):
                    child.fsm.to(ChildState.RUNNING, "registered")
                continue
            pid = child.pid
            log.log(logging.INFO if code == 0 else logging.WARNING,
                    "strategy%d (pid %d, epoch %d) exited with code %s", lane, pid,
                    self.epochs[lane], code)
            self.control.clear(WorkerSlot.strategy(lane), pid=pid)
            if self.active == lane:
                # only the active worker's death stops trading; a retired or standby
                # worker's exit changes nothing
                self._active_gone(lane)
            child.fsm.to(ChildState.IDLE, f"exit code {code}")
            self._on_change()

    def _active_gone(self, lane: int) -> None:
        if self.control.active_epoch == self.epochs[lane]:
            self.control.set_active_epoch(0)
        self.active = None
        log.error("the active strategy (epoch %d) is gone: nobody trades until its "
                  "successor is active", self.epochs[lane])

    def _registered(self, lane: int) -> bool:
        child = self.children[lane]
        return child is not None and self.control.worker(
            WorkerSlot.strategy(lane))["pid"] == child.pid

    def check_health(self, now_ns: int) -> None:
        for lane, child in enumerate(self.children):
            if child is None:
                continue
            child.enforce_stop()
            if child.state != ChildState.RUNNING or self.worker_state(lane) in (
                    StrategyState.STARTING, StrategyState.VERIFYING):
                continue          # loading and verifying: the reload's deadline covers it
            w = self.control.worker(WorkerSlot.strategy(lane))
            age = (now_ns - w["heartbeat_ns"]) / 1e9
            if w["pid"] == child.pid and age > self.cfg.heartbeat_timeout:
                # SIGKILL, not SIGTERM: a worker stuck in evaluate() cannot run its TERM
                # handler (it lives on the blocked loop), so TERM only added the grace to
                # the outage; its state is in the last snapshot, nothing is lost
                log.error("strategy%d (pid %d) missed heartbeats for %.1fs: killing it",
                          lane, child.pid, age)
                child.kill()
        self._check_memory()

    def _check_memory(self) -> None:
        """Kill a strategy worker whose resident size passed the limit (once a second per
        lane: a /proc read). Any state, verification included: a leak at import counts."""
        now = self._now()
        for lane, child in enumerate(self.children):
            if child is None or child.proc is None or child.proc.poll() is not None \
                    or now - self._rss_checked[lane] < 1.0:
                continue
            self._rss_checked[lane] = now
            try:
                rss_mb = psutil.Process(child.pid).memory_info().rss / 2**20
            except psutil.Error:
                continue
            if rss_mb > self.cfg.rss_limit_mb:
                log.error("strategy%d (pid %d) uses %.0f MB, over the %.0f MB limit: killing "
                          "it (a leak in the strategy?)", lane, child.pid, rss_mb,
                          self.cfg.rss_limit_mb)
                child.kill()

    def spawn_standby(self, d: Deployment, r: Reload) -> tuple[int, int]:
        """Start a worker for ``d`` on the free lane with a new epoch. The lane is free: a
        reload starts only when the previous one finished, and that one retired (or
        killed) whatever it left on the other lane. Returns (lane, epoch)."""
        lane = 0 if self.active is None else 1 - self.active
        old = self.children[lane]
        if old is not None and old.proc is not None and old.proc.poll() is None:
            # a retired worker that is still on its way out: make room (it is fenced and
            # has no epoch anyone accepts)
            old.kill()
            old.wait(5.0)
            self.reap()
        epoch = self._allocate_epoch()
        self.control.reset_lane(lane)
        self.epochs[lane] = epoch
        self.deployed[lane] = d
        argv = ["-m", "strategy_worker", "--run-dir", str(self.cfg.run_dir), "--mode",
                self.cfg.mode, "--epoch", str(epoch), "--lane", str(lane), "--stake",
                str(self.cfg.stake), "--params", orjson.dumps(d.params).decode(),
                "--strategy", str(d.path), "--sha256", d.sha256,
                "--notify-pid", str(os.getpid()), *self.cfg.extra_argv]
        spec = ChildSpec(f"strategy{lane}", lambda: argv,
                         heartbeat_timeout=self.cfg.heartbeat_timeout, stop_grace=10.0)
        child = Child(spec, Path(self.cfg.run_dir) / "logs")
        self.children[lane] = child
        child.start()
        log.info("reload %s: standby pid %d, epoch %d on lane %d (%s %s)", r.id, child.pid,
                 epoch, lane, d.source, d.short)
        return lane, epoch

    # -- what a Reload asks -------------------------------------------------------------------

    def active_lane(self) -> int | None:
        return self.active

    def active_epoch(self) -> int:
        return self.epochs[self.active] if self.active is not None else 0

    def pid(self, lane: int) -> int:
        child = self.children[lane]
        return child.pid if child is not None else 0

    def alive(self, lane: int) -> bool:
        child = self.children[lane]
        return child is not None and child.proc is not None and child.proc.poll() is None

    def worker_state(self, lane: int) -> StrategyState | None:
        if not self._registered(lane):
            return None
        with contextlib.suppress(ValueError):
            return StrategyState(self.control.worker(WorkerSlot.strategy(lane))["state"])
        return None

    def standby_failure(self, lane: int) -> str | None:
        """Why the worker on ``lane`` cannot go on (dead or FAILED), from its report."""
        child = self.children[lane]
        st = self.worker_state(lane)
        dead = not self.alive(lane)
        if not dead and st != StrategyState.FAILED:
            return None
        rep = read_report(self.cfg.run_dir, self.epochs[lane])
        err = rep.get("error") or (f"exited with code {child.proc.returncode}"
                                   if child and child.proc and dead else "FAILED")
        tb = rep.get("traceback") or []
        return f"{err}" + (f" | {' / '.join(tb[-3:])}" if tb else "")

    def report(self, epoch: int) -> dict[str, Any]:
        return read_report(self.cfg.run_dir, epoch)

    def send(self, lane: int, cmd: LaneCommand, **args: int) -> int:
        seq = self.control.send_lane(lane, cmd, **args)
        self._wake(lane)
        return seq

    def _wake(self, lane: int) -> None:
        """SIGUSR1 to the lane's worker, only while it is our unreaped child (its pid cannot
        have been reused then)."""
        if self.alive(lane):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid(lane), signal.SIGUSR1)

    def ack(self, lane: int) -> tuple[int, LaneAck]:
        return self.control.lane_ack(lane)

    def lane_record(self, lane: int) -> np.void:
        return self.control.lane(lane)

    def decided(self, lane: int) -> int:
        return self.control.decided(lane)

    def fence(self, lane: int, seq: int | None) -> None:
        self.control.set_fence(lane, seq)
        log.info("lane %d %s", lane, "open" if seq is None else f"fenced at seq {seq}")

    def newest_snapshot(self) -> dict[str, int]:
        """Handoff arguments for a reload with no worker to drain: the newest generation."""
        try:
            snap = self.snapshot.read()
        except SnapshotEmptyError:
            return {"gen": 0, "tick": 0, "epoch": 0}
        except SnapshotCorruptError as e:
            log.error("%s: the standby will refuse it", e)
            return {"gen": 1 << 62, "tick": 0, "epoch": 0}
        try:
            tick = int(orjson.loads(snap.data).get("tick", 0))
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            tick = 0
        return {"gen": snap.generation, "tick": tick, "epoch": snap.epoch}

    def flip(self, lane: int, epoch: int) -> None:
        self.control.set_active_epoch(epoch)
        self.active = lane
        self._wake(lane)
        log.info("flip: epoch %d on lane %d is active", epoch, lane)

    def kill(self, lane: int) -> None:
        child = self.children[lane]
        if child is not None:
            child.kill()

    def discard_standby(self, lane: int) -> None:
        """Retire a standby that will not be promoted (it exits 0), or kill it if it is not
        in a state to listen."""
        if not self.alive(lane):
            return
        if self.worker_state(lane) in (StrategyState.READY, StrategyState.SHADOW,
                                       StrategyState.HANDED, StrategyState.VERIFYING):
            self.send(lane, LaneCommand.RETIRE)
            child = self.children[lane]
            if child is not None:
                child.stop_sent_at = self._now()
                if child.state in (ChildState.STARTING, ChildState.RUNNING):
                    child.fsm.to(ChildState.STOPPING, "retired")
        else:
            self.kill(lane)

    # -- shutdown and status ------------------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every strategy worker (the active one commits a final snapshot on SIGTERM),
        standby first."""
        order = sorted(range(N_LANES), key=lambda ln: ln == self.active)
        for lane in order:
            child = self.children[lane]
            if child is None:
                continue
            child.terminate()
            if not child.wait(child.spec.stop_grace):
                child.kill()
                child.wait(5.0)
            child.poll()
            self.control.clear(WorkerSlot.strategy(lane), pid=child.pid)

    def status(self) -> dict[str, Any]:
        lanes = {}
        for lane in range(N_LANES):
            child = self.children[lane]
            rec = self.control.lane(lane)
            d = self.deployed[lane]
            st = self.worker_state(lane)
            lanes[str(lane)] = {
                "pid": child.pid if child else 0, "epoch": self.epochs[lane],
                "state": st.name if st else (child.state.name if child else "EMPTY"),
                "active": self.active == lane, "sha256": d.sha256 if d else None,
                "strategy": d.source if d else None, "tick": int(rec["tick"]),
                "evaluated": int(rec["evaluated"]), "eval_errors": int(rec["eval_errors"]),
                "skipped_ticks": int(rec["skipped"]),
                "lat_p50_ms": round(int(rec["lat_p50_ns"]) / 1e6, 3),
                "eval_hist": {"le_ms": list(EVAL_BUCKETS_MS),
                              "counts": [int(c) for c in rec["eval_buckets"]],
                              "sum_ms": round(int(rec["eval_sum_ns"]) / 1e6, 3)},
                "fence": self.control.fence(lane), "decided": self.control.decided(lane)}
        cur = self.current
        return {"active_lane": self.active, "sha256": cur.sha256 if cur else None,
                "strategy": cur.source if cur else None, "params": cur.params if cur else None,
                "reload_in_progress": self.reload.record() if self.reload else None,
                "queued_reloads": len(self.queue),
                "probation": ({"epoch": self.probation.epoch,
                               "ticks": self.probation.ticks_left}
                              if self.probation else None),
                "failed": self.failed_for_good, "lanes": lanes}

