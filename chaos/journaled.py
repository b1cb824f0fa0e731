"""position-kill-journaled: the position worker dies between journaling an order and sending
it, N times.

No outside kill can aim that precisely (the window is a few microseconds), so the bot runs
with the position worker's own crash point (position_worker/faults.py,
``NOBLINK_POSITION_CRASH_AT=after_journal``): every incarnation SIGKILLs itself right after
the signed request is durably journaled (SENDING) and before it is sent. The strategy is
gated so that each kill is one order: it bets on a new (slot, window) only while the number
it bet on is below the count in the ``allow`` file, which the scenario raises by one per
kill. The restarted worker must look the order up (it never reached the sim) and never send
it twice; the checks then find it FAILED at most, never lost or doubled.
"""

from __future__ import annotations

import random
from pathlib import Path

from chaos import checks
from chaos.row import Budget, Options, Row, strategy_source
from sim import testing as sim_testing
from tests.supervisor.botctl import Bot

ENV = {"NOBLINK_POSITION_CRASH_AT": "after_journal"}
ORDER_DEADLINE_S = 120.0       # a bet needs a slot late in its window with a cheap ask


def gated_source(version: str, tmp: Path) -> str:
    """botctl's strategy, betting on at most ``int(<tmp>/allow)`` (slot, window)s."""
    allow = str(tmp / "allow")
    module = ("import os\n\ndef _allowed():\n    try:\n"
              f"        with open({allow!r}) as f:\n            return int(f.read())\n"
              "    except (OSError, ValueError):\n        return 0\n")
    return strategy_source(version, module=module, extra="        self.bets = set()\n").replace(
        '            return Decision("Up", 0.9, VERSION)\n',
        "            key = (view.slot, view.window_start)\n"
        "            if key not in self.bets and len(self.bets) >= _allowed():\n"
        "                return None\n"
        "            self.bets.add(key)\n"
        '            return Decision("Up", 0.9, VERSION)\n', 1)


def position_kill_journaled(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                            rng: random.Random) -> None:
    budget = Budget(row)
    for i in range(opts.runs or 3):     # 4 + 3 + 3 position kills: the issue asks 10
        budget.wait(f"kill {i + 1}")
        pids |= checks.worker_pids(bot)
        old = (bot.status().get("workers") or {}).get("position", {}).get("pid") or 0
        posts = sum(checks.order_posts(sim_testing.order_log(admin)).values())
        (bot.tmp / "allow").write_text(str(i + 1))
        died = checks.poll(lambda old=old: (bot.status().get("workers") or {})
                           .get("position", {}).get("pid") != old, ORDER_DEADLINE_S)
        budget.spend()
        what = f"kill {i + 1} (position, pid {old}, after journaling, before sending)"
        if died is None:
            row.findings.problems.append(f"{what}: no order (no crash) in "
                                         f"{ORDER_DEADLINE_S:.0f}s")
            return
        sent = sum(checks.order_posts(sim_testing.order_log(admin)).values()) - posts
        if sent:
            row.notes.append(f"{what}: {sent} POST /order reached the sim meanwhile")
        row.after_fault(bot, admin, what, pids, killed=old,
                        extra=lambda: checks.check_in_flight_resolved(bot, admin))
    row.findings.stats["journaled_orders_failed"] = sum(
        1 for o in bot.journal_orders() if o["state"] == "FAILED")
