"""From an RTDS frame to shared memory: the reference price and each slot's price to beat.

Every Chainlink observation goes into the ``refring`` ring (arrival order) and, when it is
newer than what the asset's row holds, into its row of the ``reference`` table (the newest
value per asset). Receive-to-publish latency is sampled per observation.

The price to beat of every (asset, window length) is tracked here from observation times
only (rules in core/reference.py): the first observation at or after the window's start,
accepted when the stream was followed across the start. The scanner copies it, with the
newest reference and its freshness, into each slot's market row.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import numpy as np

from core.errors import InputError
from core.markets import Slot
from core.proc import truncate
from core.reference import PTB_GAP_S
from feed_worker.rtds_frames import RefUpdate, RtdsFrame, parse_rtds
from feed_worker.stats import FeedStats
from state.layout import REF_DT, REF_ROW_DT, RefStatus
from state.ring import RingWriter
from state.table import TableWriter

log = logging.getLogger(__name__)

LOG_FIRST_ERRORS = 20
LOG_EVERY_ERRORS = 100
KEEP_WINDOWS = 3          # price to beat of the current window and the two before it
NAN = math.nan


class PriceToBeat:
    """Per (asset, window length): window start -> (price to beat or NaN, observation ms)."""

    def __init__(self, slots: Iterable[Slot], asset_ids: dict[str, int],
                 gap_ms: int = int(PTB_GAP_S * 1000)) -> None:
        self.gap_ms = gap_ms
        self.windows: dict[int, tuple[int, ...]] = {}
        for s in slots:
            aid = asset_ids[s.asset]
            self.windows[aid] = tuple(sorted({*self.windows.get(aid, ()), s.window_s}))
        self._last: dict[int, int] = {}                 # asset -> newest observation ms
        self._lost: set[int] = set()                    # assets that may have lost data
        self._ptb: dict[tuple[int, int], dict[int, tuple[float, int]]] = {
            (a, w): {} for a, ws in self.windows.items() for w in ws}

    def lost(self) -> None:
        """Something may have been lost (a malformed frame, a reconnect): a window start
        crossed before the next observation of an asset gets no price to beat."""
        self._lost.update(self.windows)

    def observe(self, aid: int, obs_ms: int, value: float) -> None:
        """Feed one observation (in stream order). Repeated ones change nothing; an older
        one changes only a price to beat taken from a later observation of the same window
        (it arrived late, but it is the first at or after the start: the one that settles)."""
        prev = self._last.get(aid)
        if prev is not None and obs_ms <= prev:
            self._earlier(aid, obs_ms, value)
            return
        lost = aid in self._lost
        for window_s in self.windows.get(aid, ()):
            start = obs_ms // 1000 // window_s * window_s
            known = self._ptb[(aid, window_s)]
            if start in known:
                continue
            start_ms = start * 1000
            followed = (prev is not None and prev >= start_ms - self.gap_ms and not lost
                        and obs_ms - start_ms <= self.gap_ms) or obs_ms == start_ms
            known[start] = (value if followed else NAN, obs_ms)
            if not followed:
                log.warning("price to beat of asset %d %ds window %d unknown: first "
                            "observation %+d ms after the start, previous %s%s", aid,
                            window_s, start, obs_ms - start_ms,
                            "none" if prev is None else f"{prev - start_ms:+d} ms",
                            " (data may have been lost)" if lost else "")
            for old in sorted(known)[:-KEEP_WINDOWS]:
                del known[old]
        self._last[aid] = obs_ms
        self._lost.discard(aid)

    def _earlier(self, aid: int, obs_ms: int, value: float) -> None:
        for window_s in self.windows.get(aid, ()):
            start = obs_ms // 1000 // window_s * window_s
            got = self._ptb[(aid, window_s)].get(start)
            # only a known price (NaN stays NaN: whatever made it unknown, a late frame does
            # not prove nothing else was lost), and only moving towards the start
            if got is not None and math.isfinite(got[0]) and start * 1000 <= obs_ms < got[1]:
                self._ptb[(aid, window_s)][start] = (value, obs_ms)

    def get(self, aid: int, window_s: int, start: int) -> tuple[float, int]:
        """(price to beat, its observation ms) of that window; (NaN, 0) when not known."""
        return self._ptb.get((aid, window_s), {}).get(start, (NAN, 0))

    def restore(self, aid: int, window_s: int, start: int, value: float, obs_ms: int) -> None:
        """A known price to beat from shared memory (a restarted feed's predecessor's)."""
        if math.isfinite(value) and (aid, window_s) in self._ptb:
            self._ptb[(aid, window_s)][start] = (value, obs_ms)


class ReferencePublisher:
    """Parses RTDS frames and publishes observations; answers the scanner's questions."""

    def __init__(self, ring: RingWriter, table: TableWriter, stats: FeedStats,
                 symbols: tuple[str, ...], slots: Iterable[Slot],
                 mono_ns: Callable[[], int], stale_ms: int,
                 on_observation: Callable[[int, int, float, int], None] | None = None) -> None:
        self.ring = ring
        self.table = table
        self.stats = stats
        self.asset_of = {s: i for i, s in enumerate(symbols)}
        self.mono_ns = mono_ns
        self.stale_ms = stale_ms
        # (asset, observation ms, value, recv_ns) of every newer observation: the candles
        # of reference-sourced assets are built from them (feed_worker/refcandles.py)
        self.on_observation = on_observation
        slots = tuple(slots)
        self.ptb = PriceToBeat(slots, {s.asset: self.asset_of[s.chainlink] for s in slots})
        self._rec = np.zeros((), dtype=REF_DT)
        self._newest: dict[int, tuple[int, float]] = {}
        for aid in range(len(symbols)):
            row = table.read(aid)
            if int(row["obs_ms"]) > 0 and int(row["asset_id"]) == aid:
                self._newest[aid] = (int(row["obs_ms"]), float(row["value"]))
            else:
                fresh = np.zeros((), dtype=REF_ROW_DT)
                fresh["asset_id"], fresh["obs_ms"], fresh["value"] = aid, -1, NAN
                table.write(aid, fresh)

    def handle(self, raw: bytes | str, recv_ns: int) -> RtdsFrame | None:
        """Parse and publish one RTDS message. Returns it, or None when dropped."""
        st = self.stats
        st.rtds_messages += 1
        try:
            frame = parse_rtds(raw, recv_ns)
        except InputError as e:
            st.rtds_parse_errors += 1
            self.ptb.lost()
            n = st.rtds_parse_errors
            if n <= LOG_FIRST_ERRORS or n % LOG_EVERY_ERRORS == 0:
                log.warning("rtds: dropped malformed frame #%d (%s): %s", n, e, truncate(raw))
            return None
        if type(frame) is RefUpdate:
            aid = self.asset_of.get(frame.symbol)
            if aid is None:
                return frame                    # a symbol we did not ask for
            self._publish(aid, frame)
            st.rtds_latency.add(self.mono_ns() - recv_ns)
            st.rtds_last_message_ns = recv_ns
        return frame

    def _publish(self, aid: int, f: RefUpdate) -> None:
        rec = self._rec
        rec["asset_id"], rec["obs_ms"], rec["value"] = aid, f.obs_ms, f.value
        rec["sent_ms"], rec["recv_ns"] = f.sent_ms, f.recv_ns
        self.ring.publish(rec)
        self.stats.rtds_updates += 1
        newest = self._newest.get(aid)
        newer = False
        with self.table.update(aid) as row:
            row["count"] += 1
            if newest is not None and f.obs_ms <= newest[0]:
                row["out_of_order"] += 1
            else:
                row["obs_ms"], row["value"] = f.obs_ms, f.value
                row["sent_ms"], row["recv_ns"] = f.sent_ms, f.recv_ns
                row["updated_ns"] = self.mono_ns()
                self._newest[aid] = (f.obs_ms, f.value)
                newer = True
        if newer and self.on_observation is not None:
            self.on_observation(aid, f.obs_ms, f.value, f.recv_ns)
        self.ptb.observe(aid, f.obs_ms, f.value)

    def on_disconnect(self) -> None:
        """The stream was interrupted: what was sent meanwhile is lost."""
        self.ptb.lost()

    # -- the scanner's questions ---------------------------------------------------------------

    def newest(self, symbol: str, now_ms: int) -> tuple[float, int, RefStatus]:
        """(value, observation ms, status) of the newest reference of this symbol."""
        aid = self.asset_of.get(symbol)
        got = self._newest.get(aid) if aid is not None else None
        if got is None:
            return NAN, 0, RefStatus.NONE
        obs_ms, value = got
        status = RefStatus.STALE if now_ms - obs_ms > self.stale_ms else RefStatus.OK
        return value, obs_ms, status

    def price_to_beat(self, slot: Slot, start: int) -> tuple[float, int]:
        aid = self.asset_of.get(slot.chainlink)
        return (NAN, 0) if aid is None else self.ptb.get(aid, slot.window_s, start)
