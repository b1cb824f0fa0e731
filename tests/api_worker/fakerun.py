"""A fake run directory for the API tests: the files the supervisor, the feed and the
position worker would write (status.json, run.json, reloads.jsonl, the journal, the windows
table), written by the test so it can play the bot's part (acknowledge, reload, tick)."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.config import write_json_atomic
from core.markets import CANDLE_SYMBOLS, KLINE_INTERVALS
from feed_worker.windows import row_index
from position_worker.journal import Journal, OrderRow, OrderState
from state.layout import WINDOW_ROW_DT
from state.run import RunPaths
from state.table import TableWriter

RUN_ID = "fa4e0001"

STATUS: dict[str, Any] = {
    "run_id": RUN_ID, "mode": "sim", "pid": 1, "written_at": 0.0, "active_epoch": 1,
    "epoch": 1, "paused": False, "tick": 10, "tick_time_ms": 0, "tick_age_s": 0.2,
    "workers": {
        "feed": {"pid": 11, "state": "RUNNING", "lane": None, "epoch": 0, "restarts": 2,
                 "last_exit": 1, "rss_mb": 50.5, "cpu_pct": 3.5, "heartbeat_age_ms": 120.0,
                 "worker_state": 3},
        "strategy0": {"pid": 12, "state": "RUNNING", "lane": 0, "epoch": 1, "restarts": 0,
                      "last_exit": None, "rss_mb": 60.0, "cpu_pct": 1.0,
                      "heartbeat_age_ms": 80.0, "worker_state": "ACTIVE"}},
    "strategy": {"active_lane": 0, "sha256": "ab" * 32, "strategy": "/s/momentum.py",
                 "params": {"edge": 0.1}, "reload_in_progress": None, "queued_reloads": 0,
                 "probation": None, "failed": None,
                 "lanes": {"0": {"pid": 12, "epoch": 1, "state": "ACTIVE", "active": True,
                                 "lat_p50_ns": 2_500_000,
                                 "eval_hist": {"le_ms": [0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0],
                                               "counts": [0, 3, 5, 1, 0, 0, 0, 1],
                                               "sum_ms": 150.0}},
                           "1": {"pid": 0, "epoch": 0, "state": "EMPTY", "active": False}}},
    "slots": [{"slot": 0, "label": "btc-5m", "slug": "btc-updown-5m-0", "status": "OK",
               "window_end": 300, "up_ask": 0.5, "down_ask": 0.51, "last_decision": None}],
    "feed": {"messages": 100, "reconnects": 1, "gaps_filled": 2, "parse_errors": 3,
             "latency_p50_us": 5.0, "latency_p99_us": 80.0, "connected": 1,
             "last_msg_age_ms": 150.0},
    "positions": {"intents": 5, "orders": 4, "open_positions": 1, "settled": 2, "wins": 1,
                  "losses": 1, "streak": -1, "pnl": 1.25, "fees": 0.2, "exposure": 5.0,
                  "win_rate_100": 0.5, "win_rate_all": 0.5, "rejected": {"DUPLICATE": 1},
                  "open": 1},
    "reloads": [{"id": "r0000001", "trigger": "start", "command_id": None, "result": "ok",
                 "error": None, "from_epoch": 0, "to_epoch": 1,
                 "phases_ms": {"spawn": 300.0, "verify": 10.0}, "handoff_ms": None}],
    "commands": [],
}


class FakeRun:
    def __init__(self, root: Path, *, supervisor_pid: int | None = None) -> None:
        self.run_dir = root / "run"
        self.run_dir.mkdir(mode=0o700)
        self.shm_dir = root / "shm"
        self.shm_dir.mkdir()
        self.paths = RunPaths(self.run_dir, RUN_ID, self.shm_dir)
        self.status = copy.deepcopy(STATUS)
        pid = os.getpid() if supervisor_pid is None else supervisor_pid
        write_json_atomic(self.paths.run_json, {"run_id": RUN_ID, "pid": pid,
                                                "shm_dir": str(self.shm_dir), "mode": "sim"})
        self.write_status()
        self.windows: TableWriter | None = None

    # -- status.json ------------------------------------------------------------------------

    def write_status(self, **changes: Any) -> dict[str, Any]:
        self.status.update(changes)
        self.status["written_at"] = time.time()
        write_json_atomic(self.paths.status_json, self.status)
        return self.status

    def ack(self, cid: str, cmd: str, result: str | None = "ok", error: str | None = None
            ) -> None:
        self.status["commands"] = [*self.status["commands"],
                                   {"id": cid, "cmd": cmd, "result": result, "error": error,
                                    "received_at": time.time(), "done_at": time.time()}]
        self.write_status()

    def add_reload(self, rec: dict[str, Any], *, jsonl: bool = True) -> None:
        self.status["reloads"] = [*self.status["reloads"], rec]
        if jsonl:
            with open(self.run_dir / "reloads.jsonl", "ab") as f:
                f.write(orjson.dumps(rec) + b"\n")
        self.write_status()

    def control_commands(self) -> list[dict[str, Any]]:
        try:
            return orjson.loads((self.run_dir / "control.json").read_bytes())["commands"]
        except FileNotFoundError:
            return []

    # -- the journal ------------------------------------------------------------------------

    def journal(self) -> None:
        j = Journal(self.paths.journal)
        try:
            for i, (state, slot) in enumerate([(OrderState.FILLED, 0), (OrderState.SETTLED, 2),
                                               (OrderState.REJECTED, 4)]):
                j.insert_order(OrderRow(
                    client_key=f"key{i}", idem_key=f"{slot}:{i}", intent_row=i, slot=slot,
                    window_start=300 * i, end_ts=300 * i + 300, slug=f"x-updown-5m-{300 * i}",
                    condition_id="0xc", outcome=i % 2, token=f"t{i}", stake=5.0,
                    max_price=0.9, epoch=1, state=state, request='{"signed": "secret"}',
                    shares=6.0, cost=5.0, fees=0.1))
            j.db.execute("INSERT INTO settlements(client_key, slug, winner, payout, cost, "
                         "fees, pnl, win, settled_ns, settled_ts) VALUES "
                         "('key1', 'x-updown-5m-300', 'down', 6.0, 5.0, 0.1, 0.9, 1, 1, 600.0)")
        finally:
            j.close()

    # -- the feed's windows table ------------------------------------------------------------

    def candles(self, symbol: str = "BTCUSDT", n: int = 100, t0: int = 60_000 * 1000) -> None:
        if self.windows is None:
            self.windows = TableWriter(self.paths.seg("windows"), WINDOW_ROW_DT,
                                       len(CANDLE_SYMBOLS) * len(KLINE_INTERVALS))
        sid = CANDLE_SYMBOLS.index(symbol)
        row = np.zeros((), dtype=WINDOW_ROW_DT)
        row["symbol_id"], row["interval_id"], row["count"] = sid, 0, n
        c = row["candles"]
        for i in range(n):
            c[i]["open_time"] = t0 + i * 60_000
            c[i]["close_time"] = t0 + i * 60_000 + 59_999
            c[i]["close"] = 100.0 + i
            c[i]["closed"] = 1
        row["last_open_time"] = t0 + (n - 1) * 60_000
        self.windows.write(row_index(sid, 0), row)

    def close(self) -> None:
        if self.windows is not None:
            self.windows.unlink()
            self.windows.close()
            self.windows = None
