"""Fencing, validation and idempotency: whether an intent may become an order at all.

Risk limits come after these (risk.py). The order of the checks is part of the contract:
a zombie strategy's intents are refused as STALE_EPOCH whatever else is wrong with them,
then a drained lane's late intents as FENCED.
"""

from __future__ import annotations

from position_worker.intents import Intent
from position_worker.reasons import RejectReason
from position_worker.risk import Verdict


def fence(it: Intent, active_epoch: int, lane_epoch: int, lane_fence: int | None
          ) -> Verdict | None:
    """Only the active epoch may trade (epoch 0 means nobody may), and only from the lane
    its strategy worker registered (``lane_epoch``: the epoch in that lane's control slot),
    so a process writing into the other lane's ring cannot borrow the active epoch.

    ``lane_fence`` (the control block's ``fence(lane)``, None while the lane is open) closes
    a lane during a hot reload: its worker drained and reported head H, and the supervisor
    flips the epoch once every intent below H is decided. An intent at or past H arrived
    after the drain and must not trade, even while its epoch is still the active one. The
    epoch checks come first: a zombie's intents are STALE_EPOCH whatever its lane says."""
    if active_epoch == 0 or it.epoch != active_epoch:
        return Verdict(RejectReason.STALE_EPOCH,
                       f"intent epoch {it.epoch} != active epoch {active_epoch}")
    if lane_epoch != it.epoch:
        return Verdict(RejectReason.STALE_EPOCH,
                       f"lane {it.lane} is registered to epoch {lane_epoch}, not {it.epoch}")
    if lane_fence is not None and it.seq >= lane_fence:
        return Verdict(RejectReason.FENCED,
                       f"lane {it.lane} is fenced at seq {lane_fence}: its worker drained "
                       f"(intent seq {it.seq})")
    return None


def validate(it: Intent) -> Verdict | None:
    problem = it.problems()
    return Verdict(RejectReason.BAD_INTENT, problem) if problem else None


def deduplicate(it: Intent, already_ordered: bool, traded_on_venue: bool = False
                ) -> Verdict | None:
    """One order per (slot, window): journaled here, or seen on the account at the venue
    (trades or open orders on the window's tokens, e.g. from a journal that was replaced)."""
    if already_ordered:
        return Verdict(RejectReason.DUPLICATE,
                       f"an order for slot {it.slot} window {it.window_start} exists")
    if traded_on_venue:
        return Verdict(RejectReason.DUPLICATE,
                       f"the account already trades slot {it.slot} window {it.window_start} "
                       "on the exchange")
    return None
