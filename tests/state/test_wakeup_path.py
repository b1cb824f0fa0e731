"""The ring's wake-up fast path: the bell stays registered with the loop, a stray ring is
drained without spinning the loop, a cancelled wait cannot disarm a newer one, and the
adaptive spin spins only while records come within its budget."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time

import numpy as np
import pytest
import uvloop

from state.ring import RingReader, RingWriter, bell_path
from state.run import RunPaths
from tests.state.helpers import wait_for
from tests.state.procs import RING_DT, make


def one(seq: int) -> np.void:
    return make(RING_DT, np.array([seq], dtype=np.uint64))[0]


def flag_up(w: RingWriter, r: RingReader) -> bool:
    return w._buf[192 + r.index] == 1


def publish_when_asleep(w: RingWriter, r: RingReader, seq: int) -> threading.Thread:
    """Publish from another thread once the reader's waiting flag is up."""
    def run() -> None:
        assert wait_for(lambda: flag_up(w, r), 10.0)
        w.publish(one(seq))
    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.fixture
def ring(run_paths: RunPaths):
    path = run_paths.seg("fast")
    w = RingWriter(path, RING_DT, 64)
    readers: list[RingReader] = []

    def reader(**kw: object) -> RingReader:
        r = RingReader(path, RING_DT, name="t", **kw)  # type: ignore[arg-type]
        readers.append(r)
        return r

    yield w, reader
    for r in readers:
        r.close()
    w.unlink()
    w.close()


def test_the_bell_stays_registered_and_a_stray_ring_is_drained_once(ring) -> None:
    w, reader = ring
    r = reader(spin_us=0)
    bell = r._bell
    assert bell is not None
    calls: list[int] = []
    on_ring = bell._on_ring

    def counted() -> None:
        calls.append(1)
        on_ring()
    bell._on_ring = counted  # type: ignore[method-assign]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for seq in range(3):
            t = publish_when_asleep(w, r, seq)
            assert await r.wait(10.0) is True
            t.join()
            assert len(r.poll()) == 1
            assert bell._loop is loop                  # registered once, kept
        # The last wake-up left its byte in the FIFO; the loop's next look drains it.
        # A byte nobody waits for (a late ring) is drained too, once: the loop does not
        # spin on a readable FIFO.
        fd = os.open(bell_path(r.path, r.index), os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"\x01")
        os.close(fd)
        deadline = time.monotonic() + 10.0
        while select.select([bell.fd], [], [], 0)[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert not select.select([bell.fd], [], [], 0)[0], "the stray ring was not drained"
        n = len(calls)
        await asyncio.sleep(0.2)                       # a window to watch, not a sync
        assert len(calls) == n, "the loop kept calling back on an empty FIFO"

    uvloop.run(main())
    r.close()
    assert bell._loop is None and bell.fd == -1


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run])
def test_a_reader_can_wait_in_one_loop_then_another(ring, run) -> None:
    """asyncio.run / uvloop.run make a new loop each time: the bell moves to it."""
    w, reader = ring
    r = reader(spin_us=0)
    for seq in range(2):
        t = publish_when_asleep(w, r, seq)
        assert run(r.wait(10.0)) is True
        t.join()
        assert len(r.poll()) == 1


def test_a_cancelled_wait_ending_late_does_not_disarm_a_newer_wait(ring) -> None:
    """Wait A is cancelled, B starts before A's task has run its clean-up. A must not
    lower the flag B raised (the producer would ring nobody) or drop B's waiter."""
    w, reader = ring
    r = reader(spin_us=0)

    async def main() -> float:
        a = asyncio.ensure_future(r.wait(10.0))
        while not flag_up(w, r):
            await asyncio.sleep(0.001)
        b = asyncio.ensure_future(r.wait(10.0))       # B's first step runs before A's end
        a.cancel()
        await asyncio.gather(a, return_exceptions=True)
        assert flag_up(w, r), "a cancelled wait lowered the newer wait's flag"
        t0 = time.monotonic()
        w.publish(one(0))
        assert await b is True
        return time.monotonic() - t0

    assert uvloop.run(main()) < 5.0, "the newer wait slept through the publish"
    assert not flag_up(w, r)


def test_the_spin_stops_for_gaps_longer_than_its_budget_and_returns_for_short_ones(
        ring) -> None:
    w, reader = ring
    r = reader(spin_us=20_000.0)                      # 20 ms: far above any wake-up time
    assert r._spin_next is True
    # A timeout (nothing came) turns it off.
    assert r.wait_blocking(0.05) is False and r._spin_next is False
    # Records 100 ms apart (an idle stream): no spinning at all, so the waiting thread
    # uses a few ms of CPU for five waits, not 5 x 20 ms.
    stop = threading.Event()

    def paced() -> None:
        for seq in range(5):
            if not wait_for(lambda: flag_up(w, r), 10.0) or stop.wait(0.1):
                return
            w.publish(one(seq))

    t = threading.Thread(target=paced)
    cpu0 = time.thread_time()
    t.start()
    try:
        for _ in range(5):
            assert r.wait_blocking(10.0) is True
            assert len(r.poll()) == 1
            assert r._spin_next is False
    finally:
        stop.set()
        t.join()
    assert time.thread_time() - cpu0 < 0.06, "the reader spun between far-apart records"
    # A record that comes soon after the reader went to sleep (within a generous 2 s
    # budget now): the spin pays again...
    r.spin_ns = 2_000_000_000
    t = publish_when_asleep(w, r, 5)
    assert r.wait_blocking(10.0) is True
    t.join()
    assert r._spin_next is True
    r.poll()
    # ...and the next wait catches a record published while it spins, without its bell.
    bell = r._bell
    assert bell is not None
    slept: list[float | None] = []
    bell_wait = bell.wait_blocking

    def watched(timeout: float | None) -> bool:
        slept.append(timeout)
        return bell_wait(timeout)
    bell.wait_blocking = watched  # type: ignore[method-assign]
    timer = threading.Timer(0.002, lambda: w.publish(one(6)))
    timer.start()
    assert r.wait_blocking(10.0) is True
    timer.join()
    assert slept == [] and len(r.poll()) == 1
