"""The strategy side of the intent rings: build intent records and publish them on a lane.

The strategy worker writes its order intents with :class:`IntentWriter`. This module lives
in state/ (not position_worker/) so that the strategy worker never imports the exchange
side: executors, credentials, the journal. The position worker owns (creates, adopts,
unlinks) the rings ``intents0`` and ``intents1`` and reads them with
``position_worker.intents.IntentSource``; the record layout is ``state.layout.INTENT_DT``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

import numpy as np

from core.errors import InputError, SegmentMissingError
from state.layout import INTENT_DT, N_LANES
from state.ring import RingWriter
from state.run import RunPaths

LANES = tuple(range(N_LANES))           # (0, 1): one intent ring per strategy lane


def make_record(*, epoch: int, intent_id: int, slot: int, window_start: int, slug: str,
                outcome: int, stake: float, max_price: float, reason: str = "",
                created_ns: int | None = None) -> np.void:
    """One ``INTENT_DT`` record; raises ``InputError`` if the slug does not fit."""
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

    def submit_many(self, intents: list[dict]) -> int:
        """Publish a tick's intents at once (each a dict of :meth:`submit`'s arguments): one
        store of the batch and one wake-up, so the position worker reads and journals them
        together instead of waking on the first. Returns the lane's head after the batch."""
        w = self._current()
        if not intents:
            return w.head()
        head = w.head()
        recs = np.zeros(len(intents), dtype=INTENT_DT)
        now = time.time_ns()
        for i, kw in enumerate(intents):
            recs[i] = make_record(epoch=self.epoch, intent_id=head + i, created_ns=now, **kw)
        return w.publish_many(recs)

    def head(self) -> int:
        """The lane's next sequence number: every intent we sent is below it (a drained
        worker reports it, and the supervisor fences the lane there). 0 while the ring does
        not exist: nothing was sent into it."""
        try:
            return self._current().head()
        except SegmentMissingError:
            return 0

    def close(self) -> None:
        """Detach from the ring (idempotent); the ring itself stays."""
        if self._w is not None:
            self._w.close()
            self._w = None
