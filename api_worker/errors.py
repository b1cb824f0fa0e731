"""Every answer is JSON, errors included: :class:`ApiError` and the outermost middleware.

Handlers raise :class:`ApiError` for an expected refusal (400 with the offending ``field``,
401, 403, 404, 409, 503, ...). The middleware also turns aiohttp's own HTTP exceptions (404
no route, 405 wrong method, 413 body too large) into ``{"error": ...}`` bodies, and any other
exception into a 500, logged with its traceback: a last resort the fuzz test asserts never
happens. It counts every answer by status code for /metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("api_worker")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An expected refusal: HTTP ``status`` with ``{"error": error, "field": field, ...}``."""

    def __init__(self, status: int, error: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.field = field
        self.headers = headers
        self.extra = extra

    def response(self) -> web.Response:
        body: dict[str, Any] = {"error": self.error}
        if self.field is not None:
            body["field"] = self.field
        body.update(self.extra)
        return json_response(body, self.status, self.headers)


def json_response(body: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS),
                        status=status, content_type="application/json", headers=headers)


def _short(s: str, n: int = 120) -> str:
    return s if len(s) <= n else s[:n] + "..."


def _from_http(request: web.Request, e: web.HTTPException) -> web.Response:
    headers = None
    if isinstance(e, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(e.allowed_methods))
        headers = {"Allow": allowed}
        msg = f"{request.method} is not allowed on {_short(request.path)} (allowed: {allowed})"
    elif isinstance(e, web.HTTPNotFound):
        msg = f"no such route: {_short(request.path)}"
    elif isinstance(e, web.HTTPRequestEntityTooLarge):
        msg = f"request body over the {request.app[MAX_BODY]}-byte limit"
    else:
        msg = e.reason
    return json_response({"error": msg}, e.status, headers)


MAX_BODY = web.AppKey("max_body", int)
REQUESTS = web.AppKey("requests", Counter)   # status code -> answers (for /metrics)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except ApiError as e:
        resp = e.response()
    except web.HTTPException as e:
        if e.status < 400:                  # a redirect is not an error
            request.app[REQUESTS][e.status] += 1
            raise
        resp = _from_http(request, e)
    except (asyncio.CancelledError, ConnectionError):
        raise                               # the client went away: nothing to answer
    except Exception:
        log.exception("unexpected error in %s %s", request.method, _short(request.path))
        resp = json_response({"error": "internal error (logged by the API worker)"}, 500)
    request.app[REQUESTS][resp.status] += 1
    return resp
