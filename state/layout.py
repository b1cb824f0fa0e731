"""Every record layout that crosses a process boundary, in one place.

All dtypes are little-endian, packed explicitly (``align=False``) and padded by hand so that
the byte offsets below are the real ones. A layout change MUST bump ``LAYOUT_VERSION``; the
layout hash (computed from the dtypes themselves) catches the changes someone forgot to bump,
because an attaching process refuses a segment whose hash differs from its own.

Common segment header (64 bytes, at offset 0 of every segment; see state/segment.py):

    off size field
    0   8    magic            b"NOBLINK\\x01"
    8   4    layout_version   u32
    12  4    kind             u32   (SegmentKind)
    16  8    layout_hash      u64   (hash of this kind's dtypes and parameters)
    24  8    size             u64   (total bytes of the file)
    32  4    creator_pid      u32
    36  4    reserved         u32
    40  8    created_ns       u64   (time.time_ns() at creation)
    48  16   name             bytes (segment short name, NUL padded)

Each structure module (ring, table, control, snapshot) documents the payload that follows.
"""

from __future__ import annotations

import enum
import hashlib

import numpy as np

from core.markets import N_SLOTS, UNIVERSE

LAYOUT_VERSION = 3           # 3: the universe from config (slot count, candle rows per asset)
MAGIC = b"NOBLINK\x01"
CACHE_LINE = 64
HEADER_SIZE = 64

HEADER_DT = np.dtype([
    ("magic", "S8"),
    ("layout_version", "<u4"),
    ("kind", "<u4"),
    ("layout_hash", "<u8"),
    ("size", "<u8"),
    ("creator_pid", "<u4"),
    ("reserved", "<u4"),
    ("created_ns", "<u8"),
    ("name", "S16"),
])
assert HEADER_DT.itemsize == HEADER_SIZE


class SegmentKind(enum.IntEnum):
    RING = 1
    TABLE = 2
    CONTROL = 3
    SNAPSHOT = 4


def layout_hash(*parts: object) -> int:
    """A stable 64-bit hash of dtypes and parameters (not Python's randomised ``hash``).

    It covers the universe (core.universe): the slot and asset indices in every record mean
    its assets, so a segment made for another universe is another layout, even with the same
    sizes."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(LAYOUT_VERSION).encode())
    h.update(UNIVERSE.fingerprint.encode())
    for p in parts:
        h.update(b"\x1f")
        h.update(repr(p.descr if isinstance(p, np.dtype) else p).encode())
    return int.from_bytes(h.digest(), "little")


# --- candles -----------------------------------------------------------------------------

# One kline update (ring record) or one closed candle (window element), from Binance or
# built from the reference (feed_worker). 96 bytes.
# Prices are float64: Binance sends decimal strings; float64 holds their 8 significant
# digits exactly enough for signals, and the raw string never has to cross a process.
KLINE_DT = np.dtype([
    ("symbol_id", "<u2"),      # the asset's index (core.markets.CANDLE_SYMBOLS)
    ("interval_id", "<u2"),    # index into core.markets.KLINE_INTERVALS
    ("closed", "u1"),          # 1 only on Binance's final update (x=true)
    ("_pad", "u1", (3,)),
    ("open_time", "<i8"),      # ms, k.t
    ("close_time", "<i8"),     # ms, k.T
    ("open", "<f8"),
    ("high", "<f8"),
    ("low", "<f8"),
    ("close", "<f8"),
    ("volume", "<f8"),
    ("quote_volume", "<f8"),
    ("trades", "<i8"),
    ("event_time", "<i8"),     # ms, E
    ("recv_ns", "<i8"),        # monotonic ns when the frame arrived (latency)
])
assert KLINE_DT.itemsize == 96

WINDOW_CAPACITY = 512          # >= 500 closed candles per symbol x interval

# One row per (symbol, interval): the rolling window of closed candles, oldest first.
WINDOW_ROW_DT = np.dtype([
    ("symbol_id", "<u2"),
    ("interval_id", "<u2"),
    ("_pad", "u1", (4,)),
    ("count", "<u8"),          # valid candles in candles[:count]
    ("last_open_time", "<i8"), # open_time of candles[count-1], -1 when empty
    ("updated_ns", "<i8"),
    ("candles", KLINE_DT, (WINDOW_CAPACITY,)),
])

# --- markets (the universe's slots) --------------------------------------------------------------

class RefStatus(enum.IntEnum):
    """How fresh a slot's reference price (Chainlink via RTDS) is, as the scanner saw it."""

    NONE = 0            # no observation yet for this asset
    OK = 1
    STALE = 2           # the newest observation is older than the staleness limit


