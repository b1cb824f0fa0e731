"""The shared-memory view of positions ("positions" table) and counters ("posstats").

A cache of the journal: rebuilt from it on start, then updated after every journal change.
Rows are reused ring-fashion once the table is full, but a row holding a pending or open
position is never evicted (at most ``max_open`` of those exist). Readers find positions by
scanning; a row's index means nothing.
"""

from __future__ import annotations

import numpy as np

from position_worker.journal import OrderRow, OrderState
from position_worker.stats import Stats
from state.layout import (
    POSITION_CAPACITY,
    POSITION_DT,
    POSITION_STATS_DT,
    PositionState,
)
from state.run import RunPaths
from state.table import TableWriter

_STATE = {
    OrderState.NEW: PositionState.PENDING,
    OrderState.SENDING: PositionState.PENDING,
    OrderState.UNKNOWN: PositionState.PENDING,
    OrderState.ACKED: PositionState.PENDING,
    OrderState.FILLED: PositionState.OPEN,
    OrderState.SETTLED: PositionState.SETTLED,
    OrderState.REJECTED: PositionState.FAILED,
    OrderState.FAILED: PositionState.FAILED,
}
_HELD = (PositionState.PENDING, PositionState.OPEN)


def position_row(o: OrderRow) -> np.void:
    r = np.zeros((), dtype=POSITION_DT)
    r["state"] = _STATE[OrderState(o.state)]
    r["outcome"] = o.outcome
    r["slot"] = o.slot
    r["window_start"] = o.window_start
    r["end_ts"] = o.end_ts
    r["epoch"] = o.epoch
    r["slug"] = o.slug.encode()[:48]
    r["token"] = o.token.encode()[:80]
    r["order_id"] = o.order_id.encode()[:80]
    r["client_key"] = o.client_key.encode()[:32]
    r["stake"] = o.stake
    r["shares"] = o.shares
    r["avg_price"] = o.avg_price
    r["fees"] = o.fees
    r["pnl"] = o.pnl
    r["opened_ns"] = o.created_ns
    r["settled_ns"] = o.settled_ns
    return r


class PositionStore:
    def __init__(self, paths: RunPaths, capacity: int = POSITION_CAPACITY) -> None:
        self.table = TableWriter(paths.seg("positions"), POSITION_DT, capacity,
                                 name="positions")
        try:
            self.stats = TableWriter(paths.seg("posstats"), POSITION_STATS_DT, 1,
                                     name="posstats")
        except BaseException:
            self.table.close()
            raise
        self.capacity = capacity
        self._row_of: dict[str, int] = {}
        self._key_at: list[str | None] = [None] * capacity
        self._held = np.zeros(capacity, dtype=bool)
        self._next = 0

    def rebuild(self, orders: list[OrderRow]) -> None:
        """Replace the whole table with the journal's view: every held position, then the
        most recent others, oldest first, as many as fit."""
        self._row_of.clear()
        self._key_at = [None] * self.capacity
        self._held[:] = False
        self._next = 0
        held = [o for o in orders if _STATE[OrderState(o.state)] in _HELD]
        rest = [o for o in orders if _STATE[OrderState(o.state)] not in _HELD]
        keep = held + rest[max(0, len(rest) - (self.capacity - len(held))):]
        keep.sort(key=lambda o: o.created_ns)
        for i in range(self.capacity):
            self.table.reset_row(i)
        for o in keep:
            self.upsert(o)

    def _alloc(self) -> int:
        for _ in range(self.capacity):
            i = self._next
            self._next = (self._next + 1) % self.capacity
            if not self._held[i]:
                old = self._key_at[i]
                if old is not None:
                    del self._row_of[old]
                return i
        raise RuntimeError("positions table full of held positions")

    def upsert(self, o: OrderRow) -> int:
        i = self._row_of.get(o.client_key)
        if i is None:
            i = self._alloc()
            self._row_of[o.client_key] = i
            self._key_at[i] = o.client_key
        row = position_row(o)
        self._held[i] = PositionState(int(row["state"])) in _HELD
        self.table.write(i, row)
        return i

    def publish(self, s: Stats) -> None:
        self.stats.write(0, s.row())

    def close(self, *, unlink: bool = False) -> None:
        for t in (self.table, self.stats):
            if unlink:
                t.unlink()
            t.close()
