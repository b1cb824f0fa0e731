import asyncio
import subprocess
import sys

import orjson
import pytest

from core.clock import Clock, ManualClock, sleep_unless


def test_accelerated_clock_runs_at_speed_and_round_trips() -> None:
    c = Clock(speed=60.0, wall_epoch=1000.0, sim_epoch=5000.0)
    again = Clock.from_dict(c.to_dict())
    assert again == c
    assert c.to_wall_seconds(300) == pytest.approx(5.0)


def test_two_processes_building_the_same_clock_agree() -> None:
    """Another process that builds the clock from the published dict reads the same time
    (it is a function of the shared wall clock, not of process start)."""
    a = Clock.accelerated(60.0, start=1_000_000.0)
    code = ("import sys, orjson; from core.clock import Clock; "
            "print(Clock.from_dict(orjson.loads(sys.argv[1])).now())")
    before = a.now()
    out = subprocess.run([sys.executable, "-c", code, orjson.dumps(a.to_dict()).decode()],
                         capture_output=True, text=True, timeout=60, check=True)
    after = a.now()
    assert before <= float(out.stdout) <= after
    assert after - 1_000_000.0 < 60.0 * 120   # and it started where it was told to


async def test_manual_clock_sleep_returns_only_when_advanced() -> None:
    clock = ManualClock(start=100.0)
    task = asyncio.create_task(clock.sleep(5.0))
    await asyncio.sleep(0)
    clock.advance(4.0)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1.0)
    await asyncio.wait_for(task, 1.0)
    assert clock.now() == 105.0


async def test_sleep_unless_ends_on_the_clock_or_the_first_event_and_leaves_nothing() -> None:
    clock = ManualClock(start=100.0)
    stop, wake = asyncio.Event(), asyncio.Event()
    before = len(asyncio.all_tasks())
    nap = asyncio.ensure_future(sleep_unless(clock, 10.0, stop, wake))
    await asyncio.sleep(0)
    wake.set()                                  # an event ends it long before the clock
    await asyncio.wait_for(nap, 5)
    nap = asyncio.ensure_future(sleep_unless(clock, 10.0, asyncio.Event()))
    for _ in range(3):                          # the nap, then its clock.sleep, get going
        await asyncio.sleep(0)
    assert not nap.done()
    clock.advance(10.0)                         # the clock ends it with no event set
    await asyncio.wait_for(nap, 5)
    assert len(asyncio.all_tasks()) == before   # the losing waits were cancelled and reaped
