"""One lock class for every role that must be alone on a run directory.

``RoleLock(run_dir, "feed")`` holds an exclusive ``flock`` on ``RUN_DIR/<role>.lock`` for as
long as it is held. The feed, the position worker and the supervisor each take one before they
touch anything shared: two feeds would corrupt each other's segments, two position workers
could each send an order for the same window, two supervisors would run every command twice.

Why a flock and not a PID file: the kernel drops the lock when the process dies, even by
kill -9, so a stale file never blocks a restart, and two processes starting at the same moment
cannot both see "no live owner". The PID written into the file is for the error message only.
The file is never deleted: deleting it would race a new owner's open().
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from core.errors import OperatorError


class RunDirLocked(OperatorError):
    """Another live process holds this role's lock on the run dir (exit 3: an operator
    must look, a restart loop would not help)."""


class RoleLock:
    """Hold ``run_dir/<role>.lock`` exclusively; :class:`RunDirLocked` when someone else does."""

    def __init__(self, run_dir: Path, role: str, *, hint: str = "") -> None:
        self.role = role
        self.path = Path(run_dir) / f"{role}.lock"
        self.hint = hint                # appended to the error: what the operator should do
        self._fd: int | None = None

    def acquire(self) -> RoleLock:
        """Take the lock or raise RunDirLocked (never waits)."""
        # O_NOFOLLOW: a symlink planted in the run dir must not make us lock (or truncate)
        # a file elsewhere.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise RunDirLocked(f"{self.path} is held by another {self.role} process{who}; "
                               f"refusing to start a second one on the same run dir"
                               + (f": {self.hint}" if self.hint else "")) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. Idempotent (process exit releases it too)."""
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
