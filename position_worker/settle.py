"""Settlement: resolve each filled position from its market's resolution on Gamma.

After a position's window has ended (market clock), poll ``/markets/slug/{slug}`` with a
per-position backoff (0.5 s doubling to ``settle_backoff_max_s``, wall time from the injected
clock) until the market is closed and its outcome prices are final; a resolution that lacks
our outcome backs off the same way. Payout = shares x the price of our outcome (1 or 0);
``pnl = payout - cost - fees``; a win is pnl > 0. The settlement row, the order's SETTLED
state and its PnL are one journal transaction.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from core.errors import InputError, RetryableError
from core.gamma import Resolution
from position_worker.journal import OrderState
from state.layout import Outcome

if TYPE_CHECKING:
    from position_worker.engine import Engine

log = logging.getLogger(__name__)


class Settler:
    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.next_try: dict[str, tuple[float, float]] = {}   # ck -> (wall time, next delay)

    async def settle_due(self) -> int:
        """Settle filled positions whose window is over and whose market has resolved."""
        now = self.eng.clock.now()
        wall = self.eng.clock.monotonic_ns() / 1e9
        cache: dict[str, Resolution | None] = {}
        n = 0
        due = [o for o in self.eng.book.values()
               if o.state == OrderState.FILLED and now >= o.end_ts]
        for o in due:
            nxt, delay = self.next_try.get(o.client_key, (0.0, 0.5))
            if wall < nxt:
                continue
            try:
                if o.slug not in cache:
                    cache[o.slug] = await self.eng.gamma.resolution(o.slug)
                res = cache[o.slug]
            except (RetryableError, InputError) as e:
                log.warning("resolution of %s: %s", o.slug, e)
                res = None
            name = Outcome(o.outcome).name.lower()
            if res is not None and name not in res.payouts:
                log.error("resolution of %s has no outcome %r: %s", o.slug, name, res.payouts)
                res = None
            if res is None:
                d = min(delay * 2, self.eng.cfg.settle_backoff_max_s)
                self.next_try[o.client_key] = (wall + delay, d)
                continue
            payout = o.shares * res.payouts[name]
            pnl = payout - o.cost - o.fees
            with self.eng.journal.transaction():
                self.eng.journal.record_settlement(o, winner=res.winner, payout=payout,
                                                   settled_ts=float(o.end_ts), win=pnl > 0)
            self.next_try.pop(o.client_key, None)
            log.info("settled %s %s: winner %s, payout %.4f cost %.4f fees %.4f pnl %+.4f",
                     o.client_key, o.slug, res.winner, payout, o.cost, o.fees, o.pnl)
            self.eng.changed(o)
            n += 1
        return n
