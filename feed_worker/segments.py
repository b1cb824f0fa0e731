"""The five shared-memory segments the feed owns: create them, or adopt a predecessor's.

    name        structure                         contents
    klines      ring  KLINE_DT  x KLINE_RING_CAPACITY   every kline update, in arrival order
    ticks       ring  TICK_DT   x TICK_RING_CAPACITY    one record per scanner tick
    windows     table WINDOW_ROW_DT x 8*3               closed candles per symbol x interval
    markets     table MARKET_DT x 16                    the 16 slots, in core.markets.SLOTS order
    feedstats   table FEED_STATS_DT x 1                 counters and latency

A feed restarted after a crash adopts all five, so the windows, the markets and the counters
come back from shared memory. Two live feeds on one run would corrupt each other, so opening
first takes an exclusive ``flock`` on ``RUN_DIR/feed.lock``, held until ``close()`` (the
kernel drops it when the process dies, even by kill -9). A lock is race-free where comparing
the segments' creator PID with live processes is not: two feeds starting at the same moment
both see "no live owner", and a dead feed's PID reused by an unrelated process would block
every restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import OperatorError
from core.markets import SLOTS
from feed_worker.windows import N_ROWS
from state.layout import FEED_STATS_DT, KLINE_DT, MARKET_DT, TICK_DT, WINDOW_ROW_DT
from state.ring import RingWriter
from state.run import KLINE_RING_CAPACITY, TICK_RING_CAPACITY, RunPaths
from state.table import TableWriter

log = logging.getLogger(__name__)

NAMES = ("klines", "ticks", "windows", "markets", "feedstats")
LOCK_NAME = "feed.lock"


class FeedAlreadyRunning(OperatorError):
    """Another live process owns this run's feed segments."""


class FeedLock:
    """An exclusive ``flock`` on ``run_dir/feed.lock`` for as long as it is held."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> FeedLock:
        """Take the lock or raise FeedAlreadyRunning (never waits)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FeedAlreadyRunning(f"{self.path} is held by process {holder}: is a feed "
                                     "running?") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)     # for the message above only
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (idempotent). The file stays: deleting it would race a new owner."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class FeedSegments:
    klines: RingWriter
    ticks: RingWriter
    windows: TableWriter
    markets: TableWriter
    stats: TableWriter
    lock: FeedLock | None = field(default=None, repr=False)

    @classmethod
    def open(cls, paths: RunPaths) -> FeedSegments:
        """Take the run's feed lock, then create or adopt every segment; on failure release
        what was taken. Raises FeedAlreadyRunning when another live process holds the lock."""
        lock = FeedLock(paths.run_dir).acquire()
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
        return {n: bool(getattr(self, a).adopted) for n, a in zip(
            NAMES, ("klines", "ticks", "windows", "markets", "stats"), strict=True)}

    def _recover_small_tables(self) -> None:
        for name, t in (("markets", self.markets), ("feedstats", self.stats)):
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
        for s in (self.klines, self.ticks, self.windows, self.markets, self.stats):
            with contextlib.suppress(Exception):
                s.close()
        if self.lock is not None:
            self.lock.release()

    def unlink(self) -> None:
        """Remove every segment: only on a clean, final stop."""
        for s in (self.klines, self.ticks, self.windows, self.markets, self.stats):
            with contextlib.suppress(Exception):
                s.unlink()
