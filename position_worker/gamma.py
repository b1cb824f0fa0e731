"""Market resolution from Gamma: ``/markets/slug/{slug}``, the same in the sim and production.

A market is resolved when ``closed`` is JSON ``true`` and its ``outcomePrices`` (each finite
and within [0, 1], else the document is malformed) have settled to payout
values (each price 0 or 1, or a documented split such as 0.5/0.5 with a resolved UMA
status). ``outcomes`` and ``outcomePrices`` are JSON-encoded strings; outcomes are paired with
prices by position, and Up is never assumed to be first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import aiohttp
import orjson

from core.errors import InputError, RetryableError
from core.proc import truncate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resolution:
    slug: str
    payouts: dict[str, float]       # outcome name (lower case) -> payout per share

    @property
    def winner(self) -> str:
        return max(self.payouts, key=lambda k: self.payouts[k])


def _json_list(v: object) -> list:
    if isinstance(v, list):
        return v
    if isinstance(v, str):
        out = orjson.loads(v)
        if isinstance(out, list):
            return out
    raise InputError(f"not a JSON list: {truncate(str(v))}")


def parse_resolution(doc: dict) -> Resolution | None:
    """The market's payouts if it is resolved, else None. Raises InputError when malformed."""
    if not isinstance(doc, dict):
        raise InputError("market is not an object")
    if doc.get("closed") is not True:          # only a real JSON true ("false" is truthy)
        return None
    try:
        names = [str(x).strip().lower() for x in _json_list(doc.get("outcomes"))]
        prices = [float(x) for x in _json_list(doc.get("outcomePrices"))]
    except (ValueError, TypeError, orjson.JSONDecodeError) as e:
        raise InputError(f"bad outcomes/outcomePrices: {e}") from None
    if len(names) != len(prices) or not names:
        raise InputError("outcomes and outcomePrices differ in length")
    if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in prices):
        raise InputError(f"outcomePrices outside [0, 1]: {truncate(str(prices))}")
    binary = all(p <= 0.001 or p >= 0.999 for p in prices)
    split = str(doc.get("umaResolutionStatus", "")).lower() == "resolved"
    if not (binary or split) or abs(sum(prices) - 1.0) > 0.01:
        return None                                # closed, payouts not final yet
    payouts = {n: (round(p) if binary else p) for n, p in zip(names, prices, strict=True)}
    return Resolution(str(doc.get("slug", "")), payouts)


class GammaClient:
    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def resolution(self, slug: str) -> Resolution | None:
        """None while unresolved (or not listed). Raises RetryableError / InputError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        url = f"{self.base_url}/markets/slug/{slug}"
        try:
            async with self._session.get(url) as r:
                if r.status == 404:
                    return None
                body = await r.read()
                if r.status != 200:
                    raise RetryableError(f"gamma {r.status} for {slug}: {truncate(body)}")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise RetryableError(f"gamma {slug}: {type(e).__name__}: {e}") from None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InputError(f"gamma {slug}: not JSON: {truncate(body)}") from None
        return parse_resolution(doc)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
