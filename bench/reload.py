"""Hot reload under a running bot: hand-over time, missed ticks, first-tick cost, rollbacks.

Run with ``python -m bench.reload`` (or ``make bench-reload``); writes bench/results/reload.json
and prints a table. docs/benchmarks.md ("Reload") has the numbers; in short:

- The whole bot (``python -m supervisor.cli run --speed 60``: sim, feed, positions, strategy)
  runs in a fresh temporary run dir, so nothing depends on ``$NOBLINK_RUN_DIR``. The bench
  waits (with a deadline) until status.json shows an ACTIVE strategy lane and the tick moving.
  At speed 60 a tick (5 s of market time) comes every 83 ms.
- ``--reloads`` reloads (default 50) go through the operator's file contract, exactly as
  ``noblink reload`` does: ``append_command(control.json, "reload", {"strategy": FILE})``, then
  ``wait_for_ack`` on status.json (60 s each). FILE alternates between two copies of
  strategies/momentum.py that differ only by an appended comment, so every reload deploys a
  new sha256. Between reloads the bench waits ``--gap-ticks`` ticks (default 1.5).
- Each reload's record (reloads.jsonl in the run dir, matched by command id) gives what the
  supervisor measured itself: ``handoff_ms`` (drain request -> epoch flip),
  ``command_to_active_ms`` (command received -> flip), ``first_tick_extra_ms`` (the new
  worker's first tick latency minus the old worker's median), ``phases_ms.spawn + verify``
  (start-up and self-check of the standby), ``missed_ticks`` and ``duplicate_ticks`` (from
  the old worker's last tick and the new one's first).
- ``--rollbacks`` reloads (default 5) of a file with a syntax error: ``rollback_ms`` is the wall
  time, measured here, from writing the command to seeing its ``rolled_back`` ack (status.json
  is polled every 20 ms, so it includes up to 20 ms of polling).
- Percentiles are nearest-rank (the smallest sample with at least p% of the samples at or
  below it): with 50 samples p99 is the maximum.
- The wake-up floor (bench/wakeup.py), in the same run: before the bot starts, SIGUSR1
  pings, 5-50 ms apart, between two processes and around a ring of three, each asleep in a
  uvloop loop (``--wakeup-iterations`` round trips per ring, default 300; 0 skips it). The
  hand-over's critical path is three such wake-ups in a row (supervisor -> old worker ->
  standby -> supervisor) plus the work at each step, so handoff >= the 3-hop chain. The same
  measurement runs once more after the reloads, with the bot still running
  (``wakeup_bot_running``).
- At the end the supervisor gets SIGTERM (then SIGKILL to its process group after 30 s) and
  the bench checks that no ``/dev/shm/noblink-<run id>-*`` segment is left (any leftover is
  removed and reported). Exit code 0 when the run completed, whether or not the targets were
  met; 1 when the bench itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from bench.wakeup import WakeupError, nearest_rank
from bench.wakeup import measure as measure_wakeup
from state.segment import PREFIX, SHM_DIR
from supervisor.control_file import append_command, wait_for_ack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "reload.json"
STRATEGY = ROOT / "strategies" / "momentum.py"
TICK_MARKET_S = 5.0              # one tick every 5 s of market time
START_TIMEOUT_S = 90.0           # bot started -> an ACTIVE lane and a moving tick
ACK_TIMEOUT_S = 60.0             # per reload command
STOP_GRACE_S = 30.0              # SIGTERM -> SIGKILL
POLL_S = 0.02                    # status.json polling
BUDGET_S = 270.0                 # the whole bench; past it no new reload is started
BROKEN_SOURCE = b"def evaluate(view:\n    return None\n"   # a syntax error


class BenchError(Exception):
    """The bench itself could not run (the bot did not start, stopped answering, ...)."""


# --- statistics --------------------------------------------------------------------------

def summary(values: Sequence[float], *ps: float) -> dict[str, Any]:
    """{p50, p99, ..., max, n} over ``values``, rounded to 3 decimals (None when empty)."""
    out: dict[str, Any] = {}
    for p in ps:
        v = nearest_rank(values, p)
        out[f"p{p:g}"] = None if v is None else round(v, 3)
    out["max"] = round(max(values), 3) if values else None
    out["n"] = len(values)
    return out


# --- the bot under test ------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None                      # missing or being replaced: try again later
    return doc if isinstance(doc, dict) else None


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(lines[-n:])


@dataclass
class Cleanup:
    """What stopping the bot took, and what it left behind."""

    stop: str = "not started"            # "sigterm", "sigkill", "exited early", ...
    exit_code: int | None = None
    stop_ms: float | None = None
    stray_processes: bool = False        # something of the bot's group outlived SIGTERM
    leftover_segments: list[str] = field(default_factory=list)
    segments_checked: bool = False


class Bot:
    """One ``noblink run`` in a private temporary run dir. stop() is safe to call twice."""

    proc: subprocess.Popen[bytes] | None = None
    run_id: str | None = None
    _out: IO[bytes] | None = None

    def __init__(self, speed: float, *, run_dir: Path | None = None,
                 extra_args: Sequence[str] = (), out_name: str = "supervisor.out") -> None:
        """``run_dir``: an existing run dir (a restart of the bot in it; bench/run_all.py),
        else a fresh private one; ``extra_args`` are added to ``noblink run``."""
        self.speed = speed
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="noblink-bench-reload-"))
        self.extra_args = tuple(extra_args)
        self.status_path = self.run_dir / "status.json"
        self.control_path = self.run_dir / "control.json"
        self.out_path = self.run_dir / out_name
        self.cleanup = Cleanup()
        self.started_mono = 0.0          # time.monotonic() right before the Popen

    @property
    def tick_s(self) -> float:
        return TICK_MARKET_S / self.speed

    def start(self) -> None:
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "supervisor.cli", "run", "--speed", f"{self.speed:g}",
               "--run-dir", str(self.run_dir), *self.extra_args]
        # Its own session: if it has to be killed, its whole process group goes with it.
        self.started_mono = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise BenchError(f"the bot exited (code {code}); last output:\n"
                             f"{_tail(self.out_path)}")

    def status(self) -> dict[str, Any] | None:
        return _read_json(self.status_path)

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Until an ACTIVE lane is evaluating and status.json's tick has moved."""
        deadline = time.monotonic() + timeout
        first_tick: int | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            if self.run_id is None:
                run = _read_json(self.run_dir / "run.json")
                self.run_id = run.get("run_id") if run else None
            st = self.status() or {}
            lanes = (st.get("strategy") or {}).get("lanes") or {}
            active = any(ln.get("state") == "ACTIVE" and ln.get("active")
                         for ln in lanes.values())
            tick = st.get("tick")
            if active and isinstance(tick, int):
                if first_tick is None:
                    first_tick = tick
                elif tick > first_tick:
                    return st
            time.sleep(POLL_S * 5)
        raise BenchError(f"no ACTIVE strategy with a moving tick within {timeout:.0f}s; "
                         f"last output:\n{_tail(self.out_path)}")

    def command(self, args: dict[str, Any], timeout: float) -> tuple[str, dict | None, float]:
        """Write one reload command and wait for its ack: (command id, ack or None, wall ms).

        The wait is wait_for_ack in slices of at most 1 s, so that a bot that died is
        noticed at once instead of after the whole timeout."""
        t0 = time.monotonic()
        cid = append_command(self.control_path, "reload", args)
        deadline = t0 + timeout
        while True:
            left = deadline - time.monotonic()
            ack = wait_for_ack(self.status_path, cid, min(1.0, max(left, 0.0)), poll_s=POLL_S)
            if ack is not None:
                return cid, ack, (time.monotonic() - t0) * 1000
            if left <= 0:
                return cid, None, (time.monotonic() - t0) * 1000
            self.check_alive()

    def records(self) -> dict[str, dict[str, Any]]:
        """Every reload record of the run (reloads.jsonl), by command id."""
        out: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError):
            for ln in (self.run_dir / "reloads.jsonl").read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    rec = orjson.loads(ln)
                    if isinstance(rec, dict) and rec.get("command_id"):
                        out[rec["command_id"]] = rec
        return out

    def stop(self) -> Cleanup:
        """SIGTERM, wait, SIGKILL the process group if needed; then remove any segment of
        the run left in /dev/shm and report it."""
        c = self.cleanup
        p = self.proc
        if p is not None and c.stop == "not started":
            t0 = time.monotonic()
            if p.poll() is not None:
                c.stop = "exited early"
            else:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(STOP_GRACE_S)
                    c.stop = "sigterm"
                except subprocess.TimeoutExpired:
                    c.stop = "sigkill"
                    self._kill_group(p.pid)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(10.0)
            # The supervisor is gone: anything still in its process group is a stray child.
            if self._group_alive(p.pid):
                c.stray_processes = True
                self._kill_group(p.pid)
            c.exit_code = p.returncode
            c.stop_ms = round((time.monotonic() - t0) * 1000, 1)
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.run_id is None:
            run = _read_json(self.run_dir / "run.json")
            self.run_id = run.get("run_id") if run else None
        if self.run_id and not c.segments_checked:
            c.segments_checked = True
            for seg in sorted(SHM_DIR.glob(f"{PREFIX}{self.run_id}-*")):
                c.leftover_segments.append(seg.name)
                with contextlib.suppress(FileNotFoundError):
                    seg.unlink()
        return c

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)

    def remove_run_dir(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)


