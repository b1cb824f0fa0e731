"""A strategy for the reaction bench (bench/reaction.py): an intent on every new window at once.

On the first tick a slot's window is listed and accepting, it proposes the cheaper side at
0.99 (the worker sends one intent per (slot, window) and no more), with the tick number in
the reason, so that the bench can match the journaled decision with the tick record that
caused it. Not a trading strategy.
"""

from __future__ import annotations

from strategy_worker.api import Decision, SlotView

SCHEMA_VERSION = 1


class Strategy:
    def __init__(self, params: dict) -> None:
        self.params = params

    def evaluate(self, view: SlotView) -> Decision | None:
        if not view.accepting:
            return None
        side = "Up" if view.up.ask <= view.down.ask else "Down"
        return Decision(side, 0.99, f"t{view.tick}")

    def get_state(self) -> dict:
        return {"history": {}}

    def set_state(self, state: dict) -> None:
        pass
