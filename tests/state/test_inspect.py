"""The memory inspector is read-only: running it never alters or removes a segment."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson

from state.control import ControlBlock, WorkerSlot
from state.layout import KLINE_DT, MARKET_DT, WINDOW_ROW_DT, WorkerRole
from state.ring import RingReader, RingWriter
from state.run import RunPaths
from state.snapshot import SnapshotRegion
from state.table import TableWriter

ROOT = Path(__file__).resolve().parents[2]


def inspect(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "inspect_memory.py"),
                           "--run-dir", str(run_dir), *args],
                          capture_output=True, text=True, timeout=60)


def fingerprint(paths: RunPaths) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(paths.shm_dir.glob(f"noblink-{paths.run_id}-*")) if p.is_file()}


def test_inspector_shows_a_run_and_changes_nothing(run_paths: RunPaths,
                                                   control: ControlBlock) -> None:
    control.register(WorkerSlot.FEED, WorkerRole.FEED, label="feed", now_ns=1)
    control.set_active_epoch(4)
    ring = RingWriter(run_paths.seg("klines"), KLINE_DT, 64)
    reader = RingReader(run_paths.seg("klines"), KLINE_DT, name="strategy0", start="oldest")
    windows = TableWriter(run_paths.seg("windows"), WINDOW_ROW_DT, 24)
    markets = TableWriter(run_paths.seg("markets"), MARKET_DT, 16)
    snap = SnapshotRegion.create(run_paths.seg("snapshot"), 4096)
    try:
        rec = np.zeros((), KLINE_DT)
        for i in range(100):                     # laps the 64-slot ring
            rec["open_time"] = i * 60_000
            ring.publish(rec)
        with windows.update(0) as row:
            row["count"] = 2
            row["candles"][0]["close"], row["candles"][1]["close"] = 1.5, 2.5
        snap.write(b"state" * 10, schema_version=5, epoch=4)
        before = fingerprint(run_paths)
        for _ in range(3):
            out = inspect(run_paths.run_dir, "--json")
            assert out.returncode == 0, out.stderr
        text = inspect(run_paths.run_dir)
        assert text.returncode == 0 and "RING klines  head=100" in text.stdout
        assert fingerprint(run_paths) == before
        doc = orjson.loads(out.stdout)
        assert doc["control"]["active_epoch"] == 4
        assert doc["klines"]["head"] == 100 and doc["klines"]["capacity"] == 64
        assert doc["klines"]["readers"][0]["name"] == "strategy0"
        assert doc["klines"]["readers"][0]["lag"] == 100
        assert doc["windows"][0]["last"][-1]["close"] == 2.5
        assert doc["snapshot"]["newest"]["generation"] == 1
        assert doc["snapshot"]["newest"]["schema_version"] == 5
        names = {s["name"] for s in doc["segments"]}
        assert names == {"control", "klines", "windows", "markets", "snapshot"}
        assert all(s["writer_alive"] for s in doc["segments"])
    finally:
        reader.close()
        for r in (ring, windows, markets, snap):
            r.unlink()
            r.close()


def test_no_system_running_exits_1(tmp_path: Path) -> None:
    out = inspect(tmp_path / "nothing-here")
    assert out.returncode == 1
    assert "no noblink system running" in out.stderr


def test_run_without_segments_exits_1(run_paths: RunPaths) -> None:
    run_paths.write_run_json(mode="test")
    out = inspect(run_paths.run_dir)
    assert out.returncode == 1 and "has no segments" in out.stderr
