"""The seven shared-memory segments the feed owns: create them, or adopt a predecessor's.

    name        structure                         contents
    klines      ring  KLINE_DT  x KLINE_RING_CAPACITY   every kline update, in arrival order
    ticks       ring  TICK_DT   x TICK_RING_CAPACITY    one record per scanner tick
    windows     table WINDOW_ROW_DT x assets*3          closed candles per asset x interval
    markets     table MARKET_DT x N_SLOTS               the slots, in core.markets.SLOTS order
    feedstats   table FEED_STATS_DT x 1                 counters and latency
    refring     ring  REF_DT    x REF_RING_CAPACITY     every reference (Chainlink) observation
    reference   table REF_ROW_DT x assets               the newest reference per asset

A feed restarted after a crash adopts all seven, so the windows, the markets and the counters
come back from shared memory. Two live feeds on one run would corrupt each other, so opening
first takes the run dir's feed lock (``state.runlock``: ``RUN_DIR/feed.lock``), held until
``close()`` (the kernel drops it when the process dies, even by kill -9). A lock is race-free
where comparing the segments' creator PID with live processes is not: two feeds starting at
the same moment both see "no live owner", and a dead feed's PID reused by an unrelated process
would block every restart.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import numpy as np

from core.markets import CHAINLINK_SYMBOLS, SLOTS
from feed_worker.windows import N_ROWS
from state.layout import (
    FEED_STATS_DT,
    KLINE_DT,
    MARKET_DT,
    REF_DT,
    REF_ROW_DT,
    TICK_DT,
    WINDOW_ROW_DT,
)
from state.ring import RingWriter
from state.run import KLINE_RING_CAPACITY, REF_RING_CAPACITY, TICK_RING_CAPACITY, RunPaths
from state.runlock import RoleLock
from state.table import TableWriter

log = logging.getLogger(__name__)

NAMES = ("klines", "ticks", "windows", "markets", "feedstats", "refring", "reference")
ATTRS = ("klines", "ticks", "windows", "markets", "stats", "refring", "reference")


@dataclass
class FeedSegments:
    klines: RingWriter
    ticks: RingWriter
    windows: TableWriter
    markets: TableWriter
    stats: TableWriter
    refring: RingWriter
    reference: TableWriter
    lock: RoleLock | None = field(default=None, repr=False)

    @classmethod
    def open(cls, paths: RunPaths) -> FeedSegments:
        """Take the run's feed lock, then create or adopt every segment; on failure release
        what was taken. Raises RunDirLocked when another live process holds the lock."""
        lock = RoleLock(paths.run_dir, "feed", hint="is a feed running?").acquire()
        opened: list = []
        try:
            opened.append(RingWriter(paths.seg("klines"), KLINE_DT, KLINE_RING_CAPACITY,
                                     name="klines"))
            opened.append(RingWriter(paths.seg("ticks"), TICK_DT, TICK_RING_CAPACITY,
                                     name="ticks"))
            opened.append(TableWriter(paths.seg("windows"), WINDOW_ROW_DT, N_ROWS,
                                      name="windows"))
            opened.append(TableWriter(paths.seg("markets"), MARKET_DT, len(SLOTS),
                                      name="markets"))
            opened.append(TableWriter(paths.seg("feedstats"), FEED_STATS_DT, 1,
                                      name="feedstats"))
            opened.append(RingWriter(paths.seg("refring"), REF_DT, REF_RING_CAPACITY,
                                     name="refring"))
            opened.append(TableWriter(paths.seg("reference"), REF_ROW_DT,
                                      len(CHAINLINK_SYMBOLS), name="reference"))
        except BaseException:
            for s in opened:
                s.close()
            lock.release()
            raise
        segs = cls(*opened, lock=lock)
        segs._recover_small_tables()
        return segs

    @property
    def adopted(self) -> dict[str, bool]:
        return {n: bool(getattr(self, a).adopted) for n, a in zip(NAMES, ATTRS, strict=True)}

    def _recover_small_tables(self) -> None:
        for name, t in (("markets", self.markets), ("feedstats", self.stats),
                        ("reference", self.reference)):
            for i in t.torn_rows():
                log.warning("%s: row %d torn by a dead writer; resetting", name, i)
                t.reset_row(i)
        for s in SLOTS:
            row = self.markets.read(s.index)
            if int(row["window_s"]) != s.window_s or int(row["slot"]) != s.index:
                fresh = np.zeros((), dtype=MARKET_DT)
                fresh["slot"], fresh["window_s"] = s.index, s.window_s
                self.markets.write(s.index, fresh)

    def close(self) -> None:
        """Close every mapping, then release the lock (idempotent). Never unlinks."""
        for a in ATTRS:
            with contextlib.suppress(Exception):
                getattr(self, a).close()
        if self.lock is not None:
            self.lock.release()

    def unlink(self) -> None:
        """Remove every segment: only on a clean, final stop."""
        for a in ATTRS:
            with contextlib.suppress(Exception):
                getattr(self, a).unlink()
