"""Candles built from the reference stream, for assets without a Binance spot market (HYPE).

An asset whose universe entry says ``candles = "reference"`` has its 1m/5m/15m candle rows
(``symbol_id`` = the asset index, named ``HYPE/USD``) filled from its Chainlink observations
on RTDS: the series its markets resolve on. The rules:

- an observation belongs to the interval of its *observation* time (``payload.timestamp``),
  never its arrival time; one that is not newer than the asset's newest (repeated, out of
  order) changes nothing;
- open = the interval's first observation, high/low its extremes, close its last one;
  ``volume`` and ``quote_volume`` are 0 (an oracle has no volume), ``trades`` is the number
  of observations in the candle;
- a candle closes when the first observation of a later interval arrives, not by the clock:
  at one observation a second it closes about a second after its end. A stalled stream
  leaves the candle forming (the window lags); the reference's own staleness rule already
  stops trading on such an asset meanwhile;
- an interval with no observation at all (an RTDS outage, a dead feed) becomes a *flat*
  candle at the previous close, marked ``trades = 0``: strategies rely on gap-free windows.
  An interval the feed saw only part of keeps what it saw (fewer ``trades``);
- every update, forming or closed, goes into the ``klines`` ring exactly like a Binance one
  (``KLINE_STRUCT`` records), and closed candles are merged into their window row
  (``RollingWindows.merge``), so the window invariant is the same for both sources;
- a fresh feed joins in the middle of an interval: that first candle's open is unknown, so
  it is neither published nor kept. A row's first candle is the first interval whose start
  the feed saw (or whose first observation is exactly at its start);
- RTDS has no history endpoint, so there is no REST backfill: rows start empty and fill as
  the feed runs. A restarted feed adopts its rows and :meth:`ReferenceCandles.resume`
  replays the observations still in ``refring`` that are newer than each row's last candle:
  the candle in progress when the predecessor died is rebuilt and continues (what arrived
  while no feed was running is missing from it), and an empty row gets whatever history the
  ring still holds (16384 observations shared by every asset: about 39 minutes of 7).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.markets import INTERVAL_MS, KLINE_INTERVALS
from feed_worker.klines import KLINE_STRUCT
from feed_worker.windows import RollingWindows, row_index, row_label
from state.layout import KLINE_DT, REF_DT
from state.ring import RingReader, RingWriter
from state.run import REF_RING_CAPACITY

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Forming:
    """The candle of one row still taking observations."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    trades: int
    event_ms: int           # the newest observation's time (Binance's ``E``)
    recv_ns: int
    kept: bool              # it started at its interval's start: it will enter the window


