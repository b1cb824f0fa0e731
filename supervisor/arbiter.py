"""The supervisor: start the run, keep its children alive, shut it down in reverse.

The main loop reads top to bottom (gunicorn's arbiter, uvicorn's supervisors):

    while not stopping:
        wait for a signal, a worker's wake-up or the loop period (2 ms during a reload's
                             critical phases, 0.1 s otherwise)
        reap children        -> plan restarts (backoff, intensity), escalate on FAILED
        check heartbeats     -> TERM a hung child, KILL it after its grace
        start children that are due
        read control.json    -> run each new command once (reload, pause, resume, stop)
        step the strategy lanes -> drive the reload in progress (supervisor/reload.py)
        write status.json

Signal handlers only enqueue (a byte on a self-pipe); the loop does the work. SIGTERM and
SIGINT stop the bot, SIGHUP reloads the strategy file (systemd's ExecReload), SIGUSR1 is a
worker's wake-up ("I answered your command").

Start-up is an ordered recipe and shut-down is its mirror: sim -> feed -> position ->
strategy (a reload from nothing: the standby is handed the newest snapshot), then strategy
(standby first) -> position -> feed -> sim. The supervisor owns the run: the control
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import orjson

from core.clock import Clock
from core.config import load_json, write_json_atomic
from core.errors import OperatorError, SnapshotCorruptError, SnapshotEmptyError
from core.proc import private_umask
from core.universe import ENV as UNIVERSE_ENV
from core.universe import UNIVERSE_FILE, UniverseError, write_resolved
from core.universe import current as current_universe
from core.universe import parse as parse_universe
from state.control import ControlBlock, WorkerSlot
from state.layout import WorkerRole
from state.run import SNAPSHOT_CAPACITY, RunPaths, new_run_id, prepare_run_dir
from state.runlock import RoleLock
from state.segment import scan_segments
from state.snapshot import SnapshotRegion
from supervisor.commands import CommandDesk
from supervisor.console import Console, summary
from supervisor.lanes import LaneConfig, Lanes
from supervisor.reload import ReloadTimeouts
from supervisor.sdnotify import Notifier
from supervisor.status import StatusWriter
from supervisor.workers import Child, ChildSpec, ChildState, RestartPolicy

log = logging.getLogger("supervisor")

EXIT_ESCALATED = 3
READY_STATES = {"feed": (3, 4), "position": (3,)}
OPTIONAL_CHILDREN = frozenset({"api"})       # their failure never stops trading
_SLOTS = {"feed": WorkerSlot.FEED, "position": WorkerSlot.POSITION}
SNAPSHOT_FILE = "snapshot.json"
DEFAULT_STRATEGY = Path(__file__).resolve().parent.parent / "strategies" / "momentum.py"


@dataclass
class SupervisorConfig:
    run_dir: Path
    mode: Literal["sim", "paper", "live"] = "sim"
    live: bool = False
    speed: float = 1.0
    seed: int = 1
    strategy: Path | None = None
    params: str | None = None            # JSON object; None: the deployment's own (or {})
    stake: float = 5.0
    heartbeat_timeout: float = 15.0
    start_timeout: float = 60.0
    probation_ticks: int = 12
    probation_max_errors: int = 3
    reload_timeouts: ReloadTimeouts | None = None
    api: str | None = None               # the HTTP API's HOST:PORT (port 0: a free one)
    api_allow_remote: bool = False
    api_public_read: bool = False
    extra: dict[str, list[str]] = field(default_factory=dict)   # per-child extra argv
    restart: RestartPolicy = field(default_factory=RestartPolicy)   # every child's intensity
    strategy_rss_limit_mb: float = 1024.0


def _free_port_base(n: int = 6) -> int:
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
        self.lanes: Lanes | None = None
        self.desk: CommandDesk | None = None
        self.epoch = 0
        self.sim_port_base = 0
        self.sim_clock: Clock | None = None
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        self.exit_code = 0
        self.stop_requested = False
        self.status: StatusWriter | None = None
        self.console: Console | None = None
        self._status_due = 0.0
        self.sd = Notifier()             # systemd (Type=notify): a no-op outside it
        self._sd_ready = False
        self._sd_reloading = False

    # -- signals: enqueue only ------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGUSR1:          # USR1 only wakes the loop
            self._signals.append(signum)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        os.set_blocking(self._wake_w, False)

    def _stop_signalled(self) -> bool:
        return any(s != signal.SIGHUP for s in self._signals)

    def _handle_signals(self) -> None:
        """Dispatch queued signals: HUP reloads the current strategy file (in gunicorn's
        sense); TERM/INT stay queued and stop the loop."""
        hup = False
        while signal.SIGHUP in self._signals:     # in place: a handler may append meanwhile
            self._signals.remove(signal.SIGHUP)
            hup = True
        if hup and self.desk is not None:
            self.desk.sighup()

    # -- start-up -------------------------------------------------------------------------

    def setup_run(self) -> None:
        """Claim the run directory: adopt a dead run's state, refuse a live one."""
        run_dir = prepare_run_dir(self.cfg.run_dir)
        self._lock_run_dir(run_dir)
        run_id = None
        try:
            old, doc = RunPaths.load(run_dir)
        except (FileNotFoundError, ValueError, KeyError):
            old, doc = None, {}
        _check_universe(run_dir, doc)
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
        # Every child resolves the same universe from this file (core.universe): written
        # before the first child starts, 0600 like every file of the run.
        write_resolved(run_dir / UNIVERSE_FILE, current_universe())
        os.environ[UNIVERSE_ENV] = str(run_dir / UNIVERSE_FILE)
        self.control = ControlBlock.create(self.paths.seg("control"), self.paths.run_id)
        self.control.register(WorkerSlot.SUPERVISOR, WorkerRole.SUPERVISOR, state=1,
                              label="supervisor", now_ns=time.monotonic_ns())
        # epochs only grow, also across an adopted run: a zombie of the dead run can never
        # match the next active epoch
        self.epoch = max([self.control.active_epoch, int(doc.get("epoch", 0)),
                          *(int(w["epoch"]) for w in self.control.workers)])
        self.control.set_active_epoch(0)       # nobody trades until a strategy is handed over
        self.snapshot = SnapshotRegion.create(self.paths.seg("snapshot"), SNAPSHOT_CAPACITY)
        if not self.snapshot.adopted:
            self._load_snapshot_file()
        if self.cfg.mode == "sim" and not self.sim_port_base:
            self.sim_port_base = _free_port_base()
        self._write_run_json()
        self.lanes = Lanes(LaneConfig(run_dir=run_dir, mode=self.cfg.mode, stake=self.cfg.stake,
                                      heartbeat_timeout=self.cfg.heartbeat_timeout,
                                      probation_ticks=self.cfg.probation_ticks,
                                      probation_max_errors=self.cfg.probation_max_errors,
                                      timeouts=self.cfg.reload_timeouts,
                                      restart=self.cfg.restart,
                                      rss_limit_mb=self.cfg.strategy_rss_limit_mb,
                                      extra_argv=tuple(self.cfg.extra.get("strategy", []))),
                           self.control, self.snapshot, self._allocate_epoch, self._wake)
        self.desk = CommandDesk(self.paths, self.control, self.lanes, self._request_stop)
        self.lanes.done_callbacks.append(self.desk.reload_done)
        self.status = StatusWriter(self.paths, self.control)
        log.info("run %s in %s (mode %s)", self.paths.run_id, run_dir, self.cfg.mode)

    def _lock_run_dir(self, run_dir: Path) -> None:
        """One supervisor per run directory, for our lifetime (state.runlock: the kernel
        drops the lock when we die, so a crash never leaves a stale one). run.json's pid check
        alone races when two start at once, and two command desks would run every command
        twice."""
        self._run_lock = RoleLock(run_dir, "supervisor",
                                  hint="another noblink supervisor runs there; stop it first"
                                  ).acquire()

    def _allocate_epoch(self) -> int:
        self.epoch += 1
        self._write_run_json()
        return self.epoch

    def _wake(self) -> None:
        self._status_due = 0.0

    def _request_stop(self) -> None:
        self.stop_requested = True

    def _write_run_json(self) -> None:
        assert self.paths is not None
        self.paths.write_run_json(
            mode=self.cfg.mode, sim_port_base=self.sim_port_base, epoch=self.epoch,
            universe=current_universe().to_dict(),
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
            state = orjson.loads(data)
            if isinstance(state, dict):
                # the ticks of the run that saved it are not this run's: the feed counts
                # from 1 again, and a handoff discards ticks <= the snapshot's tick
                state["tick"] = 0
                data = orjson.dumps(state)
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
        except SnapshotCorruptError as e:      # keep the previous file rather than lose it
            log.error("not saving the strategy snapshot: %s", e)
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
                *self._sim_start_args(), *ex.get("sim", [])], policy=self.cfg.restart))
        specs.append(ChildSpec("feed", lambda: ["-m", "feed_worker", "--run-dir", rd, *mode,
                                                *ex.get("feed", [])],
                               policy=self.cfg.restart,
                               heartbeat_timeout=self.cfg.heartbeat_timeout))
        live = ["--live"] if self.cfg.live else []
        specs.append(ChildSpec("position", lambda: [
            "-m", "position_worker", "--run-dir", rd, *mode, *live, "--stake",
            str(self.cfg.stake), *ex.get("position", [])],
            policy=self.cfg.restart, heartbeat_timeout=self.cfg.heartbeat_timeout,
            secrets=True))
        if self.cfg.api:
            # the HTTP API is a client of the file contract like the CLI: its own process,
            # so a slow client or a flood never touches this loop or a trading process
            api = ["--listen", self.cfg.api,
                   *(["--allow-remote"] if self.cfg.api_allow_remote else []),
                   *(["--public-read"] if self.cfg.api_public_read else [])]
            specs.append(ChildSpec("api", lambda: ["-m", "api_worker", "--run-dir", rd, *api,
                                                   *ex.get("api", [])]))
        return specs

    def _sim_start_args(self) -> list[str]:
        # A restarted sim continues the same clock, so every worker's Clock stays right: the
        # same line (epochs), not "now" at spawn time, which would lag by the sim's start-up
        # x speed at every restart (a growing lag that made every reference look stale).
        c = self.sim_clock
        if c is None:
            return []
        if c.speed != self.cfg.speed:          # a warm start at another speed: a new line
            return ["--start", repr(c.now())]
        return ["--start", repr(c.sim_epoch), "--start-wall", repr(c.wall_epoch)]

    def start_children(self) -> None:
        """Start every long-lived child in order, each ready before the next one starts;
        then ask for the first strategy (a reload from nothing, driven by the loop)."""
        assert self.paths is not None and self.lanes is not None and self.desk is not None
        log_dir = self.paths.run_dir / "logs"
        for spec in self._specs():
            child = Child(spec, log_dir)
            self.children[spec.name] = child
            self._start(child)
            try:
                if not self._wait_ready(child):
                    return                      # a stop signal came during start-up
            except OperatorError as e:
                if spec.name not in OPTIONAL_CHILDREN:
                    raise
                log.error("%s; the bot runs without it (the restart policy retries)", e)
                if child.state == ChildState.EXITED:
                    child.plan_restart()
        self.desk.start_strategy(self.cfg.strategy, self.cfg.params, DEFAULT_STRATEGY)

    def _start(self, child: Child) -> None:
        assert self.control is not None and self.paths is not None
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
        if name == "api":                    # listening: it wrote api.json with its pid
            try:
                return int(load_json(str(self.paths.run_dir / "api.json")).get("pid", 0)) \
                    == child.pid
            except (OSError, ValueError):
                return False
        w = self.control.worker(_SLOTS[name])
        # feed: RUNNING(3) or DEGRADED(4), i.e. windows backfilled; position: RUNNING(3),
        # i.e. journal replayed and reconciled
        return w["pid"] == child.pid and w["state"] in READY_STATES[name]

    def _wait_ready(self, child: Child) -> bool:
        """Block until ``child`` is ready (True); False if a stop signal came first. A SIGHUP
        does not cut the ordered start short: it stays queued for the loop."""
        deadline = time.monotonic() + self.cfg.start_timeout
        while time.monotonic() < deadline:
            if self._stop_signalled():
                return False
            if child.poll() is not None:
                raise OperatorError(f"{child.spec.name} exited with code {child.last_exit} "
                                    f"during start-up; see {child.log_dir}/"
                                    f"{child.spec.name}.log")
            if self._ready(child):
                child.fsm.to(ChildState.RUNNING, "registered")
                return True
            time.sleep(0.05)
        raise OperatorError(f"{child.spec.name} was not ready within "
                            f"{self.cfg.start_timeout:.0f}s")

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Set up, start, supervise until a stop signal, then shut down. Returns exit code."""
        private_umask()
        self.install_signals()
        try:
            self.setup_run()
            self.start_children()
            assert self.paths is not None
            log.info("noblink is up: logs in %s/logs, status in %s; edit %s and run "
                     "`noblink reload --run-dir %s` (or send SIGHUP) to deploy it; "
                     "`noblink status --run-dir %s` shows the bot; Ctrl-C stops",
                     self.paths.run_dir, self.paths.status_json,
                     self.cfg.strategy or DEFAULT_STRATEGY, self.paths.run_dir,
                     self.paths.run_dir)
            self.console = Console()
            while not self._stopping():
                self._sleep(self._period())
                if self._stopping():       # a stop signal wins over restarting anything
                    break
                self.reap()
                self.check_health()
                self.start_due()
                self.poll_commands()
                self.step_lanes()
                self.notify_systemd()
                self.write_status()
        except OperatorError as e:
            log.error("%s", e)
            self.exit_code = self.exit_code or 1
        finally:
            self.shutdown()
        return self.exit_code

    def _period(self) -> float:
        """2 ms while a reload waits for a worker's answer (each answer also wakes us with
        SIGUSR1: this is the safety net), 0.1 s otherwise (control.json is read at least once
        per tick even at 60x)."""
        return 0.002 if self.lanes is not None and self.lanes.critical else 0.1

    def _stopping(self) -> bool:
        self._handle_signals()
        return self._stop_signalled() or self.exit_code != 0 or self.stop_requested

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
            if not child.plan_restart():
                if name in OPTIONAL_CHILDREN:
                    log.error("%s failed for good: the bot trades on without it", name)
                    continue
                log.critical("%s failed for good: stopping the bot", name)
                self.exit_code = EXIT_ESCALATED

    def check_health(self) -> None:
        assert self.control is not None and self.lanes is not None
        now = time.monotonic_ns()
        self.control.heartbeat(WorkerSlot.SUPERVISOR, now)
        for name, child in self.children.items():
            child.enforce_stop()
            if child.state == ChildState.STARTING and \
                    time.monotonic() - child.started_at > self.cfg.start_timeout:
                # a restarted child that never becomes ready is hung, like a silent one
                log.error("%s (pid %d) not ready %.0fs after its start: terminating", name,
                          child.pid, self.cfg.start_timeout)
                child.terminate()
                continue
            if child.state != ChildState.RUNNING or name not in _SLOTS:
                continue
            w = self.control.worker(_SLOTS[name])
            age = (now - w["heartbeat_ns"]) / 1e9
            if w["pid"] == child.pid and age > child.spec.heartbeat_timeout:
                log.error("%s (pid %d) missed heartbeats for %.1fs: terminating", name,
                          child.pid, age)
                child.terminate()
        self.lanes.check_health(now)

    def start_due(self) -> None:
        for child in self.children.values():
            if child.due():
                self._start(child)
            if child.state == ChildState.STARTING and self._ready(child):
                child.fsm.to(ChildState.RUNNING, "registered")

    def poll_commands(self) -> None:
        assert self.desk is not None
        self.desk.poll()
        self.desk.step()         # acknowledge a kill once the position worker confirmed it

    def step_lanes(self) -> None:
        assert self.lanes is not None
        self.lanes.step()

    def notify_systemd(self) -> None:
        """READY once the first strategy is active (or cannot start: the bot is up, not
        trading; otherwise systemd would kill it at TimeoutStartSec and loop), RELOADING
        while any reload is in flight, and the watchdog on every loop turn."""
        assert self.lanes is not None
        self.sd.watchdog()               # sent at most every WatchdogSec/4
        if not self._sd_ready:
            if self.lanes.active is not None or self.lanes.failed_for_good is not None:
                self._sd_ready = True
                self.sd.ready()
            return
        busy = self.lanes.busy
        if busy and not self._sd_reloading:
            self._sd_reloading = True
            self.sd.reloading()
        elif not busy and self._sd_reloading:
            self._sd_reloading = False
            self.sd.ready()

    def write_status(self, *, force: bool = False) -> None:
        """At most every 0.25 s (and at once after a reload or command finished)."""
        now = time.monotonic()
        if self.status is None or (now < self._status_due and not force):
            return
        self._status_due = now + 0.25
        assert self.lanes is not None and self.desk is not None
        doc = self.status.write(self.children, self.lanes, self.desk, epoch=self.epoch,
                                mode=self.cfg.mode)
        if self.console is not None:
            self.console.update(doc)
        self.sd.status(summary(doc))

    # -- shut-down ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop children in reverse start order, then remove every segment of the run.

        Each step is guarded: a failing step (a status file that cannot be written, say)
        must not leave children running or segments in /dev/shm."""
        self.sd.stopping()
        if self.console is not None:
            self.console.close()
            self.console = None
        try:
            self._stop_children()
            if self.status is not None and self.lanes is not None and self.desk is not None:
                with _logged("final status"):
                    self.write_status(force=True)
        finally:
            if self.status is not None:
                self.status.close()
            for res in (self.snapshot, self.control):
                if res is not None:
                    res.close()
            if self.paths is not None:
                removed = self.paths.remove_segments()
                log.info("run %s stopped; removed %d segments", self.paths.run_id,
                         len(removed))
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.sd.close()

    def _stop_children(self) -> None:
        if self.lanes is not None:
            with _logged("stopping the strategy workers"):
                self.lanes.stop_all()
            with _logged("saving the strategy snapshot"):
                self._save_snapshot_file()
        for name in ("api", "position", "feed", "sim"):
            child = self.children.get(name)
            if child is None:
                continue
            with _logged(f"stopping {name}"):
                child.terminate()
                if not child.wait(child.spec.stop_grace):
                    child.kill()
                    child.wait(5.0)
                child.poll()


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    """Shut-down steps log their failure and let the next step run."""
    try:
        yield
    except Exception:
        log.exception("shutdown: %s failed", what)


