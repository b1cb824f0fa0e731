"""Build each tick's SlotViews from shared memory.

The windows table is read with its per-row seqlock; a row is copied only when its version
changed since the last tick (closed candles arrive once per interval, so most ticks copy
nothing and the strategy reads the cached arrays).
"""

from __future__ import annotations

import numpy as np

from core.markets import KLINE_INTERVALS, SLOTS, SYMBOLS
from state.layout import MARKET_DT, WINDOW_ROW_DT, SlotStatus
from state.run import RunPaths
from state.table import TableReader
from strategy_worker.api import Book, SlotView


def _text(b: bytes) -> str:
    return bytes(b).rstrip(b"\0").decode(errors="replace")


class StateViews:
    """Read-only access to the feed's windows and slot table."""

    def __init__(self, paths: RunPaths) -> None:
        self.windows = TableReader(paths.seg("windows"), WINDOW_ROW_DT)
        self.markets = TableReader(paths.seg("markets"), MARKET_DT)
        self._versions = [-1] * self.windows.nrows
        self._candles: list[np.ndarray] = [np.empty(0, dtype=WINDOW_ROW_DT["candles"].base)
                                           for _ in range(self.windows.nrows)]

    def candles(self, symbol_id: int, interval_id: int) -> np.ndarray:
        i = symbol_id * len(KLINE_INTERVALS) + interval_id
        v = self.windows.version(i)
        if v != self._versions[i]:
            row = self.windows.read(i)
            self._candles[i] = row["candles"][: int(row["count"])].copy()
            self._versions[i] = v
        return self._candles[i]

    def slot_views(self, tick: int, now: float) -> list[SlotView]:
        """A view for every slot whose market is listed and has a book."""
        views = []
        for m in self.markets.read_all():
            if int(m["status"]) != SlotStatus.OK:
                continue
            slot = SLOTS[int(m["slot"])]
            sym = SYMBOLS.index(slot.symbol)
            views.append(SlotView(
                tick=tick, now=now, slot=slot.index, label=slot.label, asset=slot.asset,
                window_s=slot.window_s, window_start=int(m["window_start"]),
                end_ts=int(m["end_ts"]), slug=_text(m["slug"]), accepting=bool(m["accepting"]),
                up=Book(float(m["up_bid"]), float(m["up_ask"]), float(m["up_bid_size"]),
                        float(m["up_ask_size"])),
                down=Book(float(m["down_bid"]), float(m["down_ask"]), float(m["down_bid_size"]),
                          float(m["down_ask_size"])),
                candles={iv: self.candles(sym, j) for j, iv in enumerate(KLINE_INTERVALS)}))
        return views

    def close(self) -> None:
        self._candles = []
        self.windows.close()
        self.markets.close()
