"""Ring wake-ups across processes: prompt, no lost wake-ups, real timeouts, no idle CPU; and
the reader slots and bells (FIFOs) they rely on."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import pytest
import uvloop

from core.errors import SegmentError
from state.ring import MAX_READERS, RingReader, RingWriter, bell_path
from state.run import RunPaths
from tests.state.helpers import wait_for
from tests.state.procs import RING_DT, make, spin_ns

LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run, "uvloop": uvloop.run}


def one(seq: int) -> np.void:
    return make(RING_DT, np.array([seq], dtype=np.uint64))[0]


def bells(run_paths: RunPaths, name: str) -> list[str]:
    return sorted(p.name for p in run_paths.shm_dir.glob(f"{run_paths.seg(name).name}.bell*"))


@pytest.mark.parametrize("how", ["asyncio", "uvloop", "blocking"])
def test_wait_wakes_promptly_on_a_publish_from_another_process(run_paths: RunPaths, spawn,
                                                                how: str) -> None:
    ring = run_paths.seg("later")
    child = spawn("publish_later", ring=str(ring), delay=0.3, count=1)
    child.expect_ready()
    r = RingReader(ring, RING_DT, name="test")
    try:
        child.send("GO")
        t0, cpu0 = time.monotonic(), time.process_time()
        ok = r.wait_blocking(10.0) if how == "blocking" else LOOPS[how](r.wait(10.0))
        woke_ns = time.monotonic_ns()
        slept, cpu = time.monotonic() - t0, time.process_time() - cpu0
        assert ok is True
        b = r.poll()
        assert len(b) == 1
        published_ns = int(b.records[0]["check"])
        assert slept > 0.2, "it returned before the publish"
        # Woken by the publish, not by its 10 s timeout (the latency itself is a benchmark
        # number: bench/wakeup.py; typically ~50 us and ~1 ms of CPU).
        assert (woke_ns - published_ns) / 1e9 < 5.0, "slept towards the timeout"
        assert cpu < 0.5 * slept, f"burned {cpu:.3f}s CPU sleeping {slept:.3f}s"
        assert child.report()["published"] == 1
    finally:
        r.close()
        child.send("EXIT")
        assert child.wait() == 0, child.stderr()


@pytest.mark.parametrize("how", ["asyncio", "uvloop", "blocking"])
def test_idle_wait_times_out_false_without_burning_cpu(run_paths: RunPaths, how: str) -> None:
    ring = run_paths.seg("idle")
    w = RingWriter(ring, RING_DT, 8)
    r = RingReader(ring, RING_DT)
    try:
        t0, cpu0 = time.monotonic(), time.process_time()
        ok = r.wait_blocking(1.0) if how == "blocking" else LOOPS[how](r.wait(1.0))
        slept, cpu = time.monotonic() - t0, time.process_time() - cpu0
        assert ok is False
        assert 0.95 <= slept < 10.0                   # the timeout, not a hang
        assert cpu < 0.15, f"an idle 1 s wait used {cpu:.3f}s of CPU"
    finally:
        r.close()
        w.unlink()
        w.close()


@pytest.mark.parametrize("how", ["asyncio", "uvloop", "blocking"])
def test_a_late_ring_is_not_mistaken_for_a_timeout(run_paths: RunPaths, how: str) -> None:
    """A ring byte can arrive with nothing to read: left over from before (emptied before
    the reader's last look), or sent late by a producer for a record the reader already
    took (it lands while the reader sleeps). Neither may end the wait early: the reader
    goes back to sleep for the rest of its timeout."""
    ring = run_paths.seg("late")
    w = RingWriter(ring, RING_DT, 8)
    r = RingReader(ring, RING_DT)
    bell = r._bell
    assert bell is not None

    def ring_the_bell() -> None:
        fd = os.open(bell_path(ring, r.index), os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"\x01")
        os.close(fd)

    def wait() -> bool:
        return r.wait_blocking(0.3) if how == "blocking" else LOOPS[how](r.wait(0.3))

    try:
        ring_the_bell()                               # left over from before
        t0 = time.monotonic()
        assert wait() is False
        assert time.monotonic() - t0 >= 0.29
        rung: list[bool] = []                         # arrives while the reader sleeps
        bell_wait, bell_wait_blocking = bell.wait, bell.wait_blocking

        async def late_wait(timeout: float | None) -> bool:
            if not rung:
                rung.append(True)
                ring_the_bell()
            return await bell_wait(timeout)

        def late_wait_blocking(timeout: float | None) -> bool:
            if not rung:
                rung.append(True)
                ring_the_bell()
            return bell_wait_blocking(timeout)
        bell.wait = late_wait  # type: ignore[method-assign]
        bell.wait_blocking = late_wait_blocking  # type: ignore[method-assign]
        t0 = time.monotonic()
        assert wait() is False and rung == [True]
        assert time.monotonic() - t0 >= 0.29
        w.publish(one(0))
        assert r.wait_blocking(0.0) is True          # data already there: no sleep at all
    finally:
        r.close()
        w.unlink()
        w.close()


@pytest.mark.parametrize("sleeper", ["test", "child"])
def test_ping_pong_never_loses_a_wake_up(run_paths: RunPaths, spawn, sleeper: str) -> None:
    """Round trips between a side that always sleeps on its bell (spin_us=0) and a side that
    spins and answers after a random 0-5 us, so its publishes land all over the sleeper's
    way from "nothing to read" to "asleep". A lost wake-up sleeps until its timeout. (The
    exact interleavings are forced, deterministically, in the next test.)"""
    rounds, timeout, jitter_us, fast = 3000, 0.5, 5.0, 5000.0
    ping, pong = run_paths.seg("ping"), run_paths.seg("pong")
    w = RingWriter(ping, RING_DT, 64)
    child = spawn("echo", ping=str(ping), pong=str(pong), rounds=rounds, timeout=timeout,
                  spin_us=0.0 if sleeper == "child" else fast,
                  jitter_us=jitter_us if sleeper == "test" else 0.0)
    r = None
    try:
        child.expect_ready()
        r = RingReader(pong, RING_DT, name="test", spin_us=0.0 if sleeper == "test" else fast)
        recs = make(RING_DT, np.arange(rounds, dtype=np.uint64))
        delays = np.random.default_rng().integers(0, int(jitter_us * 1000) + 1, rounds)
        late = 0
        for i in range(rounds):
            if sleeper == "child":
                spin_ns(int(delays[i]))
            w.publish(recs[i])
            while r.lag() == 0:
                t0 = time.monotonic()
                r.wait_blocking(timeout)
                late += time.monotonic() - t0 >= 0.9 * timeout
            b = r.poll()
            assert len(b) == 1 and int(b.records[0]["seq"]) == i
        assert child.report()["late"] == 0, "the child slept through a publish"
        assert late == 0, "the test slept through a publish"
    finally:
        if r is not None:
            r.close()
        child.send("EXIT")
        assert child.wait() == 0, child.stderr()
        w.unlink()
        w.close()


@pytest.mark.parametrize("how", ["asyncio", "blocking"])
@pytest.mark.parametrize("moment", ["before_flag", "before_drain", "before_sleep"])
def test_a_publish_racing_the_way_to_sleep_is_not_missed(run_paths: RunPaths, how: str,
                                                         moment: str) -> None:
    """Force the dangerous interleavings: the producer publishes (1) after the reader found
    nothing but before its waiting flag is up, so the producer sees no sleeper and rings
    nobody; (2) just before the reader empties its bell of old rings, so this ring is
    emptied too; (3) after the reader's last look, just before it blocks, so the ring
    arrives before the sleep. Each time the wait must return at once, not at its timeout."""
    ring = run_paths.seg("race")
    w = RingWriter(ring, RING_DT, 8)
    r = RingReader(ring, RING_DT, spin_us=0)
    try:
        published: list[int] = []

        def publish_once() -> None:
            if not published:
                published.append(w.publish(one(0)))

        if moment == "before_flag":
            set_waiting = r._set_waiting

            def racing_flag(flag: int) -> None:
                if flag:
                    publish_once()
                set_waiting(flag)
            r._set_waiting = racing_flag  # type: ignore[method-assign]
        elif moment == "before_drain":
            bell = r._bell
            assert bell is not None
            drain = bell.drain

            def racing_drain() -> None:
                publish_once()
                drain()
            bell.drain = racing_drain  # type: ignore[method-assign]
        else:
            bell = r._bell
            assert bell is not None
            bell_wait, bell_wait_blocking = bell.wait, bell.wait_blocking

            async def racing_wait(timeout: float | None) -> bool:
                publish_once()
                return await bell_wait(timeout)

            def racing_wait_blocking(timeout: float | None) -> bool:
                publish_once()
                return bell_wait_blocking(timeout)
            bell.wait = racing_wait  # type: ignore[method-assign]
            bell.wait_blocking = racing_wait_blocking  # type: ignore[method-assign]
        t0 = time.monotonic()
        ok = r.wait_blocking(3.0) if how == "blocking" else asyncio.run(r.wait(3.0))
        assert ok is True and published == [0]
        assert time.monotonic() - t0 < 2.5, "the reader slept through the publish (3 s)"
    finally:
        r.close()
        w.unlink()
        w.close()


def test_bells_come_and_go_with_their_readers(run_paths: RunPaths, spawn) -> None:
    ring, table = run_paths.seg("bells"), run_paths.seg("bellstab")
    from state.table import TableWriter
    from tests.state.procs import ROW_DT
    w = RingWriter(ring, RING_DT, 8)
    t = TableWriter(table, ROW_DT, 1)
    try:
        a = RingReader(ring, RING_DT, name="a")
        assert bells(run_paths, "bells") == [bell_path(ring, a.index).name]
        # A reader process killed with -9 leaves its slot and its bell behind...
        child = spawn("attach_and_exit", ring=str(ring), table=str(table), how="kill")
        dead = child.report()
        child.wait()
        assert len(bells(run_paths, "bells")) == 2
        slots = {d["index"]: d for d in w.readers()}
        assert slots[dead["index"]]["alive"] is False and slots[a.index]["alive"] is True
        # ...and the next reader reuses that dead slot (a FIFO of the same name, new inode).
        b = RingReader(ring, RING_DT, name="b")
        assert b.index == dead["index"]
        w.publish(one(0))                       # the producer rings whoever sleeps now
        assert b.wait_blocking(1.0) is True
        a.close()
        a.close()                               # idempotent
        assert bells(run_paths, "bells") == [bell_path(ring, b.index).name]
        assert [d["name"] for d in w.readers()] == ["b"]
        b.close()
        assert bells(run_paths, "bells") == []
        # A killed reader's bell is removed by the owner's unlink (run_paths checks it).
        child = spawn("attach_and_exit", ring=str(ring), table=str(table), how="kill")
        child.report()
        child.wait()
        assert len(bells(run_paths, "bells")) == 1
    finally:
        w.unlink()
        w.close()
        t.unlink()
        t.close()
    assert bells(run_paths, "bells") == []


def test_a_sleeping_reader_on_a_reused_slot_is_rung(run_paths: RunPaths, spawn) -> None:
    """The producer caches an fd per bell. When a reader dies and another takes its slot, the
    cached fd points at the dead reader's FIFO; the new sleeper must still be woken."""
    ring, table = run_paths.seg("reuse"), run_paths.seg("reusetab")
    from state.table import TableWriter
    from tests.state.procs import ROW_DT
    w = RingWriter(ring, RING_DT, 8)
    t = TableWriter(table, ROW_DT, 1)
    try:
        first = RingReader(ring, RING_DT, name="first", spin_us=0)
        index = first.index
        # Make the producer open and cache a write fd for this slot's bell.
        result: list[bool] = []

        async def sleeper(reader: RingReader) -> None:
            result.append(await reader.wait(5.0))

        async def ring_once(reader: RingReader, seq: int) -> None:
            task = asyncio.ensure_future(sleeper(reader))
            assert await asyncio.to_thread(
                wait_for, lambda: w._buf[192 + reader.index] == 1, 5.0)
            w.publish(one(seq))
            await task

        asyncio.run(ring_once(first, 0))
        assert result == [True]
        first.poll()
        first.close()
        second = RingReader(ring, RING_DT, name="second", spin_us=0)
        assert second.index == index
        result.clear()
        t0 = time.monotonic()
        asyncio.run(ring_once(second, 1))
        assert result == [True] and time.monotonic() - t0 < 2.0
        second.close()
    finally:
        w.unlink()
        w.close()
        t.unlink()
        t.close()


def test_reader_slots_are_limited_and_given_back(run_paths: RunPaths) -> None:
    ring = run_paths.seg("slots")
    w = RingWriter(ring, RING_DT, 8)
    readers = []
    try:
        readers = [RingReader(ring, RING_DT, name=f"r{i}") for i in range(MAX_READERS)]
        with pytest.raises(SegmentError, match="reader slots"):
            RingReader(ring, RING_DT)
        inspector = RingReader(ring, RING_DT, readonly=True)   # takes no slot, no bell
        assert inspector.index == -1 and inspector.poll().lost == 0
        with pytest.raises(SegmentError, match="read-only"):
            inspector.wait_blocking(0.01)
        inspector.close()
        readers.pop().close()
        readers.append(RingReader(ring, RING_DT, name="again"))
    finally:
        for r in readers:
            r.close()
        w.unlink()
        w.close()
