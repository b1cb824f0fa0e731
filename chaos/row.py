"""What a chaos run counts: the options, one row per scenario, the restart-budget pacing."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chaos import checks
from chaos.checks import Findings
from tests.supervisor import botctl
from tests.supervisor.botctl import Bot

# botctl's strategy bets Up at any ask below 0.9: about a coin flip for the whole stake,
# whose random walk reaches the position worker's daily loss limit (-50 USDC) within a few
# minutes, after which every intent is refused and an order fault has nothing to hit. The
# chaos strategies bet only on the favourite (0.7 < ask < 0.9): the same flow of orders
# with a third of the variance.
_BET = "and 0 < view.up.ask < 0.9:"
# the favourite only, and only where the position worker can trade: a known price to beat
# and a fresh reference (else every intent is refused STALE_REFERENCE, e.g. the first window
# after a start, and a scenario waiting for an order waits in vain)
_FAVOURITE = ("and 0.7 < view.up.ask < 0.9 and view.price_to_beat == view.price_to_beat "
              "and not view.reference_stale:")
assert _BET in botctl.TEMPLATE


def strategy_source(version: str, **kw: object) -> str:
    """botctl's strategy (records every tick and its version history), betting on the
    favourite only."""
    return botctl.strategy_source(version, **kw).replace(_BET, _FAVOURITE)  # type: ignore[arg-type]


# The chaos bots run with `--restart-intensity 20/60` (the default is 5/60): chaos checks
# that nothing is lost across restarts, not the give-up policy (tests/supervisor does), and at
# 5/60 the 30 strategy and 10 feed kills spent ~4 minutes waiting for the budget.
RESTART_INTENSITY = 20         # restarts ...
RESTART_PERIOD_S = 61.0        # ... in 60 s (one second of margin)
# the random wait between two faults (after the checks of the first passed): somewhere in a
# tick or two at 30x, so faults land at every point of the cycle
FAULT_GAP_S = (0.1, 1.2)
START_DEADLINE_S = 120.0
ACK_DEADLINE_S = 120.0


@dataclass
class Options:
    speed: float = 30.0
    seed: int = 1
    runs: int | None = None        # None: each scenario's default
    soak_s: float = 600.0          # soak: wall seconds of trading
    reload_every_s: float = 30.0   # soak: a reload this often (wall seconds)
    api: bool = False              # run the bot with its HTTP API (hostile-input needs it)
    small: bool = False            # a sample of the broken kinds and hostile inputs (tests)


@dataclass
class Row:
    scenario: str
    runs: int = 0
    survived: int = 0
    findings: Findings = field(default_factory=Findings)
    notes: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)     # one line per fault
    seconds: float = 0.0
    measures: dict = field(default_factory=dict)        # resources before/after, growth
    # the order logs of sims that were restarted (a new sim starts an empty log)
    earlier_orders: list[dict] = field(default_factory=list)
    sim_restarts: int = 0
    expect_history: list[str] | None = None    # the strategy's version history at the end
    gap_free: bool = False         # a missed tick is a problem (no crash was meant to miss one)

    @property
    def duplicates(self) -> int:
        return len(self.findings.duplicate_orders) + len(self.findings.duplicate_ticks)

    @property
    def lost(self) -> int:
        """Lost or duplicate orders, and duplicate ticks (a tick evaluated twice)."""
        return len(self.findings.lost_orders) + self.duplicates

    @property
    def missed(self) -> int:
        return sum(b - a - 1 for a, b in self.findings.missed_ticks)

    def after_fault(self, bot: Bot, admin: str, what: str, pids: set[int],
                    killed: int = 0, extra: Callable[[], Findings] | None = None
                    ) -> Findings:
        """The live checks after one fault (and ``extra``); counts it, and survived if they
        all passed."""
        f = checks.check_live(bot, killed=killed)
        if extra is not None:
            f.merge(extra())
        f.merge(checks.check_workers_running(bot))
        f.merge(checks.check_orders(bot, admin, self.earlier_orders))
        pids |= checks.worker_pids(bot)
        self.runs += 1
        self.events.append(f"{what}: {'ok' if f.ok else 'FAILED'}")
        if f.ok:
            self.survived += 1
        else:
            self.notes.append(f"{what}: " + "; ".join(
                f.problems + f.lost_orders + f.duplicate_orders))
        self.findings.merge(f)
        return f

    def to_json(self) -> dict:
        f = self.findings
        return {"scenario": self.scenario, "runs": self.runs, "survived": self.survived,
                "lost": self.lost, "duplicates": self.duplicates, "missed": self.missed,
                "seconds": round(self.seconds, 1), "lost_orders": f.lost_orders,
                "duplicate_orders": f.duplicate_orders, "duplicate_ticks": f.duplicate_ticks,
                "missed_ticks": f.missed_ticks, "problems": f.problems, "notes": self.notes,
                "events": self.events, "checked": f.stats, "measures": self.measures}


Body = Callable[[Bot, Row, str, set[int], Options, random.Random], None]



class Budget:
    """The supervisor's restart intensity, seen from outside: before a fault that would be
    the ``RESTART_INTENSITY``-th restart within ``RESTART_PERIOD_S``, wait (and say so)."""

    def __init__(self, row: Row) -> None:
        self.row = row
        self.times: collections.deque[float] = collections.deque()

    def wait(self, what: str, spare: int = 1) -> None:
        while self.times and time.monotonic() - self.times[0] > RESTART_PERIOD_S:
            self.times.popleft()
        if len(self.times) >= RESTART_INTENSITY - spare:
            wait = RESTART_PERIOD_S - (time.monotonic() - self.times[0])
            self.row.notes.append(f"{what}: waited {wait:.0f}s for the restart budget")
            time.sleep(max(0.0, wait))
            self.times.popleft()

    def spend(self) -> None:
        self.times.append(time.monotonic())