class SlotStatus(enum.IntEnum):
    EMPTY = 0
    OK = 1
    NOT_LISTED = 2      # the window's market does not exist on Gamma yet
    NO_BOOK = 3         # listed, but the CLOB has no book for it yet
    ERROR = 4           # the last scan failed; the row holds the previous good data


class SeriesStatus(enum.IntEnum):
    """Whether a configured series (asset x window) is listed on Gamma at all, as the
    scanner saw it: NOT_LISTED when neither the current nor the next window's market exists
    (a configured series Polymarket does not run), rather than a silently empty slot."""

    UNKNOWN = 0         # not scanned yet, or only errors so far
    LISTED = 1
    NOT_LISTED = 2


MARKET_DT = np.dtype([
    ("slot", "<u2"),
    ("status", "u1"),
    ("accepting", "u1"),
    ("window_s", "<u4"),
    ("window_start", "<i8"),   # unix seconds
    ("end_ts", "<i8"),         # unix seconds
    ("slug", "S48"),
    ("condition_id", "S80"),
    ("up_token", "S80"),       # Polymarket token ids are ~77-digit decimal strings
    ("down_token", "S80"),
    ("up_bid", "<f8"), ("up_ask", "<f8"), ("up_bid_size", "<f8"), ("up_ask_size", "<f8"),
    ("down_bid", "<f8"), ("down_ask", "<f8"), ("down_bid_size", "<f8"), ("down_ask_size", "<f8"),
    ("tick", "<u8"),           # scanner tick that wrote this row
    ("updated_ns", "<i8"),
    ("next_status", "u1"),     # SlotStatus of the next window's market
    ("ref_status", "u1"),      # RefStatus of ref_price at this tick
    ("series", "u1"),          # SeriesStatus of the slot's series (asset x window)
    ("_pad", "u1", (5,)),
    # The reference (Chainlink on RTDS) the market resolves on. Times are the stream's own
    # observation times (payload.timestamp, clock ms), never our arrival time.
    ("ref_price", "<f8"),      # newest observation when the row was written (NaN: none)
    ("ref_ms", "<i8"),         # its observation time
    ("price_to_beat", "<f8"),  # the reference at window_start (NaN: not known, see feed docs)
    ("ptb_ms", "<i8"),         # observation time of the price to beat (>= window_start * 1000)
    ("tick_size", "<f8"),      # the market's own price tick (Gamma orderPriceMinTickSize)
    ("min_size", "<f8"),       # the market's minimum order size in shares (orderMinSize)
])

# A scanner tick, published into the tick ring so strategies can block on "next tick". It
# carries a copy of every slot's market row as the scanner wrote it for this tick, so a
# strategy evaluates tick t on tick t's markets even when it reads the record late (the live
# markets table may already hold tick t+1's rows). 32 + N_SLOTS x MARKET_DT bytes.
TICK_DT = np.dtype([
    ("tick", "<u8"),
    ("tick_time_ms", "<i8"),   # clock time of the scan (sim ms in sim mode)
    ("mono_ns", "<i8"),
    ("slots_ok", "<u4"),       # slots with a current market and book
    ("_pad", "u1", (4,)),
    ("markets", MARKET_DT, (N_SLOTS,)),
])

# --- the reference price (Chainlink via RTDS) -----------------------------------------------

# One observation from RTDS's crypto_prices_chainlink topic (ring record). 40 bytes.
REF_DT = np.dtype([
    ("asset_id", "<u2"),       # index into the universe's assets (core.markets.ASSETS)
    ("_pad", "u1", (6,)),
    ("obs_ms", "<i8"),         # payload.timestamp: when the price was observed (clock ms)
    ("value", "<f8"),          # payload.value
    ("sent_ms", "<i8"),        # the message's timestamp: when RTDS sent it
    ("recv_ns", "<i8"),        # monotonic ns when the frame arrived (latency)
])
assert REF_DT.itemsize == 40

# The newest observation per asset (one row per asset, universe order). 64 bytes.
REF_ROW_DT = np.dtype([
    ("asset_id", "<u2"),
    ("_pad", "u1", (6,)),
    ("obs_ms", "<i8"),         # -1 when none yet
    ("value", "<f8"),
    ("sent_ms", "<i8"),
    ("recv_ns", "<i8"),
    ("updated_ns", "<i8"),     # monotonic ns of the write
    ("count", "<u8"),          # observations received for this asset
    ("out_of_order", "<u8"),   # observations older than the newest (kept out of the row)
])
assert REF_ROW_DT.itemsize == 64

