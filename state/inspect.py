"""The memory inspector: a read-only look at a running system's shared memory.

Every segment is mapped PROT_READ and no reader slot is claimed, so running it any number of
times never alters or removes anything (it cannot: the mapping is read-only, and no resource
tracker is involved). ``scripts/inspect_memory.py`` and ``noblink inspect`` both land here.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.errors import NoblinkError, SnapshotEmptyError
from core.markets import CANDLE_SYMBOLS, KLINE_INTERVALS, SLOTS
from state.control import ControlBlock, WorkerSlot
from state.layout import (
    FEED_STATS_DT,
    INTENT_DT,
    KLINE_DT,
    MARKET_DT,
    N_LANES,
    POSITION_DT,
    POSITION_STATS_DT,
    TICK_DT,
    WINDOW_ROW_DT,
    LaneAck,
    Outcome,
    PositionState,
    SeriesStatus,
    SlotStatus,
)
from state.ring import RingReader
from state.run import SEGMENTS, RunPaths, default_run_dir
from state.segment import pid_alive, scan_segments
from state.snapshot import SnapshotRegion
from state.strings import decode_nul
from state.table import TableReader

RINGS = {"klines": KLINE_DT, "ticks": TICK_DT, "intents0": INTENT_DT, "intents1": INTENT_DT}


def row_dict(row: np.void) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in row.dtype.names or ():
        if name.startswith("_"):
            continue
        v = row[name]
        if isinstance(v, bytes):
            out[name] = decode_nul(v)
        elif isinstance(v, np.ndarray):
            out[name] = v.tolist()
        else:
            out[name] = v.item()
    return out


def _with(opener: Callable[[], Any], body: Callable[[Any], Any]) -> Any:
    obj = opener()
    try:
        return body(obj)
    finally:
        obj.close()


def inspect_run(paths: RunPaths, *, candles: int = 3) -> dict[str, Any]:
    """Everything the inspector shows, as one JSON-able document."""
    now_mono = time.monotonic_ns()
    doc: dict[str, Any] = {"run_id": paths.run_id, "run_dir": str(paths.run_dir),
                           "segments": [], "errors": {}}
    present = {}
    for info in scan_segments(paths.shm_dir, paths.run_id):
        present[info.name] = info
        doc["segments"].append({
            "name": info.name, "path": str(info.path), "owner": SEGMENTS.get(info.name, "?"),
            "header": info.header.as_dict() if info.header else None,
            "writer_pid": info.header.creator_pid if info.header else None,
            "writer_alive": info.creator_alive, "error": info.error})

    def section(name: str, fn: Callable[[], Any]) -> None:
        if name not in present:
            return
        try:
            doc[name] = fn()
        except (NoblinkError, OSError, ValueError) as e:
            doc["errors"][name] = f"{type(e).__name__}: {e}"

    for ring, dt in RINGS.items():
        section(ring, lambda ring=ring, dt=dt: _with(
            lambda: RingReader(paths.seg(ring), dt, readonly=True), _ring_info))
    section("control", lambda: _with(
        lambda: ControlBlock.attach(paths.seg("control"), readonly=True),
        lambda cb: _control_info(cb, now_mono)))
    section("windows", lambda: _with(
        lambda: TableReader(paths.seg("windows"), WINDOW_ROW_DT),
        lambda t: _windows_info(t, candles)))
    section("markets", lambda: _with(lambda: TableReader(paths.seg("markets"), MARKET_DT),
                                     _markets_info))
    section("positions", lambda: _with(lambda: TableReader(paths.seg("positions"), POSITION_DT),
                                       _positions_info))
    section("feedstats", lambda: _with(lambda: TableReader(paths.seg("feedstats"), FEED_STATS_DT),
                                       lambda t: row_dict(t.read(0))))
    section("posstats", lambda: _with(
        lambda: TableReader(paths.seg("posstats"), POSITION_STATS_DT),
        lambda t: row_dict(t.read(0))))
    section("snapshot", lambda: _with(
        lambda: SnapshotRegion.attach(paths.seg("snapshot"), readonly=True), _snapshot_info))
    return doc


def _ring_info(r: RingReader) -> dict[str, Any]:
    head = r.head()
    readers = r.readers()
    for rd in readers:
        rd["lag"] = head - rd["cursor"]
    return {"head": head, "capacity": r.capacity, "records_written": head,
            "oldest_valid": max(0, head - r.capacity + 1), "readers": readers}


def _control_info(cb: ControlBlock, now_mono: int) -> dict[str, Any]:
    tick, tick_ms, tick_mono = cb.tick()
    workers = []
    for slot in WorkerSlot:
        w = cb.worker(slot)
        if w["pid"]:
            w["heartbeat_age_s"] = round((now_mono - w["heartbeat_ns"]) / 1e9, 3)
            workers.append(w)
    epoch = cb.active_epoch
    lanes = []
    for lane in range(N_LANES):
        rec = cb.lane(lane)
        seq, cmd, _args = cb.lane_command(lane)
        lanes.append({"lane": lane, "cmd_seq": seq, "cmd": cmd.name,
                      "ack_seq": int(rec["ack_seq"]), "ack": LaneAck(int(rec["ack"])).name,
                      "gen": int(rec["gen"]), "tick": int(rec["tick"]),
                      "head": int(rec["head"]), "evaluated": int(rec["evaluated"]),
                      "eval_errors": int(rec["eval_errors"]), "skipped": int(rec["skipped"]),
                      "fence": cb.fence(lane), "decided": cb.decided(lane)})
    return {"run_id": cb.run_id, "active_epoch": epoch, "tick": tick, "tick_time_ms": tick_ms,
            "tick_age_s": round((now_mono - tick_mono) / 1e9, 3) if tick_mono else None,
            "paused": cb.paused, "epoch_last_tick": cb.epoch_tick(epoch) if epoch else None,
            "workers": workers, "lanes": lanes}


def _windows_info(t: TableReader, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(t.nrows):
        row = t.read(i)
        count = int(row["count"])
        sym, iv = int(row["symbol_id"]), int(row["interval_id"])
        last = row["candles"][max(0, count - n):count]
        out.append({
            "symbol": CANDLE_SYMBOLS[sym] if sym < len(CANDLE_SYMBOLS) else sym,
            "interval": KLINE_INTERVALS[iv] if iv < len(KLINE_INTERVALS) else iv,
            "count": count, "last_open_time": int(row["last_open_time"]),
            "last": [{k: c[k].item() for k in ("open_time", "open", "high", "low", "close",
                                               "volume", "closed")} for c in last]})
    return out


def _markets_info(t: TableReader) -> list[dict[str, Any]]:
    out = []
    for row in t.read_all():
        d = row_dict(row)
        d["label"] = SLOTS[d["slot"]].label if d["slot"] < len(SLOTS) else "?"
        d["status"] = SlotStatus(d["status"]).name
        d["next_status"] = SlotStatus(d["next_status"]).name
        d["series"] = SeriesStatus(d["series"]).name
        out.append(d)
    return out


def _positions_info(t: TableReader) -> list[dict[str, Any]]:
    out = []
    for row in t.read_all():
        if int(row["state"]) == PositionState.EMPTY:
            continue
        d = row_dict(row)
        d["state"] = PositionState(d["state"]).name
        d["outcome"] = Outcome(d["outcome"]).name
        out.append(d)
    return out


def _snapshot_info(s: SnapshotRegion) -> dict[str, Any]:
    info = s.status()
    try:
        snap = s.read()
        info["newest"] = {"generation": snap.generation, "size": len(snap.data),
                          "schema_version": snap.schema_version, "epoch": snap.epoch,
                          "crc_ok": True}
    except SnapshotEmptyError:
        info["newest"] = None
    return info


# --- text rendering ----------------------------------------------------------------------

def render(doc: dict[str, Any]) -> str:
    lines = [f"noblink run {doc['run_id']}  ({doc['run_dir']})", "", "SEGMENTS"]
    for s in doc["segments"]:
        h = s["header"] or {}
        alive = "alive" if s["writer_alive"] else "DEAD"
        lines.append(f"  {s['name']:<10} {h.get('size', '?'):>10} B  kind={h.get('kind', '?'):<8} "
                     f"v{h.get('layout_version', '?')} hash={h.get('layout_hash', '?')} "
                     f"writer={s['writer_pid']} ({alive}) {s['error'] or ''}")
    c = doc.get("control")
    if c:
        lines += ["", f"CONTROL  epoch={c['active_epoch']}  tick={c['tick']}  "
                      f"tick_age={c['tick_age_s']}s  paused={c['paused']}"]
        for w in c["workers"]:
            alive = "alive" if w["alive"] else "DEAD"
            lines.append(f"  {w['slot']:<16} pid={w['pid']:<7} {alive:<5}"
                         f" state={w['state']} epoch={w['epoch']} lane={w['lane']}"
                         f" heartbeat_age={w['heartbeat_age_s']}s {w['label']}")
        for ln in c.get("lanes", []):
            lines.append(f"  lane {ln['lane']}: cmd #{ln['cmd_seq']} {ln['cmd']}  ack "
                         f"#{ln['ack_seq']} {ln['ack']}  gen={ln['gen']} tick={ln['tick']} "
                         f"head={ln['head']} decided={ln['decided']} fence={ln['fence']} "
                         f"evaluated={ln['evaluated']} errors={ln['eval_errors']} "
                         f"skipped={ln['skipped']}")
    for ring in RINGS:
        r = doc.get(ring)
        if r:
            lines += ["", f"RING {ring}  head={r['head']}  capacity={r['capacity']}  "
                          f"written={r['records_written']}"]
            for rd in r["readers"]:
                lines.append(f"  reader {rd['name'] or rd['index']:<14} pid={rd['pid']:<7} "
                             f"lag={rd['lag']} lapped={rd['lapped']} lost={rd['lost']}"
                             f"{'' if rd['alive'] else ' DEAD'}")
    if doc.get("windows"):
        lines += ["", "WINDOWS (closed candles)"]
        for w in doc["windows"]:
            last = w["last"][-1] if w["last"] else None
            tail = (f"last t={last['open_time']} o={last['open']:.6g} c={last['close']:.6g}"
                    if last else "empty")
            lines.append(f"  {w['symbol']:<9} {w['interval']:<4} count={w['count']:<4} {tail}")
    if doc.get("markets"):
        lines += ["", "SLOTS"]
        for m in doc["markets"]:
            lines.append(f"  {m['label']:<8} {m['status']:<10} {m['slug']:<28} "
                         f"up {m['up_bid']:.2f}/{m['up_ask']:.2f}  "
                         f"down {m['down_bid']:.2f}/{m['down_ask']:.2f}  "
                         f"accepting={m['accepting']} next={m['next_status']}")
    if doc.get("positions"):
        lines += ["", "POSITIONS"]
        for p in doc["positions"]:
            lines.append(f"  {p['slug']:<28} {p['outcome']:<4} {p['state']:<8} "
                         f"shares={p['shares']:.2f} avg={p['avg_price']:.3f} pnl={p['pnl']:.2f}")
    for name in ("feedstats", "posstats"):
        if doc.get(name):
            lines += ["", name.upper(), "  " + "  ".join(f"{k}={v}" for k, v in doc[name].items())]
    s = doc.get("snapshot")
    if s:
        newest = s["newest"]
        lines += ["", "SNAPSHOT  " + (f"generation={newest['generation']} size={newest['size']} "
                                      f"schema={newest['schema_version']} crc=OK"
                                      if newest else "empty")]
    for name, err in doc["errors"].items():
        lines.append(f"ERROR {name}: {err}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="noblink inspect", description=__doc__)
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="run directory (default: $NOBLINK_RUN_DIR, else "
                    "$XDG_STATE_HOME/noblink, else ~/.local/state/noblink)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--watch", nargs="?", const=1.0, type=float, metavar="SECONDS",
                    help="refresh every SECONDS (default 1) until Ctrl-C")
    ap.add_argument("--candles", type=int, default=3, help="last N candles per series")
    args = ap.parse_args(argv)
    run_dir = args.run_dir or default_run_dir()
    try:
        paths, run = RunPaths.load(run_dir)
    except (FileNotFoundError, ValueError, KeyError):
        print(f"no noblink system running (no run.json in {run_dir})", file=sys.stderr)
        return 1
    segments = scan_segments(paths.shm_dir, paths.run_id)
    if not segments:
        state = "alive" if pid_alive(int(run.get("pid", 0))) else "dead"
        print(f"no noblink system running: run {paths.run_id} in {run_dir} has no segments "
              f"(its pid {run.get('pid')} is {state})", file=sys.stderr)
        return 1
    try:
        while True:
            doc = inspect_run(paths, candles=args.candles)
            doc["run_alive"] = pid_alive(int(run.get("pid", 0)))
            if args.json:
                sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
            else:
                if args.watch:
                    sys.stdout.write("\x1b[2J\x1b[H")
                sys.stdout.write(render(doc) + "\n")
                if not doc["run_alive"]:
                    sys.stdout.write(f"\nwarning: run {paths.run_id}'s process "
                                     f"{run.get('pid')} is dead: these segments are stale\n")
            sys.stdout.flush()
            if not args.watch:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
