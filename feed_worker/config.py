"""What the feed worker is asked to do, declared up front; resources are acquired elsewhere.

Durations say which clock they are on. ``*_s`` fields named "clock" are in the run's clock
(simulated seconds under the sim, real seconds in paper/live), because they describe exchange
behaviour that the sim accelerates. ``*_wall_s`` fields are real seconds: they protect this
machine (CPU, connection attempts) and must not shrink when the sim runs 60x.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.markets import CHAINLINK_SYMBOLS, INTERVAL_MS, KLINE_INTERVALS, SLOTS, SYMBOLS, Slot
from core.reference import REF_STALE_S, stale_limit_s

# Binance's documented update speed of a kline stream (clock seconds). It is a maximum rate,
# not a promise: an update is only pushed when the candle changed, so a single stream can be
# silent for several seconds (python-binance#368, node-binance-api#509).
UPDATE_INTERVAL_S: dict[str, float] = {"1s": 1.0}
DEFAULT_UPDATE_INTERVAL_S = 2.0


def update_interval_s(interval: str) -> float:
    return UPDATE_INTERVAL_S.get(interval, DEFAULT_UPDATE_INTERVAL_S)


@dataclass(frozen=True)
class FeedConfig:
    symbols: tuple[str, ...] = SYMBOLS
    intervals: tuple[str, ...] = KLINE_INTERVALS
    slots: tuple[Slot, ...] = SLOTS

    # --- Binance stream (connection care) ---
    # The connection is stalled when nothing at all arrived on it for 2 x the fastest
    # stream's update interval (clock): with 24 streams something always changes somewhere.
    stall_factor: float = 2.0
    stall_floor_wall_s: float = 1.0     # ...but never sooner than this (a busy 2-core box)
    # One stream alone is stalled only after stream_stall_factor x its candle interval, and
    # at least stream_stall_floor_s (clock): a quiet market legitimately sends nothing for a
    # while, and the backfill audit catches a missed closed candle anyway.
    stream_stall_factor: float = 1.5
    stream_stall_floor_s: float = 60.0
    rotate_after_s: float = 23 * 3600   # clock; Binance closes connections at 24 h
    backoff_base_wall_s: float = 0.25
    backoff_cap_wall_s: float = 30.0
    backoff_reset_wall_s: float = 10.0  # a connection this old resets the backoff
    open_timeout_wall_s: float = 10.0
    ping_interval_wall_s: float | None = 20.0   # our own keepalive pings (server pings too)
    watchdog_wall_s: float = 0.1        # how often stall/rotation conditions are checked

    # --- RTDS (the Chainlink reference) ---
    rtds: bool = True                   # off: no reference price (slots stay unpriced)
    rtds_symbols: tuple[str, ...] = CHAINLINK_SYMBOLS
    rtds_ping_wall_s: float = 5.0       # the text PING RTDS asks for every 5 s
    rtds_stall_s: float = 5.0           # clock; no observation at all on the connection
    rtds_symbol_stall_s: float = 10.0   # clock; one symbol that had been sending
    ref_stale_s: float = REF_STALE_S    # clock; an older reference marks its slots STALE

    # --- REST backfill ---
    backfill_concurrency: int = 4
    weight_limit_1m: int = 6000         # Binance: request weight per minute per IP
    weight_soft_fraction: float = 0.8   # pause new requests past this share of the limit
    default_retry_after_s: float = 60.0 # real s; when a 429/418 carries no Retry-After
    audit_wall_s: float = 0.5           # how often rows are checked for lag behind the clock
    audit_grace_s: float = 5.0          # clock; a closed candle may lag this long via WS
    audit_grace_wall_s: float = 1.0     # ...and at least this long in real time
    max_retry_after_s: float = 3 * 86400.0   # real s; a 418 ban lasts 2 min .. 3 days
    # "Closed" is decided on Binance's time: a candle counts as closed when it ended more
    # than closed_margin_s (clock) before our estimate of the server's clock, and that
    # estimate never runs ahead of our own clock. GET /api/v3/time is re-read this often.
    closed_margin_s: float = 2.0
    time_sync_s: float = 600.0           # clock
    time_sync_wall_s: float = 5.0        # ...and at most this often in real time
    time_sync_samples: int = 3           # the lowest-RTT sample of these is used
    # A row with fewer than the window's candles asks REST for older history (to fill back
    # across an exchange hole once Binance has the data) at most this often.
    history_retry_s: float = 600.0       # clock
    history_retry_wall_s: float = 5.0    # ...and at most this often in real time

    # --- market scanner ---
    scan_interval_s: float = 5.0        # clock
    scan_min_wall_s: float = 0.05       # never scan more often than this (real seconds)
    gamma_refresh_s: float = 5.0        # clock; re-read a known market's acceptingOrders
    gamma_refresh_wall_s: float = 1.0   # ...at most this often in real time
    scan_concurrency: int = 8
    http_timeout_wall_s: float = 5.0    # per request; REST backfill and scanner share one client
    scan_default_retry_after_wall_s: float = 5.0   # a 429 from Gamma/CLOB without the header
    scan_max_retry_after_wall_s: float = 600.0

    # --- status ---
    heartbeat_wall_s: float = 0.25
    latency_reservoir: int = 8192

    def __post_init__(self) -> None:
        bad = [s for s in self.symbols if s not in SYMBOLS]
        bad += [i for i in self.intervals if i not in KLINE_INTERVALS]
        if bad:
            raise ValueError(f"unknown symbols/intervals {bad}: the shared layout indexes "
                             f"{SYMBOLS} x {KLINE_INTERVALS}")

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(f"{s.lower()}@kline_{i}" for s in self.symbols for i in self.intervals)

    def stall_after_wall_s(self, speed: float) -> float:
        """Silence of the whole connection (real seconds) after which it counts as stalled."""
        fastest = min(update_interval_s(i) for i in self.intervals)
        return max(self.stall_floor_wall_s, self.stall_factor * fastest / speed)

    def rtds_stall_after_wall_s(self, speed: float) -> float:
        return max(self.stall_floor_wall_s, self.rtds_stall_s / speed)

    def rtds_symbol_stall_after_wall_s(self, speed: float) -> float:
        return max(self.stall_floor_wall_s, self.rtds_symbol_stall_s / speed)

    def ref_stale_ms(self, speed: float) -> int:
        """The reference staleness limit, clock ms (see core.reference)."""
        return int(stale_limit_s(speed, self.ref_stale_s) * 1000)

    def stream_stall_after_wall_s(self, interval: str, speed: float) -> float:
        """Silence of one stream (real seconds) after which it counts as stalled."""
        clock_s = max(self.stream_stall_floor_s,
                      self.stream_stall_factor * INTERVAL_MS[interval] / 1000)
        return max(self.stall_floor_wall_s, clock_s / speed)
