"""Read-only view of the feed worker's "markets" table (one row per slot).

The feed worker owns the table and may start after us or restart, so the view attaches
lazily and re-attaches when the segment file is replaced.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from core.errors import SegmentError
from state.layout import MARKET_DT, Outcome, SlotStatus
from state.run import RunPaths
from state.strings import decode_nul
from state.table import TableReader, TornRowError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarketQuote:
    """One slot's current market, decoded."""

    slot: int
    status: int
    accepting: bool
    window_s: int
    window_start: int
    end_ts: int
    slug: str
    condition_id: str
    up_token: str
    down_token: str
    up_ask: float
    up_ask_size: float
    down_ask: float
    down_ask_size: float
    up_bid: float
    down_bid: float
    updated_ns: int
    # the reference the market resolves on (Chainlink via RTDS), observation times in clock ms
    ref_price: float = math.nan
    ref_ms: int = 0
    price_to_beat: float = math.nan
    tick_size: float = 0.0           # the market's own tick; 0 = not known
    min_size: float = 0.0            # the market's minimum order size (shares); 0 = not known

    @classmethod
    def from_row(cls, row: np.void) -> MarketQuote:
        return cls(slot=int(row["slot"]), status=int(row["status"]),
                   accepting=bool(row["accepting"]), window_s=int(row["window_s"]),
                   window_start=int(row["window_start"]), end_ts=int(row["end_ts"]),
                   slug=decode_nul(row["slug"]), condition_id=decode_nul(row["condition_id"]),
                   up_token=decode_nul(row["up_token"]), down_token=decode_nul(row["down_token"]),
                   up_ask=float(row["up_ask"]), up_ask_size=float(row["up_ask_size"]),
                   down_ask=float(row["down_ask"]), down_ask_size=float(row["down_ask_size"]),
                   up_bid=float(row["up_bid"]), down_bid=float(row["down_bid"]),
                   updated_ns=int(row["updated_ns"]), ref_price=float(row["ref_price"]),
                   ref_ms=int(row["ref_ms"]), price_to_beat=float(row["price_to_beat"]),
                   tick_size=_known(row["tick_size"]), min_size=_known(row["min_size"]))

    @property
    def ok(self) -> bool:
        return self.status == SlotStatus.OK

    def token(self, outcome: int) -> str:
        return self.up_token if outcome == Outcome.UP else self.down_token

    def ask(self, outcome: int) -> tuple[float, float]:
        """(best ask price, size at it) for the outcome; price 0 means no ask."""
        if outcome == Outcome.UP:
            return self.up_ask, self.up_ask_size
        return self.down_ask, self.down_ask_size


class MarketsView:
    def __init__(self, paths: RunPaths) -> None:
        self.path = paths.seg("markets")
        self._t: TableReader | None = None
        self._ino = 0

    def _reader(self) -> TableReader | None:
        try:
            ino = os.stat(self.path).st_ino
        except FileNotFoundError:
            self.close()
            return None
        if self._t is None or ino != self._ino:
            self.close()
            try:
                self._t = TableReader(self.path, MARKET_DT)
                self._ino = ino
            except SegmentError as e:
                log.warning("markets table not usable: %s", e)
                return None
        return self._t

    def quote(self, slot: int) -> MarketQuote | None:
        """The slot's row, or None when the feed has no table (yet) or the row is torn."""
        t = self._reader()
        if t is None or not 0 <= slot < t.nrows:
            return None
        try:
            q = MarketQuote.from_row(t.read(slot))
        except TornRowError:
            return None
        return q if q.slot == slot else None

    def close(self) -> None:
        if self._t is not None:
            self._t.close()
            self._t = None


def _known(v: object) -> float:
    """A market parameter from the row: the scanner writes NaN when Gamma did not say; here
    "not known" is 0, the one value every check treats as such."""
    f = float(v)                    # type: ignore[arg-type]
    return f if math.isfinite(f) and f > 0 else 0.0