# --- the run -------------------------------------------------------------------------------

@dataclass
class Sample:
    """One command as the bench saw it, and the supervisor's record of it."""

    kind: str                            # "reload" or "rollback"
    command_id: str
    expected_sha: str
    ack: dict[str, Any]
    wall_ms: float
    record: dict[str, Any] | None = None


def _write_versions(where: Path) -> tuple[list[Path], Path]:
    where.mkdir(mode=0o700)
    src = STRATEGY.read_bytes()
    versions = []
    for name in ("a", "b"):
        p = where / f"momentum_{name}.py"
        p.write_bytes(src + f"\n# bench.reload: version {name}\n".encode())
        versions.append(p)
    broken = where / "broken.py"
    broken.write_bytes(BROKEN_SOURCE)
    return versions, broken


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def collect(bot: Bot, args: argparse.Namespace, deadline: float,
            say: Callable[[str], None]) -> list[Sample]:
    bot.start()
    t0 = time.monotonic()
    st = bot.wait_ready(START_TIMEOUT_S)
    say(f"bot ready in {time.monotonic() - t0:.1f}s (run {bot.run_id}, tick {st.get('tick')}, "
        f"run dir {bot.run_dir})")
    versions, broken = _write_versions(bot.run_dir / "bench-strategies")
    plan = [("reload", versions[i % 2]) for i in range(args.reloads)]
    plan += [("rollback", broken)] * args.rollbacks
    samples: list[Sample] = []
    gap_s = args.gap_ticks * bot.tick_s
    for i, (kind, path) in enumerate(plan, 1):
        if time.monotonic() > deadline:
            raise BenchError(f"over the {args.budget:.0f}s budget after {i - 1} commands")
        cid, ack, wall_ms = bot.command({"strategy": str(path)}, ACK_TIMEOUT_S)
        if ack is None:
            raise BenchError(f"{kind} {i}: no ack for command {cid} within "
                             f"{ACK_TIMEOUT_S:.0f}s; last output:\n{_tail(bot.out_path)}")
        samples.append(Sample(kind, cid, _sha(path), ack, wall_ms))
        if ack.get("result") != ("ok" if kind == "reload" else "rolled_back"):
            say(f"  {kind} {i}: {ack.get('result')}: {ack.get('error')}")
        if i % 10 == 0 or i == len(plan):
            say(f"  {i}/{len(plan)} commands acked")
        time.sleep(gap_s)
    records = bot.records()
    for s in samples:
        s.record = records.get(s.command_id)
    return samples


