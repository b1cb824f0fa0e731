"""``make bench``: every benchmark in one run, and one results file with stable keys.

Run with ``python -m bench.run_all`` (``make bench``); writes bench/results/latest.json (and,
as the separate targets do, ring.json, feed.json and reload.json) and prints a table.
docs/benchmarks.md ("make bench") describes each number. The phases, in this order, all in
one run so that the alternatives are compared on the same machine at the same time:

1. ring (bench/ring.py) and feed (feed_worker/bench.py), as ``make bench-ring`` and
   ``make bench-feed`` run them;
2. the wake-up floor before any bot runs (bench/wakeup.py);
3. a bot at 60x in a private run dir: 50 hot reloads and 5 rollbacks (bench/reload.py);
4. its tick views recorded for ``--record-seconds`` (bench/record.py): the 16-slot
   evaluation time (``tick``) and the sequence the no-handoff comparison replays;
5. the wake-up floor again, with that bot running;
6. cold restart: the bot stopped and started again in the same run dir (bench/cold.py);
7. strategy restart: kill -9 of the restarted bot's strategy worker (bench/cold.py);
8. reaction time on that bot, with bench/strategies/every_window.py (bench/reaction.py);
9. footprint of a fresh bot at 1x (bench/footprint.py);
10. in-process ``importlib.reload`` in one asyncio loop (bench/inprocess.py), and the
    no-handoff replay over the recorded views (bench/restart.py).

Every bot is stopped in a ``finally`` (SIGTERM, then SIGKILL to its process group), every
segment of its run checked for in /dev/shm (leftovers removed and reported), and the
bench's own child processes too. Exit 0 when every phase ran (targets met or not), 1 when
one could not (its keys are null, ``errors`` says why).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench import cold, footprint, inprocess, reaction, record, restart
from bench import reload as rl
from bench import ring as ring_bench
from state.segment import PREFIX, SHM_DIR, scan_segments

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SPEED = 60.0
API = ("--api", "127.0.0.1:0")        # a free port: never collide with another bot's 8787
SCHEMA = 1
# --quick: enough of each phase to exercise it (the no-handoff replay needs 81 recorded ticks:
# ~7 s at 60x), in about 70 s on 2 cores
QUICK = {"reloads": 3, "rollbacks": 1, "wakeup_iterations": 30, "record_seconds": 8.0,
         "reaction_seconds": 6.0, "footprint_seconds": 3.0, "footprint_settle": 2.0,
         "feed_seconds": 2.0,
         "inprocess_reloads": 4, "ring_quick": True, "ring_smoke": True}
# --ring-smoke: every ring measurement, with counts too small to mean anything
RING_SMOKE = ["--repeat", "1", "--count", "3000", "--warmup", "300", "--writer-count",
              "100000", "--e2e-count", "100000", "--e2e-count-slow", "20000"]


# --- small helpers -----------------------------------------------------------------------------

def _get(d: Any, path: str) -> Any:
    for k in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _uptime() -> str:
    try:
        secs = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        secs = 0.0
    la = os.getloadavg()
    return f"up {secs / 3600:.1f} h, load average {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f}"


def _others() -> list[str]:
    """Other noblink bots or test suites on the machine right now (pgrep-like): the load."""
    me = {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["pid"] in me:
            continue
        if "pytest" in cmd or "supervisor.cli run" in cmd or "noblink run" in cmd \
                or "bench." in cmd:
            out.append(f"{p.info['pid']}: {cmd[:100]}")
    return out


class Phases:
    """Runs each phase, times it, keeps its error instead of stopping the run."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.errors: dict[str, str] = {}
        self.seconds: dict[str, float] = {}
        self.load: dict[str, list[float]] = {}
        self.others: dict[str, list[str]] = {}     # test suites, other bots, at start or end

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.say(f"== {name} ({_uptime()})")
        self.load[name] = [round(x, 2) for x in os.getloadavg()]
        before = _others()
        t0 = time.monotonic()
        try:
            return fn()
        except Exception as e:      # one phase's failure is reported, the
            # rest of the run (and above all the cleanup) goes on
            tb = traceback.format_exc().rstrip().splitlines()[-6:]
            self.errors[name] = f"{type(e).__name__}: {e}"
            self.say(f"   {name} FAILED: {e}\n" + "\n".join(tb))
            return None
        finally:
            self.seconds[name] = round(time.monotonic() - t0, 1)
            seen = sorted(set(before) | set(_others()))
            if seen:
                self.others[name] = seen
                self.say(f"   note: other processes during {name}: {len(seen)} "
                         f"({seen[0][:60]} ...)")


