from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import OperatorError
from state.runlock import RoleLock, RunDirLocked


def test_one_holder_per_run_dir(tmp_path: Path) -> None:
    a = RoleLock(tmp_path, "position").acquire()
    with pytest.raises(RunDirLocked, match=f"pid {os.getpid()}"):
        RoleLock(tmp_path, "position").acquire()            # flock: even another fd of this process
    assert issubclass(RunDirLocked, OperatorError)        # exit 3, not a restart loop
    a.release()
    a.release()                                          # idempotent
    b = RoleLock(tmp_path, "position").acquire()                      # free again
    assert b.held
    b.release()


def test_roles_are_independent_and_a_symlink_is_not_followed(tmp_path: Path) -> None:
    feed = RoleLock(tmp_path, "feed").acquire()
    pos = RoleLock(tmp_path, "position").acquire()        # another role: its own file
    feed.release()
    pos.release()
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    (tmp_path / "supervisor.lock").symlink_to(target)
    with pytest.raises(OSError):
        RoleLock(tmp_path, "supervisor").acquire()
    assert target.read_text() == "keep me"
