"""Build each tick's SlotViews from shared memory, consistent with that tick.

- Markets come from the tick record itself (the scanner copies the rows it wrote for tick t
  into t's record), never from the live markets table, which the scanner may be rewriting
  for t+1 while we evaluate t.
- Candles come from the windows table, read with its per-row seqlock; a row is copied only
  when its version changed (closed candles arrive once per interval, so most ticks copy
  nothing). A tick evaluated late sees only the candles that had closed by its own time.
- A row that stays mid-write (the feed was killed while writing it) raises TornRowError in
  the table reader; here it costs that row's refresh only: the previous copy is used and the
  miss is counted, the cycle goes on (a passing feed fault must not kill the strategy).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from core.markets import KLINE_INTERVALS, SLOTS
from state.layout import WINDOW_ROW_DT, RefStatus, SlotStatus
from state.run import RunPaths
from state.strings import decode_nul
from state.table import TableReader, TornRowError
from strategy_worker.api import Book, SlotView

log = logging.getLogger(__name__)


def _reference(m: np.void, tick_ms: int) -> dict:
    """The reference fields of a view, from the market row the scanner wrote for the tick."""
    ref_ms, ptb_ms = int(m["ref_ms"]), int(m["ptb_ms"])
    tick_size, min_size = float(m["tick_size"]), float(m["min_size"])
    out = {"reference_price": float(m["ref_price"]),
           "reference_age_s": (tick_ms - ref_ms) / 1000 if ref_ms > 0 else math.nan,
           "reference_stale": int(m["ref_status"]) != RefStatus.OK,
           "price_to_beat": float(m["price_to_beat"]),
           "price_to_beat_age_s": (tick_ms - ptb_ms) / 1000 if ptb_ms > 0 else math.nan}
    if tick_size > 0:
        out["tick_size"] = tick_size
    if min_size > 0:
        out["min_size"] = min_size
    return out


class StateViews:
    """Read-only access to the feed's windows, and the views of one tick record."""

    def __init__(self, paths: RunPaths) -> None:
        self.windows = TableReader(paths.seg("windows"), WINDOW_ROW_DT)
        self._versions = [-1] * self.windows.nrows
        self._candles: list[np.ndarray] = [np.empty(0, dtype=WINDOW_ROW_DT["candles"].base)
                                           for _ in range(self.windows.nrows)]
        self.torn_reads = 0

    def candles(self, symbol_id: int, interval_id: int, until_ms: int | None = None
                ) -> np.ndarray:
        """Closed candles of one series, oldest first; with ``until_ms`` only those closed
        before that clock time (a late tick's view)."""
        i = symbol_id * len(KLINE_INTERVALS) + interval_id
        v = self.windows.version(i)
        if v != self._versions[i]:
            try:
                row = self.windows.read(i)
            except TornRowError as e:
                self.torn_reads += 1
                log.warning("windows row %d unreadable, using the previous copy: %s", i, e)
            else:
                self._candles[i] = row["candles"][: int(row["count"])].copy()
                self._versions[i] = v
        c = self._candles[i]
        if until_ms is not None and len(c) and int(c["close_time"][-1]) >= until_ms:
            c = c[c["close_time"] < until_ms]
        return c

    def slot_views(self, tick_rec: np.void, now: float) -> list[SlotView]:
        """A view for every slot whose market was listed with a book at this tick."""
        tick = int(tick_rec["tick"])
        until = int(tick_rec["tick_time_ms"]) or None
        views = []
        for m in tick_rec["markets"]:
            if int(m["status"]) != SlotStatus.OK or int(m["tick"]) != tick:
                continue
            slot = SLOTS[int(m["slot"])]
            sym = slot.asset_index          # the asset's candle rows
            views.append(SlotView(
                tick=tick, now=now, slot=slot.index, label=slot.label, asset=slot.asset,
                window_s=slot.window_s, window_start=int(m["window_start"]),
                end_ts=int(m["end_ts"]), slug=decode_nul(m["slug"]), accepting=bool(m["accepting"]),
                up=Book(float(m["up_bid"]), float(m["up_ask"]), float(m["up_bid_size"]),
                        float(m["up_ask_size"])),
                down=Book(float(m["down_bid"]), float(m["down_ask"]), float(m["down_bid_size"]),
                          float(m["down_ask_size"])),
                candles={iv: self.candles(sym, j, until)
                         for j, iv in enumerate(KLINE_INTERVALS)},
                **_reference(m, int(tick_rec["tick_time_ms"]))))
        return views

    def close(self) -> None:
        self._candles = []
        self.windows.close()
