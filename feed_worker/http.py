"""The one HTTP client of the feed worker, behind a two-method interface tests can fake.

Network failures and timeouts become ``RetryableError``: the caller backs off and tries
again. Status codes are returned, not raised: what a 404 or a 429 means depends on the caller.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from core.errors import RetryableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


def retry_after_s(resp: Response, default_s: float, max_s: float) -> float:
    """Seconds a 429/418 asks us to wait: its ``Retry-After`` read as seconds, ``default_s``
    when the header is absent, an HTTP-date, garbage or NaN; always within [0, ``max_s``]
    (an infinite or absurd wait would stop the caller for good)."""
    ra = resp.header("Retry-After")
    try:
        wait = float(ra) if ra is not None else default_s
    except ValueError:
        wait = default_s
    if math.isnan(wait):
        wait = default_s
    return min(max(0.0, wait), max_s)


class Transport(Protocol):
    async def get(self, url: str, params: Mapping[str, Any] | None = None) -> Response: ...
    async def post(self, url: str, body: Any) -> Response: ...


class AiohttpTransport:
    """aiohttp session with a total timeout per request and a connection cap."""

    _session: aiohttp.ClientSession | None = None

    def __init__(self, timeout_s: float = 5.0, limit: int = 32) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.limit = limit

    async def start(self) -> None:
        """Open the session. Must run inside the event loop that will use it."""
        assert self._session is None, "transport already started"
        self._session = aiohttp.ClientSession(
            timeout=self.timeout, connector=aiohttp.TCPConnector(limit=self.limit),
            json_serialize=lambda o: orjson.dumps(o).decode())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str, params: Mapping[str, Any] | None = None) -> Response:
        return await self._request("GET", url, params=params)

    async def post(self, url: str, body: Any) -> Response:
        return await self._request("POST", url, data=orjson.dumps(body),
                                   headers={"Content-Type": "application/json"})

    async def _request(self, method: str, url: str, **kw: Any) -> Response:
        if self._session is None:
            raise RuntimeError("call start() before using the transport")
        try:
            async with self._session.request(method, url, **kw) as r:
                body = await r.read()
                return Response(r.status, body, dict(r.headers))
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise RetryableError(f"{method} {url}: {type(e).__name__}: {e}") from None