# --- orders and positions ----------------------------------------------------------------

class Outcome(enum.IntEnum):
    UP = 0
    DOWN = 1


class PositionState(enum.IntEnum):
    EMPTY = 0
    PENDING = 1      # order journaled, not yet confirmed
    OPEN = 2         # filled, window not settled
    SETTLED = 3
    FAILED = 4       # order rejected / unfilled: no exposure


# An order intent from a strategy worker. 128 bytes.
INTENT_DT = np.dtype([
    ("epoch", "<u8"),          # the writer's strategy epoch: fencing token
    ("intent_id", "<u8"),      # per-writer sequence, for logs
    ("created_ns", "<i8"),     # wall ns
    ("slot", "<u2"),
    ("outcome", "u1"),         # Outcome
    ("_pad", "u1", (5,)),
    ("window_start", "<i8"),   # with slot: the idempotency key
    ("stake", "<f8"),          # dollars
    ("max_price", "<f8"),
    ("slug", "S48"),
    ("reason", "S24"),
])
assert INTENT_DT.itemsize == 128

POSITION_CAPACITY = 1024

POSITION_DT = np.dtype([
    ("state", "u1"),
    ("outcome", "u1"),
    ("slot", "<u2"),
    ("_pad", "u1", (4,)),
    ("window_start", "<i8"),
    ("end_ts", "<i8"),
    ("epoch", "<u8"),
    ("slug", "S48"),
    ("token", "S80"),
    ("order_id", "S80"),
    ("client_key", "S32"),
    ("stake", "<f8"),
    ("shares", "<f8"),
    ("avg_price", "<f8"),
    ("fees", "<f8"),
    ("pnl", "<f8"),
    ("opened_ns", "<i8"),
    ("settled_ns", "<i8"),
])

# --- per-process counters (one-row tables) -----------------------------------------------

FEED_STATS_DT = np.dtype([
    ("messages", "<u8"),
    ("reconnects", "<u8"),
    ("gaps_filled", "<u8"),
    ("parse_errors", "<u8"),
    ("stale_episodes", "<u8"),
    ("rest_errors", "<u8"),
    ("scans", "<u8"),
    ("scan_errors", "<u8"),
    ("latency_p50_us", "<f8"),
    ("latency_p99_us", "<f8"),
    ("last_message_ns", "<i8"),
    ("backfilled", "<u8"),     # closed candles written from REST (start, reconnects, gaps)
    ("rate_limited", "<u8"),   # REST 429/418 answers honoured (Retry-After)
    ("rotations", "<u8"),      # planned reconnects: 24 h rotation, serverShutdown
    ("starts", "<u8"),         # feed process starts on these segments (>1: restarted)
    ("tick", "<u8"),           # last scanner tick
    ("slots_ok", "<u4"),       # slots with status OK at the last tick
    ("connected", "u1"),
    ("state", "u1"),           # feed_worker.lifecycle.FeedState
    ("rtds_connected", "u1"),
    ("rtds_state", "u1"),      # feed_worker.lifecycle.ConnState of the RTDS connection
    ("rtds_messages", "<u8"),  # RTDS frames received (data, PONG and malformed)
    ("rtds_updates", "<u8"),   # reference observations published
    ("rtds_reconnects", "<u8"),
    ("rtds_parse_errors", "<u8"),
    ("rtds_stale_episodes", "<u8"),
    ("rtds_latency_p50_us", "<f8"),
    ("rtds_latency_p99_us", "<f8"),
    ("rtds_last_message_ns", "<i8"),
])

N_REJECT_REASONS = 16

POSITION_STATS_DT = np.dtype([
    ("intents", "<u8"),
    ("orders", "<u8"),
    ("open_positions", "<u8"),
    ("settled", "<u8"),
    ("wins", "<u8"),
    ("losses", "<u8"),
    ("streak", "<i8"),         # +n wins in a row, -n losses in a row
    ("pnl", "<f8"),
    ("fees", "<f8"),
    ("exposure", "<f8"),
    ("win_rate_100", "<f8"),
    ("win_rate_all", "<f8"),
    ("rejected", "<u8", (N_REJECT_REASONS,)),   # index: position_worker RejectReason
    ("mismatches", "<u8"),
    ("paused", "u1"),
    ("_pad", "u1", (7,)),
])