class ReferenceCandles:
    """Builds and publishes the candles of the reference-sourced assets (symbol ids)."""

    def __init__(self, ring: RingWriter, windows: RollingWindows, asset_ids: Iterable[int],
                 intervals: Iterable[str] = KLINE_INTERVALS) -> None:
        self.ring = ring
        self.windows = windows
        self.assets = frozenset(asset_ids)
        self.intervals = tuple((KLINE_INTERVALS.index(i), INTERVAL_MS[i]) for i in intervals)
        self._newest: dict[int, int] = {}           # asset -> newest observation ms
        self._forming: dict[int, _Forming] = {}     # row -> its forming candle
        self.closed = 0                             # candles closed with observations
        self.flat = 0                               # flat candles for empty intervals
        self.ignored = 0                            # repeated or out-of-order observations

    # -- input ------------------------------------------------------------------------------

    def observe(self, aid: int, obs_ms: int, value: float, recv_ns: int = 0, *,
                live: bool = True) -> None:
        """One observation of asset ``aid``. ``live=False`` (a replay at start-up) rebuilds
        the state and fills the windows without republishing into the ring."""
        if aid not in self.assets:
            return
        if obs_ms <= self._newest.get(aid, -1):
            self.ignored += 1
            return
        self._newest[aid] = obs_ms
        for iid, iv in self.intervals:
            self._observe_row(row_index(aid, iid), iv, obs_ms, value, recv_ns, live)

    def resume(self, records: np.ndarray, now_ms: int) -> int:
        """Replay ``refring`` records (REF_DT, arrival order) at start-up; returns how many
        were used. Observations after ``now_ms`` are skipped: after a restart on a new,
        earlier clock they would make every live observation look old."""
        used = 0
        for rec in records:
            aid, obs_ms = int(rec["asset_id"]), int(rec["obs_ms"])
            if aid in self.assets and obs_ms <= now_ms:
                self.observe(aid, obs_ms, float(rec["value"]), int(rec["recv_ns"]), live=False)
                used += 1
        return used

    # -- the candles ------------------------------------------------------------------------

    def _observe_row(self, r: int, iv: int, obs_ms: int, value: float, recv_ns: int,
                     live: bool) -> None:
        ot = obs_ms // iv * iv
        cur = self._forming.get(r)
        if cur is not None and cur.open_time == ot:
            cur.high, cur.low = max(cur.high, value), min(cur.low, value)
            cur.close, cur.event_ms, cur.recv_ns = value, obs_ms, recv_ns
            cur.trades += 1
            if live and cur.kept:
                self.ring.publish(self._record(r, iv, cur, closed=False))
            return
        have = self.windows.count(r) > 0
        last = self.windows.last_open_time(r) if have else -1
        if have and ot <= last:
            return                  # that interval is already closed in the (adopted) window
        done: list[bytes] = []
        if cur is not None and (cur.kept or have):
            done.append(self._record(r, iv, cur, closed=True))
            prev_ot, prev_close = cur.open_time, cur.close
            self.closed += 1
        elif have:
            prev_ot = last
            prev_close = float(self.windows.table.read(r)["candles"]["close"][
                self.windows.count(r) - 1])
        if done or have:
            done += self._flats(r, iv, prev_ot, prev_close, ot, obs_ms, recv_ns)
        # A candle is kept when the feed followed the stream across its start (it had seen an
        # earlier interval, or the window continues), or its first observation is the start.
        self._forming[r] = cur = _Forming(ot, value, value, value, value, 1, obs_ms, recv_ns,
                                          kept=cur is not None or have or obs_ms == ot)
        if done:
            self._commit(r, done, live)
        if live and cur.kept:
            self.ring.publish(self._record(r, iv, cur, closed=False))

    def _flats(self, r: int, iv: int, prev_ot: int, prev_close: float, ot: int, obs_ms: int,
               recv_ns: int) -> list[bytes]:
        """Flat candles at ``prev_close`` for the intervals strictly between the two."""
        n = (ot - prev_ot) // iv - 1
        if n <= 0:
            return []
        n_kept = min(n, self.windows.capacity)      # older ones would drop off anyway
        log.warning("reference candles %s: %d interval(s) with no observation (%d .. %d): "
                    "flat candles at the previous close %g", row_label(r), n, prev_ot + iv,
                    ot - iv, prev_close)
        self.flat += n_kept
        out = []
        for t in range(ot - n_kept * iv, ot, iv):
            f = _Forming(t, prev_close, prev_close, prev_close, prev_close, 0, obs_ms, recv_ns,
                         kept=True)
            out.append(self._record(r, iv, f, closed=True))
        return out

    def _record(self, r: int, iv: int, c: _Forming, *, closed: bool) -> bytes:
        sid, iid = divmod(r, len(KLINE_INTERVALS))
        return KLINE_STRUCT.pack(sid, iid, int(closed), c.open_time, c.open_time + iv - 1,
                                 c.open, c.high, c.low, c.close, 0.0, 0.0, c.trades,
                                 c.event_ms, c.recv_ns)

    def _commit(self, r: int, records: list[bytes], live: bool) -> None:
        """Closed candles (oldest first, following the row) to the ring and the window."""
        if live:
            for rec in records:
                self.ring.publish(rec)
        candles = np.frombuffer(b"".join(records), dtype=KLINE_DT)
        n = self.windows.count(r)
        # More than the window holds (a very long outage): the window restarts with them.
        replace = n == 0 or len(candles) >= self.windows.capacity
        self.windows.merge(r, candles[-self.windows.capacity:], replace=replace)


def refring_records(path: Path) -> np.ndarray:
    """Every observation still in the ``refring`` segment, oldest first (read-only)."""
    reader = RingReader(path, REF_DT, readonly=True, start="oldest")
    try:
        parts = []
        while len(batch := reader.poll(REF_RING_CAPACITY).records):
            parts.append(batch)
        return np.concatenate(parts) if parts else np.empty(0, dtype=REF_DT)
    finally:
        reader.close()
