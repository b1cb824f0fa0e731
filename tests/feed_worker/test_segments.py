"""One feed per run: an exclusive lock, not a guess from the segments' creator PID."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from feed_worker.segments import FeedSegments
from state.run import RunPaths
from state.runlock import RunDirLocked

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_opener_is_refused_until_the_first_closes(run_paths: RunPaths):
    first = FeedSegments.open(run_paths)
    try:
        with pytest.raises(RunDirLocked, match="is a feed running"):
            FeedSegments.open(run_paths)
    finally:
        first.close()
    again = FeedSegments.open(run_paths)            # released with close(): adopt
    try:
        assert all(again.adopted.values())
    finally:
        again.unlink()
        again.close()


def test_a_live_creator_that_is_not_a_feed_does_not_block_adoption(run_paths: RunPaths):
    # The segments' creator PID (this test process) is alive but holds no feed lock, as when
    # a dead feed's PID has been reused by an unrelated process: a new feed must adopt.
    segs = FeedSegments.open(run_paths)
    segs.close()
    code = ("import sys; from feed_worker.segments import FeedSegments; "
            "from state.run import RunPaths; "
            f"s = FeedSegments.open(RunPaths({str(run_paths.run_dir)!r}, "
            f"{run_paths.run_id!r})); print(all(s.adopted.values())); s.close()")
    try:
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=60,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]
    finally:
        last = FeedSegments.open(run_paths)     # (which also proves the lock was released)
        last.unlink()
        last.close()
