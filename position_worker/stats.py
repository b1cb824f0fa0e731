"""Status numbers for the "posstats" row: counted as things happen, seeded from the journal.

``compute`` derives every number from the journal (the truth); it runs once at start-up to
seed a :class:`StatsKeeper`, which the engine then updates on every intent, order change,
settlement and mismatch, so publishing never scans the journal (at a million journaled intents
a scan took ~350 ms per intent). ``compute`` stays the reference the tests compare against.

Streak and win rates follow booking order (settlement rows in the order they were written).
"""

from __future__ import annotations

import itertools
from collections import deque
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
    """Every number from scratch, from the journal (scans it: start-up and tests only)."""
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
    if abs(s.streak) == len(last) == 100:            # a streak past 100: walk back lazily
        n = sum(1 for _ in itertools.takewhile(lambda w: w == last[0], journal.recent_wins()))
        s.streak = n if last[0] else -n
    _book_numbers(s, book)
    s.rejected = {RejectReason(k).name: v for k, v in journal.rejections().items()
                  if k in RejectReason._value2member_map_}
    s.mismatches = int(db.execute("SELECT COUNT(*) FROM events WHERE kind='mismatch'")
                       .fetchone()[0])
    return s


def _book_numbers(s: Stats, book: list[OrderRow]) -> None:
    live = [o for o in book if o.state in LIVE_STATES or o.state == OrderState.FILLED]
    s.pending = sum(o.state in LIVE_STATES for o in live)
    s.open_positions = len(live)
    s.exposure = sum(o.cost if o.state == OrderState.FILLED else o.stake for o in live)


_COUNTED_FEES = (OrderState.FILLED, OrderState.SETTLED)


class StatsKeeper:
    """Running counters: seeded once from the journal, then moved by events, never by scans.

    The open book's numbers (pending, open, exposure) are taken from the engine's in-memory
    book when a snapshot is made (it holds at most a few dozen orders)."""

    def __init__(self) -> None:
        self.s = Stats()
        self._last100: deque[bool] = deque(maxlen=100)
        self._fees_of: dict[str, float] = {}       # fees counted for orders still FILLED

    def seed(self, journal: Journal, book: list[OrderRow]) -> None:
        """Start from the journal's numbers (one scan, at start-up)."""
        self.s = compute(journal, book)
        self._last100 = deque(reversed(list(itertools.islice(journal.recent_wins(), 100))),
                              maxlen=100)
        self._fees_of = {o.client_key: o.fees for o in book if o.state == OrderState.FILLED}

    def on_intent(self, accepted: bool, reason: RejectReason | None) -> None:
        self.s.intents += 1
        if accepted:
            self.s.orders += 1
        elif reason is not None:
            self.s.rejected[reason.name] = self.s.rejected.get(reason.name, 0) + 1

    def on_order(self, o: OrderRow, *, settled_now: bool) -> None:
        """``o`` was journaled in its current state; ``settled_now`` when this change is its
        settlement (counted exactly once)."""
        counted = o.fees if o.state in _COUNTED_FEES else 0.0
        self.s.fees += counted - self._fees_of.pop(o.client_key, 0.0)
        if o.state == OrderState.FILLED:
            self._fees_of[o.client_key] = counted
        if settled_now:
            self._settled(o.pnl > 0, o.pnl)

    def _settled(self, win: bool, pnl: float) -> None:
        s = self.s
        s.settled += 1
        s.wins += int(win)
        s.losses = s.settled - s.wins
        s.pnl += pnl
        s.win_rate_all = s.wins / s.settled
        self._last100.append(win)
        s.win_rate_100 = sum(self._last100) / len(self._last100)
        if win:
            s.streak = s.streak + 1 if s.streak > 0 else 1
        else:
            s.streak = s.streak - 1 if s.streak < 0 else -1

    def on_mismatch(self) -> None:
        self.s.mismatches += 1

    def snapshot(self, book: list[OrderRow], *, paused: bool) -> Stats:
        s = Stats(**{**self.s.as_dict(), "rejected": dict(self.s.rejected)})
        _book_numbers(s, book)
        s.paused = paused
        return s


def read_posstats(row: np.void) -> dict:
    """Decode a posstats row (for status displays); rejected by reason name."""
    out = {name: row[name].item() for name in POSITION_STATS_DT.names
           if not name.startswith("_") and name != "rejected"}
    out["rejected"] = {r.name: int(row["rejected"][r]) for r in RejectReason
                       if int(row["rejected"][r])}
    return out
