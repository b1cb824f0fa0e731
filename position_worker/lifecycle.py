"""The position worker's lifecycle: an explicit state machine, every change logged."""

from __future__ import annotations

import enum
import logging

log = logging.getLogger(__name__)


class WorkerState(enum.IntEnum):
    STARTING = 1      # segments, journal, executor
    RECOVERING = 2    # rebuild positions from the journal, reconcile with the exchange
    RUNNING = 3       # accepting intents
    STOPPING = 4
    STOPPED = 5
    FAILED = 6


_T = WorkerState
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    _T.STARTING: frozenset({_T.RECOVERING, _T.STOPPING, _T.FAILED}),
    _T.RECOVERING: frozenset({_T.RUNNING, _T.STOPPING, _T.FAILED}),
    _T.RUNNING: frozenset({_T.STOPPING, _T.FAILED}),
    _T.STOPPING: frozenset({_T.STOPPED, _T.FAILED}),
    _T.STOPPED: frozenset(),
    _T.FAILED: frozenset({_T.STOPPING, _T.STOPPED}),
}


class InvalidTransition(RuntimeError):
    pass


class Lifecycle:
    def __init__(self) -> None:
        self.state = WorkerState.STARTING

    def to(self, new: WorkerState, why: str = "") -> None:
        """Move to ``new``; an illegal move is refused (raised), never silently applied."""
        if new not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"position worker: {self.state.name} -> {new.name} refused")
        log.info("position worker: %s -> %s%s", self.state.name, new.name,
                 f" ({why})" if why else "")
        self.state = new
