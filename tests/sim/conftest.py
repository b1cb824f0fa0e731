"""Fixtures for the sim's tests: one shared simulator per module, checked to exit cleanly."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from sim.testing import SimProcess, clear_faults, start_sim
from tests.sim.inproc import InProc, inproc_sim


def _stop_and_check(sim: SimProcess) -> None:
    code = sim.stop()
    assert not sim.alive(), "sim process still running after stop()"
    assert code == 0, f"sim exited with {code}; log:\n{sim.log_path.read_text()[-3000:]}"
    assert not (sim.run_dir / "sim.json").exists(), "sim.json left behind after a clean stop"


@pytest.fixture(scope="module")
def shared_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """A sim at speed 60 shared by a module's tests (they must clear the faults they set)."""
    sim = start_sim(tmp_path_factory.mktemp("sim"), speed=60.0, seed=7)
    try:
        yield sim
    finally:
        _stop_and_check(sim)


@pytest.fixture
def sim(shared_sim: SimProcess) -> Iterator[SimProcess]:
    """The module's sim, with every fault switched off before and after the test."""
    assert shared_sim.alive()
    clear_faults(shared_sim.admin)
    yield shared_sim
    if shared_sim.alive():
        clear_faults(shared_sim.admin)


@pytest.fixture
def own_sim(tmp_path) -> Iterator:
    """A factory for a dedicated sim with extra arguments; every one is stopped and checked."""
    made: list[SimProcess] = []

    def make(speed: float = 60.0, seed: int = 1, extra_args: tuple[str, ...] = ()) -> SimProcess:
        s = start_sim(tmp_path / f"sim{len(made)}", speed=speed, seed=seed,
                      extra_args=extra_args)
        made.append(s)
        return s

    yield make
    for s in made:
        _stop_and_check(s)


@pytest.fixture
async def inproc(tmp_path) -> AsyncIterator[InProc]:
    """The sim's apps in this process on a clock that stands still (see tests/sim/inproc.py)."""
    async with inproc_sim(tmp_path) as s:
        yield s
