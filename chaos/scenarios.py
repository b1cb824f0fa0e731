"""The chaos scenarios (first version), each on a fresh real bot (`noblink run` on the sim).

- strategy-kill: kill -9 the active strategy worker N times (default 10) at random moments,
  about half of them while a reload is in flight (in its SPAWN or DRAIN phase);
- feed-kill, position-kill: kill -9 the feed / position worker N times (default 3);
- position-kill-inflight: the same, each kill while an order is in flight (sent to the sim,
  its reply held back by the sim's ``order_delay_s`` fault);
- reload-storm: a reload every tick for N ticks (default 20), alternating two files.

A row counts the faults (``runs``) and those after which every live check passed
(``survived``); the findings of the live checks and of the after-stop checks are kept whole.

Pacing: the supervisor gives up on a strategy restarted 5 times in 60 s (docs/reload.md, by
design: "a strategy stays down while the rest keeps running"), and stops the bot (exit 3) when
the feed or position worker is. strategy-kill therefore waits before a kill that would be the
5th crash restart within 61 s, feed-kill and position-kill before a 5th kill; each wait is
reported in the notes. Every other delay is the random 0.2-2 s between faults.
"""

from __future__ import annotations

import collections
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from chaos import checks
from chaos.checks import Findings
from sim import testing as sim_testing
from supervisor.control_file import append_command, wait_for_ack
from tests.supervisor.botctl import Bot, strategy_source

RESTART_INTENSITY = 5          # supervisor/workers.py RestartPolicy: 5 restarts ...
RESTART_PERIOD_S = 61.0        # ... in 60 s (one second of margin)
START_DEADLINE_S = 120.0
ACK_DEADLINE_S = 120.0


@dataclass
class Options:
    speed: float = 30.0
    seed: int = 1
    runs: int | None = None        # None: each scenario's default


@dataclass
class Row:
    scenario: str
    runs: int = 0
    survived: int = 0
    findings: Findings = field(default_factory=Findings)
    notes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)     # one line per fault
    seconds: float = 0.0

    @property
    def duplicates(self) -> int:
        return len(self.findings.duplicate_orders) + len(self.findings.duplicate_ticks)

    @property
    def lost(self) -> int:
        """Lost or duplicate orders, and duplicate ticks (a tick evaluated twice)."""
        return len(self.findings.lost_orders) + self.duplicates

    @property
    def missed(self) -> int:
        return sum(b - a - 1 for a, b in self.findings.missed_ticks)

    def after_fault(self, bot: Bot, admin: str, what: str, pids: set[int],
                    killed: int = 0, extra: Callable[[], Findings] | None = None
                    ) -> Findings:
        """The live checks after one fault (and ``extra``); counts it, and survived if they
        all passed."""
        f = checks.check_live(bot, killed=killed)
        if extra is not None:
            f.merge(extra())
        f.merge(checks.check_workers_running(bot))
        f.merge(checks.check_orders(bot, admin))
        pids |= checks.worker_pids(bot)
        self.runs += 1
        self.events.append(f"{what}: {'ok' if f.ok else 'FAILED'}")
        if f.ok:
            self.survived += 1
        else:
            self.notes.append(f"{what}: " + "; ".join(
                f.problems + f.lost_orders + f.duplicate_orders))
        self.findings.merge(f)
        return f

    def to_json(self) -> dict:
        f = self.findings
        return {"scenario": self.scenario, "runs": self.runs, "survived": self.survived,
                "lost": self.lost, "duplicates": self.duplicates, "missed": self.missed,
                "seconds": round(self.seconds, 1), "lost_orders": f.lost_orders,
                "duplicate_orders": f.duplicate_orders, "duplicate_ticks": f.duplicate_ticks,
                "missed_ticks": f.missed_ticks, "problems": f.problems, "notes": self.notes,
                "events": self.events, "checked": f.stats}


Body = Callable[[Bot, Row, str, set[int], Options, random.Random], None]


