"""Rolling windows of closed candles, one table row per (symbol, interval), never with holes.

The invariant every reader may rely on, for every row::

    candles[:count] are closed (closed == 1), oldest first, and
    candles[i+1].open_time == candles[i].open_time + interval  for all i < count - 1
    last_open_time == candles[count-1].open_time   (or -1 when count == 0)

To keep it, a candle is only ever *appended* right after the last one, or *prepended* right
before the first one (older history arriving late, see ``prepend``). A closed candle that
arrives early (the stream skipped one, e.g. across a reconnect) is parked in memory as
*pending* and the row is reported as having a gap; once the REST backfill supplies the
missing candles, the pending ones follow in order. An empty row takes no stream candles at
all until the backfill has given it its history (otherwise history could not be prepended).
When a row is full the oldest candle drops off.

A dead predecessor may have left a row mid-write (odd seqlock) or, in theory, inconsistent:
``recover()`` resets such rows, and the backfill refills them. It also resets a row whose
last candle had not closed yet by the clock: after a sim restart with a new, earlier clock
(or a wrong system clock) such a row would take every candle as a duplicate and freeze.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.markets import CANDLE_SYMBOLS, INTERVAL_MS, KLINE_INTERVALS
from state.layout import KLINE_DT, WINDOW_CAPACITY
from state.table import TableWriter

log = logging.getLogger(__name__)

N_INTERVALS = len(KLINE_INTERVALS)
N_ROWS = len(CANDLE_SYMBOLS) * N_INTERVALS     # one row per asset x interval


def row_index(symbol_id: int, interval_id: int) -> int:
    return symbol_id * N_INTERVALS + interval_id


def row_label(row: int) -> str:
    return f"{CANDLE_SYMBOLS[row // N_INTERVALS]}/{KLINE_INTERVALS[row % N_INTERVALS]}"


class AddResult(enum.IntEnum):
    APPENDED = 1      # the candle extended the window
    DUPLICATE = 2     # the window already holds it (the backfill got there first)
    PENDING = 3       # it is ahead of the window: parked, the row has a gap to backfill


@dataclass(frozen=True)
class MergeResult:
    backfilled: int   # candles from the REST batch written to the window
    drained: int      # pending stream candles that followed them
    hole: bool        # the source itself had a hole: the window restarted after it
    gap: bool         # pending candles are still ahead of the window


def check_candles(candles: np.ndarray, interval_ms: int) -> str | None:
    """Why ``candles`` break the invariant, or None when they are fine."""
    if len(candles) == 0:
        return None
    if not (candles["closed"] == 1).all():
        return "holds a candle that is not closed"
    d = np.diff(candles["open_time"])
    if len(d) and not (d == interval_ms).all():
        i = int(np.argmax(d != interval_ms))
        return f"gap/overlap after open_time {int(candles['open_time'][i])}"
    return None


class RollingWindows:
    """The single writer of the ``windows`` table, with an in-memory mirror of each row's
    count and last open time (the feed is the only writer, so the mirror cannot drift)."""

    def __init__(self, table: TableWriter, capacity: int = WINDOW_CAPACITY,
                 mono_ns: Callable[[], int] = lambda: 0) -> None:
        if table.nrows != N_ROWS:
            raise ValueError(f"windows table has {table.nrows} rows, expected {N_ROWS}")
        self.table = table
        self.capacity = min(capacity, WINDOW_CAPACITY)
        self._mono_ns = mono_ns
        self._count = [0] * N_ROWS
        self._last = [-1] * N_ROWS
        self._pending: list[dict[int, np.void]] = [{} for _ in range(N_ROWS)]
        self.interval_ms = [INTERVAL_MS[KLINE_INTERVALS[r % N_INTERVALS]] for r in range(N_ROWS)]

    # -- start-up ---------------------------------------------------------------------------

    def recover(self, now_ms: int | None = None) -> list[int]:
        """Adopt what shared memory holds; reset torn or inconsistent rows, and rows from the
        future (a last candle that had not closed by ``now_ms``, when given). Returns them."""
        bad = set(self.table.torn_rows())
        for r in bad:
            log.warning("windows: row %s was torn by a dead writer; resetting", row_label(r))
            self.table.reset_row(r)
        for r in range(N_ROWS):
            row = self.table.read(r)
            n = int(row["count"])
            why = None
            if r not in bad and n:
                sid, iid = divmod(r, N_INTERVALS)
                if n > WINDOW_CAPACITY:
                    why = f"count {n} > capacity"
                elif (int(row["symbol_id"]), int(row["interval_id"])) != (sid, iid):
                    why = "row ids do not match its index"
                else:
                    c = row["candles"][:n]
                    why = check_candles(c, self.interval_ms[r])
                    last = int(c["open_time"][-1])
                    if why is None and int(row["last_open_time"]) != last:
                        why = "last_open_time does not match the last candle"
                    iv = self.interval_ms[r]
                    if why is None and now_ms is not None and last + iv > now_ms:
                        why = (f"ends after the clock's last closed candle ({last} + {iv} > "
                               f"{now_ms}: a new clock?)")
                if why:
                    log.warning("windows: row %s %s; resetting", row_label(r), why)
                    bad.add(r)
            if r in bad or n == 0:
                self._init_row(r)
            else:
                self._count[r] = n
                self._last[r] = int(row["last_open_time"])
        return sorted(bad)

    def _init_row(self, r: int) -> None:
        sid, iid = divmod(r, N_INTERVALS)
        with self.table.update(r) as row:
            row["candles"][:] = np.zeros(WINDOW_CAPACITY, dtype=KLINE_DT)
            row["symbol_id"] = sid
            row["interval_id"] = iid
            row["count"] = 0
            row["last_open_time"] = -1
            row["updated_ns"] = self._mono_ns()
        self._count[r] = 0
        self._last[r] = -1

    # -- queries ----------------------------------------------------------------------------

    def count(self, r: int) -> int:
        return self._count[r]

    def last_open_time(self, r: int) -> int:
        return self._last[r]

    def first_open_time(self, r: int) -> int:
        """Open time of the oldest candle (-1 when empty); the row is contiguous."""
        n = self._count[r]
        return self._last[r] - (n - 1) * self.interval_ms[r] if n else -1

    def has_gap(self, r: int) -> bool:
        """Closed candles are waiting ahead of the window (or the row is still empty)."""
        return bool(self._pending[r]) or self._count[r] == 0

    def pending(self, r: int) -> int:
        return len(self._pending[r])

    # -- writes -----------------------------------------------------------------------------

    def add_closed(self, r: int, rec: np.void) -> AddResult:
        """Offer one closed candle from the stream."""
        t = int(rec["open_time"])
        last = self._last[r]
        if self._count[r] and t <= last:
            return AddResult.DUPLICATE
        if self._count[r] == 0 or t != last + self.interval_ms[r]:
            pend = self._pending[r]
            pend[t] = rec.copy()
            if len(pend) > self.capacity:       # REST down for ages: keep the newest only
                del pend[min(pend)]
            return AddResult.PENDING
        self._append_one(r, rec)
        self._drain(r)
        return AddResult.APPENDED

    def _append_one(self, r: int, rec: np.void) -> None:
        n = self._count[r]
        with self.table.update(r) as row:
            c = row["candles"]
            if n >= self.capacity:
                c[:self.capacity - 1] = c[1:self.capacity]   # numpy handles the overlap
                c[self.capacity - 1] = rec
                n = self.capacity
            else:
                c[n] = rec
                n += 1
            row["count"] = n
            row["last_open_time"] = rec["open_time"]
            row["updated_ns"] = self._mono_ns()
        self._count[r] = n
        self._last[r] = int(rec["open_time"])

    def _drain(self, r: int) -> int:
        """Append pending candles that now follow the window; drop ones it already holds."""
        pend = self._pending[r]
        if not pend:
            return 0
        n = 0
        iv = self.interval_ms[r]
        while self._count[r] and (rec := pend.pop(self._last[r] + iv, None)) is not None:
            self._append_one(r, rec)
            n += 1
        for t in [t for t in pend if self._count[r] and t <= self._last[r]]:
            del pend[t]
        return n

    def merge(self, r: int, candles: np.ndarray, *, replace: bool = False) -> MergeResult:
        """Add closed candles from REST (oldest first). ``replace`` restarts the window with
        them (the row was empty or too far behind for the backfill to bridge)."""
        iv = self.interval_ms[r]
        hole = False
        if len(candles):
            why = check_candles(candles, iv)
            if why:
                # The source has a hole (an exchange outage). Keep the newest contiguous run.
                breaks = np.nonzero(np.diff(candles["open_time"]) != iv)[0]
                log.warning("windows: %s: backfill data %s; keeping the part after it",
                            row_label(r), why)
                candles = candles[int(breaks[-1]) + 1:]
                hole = True
        if not replace and self._count[r]:
            candles = candles[candles["open_time"] > self._last[r]]
            if len(candles) and int(candles["open_time"][0]) != self._last[r] + iv:
                log.warning("windows: %s: source has no candles from %d to %d; restarting "
                            "the window after the hole", row_label(r), self._last[r] + iv,
                            int(candles["open_time"][0]) - iv)
                replace = hole = True
        backfilled = 0
        if len(candles):
            keep = candles[-self.capacity:]
            n0 = 0 if replace else self._count[r]
            self._write_run(r, keep, keep_old=n0)
            backfilled = len(keep)
        drained = self._drain(r)
        return MergeResult(backfilled, drained, hole, bool(self._pending[r]))

    def prepend(self, r: int, candles: np.ndarray) -> int:
        """Put older closed candles (oldest first) in front of a row that is not full.

        Only the newest contiguous run of them that ends right before the row's first candle
        is used, as much of it as fits: the row stays gap-free. Returns the candles added."""
        n = self._count[r]
        room = self.capacity - n
        if n == 0 or room <= 0 or len(candles) == 0:
            return 0
        iv = self.interval_ms[r]
        first = self.first_open_time(r)
        c = candles[candles["open_time"] < first]
        if len(c) == 0 or int(c["open_time"][-1]) != first - iv or not (c["closed"] == 1).all():
            return 0
        breaks = np.nonzero(np.diff(c["open_time"]) != iv)[0]
        if len(breaks):
            c = c[int(breaks[-1]) + 1:]
        c = c[-room:]
        k = len(c)
        with self.table.update(r) as row:
            cs = row["candles"]
            cs[k:k + n] = cs[:n].copy()
            cs[:k] = c
            row["count"] = n + k
            row["updated_ns"] = self._mono_ns()
        self._count[r] = n + k
        return k

    def _write_run(self, r: int, new: np.ndarray, keep_old: int) -> None:
        """Write ``keep_old`` existing candles followed by ``new``, as one row update."""
        k = len(new)
        with self.table.update(r) as row:
            c = row["candles"]
            old = min(keep_old, self.capacity - k)
            if old:
                c[:old] = c[keep_old - old:keep_old].copy()
            c[old:old + k] = new
            row["count"] = old + k
            row["last_open_time"] = new["open_time"][-1]
            row["updated_ns"] = self._mono_ns()
        self._count[r] = old + k
        self._last[r] = int(new["open_time"][-1])
