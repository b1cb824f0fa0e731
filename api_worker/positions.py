"""Open and recent positions, read from the position worker's journal, read-only.

The journal (``<run dir>/journal.sqlite``, WAL) is opened per request with
``file:...?mode=ro``: this process can never write it, and WAL lets it read while the
position worker writes. The signed order request (``orders.request``) is never returned.
Runs in a worker thread (sqlite3 blocks).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from core.markets import SLOTS
from position_worker.journal import FINAL_STATES
from state.layout import Outcome

_OPEN = (
    "SELECT client_key, slot, slug, window_start, end_ts, outcome, stake, max_price, epoch, "
    "state, shares, cost, fees, created_ns, updated_ns FROM orders "
    f"WHERE state NOT IN ({', '.join('?' * len(FINAL_STATES))}) "
    "ORDER BY created_ns, rowid LIMIT ?")
_RECENT = (
    "SELECT s.client_key, o.slot, s.slug, o.window_start, o.outcome, s.winner, s.payout, "
    "s.cost, s.fees, s.pnl, s.win, s.settled_ts FROM settlements s "
    "LEFT JOIN orders o ON o.client_key = s.client_key ORDER BY s.rowid DESC LIMIT ?")
MAX_OPEN = 1024


class JournalUnavailable(Exception):
    pass


def _shape(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    slot = d.get("slot")
    d["label"] = SLOTS[slot].label if isinstance(slot, int) and 0 <= slot < len(SLOTS) else None
    out = d.get("outcome")
    d["outcome"] = Outcome(out).name.capitalize() if out in (0, 1) else out
    if "win" in d and d["win"] is not None:
        d["win"] = bool(d["win"])
    return d


def read_positions(journal: Path, recent: int) -> dict[str, list[dict[str, Any]]]:
    """``{"open": [...], "recent": [...]}``: unsettled orders oldest first (at most 1024),
    the last ``recent`` settlements newest first. Empty lists when there is no journal yet."""
    journal = Path(journal)
    if not journal.exists():
        return {"open": [], "recent": []}
    try:
        con = sqlite3.connect(f"file:{quote(str(journal))}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as e:
        raise JournalUnavailable(f"cannot open the journal: {e}") from e
    try:
        con.row_factory = sqlite3.Row
        open_ = con.execute(_OPEN, (*[str(s) for s in FINAL_STATES], MAX_OPEN)).fetchall()
        rec = con.execute(_RECENT, (recent,)).fetchall()
    except sqlite3.Error as e:
        raise JournalUnavailable(f"cannot read the journal: {e}") from e
    finally:
        con.close()
    return {"open": [_shape(r) for r in open_], "recent": [_shape(r) for r in rec]}
