"""Small HTTP helpers shared by the sim's servers."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from core.proc import truncate

# The reasons the services' own error bodies give for aiohttp's routing/size exceptions.
HTTP_REASONS = {404: "not found", 405: "method not allowed", 413: "request entity too large"}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    """orjson-encoded reply; the real services answer application/json."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


async def read_json(request: web.Request) -> tuple[Any, bytes]:
    """(parsed body, raw body); parsed is a ValueError instance when the body is not JSON.
    aiohttp caches the body, so this can be called again after a middleware read it."""
    raw = await request.read()
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as exc:
        return ValueError(str(exc)), raw


def ascii_int(value: Any, max_digits: int = 20) -> int | None:
    """``value`` as a non-negative int if it is 1..max_digits ASCII digits, else None.

    ``str.isdigit`` alone is not enough: it accepts '²' or Arabic-Indic digits, which ``int``
    then rejects (or silently converts), and a very long digit string makes ``int`` raise."""
    if not isinstance(value, str) or not 0 < len(value) <= max_digits:
        return None
    if not (value.isascii() and value.isdigit()):
        return None
    return int(value)


def http_reason(exc: web.HTTPException) -> str:
    return HTTP_REASONS.get(exc.status, exc.reason.lower())


def log_unexpected(log: logging.Logger, request: web.Request) -> None:
    """Log the exception being handled, with the request it came from (truncated)."""
    log.exception("unexpected error serving %s %s", request.method,
                  truncate(request.path_qs, 200))


def injected_fault_reply(status: int | None) -> web.Response | None:
    """The reply for an injected REST fault on a Polymarket service (Gamma, CLOB), if any:
    429 with Retry-After, or the given 5xx, in their ``{"error": ...}`` shape."""
    if status is None:
        return None
    if status == 429:
        return json_response({"error": "Too Many Requests"}, 429, {"Retry-After": "1"})
    return json_response({"error": "internal server error"}, status)
