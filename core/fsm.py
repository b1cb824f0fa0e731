"""An explicit lifecycle: an enum, a transition table, and a log line on every change.

Shared by every worker and by the reload orchestration (nautilus_trader's component FSM in
miniature). An illegal move is a bug: it is logged and refused, never silently applied.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

S = TypeVar("S", bound=enum.IntEnum)


class InvalidTransition(RuntimeError):
    """A state change the table does not allow."""


class StateMachine(Generic[S]):
    """Holds one state of an enum and moves it only along ``table``."""

    def __init__(self, name: str, initial: S, table: dict[S, frozenset[S]],
                 on_change: Callable[[S, S], None] | None = None) -> None:
        missing = [s.name for s in type(initial) if s not in table]
        if missing:
            raise ValueError(f"{name}: transition table lacks {missing}")
        self.name = name
        self.state = initial
        self._table = table
        self._on_change = on_change

    def to(self, new: S, why: str = "") -> None:
        """Move to ``new`` (a no-op when already there); raise on an illegal move."""
        old = self.state
        if new == old:
            return
        if new not in self._table[old]:
            log.error("%s: refused %s -> %s (%s)", self.name, old.name, new.name, why)
            raise InvalidTransition(f"{self.name}: {old.name} -> {new.name} refused")
        log.info("%s: %s -> %s%s", self.name, old.name, new.name, f" ({why})" if why else "")
        self.state = new
        if self._on_change is not None:
            self._on_change(old, new)

    def can(self, new: S) -> bool:
        return new == self.state or new in self._table[self.state]
