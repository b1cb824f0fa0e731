"""One notion of time for every process, real or simulated.

The simulator runs faster than real time (``--speed 60``: a 5-minute window passes in 5 s), so
"now" is a linear function of the wall clock: ``sim = sim_epoch + (wall - wall_epoch) * speed``.
Every process builds the same ``Clock`` from the same three numbers (published by the sim in
sim.json), so they all agree on which market window is current without talking to each other.

Loops never call ``time.time()`` or ``asyncio.sleep()`` directly; they take a clock, so tests
can drive them with ``ManualClock`` instead of waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol


class ClockLike(Protocol):
    speed: float

    def now(self) -> float: ...
    def now_ms(self) -> int: ...
    def monotonic_ns(self) -> int: ...
    async def sleep(self, sim_seconds: float) -> None: ...
    def to_wall_seconds(self, sim_seconds: float) -> float: ...


@dataclass(frozen=True)
class Clock:
    """Scaled wall clock. ``speed=1`` with equal epochs is plain real time."""

    speed: float = 1.0
    wall_epoch: float = 0.0
    sim_epoch: float = 0.0

    @classmethod
    def real(cls) -> Clock:
        return cls(speed=1.0, wall_epoch=0.0, sim_epoch=0.0)

    @classmethod
    def accelerated(cls, speed: float, start: float | None = None) -> Clock:
        """A clock that starts at ``start`` (sim seconds, default: now) and runs ``speed``x."""
        wall = time.time()
        return cls(speed=float(speed), wall_epoch=wall, sim_epoch=wall if start is None else start)

    @classmethod
    def from_dict(cls, d: dict) -> Clock:
        return cls(speed=float(d["speed"]), wall_epoch=float(d["wall_epoch"]),
                   sim_epoch=float(d["sim_epoch"]))

    def to_dict(self) -> dict:
        return {"speed": self.speed, "wall_epoch": self.wall_epoch, "sim_epoch": self.sim_epoch}

    def now(self) -> float:
        """Current time in (simulated) unix seconds."""
        return self.sim_epoch + (time.time() - self.wall_epoch) * self.speed

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def monotonic_ns(self) -> int:
        """Real monotonic time, for heartbeats and latency; never scaled."""
        return time.monotonic_ns()

    def to_wall_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed

    async def sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(max(0.0, sim_seconds / self.speed))


class ManualClock:
    """A clock that only moves when a test says so. ``sleep`` returns when time is advanced."""

    def __init__(self, start: float = 1_700_000_000.0, speed: float = 1.0) -> None:
        self._now = float(start)
        self._mono = 0
        self.speed = speed
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def now_ms(self) -> int:
        return int(self._now * 1000)

    def monotonic_ns(self) -> int:
        return self._mono

    def to_wall_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += int(seconds * 1e9)
        still = []
        for deadline, fut in self._waiters:
            if deadline <= self._now:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((deadline, fut))
        self._waiters = still

    async def sleep(self, sim_seconds: float) -> None:
        if sim_seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self._now + sim_seconds, fut))
        await fut


async def first_of(*aws: Awaitable[object], timeout: float | None = None) -> None:
    """Return when the first of ``aws`` is done (or after ``timeout`` wall seconds). The
    others are cancelled and awaited, so no wait is left behind."""
    waiters = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)


async def sleep_unless(clock: ClockLike, clock_s: float, *events: asyncio.Event) -> None:
    """Sleep ``clock_s`` seconds of ``clock``, or less: until any of ``events`` is set (a
    stop, a wake-up)."""
    await first_of(clock.sleep(clock_s), *(e.wait() for e in events))
