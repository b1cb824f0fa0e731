"""Shared fixtures. Every test that makes shared memory does it under a fresh run id, and the
``run_paths`` fixture fails the test if any segment of that run is left in /dev/shm."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from state.control import ControlBlock
from state.run import RunPaths, new_run_id
from state.segment import SHM_DIR, PREFIX


def leftover_segments(run_id: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"{PREFIX}{run_id}-*"))


@pytest.fixture
def run_paths(tmp_path: Path) -> Iterator[RunPaths]:
    """A fresh run directory and run id; asserts at teardown that the run left nothing."""
    paths = RunPaths(tmp_path / "run", "t" + new_run_id())
    paths.run_dir.mkdir()
    yield paths
    leaks = leftover_segments(paths.run_id)
    for name in leaks:                      # clean up anyway, then fail loudly
        os.unlink(SHM_DIR / name)
    assert not leaks, f"test left shared-memory segments behind: {leaks}"


@pytest.fixture
def control(run_paths: RunPaths) -> Iterator[ControlBlock]:
    """The control block a supervisor would own, for tests that run workers alone."""
    cb = ControlBlock.create(run_paths.seg("control"), run_paths.run_id)
    run_paths.write_run_json(mode="test")
    yield cb
    cb.unlink()
    cb.close()
