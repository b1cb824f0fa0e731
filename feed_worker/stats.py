"""Counters and receive-to-publish latency, mirrored into the one-row ``feedstats`` table.

Counters are plain Python ints on the hot path (an increment costs nothing) and are copied
into shared memory by :meth:`FeedStats.flush`, which the heartbeat calls every 0.25 s: status
readers see values at most one heartbeat old. After a restart the counters continue from
what shared memory holds, so "reconnects" and "gaps filled" span the feed's whole run.

Latency is measured per kline update (and, separately, per RTDS observation) from
``recv_ns`` (monotonic, stamped when the frame was handed to us by the WebSocket library)
to the moment the record is in the ring (and, for a closed candle, in its window). The last
``size`` samples are kept in a reservoir; p50 and p99 over it are written at every flush.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from state.layout import FEED_STATS_DT
from state.table import TableWriter

# states of this incarnation's connections: never continued from a predecessor's row
LIVE_ONLY = ("connected", "state", "rtds_connected", "rtds_state")


class LatencyReservoir:
    """The most recent ``size`` latency samples (ns), overwriting the oldest."""

    def __init__(self, size: int = 8192) -> None:
        self._buf = np.zeros(size, dtype=np.int64)
        self._size = size
        self.total = 0

    def add(self, ns: int) -> None:
        self._buf[self.total % self._size] = ns
        self.total += 1

    def percentiles_us(self) -> tuple[float, float]:
        """(p50, p99) in microseconds; NaN when there are no samples yet."""
        n = min(self.total, self._size)
        if n == 0:
            return math.nan, math.nan
        p50, p99 = np.percentile(self._buf[:n], [50, 99])
        return float(p50) / 1e3, float(p99) / 1e3


@dataclass
class FeedStats:
    messages: int = 0
    reconnects: int = 0
    gaps_filled: int = 0
    parse_errors: int = 0
    stale_episodes: int = 0
    rest_errors: int = 0
    scans: int = 0
    scan_errors: int = 0
    backfilled: int = 0
    rate_limited: int = 0
    rotations: int = 0
    starts: int = 0
    tick: int = 0
    slots_ok: int = 0
    last_message_ns: int = 0
    connected: int = 0
    state: int = 0
    # the RTDS (Chainlink reference) stream
    rtds_messages: int = 0
    rtds_updates: int = 0
    rtds_reconnects: int = 0
    rtds_parse_errors: int = 0
    rtds_stale_episodes: int = 0
    rtds_last_message_ns: int = 0
    rtds_connected: int = 0
    rtds_state: int = 0

    def __post_init__(self) -> None:
        self.latency = LatencyReservoir()
        self.rtds_latency = LatencyReservoir()

    @classmethod
    def load(cls, table: TableWriter, reservoir: int = 8192) -> FeedStats:
        """Continue from the counters a previous incarnation left in shared memory."""
        row = table.read(0)
        st = cls(**{f.name: int(row[f.name]) for f in fields(cls)
                    if f.name not in LIVE_ONLY})
        st.latency = LatencyReservoir(reservoir)
        st.rtds_latency = LatencyReservoir(reservoir)
        return st

    def flush(self, table: TableWriter) -> None:
        """Copy every counter and the current percentiles into the shared row."""
        p50, p99 = self.latency.percentiles_us()
        r50, r99 = self.rtds_latency.percentiles_us()
        with table.update(0) as row:
            for f in fields(self):
                row[f.name] = getattr(self, f.name)
            row["latency_p50_us"] = p50
            row["latency_p99_us"] = p99
            row["rtds_latency_p50_us"] = r50
            row["rtds_latency_p99_us"] = r99

    def as_dict(self) -> dict:
        p50, p99 = self.latency.percentiles_us()
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(latency_p50_us=p50, latency_p99_us=p99, latency_samples=self.latency.total)
        r50, r99 = self.rtds_latency.percentiles_us()
        d.update(rtds_latency_p50_us=r50, rtds_latency_p99_us=r99)
        return d


assert {f.name for f in fields(FeedStats)} <= set(FEED_STATS_DT.names)