def _flagged(version: str, tmp: Path) -> str:
    """The botctl strategy (records every tick), slowed on demand so that a reload's phases
    last long enough to be hit: while ``slow-spawn`` exists its self-test (run only by a
    verifying standby) takes 1.5 s; while ``slow-drain`` exists every commit (get_state)
    takes 1 s, so a drain request waits for a cycle boundary."""
    spawn, drain = str(tmp / "slow-spawn"), str(tmp / "slow-drain")
    src = strategy_source(version, module="import os", extra=(
        "    def self_test(self):\n"
        f"        if os.path.exists({spawn!r}):\n"
        "            time.sleep(1.5)\n"
        "        return True\n"))
    return src.replace("    def get_state(self):\n",
                       f"    def get_state(self):\n        if os.path.exists({drain!r}):\n"
                       "            time.sleep(1.0)\n")


def _in_phase(bot: Bot, phase: str) -> dict | None:
    r = (bot.status().get("strategy") or {}).get("reload_in_progress") or {}
    return r if r.get("phase") == phase else None


def _crash_records(bot: Bot) -> int:
    return sum(1 for r in checks.reload_records(bot) if r.get("trigger") == "crash")


def strategy_kill(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                  rng: random.Random) -> None:
    n = opts.runs or 10
    files = [bot.tmp / "a.py", bot.tmp / "b.py"]
    files[0].write_text(_flagged("chaos-a", bot.tmp))
    files[1].write_text(_flagged("chaos-b", bot.tmp))
    restarts: collections.deque[float] = collections.deque()    # when crash restarts showed
    for i in range(n):
        time.sleep(rng.uniform(0.2, 2.0))
        while restarts and time.monotonic() - restarts[0] > RESTART_PERIOD_S:
            restarts.popleft()
        if len(restarts) >= RESTART_INTENSITY - 1:
            wait = RESTART_PERIOD_S - (time.monotonic() - restarts[0])
            row.notes.append(f"kill {i + 1}: waited {wait:.0f}s for the restart budget")
            time.sleep(max(0.0, wait))
            restarts.popleft()
        crashes = _crash_records(bot)
        pids |= checks.worker_pids(bot)
        if rng.random() < 0.5:
            what, pid = _kill_during_reload(bot, files[i % 2], rng.choice(["SPAWN", "DRAIN"]),
                                            rng, row)
            what = f"kill {i + 1} {what}"
        else:
            s = checks.poll(lambda: checks.one_active(bot), checks.ACTIVE_DEADLINE_S)
            if s is None:
                row.findings.problems.append(f"kill {i + 1}: no active strategy to kill")
                break
            lane = s["strategy"]["lanes"][str(s["strategy"]["active_lane"])]
            pid = lane["pid"]
            checks.kill9(pid)
            what = f"kill {i + 1} (active, epoch {s['active_epoch']}, pid {pid})"
        row.after_fault(bot, admin, what, pids, killed=pid)
        if _crash_records(bot) > crashes:
            restarts.append(time.monotonic())


def _kill_during_reload(bot: Bot, path: Path, phase: str, rng: random.Random,
                        row: Row) -> tuple[str, int]:
    """Start a reload to ``path``, kill -9 the active (old) worker once the reload is in
    ``phase``; returns what happened (the reload's result included) and the pid killed."""
    flag = bot.tmp / f"slow-{phase.lower()}"
    flag.touch()
    try:
        cid = append_command(bot.run_dir / "control.json", "reload", {"strategy": str(path)})
        live = checks.poll(lambda: _in_phase(bot, phase), 30.0, interval=0.005)
        if live is None:
            row.notes.append(f"reload {cid[:8]}: phase {phase} not seen")
            return f"reload {cid[:8]} (phase {phase} never seen, nothing killed)", 0
        time.sleep(rng.uniform(0.0, 0.3))
        now = (bot.status().get("strategy") or {}).get("reload_in_progress") or {}
        pid = bot.status()["strategy"]["lanes"][str(live["from_lane"])]["pid"]
        killed = bool(pid) and checks.kill9(pid)
    finally:
        flag.unlink(missing_ok=True)
    ack = wait_for_ack(bot.run_dir / "status.json", cid, ACK_DEADLINE_S)
    result = ack.get("result") if ack else "no ack"
    return (f"kill in {now.get('phase', 'after the reload')} (old worker pid {pid}, "
            f"{'killed' if killed else 'already gone'}), reload {cid[:8]} -> {result}",
            pid if killed else 0)


