"""The operator's commands against a running bot, and the read-only queries.

Commands (reload, params set, pause, resume, kill, stop) each write one command into
``<run dir>/control.json`` (the file contract; nothing else talks to the supervisor) and wait
for its acknowledgement in status.json. Queries read files of the run dir and change nothing:
``status`` and ``params get`` read status.json, ``positions`` the journal (SQLite, opened
read-only), ``logs`` the workers' log files in ``logs/`` (``--follow`` polls for appended
lines and reopens a file that was rotated or truncated).

Exit codes: 0 done, 1 refused, rolled back or failed (the reason on stderr), 2 bad usage,
3 no bot answered in time (or no bot's files in the run dir). docs/commands.md has it all.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import re
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from core.errors import InputError, OperatorError
from state.run import default_run_dir
from supervisor.control_file import KILL_TIMEOUT_S, append_command, wait_for_ack

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3
RELOAD_WAIT_S = 30.0 + 60.0          # verify deadline (default) + drain, handoff, flip


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
    return _report_reload("reload", run_dir, code, ack, as_json=a.json)


def _report_reload(cmd: str, run_dir: Path, code: int, ack: dict | None, *,
                   as_json: bool) -> int:
    """Print the outcome of a command acknowledged when its reload finished."""
    if ack is None:
        return code
    rec = _reload_record(run_dir, ack["id"])
    if as_json:
        print(orjson.dumps(rec or ack, option=orjson.OPT_INDENT_2).decode())
        if code != EXIT_OK:
            print(f"noblink {cmd}: {ack['result']}: {ack.get('error')}", file=sys.stderr)
    elif code == EXIT_OK and rec:
        print(_describe(rec))
    else:
        print(f"noblink {cmd}: {ack['result']}: {ack.get('error')}", file=sys.stderr)
    return code


def _describe(rec: dict[str, Any]) -> str:
    if rec.get("result") == "dry_run":
        sh = rec.get("shadow") or {}
        lines = [f"dry run of {rec['sha256'][:12]}: {sh.get('compared', 0)} ticks compared, "
                 f"{len(sh.get('diffs', []))} decisions differ"]
        lines += [f"  tick {d['tick']} slot {d['slot']}: {d['old']} -> {d['new']}"
                  for d in sh.get("diffs", [])[:20]]
        return "\n".join(lines)
    line = (f"reload {rec['id']}: epoch {rec['from_epoch']} -> {rec['to_epoch']} "
            f"({rec['sha256'][:12]}), handoff {rec.get('handoff_ms')} ms, last tick old "
            f"{rec.get('last_tick_old')}, first tick new {rec.get('first_tick_new')}, missed "
            f"{rec.get('missed_ticks')}, duplicate {rec.get('duplicate_ticks')}")
    sh = rec.get("shadow")
    if sh:
        line += (f"\nshadow: {sh.get('compared', 0)} ticks compared, "
                 f"{len(sh.get('diffs', []))} decisions differ")
        line += "".join(f"\n  tick {d['tick']} slot {d['slot']}: {d['old']} -> {d['new']}"
                        for d in sh.get("diffs", [])[:20])
    return line


SIMPLE = {
    "pause": ("Stop opening new positions (acknowledged at once).", 30.0, ""),
    "resume": ("Trade again: clears pause and the kill switch.", 30.0, ""),
    "stop": ("Stop the bot cleanly.", 30.0, ""),
    "kill": ("Pause, and cancel every open order at the venue; acknowledged once the "
             "position worker confirms.", KILL_TIMEOUT_S + 15.0,
             " (open orders cancelled, trading paused; `noblink resume` trades again)"),
}


def simple_main(cmd: str, argv: list[str]) -> int:
    """pause, resume, stop, kill: commands without args."""
    doc, wait, done = SIMPLE[cmd]
    ap = argparse.ArgumentParser(prog=f"noblink {cmd}", description=doc)
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=wait, metavar="S",
                    help=f"seconds to wait for the acknowledgement (default {wait:g})")
    ap.add_argument("--json", action="store_true", help="print the acknowledgement as JSON")
    a = ap.parse_args(argv)
    run_dir = a.run_dir or default_run_dir()
    code, ack = _send(run_dir, cmd, {}, a.timeout)
    if ack is None:
        return code
    if a.json:
        print(orjson.dumps(ack, option=orjson.OPT_INDENT_2).decode())
    if code != EXIT_OK:
        print(f"noblink {cmd}: {ack['result']}: {ack.get('error')}", file=sys.stderr)
    elif not a.json:
        print(f"{cmd}: ok{done}")
    return code


# --- params ----------------------------------------------------------------------------------

def params_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="noblink params",
                                 description="Show or change the active strategy's params.")
    sub = ap.add_subparsers(dest="action", required=True, metavar="get|set")
    get = sub.add_parser("get", help="the active strategy's params (from status.json)")
    get.add_argument("--run-dir", type=Path, default=None)
    get.add_argument("--json", action="store_true", help="print the params object as JSON")
    put = sub.add_parser("set", help="reload the current version with these params (a JSON "
                         "object); verified like a reload, rolled back if refused")
    put.add_argument("params", metavar="JSON")
    put.add_argument("--run-dir", type=Path, default=None)
    put.add_argument("--json", action="store_true", help="print the reload record as JSON")
    a = ap.parse_args(argv)
    run_dir = a.run_dir or default_run_dir()
    if a.action == "get":
        return _params_get(run_dir, a.json)
    try:
        params = orjson.loads(a.params)
    except orjson.JSONDecodeError as e:
        print(f"noblink params set: not JSON: {e}", file=sys.stderr)
        return EXIT_USAGE
    code, ack = _send(run_dir, "params", {"params": params}, RELOAD_WAIT_S)
    return _report_reload("params set", run_dir, code, ack, as_json=a.json)


def _params_get(run_dir: Path, as_json: bool) -> int:
    doc = _status(run_dir)
    if doc is None:
        print(f"noblink params get: no status.json in {run_dir} (use --run-dir)",
              file=sys.stderr)
        return EXIT_NO_ANSWER
    _warn_if_stale("params get", doc)
    st = doc.get("strategy") or {}
    params = st.get("params")
    if not isinstance(params, dict):
        print("noblink params get: no strategy is active", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(orjson.dumps(params, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return EXIT_OK
    print(f"params of {str(st.get('sha256'))[:12]} ({st.get('strategy')}):")
    for k in sorted(params):
        print(f"  {k} = {orjson.dumps(params[k]).decode()}")
    if not params:
        print("  (none)")
    return EXIT_OK


def _warn_if_stale(prog: str, doc: dict[str, Any], max_age_s: float = 10.0) -> None:
    try:
        age = time.time() - float(doc.get("written_at", 0))
    except (TypeError, ValueError):
        return
    if age > max_age_s:
        print(f"noblink {prog}: note: status.json is {age:.0f}s old (is the bot running?)",
              file=sys.stderr)


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


# --- positions (the journal, read-only) ------------------------------------------------------

_FINAL = ("REJECTED", "FAILED", "SETTLED")     # position_worker.journal.FINAL_STATES
_COLS = ("client_key, slot, slug, outcome, state, stake, max_price, shares, cost, fees, "
         "payout, pnl, window_start, end_ts, order_id, error, created_ns, settled_ts")


def open_journal(path: Path) -> sqlite3.Connection:
    """The journal, read-only (``mode=ro``: this process can never write it). Raises
    FileNotFoundError when there is none (``mode=ro`` never creates one)."""
    if not path.is_file():
        raise FileNotFoundError(path)
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=5.0)
    con.row_factory = sqlite3.Row
    return con


def read_positions(con: sqlite3.Connection, limit: int) -> dict[str, Any]:
    """Open orders (not final), the ``limit`` most recently settled ones, and totals over
    every settlement."""
    q = ",".join("?" * len(_FINAL))
    open_ = [_position(r) for r in con.execute(
        f"SELECT {_COLS}, NULL AS winner FROM orders WHERE state NOT IN ({q}) "
        "ORDER BY window_start, slot", _FINAL)]
    settled = [_position(r) for r in con.execute(
        f"SELECT {', '.join('o.' + c.strip() for c in _COLS.split(','))}, s.winner "
        "FROM orders o LEFT JOIN settlements s USING (client_key) WHERE o.state = 'SETTLED' "
        "ORDER BY o.settled_ns DESC, o.rowid DESC LIMIT ?", (limit,))]
    n, wins, pnl, fees = con.execute(
        "SELECT count(*), coalesce(sum(win), 0), coalesce(sum(pnl), 0), "
        "coalesce(sum(fees), 0) FROM settlements").fetchone()
    return {"open": open_, "settled": settled,
            "totals": {"open": len(open_), "settled": n, "wins": wins, "losses": n - wins,
                       "pnl": round(pnl, 6), "fees": round(fees, 6),
                       "exposure": round(sum(p["cost"] if p["state"] == "FILLED"
                                             else p["stake"] for p in open_), 6)}}


def _position(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["outcome"] = {0: "Up", 1: "Down"}.get(d["outcome"], d["outcome"])
    d["avg_price"] = round(d["cost"] / d["shares"], 6) if d["shares"] else None
    return d


def positions_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="noblink positions", description="Open orders and "
                                 "recently settled ones with their PnL, from the journal.")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true", help="print {open, settled, totals}")
    ap.add_argument("--limit", type=_positive_int, default=20, metavar="N",
                    help="settled orders to show, newest first (default 20)")
    a = ap.parse_args(argv)
    run_dir = a.run_dir or default_run_dir()
    path = run_dir / "journal.sqlite"
    try:
        con = open_journal(path)
    except FileNotFoundError:
        print(f"noblink positions: no journal in {run_dir} (use --run-dir)", file=sys.stderr)
        return EXIT_NO_ANSWER
    try:
        doc = read_positions(con, a.limit)
    except sqlite3.Error as e:
        print(f"noblink positions: cannot read {path}: {e}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        con.close()
    if a.json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_positions(doc))
    return EXIT_OK


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None else format(v, fmt)


def render_positions(doc: dict[str, Any]) -> str:
    t = doc["totals"]
    out = [f"open ({t['open']}, exposure {t['exposure']:.2f}):"]
    head = f"  {'order':<18} {'market':<28} {'side':<4} {'state':<8} {'stake':>6} " \
        f"{'shares':>7} {'avg':>6} {'cost':>6}"
    out += [head] if doc["open"] else ["  (none)"]
    for p in doc["open"]:
        out.append(f"  {p['client_key']:<18} {p['slug'][:28]:<28} {p['outcome']:<4} "
                   f"{p['state']:<8} {p['stake']:>6.2f} {p['shares']:>7.2f} "
                   f"{_f(p['avg_price'], '.3f'):>6} {p['cost']:>6.2f}")
    out += ["", f"settled (newest {len(doc['settled'])} of {t['settled']}):"]
    out += [f"  {'order':<18} {'market':<28} {'side':<4} {'won':<4} {'shares':>7} {'avg':>6} "
            f"{'cost':>6} {'fees':>5} {'payout':>7} {'pnl':>7}  settled (UTC)"
            ] if doc["settled"] else ["  (none)"]
    for p in doc["settled"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(p["settled_ts"])) \
            if p["settled_ts"] else "-"
        out.append(f"  {p['client_key']:<18} {p['slug'][:28]:<28} {p['outcome']:<4} "
                   f"{'yes' if p['pnl'] > 0 else 'no':<4} {p['shares']:>7.2f} "
                   f"{_f(p['avg_price'], '.3f'):>6} {p['cost']:>6.2f} {p['fees']:>5.2f} "
                   f"{p['payout']:>7.2f} {p['pnl']:>+7.2f}  {when}")
    out += ["", f"all settled: {t['settled']}  wins {t['wins']}  losses {t['losses']}  "
            f"pnl {t['pnl']:+.2f}  fees {t['fees']:.2f}"]
    return "\n".join(out)


# --- logs ------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
# A line's time: LOG_FORMAT's leading asctime ("2025-01-02 03:04:05,678") or a JSON line's
# leading "ts" ({"ts": "2025-01-02T03:04:05.678Z", ...}).
_STAMP_RE = re.compile(rb'(?:\{"ts":\s*")?(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?)')


def tail_lines(path: Path, n: int, block: int = 65536) -> tuple[list[str], int]:
    """The last ``n`` complete lines of ``path`` and the offset right after the last one (a
    partial last line is left for a follower). Reads backwards, never the whole file."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        data, pos = b"", end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    cut = data.rfind(b"\n") + 1                 # a partial last line: not complete yet
    complete, offset = data[:cut], pos + cut
    lines = complete.split(b"\n")[:-1]
    return [ln.decode("utf-8", "replace") for ln in lines[-n:]] if n else [], offset


