"""A bounded replacement for py-clob-client-v2's per-token caches.

The client caches each token's market parameters (tick size, neg-risk flag, fee info, fee
rate, the token's condition id) in plain dicts that are never pruned. Every 5m/15m window
has new tokens, so one order adds about a kilobyte to them for the life of the process
(measured in a 60x bot run: ~1.2 KiB per order, a leak without bound in a 24/7 worker).

The entries are only needed while an order of that token is being built: ``prepare`` fetches
them (``create_market_order`` -> the CLOB market info) and reads them right away. An entry
dropped later costs one GET the next time its token is used, nothing else: these are market
parameters read from the venue, not state of ours.
"""

from __future__ import annotations

import threading
from typing import Any

# Tokens kept per cache: the two outcome tokens of every slot's current and next window
# (4 x N_SLOTS = 64 at 16 slots), several times over. The oldest insertion goes first.
TOKEN_CACHE_SIZE = 256


class BoundedCache(dict[Any, Any]):
    """A dict that forgets its oldest key once it holds ``maxlen`` of them (FIFO).

    Only item assignment is bounded, which is the only way the client writes its caches.
    Writes come from the executor's thread pool: eviction and insert hold a lock. A key just
    written is the newest, so a reader that writes then reads (as the client does) always
    finds it unless ``maxlen`` other keys were written in between."""

    def __init__(self, maxlen: int = TOKEN_CACHE_SIZE) -> None:
        super().__init__()
        if maxlen < 1:
            raise ValueError(f"maxlen {maxlen} < 1")
        self.maxlen = maxlen
        self._lock = threading.Lock()

    def __setitem__(self, key: Any, value: Any) -> None:
        with self._lock:
            if key not in self:
                while len(self) >= self.maxlen:
                    del self[next(iter(self))]
            super().__setitem__(key, value)
