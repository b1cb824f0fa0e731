"""Logging for a process that faces untrusted clients: one short line per request at DEBUG
(the path only, never a query string), and aiohttp's per-connection parse
errors (garbage, a port scanner) rate-limited to one line per 10 s instead of a traceback
each."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from core.proc import truncate


class AccessLog(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float
            ) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("%s %s %s %d %.1fms", request.remote, request.method,
                              truncate(request.path, 120), response.status, time * 1000)

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


class RateLimit(logging.Filter):
    """Lets one record through per ``every_s``; the next one says how many were dropped."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return False
        self._next = now + self.every_s
        msg = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            msg += f": {type(exc).__name__}: {truncate(str(exc).strip(), 160)}"
        if self._dropped:
            msg += f" (+{self._dropped} similar in the last {self.every_s:g} s)"
            self._dropped = 0
        record.msg, record.args = msg, ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_bad_requests() -> None:
    """Rate-limit aiohttp.server's "Error handling request" records (bad HTTP from clients)."""
    logging.getLogger("aiohttp.server").addFilter(RateLimit())