def _stamp_keys(lines: list[str]) -> list[str]:
    """A sort key per line: its leading timestamp, or the previous line's (a traceback's
    lines stay with the record they belong to)."""
    keys, last = [], ""
    for ln in lines:
        m = _STAMP_RE.match(ln.encode())
        if m:
            last = m.group(1).decode().replace("T", " ").replace(".", ",")
        keys.append(last)
    return keys


def merge_logs(tails: dict[str, list[str]], n: int) -> list[tuple[str, str]]:
    """Interleave several logs' tails by their lines' timestamps (stable: a log without
    timestamps keeps its order); the last ``n`` (name, line) pairs."""
    streams = [[(k, i, name, ln) for i, (k, ln) in enumerate(zip(_stamp_keys(lines), lines,
                                                                   strict=True))]
               for name, lines in sorted(tails.items())]
    merged = [(name, ln) for _k, _i, name, ln in heapq.merge(*streams,
                                                               key=lambda t: t[0])]
    return merged[-n:] if n else []


class _Followed:
    """One log file being followed: complete lines appended since the last read. A file
    replaced under its name (rotation: another inode) is read to its end, then the new one
    from its start; a file that shrank (truncated in place) is read again from its start. As
    with ``tail -F``, a truncated file that grew past the old offset before the next poll
    cannot be told from an appended one."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._f: Any = None
        self._ino = 0
        self._buf = b""

    def _open(self, offset: int) -> bool:
        try:
            f = open(self.path, "rb")         # noqa: SIM115 - kept open between polls
        except FileNotFoundError:
            return False
        self._f, self._ino = f, os.fstat(f.fileno()).st_ino
        self.offset = min(offset, os.fstat(f.fileno()).st_size)
        f.seek(self.offset)
        return True

    def _drain(self) -> list[str]:
        data = self._f.read()
        self.offset += len(data)
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        return [ln.decode("utf-8", "replace") for ln in lines]

    def _flush(self) -> list[str]:
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", "replace")] if rest else []

    def read(self) -> list[str]:
        if self._f is None and not self._open(self.offset):
            return []
        out = self._drain()
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return out                       # renamed away, the new one not there yet
        if st.st_ino != self._ino:
            out += self._drain() + self._flush()
            self.close()
            if self._open(0):
                out += self._drain()
        elif st.st_size < self.offset:
            self._buf = b""
            self._f.seek(0)
            self.offset = 0
            out += self._drain()
        return out

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# The structured, rotated log of each process (core/logs.py); NAME.log only keeps warnings
# and what bypassed logging.
LOG_SUFFIX = ".jsonl"


class LogFollower:
    """Follows ``logs/NAME.jsonl``, or every ``*.jsonl`` in ``logs/`` (picking up new ones from
    their start); :meth:`poll` returns the (name, line) pairs appended since the last call."""

    def __init__(self, logs_dir: Path, name: str | None = None,
                 offsets: dict[str, int] | None = None) -> None:
        self.dir = logs_dir
        self.name = name
        self.files: dict[str, _Followed] = {}
        for n, off in (offsets or {}).items():
            self.files[n] = _Followed(self.dir / f"{n}{LOG_SUFFIX}", off)

    def poll(self) -> list[tuple[str, str]]:
        names = [self.name] if self.name else log_names(self.dir)
        for n in names:
            if n not in self.files:
                self.files[n] = _Followed(self.dir / f"{n}{LOG_SUFFIX}", 0)
        return [(n, ln) for n, f in sorted(self.files.items()) for ln in f.read()]

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def human_line(line: str) -> str:
    """A JSON log line (core/logs.py) as one readable line; anything else as it is."""
    if not line.startswith("{"):
        return line
    try:
        d = orjson.loads(line)
    except orjson.JSONDecodeError:
        return line
    if not isinstance(d, dict) or "msg" not in d:
        return line
    epoch = f" e{d['epoch']}" if d.get("epoch") is not None else ""
    out = (f"{d.get('ts', '')} {str(d.get('level', ''))[:1]} {d.get('role', '')}"
           f"[{d.get('pid', '')}]{epoch} {d.get('logger', '')}: {d['msg']}")
    return out + ("\n" + d["exc"] if d.get("exc") else "")


def log_names(logs_dir: Path) -> list[str]:
    try:
        return sorted(p.name[:-len(LOG_SUFFIX)] for p in logs_dir.iterdir()
                      if p.name.endswith(LOG_SUFFIX) and p.is_file())
    except FileNotFoundError:
        return []


def logs_main(argv: list[str], *, sleep: Callable[[float], None] = time.sleep,
              poll_s: float = 0.25) -> int:
    ap = argparse.ArgumentParser(prog="noblink logs", description="Tail a worker's log, or "
                                 "all of them interleaved (each line prefixed by its name).")
    ap.add_argument("name", nargs="?", metavar="NAME",
                    help="a log in <run dir>/logs/ (e.g. position, feed, strategy0, sim); "
                    "default: all")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("-n", "--lines", type=int, default=20, metavar="N",
                    help="lines to show first (default 20; 0: none)")
    ap.add_argument("-f", "--follow", action="store_true",
                    help="then print lines as they are appended, until Ctrl-C")
    a = ap.parse_args(argv)
    if a.lines < 0:
        ap.error("-n must be >= 0")
    name = a.name[:-len(LOG_SUFFIX)] if a.name and a.name.endswith(LOG_SUFFIX) else a.name
    if name is not None and not _NAME_RE.fullmatch(name):
        ap.error(f"bad log name {a.name!r}")
    run_dir = a.run_dir or default_run_dir()
    logs_dir = run_dir / "logs"
    if not logs_dir.is_dir():
        print(f"noblink logs: no logs in {run_dir} (use --run-dir)", file=sys.stderr)
        return EXIT_NO_ANSWER
    names = [name] if name else log_names(logs_dir)
    if name and not (logs_dir / f"{name}{LOG_SUFFIX}").is_file():
        if not a.follow:
            print(f"noblink logs: no log {name!r} in {logs_dir} (have: "
                  f"{', '.join(log_names(logs_dir)) or 'none'})", file=sys.stderr)
            return EXIT_FAILED
        names = []                           # follow it from its start once it appears
    tails, offsets = {}, {}
    for n in names:
        try:
            tails[n], offsets[n] = tail_lines(logs_dir / f"{n}{LOG_SUFFIX}", a.lines)
        except FileNotFoundError:
            continue
    width = max(map(len, names), default=0)

    def show(n: str, line: str) -> None:
        line = human_line(line)
        print(line if name else f"{n:<{width}} | {line}", flush=a.follow)

    with _quiet_pipe():
        for n, line in merge_logs(tails, a.lines):
            show(n, line)
        if not a.follow:
            return EXIT_OK
        follower = LogFollower(logs_dir, name, offsets)
        try:
            while True:
                for n, line in follower.poll():
                    width = max(width, len(n))
                    show(n, line)
                sleep(poll_s)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            follower.close()
    return EXIT_OK


@contextlib.contextmanager
def _quiet_pipe() -> Iterator[None]:
    """`noblink logs | head`: a reader that goes away ends the output quietly."""
    try:
        yield
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # Python's exit-time flush must not fail
        os.close(devnull)
