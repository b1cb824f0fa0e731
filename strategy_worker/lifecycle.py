"""The strategy worker's lifecycle, published as the worker ``state`` byte in the control block.

::

    STARTING -> VERIFYING -> READY -> HANDED -> ACTIVE -> DRAINING -> DRAINED -> RETIRED
                               |  ^                ^                     |
                               v  |                +------ RESUME -------+
                              SHADOW
    any state but RETIRED -> FAILED -> RETIRED

- STARTING: the file is loaded (a fresh module) and the shared memory attached.
- VERIFYING: the live snapshot is restored into a fresh instance, every listed slot is
  evaluated once on the current tick (no intents; one exception fails), get_state() must
  round-trip through orjson and fit the snapshot region, and self_test() runs if defined.
- READY: a verified standby. It reads ticks (keeping the recent ones) but does not evaluate.
- SHADOW: evaluates N live ticks beside the active worker without trading, and reports the
  decisions that differ; then READY again.
- HANDED: it restored exactly the generation the drained worker committed and waits for the
  supervisor to flip the active epoch to its own.
- ACTIVE: evaluates every tick after the handed-over one, trades, commits every cycle.
- DRAINING/DRAINED: finished its cycle, committed a final snapshot, stopped trading and
  committing; it can be resumed (rollback after drain) or retired.
- RETIRED: about to exit 0. FAILED: about to exit with the failure's code.
"""

from __future__ import annotations

import enum


class StrategyState(enum.IntEnum):
    STARTING = 1
    VERIFYING = 2
    READY = 3
    SHADOW = 4
    HANDED = 5
    ACTIVE = 6
    DRAINING = 7
    DRAINED = 8
    RETIRED = 9
    FAILED = 10


_S = StrategyState
TRANSITIONS: dict[StrategyState, frozenset[StrategyState]] = {
    _S.STARTING: frozenset({_S.VERIFYING, _S.RETIRED, _S.FAILED}),
    _S.VERIFYING: frozenset({_S.READY, _S.RETIRED, _S.FAILED}),
    _S.READY: frozenset({_S.SHADOW, _S.HANDED, _S.RETIRED, _S.FAILED}),
    _S.SHADOW: frozenset({_S.READY, _S.RETIRED, _S.FAILED}),
    _S.HANDED: frozenset({_S.ACTIVE, _S.RETIRED, _S.FAILED}),
    _S.ACTIVE: frozenset({_S.DRAINING, _S.FAILED}),
    _S.DRAINING: frozenset({_S.DRAINED, _S.ACTIVE, _S.FAILED}),   # ACTIVE: the drain failed
    _S.DRAINED: frozenset({_S.ACTIVE, _S.RETIRED, _S.FAILED}),
    _S.RETIRED: frozenset(),
    _S.FAILED: frozenset({_S.RETIRED}),
}
