"""Status numbers, computed from the journal (the truth), published in the "posstats" row."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from position_worker.journal import LIVE_STATES, Journal, OrderRow, OrderState
from position_worker.reasons import RejectReason
from state.layout import N_REJECT_REASONS, POSITION_STATS_DT


@dataclass
class Stats:
    intents: int = 0
    orders: int = 0
    pending: int = 0
    open_positions: int = 0          # pending + open: what the max_open limit counts
    settled: int = 0
    wins: int = 0
    losses: int = 0
    streak: int = 0                  # +n wins in a row, -n losses in a row
    pnl: float = 0.0                 # realised, after fees
    fees: float = 0.0                # on every filled order, settled or not
    exposure: float = 0.0            # $ in pending + open positions
    win_rate_100: float = 0.0
    win_rate_all: float = 0.0
    rejected: dict[str, int] = field(default_factory=dict)
    mismatches: int = 0
    paused: bool = False

    def row(self) -> np.void:
        r = np.zeros((), dtype=POSITION_STATS_DT)
        for name in ("intents", "orders", "open_positions", "settled", "wins", "losses",
                     "streak", "pnl", "fees", "exposure", "win_rate_100", "win_rate_all",
                     "mismatches"):
            r[name] = getattr(self, name)
        rej = np.zeros(N_REJECT_REASONS, dtype=np.uint64)
        for name, n in self.rejected.items():
            rej[RejectReason[name]] = n
        r["rejected"] = rej
        r["paused"] = int(self.paused)
        return r

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def streak_of(wins: list[bool]) -> int:
    if not wins:
        return 0
    last, n = wins[-1], 0
    for w in reversed(wins):
        if w != last:
            break
        n += 1
    return n if last else -n


def compute(journal: Journal, book: list[OrderRow], *, paused: bool = False) -> Stats:
    """Every number from scratch: cheap at this bot's rates, and never drifts."""
    s = Stats(paused=paused)
    s.intents = journal.intent_count()
    db = journal.db
    s.orders = int(db.execute("SELECT COUNT(*) FROM orders").fetchone()[0])
    s.fees = float(db.execute("SELECT COALESCE(SUM(fees), 0) FROM orders WHERE state IN "
                              "(?, ?)", (OrderState.FILLED, OrderState.SETTLED)).fetchone()[0])
    n, w, pnl = db.execute("SELECT COUNT(*), COALESCE(SUM(win), 0), COALESCE(SUM(pnl), 0) "
                           "FROM settlements").fetchone()
    s.settled, s.wins, s.pnl = int(n), int(w), float(pnl)
    s.losses = s.settled - s.wins
    s.win_rate_all = s.wins / s.settled if s.settled else 0.0
    last = list(itertools.islice(journal.recent_wins(), 100))        # newest first
    s.win_rate_100 = sum(last) / len(last) if last else 0.0
    s.streak = streak_of(last[::-1])
    if abs(s.streak) == len(last) == 100:                            # a streak past 100
        s.streak = streak_of(list(journal.recent_wins())[::-1])
    live = [o for o in book if o.state in LIVE_STATES or o.state == OrderState.FILLED]
    s.pending = sum(o.state in LIVE_STATES for o in live)
    s.open_positions = len(live)
    s.exposure = sum(o.cost if o.state == OrderState.FILLED else o.stake for o in live)
    s.rejected = {RejectReason(k).name: v for k, v in journal.rejections().items()
                  if k in RejectReason._value2member_map_}
    s.mismatches = int(db.execute("SELECT COUNT(*) FROM events WHERE kind='mismatch'")
                       .fetchone()[0])
    return s


def read_posstats(row: np.void) -> dict:
    """Decode a posstats row (for status displays); rejected by reason name."""
    out = {name: row[name].item() for name in POSITION_STATS_DT.names
           if not name.startswith("_") and name != "rejected"}
    out["rejected"] = {r.name: int(row["rejected"][r]) for r in RejectReason
                       if int(row["rejected"][r])}
    return out
