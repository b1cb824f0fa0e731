"""From a received frame to shared memory: the feed's hot path.

Every kline update (forming or closed) goes into the ``klines`` ring; a closed one also goes
into its rolling window. A closed candle that does not follow its window is parked there and
the row is handed to the backfill. Receive-to-publish latency is sampled for every update.

Candles fetched by the REST backfill go to the windows only, not to the ring: the ring is
the live update stream, in arrival order, and a burst of 500 historical candles would push
live updates out of slow readers' reach. Readers wanting history read the windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from core.errors import InputError
from core.proc import truncate
from feed_worker.klines import Frame, KlineUpdate, parse_frame, record_of
from feed_worker.stats import FeedStats
from feed_worker.windows import AddResult, RollingWindows, row_index
from state.ring import RingWriter

log = logging.getLogger(__name__)

LOG_FIRST_ERRORS = 20
LOG_EVERY_ERRORS = 100


class KlinePublisher:
    def __init__(self, ring: RingWriter, windows: RollingWindows, stats: FeedStats,
                 rows: Iterable[int], on_gap: Callable[[int, str], None],
                 mono_ns: Callable[[], int]) -> None:
        self.ring = ring
        self.windows = windows
        self.stats = stats
        self.rows = frozenset(rows)
        self.on_gap = on_gap
        self.mono_ns = mono_ns

    def handle(self, raw: bytes | str, recv_ns: int) -> Frame | None:
        """Parse and publish one WebSocket message. Returns it, or None when dropped."""
        st = self.stats
        st.messages += 1
        try:
            frame = parse_frame(raw, recv_ns)
        except InputError as e:
            st.parse_errors += 1
            n = st.parse_errors
            if n <= LOG_FIRST_ERRORS or n % LOG_EVERY_ERRORS == 0:
                log.warning("dropped malformed frame #%d (%s): %s", n, e, truncate(raw))
            return None
        if type(frame) is KlineUpdate:
            self.ring.publish(frame.record)
            if frame.closed:
                r = row_index(frame.symbol_id, frame.interval_id)
                if r in self.rows and self.windows.add_closed(
                        r, record_of(frame)) is AddResult.PENDING:
                    self.on_gap(r, "stream gap")
            st.latency.add(self.mono_ns() - recv_ns)
            st.last_message_ns = recv_ns
        return frame