def _kill_worker(name: str) -> Body:
    def body(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
             rng: random.Random) -> None:
        kills: collections.deque[float] = collections.deque()
        for i in range(opts.runs or 3):
            time.sleep(rng.uniform(0.2, 2.0))
            while kills and time.monotonic() - kills[0] > RESTART_PERIOD_S:
                kills.popleft()
            if len(kills) >= RESTART_INTENSITY - 1:     # past it the bot stops, by design
                wait = RESTART_PERIOD_S - (time.monotonic() - kills[0])
                row.notes.append(f"kill {i + 1}: waited {wait:.0f}s for the restart budget")
                time.sleep(max(0.0, wait))
                kills.popleft()
            kills.append(time.monotonic())
            pids |= checks.worker_pids(bot)
            old = (bot.status().get("workers") or {}).get(name, {}).get("pid") or 0
            checks.kill9(old)
            restarted = checks.poll(
                lambda old=old: (w := (bot.status().get("workers") or {}).get(name, {}))
                .get("pid") not in (0, old) and w.get("state") == "RUNNING",
                checks.ACTIVE_DEADLINE_S)
            if restarted is None:
                row.notes.append(f"kill {i + 1}: {name} (pid {old}) not restarted")
            row.after_fault(bot, admin, f"kill {i + 1} ({name}, pid {old})", pids, killed=old)
    return body


def position_kill_inflight(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                           rng: random.Random) -> None:
    """kill -9 the position worker while an order is in flight: the sim holds order replies
    (fault ``order_delay_s``), the kill lands once a new POST /order reached the sim and
    before its reply. The restarted worker must find the order, not send it again."""
    kills: collections.deque[float] = collections.deque()
    for i in range(opts.runs or 3):
        time.sleep(rng.uniform(0.2, 2.0))
        while kills and time.monotonic() - kills[0] > RESTART_PERIOD_S:
            kills.popleft()
        if len(kills) >= RESTART_INTENSITY - 1:
            wait = RESTART_PERIOD_S - (time.monotonic() - kills[0])
            row.notes.append(f"kill {i + 1}: waited {wait:.0f}s for the restart budget")
            time.sleep(max(0.0, wait))
            kills.popleft()
        seen = sum(checks.order_posts(sim_testing.order_log(admin)).values())
        sim_testing.set_fault(admin, order_delay_s=2.0)
        try:
            posted = checks.poll(lambda seen=seen: sum(checks.order_posts(
                sim_testing.order_log(admin)).values()) > seen, 60.0, interval=0.01)
            pids |= checks.worker_pids(bot)
            old = (bot.status().get("workers") or {}).get("position", {}).get("pid") or 0
            if posted is None:
                row.notes.append(f"kill {i + 1}: no order in 60s, killed anyway")
            time.sleep(rng.uniform(0.0, 0.5))         # inside the 2 s the reply is held
            checks.kill9(old)
            kills.append(time.monotonic())
            keys = checks.in_flight(bot)       # the dead worker's orders in flight
            row.findings.stats["in_flight_at_kill"] = \
                row.findings.stats.get("in_flight_at_kill", 0) + len(keys)
            checks.poll(lambda old=old: (w := (bot.status().get("workers") or {})
                                         .get("position", {})).get("pid") not in (0, old)
                        and w.get("state") == "RUNNING", checks.ACTIVE_DEADLINE_S)
        finally:
            sim_testing.clear_faults(admin)
        row.after_fault(bot, admin, f"kill {i + 1} (position, pid {old}, order in flight)",
                        pids, killed=old,
                        extra=lambda keys=keys: checks.check_in_flight_resolved(
                            bot, admin, keys))