# --- control block -----------------------------------------------------------------------

class WorkerRole(enum.IntEnum):
    NONE = 0
    SUPERVISOR = 1
    FEED = 2
    POSITION = 3
    STRATEGY = 4
    SIM = 5


MAX_WORKERS = 8
MAX_EPOCH_TICKS = 8

# A worker's slot in the control block: exactly one cache line, so one worker's heartbeat
# store never invalidates another worker's line.
WORKER_DT = np.dtype({
    "names": ["heartbeat_ns", "pid", "role", "state", "lane", "epoch", "started_ns", "label"],
    "formats": ["<i8", "<u4", "u1", "u1", "u1", "<u8", "<i8", "S24"],
    "offsets": [0, 8, 12, 13, 14, 16, 24, 32],
    "itemsize": CACHE_LINE,
})

EPOCH_TICK_DT = np.dtype([("epoch", "<u8"), ("tick", "<u8")])

N_LANES = 2
MAX_SLOTS = 32          # decision codes per lane record (the universe has at most this many)
DECISION_HISTORY = 4    # ticks of decisions kept per lane (shadow comparison, status)


class LaneCommand(enum.IntEnum):
    """What the supervisor asks of the strategy worker on a lane (see state/control.py)."""

    NONE = 0
    DRAIN = 1          # finish the cycle, final snapshot, stop trading, report G/T/H
    RESUME = 2         # a drained worker goes back to trading (rollback after drain)
    HANDOFF = 3        # restore exactly generation arg_gen (epoch arg_epoch, tick arg_tick)
    RETIRE = 4         # exit 0 (after the flip, or a standby that is not wanted)
    SHADOW = 5         # evaluate arg_n live ticks beside the active worker, never trade
    TAKEOVER = 6       # when lane arg_n acknowledges its DRAIN (seq arg_gen), restore the
                       # generation it reports (epoch arg_epoch): HANDOFF without a hop
                       # through the supervisor


class LaneAck(enum.IntEnum):
    NONE = 0
    OK = 1
    ERROR = 2


class Decided(enum.IntEnum):
    """One slot's decision code in a lane record."""

    NOT_EVALUATED = 0    # the slot had no listed market with a book at this tick
    NONE = 1             # evaluated: no trade
    UP = 2
    DOWN = 3
    ERROR = 4            # evaluate() raised


# Upper bounds (ms) of the evaluation-time histogram's buckets; the last one is +Inf.
EVAL_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0)

# One strategy lane's mailbox in the control block (supervisor -> worker commands, worker ->
# supervisor reports). Commands: the supervisor writes the arguments, then cmd, then cmd_seq
# last; reports: the worker writes every field, then ack_seq last. 448 bytes.
LANE_DT = np.dtype({
    "names": ["cmd_seq", "cmd", "arg_gen", "arg_tick", "arg_epoch", "arg_n",
              "ack_seq", "ack", "gen", "tick", "head", "evaluated", "eval_errors", "skipped",
              "first_lat_ns", "lat_p50_ns", "active_tick", "shadow_diffs",
              "dec_ticks", "decisions", "eval_buckets", "eval_sum_ns"],
    "formats": ["<u8", "<u4", "<u8", "<u8", "<u8", "<u8",
                "<u8", "<u4", "<u8", "<u8", "<u8", "<u8", "<u8", "<u8",
                "<i8", "<i8", "<u8", "<u8",
                ("<u8", (DECISION_HISTORY,)), ("u1", (DECISION_HISTORY, MAX_SLOTS)),
                ("<u8", (len(EVAL_BUCKETS_MS) + 1,)), "<u8"],
    "offsets": [0, 8, 16, 24, 32, 40,
                64, 72, 80, 88, 96, 104, 112, 120,
                128, 136, 144, 152,
                192, 224, 352, 416],
    "itemsize": 448,
})


# The strategy snapshot region's per-buffer header (see state/snapshot.py). 64 bytes.
SNAPSHOT_META_DT = np.dtype({
    "names": ["generation", "length", "crc32", "schema_version", "written_ns", "epoch"],
    "formats": ["<u8", "<u8", "<u4", "<u4", "<i8", "<u8"],
    "offsets": [0, 8, 16, 20, 24, 32],
    "itemsize": CACHE_LINE,
})
