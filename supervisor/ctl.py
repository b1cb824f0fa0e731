"""The operator's commands against a running bot: reload, pause, resume, stop, status.

Each writes one command into ``<run dir>/control.json`` (the file contract; nothing else talks
to the supervisor) and waits for its acknowledgement in status.json. Exit codes: 0 done,
1 refused or rolled back (the reason is printed), 2 bad usage, 3 no bot answered in time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from core.errors import InputError, OperatorError
from state.run import default_run_dir
from supervisor.control_file import append_command, wait_for_ack

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3


def _status(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc = orjson.loads((run_dir / "status.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _send(run_dir: Path, cmd: str, args: dict[str, Any], timeout: float
          ) -> tuple[int, dict | None]:
    if not (run_dir / "run.json").exists():
        print(f"noblink {cmd}: no bot in {run_dir} (use --run-dir)", file=sys.stderr)
        return EXIT_NO_ANSWER, None
    try:
        cid = append_command(run_dir / "control.json", cmd, args)
    except InputError as e:
        print(f"noblink {cmd}: {e}", file=sys.stderr)
        return EXIT_USAGE, None
    except OperatorError as e:
        print(f"noblink {cmd}: {e}", file=sys.stderr)
        return EXIT_FAILED, None
    ack = wait_for_ack(run_dir / "status.json", cid, timeout)
    if ack is None:
        print(f"noblink {cmd}: no acknowledgement of command {cid} within {timeout:.0f}s "
              "(is the bot running?)", file=sys.stderr)
        return EXIT_NO_ANSWER, None
    return (EXIT_OK if ack["result"] == "ok" else EXIT_FAILED), ack


def _reload_record(run_dir: Path, cid: str) -> dict | None:
    doc = _status(run_dir) or {}
    return next((r for r in reversed(doc.get("reloads", [])) if r.get("command_id") == cid),
                None)


def reload_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="noblink reload",
                                 description="Deploy a strategy file into the running bot.")
    ap.add_argument("--run-dir", type=Path, default=None)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--strategy", type=Path, help="file to deploy (default: the current "
                       "one, re-read from disk)")
    which.add_argument("--previous", action="store_true", help="redeploy the previous version")
    which.add_argument("--to", metavar="SHA", help="redeploy the version with this sha256 prefix")
    ap.add_argument("--params", help="strategy params, a JSON object (default: the current)")
    ap.add_argument("--shadow", type=int, default=0, metavar="N",
                    help="evaluate N live ticks beside the active worker first, and report "
                    "the decisions that differ")
    ap.add_argument("--dry-run", action="store_true", help="with --shadow: report only")
    ap.add_argument("--timeout", type=float, default=None, metavar="S",
                    help="seconds the new version has to load and verify (default: the "
                    "supervisor's, 30); the command waits that long plus the hand-over")
    ap.add_argument("--json", action="store_true", help="print the reload record as JSON")
    a = ap.parse_args(argv)
    run_dir = a.run_dir or default_run_dir()
    args: dict[str, Any] = {}
    if a.strategy:
        args["strategy"] = str(a.strategy.resolve())
    if a.previous:
        args["previous"] = True
    if a.to:
        args["to"] = a.to.lower()
    if a.params is not None:
        try:
            args["params"] = orjson.loads(a.params)
        except orjson.JSONDecodeError as e:
            print(f"noblink reload: --params is not JSON: {e}", file=sys.stderr)
            return EXIT_USAGE
    if a.shadow:
        args["shadow"] = a.shadow
    if a.dry_run:
        args["dry_run"] = True
    if a.timeout is not None:
        args["timeout"] = a.timeout
    wait = (a.timeout or 30.0) + 60.0 + 20.0 * a.shadow
    code, ack = _send(run_dir, "reload", args, wait)
    if ack is None:
        return code
    rec = _reload_record(run_dir, ack["id"])
    if a.json:
        print(orjson.dumps(rec or ack, option=orjson.OPT_INDENT_2).decode())
    elif code == EXIT_OK and rec:
        print(_describe(rec))
    else:
        print(f"noblink reload: {ack['result']}: {ack.get('error')}", file=sys.stderr)
    return code


def _describe(rec: dict[str, Any]) -> str:
    if rec.get("result") == "dry_run":
        sh = rec.get("shadow") or {}
        lines = [f"dry run of {rec['sha256'][:12]}: {sh.get('compared', 0)} ticks compared, "
                 f"{len(sh.get('diffs', []))} decisions differ"]
        lines += [f"  tick {d['tick']} slot {d['slot']}: {d['old']} -> {d['new']}"
                  for d in sh.get("diffs", [])[:20]]
        return "\n".join(lines)
    return (f"reload {rec['id']}: epoch {rec['from_epoch']} -> {rec['to_epoch']} "
            f"({rec['sha256'][:12]}), handoff {rec.get('handoff_ms')} ms, last tick old "
            f"{rec.get('last_tick_old')}, first tick new {rec.get('first_tick_new')}, missed "
            f"{rec.get('missed_ticks')}, duplicate {rec.get('duplicate_ticks')}")


def simple_main(cmd: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"noblink {cmd}")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=30.0)
    a = ap.parse_args(argv)
    run_dir = a.run_dir or default_run_dir()
    code, ack = _send(run_dir, cmd, {}, a.timeout)
    if ack is not None:
        print(f"{cmd}: {ack['result']}" + (f" ({ack['error']})" if ack.get("error") else ""))
    return code


def status_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="noblink status")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    run_dir = a.run_dir or default_run_dir()
    doc = _status(run_dir)
    if doc is None:
        print(f"noblink status: no status.json in {run_dir}", file=sys.stderr)
        return EXIT_NO_ANSWER
    if a.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return EXIT_OK
    print(render(doc))
    return EXIT_OK


def render(doc: dict[str, Any]) -> str:
    """The human table of `noblink status`."""
    age = time.time() - float(doc.get("written_at", 0))
    st = doc.get("strategy") or {}
    pos = doc.get("positions") or {}
    out = [f"noblink {doc.get('mode')} run {doc.get('run_id')}  tick {doc.get('tick')}  "
           f"epoch {doc.get('active_epoch')}  strategy {str(st.get('sha256'))[:12]}  "
           f"{'PAUSED  ' if doc.get('paused') else ''}(status {age:.1f}s old)", "",
           f"{'worker':<10} {'pid':>7} {'state':<9} {'lane':>4} {'epoch':>5} {'restarts':>8} "
           f"{'rss MB':>7} {'cpu %':>6} {'hb ms':>7}"]
    for name, w in (doc.get("workers") or {}).items():
        state = w.get("worker_state") if isinstance(w.get("worker_state"), str) \
            else w.get("state")
        out.append(f"{name:<10} {w.get('pid') or '-':>7} {state!s:<9} "
                   f"{'' if w.get('lane') is None else w['lane']:>4} {w.get('epoch') or '':>5} "
                   f"{w.get('restarts', 0):>8} {w.get('rss_mb', ''):>7} "
                   f"{w.get('cpu_pct', ''):>6} {w.get('heartbeat_age_ms', ''):>7}")
    out += ["", f"{'slot':<9} {'status':<10} {'up ask':>7} {'down ask':>8}  last decision"]
    for s in doc.get("slots") or []:
        out.append(f"{s['label']:<9} {s['status']:<10} {s['up_ask'] or '-':>7} "
                   f"{s['down_ask'] or '-':>8}  {s.get('last_decision') or '-'}")
    if pos:
        out += ["", f"positions: open {pos.get('open')}  settled {pos.get('settled')}  "
                f"wins {pos.get('wins')}  losses {pos.get('losses')}  win rate (100) "
                f"{pos.get('win_rate_100')}  pnl {pos.get('pnl'):.2f}  fees "
                f"{pos.get('fees'):.2f}"]
    reloads = doc.get("reloads") or []
    if reloads:
        out += ["", "recent reloads:"]
        for r in reloads[-5:]:
            out.append(f"  {r['id']} {r['trigger']:<9} {r['result']:<12} e{r['from_epoch']}->"
                       f"e{r['to_epoch']} {str(r.get('sha256'))[:12]} handoff "
                       f"{r.get('handoff_ms')} ms  {r.get('error') or ''}"[:160])
    return "\n".join(out)