# --- mapping each benchmark's output to the stable keys ------------------------------------------

def reload_keys(res: dict[str, Any] | None) -> dict[str, Any] | None:
    if res is None:
        return None
    return {
        "missed_ticks": res["missed_ticks"], "duplicate_ticks": res["duplicate_ticks"],
        "handoff_ms": {k: res["handoff_ms"][k] for k in ("p50", "p99", "max")},
        "command_to_active_ms": {k: res["command_to_active_ms"][k] for k in ("p50", "p99")},
        "first_tick_extra_ms": {k: res["first_tick_extra_ms"][k] for k in ("p50", "p99")},
        "verify_ms": {"p50": res["verify_ms"]["p50"]},
        "rollback_ms": {"p50": res["rollback_ms"]["p50"]},
        "reloads": res["reloads"], "failed_reloads": res["failed_reloads"],
        "rollbacks": res["rollbacks"], "failed_rollbacks": res["failed_rollbacks"],
    }


def ring_keys(res: dict[str, Any] | None) -> dict[str, Any] | None:
    if res is None:
        return None
    return {t: {k: res[t][k] for k in ("p50_us", "p99_us", "msgs_per_s")}
            for t in ("shm", "queue", "pipe")}


def _target(goal: str, value: float | None, ok: bool | None, note: str = "") -> dict[str, Any]:
    met = bool(value is not None and ok)
    return {"target": goal, "value": value, "met": met, "status": "MET" if met else "MISSED",
            **({"note": note} if note else {})}


def targets(doc: dict[str, Any]) -> dict[str, Any]:
    r = doc.get("reload") or {}
    ratio = _get(doc, "ratios.cold_restart_over_handoff_p50")
    hp99 = _get(r, "handoff_ms.p99")
    ep99 = _get(r, "first_tick_extra_ms.p99")
    rp99 = _get(doc, "reaction_ms.p99")
    rss = _get(doc, "footprint.rss_mb_total")
    cpu = _get(doc, "footprint.idle_cpu_pct") or {}
    workers = {k: v for k, v in cpu.items() if k not in footprint.NOT_WORKERS}
    worst = max(workers.items(), key=lambda kv: kv[1], default=(None, None))
    complete = bool(r) and not r.get("failed_reloads")
    return {
        "reload_missed_ticks": _target("== 0", r.get("missed_ticks"),
                                       complete and r.get("missed_ticks") == 0),
        "reload_duplicate_ticks": _target("== 0", r.get("duplicate_ticks"),
                                          complete and r.get("duplicate_ticks") == 0),
        "handoff_p99_ms": _target("<= 5", hp99, hp99 is not None and hp99 <= 5.0),
        "first_tick_extra_p99_ms": _target("<= 1", ep99, ep99 is not None and ep99 <= 1.0),
        "cold_restart_over_handoff_p50": _target(
            ">= 1000", ratio, ratio is not None and ratio >= 1000,
            "cold_restart.first_eval_ms / reload.handoff_ms.p50"),
        "reaction_p99_ms": _target("<= 5", rp99, rp99 is not None and rp99 <= 5.0),
        "rss_mb_total": _target("<= 300", rss, rss is not None and rss <= 300.0,
                                "the bot's processes, simulator excluded"),
        "idle_cpu_pct_max": _target("<= 2 (each worker, 1x)", worst[1],
                                    worst[1] is not None and worst[1] <= 2.0,
                                    f"worst: {worst[0]}" if worst[0] else ""),
        **_ring_targets(doc),
    }


def _ring_targets(doc: dict[str, Any]) -> dict[str, Any]:
    """The ring at least as fast as a Pipe, idle, both read by uvloop tasks (same run)."""
    out = {}
    for p in ("p50_us", "p99_us"):
        shm, pipe = _get(doc, f"ring.shm.{p}"), _get(doc, f"ring.pipe.{p}")
        ok = shm is not None and pipe is not None and shm <= pipe
        out[f"ring_{p[:3]}_le_pipe"] = _target(f"<= pipe {p[:3]}", shm, ok,
                                               f"pipe {_f(pipe)} us, same run")
    return out


