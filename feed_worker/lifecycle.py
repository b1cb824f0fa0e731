"""The feed worker's two state machines: the process, and the Binance connection.

Both are explicit enums with a transition table. Every change is logged with its reason;
an illegal move is refused (logged and raised), never silently applied.

Process (published as the worker ``state`` byte in the control block)::

    STARTING -> BACKFILLING -> RUNNING <-> DEGRADED
         any live state -> STOPPING -> STOPPED;  any -> FAILED

Connection::

    IDLE -> CONNECTING -> STREAMING -> ROTATING -> STREAMING      (make-before-break)
                   \\           \\-> STALLED / CLOSED -> BACKOFF -> CONNECTING
                    \\-> BACKOFF                         any -> STOPPED
"""

from __future__ import annotations

import enum

from core.fsm import StateMachine

__all__ = ["CONN_TRANSITIONS", "FEED_TRANSITIONS", "ConnState", "FeedState", "StateMachine"]


class FeedState(enum.IntEnum):
    STARTING = 1      # segments adopted or created, windows recovered
    BACKFILLING = 2   # the first REST backfill is under way
    RUNNING = 3       # windows complete, stream live
    DEGRADED = 4      # stream down or stalled; REST keeps the windows complete meanwhile
    STOPPING = 5
    STOPPED = 6
    FAILED = 7


class ConnState(enum.IntEnum):
    IDLE = 0
    CONNECTING = 1
    STREAMING = 2
    ROTATING = 3      # a replacement connection is opening; the old one still streams
    STALLED = 4       # the connection (or one stream) was silent too long; being dropped
    CLOSED = 5        # the server or the network closed it
    BACKOFF = 6       # waiting (jittered, exponential) before the next attempt
    STOPPED = 7


_F = FeedState
FEED_TRANSITIONS: dict[FeedState, frozenset[FeedState]] = {
    _F.STARTING: frozenset({_F.BACKFILLING, _F.STOPPING, _F.FAILED}),
    _F.BACKFILLING: frozenset({_F.RUNNING, _F.DEGRADED, _F.STOPPING, _F.FAILED}),
    _F.RUNNING: frozenset({_F.DEGRADED, _F.STOPPING, _F.FAILED}),
    _F.DEGRADED: frozenset({_F.RUNNING, _F.STOPPING, _F.FAILED}),
    _F.STOPPING: frozenset({_F.STOPPED, _F.FAILED}),
    _F.STOPPED: frozenset(),
    _F.FAILED: frozenset({_F.STOPPING, _F.STOPPED}),
}

_C = ConnState
CONN_TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    _C.IDLE: frozenset({_C.CONNECTING, _C.STOPPED}),
    _C.CONNECTING: frozenset({_C.STREAMING, _C.BACKOFF, _C.STOPPED}),
    _C.STREAMING: frozenset({_C.ROTATING, _C.STALLED, _C.CLOSED, _C.STOPPED}),
    _C.ROTATING: frozenset({_C.STREAMING, _C.STALLED, _C.CLOSED, _C.STOPPED}),
    _C.STALLED: frozenset({_C.BACKOFF, _C.STOPPED}),
    _C.CLOSED: frozenset({_C.BACKOFF, _C.STOPPED}),
    _C.BACKOFF: frozenset({_C.CONNECTING, _C.STOPPED}),
    _C.STOPPED: frozenset(),
}
