"""The executor interface, its value types, and the errors that carry the money-safety policy.

An order goes through two calls so the journal can sit between them:

1. ``prepare(request)`` builds (and for the CLOB, signs) the order. It may read from the
   exchange (tick size, fee info) but never changes anything there: if it fails, nothing was
   sent and the order can be failed safely.
2. The worker journals the prepared request (state SENDING, fsynced).
3. ``place(prepared)`` sends it. ``SendUncertain`` means the request may have reached the
   exchange: the order is never re-sent; it is looked up (``lookup``) until its fate is known.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any

from core.errors import NoblinkError
from position_worker.journal import Fill, OrderRow

TAKER_FEE_RATE = 0.07     # crypto up/down markets: fee = shares * rate * p * (1 - p)


def taker_fee(shares: float, price: float, rate: float = TAKER_FEE_RATE) -> float:
    return shares * rate * price * (1.0 - price)


class PrepareError(NoblinkError):
    """The order could not be built; nothing was sent."""


class SendUncertain(NoblinkError):
    """The request may or may not have reached the exchange (timeout, reset, 5xx)."""


class OrderStatus(enum.StrEnum):
    FILLED = "FILLED"        # fully filled (FOK): a position
    ACKED = "ACKED"          # on the exchange, not filled yet (delayed / live)
    REJECTED = "REJECTED"    # refused or killed: no position
    NOT_FOUND = "NOT_FOUND"  # lookup only: the exchange knows nothing of it


@dataclass(frozen=True)
class OrderRequest:
    client_key: str
    metadata: str            # bytes32 hex, deterministic per idempotency key
    slot: int
    window_start: int
    slug: str
    condition_id: str
    outcome: int
    token: str
    stake: float             # $ to spend
    max_price: float         # worst price accepted

    @classmethod
    def from_order(cls, o: OrderRow, metadata: str) -> OrderRequest:
        return cls(client_key=o.client_key, metadata=metadata, slot=o.slot,
                   window_start=o.window_start, slug=o.slug, condition_id=o.condition_id,
                   outcome=o.outcome, token=o.token, stake=o.stake, max_price=o.max_price)


@dataclass
class Prepared:
    request: OrderRequest
    order_id: str                    # the id the exchange will know it by, if computable
    payload: dict[str, Any]          # journaled as sent (JSON); never holds credentials
    native: Any = None               # the executor's own object (e.g. the signed order)


@dataclass
class OrderResult:
    status: OrderStatus
    order_id: str = ""
    fills: list[Fill] = field(default_factory=list)
    error: str = ""
    raw: Any = None

    @property
    def shares(self) -> float:
        return sum(f.size for f in self.fills)

    @property
    def cost(self) -> float:
        return sum(f.size * f.price for f in self.fills)

    @property
    def fees(self) -> float:
        return sum(f.fee for f in self.fills)


class Executor(abc.ABC):
    """One implementation per venue; the worker never knows which one it talks to."""

    name = "base"

    async def start(self) -> None:
        """Connect / authenticate. Called once before any other call."""
        return None

    @abc.abstractmethod
    async def prepare(self, req: OrderRequest) -> Prepared:
        """Build (and sign) the order; raises PrepareError. No side effect on the venue."""

    @abc.abstractmethod
    async def place(self, p: Prepared) -> OrderResult:
        """Send once. Raises SendUncertain when the outcome is unknown; never retries."""

    @abc.abstractmethod
    async def lookup(self, o: OrderRow) -> OrderResult:
        """What the venue knows of a journaled order (NOT_FOUND when nothing)."""

    @abc.abstractmethod
    async def open_orders(self) -> list[dict]:
        """The account's open orders, as the venue reports them."""

    @abc.abstractmethod
    async def cancel_all(self) -> int:
        """Cancel every open order of the account at the venue (the kill switch); the number
        cancelled. Raises RetryableError when the venue did not answer as expected."""

    @abc.abstractmethod
    async def trades(self, after: int | None = None) -> list[dict]:
        """The account's trades matched after ``after`` (unix s, venue clock), normalised:
        id, order_id, asset_id, side, price, size, status."""

    async def close(self) -> None:
        """Release connections. Idempotent."""
        return None
