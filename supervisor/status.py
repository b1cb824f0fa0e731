"""status.json: what the operator (and Mission Control) reads about the running bot.

Written atomically (tmp + rename, 0600) by the supervisor's loop at most four times a second
and at once after a reload or a command finished, so a reader never sees half a file.
Counters come straight from the workers' shared-memory rows (read-only). Keys:

    mode, run_id, pid, written_at, epoch, active_epoch, paused, tick, tick_time_ms, tick_age_s,
    workers   {name: pid, state, lane, epoch, restarts, last_exit, rss_mb, cpu_pct,
                     heartbeat_age_ms, worker_state}
    strategy  {active_lane, sha256, strategy, params, probation, reload_in_progress, lanes}
    slots     [{slot, label, slug, status, window_end, up_ask, down_ask, last_decision}]
    positions {open, settled, wins, losses, win_rate_100, pnl, fees, ...}
    feed      {connected, reconnects, gaps_filled, last_msg_age_ms, ...}
    reloads   the last 50 reload records, newest last
    commands  the last 100 command acknowledgements, newest last
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import psutil

from core.config import write_json_atomic
from core.errors import NoblinkError
from core.markets import SLOTS
from feed_worker.lifecycle import ConnState
from position_worker.stats import read_posstats
from state.control import ControlBlock, WorkerSlot
from state.inspect import row_dict
from state.layout import (
    DECISION_HISTORY,
    FEED_STATS_DT,
    MARKET_DT,
    POSITION_STATS_DT,
    Decided,
    RefStatus,
    SeriesStatus,
    SlotStatus,
    WorkerRole,
)
from state.run import RunPaths
from state.strings import decode_nul
from state.table import TableReader
from supervisor.workers import Child

if TYPE_CHECKING:
    from supervisor.commands import CommandDesk
    from supervisor.lanes import Lanes

_TABLES = {"feed": ("feedstats", FEED_STATS_DT), "positions": ("posstats", POSITION_STATS_DT),
           "markets": ("markets", MARKET_DT)}


class StatusWriter:
    def __init__(self, paths: RunPaths, control: ControlBlock) -> None:
        self.paths = paths
        self.control = control
        self._tables: dict[str, TableReader] = {}
        self._procs: dict[int, psutil.Process] = {}

    def _table(self, key: str) -> TableReader | None:
        t = self._tables.get(key)
        if t is None:
            seg, dt = _TABLES[key]
            try:
                t = self._tables[key] = TableReader(self.paths.seg(seg), dt)
            except (NoblinkError, OSError):
                return None
        return t

    def _row(self, key: str, i: int = 0) -> np.void | None:
        t = self._table(key)
        if t is None:
            return None
        try:
            return t.read(i)
        except NoblinkError:
            return None

    def _proc(self, pid: int) -> dict[str, Any]:
        """RSS and CPU of one process (cpu_pct is since the previous status write)."""
        if not pid:
            return {}
        p = self._procs.get(pid)
        try:
            if p is None:
                p = self._procs[pid] = psutil.Process(pid)
                p.cpu_percent(None)
            with p.oneshot():
                return {"rss_mb": round(p.memory_info().rss / 2**20, 1),
                        "cpu_pct": round(p.cpu_percent(None), 1)}
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._procs.pop(pid, None)
            return {}

    def _workers(self, children: dict[str, Child], lanes: Lanes, now: int) -> dict[str, Any]:
        slots = {w["pid"]: w for w in (self.control.worker(s) for s in WorkerSlot) if w["pid"]}
        out: dict[str, Any] = {}
        kids: list[tuple[str, Child | None, int | None, int]] = [
            (n, c, None, 0) for n, c in children.items()]
        kids += [(f"strategy{ln}", c, ln, lanes.epochs[ln])
                 for ln, c in enumerate(lanes.children)]
        for name, c, lane, epoch in kids:
            pid = c.pid if c is not None and c.proc is not None and c.proc.poll() is None else 0
            d: dict[str, Any] = {"pid": pid, "state": c.state.name if c else "EMPTY",
                                 "lane": lane, "epoch": epoch,
                                 "restarts": c.restart_count if c else 0,
                                 "last_exit": c.last_exit if c else None}
            w = slots.get(pid)
            if w is not None:
                d["heartbeat_age_ms"] = round((now - w["heartbeat_ns"]) / 1e6, 1)
                d["worker_state"] = w["state"]
                if WorkerRole[w["role"].upper()] == WorkerRole.STRATEGY:
                    d["worker_state"] = lanes.status()["lanes"][str(lane)]["state"]
            d.update(self._proc(pid))
            out[name] = d
        return out

    def _slots(self, lanes: Lanes) -> list[dict[str, Any]]:
        t = self._table("markets")
        if t is None:
            return []
        decisions: dict[int, str] = {}
        if lanes.active is not None:
            rec = self.control.lane(lanes.active)
            newest = int(np.argmax(rec["dec_ticks"])) if rec["dec_ticks"].any() else None
            if newest is not None and newest < DECISION_HISTORY:
                decisions = {i: Decided(int(c)).name for i, c in
                             enumerate(rec["decisions"][newest]) if int(c)}
        out = []
        for s in SLOTS:
            try:
                m = t.read(s.index)
            except NoblinkError:
                continue
            out.append({"slot": s.index, "label": s.label,
                        "slug": decode_nul(m["slug"]),
                        "status": SlotStatus(int(m["status"])).name,
                        # the series itself (asset x window) is listed on Gamma, or not
                        "series": SeriesStatus(int(m["series"])).name,
                        "window_end": int(m["end_ts"]),
                        "up_ask": _num(m["up_ask"]), "down_ask": _num(m["down_ask"]),
                        "reference": _num(m["ref_price"]),
                        "reference_status": RefStatus(int(m["ref_status"])).name,
                        "price_to_beat": _num(m["price_to_beat"]),
                        "last_decision": decisions.get(s.index)})
        return out

    def snapshot(self, children: dict[str, Child], lanes: Lanes, desk: CommandDesk, *,
                 epoch: int, mode: str) -> dict[str, Any]:
        now = time.monotonic_ns()
        cb = self.control
        tick, tick_ms, tick_mono = cb.tick()
        feed_row = self._row("feed")
        feed = row_dict(feed_row) if feed_row is not None else None
        if feed is not None:
            last = int(feed.get("last_message_ns") or 0)
            feed["last_msg_age_ms"] = round((now - last) / 1e6, 1) if last else None
            feed["rtds"] = _rtds_health(feed, now)
        pos_row = self._row("positions")
        positions = read_posstats(pos_row) if pos_row is not None else None
        if positions is not None:
            positions["open"] = positions.get("open_positions")
        return {"run_id": self.paths.run_id, "mode": mode, "pid": os.getpid(),
                "written_at": time.time(), "active_epoch": cb.active_epoch, "epoch": epoch,
                "paused": cb.paused, "killed": cb.killed, "kill_confirmed": cb.kill_confirmed,
                "api": _api_info(self.paths), "tick": tick, "tick_time_ms": tick_ms,
                "tick_age_s": round((now - tick_mono) / 1e9, 3) if tick_mono else None,
                "workers": self._workers(children, lanes, now), "strategy": lanes.status(),
                "slots": self._slots(lanes), "feed": feed, "positions": positions,
                "reloads": list(lanes.history), "commands": desk.records()}

    def write(self, children: dict[str, Child], lanes: Lanes, desk: CommandDesk, *,
              epoch: int, mode: str) -> dict[str, Any]:
        doc = self.snapshot(children, lanes, desk, epoch=epoch, mode=mode)
        write_json_atomic(self.paths.status_json, doc)
        return doc

    def close(self) -> None:
        for t in self._tables.values():
            with contextlib.suppress(Exception):
                t.close()
        self._tables = {}


def _api_info(paths: RunPaths) -> dict[str, Any] | None:
    """Where the HTTP API listens (api.json, written by api_worker), or None."""
    try:
        doc = orjson.loads((paths.run_dir / "api.json").read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    return {k: doc.get(k) for k in ("url", "token_file", "remote", "public_read")}


def _rtds_health(feed: dict[str, Any], now_ns: int) -> dict[str, Any]:
    """The RTDS (Chainlink reference) stream at a glance: UP, STALLED or DOWN, and why."""
    last = int(feed.get("rtds_last_message_ns") or 0)
    try:
        conn = ConnState(int(feed.get("rtds_state") or 0)).name
    except ValueError:
        conn = str(feed.get("rtds_state"))
    health = "UP" if feed.get("rtds_connected") else "DOWN"
    if conn == "STALLED":
        health = "STALLED"
    return {"health": health, "connection": conn,
            "last_msg_age_ms": round((now_ns - last) / 1e6, 1) if last else None,
            **{k: feed.get(f"rtds_{k}") for k in (
                "updates", "messages", "reconnects", "parse_errors", "stale_episodes",
                "latency_p50_us", "latency_p99_us")}}


def _num(v: Any) -> float | None:
    f = float(v)
    return None if f != f else round(f, 4)
