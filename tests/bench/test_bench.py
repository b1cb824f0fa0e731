"""`make bench`, briefly: every phase runs against real bots and the results file keeps its keys.

The numbers are not checked against the targets here (they belong to `make bench` on a quiet
machine: docs/benchmarks.md); what is checked is what a regression would break: each phase
ran, every stable key of the issue has a value, the hot reloads missed and duplicated no tick,
the targets table judged every target, and the bench left no bot, process or segment behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[2]

KEYS = (
    "reload.missed_ticks", "reload.duplicate_ticks", "reload.handoff_ms.p50",
    "reload.handoff_ms.p99", "reload.handoff_ms.max", "reload.command_to_active_ms.p50",
    "reload.command_to_active_ms.p99", "reload.first_tick_extra_ms.p99",
    "reload.verify_ms.p50", "reload.rollback_ms.p50",
    "cold_restart.first_eval_ms", "cold_restart.missed_ticks",
    "strategy_restart_no_handoff.first_eval_ms", "strategy_restart_no_handoff.missed_ticks",
    "strategy_restart_no_handoff.history_lost", "strategy_restart_no_handoff.decisions_changed",
    "inprocess_reload.loop_blocked_ms", "inprocess_reload.feed_msgs_delayed",
    "inprocess_reload.stale_references",
    "reaction_ms.p50", "reaction_ms.p99", "tick.p50_ms", "tick.p99_ms",
    "footprint.rss_mb_total", "footprint.shm_bytes",
    *(f"ring.{t}.{k}" for t in ("shm", "queue", "pipe") for k in ("p50_us", "p99_us",
                                                                   "msgs_per_s")),
    "feed.p50_us", "feed.p99_us",
)
PER_PROCESS = ("rss_mb", "idle_cpu_pct", "fds")
WORKERS = ("supervisor", "feed", "position", "strategy0")


def _get(doc: dict, path: str) -> object:
    for k in path.split("."):
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def test_quick_bench_runs_every_phase_and_keeps_the_keys(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--results-dir",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    doc = orjson.loads((tmp_path / "latest.json").read_bytes())
    assert doc["errors"] == {}, doc["errors"]
    missing = [k for k in KEYS if not isinstance(_get(doc, k), int | float)]
    assert not missing, f"keys without a number: {missing}"
    for group in PER_PROCESS:
        for w in WORKERS:
            assert isinstance(_get(doc, f"footprint.{group}.{w}"), int | float), (group, w)
    assert doc["reload"]["missed_ticks"] == 0 and doc["reload"]["duplicate_ticks"] == 0
    assert doc["cold_restart"]["missed_ticks"] > 0          # what a hot reload avoids
    verdicts = {name: (t["met"], t["status"]) for name, t in doc["targets"].items()}
    assert len(verdicts) >= 8, verdicts
    for name, (met, status) in verdicts.items():           # judged, and shown in the table
        assert status == ("MET" if met else "MISSED"), (name, met, status)
        assert any(line.startswith(name) and status in line for line in r.stdout.splitlines())
    c = doc["cleanup"]
    assert not c["leftover_segments"] and not c["stray_processes"], c
    for f in ("ring.json", "feed.json", "reload.json"):
        assert (tmp_path / f).is_file(), f
