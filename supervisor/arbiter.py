"""The supervisor: start the run, keep its children alive, shut it down in reverse.

The main loop reads top to bottom (gunicorn's arbiter, uvicorn's supervisors):

    while not stopping:
        wait for a signal or 0.5 s
        reap children        -> plan restarts (backoff, intensity), escalate on FAILED
        check heartbeats     -> TERM a hung child, KILL it after its grace
        start children that are due
        write status.json

Signal handlers only enqueue (a byte on a self-pipe); the loop does the work.

Start-up is an ordered recipe and shut-down is its mirror: sim -> feed -> position ->
strategy, then strategy -> position -> feed -> sim. The supervisor owns the run: the control
block and the snapshot region are its segments, and after every child has exited it removes
every segment of its run id, so a clean stop leaves nothing in /dev/shm.

A crash is an unplanned reload: a run directory whose supervisor died is adopted (same run
id), so every worker re-attaches to the shared memory it left, the strategy restores its
snapshot and the position worker rebuilds from its journal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from core.clock import Clock
from core.config import load_json, write_json_atomic
from core.errors import OperatorError, SnapshotEmptyError
from state.control import ControlBlock, WorkerSlot
from state.layout import WorkerRole
from state.run import SNAPSHOT_CAPACITY, RunPaths, new_run_id
from state.segment import scan_segments
from state.snapshot import SnapshotRegion
from supervisor.status import StatusWriter
from supervisor.workers import Child, ChildSpec, ChildState

log = logging.getLogger("supervisor")

EXIT_ESCALATED = 3
READY_STATES = {"feed": (3, 4), "position": (3,)}
SNAPSHOT_FILE = "snapshot.json"


@dataclass
class SupervisorConfig:
    run_dir: Path
    mode: Literal["sim", "paper", "live"] = "sim"
    live: bool = False
    speed: float = 1.0
    seed: int = 1
    strategy: Path | None = None
    params: str = "{}"
    stake: float = 5.0
    heartbeat_timeout: float = 15.0
    start_timeout: float = 60.0
    extra: dict[str, list[str]] = field(default_factory=dict)   # per-child extra argv


def _free_port_base(n: int = 5) -> int:
    """A base port with ``n`` consecutive free ports (the sim keeps them across restarts)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                sk = socket.socket()
                socks.append(sk)
                sk.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for sk in socks:
                sk.close()
    raise OperatorError("no block of free ports for the simulator")


