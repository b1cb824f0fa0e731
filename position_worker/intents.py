"""Order intents: what a strategy proposes, carried over the two intent rings.

The position worker owns (creates, adopts, unlinks) one ring per strategy lane,
``intents0`` and ``intents1``. The supervisor gives each strategy worker a lane; that worker is
the only producer of its lane (during a hot reload the old and the new strategy use different
lanes, so a ring never has two producers). Strategies write with ``state.intents.IntentWriter``
(kept out of this package so the strategy worker never imports the exchange side); the
position worker reads both lanes with :class:`IntentSource`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np

from core.clock import first_of
from core.markets import N_SLOTS
from state.intents import LANES
from state.layout import INTENT_DT, Outcome
from state.ring import RingReader, RingWriter
from state.run import INTENT_RING_CAPACITY, RunPaths
from state.strings import decode_nul


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
                   slug=decode_nul(rec["slug"]),
                   reason=decode_nul(rec["reason"]))

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
        await first_of(*(r.wait(timeout) for r in self.readers.values()))
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
