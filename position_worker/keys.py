"""Deterministic identities of an order, derived from its idempotency key alone.

The idempotency key is (slot, window_start): at most one order per market slot and window,
ever. Everything else is a pure function of it and independent of the run, so a restarted
worker (or one started on a fresh journal) derives the same client key and the same on-chain
``metadata`` for the same window, and an order found on the exchange can be recognised.
"""

from __future__ import annotations

import hashlib


def idem_key(slot: int, window_start: int) -> str:
    return f"{int(slot)}:{int(window_start)}"


def _digest(slot: int, window_start: int) -> str:
    return hashlib.sha256(f"noblink:{idem_key(slot, window_start)}".encode()).hexdigest()


def client_key(slot: int, window_start: int) -> str:
    """16 hex characters: the journal's primary key for the order."""
    return _digest(slot, window_start)[:16]


def order_metadata(slot: int, window_start: int) -> str:
    """The bytes32 ``metadata`` field of the signed order (0x + 64 hex)."""
    return "0x" + _digest(slot, window_start)
