"""Process plumbing every worker shares: logging, uvloop, and signals that only enqueue."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from core import logs
from core.logs import LOG_FORMAT as LOG_FORMAT

# Exit codes every worker uses. The supervisor restarts a worker only after EXIT_CRASH (or a
# signal); the others mean "restarting cannot help" (gunicorn's WORKER_BOOT_ERROR idea).
EXIT_OK = 0
EXIT_CRASH = 1          # an unexpected failure: a restart may fix it
EXIT_USAGE = 2          # bad arguments or configuration
EXIT_OPERATOR = 3       # needs a human: lock held, credentials, layout mismatch
EXIT_BROKEN_CODE = 4    # the (strategy) code does not load
NO_RESTART_EXITS = frozenset({EXIT_USAGE, EXIT_OPERATOR, EXIT_BROKEN_CODE})


def setup_logging(level: str | None = None, *, role: str | None = None,
                  run_dir: Path | None = None, epoch: int | None = None) -> Path | None:
    """The old entry point (``setup_logging(level)``): see :func:`core.logs.setup_logging`,
    which new code calls directly (its first argument is the role)."""
    return logs.setup_logging(role, level=level, run_dir=run_dir, epoch=epoch)


def private_umask() -> None:
    """Make every file and directory this process creates private to its user (umask 077)."""
    # Every file a worker creates in the run dir (journal, logs, status) must be 0600 even
    # when the process was started from a shell with umask 022.
    os.umask(0o077)


def install_stop_signals(stop: asyncio.Event,
                         signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """SIGTERM/SIGINT set ``stop``; the loop notices and shuts down in order.

    The handler does nothing else: no logging, no I/O (gunicorn's rule).
    """
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a worker's async main on uvloop (falls back to asyncio where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency on Linux
        return asyncio.run(main())
    return uvloop.run(main())


def truncate(payload: bytes | str, limit: int = 200) -> str:
    """A safe, short rendering of a bad payload for the log."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return text if len(text) <= limit else text[:limit] + f"...(+{len(text) - limit} chars)"
