"""Record a running bot's tick views, and time the default strategy's 16-slot evaluation.

Used by bench/run_all.py (``tick`` and ``strategy_restart_no_handoff``). The recorder reads
the bot's shared memory exactly as a strategy worker does (strategy_worker/views.py): the
tick ring (attached read-only: no reader slot, no bell, so the bot's producers never see
it) and the feed's windows table. For every new tick record it builds that tick's
``SlotView`` list with ``StateViews.slot_views(rec, tick_time_ms / 1000)`` (markets from the
tick record itself, candles cut at the tick's time) and evaluates it with a fresh
``Strategy`` of strategies/momentum.py, loaded like the worker loads it
(``strategy_worker.loader.load_strategy``). The views are kept (they are immutable copies:
``StateViews`` replaces its cached candle arrays, it never writes into them), so the same
sequence can be evaluated again later, in process.

``tick_ms`` per tick is the worker's cycle without its bookkeeping: building the views from
shared memory plus ``evaluate`` on every listed slot (perf_counter around both). It runs in
the bench process, beside the bot, polled every ``POLL_S``: no wake-up is in it. Ticks on
which a 1m candle had closed since the previous one (its windows rows changed, so their
candles are copied out again) are summarised apart from the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.layout import TICK_DT
from state.ring import RingReader
from state.run import RunPaths
from strategy_worker.api import SlotView
from strategy_worker.loader import load_strategy
from strategy_worker.views import StateViews

ROOT = Path(__file__).resolve().parent.parent
STRATEGY = ROOT / "strategies" / "momentum.py"
POLL_S = 0.02


@dataclass
class Recorded:
    """One tick as the recorder saw it."""

    tick: int
    tick_time_ms: int
    mono_ns: int
    views: list[SlotView]
    tick_ms: float                        # views from shared memory + evaluate, all slots
    eval_ms: float                        # evaluate alone, all slots
    fresh: bool = False                   # a closed candle arrived since the previous tick


@dataclass
class Recording:
    ticks: list[Recorded] = field(default_factory=list)
    lost: int = 0                         # tick records overwritten before we read them
    gaps: int = 0                         # tick numbers never seen (lost or skipped)
    seconds: float = 0.0


def record(run_dir: Path, run_id: str, seconds: float,
           strategy_path: Path = STRATEGY) -> Recording:
    """Follow the bot in ``run_dir`` for ``seconds``, from its next tick on."""
    paths = RunPaths(Path(run_dir), run_id)
    ring = RingReader(paths.seg("ticks"), TICK_DT, start="newest", readonly=True)
    views = StateViews(paths)
    strat = load_strategy(strategy_path, {}).instance
    out = Recording()
    last_closed: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            batch = ring.poll()
            out.lost += batch.lost
            for rec in batch.records:
                a = time.perf_counter()
                vs = views.slot_views(rec, int(rec["tick_time_ms"]) / 1000)
                b = time.perf_counter()
                for v in vs:
                    strat.evaluate(v)
                c = time.perf_counter()
                tick = int(rec["tick"])
                if out.ticks and tick != out.ticks[-1].tick + 1:
                    out.gaps += max(0, tick - out.ticks[-1].tick - 1)
                newest = {v.asset: int(v.candles["1m"]["close_time"][-1])
                          for v in vs if len(v.candles.get("1m", ()))}
                out.ticks.append(Recorded(tick, int(rec["tick_time_ms"]), int(rec["mono_ns"]),
                                          vs, (c - a) * 1000, (c - b) * 1000,
                                          fresh=newest != last_closed))
                last_closed = newest
            time.sleep(POLL_S)
    finally:
        out.seconds = round(time.monotonic() - t0, 2)
        views.close()
        ring.close()
    return out


def tick_summary(rec: Recording) -> dict[str, Any]:
    """``tick.{p50_ms, p99_ms}`` (views + evaluate) and the evaluate-only part."""
    from bench.reload import summary

    full = [t.tick_ms for t in rec.ticks]
    ev = [t.eval_ms for t in rec.ticks]
    slots = [len(t.views) for t in rec.ticks]
    s_full = summary(full, 50, 99)
    return {"p50_ms": s_full["p50"], "p99_ms": s_full["p99"], "max_ms": s_full["max"],
            "n": s_full["n"], "evaluate_only_ms": summary(ev, 50, 99),
            "candle_close_ticks_ms": summary([t.tick_ms for t in rec.ticks if t.fresh], 50, 99),
            "other_ticks_ms": summary([t.tick_ms for t in rec.ticks if not t.fresh], 50, 99),
            "slots_per_tick": {"min": min(slots, default=0), "max": max(slots, default=0)},
            "method": "in the bench process beside the running bot (60x): StateViews."
                      "slot_views from shared memory + Strategy.evaluate on every listed "
                      "slot, strategies/momentum.py"}