def wakeup_floor(iterations: int, when: str,
                 say: Callable[[str], None]) -> dict[str, Any] | None:
    """bench/wakeup.py's measurement (None when skipped, ``{"error": ...}`` when it could not
    run: the reload numbers are kept either way)."""
    if iterations <= 0:
        return None
    say(f"wake-up floor {when}: {iterations} round trips in each of 3 rings ...")
    try:
        res = measure_wakeup(iterations)
    except WakeupError as e:
        say(f"warning: the wake-up measurement failed: {e}")
        return {"error": str(e), "when": when}
    return {**res, "when": when}


def _num(v: object) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _target(target: str, value: float | None, met: bool) -> dict[str, Any]:
    return {"target": target, "value": value, "met": bool(value is not None and met)}


def summarize(samples: list[Sample], speed: float) -> dict[str, Any]:
    reloads = [s for s in samples if s.kind == "reload"]
    rollbacks = [s for s in samples if s.kind == "rollback"]
    ok = [s for s in reloads if s.ack.get("result") == "ok" and s.record is not None
          and s.record.get("result") == "ok"]
    recs = [s.record for s in ok if s.record is not None]

    def values(key: str) -> list[float]:
        return [v for r in recs if (v := _num(r.get(key))) is not None]

    missed = values("missed_ticks")
    dup = values("duplicate_ticks")
    handoff = values("handoff_ms")
    to_active = values("command_to_active_ms")
    extra = values("first_tick_extra_ms")
    verify = [sum(_num(r["phases_ms"].get(k)) or 0.0 for k in ("spawn", "verify"))
              for r in recs if isinstance(r.get("phases_ms"), dict)]
    rolled = [s for s in rollbacks if s.ack.get("result") == "rolled_back"]
    res: dict[str, Any] = {
        "speed": int(speed) if float(speed).is_integer() else speed,
        "tick_ms": round(TICK_MARKET_S / speed * 1000, 1),
        "reloads": len(reloads),
        "missed_ticks": int(sum(missed)),
        "duplicate_ticks": int(sum(dup)),
        "failed_reloads": len(reloads) - len(ok),
        "handoff_ms": summary(handoff, 50, 99),
        "command_to_active_ms": summary(to_active, 50, 99),
        "first_tick_extra_ms": {**summary(extra, 50, 99), "null": len(recs) - len(extra)},
        "verify_ms": summary(verify, 50, 99),
        "rollback_ms": summary([s.wall_ms for s in rolled], 50, 99),
        "ack_wall_ms": summary([s.wall_ms for s in ok], 50, 99),
        "rollbacks": len(rollbacks),
        "failed_rollbacks": len(rollbacks) - len(rolled),
        # fields the records left null (or without a number) among the ok reloads
        "null_fields": {k: len(recs) - len(v) for k, v in (
            ("missed_ticks", missed), ("duplicate_ticks", dup), ("handoff_ms", handoff),
            ("command_to_active_ms", to_active))},
        "records_missing": sum(s.record is None for s in samples),
        "sha_mismatches": sum(s.record is not None and s.record.get("sha256")
                              != s.expected_sha for s in reloads),
    }
    hp99, ep99 = res["handoff_ms"]["p99"], res["first_tick_extra_ms"]["p99"]
    cp50 = res["command_to_active_ms"]["p50"]
    complete = not res["failed_reloads"] and not any(res["null_fields"].values())
    res["targets"] = {
        "missed_ticks": _target("== 0", res["missed_ticks"],
                                complete and res["missed_ticks"] == 0),
        "duplicate_ticks": _target("== 0", res["duplicate_ticks"],
                                   complete and res["duplicate_ticks"] == 0),
        "handoff_p99_ms": _target("<= 5", hp99, hp99 is not None and hp99 <= 5.0),
        "first_tick_extra_p99_ms": _target("<= 1", ep99, ep99 is not None and ep99 <= 1.0),
        "command_to_active_p50_ms": _target("<= 1000", cp50, cp50 is not None
                                            and cp50 <= 1000.0),
    }
    res["samples"] = [_row(i, s) for i, s in enumerate(samples, 1)]
    return res


