"""GET /api/events: status.json as Server-Sent Events, so the page never polls.

One :class:`StatusWatcher` task per process stats status.json every 100 ms (a stat, and a
parse only when the file changed) and wakes the streams. Each stream sends::

    retry: 2000                         once, at the start

    event: status                       the whole status document, on one line, at once on
    id: <version>                       connect and then whenever the file changed, at most
    data: {...}                         4 per second (a faster writer is coalesced: the
                                        newest document wins)

    : keepalive                         a comment after 15 s without anything else

A stream that cannot be written for 10 s (a client that stopped reading) is dropped, and at
most ``max_clients`` streams are open at once (503 beyond), so slow or numerous clients cost
this process a bounded amount and nobody else anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiohttp import web

from api_worker.errors import ApiError
from api_worker.reader import JsonFile, Snapshot

log = logging.getLogger("api_worker.events")


@dataclass(frozen=True)
class StreamConfig:
    poll_s: float = 0.1             # status.json stat period
    min_interval_s: float = 0.25    # at most 4 events per second per stream
    keepalive_s: float = 15.0
    write_timeout_s: float = 10.0
    max_clients: int = 32


class StatusWatcher:
    """Polls status.json; ``snapshot`` is the newest version, waiters wake on a change."""

    def __init__(self, status: JsonFile, cfg: StreamConfig) -> None:
        self.status = status
        self.cfg = cfg
        self.snapshot: Snapshot | None = None
        self.clients = 0
        self.closing = asyncio.Event()
        self._changed = asyncio.Event()

    def poll(self) -> None:
        snap = self.status.load()
        if snap is not self.snapshot:
            self.snapshot = snap
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def run(self) -> None:
        while not self.closing.is_set():
            try:
                self.poll()
            except Exception:               # never let the watcher die: streams would freeze
                log.exception("status watcher")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), self.cfg.poll_s)

    async def wait(self, seen: int, timeout: float) -> None:
        """Return when a version other than ``seen`` is there, at closing, or at timeout."""
        ev = self._changed
        snap = self.snapshot
        if self.closing.is_set() or (snap is not None and snap.version != seen):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), min(timeout, 1.0))


def event_bytes(snap: Snapshot) -> bytes:
    # orjson's compact output has no newline: one data line is the whole document
    return b"event: status\nid: %d\ndata: %s\n\n" % (snap.version, snap.data)


async def stream(request: web.Request, watcher: StatusWatcher) -> web.StreamResponse:
    cfg = watcher.cfg
    if watcher.clients >= cfg.max_clients:
        raise ApiError(503, f"too many event streams open (at most {cfg.max_clients})")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    loop = asyncio.get_running_loop()
    watcher.clients += 1
    try:
        await resp.prepare(request)

        async def write(data: bytes) -> None:
            await asyncio.wait_for(resp.write(data), cfg.write_timeout_s)

        await write(b"retry: 2000\n\n")
        sent, last_event, last_write = 0, -cfg.min_interval_s, loop.time()
        while not watcher.closing.is_set():
            if request.transport is None or request.transport.is_closing():
                break
            now = loop.time()
            snap = watcher.snapshot
            if snap is not None and snap.version != sent:
                early = last_event + cfg.min_interval_s - now
                if early > 0:
                    await asyncio.sleep(early)
                    continue
                snap = watcher.snapshot or snap          # the newest one after the pause
                await write(event_bytes(snap))
                sent, last_event, last_write = snap.version, now, now
                continue
            idle = last_write + cfg.keepalive_s - now
            if idle <= 0:
                await write(b": keepalive\n\n")
                last_write = now
                continue
            await watcher.wait(sent, idle)
    except (ConnectionError, TimeoutError):
        pass                                # the client left or stopped reading
    finally:
        watcher.clients -= 1
    return resp
