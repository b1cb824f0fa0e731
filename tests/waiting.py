"""Waiting on a condition with a deadline: the one way tests synchronise with processes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 30.0, what: str = "condition",
             on_fail: Callable[[], str] | None = None) -> T:
    """Poll ``cond`` until it returns something truthy (and return that), or fail after
    ``timeout`` seconds, naming ``what`` and adding ``on_fail()`` (e.g. a log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            extra = on_fail() if on_fail else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{extra}")
        time.sleep(0.02)     # poll interval of the condition, not a timing assumption