# The universe every run dir had before it was configurable (and run.json recorded it).
LEGACY_UNIVERSE = {"assets": [{"slug": a, "candles": f"binance:{a.upper()}USDT"}
                              for a in ("btc", "eth", "sol", "xrp", "doge", "bnb", "ada", "link")]}


def _check_universe(run_dir: Path, doc: dict) -> None:
    """Refuse a run directory made with another universe: its journal, snapshot and segments
    number slots and assets in that universe's order."""
    recorded = doc.get("universe")
    now = current_universe()
    if recorded is None:
        # made before universes were configurable: its slots are the old built-in 8 assets.
        # Only state that numbers slots matters (a journal, a saved strategy state).
        if not ((run_dir / "journal.sqlite").exists() or (run_dir / SNAPSHOT_FILE).exists()):
            return
        recorded = LEGACY_UNIVERSE
    try:
        before = parse_universe(recorded, f"{run_dir}/run.json")
    except UniverseError:
        before = None
    if before == now:
        return
    was = before.describe() if before is not None else "unreadable"
    same = (f"run with the config this run dir was made with (--config {run_dir}/"
            f"{UNIVERSE_FILE})" if recorded is not LEGACY_UNIVERSE else
            "write those assets into a noblink.toml and run with --config (this run dir "
            "predates configurable universes)")
    raise OperatorError(
        f"the universe changed (assets {was} in {run_dir}; now {now.describe()}): a new "
        f"universe is a new layout; use a fresh run dir (--run-dir), or {same}")


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