def ratios(doc: dict[str, Any]) -> dict[str, Any]:
    h = _get(doc, "reload.handoff_ms.p50")

    def over(v: Any) -> float | None:
        return round(v / h, 1) if isinstance(v, int | float) and h else None

    return {
        "cold_restart_over_handoff_p50": over(_get(doc, "cold_restart.first_eval_ms")),
        "strategy_restart_over_handoff_p50": over(
            _get(doc, "strategy_restart_no_handoff.first_eval_ms")),
        "inprocess_blocked_over_handoff_p50": over(_get(doc, "inprocess_reload.loop_blocked_ms")),
        "queue_over_shm_p99": _get(doc, "ring.shm.p99_us") and round(
            _get(doc, "ring.queue.p99_us") / _get(doc, "ring.shm.p99_us"), 2),
        "shm_over_queue_msgs_per_s": _get(doc, "ring.queue.msgs_per_s") and round(
            _get(doc, "ring.shm.msgs_per_s") / _get(doc, "ring.queue.msgs_per_s"), 2),
    }


# --- the table ---------------------------------------------------------------------------------

def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 10_000 else f"{v:,.0f}"
    elif isinstance(v, int):
        s = f"{v:,}" if abs(v) >= 10_000 else str(v)
    else:
        s = str(v)
    return s + unit


def _grid(rows: list[tuple[str, ...]], right: bool = True) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for j, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) if i == 0 or not right else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def _flat(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(d, dict):
        return [(prefix, d)]
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}.{k}" if prefix else k)
    return out


STABLE = ("reload", "cold_restart", "strategy_restart_no_handoff", "inprocess_reload",
          "reaction_ms", "tick", "footprint", "ring", "feed")


