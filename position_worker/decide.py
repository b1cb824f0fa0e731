"""Fencing, validation and idempotency: whether an intent may become an order at all.

Risk limits come after these (risk.py). The order of the checks is part of the contract:
a zombie strategy's intents are refused as STALE_EPOCH whatever else is wrong with them.
"""

from __future__ import annotations

from position_worker.intents import Intent
from position_worker.reasons import RejectReason
from position_worker.risk import Verdict


def fence(it: Intent, active_epoch: int) -> Verdict | None:
    """Only the active epoch may trade; epoch 0 means nobody may."""
    if active_epoch == 0 or it.epoch != active_epoch:
        return Verdict(RejectReason.STALE_EPOCH,
                       f"intent epoch {it.epoch} != active epoch {active_epoch}")
    return None


def validate(it: Intent) -> Verdict | None:
    problem = it.problems()
    return Verdict(RejectReason.BAD_INTENT, problem) if problem else None


def deduplicate(it: Intent, already_ordered: bool) -> Verdict | None:
    if already_ordered:
        return Verdict(RejectReason.DUPLICATE,
                       f"an order for slot {it.slot} window {it.window_start} exists")
    return None
