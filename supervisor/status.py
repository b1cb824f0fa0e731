"""status.json: what the operator (and Mission Control) reads about the running bot.

Written atomically (tmp + rename) once per supervisor loop, so a reader never sees half a
file. Counters come straight from the workers' shared-memory stats rows (read-only).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from core.config import write_json_atomic
from core.errors import NoblinkError
from position_worker.stats import read_posstats
from state.control import ControlBlock, WorkerSlot
from state.inspect import row_dict
from state.layout import FEED_STATS_DT, POSITION_STATS_DT
from state.run import RunPaths
from state.table import TableReader
from supervisor.workers import Child

_STATS = {"feed": ("feedstats", FEED_STATS_DT, row_dict),
          "positions": ("posstats", POSITION_STATS_DT, read_posstats)}


class StatusWriter:
    def __init__(self, paths: RunPaths, control: ControlBlock) -> None:
        self.paths = paths
        self.control = control
        self._tables: dict[str, TableReader] = {}

    def _stats(self, key: str) -> dict[str, Any] | None:
        seg, dt, decode = _STATS[key]
        t = self._tables.get(key)
        if t is None:
            try:
                t = self._tables[key] = TableReader(self.paths.seg(seg), dt)
            except (NoblinkError, OSError):
                return None
        try:
            return decode(t.read(0))
        except NoblinkError:
            return None

    def snapshot(self, children: dict[str, Child], *, epoch: int, mode: str) -> dict[str, Any]:
        now = time.monotonic_ns()
        cb = self.control
        tick, tick_ms, tick_mono = cb.tick()
        kids = {}
        for name, c in children.items():
            kids[name] = {"pid": c.pid, "state": c.state.name, "restarts": c.restart_count,
                          "last_exit": c.last_exit}
        for slot in WorkerSlot:
            w = cb.worker(slot)
            if w["pid"]:
                name = w["role"]            # "feed", "position", "strategy"
                if name in kids and kids[name]["pid"] == w["pid"]:
                    kids[name]["heartbeat_age_s"] = round((now - w["heartbeat_ns"]) / 1e9, 3)
                    kids[name]["worker_state"] = w["state"]
        return {"run_id": self.paths.run_id, "mode": mode, "pid": os.getpid(),
                "written_at": time.time(), "active_epoch": cb.active_epoch, "epoch": epoch,
                "paused": cb.paused, "tick": tick, "tick_time_ms": tick_ms,
                "tick_age_s": round((now - tick_mono) / 1e9, 3) if tick_mono else None,
                "workers": kids, "feed": self._stats("feed"),
                "positions": self._stats("positions")}

    def write(self, children: dict[str, Child], *, epoch: int, mode: str) -> None:
        doc = self.snapshot(children, epoch=epoch, mode=mode)
        write_json_atomic(self.paths.status_json, doc)

    def close(self) -> None:
        for t in self._tables.values():
            with contextlib.suppress(Exception):
                t.close()
        self._tables = {}
