from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import OperatorError
from position_worker.runlock import RunDirLocked, RunLock


def test_one_holder_per_run_dir(tmp_path: Path) -> None:
    a = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()            # flock: even another fd of this process
    assert issubclass(RunDirLocked, OperatorError)        # exit 3, not a restart loop
    a.release()
    a.release()                                          # idempotent
    b = RunLock(tmp_path).acquire()                      # free again
    assert b.held
    b.release()
