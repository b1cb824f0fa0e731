"""Shared fixtures. Every test that makes shared memory does it under a fresh run id, and the
``run_paths`` fixture fails the test if any segment of that run is left in /dev/shm."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from state.control import ControlBlock
from state.run import RunPaths, new_run_id
from state.segment import PREFIX, SHM_DIR

# Run ids made by the fixtures carry this session's tag, so the end-of-session leak check
# only looks at this session's segments (other test runs may share the machine).
SESSION_TAG = f"t{os.getpid() % 0xFFFF:04x}"


def leftover_segments(run_id: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.glob(f"{PREFIX}{run_id}-*"))


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After the whole session: no child process of the test run is alive, and no segment
    (or bell) of a run made by these fixtures is still in /dev/shm."""
    yield
    me = psutil.Process()
    deadline = time.monotonic() + 30
    while me.children(recursive=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    kids = [f"{c.pid} {' '.join(c.cmdline()[:4])}" for c in me.children(recursive=True)
            if c.is_running()]
    new = sorted(p.name for p in SHM_DIR.glob(f"{PREFIX}{SESSION_TAG}*"))
    for c in me.children(recursive=True):
        c.kill()
    for name in new:
        (SHM_DIR / name).unlink(missing_ok=True)
    assert not kids, f"the test session left processes running: {kids}"
    assert not new, f"the test session left shared memory behind: {new}"


@pytest.fixture
def run_paths(tmp_path: Path) -> Iterator[RunPaths]:
    """A fresh run directory and run id; asserts at teardown that the run left nothing."""
    paths = RunPaths(tmp_path / "run", SESSION_TAG + new_run_id()[:4])
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
