"""Small HTTP helpers shared by the sim's servers."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> web.Response:
    """orjson-encoded reply; the real services answer application/json."""
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


async def read_json(request: web.Request) -> tuple[Any, bytes]:
    """(parsed body, raw body); parsed is a ValueError instance when the body is not JSON."""
    raw = await request.read()
    try:
        return orjson.loads(raw), raw
    except orjson.JSONDecodeError as exc:
        return ValueError(str(exc)), raw
