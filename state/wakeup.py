"""Blocking "new data" wake-ups across processes, usable from asyncio.

On a 2-core machine a reader must not busy-spin forever, and an idle producer must not pay
for readers that are not sleeping. Each sleeping reader owns a *bell*: a named FIFO next to
the segment it waits on. The reader raises a flag in shared memory, re-checks for data (the
flag closes the race with a publish that happened just before it), then blocks on the FIFO.
A producer that sees a raised flag writes one byte to that reader's FIFO.

Why a FIFO: it has a path, so unrelated processes (spawned workers, a restarted feed) can find
it without inheriting descriptors, and its fd plugs into ``loop.add_reader`` directly. An
eventfd cannot be found that way: opening ``/proc/<pid>/fd/<n>`` of an eventfd fails with
ENXIO (tried on this kernel, 6.18); only fd passing or ``pidfd_getfd`` (which needs ptrace
rights over the reader) would reach it. A futex is not reachable from Python.

The wake-up path, ring to record, is kept short: the producer finds raised flags with one
``bytes.find`` and writes one byte to a cached fd (:class:`Ringer`); the reader's FIFO stays
registered with its event loop, and the loop's callback only resolves the waiting future
(:class:`Bell`), leaving the byte to be drained later, off that path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from pathlib import Path


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class Bell:
    """The sleeping side: one FIFO, owned (created and removed) by one reader.

    In asyncio the FIFO stays registered with the running loop (``add_reader`` once, not
    once per wait): adding and removing a reader costs uvloop several syscalls (epoll_ctl,
    and more to set up a poll handle), and the removal sat on the wake-up path, between the
    ring and the record. One wait at a time per bell (one reader, one task).

    No lost wake-up: the reader's last look for data and the creation of the waiting future
    happen in one step of its task, so the loop cannot run the callback in between. A byte
    written after that look is in the FIFO when the loop next polls, and the callback, which
    is level-triggered, finds the future there.
    """

    _fd: int = -1
    _loop: asyncio.AbstractEventLoop | None = None
    _waiter: asyncio.Future[bool] | None = None

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
        """Empty the FIFO. The sleeper calls it *before* its last look for data, never on
        the way from a wake-up to the data: a byte that arrives after that look must wake
        the sleep that follows it, and a read there would only put a syscall on that path."""
        try:
            while len(os.read(self._fd, 4096)) == 4096:   # a short read emptied it
                pass
        except BlockingIOError:
            pass

    def _on_ring(self) -> None:
        # The loop's reader callback (level-triggered). With a waiter: wake it and leave the
        # byte, so nothing else runs before the waiter's task. The byte makes the loop call
        # back once more, after that task has run: with no waiter then, it is drained, so an
        # unread byte never spins the loop.
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_result(True)
        else:
            self.drain()

    def _register(self, loop: asyncio.AbstractEventLoop) -> None:
        self._unregister()
        loop.add_reader(self._fd, self._on_ring)
        self._loop = loop

    def _unregister(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(Exception):   # e.g. the fd is another loop's now
                loop.remove_reader(self._fd)

    async def wait(self, timeout: float | None) -> bool:
        """Sleep until rung or ``timeout`` seconds pass. True when rung.

        A plain future with a ``call_later`` timer, not ``asyncio.wait_for``: this is on the
        wake-up path of every sleeping reader, and wait_for costs a task and more callbacks.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:              # first wait, or a new loop (asyncio.run)
            self._register(loop)
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut
        timer = None if timeout is None else loop.call_later(max(timeout, 0.0), _expire, fut)
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiter is fut:             # (a cancelled wait must not clear a newer one)
                self._waiter = None

    def wait_blocking(self, timeout: float | None) -> bool:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        """Unregister, close and remove the FIFO. Idempotent."""
        if self._fd >= 0:
            self._unregister()
            self._waiter = None
            os.close(self._fd)
            self._fd = -1
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


class Ringer:
    """The producer side: rings the bells of a fixed list of paths (one per reader slot) by
    index, caching one write fd per bell: the ring is on the wake-up path, so the common
    case is a list lookup and one ``write``."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._fds = [-1] * len(self._paths)

    def ring(self, i: int) -> None:
        fd = self._fds[i]
        if fd >= 0:
            try:
                os.write(fd, b"\x01")
                return
            except BlockingIOError:
                return                   # pipe full: that reader is awake already
            except OSError:
                # Stale: that reader has gone (EPIPE), and a new reader may sleep on a new
                # FIFO under the same path; that one must hear this ring: reopen by path.
                os.close(fd)
                self._fds[i] = -1
        try:
            fd = os.open(self._paths[i], os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return                       # nobody listening there (yet, or any more)
        self._fds[i] = fd
        with contextlib.suppress(OSError):   # full (awake already), or gone again
            os.write(fd, b"\x01")

    def close(self) -> None:
        for i, fd in enumerate(self._fds):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                self._fds[i] = -1
