"""Run the real position worker process from tests, and wait on conditions (never sleeps)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from position_worker.lifecycle import WorkerState
from position_worker.stats import read_posstats
from state.control import ControlBlock, WorkerSlot
from state.layout import POSITION_DT, POSITION_STATS_DT
from state.run import RunPaths
from state.table import TableReader
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


wait_until = wait_for    # the position tests' name for it


class WorkerProc:
    """``python -m position_worker`` on a run dir; output to run_dir/position-N.log."""

    count = 0

    def __init__(self, paths: RunPaths, *args: str) -> None:
        WorkerProc.count += 1
        self.paths = paths
        self.log = paths.run_dir / f"position-{WorkerProc.count}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NOBLINK_LOG": "INFO"}
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "position_worker", "--run-dir", str(paths.run_dir),
                 *args], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))

    def tail(self, n: int = 6000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def wait_running(self, control: ControlBlock, timeout: float = 40.0) -> None:
        def ok() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            w = control.worker(WorkerSlot.POSITION)
            return w["pid"] == self.proc.pid and w["state"] == WorkerState.RUNNING
        wait_until(ok, timeout, "the position worker to run", self.tail)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_positions(paths: RunPaths) -> list[dict[str, Any]]:
    t = TableReader(paths.seg("positions"), POSITION_DT)
    try:
        rows = t.read_all()
    finally:
        t.close()
    out = []
    for r in rows:
        if r["state"]:
            d = {n: r[n].item() for n in POSITION_DT.names if not n.startswith("_")}
            for k in ("slug", "token", "order_id", "client_key"):
                d[k] = bytes(r[k]).rstrip(b"\0").decode()
            out.append(d)
    return out


def read_stats(paths: RunPaths) -> dict[str, Any]:
    t = TableReader(paths.seg("posstats"), POSITION_STATS_DT)
    try:
        return read_posstats(t.read(0))
    finally:
        t.close()


def cleanup_segments(paths: RunPaths) -> None:
    """Remove the worker's segments (a test ends like a final stop)."""
    for name in ("positions", "posstats", "intents0", "intents1"):
        p = paths.seg(name)
        for q in [p, *p.parent.glob(p.name + ".bell*")]:
            if q.exists():
                q.unlink()


class FakeGammaServer:
    """``GET /markets/slug/{slug}``: 404 until the test lists the market."""

    def __init__(self) -> None:
        self.markets: dict[str, dict] = {}
        gamma = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:   # http.server names it so
                slug = self.path.rsplit("/", 1)[-1]
                doc = gamma.markets.get(slug)
                body = orjson.dumps(doc if doc is not None else {"error": "not found"})
                self.send_response(200 if doc is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def resolve(self, slug: str, winner: str) -> None:
        prices = '["1", "0"]' if winner == "up" else '["0", "1"]'
        self.markets[slug] = {"slug": slug, "closed": True, "outcomes": '["Up", "Down"]',
                              "outcomePrices": prices}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
