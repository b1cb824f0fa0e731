"""One position worker per run dir: an exclusive ``flock`` on ``RUN_DIR/position.lock``.

Two workers on one run dir would share the journal and the intent rings and could each send
an order for the same window (the second one resuming the first one's unsent rows). The lock
is taken before anything else (before the control-block slot is claimed, before the journal is
opened) and held for the life of the process; the kernel drops it when the process dies, even
by kill -9, so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from core.errors import OperatorError

LOCK_NAME = "position.lock"


class RunDirLocked(OperatorError):
    """Another live process holds the run dir's position lock."""


class RunLock:
    """Hold ``run_dir/position.lock`` exclusively; ``RunDirLocked`` when someone else does."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise RunDirLocked(f"{self.path} is held by another position worker"
                               f"{f' (pid {holder})' if holder else ''}; refusing to start a "
                               "second one on the same run dir") from None
        except BaseException:
            os.close(fd)
            raise
        # for humans only: the lock itself is the flock, not this pid
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Idempotent. (Process exit releases it too.)"""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0)
    except (OSError, ValueError):
        return 0
