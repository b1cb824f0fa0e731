"""Market resolution from Gamma: ``/markets/slug/{slug}``, the same in the sim and production.

The document is parsed by core.gamma (shared with the feed's scanner), which says when a
market counts as resolved.
"""

from __future__ import annotations

import logging

import aiohttp
import orjson

from core.errors import InputError, RetryableError
from core.gamma import Resolution, parse_market
from core.proc import truncate

log = logging.getLogger(__name__)


def parse_resolution(doc: dict) -> Resolution | None:
    """The market's payouts if it is resolved, else None. Raises InputError when malformed."""
    return parse_market(doc).resolution()


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
