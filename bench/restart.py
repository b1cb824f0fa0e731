"""What a strategy restart without a handoff loses: the same tick views, with and without state.

Used by bench/run_all.py for ``strategy_restart_no_handoff.{history_lost, decisions_changed}``
(its ``first_eval_ms`` and ``missed_ticks`` come from a real kill -9, bench/cold.py).

In process, over the tick views recorded from the running bot (bench/record.py), evaluated
the way the strategy worker's cycle does it (every listed slot of every tick, in order;
an intent for a decision whose (slot, window) is not in the worker's ``sent`` set yet):

- continuous: one ``Strategy`` evaluates every recorded tick;
- restarted at tick k: a fresh, empty ``Strategy`` (and an empty ``sent`` set) takes over
  after tick k, as a restarted worker without a handoff would.

For each restart point k, ``history_lost`` is the length of the signal history the
continuous instance holds after tick k (summed over the slots: momentum keeps up to 20
moves per slot), which the restarted one lacks; ``decisions_changed`` counts the (tick,
slot) decisions over the next ``n`` ticks that differ (none / Up / Down);
``intents_reproposed`` counts intents the restarted one would send for windows the
continuous one had already proposed (its ``sent`` set is gone: the position worker refuses
them as duplicates from its journal; a bot without that check would double an order), and
``intents_missed`` the other way round. Restart points are every ``step`` ticks once the
continuous history is warm (20 ticks in), up to the last one with ``n`` ticks after it.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.record import STRATEGY, Recording
from strategy_worker.api import Decision, SlotView
from strategy_worker.loader import load_strategy

WARM_TICKS = 20          # momentum keeps the last 20 moves per slot
N_AFTER = 60             # ticks compared after a restart: 5 minutes of market time
STEP = 5


def _code(d: Decision | None) -> str:
    return "none" if d is None else d.outcome


class _Run:
    """One strategy instance and the worker's sent set, tick by tick."""

    def __init__(self, path: Path) -> None:
        self.inst = load_strategy(path, {}).instance
        self.sent: set[tuple[int, int]] = set()

    def tick(self, views: list[SlotView]) -> tuple[dict[int, str], set[tuple[int, int]]]:
        codes: dict[int, str] = {}
        intents: set[tuple[int, int]] = set()
        for v in views:
            d = self.inst.evaluate(v)
            codes[v.slot] = _code(d)
            if d is not None:
                key = (v.slot, v.window_start)
                if key not in self.sent:
                    self.sent.add(key)
                    intents.add(key)
        return codes, intents

    def history_len(self) -> int:
        return sum(len(h) for h in self.inst.get_state().get("history", {}).values())


def compare(rec: Recording, *, n: int = N_AFTER, step: int = STEP,
            path: Path = STRATEGY) -> dict[str, Any]:
    ticks = [t.views for t in rec.ticks]
    if len(ticks) < WARM_TICKS + n + 1:
        raise ValueError(f"{len(ticks)} recorded ticks; need at least {WARM_TICKS + n + 1}")
    cont = _Run(path)
    codes: list[dict[int, str]] = []
    intents: list[set[tuple[int, int]]] = []
    hist: list[int] = []
    for views in ticks:
        c, i = cont.tick(views)
        codes.append(c)
        intents.append(i)
        hist.append(cont.history_len())
    rows = []
    for k in range(WARM_TICKS - 1, len(ticks) - n, step):   # restart after index k
        fresh = _Run(path)
        changed = reproposed = missed = 0
        for j in range(k + 1, k + 1 + n):
            c, i = fresh.tick(ticks[j])
            changed += sum(c.get(s) != codes[j].get(s) for s in set(c) | set(codes[j]))
            reproposed += len(i - intents[j])
            missed += len(intents[j] - i)
        rows.append({"k": rec.ticks[k].tick, "history_lost": hist[k],
                     "decisions_changed": changed, "intents_reproposed": reproposed,
                     "intents_missed": missed})
    decisions = sum(v != "none" for c in codes for v in c.values())
    return {
        "history_lost": round(statistics.mean(r["history_lost"] for r in rows), 1),
        "decisions_changed": round(statistics.mean(r["decisions_changed"] for r in rows), 2),
        "intents_reproposed": round(statistics.mean(r["intents_reproposed"] for r in rows), 2),
        "intents_missed": round(statistics.mean(r["intents_missed"] for r in rows), 2),
        "restarts": len(rows), "n_after": n,
        "restarts_with_decisions_changed": sum(r["decisions_changed"] > 0 for r in rows),
        "decisions_changed_max": max(r["decisions_changed"] for r in rows),
        "recorded_ticks": len(ticks), "recorded_decisions": decisions,
        "slot_evaluations": sum(len(c) for c in codes),
        "per_restart": rows,
        "method": f"in process over {len(ticks)} tick views recorded from the running bot "
                  f"(60x); a fresh Strategy + empty sent set after tick k vs one that saw "
                  f"every tick; k every {step} ticks from tick {WARM_TICKS}, {n} ticks "
                  "compared after each; values are means over the restart points",
    }
