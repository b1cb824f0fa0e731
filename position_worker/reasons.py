"""Why an intent was refused. The value indexes ``POSITION_STATS_DT.rejected`` (16 slots).

Append new reasons at the end: the numbers are a shared-memory and journal contract.
"""

from __future__ import annotations

import enum

from state.layout import N_REJECT_REASONS


class RejectReason(enum.IntEnum):
    STALE_EPOCH = 0       # fencing: the writer's epoch is not the active epoch
    DUPLICATE = 1         # idempotency: an order for this (slot, window) already exists
    PAUSED = 2            # the pause / kill-switch flag is set
    MAX_OPEN = 3
    MAX_EXPOSURE = 4
    DAILY_LOSS = 5        # today's realised loss reached the limit
    NOT_ACCEPTING = 6     # no current market, not accepting orders, or its window is over
    MARKET_MISMATCH = 7   # the intent names another window/slug than the slot's market
    PRICE_ABOVE_MAX = 8   # best ask > the intent's max price
    MIN_SIZE = 9          # the order would be below the exchange's minimum size
    BAD_INTENT = 10       # malformed: unknown slot/outcome, NaN, price out of (0, 1)
    STAKE = 11            # the stake is not the configured fixed stake
    STALE_BOOK = 12       # the scanned book is too old to trust
    NO_BOOK = 13          # no ask on the wanted side
    FENCED = 14           # hot reload: the intent's lane was closed (fenced) when its worker
                          # drained; only intents below the fence may still trade
    STALE_REFERENCE = 15  # the reference price the market resolves on (Chainlink) is missing
                          # or older than the limit, or the window's price to beat is unknown


assert len(RejectReason) <= N_REJECT_REASONS
