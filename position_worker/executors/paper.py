"""Paper executor: fills locally against the scanned book, for paper trading on live data.

A market BUY for ``stake`` dollars fills at the slot's best ask if that ask is at most the
max price and the best level holds enough shares (fill-or-kill against one level: the scan
carries only the best level, so walking deeper would invent liquidity). The taker fee is
shares x 0.07 x p x (1 - p).

Fills are kept in a small "venue ledger" (its own SQLite file next to the journal) so that
``lookup`` after a crash answers like an exchange would: the ledger is the paper venue's
memory, the journal is ours.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

from position_worker.executors.base import (
    Executor,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Prepared,
    PrepareError,
    taker_fee,
)
from position_worker.journal import Fill, OrderRow
from position_worker.markets import MarketsView


class PaperExecutor(Executor):
    name = "paper"

    def __init__(self, markets: MarketsView, ledger_path: Path, *,
                 fee_rate: float = 0.07) -> None:
        self.markets = markets
        self.fee_rate = fee_rate
        self._db = sqlite3.connect(ledger_path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS fills (order_id TEXT PRIMARY KEY, "
                         "client_key TEXT, token TEXT, price REAL, size REAL, fee REAL, "
                         "status TEXT, error TEXT)")

    async def prepare(self, req: OrderRequest) -> Prepared:
        if not req.token:
            raise PrepareError("no token for the outcome")
        payload = {"venue": "paper", "side": "BUY", "order_type": "FOK", "token": req.token,
                   "amount": req.stake, "price": req.max_price, "metadata": req.metadata}
        return Prepared(req, f"paper-{req.client_key}", payload)

    async def place(self, p: Prepared) -> OrderResult:
        req = p.request
        q = self.markets.quote(req.slot)
        status, error, fills = OrderStatus.REJECTED, "", []
        if q is None or q.window_start != req.window_start or q.token(req.outcome) != req.token:
            error = "market moved on"
        else:
            ask, size = q.ask(req.outcome)
            shares = math.floor(req.stake / ask * 100) / 100 if ask > 0 else 0.0
            if not 0 < ask <= req.max_price:
                error = f"no ask at or below {req.max_price} (best {ask})"
            elif size < shares:
                error = f"FOK: {size} shares at {ask} < {shares} wanted"
            else:
                status = OrderStatus.FILLED
                fills = [Fill(p.order_id, ask, shares, taker_fee(shares, ask, self.fee_rate))]
        f = fills[0] if fills else Fill(p.order_id, 0.0, 0.0, 0.0)
        self._db.execute("INSERT OR IGNORE INTO fills VALUES(?,?,?,?,?,?,?,?)",
                         (p.order_id, req.client_key, req.token, f.price, f.size, f.fee,
                          str(status), error))
        return OrderResult(status, p.order_id, fills, error)

    async def lookup(self, o: OrderRow) -> OrderResult:
        row = self._db.execute("SELECT price, size, fee, status, error FROM fills WHERE "
                               "client_key=?", (o.client_key,)).fetchone()
        if row is None:
            return OrderResult(OrderStatus.NOT_FOUND, o.order_id)
        price, size, fee, status, error = row
        order_id = f"paper-{o.client_key}"
        fills = [Fill(order_id, price, size, fee)] if status == OrderStatus.FILLED else []
        return OrderResult(OrderStatus(status), order_id, fills, error)

    async def open_orders(self) -> list[dict]:
        return []

    async def cancel_all(self) -> int:
        return 0                    # fill-or-kill against the scan: nothing ever rests

    async def trades(self, after: int | None = None) -> list[dict]:
        rows = self._db.execute("SELECT order_id, token, price, size FROM fills WHERE "
                                "status=?", (str(OrderStatus.FILLED),)).fetchall()
        return [{"id": r[0], "order_id": r[0], "asset_id": r[1], "side": "BUY",
                 "price": r[2], "size": r[3]} for r in rows]

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]