class Supervisor:
    """Owns one run: its segments, its children, its status file."""

    def __init__(self, cfg: SupervisorConfig) -> None:
        self.cfg = cfg
        self.paths: RunPaths | None = None
        self.control: ControlBlock | None = None
        self.snapshot: SnapshotRegion | None = None
        self.children: dict[str, Child] = {}
        self.epoch = 0
        self.lane = 0
        self.sim_port_base = 0
        self.sim_clock: Clock | None = None
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        self.exit_code = 0
        self.status: StatusWriter | None = None

    # -- signals: enqueue only ------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        os.set_blocking(self._wake_w, False)

    def _handle_signals(self) -> None:
        """Dispatch queued signals: TERM/INT stop the bot; HUP (reload, in gunicorn's sense)
        is reserved for the hot-reload orchestration and only logged for now."""
        while self._signals and self._signals[0] == signal.SIGHUP:
            self._signals.pop(0)
            log.warning("SIGHUP: hot reload is not implemented yet; ignoring (a strategy "
                        "worker that exits is restarted with the current strategy file)")

    # -- start-up -------------------------------------------------------------------------

    def setup_run(self) -> None:
        """Claim the run directory: adopt a dead run's state, refuse a live one."""
        run_dir = self.cfg.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        run_id = None
        try:
            old, doc = RunPaths.load(run_dir)
        except (FileNotFoundError, ValueError, KeyError):
            old, doc = None, {}
        if old is not None:
            if RunPaths.is_live(doc) and int(doc.get("pid", 0)) != os.getpid():
                raise OperatorError(f"a noblink supervisor (pid {doc['pid']}) already runs in "
                                    f"{run_dir}; stop it first")
            if scan_segments(old.shm_dir, old.run_id):
                run_id = old.run_id
                log.warning("adopting run %s: its supervisor (pid %s) died; state comes back "
                            "from shared memory", run_id, doc.get("pid"))
                self.sim_port_base = int(doc.get("sim_port_base", 0))
                if doc.get("sim_clock"):
                    # the restarted sim continues the dead run's clock, so the windows and
                    # positions in shared memory stay in the sim's present
                    self.sim_clock = Clock.from_dict(doc["sim_clock"])
            elif self.cfg.mode == "sim" and doc.get("mode") == "sim":
                _archive_sim_journal(old, doc)
        stale = {i.run_id for i in scan_segments() if i.run_id != run_id and not i.creator_alive}
        if stale:
            log.warning("segments of %d dead run(s) are in /dev/shm (%s); `noblink clean` "
                        "removes them", len(stale), ", ".join(sorted(stale)[:5]))
        if self.cfg.mode != "sim":
            # a sim.json left by an earlier sim-mode run must not steer a paper/live worker
            (run_dir / "sim.json").unlink(missing_ok=True)
        self.paths = RunPaths(run_dir, run_id or new_run_id())
        self.control = ControlBlock.create(self.paths.seg("control"), self.paths.run_id)
        self.control.register(WorkerSlot.SUPERVISOR, WorkerRole.SUPERVISOR, state=1,
                              label="supervisor", now_ns=time.monotonic_ns())
        # epochs only grow, also across an adopted run: a zombie of the dead run can never
        # match the next active epoch
        self.epoch = max([self.control.active_epoch, int(doc.get("epoch", 0)),
                          *(int(w["epoch"]) for w in self.control.workers)])
        self.snapshot = SnapshotRegion.create(self.paths.seg("snapshot"), SNAPSHOT_CAPACITY)
        if not self.snapshot.adopted:
            self._load_snapshot_file()
        if self.cfg.mode == "sim" and not self.sim_port_base:
            self.sim_port_base = _free_port_base()
        self._write_run_json()
        self.status = StatusWriter(self.paths, self.control)
        log.info("run %s in %s (mode %s)", self.paths.run_id, run_dir, self.cfg.mode)

    def _write_run_json(self) -> None:
        assert self.paths is not None
        self.paths.write_run_json(
            mode=self.cfg.mode, sim_port_base=self.sim_port_base, epoch=self.epoch,
            sim_clock=self.sim_clock.to_dict() if self.sim_clock else None)

    def _load_snapshot_file(self) -> None:
        """A whole-bot restart (new run) starts from the snapshot saved at the last stop."""
        assert self.paths is not None and self.snapshot is not None
        f = self.paths.run_dir / SNAPSHOT_FILE
        if not f.exists():
            return
        try:
            doc = orjson.loads(f.read_bytes())
            data = bytes.fromhex(doc["data"])
            self.snapshot.write(data, schema_version=int(doc["schema_version"]), epoch=0)
            log.info("strategy state restored from %s", f)
        except (ValueError, KeyError, OSError) as e:
            log.error("ignoring unreadable %s: %s", f, e)

    def _save_snapshot_file(self) -> None:
        assert self.paths is not None
        if self.snapshot is None:
            return
        try:
            snap = self.snapshot.read()
        except SnapshotEmptyError:
            return
        write_json_atomic(self.paths.run_dir / SNAPSHOT_FILE, {
            "schema_version": snap.schema_version, "generation": snap.generation,
            "data": snap.data.hex()})

    def _specs(self) -> list[ChildSpec]:
        assert self.paths is not None
        rd = str(self.paths.run_dir)
        mode = ["--mode", self.cfg.mode]
        ex = self.cfg.extra
        specs = []
        if self.cfg.mode == "sim":
            specs.append(ChildSpec("sim", lambda: [
                "-m", "sim", "--run-dir", rd, "--speed", str(self.cfg.speed), "--seed",
                str(self.cfg.seed), "--port-base", str(self.sim_port_base),
                *self._sim_start_args(), *ex.get("sim", [])]))
        specs.append(ChildSpec("feed", lambda: ["-m", "feed_worker", "--run-dir", rd, *mode,
                                                *ex.get("feed", [])],
                               heartbeat_timeout=self.cfg.heartbeat_timeout))
        live = ["--live"] if self.cfg.live else []
        specs.append(ChildSpec("position", lambda: [
            "-m", "position_worker", "--run-dir", rd, *mode, *live, "--stake",
            str(self.cfg.stake), *ex.get("position", [])],
            heartbeat_timeout=self.cfg.heartbeat_timeout))
        strategy = ["--strategy", str(self.cfg.strategy)] if self.cfg.strategy else []
        specs.append(ChildSpec("strategy", lambda: [
            "-m", "strategy_worker", "--run-dir", rd, *mode, "--epoch", str(self.epoch),
            "--lane", str(self.lane), "--stake", str(self.cfg.stake), "--params",
            self.cfg.params, *strategy, *ex.get("strategy", [])],
            heartbeat_timeout=self.cfg.heartbeat_timeout))
        return specs

    def _sim_start_args(self) -> list[str]:
        # A restarted sim continues the same clock, so every worker's Clock stays right.
        return ["--start", repr(self.sim_clock.now())] if self.sim_clock else []

    def start_children(self) -> None:
        """Start every child in order, each ready before the next one starts."""
        assert self.paths is not None
        log_dir = self.paths.run_dir / "logs"
        for spec in self._specs():
            child = Child(spec, log_dir)
            self.children[spec.name] = child
            self._start(child)
            self._wait_ready(child)

    def _start(self, child: Child) -> None:
        assert self.control is not None and self.paths is not None
        if child.spec.name == "strategy":
            # Every strategy incarnation gets a new epoch; the previous one is dead (reaped),
            # so its lane is free. The epoch flips before it starts: it is the only trader.
            self.epoch += 1
            self.control.set_active_epoch(self.epoch)
            self._write_run_json()
        if child.spec.name == "sim":
            with contextlib.suppress(FileNotFoundError):
                self.paths.sim_json.unlink()
        child.start()

    def _ready(self, child: Child) -> bool:
        assert self.control is not None and self.paths is not None
        name = child.spec.name
        if name == "sim":
            if not self.paths.sim_json.exists():
                return False
            info = load_json(str(self.paths.sim_json))
            if int(info.get("pid", 0)) != child.pid:
                return False
            self.sim_clock = Clock.from_dict(info["clock"])
            self._write_run_json()
            return True
        w = self.control.worker(self._slot(name))
        if w["pid"] != child.pid:
            return False
        # feed: RUNNING(3) or DEGRADED(4), i.e. windows backfilled; position: RUNNING(3),
        # i.e. journal replayed and reconciled; strategy: registered is enough.
        return name == "strategy" or w["state"] in READY_STATES[name]

    def _slot(self, name: str) -> WorkerSlot:
        return {"feed": WorkerSlot.FEED, "position": WorkerSlot.POSITION,
                "strategy": WorkerSlot.strategy(self.lane)}[name]

    def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + self.cfg.start_timeout
        while time.monotonic() < deadline and not self._signals:
            if child.poll() is not None:
                raise OperatorError(f"{child.spec.name} exited with code {child.last_exit} "
                                    f"during start-up; see {child.log_dir}/"
                                    f"{child.spec.name}.log")
            if self._ready(child):
                child.fsm.to(ChildState.RUNNING, "registered")
                return
            time.sleep(0.05)
        if not self._signals:
            raise OperatorError(f"{child.spec.name} was not ready within "
                                f"{self.cfg.start_timeout:.0f}s")

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Set up, start, supervise until a stop signal, then shut down. Returns exit code."""
        self.install_signals()
        try:
            self.setup_run()
            self.start_children()
            assert self.paths is not None
            log.info("noblink is up: logs in %s/logs, status in %s; `noblink inspect "
                     "--run-dir %s` shows the shared memory; Ctrl-C stops", self.paths.run_dir,
                     self.paths.status_json, self.paths.run_dir)
            while not self._stopping():
                self._sleep(0.5)
                if self._stopping():       # a stop signal wins over restarting anything
                    break
                self.reap()
                self.check_health()
                self.start_due()
                self.write_status()
        except OperatorError as e:
            log.error("%s", e)
            self.exit_code = self.exit_code or 1
        finally:
            self.shutdown()
        return self.exit_code

    def _stopping(self) -> bool:
        self._handle_signals()
        return bool(self._signals) or self.exit_code != 0

    def _sleep(self, timeout: float) -> None:
        ready, _, _ = select.select([self._wake_r], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)

    def reap(self) -> None:
        for name, child in self.children.items():
            code = child.poll()
            if code is None:
                continue
            log.warning("%s (pid %d) exited with code %s", name, child.pid, code)
            if name == "strategy":
                assert self.control is not None
                self.control.set_active_epoch(0)      # nobody trades until the next one
                self.control.clear(WorkerSlot.strategy(self.lane))
            if not child.plan_restart():
                if name == "strategy":
                    log.error("strategy failed for good: the bot keeps its feed and positions "
                              "but does not trade; fix the strategy and reload")
                else:
                    log.critical("%s failed for good: stopping the bot", name)
                    self.exit_code = EXIT_ESCALATED

    def check_health(self) -> None:
        assert self.control is not None
        now = time.monotonic_ns()
        self.control.heartbeat(WorkerSlot.SUPERVISOR, now)
        slots = {"feed": WorkerSlot.FEED, "position": WorkerSlot.POSITION,
                 "strategy": WorkerSlot.strategy(self.lane)}
        for name, child in self.children.items():
            child.enforce_stop()
            if child.state != ChildState.RUNNING or name not in slots:
                continue
            w = self.control.worker(slots[name])
            age = (now - w["heartbeat_ns"]) / 1e9
            if w["pid"] == child.pid and age > child.spec.heartbeat_timeout:
                log.error("%s (pid %d) missed heartbeats for %.1fs: terminating", name,
                          child.pid, age)
                child.terminate()

    def start_due(self) -> None:
        for child in self.children.values():
            if child.due():
                self._start(child)
            if child.state == ChildState.STARTING and self._ready(child):
                child.fsm.to(ChildState.RUNNING, "registered")

    def write_status(self) -> None:
        if self.status is not None:
            self.status.write(self.children, epoch=self.epoch, mode=self.cfg.mode)

    # -- shut-down ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop children in reverse start order, then remove every segment of the run."""
        for name in ("strategy", "position", "feed", "sim"):
            child = self.children.get(name)
            if child is None:
                continue
            child.terminate()
            if not child.wait(child.spec.stop_grace):
                child.kill()
                child.wait(5.0)
            child.poll()
            if name == "strategy":
                self._save_snapshot_file()
        if self.status is not None:
            self.write_status()
            self.status.close()
        for res in (self.snapshot, self.control):
            if res is not None:
                res.close()
        if self.paths is not None:
            removed = self.paths.remove_segments()
            log.info("run %s stopped; removed %d segments", self.paths.run_id, len(removed))
        os.close(self._wake_r)
        os.close(self._wake_w)


def _archive_sim_journal(old: RunPaths, doc: dict) -> None:
    """A new sim process is a new simulated exchange: a fresh account, a fresh clock. The
    previous world's journal would name orders and windows that never existed there, so it
    is moved aside (never deleted). Paper and live journals always carry over."""
    if not old.journal.exists():
        return
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{old.journal}{suffix}")
        if src.exists():
            os.replace(src, old.run_dir / f"journal-sim-{old.run_id}.sqlite{suffix}")
    log.info("new simulated world: previous sim journal kept as journal-sim-%s.sqlite",
             doc.get("run_id"))