def _row(i: int, s: Sample) -> dict[str, Any]:
    r = s.record or {}
    ph = r.get("phases_ms") or {}
    return {"i": i, "kind": s.kind, "ack": s.ack.get("result"), "result": r.get("result"),
            "wall_ms": round(s.wall_ms, 1), "handoff_ms": r.get("handoff_ms"),
            "command_to_active_ms": r.get("command_to_active_ms"),
            "first_tick_extra_ms": r.get("first_tick_extra_ms"), "phases_ms": ph,
            "last_tick_old": r.get("last_tick_old"), "first_tick_new": r.get("first_tick_new"),
            "missed_ticks": r.get("missed_ticks"), "duplicate_ticks": r.get("duplicate_ticks"),
            "error": (r.get("error") or s.ack.get("error") or None)}


def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform(),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


# --- output ------------------------------------------------------------------------------

def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def table(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [f"reload bench: {res['reloads']} reloads + {res['rollbacks']} rollbacks at speed "
             f"{res['speed']} (a tick every {res['tick_ms']} ms); {m['cpus']} CPUs, Python "
             f"{m['python']}", ""]
    rows = [("metric (ms)", "n", "p50", "p99", "max")]
    for key, label in (("handoff_ms", "handoff (drain -> flip)"),
                       ("command_to_active_ms", "command -> active"),
                       ("first_tick_extra_ms", "first tick extra"),
                       ("verify_ms", "spawn + verify"),
                       ("ack_wall_ms", "command written -> ack seen"),
                       ("rollback_ms", "rollback (written -> ack)")):
        s = res[key]
        rows.append((label, str(s["n"]), _fmt(s.get("p50")), _fmt(s.get("p99")),
                     _fmt(s.get("max"))))
    lines += _table(rows)
    nulls = res["first_tick_extra_ms"]["null"]
    lines += ["",
              f"missed ticks {res['missed_ticks']}, duplicate ticks {res['duplicate_ticks']}, "
              f"failed reloads {res['failed_reloads']}/{res['reloads']}, failed rollbacks "
              f"{res['failed_rollbacks']}/{res['rollbacks']}, first_tick_extra_ms null in "
              f"{nulls}, records missing {res['records_missing']}, sha mismatches "
              f"{res['sha_mismatches']}", ""]
    trows = [("target", "goal", "measured", "")]
    for name, t in res["targets"].items():
        trows.append((name, t["target"], _fmt(t["value"]), "MET" if t["met"] else "MISSED"))
    widths = [max(len(r[i]) for r in trows) for i in range(4)]
    for j, r in enumerate(trows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += _wakeup_lines(res)
    c = res["cleanup"]
    lines += ["", f"stop: {c['stop']} (exit {c['exit_code']}, {c['stop_ms']} ms); leftover "
              f"segments: {', '.join(c['leftover_segments']) or 'none'}"
              + ("; stray processes killed" if c["stray_processes"] else "")]
    return "\n".join(lines)


def _wakeup_lines(res: dict[str, Any]) -> list[str]:
    runs = [r for r in (res.get("wakeup"), res.get("wakeup_bot_running")) if r]
    if not runs:
        return []
    lines = ["", "wake-up floor (bench/wakeup.py): SIGUSR1 into a process asleep in uvloop, "
             "pings 5-50 ms apart; hop in us (round trip / 2), 3-hop chain A->B->C->A in ms"]
    rows = [("wake-up (same run)", "hop p50", "hop p99", "hop max", "chain3 p50",
             "chain3 p99", "chain3 max")]
    failed = []
    for run in runs:
        if "error" in run:
            failed.append(f"{run['when']}: the measurement failed: {run['error']}")
            continue
        hop, chain = run["hop_us"], run["chain3_ms"]
        rows.append((run["when"], *(_fmt(hop[k]) for k in ("p50", "p99", "max")),
                     *(_fmt(chain[k]) for k in ("p50", "p99", "max"))))
    if len(rows) > 1:
        lines += _table(rows)
    lines += failed
    quiet = res.get("wakeup") or {}
    if "chain3_ms" in quiet:
        b2b = quiet.get("hop_back_to_back_us")
        if b2b:
            lines.append("control, pings back to back (no idle vCPU): hop p50 "
                         f"{_fmt(b2b['p50'])}, p99 {_fmt(b2b['p99'])}, max {_fmt(b2b['max'])} us")
        hand, chain = res["handoff_ms"], quiet["chain3_ms"]
        lines += ["handoff >= chain3: the hand-over's critical path is three such wake-ups in a "
                  "row (supervisor -> old worker -> standby -> supervisor) plus the work at each;",
                  f"  handoff p50 {_fmt(hand['p50'])} / p99 {_fmt(hand['p99'])} ms, chain3 "
                  f"(before the bot started) p50 {_fmt(chain['p50'])} / p99 "
                  f"{_fmt(chain['p99'])} ms"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reload",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--reloads", type=int, default=50, help="reloads of a good new version")
    ap.add_argument("--rollbacks", type=int, default=5, help="reloads of a broken file")
    ap.add_argument("--speed", type=float, default=60.0, help="sim clock speed")
    ap.add_argument("--gap-ticks", type=float, default=1.5,
                    help="ticks to wait after each ack before the next command")
    ap.add_argument("--budget", type=float, default=BUDGET_S,
                    help="seconds; past it the bench gives up (exit 1)")
    ap.add_argument("--wakeup-iterations", type=int, default=300,
                    help="round trips of the wake-up floor measurement (0 skips it)")
    ap.add_argument("--keep-run-dir", action="store_true", help="keep the bot's run dir")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.reloads < 1 or args.rollbacks < 0 or args.speed <= 0 or args.gap_ticks < 0:
        ap.error("--reloads must be >= 1, --rollbacks and --gap-ticks >= 0, --speed > 0")
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM unwinds like ^C

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t0 = time.monotonic()
    machine = machine_info()
    if machine["loadavg_at_start"][0] > 0.5:
        say(f"warning: load average {machine['loadavg_at_start'][0]:.2f}: other processes "
            "compete for the CPUs and will show up in the tails")
    bot = Bot(args.speed)
    failed: str | None = None
    samples: list[Sample] = []
    wakeup: dict[str, Any] | None = None
    wakeup_bot: dict[str, Any] | None = None
    cleanup = bot.cleanup
    try:
        try:
            wakeup = wakeup_floor(args.wakeup_iterations, "before the bot started", say)
            samples = collect(bot, args, t0 + args.budget, say)
            wakeup_bot = wakeup_floor(args.wakeup_iterations, "with the bot running", say)
            bot.check_alive()
        finally:
            cleanup = bot.stop()
    except BenchError as e:
        failed = str(e)
    except KeyboardInterrupt:
        failed = "interrupted"
    if cleanup.leftover_segments:
        say(f"warning: {len(cleanup.leftover_segments)} segments of run {bot.run_id} were "
            f"left in {SHM_DIR} (removed): {', '.join(cleanup.leftover_segments)}")
    if cleanup.stray_processes:
        say("warning: processes of the bot outlived its supervisor (killed)")
    if failed is not None:
        say(f"bench.reload: {failed}\n(run dir kept: {bot.run_dir})")
        return 1
    res: dict[str, Any] = {"machine": machine, **summarize(samples, args.speed)}
    res["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["cleanup"] = vars(cleanup)
    res["wakeup"] = wakeup
    res["wakeup_bot_running"] = wakeup_bot
    res["gap_ticks"] = args.gap_ticks
    res["bench_seconds"] = round(time.monotonic() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(res))
    print(f"\nwrote {args.out} in {res['bench_seconds']} s")
    if args.keep_run_dir:
        print(f"run dir kept: {bot.run_dir}")
    else:
        bot.remove_run_dir()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows as aligned text: the first column left, the others right, a rule under the
    header row."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return out
