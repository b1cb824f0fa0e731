"""The last closed 1m candles of a slot's asset, from the feed's ``windows`` table.

The table (state/layout.py ``WINDOW_ROW_DT``: one row per symbol x interval, row =
``symbol_id * len(KLINE_INTERVALS) + interval_id``, closed candles oldest first) is mapped
read-only (PROT_READ) with :class:`state.table.TableReader`: no reader slot, nothing this
process could break. The mapping is reopened when the run changes (run.json) or the segment
was replaced, and dropped at shutdown. Reads run in a worker thread: a torn row makes the
seqlock reader wait up to its patience.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from api_worker.reader import JsonFile
from core.errors import NoblinkError
from core.markets import KLINE_INTERVALS, SLOTS
from feed_worker.windows import row_index
from state.layout import WINDOW_CAPACITY, WINDOW_ROW_DT
from state.run import RunPaths
from state.segment import SHM_DIR
from state.table import TableReader

BY_LABEL = {s.label: s for s in SLOTS}
INTERVAL = "1m"
MAX_CANDLES = WINDOW_CAPACITY
_FIELDS = ("open_time", "close_time", "open", "high", "low", "close", "volume")


class CandlesUnavailable(Exception):
    pass


class Candles:
    def __init__(self, run_json: JsonFile) -> None:
        self.run_json = run_json
        self._lock = threading.Lock()
        self._reader: TableReader | None = None
        self._key: tuple[str, int] | None = None      # (segment path, inode) mapped

    def _table(self) -> TableReader:
        doc = self.run_json.doc()
        if doc is None or not isinstance(doc.get("run_id"), str):
            raise CandlesUnavailable("no run.json: is the bot running?")
        paths = RunPaths(self.run_json.path.parent, doc["run_id"],
                         Path(str(doc.get("shm_dir") or SHM_DIR)))
        seg = paths.seg("windows")
        try:
            key = (str(seg), os.stat(seg).st_ino)
        except OSError:
            self.close()
            raise CandlesUnavailable(f"no windows segment for run {paths.run_id} (is the "
                                     "feed running?)") from None
        if key != self._key or self._reader is None:
            self.close()
            try:
                self._reader = TableReader(seg, WINDOW_ROW_DT)
            except (NoblinkError, OSError) as e:
                raise CandlesUnavailable(f"cannot map {seg}: {e}") from e
            self._key = key
        return self._reader

    def last(self, label: str, n: int) -> dict[str, Any]:
        """``{"label", "symbol", "interval", "candles": [...]}``, at most ``n`` candles, oldest
        first. KeyError for an unknown label, CandlesUnavailable when there is no feed."""
        slot = BY_LABEL[label]
        row_i = row_index(slot.asset_index, KLINE_INTERVALS.index(INTERVAL))
        with self._lock:
            table = self._table()
            try:
                row = table.read(row_i)
            except NoblinkError as e:
                raise CandlesUnavailable(str(e)) from e
        count = min(int(row["count"]), WINDOW_CAPACITY)
        c = row["candles"][max(0, count - n):count]
        candles = [{f: (int(x[f]) if f.endswith("_time") else float(x[f])) for f in _FIELDS}
                   for x in c]
        return {"label": label, "symbol": slot.symbol, "interval": INTERVAL,
                "candles": candles}

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader, self._key = None, None