def table(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    lines = [f"make bench, {m['date']}: {m['cpus']} CPUs ({m['cpu_model']}), Python "
             f"{m['python']}; load average {m['loadavg_at_start'][0]} at the start, "
             f"{m['loadavg_at_end'][0]} at the end; {m['bench_seconds']} s", ""]
    r = doc.get("reload") or {}
    c = doc.get("cold_restart") or {}
    s = doc.get("strategy_restart_no_handoff") or {}
    ip = doc.get("inprocess_reload") or {}
    rows = [("changing the strategy while trading", "evaluation downtime", "missed ticks",
             "dup ticks", "history lost", "decisions changed", "other")]
    rows.append(("hot reload (noblink reload)",
                 f"handoff p50 {_f(_get(r, 'handoff_ms.p50'))} ms, p99 "
                 f"{_f(_get(r, 'handoff_ms.p99'))} ms", _f(r.get("missed_ticks")),
                 _f(r.get("duplicate_ticks")), "0 (handed over)", "0 (same state)",
                 f"{_f(r.get('reloads'))} reloads, {_f(r.get('failed_reloads'))} failed"))
    rows.append(("cold restart of the whole bot",
                 f"start -> first eval {_f(c.get('first_eval_ms'))} ms",
                 _f(c.get("missed_ticks")), "-", "0 (snapshot.json)", "-",
                 f"+ stop {_f(_get(doc, 'details.cold_restart.stop_ms'))} ms"))
    rows.append(("strategy kill -9 + restart, no handoff",
                 f"kill -> first eval {_f(s.get('first_eval_ms'))} ms",
                 _f(s.get("missed_ticks")), "-", _f(s.get("history_lost")),
                 _f(s.get("decisions_changed")),
                 f"re-proposed intents {_f(s.get('intents_reproposed'))} per restart"))
    rows.append(("in-process importlib.reload",
                 f"loop blocked {_f(ip.get('loop_blocked_ms'))} ms", "-", "-", "-", "-",
                 f"{_f(ip.get('feed_msgs_delayed'))} feed msgs delayed, "
                 f"{_f(ip.get('stale_references'))} stale refs"))
    lines += _grid(rows, right=False)
    lines.append("(history lost / decisions changed of the first two rows: by design, not "
                 "measured here: a reload restores the drained generation, a clean stop "
                 "saves snapshot.json)")
    rt = doc.get("ratios") or {}
    lines += ["", "ratios (same run): " + ", ".join(f"{k} {_f(v)}" for k, v in rt.items()), ""]
    rows = [("key", "value")]
    for sec in STABLE:
        for k, v in _flat(doc.get(sec), sec):
            rows.append((k, _f(v)))
    lines += _grid(rows)
    lines.append("")
    rows = [("target", "goal", "measured", "")]
    for name, t in doc["targets"].items():
        rows.append((name, t["target"], _f(t["value"]),
                     t["status"] + (f" ({t['note']})" if t.get("note") else "")))
    lines += _grid(rows, right=False)
    cl = doc.get("cleanup") or {}
    lines += ["", f"cleanup: bots {cl.get('bots')}; leftover segments "
              f"{cl.get('leftover_segments') or 'none'}; stray processes "
              f"{cl.get('stray_processes') or 'none'}"]
    if doc.get("errors"):
        lines += ["", "ERRORS (these phases did not run; their keys are null):"]
        lines += [f"  {k}: {v}" for k, v in doc["errors"].items()]
    return "\n".join(lines)


# --- the run -----------------------------------------------------------------------------------

def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--reloads", type=int, default=50)
    ap.add_argument("--rollbacks", type=int, default=5)
    ap.add_argument("--gap-ticks", type=float, default=1.5)
    ap.add_argument("--wakeup-iterations", type=int, default=300)
    ap.add_argument("--record-seconds", type=float, default=20.0)
    ap.add_argument("--reaction-seconds", type=float, default=40.0)
    ap.add_argument("--footprint-seconds", type=float, default=30.0)
    ap.add_argument("--footprint-settle", type=float, default=footprint.SETTLE_S,
                    help="seconds the 1x bot runs before the footprint is measured")
    ap.add_argument("--feed-seconds", type=float, default=10.0)
    ap.add_argument("--inprocess-reloads", type=int, default=inprocess.RELOADS)
    ap.add_argument("--ring-quick", action="store_true", help="bench.ring --quick")
    ap.add_argument("--ring-smoke", action="store_true",
                    help="bench.ring with tiny counts (the test suite's smoke run)")
    ap.add_argument("--keep-run-dirs", action="store_true")
    ap.add_argument("--results-dir", type=Path, default=RESULTS,
                    help="where latest.json, ring.json, feed.json and reload.json go")
    ap.add_argument("--quick", action="store_true",
                    help="every phase, briefly (the test suite's smoke run; its numbers are "
                         "not comparable with a full run's)")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        ap.set_defaults(**QUICK)              # brief defaults; explicit flags still win
    args = ap.parse_args(argv)
    results = args.results_dir
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM unwinds like ^C

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    t_start = time.monotonic()
    machine = rl.machine_info()
    machine["uptime_at_start"] = _uptime()
    machine["others_at_start"] = _others()
    if machine["loadavg_at_start"][0] > 0.5 or machine["others_at_start"]:
        say(f"warning: {_uptime()}; other processes: {machine['others_at_start'] or 'none'}: "
            "they compete for the CPUs and will show up in the tails")
    shm_before = {p.name for p in SHM_DIR.glob(f"{PREFIX}*")}
    ph = Phases(say)
    bots: list[rl.Bot] = []
    out: dict[str, Any] = {}
    details: dict[str, Any] = {}
    try:
        # 1. ring and feed, as their own targets run them
        ring_args = ["--out", str(results / "ring.json"),
                     *(["--quick"] if args.ring_quick else []),
                     *(RING_SMOKE if args.ring_smoke else [])]
        if ph.run("ring", lambda: ring_bench.main(ring_args)) == 0:
            ring_res = orjson.loads((results / "ring.json").read_bytes())
            out["ring"] = ring_keys(ring_res)
            details["ring"] = {"ratios": ring_res.get("ratios"), "targets": ring_res.get(
                "targets"), "file": str(results / "ring.json")}

        def feed() -> dict[str, Any]:
            from feed_worker.bench import run_bench
            res = run_bench(args.feed_seconds, SPEED)
            _write(results / "feed.json", res)
            return res
        feed_res = ph.run("feed", feed)
        if feed_res:
            print(f"feed: p50 {feed_res['feed']['p50_us']} us, p99 {feed_res['feed']['p99_us']} "
                  f"us over {feed_res['feed']['messages']} updates\n", flush=True)
            out["feed"] = {k: feed_res["feed"][k] for k in ("p50_us", "p99_us")}
            details["feed"] = feed_res["feed"]

        # 2. the wake-up floor, quiet
        wake0 = ph.run("wakeup", lambda: rl.wakeup_floor(
            args.wakeup_iterations, "before the bot started", say))

        # 3. the reloads
        bot_a = rl.Bot(SPEED, extra_args=API)
        bots.append(bot_a)
        ns = argparse.Namespace(reloads=args.reloads, rollbacks=args.rollbacks,
                                gap_ticks=args.gap_ticks, budget=rl.BUDGET_S)
        samples = ph.run("reload", lambda: rl.collect(bot_a, ns, time.monotonic()
                                                      + rl.BUDGET_S, say))
        reload_res = rl.summarize(samples, SPEED) if samples else None
        if not samples:
            bot_a.stop()

        # 4. the tick views, from the same bot
        rec = None
        if samples:
            rec = ph.run("record", lambda: record.record(bot_a.run_dir, bot_a.run_id or "",
                                                         args.record_seconds))
        if rec is not None:
            out["tick"] = {k: v for k, v in record.tick_summary(rec).items()
                           if k in ("p50_ms", "p99_ms")}
            details["tick"] = record.tick_summary(rec)
            details["tick"].update(lost=rec.lost, gaps=rec.gaps, seconds=rec.seconds)

        # 5. the wake-up floor with the bot running
        wake1 = None
        if samples:
            wake1 = ph.run("wakeup_bot_running", lambda: rl.wakeup_floor(
                args.wakeup_iterations, "with the bot running", say))
            # the worker's own tick latency (tick published -> all slots evaluated, with its
            # wake-up), median over its last 256 ticks, from status.json
            lanes = ((bot_a.status() or {}).get("strategy") or {}).get("lanes") or {}
            details.setdefault("tick", {})["worker_lat_p50_ms"] = {
                k: v.get("lat_p50_ms") for k, v in lanes.items() if v.get("active")}

        # 6. cold restart (stops bot A)
        bot_b = None
        if samples:
            bot_b = cold.restarted(bot_a)
            bots.append(bot_b)
            cold_res = ph.run("cold_restart", lambda: cold.cold_restart(bot_a, bot_b, say))
            if cold_res is None:
                bot_b.stop()
                bot_b = None
            else:
                details["cold_restart"] = cold_res
                out["cold_restart"] = {k: cold_res[k] for k in ("first_eval_ms",
                                                                "missed_ticks")}
        if reload_res is not None:
            reload_doc = {"machine": machine, **reload_res, "cleanup": vars(bot_a.stop()),
                          "wakeup": wake0, "wakeup_bot_running": wake1,
                          "gap_ticks": args.gap_ticks,
                          "bench_seconds": ph.seconds.get("reload")}
            _write(results / "reload.json", reload_doc)
            print(rl.table(reload_doc) + "\n", flush=True)
            out["reload"] = reload_keys(reload_res)
            details["reload"] = {"targets": reload_res["targets"],
                                 "ack_wall_ms": reload_res["ack_wall_ms"],
                                 "null_fields": reload_res["null_fields"],
                                 "wakeup_chain3_ms": (wake0 or {}).get("chain3_ms"),
                                 "wakeup_chain3_ms_bot_running": (wake1 or {}).get("chain3_ms"),
                                 "file": str(results / "reload.json")}

        # 7. kill -9 of the strategy worker (bot B)
        if bot_b is not None:
            kill_res = ph.run("strategy_restart", lambda: cold.kill_strategy(bot_b, say))
            if kill_res is not None:
                details["strategy_restart_no_handoff"] = {"kill": kill_res}
                out["strategy_restart_no_handoff"] = {
                    k: kill_res[k] for k in ("first_eval_ms", "missed_ticks")}

        # 8. reaction (bot B), then stop it
        if bot_b is not None:
            time.sleep(1.0)          # let the crash restart finish (its RETIRE phase)
            react = ph.run("reaction", lambda: reaction.measure(bot_b, args.reaction_seconds,
                                                                say))
            if react is not None:
                out["reaction_ms"] = {k: react[k] for k in ("p50", "p99")}
                details["reaction_ms"] = react
            bot_b.stop()

        # 9. footprint at 1x
        bot_c = rl.Bot(1.0, extra_args=API)
        bots.append(bot_c)
        fp_res = ph.run("footprint", lambda: footprint.measure(
            bot_c, args.footprint_seconds, say, args.footprint_settle))
        for b in bots:
            b.stop()
        if fp_res is not None:
            out["footprint"] = {k: fp_res[k] for k in ("rss_mb_total", "rss_mb", "shm_bytes",
                                                        "idle_cpu_pct", "fds")}
            details["footprint"] = {k: v for k, v in fp_res.items()
                                    if k not in out["footprint"]}

        # 10. in process: importlib.reload, and the no-handoff replay
        views = [t.views for t in rec.ticks[:64]] if rec is not None and rec.ticks else None
        ip = ph.run("inprocess_reload", lambda: inprocess.run_isolated(
            views, args.inprocess_reloads))
        if ip is not None:
            out["inprocess_reload"] = {k: ip[k] for k in ("loop_blocked_ms",
                                                          "feed_msgs_delayed",
                                                          "stale_references")}
            details["inprocess_reload"] = {k: v for k, v in ip.items()
                                           if k not in out["inprocess_reload"]}
        if rec is not None:
            cmp = ph.run("no_handoff_replay", lambda: restart.compare(rec))
            if cmp is not None:
                sr = out.setdefault("strategy_restart_no_handoff",
                                    {"first_eval_ms": None, "missed_ticks": None})
                sr.update({k: cmp[k] for k in ("history_lost", "decisions_changed",
                                               "intents_reproposed")})
                details.setdefault("strategy_restart_no_handoff", {})["replay"] = cmp
    except KeyboardInterrupt:
        ph.errors["interrupted"] = "KeyboardInterrupt / SIGTERM"
    finally:
        cleanup = _cleanup(bots, shm_before, args.keep_run_dirs, say)
    doc: dict[str, Any] = {"schema": SCHEMA, "meta": machine}
    for sec in STABLE:
        doc[sec] = out.get(sec)
    doc["ratios"] = ratios(doc)
    doc["targets"] = targets(doc)
    machine.update(loadavg_at_end=[round(x, 2) for x in os.getloadavg()],
                   uptime_at_end=_uptime(), others_at_end=_others(),
                   bench_seconds=round(time.monotonic() - t_start, 1),
                   phase_seconds=ph.seconds, phase_loadavg=ph.load,
                   phase_others=ph.others,
                   date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    doc["cleanup"] = cleanup
    doc["errors"] = ph.errors
    doc["details"] = details
    out_path = results / "latest.json"
    _write(out_path, doc)
    print(table(doc))
    print(f"\nwrote {out_path} in {machine['bench_seconds']} s")
    return 1 if ph.errors else 0


def _cleanup(bots: list[rl.Bot], shm_before: set[str], keep: bool,
             say: Callable[[str], None]) -> dict[str, Any]:
    """Stop every bot, then look for what is left: segments of our runs (removed), other new
    segments with a dead creator (reported only: they may not be ours), child processes of
    the bench (killed by pid)."""
    res: dict[str, Any] = {"bots": [], "leftover_segments": [], "unattributed_segments": [],
                           "stray_processes": []}
    run_ids = set()
    for b in bots:
        c = b.stop()
        if b.run_id:
            run_ids.add(b.run_id)
        res["bots"].append(f"{b.run_id}: {c.stop} exit {c.exit_code}")
        res["leftover_segments"] += c.leftover_segments
        if c.stray_processes:
            res["stray_processes"].append(f"group of {b.proc.pid if b.proc else '?'}")
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            res["stray_processes"].append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
            p.kill()
    for p in sorted(SHM_DIR.glob(f"{PREFIX}*")):
        if p.name in shm_before:
            continue
        rid = p.name[len(PREFIX):].partition("-")[0]
        if rid in run_ids or rid == f"bench{os.getpid()}":
            res["leftover_segments"].append(p.name)
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    # new since the start, not of a run we know, creator dead: reported, not removed
    res["unattributed_segments"] = [i.path.name for i in scan_segments()
                                    if i.path.name not in shm_before and not i.creator_alive]
    if not keep:
        for d in {b.run_dir for b in bots}:
            shutil.rmtree(d, ignore_errors=True)
    else:
        res["run_dirs"] = sorted(str(b.run_dir) for b in bots)
    if res["leftover_segments"] or res["stray_processes"]:
        say(f"warning: cleanup found leftovers: {res}")
    return res


if __name__ == "__main__":
    sys.exit(main())
