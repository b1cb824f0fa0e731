"""The position worker's lifecycle: an explicit state machine, every change logged."""

from __future__ import annotations

import enum

from core.fsm import StateMachine


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


def lifecycle() -> StateMachine[WorkerState]:
    """The position worker's process state machine (every change logged by core.fsm)."""
    return StateMachine("position worker", WorkerState.STARTING, TRANSITIONS)
