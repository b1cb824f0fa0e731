"""Blocking "new data" wake-ups across processes, usable from asyncio.

On a 2-core machine a reader must not busy-spin forever, and an idle producer must not pay
for readers that are not sleeping. Each sleeping reader owns a *bell*: a named FIFO next to
the segment it waits on. The reader raises a flag in shared memory, re-checks for data (the
flag closes the race with a publish that happened just before it), then blocks on the FIFO.
A producer that sees a raised flag writes one byte to that reader's FIFO.

Why a FIFO: it has a path, so unrelated processes (spawned workers, a restarted feed) can find
it without inheriting descriptors, and its fd plugs into ``loop.add_reader`` directly. An
eventfd would need fd passing; a futex is not reachable from Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from pathlib import Path


class Bell:
    """The sleeping side: one FIFO, owned (created and removed) by one reader."""

    _fd: int = -1

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)                # left by a reader that died
        os.mkfifo(self.path, 0o600)
        # O_RDWR keeps a writer attached to our own FIFO, so it never reports EOF/HUP when a
        # producer closes its end, and open() does not block waiting for a writer.
        self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)

    @property
    def fd(self) -> int:
        return self._fd

    def drain(self) -> None:
        """Empty the FIFO. The sleeper calls it *before* its last look for data, never after
        waking: a byte that arrives after that look must wake the sleep that follows it, and
        draining after the wake-up would only put a syscall on the wake-up path."""
        try:
            while len(os.read(self._fd, 4096)) == 4096:   # a short read emptied it
                pass
        except BlockingIOError:
            pass

    async def wait(self, timeout: float | None) -> bool:
        """Sleep until rung or ``timeout`` seconds pass. True when rung.

        A plain future with a ``call_later`` timer, not ``asyncio.wait_for``: this is on the
        wake-up path of every sleeping reader, and wait_for costs a task and more callbacks.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()

        def _settle(rung: bool) -> None:
            if not fut.done():
                fut.set_result(rung)

        loop.add_reader(self._fd, _settle, True)
        timer = None if timeout is None else loop.call_later(max(timeout, 0.0), _settle, False)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            loop.remove_reader(self._fd)

    def wait_blocking(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        """Close and remove the FIFO. Idempotent."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class Ringer:
    """The producer side: rings bells by path, caching one write fd per bell."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}

    def ring(self, path: Path) -> None:
        # Two tries: a cached fd can point at the FIFO of a reader that has gone (EPIPE) while
        # a new reader sleeps on a new FIFO under the same path; that one must hear this ring.
        for _ in range(2):
            fd = self._fds.get(path)
            if fd is None:
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    return               # nobody listening there (yet, or any more)
                self._fds[path] = fd
            try:
                os.write(fd, b"\x01")
                return
            except BlockingIOError:
                return                   # pipe full: that reader is awake already
            except OSError:
                os.close(fd)             # stale: that reader is gone; reopen by path
                del self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}
