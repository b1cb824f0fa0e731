"""Reaction time: tick published -> every slot evaluated -> intent sent -> decision journaled.

Used by bench/run_all.py on a running bot (60x). The bench reloads the bot's strategy to
bench/strategies/every_window.py (an intent for every slot on the first tick its window is
listed and accepting, the tick number in the intent's reason), lets it trade for
``seconds``, then reads:

- the tick records' ``mono_ns`` (CLOCK_MONOTONIC, taken by the scanner when it publishes the
  tick) from the tick ring, attached read-only and polled every 0.5 s (the ring holds 256
  ticks, 21 s at 60x);
- the journal's ``intents`` rows of the new epoch (SQLite, read-only): ``created_ns`` (the
  strategy worker, when it built the intent) and ``received_ns`` (the position worker, when
  it wrote the decision row, accepted or rejected, inside the transaction that is then
  committed; the order is sent after that, so the exchange round trip is not in it). Both
  are ``time.time_ns()`` (CLOCK_REALTIME).

The two clocks are bridged by their offset, ``time.time_ns() - time.monotonic_ns()``, taken
in the bench at the start and at the end (each the sample with the tightest bracket of
monotonic reads, out of 50); the drift between the two is reported and stays far below the
latencies measured. reaction = received_ns - offset - tick mono_ns, for every intent whose
tick came after the new strategy's first one (the first tick after a reload proposes every
open window at once, which is not a new window). ``first_per_tick_ms`` keeps only the first
decision of each tick: intents of one tick are decided one after the other, each with its
own fsynced commit, so the later ones in a batch of 8 or 16 wait for the earlier ones:
``decision_spacing_ms`` is the time between two consecutive decisions of one tick, and
``commit_cost_ms`` what a single fsynced SQLite commit costs on the journal's filesystem
(a scratch database beside it, measured after the trading).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.reload import ACK_TIMEOUT_S, BenchError, Bot, summary
from state.layout import TICK_DT
from state.ring import RingReader
from state.run import RunPaths

STRATEGY = Path(__file__).resolve().parent / "strategies" / "every_window.py"
RING_POLL_S = 0.5


def clock_offset_ns(samples: int = 50) -> tuple[int, int]:
    """(realtime - monotonic in ns, uncertainty in ns): the tightest of ``samples``."""
    best = None
    for _ in range(samples):
        a = time.monotonic_ns()
        w = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[1]:
            best = (w - (a + b) // 2, b - a)
    assert best is not None
    return best


def _journal_rows(path: Path, epoch: int) -> list[tuple[int, int, int, int, str, int]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return db.execute("SELECT seq, created_ns, received_ns, slot, reason, accepted FROM "
                          "intents WHERE epoch=? ORDER BY received_ns", (epoch,)).fetchall()
    finally:
        db.close()


def commit_cost_ms(where: Path, n: int = 30) -> dict[str, Any]:
    """What one journal commit costs on this filesystem: a scratch SQLite database next to
    the journal, WAL + synchronous=FULL as position_worker/journal.py opens it, ``n``
    single-row transactions, each timed (BEGIN IMMEDIATE ... COMMIT)."""
    path = where / "bench-commit-cost.sqlite"
    times = []
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b TEXT)")
        for i in range(n):
            t0 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t(a, b) VALUES(?, ?)", (i, "x" * 100))
            db.execute("COMMIT")
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return summary(times, 50, 99)


def measure(bot: Bot, seconds: float, say: Callable[[str], None]) -> dict[str, Any]:
    assert bot.run_id is not None
    ring = RingReader(RunPaths(bot.run_dir, bot.run_id).seg("ticks"), TICK_DT,
                      start="newest", readonly=True)
    ticks: dict[int, int] = {}
    lost = 0

    def poll() -> None:
        nonlocal lost
        batch = ring.poll()
        lost += batch.lost
        for rec in batch.records:
            ticks[int(rec["tick"])] = int(rec["mono_ns"])

    try:
        off0, unc0 = clock_offset_ns()
        cid, ack, wall_ms = bot.command({"strategy": str(STRATEGY)}, ACK_TIMEOUT_S)
        if ack is None or ack.get("result") != "ok":
            raise BenchError(f"reaction: the reload to {STRATEGY.name} failed: {ack}")
        rec = bot.records().get(cid) or {}
        epoch, first_tick = rec.get("to_epoch"), rec.get("first_tick_new")
        if not isinstance(epoch, int) or not isinstance(first_tick, int):
            raise BenchError(f"reaction: no epoch / first tick in the reload record: {rec}")
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            poll()
            bot.check_alive()
            time.sleep(RING_POLL_S)
        time.sleep(0.5)                 # the last decisions of the last tick
        poll()
        off1, unc1 = clock_offset_ns()
    finally:
        ring.close()
    rows = _journal_rows(RunPaths(bot.run_dir, bot.run_id).journal, epoch)
    react, strat, first = [], [], {}
    spacing: list[float] = []
    first_created: dict[int, float] = {}
    prev: dict[int, int] = {}
    unmatched = 0
    accepted = 0
    for _seq, created_ns, received_ns, _slot, reason, acc in rows:
        try:
            tick = int(str(reason).lstrip("t"))
        except ValueError:
            unmatched += 1
            continue
        if tick <= first_tick:
            continue
        mono = ticks.get(tick)
        if mono is None:
            unmatched += 1
            continue
        r_ms = (received_ns - off0 - mono) / 1e6
        react.append(r_ms)
        strat.append((created_ns - off0 - mono) / 1e6)
        first_created[tick] = min(first_created.get(tick, strat[-1]), strat[-1])
        first[tick] = min(first.get(tick, r_ms), r_ms)
        if tick in prev:               # the previous decision of the same tick
            spacing.append((received_ns - prev[tick]) / 1e6)
        prev[tick] = received_ns
        accepted += int(acc)
    if not react:
        raise BenchError(f"reaction: no journaled intent matched a tick ({len(rows)} rows)")
    s = summary(react, 50, 99)
    batch = _batch_sizes(rows, first_tick)
    return {
        "p50": s["p50"], "p99": s["p99"], "max": s["max"], "n": s["n"],
        "first_per_tick_ms": summary(list(first.values()), 50, 99),
        "tick_to_intent_created_ms": summary(strat, 50, 99),
        "tick_to_first_intent_created_ms": summary(list(first_created.values()), 50, 99),
        "decision_spacing_ms": summary(spacing, 50, 99),
        "commit_cost_ms": commit_cost_ms(bot.run_dir),
        "accepted": accepted, "rejected": len(react) - accepted, "unmatched": unmatched,
        "batch_sizes": batch, "ticks_read": len(ticks), "ticks_lost": lost,
        "clock_offset_drift_us": round((off1 - off0) / 1e3, 1),
        "clock_offset_uncertainty_us": round(max(unc0, unc1) / 1e3, 1),
        "epoch": epoch, "first_tick": first_tick, "seconds": seconds,
        "reload_ack_ms": round(wall_ms, 1),
        "method": "every_window.py strategy; tick mono_ns (tick ring) -> journal received_ns "
                  "(decision row written, before its fsynced COMMIT), realtime converted with "
                  "the bench's realtime-monotonic offset; all intents after the first tick",
    }


def _batch_sizes(rows: list[tuple], first_tick: int) -> dict[str, int]:
    """How many intents each tick produced: {size: ticks}."""
    per: dict[int, int] = {}
    for row in rows:
        reason = str(row[4])
        if reason.startswith("t") and reason[1:].isdigit() and int(reason[1:]) > first_tick:
            per[int(reason[1:])] = per.get(int(reason[1:]), 0) + 1
    out: dict[str, int] = {}
    for n in per.values():
        out[str(n)] = out.get(str(n), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))
