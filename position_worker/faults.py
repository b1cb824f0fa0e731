"""Crash points for the kill -9 tests: the worker SIGKILLs itself at an exact point.

Enabled only by ``--crash-at`` (or ``NOBLINK_POSITION_CRASH_AT``); never in normal runs.
- ``after_journal``: the signed request is durably journaled (SENDING), nothing was sent.
- ``after_send``: the exchange has the order (its reply arrived), the reply is not journaled.
"""

from __future__ import annotations

import os
import signal

CRASH_POINTS = ("after_journal", "after_send")


class CrashPoints:
    def __init__(self, at: str | None) -> None:
        if at and at not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {at!r}; one of {CRASH_POINTS}")
        self.at = at or None

    def hit(self, point: str) -> None:
        if point == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