def reload_storm(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                 rng: random.Random) -> None:
    files = [bot.tmp / "storm-a.py", bot.tmp / "storm-b.py"]
    files[0].write_text(strategy_source("storm-a"))
    files[1].write_text(strategy_source("storm-b"))
    cids = []
    tick = bot.status().get("tick", 0)
    for i in range(opts.runs or 20):
        s = checks.poll(lambda t=tick: bot.status().get("tick", 0) > t and bot.status(), 30.0,
                        interval=0.005)
        if s is None:
            row.notes.append(f"reload {i + 1}: no new tick in 30s")
            break
        tick = s["tick"]
        cids.append(append_command(bot.run_dir / "control.json", "reload",
                                   {"strategy": str(files[(i + 1) % 2])}))
        pids |= checks.worker_pids(bot)
    for cid in cids:
        ack = wait_for_ack(bot.run_dir / "status.json", cid, ACK_DEADLINE_S)
        rec = next((r for r in reversed(checks.reload_records(bot))
                    if r.get("command_id") == cid), None)
        row.runs += 1
        f = checks.check_reloads([rec] if rec else [])
        if rec:
            row.events.append(
                f"reload {cid[:8]} -> {rec.get('result')} epoch {rec.get('from_epoch')}->"
                f"{rec.get('to_epoch')} ticks {rec.get('last_tick_old')}->"
                f"{rec.get('first_tick_new')} missed {rec.get('missed_ticks')} "
                f"handoff {rec.get('handoff_ms')} ms")
        if ack is None or rec is None:
            f.problems.append(f"reload {cid[:8]}: ack={ack} record={rec}")
        elif rec.get("result") != "ok":
            f.problems.append(f"reload {cid[:8]}: {rec.get('result')} ({rec.get('error')})")
        if f.ok:
            row.survived += 1
        else:
            row.notes.extend(f.problems)
        row.findings.merge(f)
    live = checks.check_live(bot)
    live.merge(checks.check_orders(bot, admin))
    if not live.ok:
        row.notes.append("after the storm: " + "; ".join(live.problems))
    row.findings.merge(live)


SCENARIOS: dict[str, Body] = {
    "strategy-kill": strategy_kill,
    "feed-kill": _kill_worker("feed"),
    "position-kill": _kill_worker("position"),
    "position-kill-inflight": position_kill_inflight,
    "reload-storm": reload_storm,
}


def run(name: str, opts: Options, rng: random.Random, keep: bool = False) -> Row:
    """One scenario on a fresh bot: start, fault, check, stop, check what is left."""
    row = Row(name)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"noblink-chaos-{name}-"))
    source = _flagged("chaos-a", tmp) if name == "strategy-kill" else None
    bot = Bot(tmp, speed=opts.speed, strategy=source,
              args=("--no-api", "--seed", str(opts.seed)))
    pids: set[int] = set()
    try:
        try:
            bot.wait_active(START_DEADLINE_S)
        except AssertionError as e:
            row.findings.problems.append(f"the bot never became active: {str(e)[-2000:]}")
            return row
        bot.wait_ticks(2)
        admin = checks.sim_admin(bot)
        SCENARIOS[name](bot, row, admin, pids, opts, rng)
        row.findings.merge(checks.check_in_flight_resolved(bot, admin))
        row.findings.merge(checks.check_orders(bot, admin))      # the sim stops with the bot
        (tmp / "order_log.json").write_bytes(orjson.dumps(sim_testing.order_log(admin)))
        pids |= checks.worker_pids(bot)
        code = bot.stop()
        row.findings.merge(checks.check_after_stop(bot, code, pids))
    except Exception as e:       # a harness failure is a finding too, never a silent pass
        row.findings.problems.append(f"harness: {e!r}")
        row.notes.append(bot.tail(1500))
    finally:
        bot.kill_everything()
        row.seconds = time.monotonic() - t0
        failed = row.findings.stats.get("orders_FAILED", 0)
        if failed:      # not a loss (no position anywhere), but a trade missed: keep the why
            row.notes.append(f"{failed} orders FAILED (never placed): see the journal")
        if not keep and row.findings.ok and not failed:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            row.notes.append(f"run dir kept: {tmp}")
    return row
