"""Gamma market objects (``/markets/slug/{slug}``): one parser for every reader.

The scanner needs a market's tokens, end and whether it accepts orders; the position worker
needs its resolution. Both read the same document, so both go through :func:`parse_market`,
and a quirk of the format is handled once:

- ``outcomes``, ``outcomePrices`` and ``clobTokenIds`` are JSON-encoded *strings* holding
  lists (a real list is accepted too); outcomes pair with prices and tokens by position, and
  Up is never assumed to come first;
- booleans must be real JSON booleans: the string ``"false"`` is truthy in Python, and a
  market wrongly read as closed (or accepting) is money lost;
- ``/markets?slug=`` answers a one-element list, ``/markets/slug/{slug}`` the object itself;
- ``orderPriceMinTickSize`` and ``orderMinSize`` are the market's own tick and minimum size
  (absent: None, the caller decides the default).

A market is resolved when ``closed`` is true and its ``outcomePrices`` (each finite and within
[0, 1], else the document is malformed) have settled to payout values: each price 0 or 1, or
a documented split such as 0.5/0.5 with ``umaResolutionStatus`` "resolved".
Everything malformed raises ``InputError`` with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from core.errors import InputError
from core.proc import truncate


@dataclass(frozen=True)
class Resolution:
    slug: str
    payouts: dict[str, float]       # outcome name (lower case) -> payout per share

    @property
    def winner(self) -> str:
        return max(self.payouts, key=lambda k: self.payouts[k])


@dataclass(frozen=True)
class GammaMarket:
    slug: str
    condition_id: str
    outcomes: tuple[str, ...]            # lower case, in the document's order
    tokens: tuple[str, ...]              # clobTokenIds, paired with outcomes (may be empty)
    prices: tuple[float, ...] | None     # outcomePrices, None when absent
    end_ts: int | None                   # endDate, epoch seconds
    accepting: bool
    closed: bool
    uma_resolved: bool
    tick_size: float | None
    min_size: float | None

    def up_down_tokens(self) -> tuple[str, str]:
        """(Up token, Down token). InputError unless the outcomes are exactly Up and Down,
        each with a token."""
        if len(self.outcomes) != len(self.tokens) or set(self.outcomes) != {"up", "down"}:
            raise InputError(f"{self.slug}: outcomes {list(self.outcomes)} / "
                             f"{len(self.tokens)} tokens are not Up/Down")
        pair = dict(zip(self.outcomes, self.tokens, strict=True))
        return pair["up"], pair["down"]

    def resolution(self) -> Resolution | None:
        """The payouts once the market is resolved, else None. InputError when the prices
        are malformed."""
        if not self.closed:
            return None
        if self.prices is None or len(self.prices) != len(self.outcomes) or not self.outcomes:
            raise InputError(f"{self.slug}: outcomes and outcomePrices differ in length")
        prices = self.prices
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in prices):
            raise InputError(f"{self.slug}: outcomePrices outside [0, 1]: "
                             f"{truncate(str(list(prices)))}")
        binary = all(p <= 0.001 or p >= 0.999 for p in prices)
        if not (binary or self.uma_resolved) or abs(sum(prices) - 1.0) > 0.01:
            return None                            # closed, payouts not final yet
        payouts = {n: (round(p) if binary else p)
                   for n, p in zip(self.outcomes, prices, strict=True)}
        return Resolution(self.slug, payouts)


def parse_market(doc: bytes | dict | list, slug: str = "") -> GammaMarket:
    """A Gamma market (raw body or decoded JSON) -> GammaMarket. Raises InputError."""
    try:
        m: Any = orjson.loads(doc) if isinstance(doc, bytes | bytearray | str) else doc
        if isinstance(m, list):
            if len(m) != 1:
                raise ValueError(f"{len(m)} markets for one slug")
            m = m[0]
        if not isinstance(m, dict):
            raise ValueError("market is not an object")
        outcomes = tuple(str(x).strip().lower() for x in _json_list(m.get("outcomes")))
        tokens = (tuple(str(t) for t in _json_list(m["clobTokenIds"]))
                  if m.get("clobTokenIds") is not None else ())
        prices = (tuple(float(x) for x in _json_list(m["outcomePrices"]))
                  if m.get("outcomePrices") is not None else None)
        return GammaMarket(
            slug=str(m.get("slug") or slug), condition_id=str(m.get("conditionId") or ""),
            outcomes=outcomes, tokens=tokens, prices=prices,
            end_ts=_iso_ts(m["endDate"]) if m.get("endDate") else None,
            accepting=m.get("acceptingOrders") is True, closed=m.get("closed") is True,
            uma_resolved=str(m.get("umaResolutionStatus", "")).lower() == "resolved",
            tick_size=_positive(m.get("orderPriceMinTickSize")),
            min_size=_positive(m.get("orderMinSize")))
    except InputError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"bad Gamma market {slug}: {type(e).__name__}: {e}") from None


def _json_list(v: object) -> list:
    if isinstance(v, str):
        v = orjson.loads(v)
    if not isinstance(v, list):
        raise ValueError(f"not a JSON list: {truncate(str(v))}")
    return v


def _iso_ts(s: object) -> int:
    if not isinstance(s, str) or not s:
        raise ValueError(f"bad date {s!r}")
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())


def _positive(v: object) -> float | None:
    """A positive finite number (Gamma sends numbers or numeric strings), else None."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)            # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"not a number: {v!r}") from None
    if not math.isfinite(f) or f <= 0:
        raise ValueError(f"not a positive number: {v!r}")
    return f
