"""Order intents: what a strategy proposes, carried over the two intent rings.

The position worker owns (creates, adopts, unlinks) one ring per strategy lane,
``intents0`` and ``intents1``. The supervisor gives each strategy worker a lane; that worker is
the only producer of its lane (during a hot reload the old and the new strategy use different
lanes, so a ring never has two producers). Strategies write with :class:`IntentWriter`; the
position worker reads both lanes with :class:`IntentSource`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.errors import InputError, SegmentMissingError
from core.markets import N_SLOTS
from state.layout import INTENT_DT, Outcome
from state.ring import RingReader, RingWriter
from state.run import INTENT_RING_CAPACITY, RunPaths

LANES = (0, 1)


@dataclass(frozen=True)
class Intent:
    """One decoded intent, with where it came from (lane, ring sequence number)."""

    lane: int
    seq: int
    epoch: int
    intent_id: int
    created_ns: int
    slot: int
    outcome: int
    window_start: int
    stake: float
    max_price: float
    slug: str
    reason: str

    @classmethod
    def from_record(cls, lane: int, seq: int, rec: np.void) -> Intent:
        return cls(lane=lane, seq=seq, epoch=int(rec["epoch"]), intent_id=int(rec["intent_id"]),
                   created_ns=int(rec["created_ns"]), slot=int(rec["slot"]),
                   outcome=int(rec["outcome"]), window_start=int(rec["window_start"]),
                   stake=float(rec["stake"]), max_price=float(rec["max_price"]),
                   slug=bytes(rec["slug"]).rstrip(b"\0").decode(errors="replace"),
                   reason=bytes(rec["reason"]).rstrip(b"\0").decode(errors="replace"))

    def problems(self) -> str | None:
        """Why the intent is malformed, or None. Structural checks only (no market state)."""
        if not 0 <= self.slot < N_SLOTS:
            return f"slot {self.slot} out of range"
        if self.outcome not in (Outcome.UP, Outcome.DOWN):
            return f"outcome {self.outcome} unknown"
        if not (math.isfinite(self.stake) and self.stake > 0):
            return f"stake {self.stake!r} not positive"
        if not (math.isfinite(self.max_price) and 0.0 < self.max_price < 1.0):
            return f"max price {self.max_price!r} outside (0, 1)"
        if self.window_start <= 0 or not self.slug:
            return "no window/slug"
        return None


def make_record(*, epoch: int, intent_id: int, slot: int, window_start: int, slug: str,
                outcome: int, stake: float, max_price: float, reason: str = "",
                created_ns: int | None = None) -> np.void:
    rec = np.zeros((), dtype=INTENT_DT)
    rec["epoch"] = epoch
    rec["intent_id"] = intent_id
    rec["created_ns"] = time.time_ns() if created_ns is None else created_ns
    rec["slot"] = slot
    rec["outcome"] = int(outcome)
    rec["window_start"] = window_start
    rec["stake"] = stake
    rec["max_price"] = max_price
    slug_b = slug.encode()
    if len(slug_b) > INTENT_DT["slug"].itemsize:
        raise InputError(f"slug {slug!r} longer than {INTENT_DT['slug'].itemsize} bytes")
    rec["slug"] = slug_b
    rec["reason"] = reason.encode()[:INTENT_DT["reason"].itemsize]
    return rec


def _ring_ino(path: os.PathLike[str] | str) -> int:
    """The inode now at ``path`` (-1 if none): tells a re-created ring from ours."""
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return -1


class IntentWriter:
    """The strategy side: propose orders on one lane, stamped with the writer's epoch.

    Attaches the position worker's ring as its producer (it never creates or unlinks it). If
    the position worker re-created the ring (it restarted after a clean stop that unlinked its
    segments), a submit notices the new file and re-attaches. That check costs a stat(2), so
    it runs at most every ``recheck_s`` wall seconds (and on every submit while detached): a
    ring re-created less than ``recheck_s`` ago may still get an intent in the old, unlinked
    one, which no one reads (as during the restart itself). If the ring does not exist yet
    (the position worker is not up), construction still succeeds and ``submit`` raises
    ``SegmentMissingError`` until it does.
    """

    def __init__(self, paths: RunPaths, lane: int, epoch: int, *, recheck_s: float = 0.1,
                 monotonic_ns: Callable[[], int] = time.monotonic_ns) -> None:
        if lane not in LANES:
            raise ValueError(f"lane must be one of {LANES}, got {lane}")
        self.path = paths.intents(lane)
        self.lane = lane
        self.epoch = epoch
        self._w: RingWriter | None = None
        self._ino = 0
        self._recheck_ns = int(recheck_s * 1e9)
        self._mono = monotonic_ns
        self._next_check_ns = 0
        with contextlib.suppress(SegmentMissingError):
            self._attach()

    def _attach(self) -> None:
        self.close()
        self._w = RingWriter.attach_producer(self.path, INTENT_DT)
        self._ino = _ring_ino(self.path)
        self._next_check_ns = self._mono() + self._recheck_ns

    def _current(self) -> RingWriter:
        if self._w is None:
            self._attach()                     # raises SegmentMissingError until it exists
        elif self._mono() >= self._next_check_ns:
            self._next_check_ns = self._mono() + self._recheck_ns
            if _ring_ino(self.path) != self._ino:
                self._attach()
        assert self._w is not None
        return self._w

    def submit(self, slot: int, window_start: int, slug: str, outcome: int, stake: float,
               max_price: float, reason: str = "") -> int:
        """Publish one intent; returns its ring sequence number. Never blocks."""
        w = self._current()
        rec = make_record(epoch=self.epoch, intent_id=w.head(), slot=slot,
                          window_start=window_start, slug=slug, outcome=outcome, stake=stake,
                          max_price=max_price, reason=reason)
        return w.publish(rec)

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class IntentSource:
    """The position worker side: owns both lanes' rings and reads them."""

    def __init__(self, paths: RunPaths) -> None:
        self._owners: dict[int, RingWriter] = {}
        self.readers: dict[int, RingReader] = {}
        try:
            for lane in LANES:
                path = paths.intents(lane)
                self._owners[lane] = RingWriter(path, INTENT_DT, INTENT_RING_CAPACITY,
                                                name=f"intents{lane}")
                self.readers[lane] = RingReader(path, INTENT_DT, name="position",
                                                start="oldest")
        except BaseException:
            self.close()
            raise

    def identity(self, lane: int) -> int:
        """The lane's ring creation stamp: tells a re-created ring from an adopted one.

        Read from the header of our own mapping (never by reopening the path, which another
        process may be replacing or unlinking at that moment)."""
        seg = self._owners[lane]._seg
        assert seg is not None
        return seg.header().created_ns

    def adopted(self, lane: int) -> bool:
        """True when the lane's ring existed before this process (crash/restart)."""
        return bool(self._owners[lane].adopted)

    def resume(self, lane: int, next_seq: int) -> None:
        """Skip what an earlier incarnation already journaled (``next_seq`` = first new)."""
        r = self.readers[lane]
        oldest = max(0, r.head() - r.capacity)    # the ring's own "oldest" (RingReader)
        r.cursor = min(max(next_seq, oldest), r.head())

    def skip_to_head(self, lane: int) -> None:
        """Read only intents published from now on (nothing journaled says which old ones
        were handled)."""
        r = self.readers[lane]
        r.cursor = r.head()

    def poll(self, max_records: int = 64) -> list[Intent]:
        out: list[Intent] = []
        for lane, r in self.readers.items():
            batch = r.poll(max_records)
            out.extend(Intent.from_record(lane, batch.first_seq + i, rec)
                       for i, rec in enumerate(batch.records))
        return out

    def lost(self) -> int:
        return sum(r.lost_total for r in self.readers.values())

    async def wait(self, timeout: float) -> bool:
        """Sleep until either lane has something (True) or ``timeout`` passes (False)."""
        if any(r.lag() > 0 for r in self.readers.values()):
            return True
        tasks = [asyncio.ensure_future(r.wait(timeout)) for r in self.readers.values()]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return any(r.lag() > 0 for r in self.readers.values())

    def close(self, *, unlink: bool = False) -> None:
        for r in self.readers.values():
            r.close()
        self.readers = {}
        for w in self._owners.values():
            if unlink:
                with contextlib.suppress(Exception):
                    w.unlink()
            w.close()
        self._owners = {}
