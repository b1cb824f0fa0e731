"""The CLOB's matching engine and ledger: accounts, orders, trades, settlement.

Units: USDC and shares are integer micro-units (1e-6, the tokens' 6 decimals); prices are
integer cents (tick 0.01).

Matching (taker orders walk the synthetic book of sim.books, best level first):
- BUY FOK/FAK spend the order's makerAmount (dollars) at asks <= the limit price; BUY GTC/GTD
  buy its takerAmount (shares); SELL orders sell makerAmount shares at bids >= the limit. This
  is Polymarket's "market orders are sized in dollars for buys, shares for sells".
- FOK fills completely or is rejected with no fill; FAK keeps what filled (rejected if nothing
  did); GTC/GTD fill what crosses and rest the remainder at the limit price.
- Taker fee, in USDC: ``shares * 0.07 * p * (1 - p)`` per fill at the fill's price; makers pay
  nothing. Buyers pay it on top of the cost, sellers from the proceeds.
- Taken liquidity refills linearly over REFILL_S sim seconds.
- Resting orders are filled by the simulated crowd, never by other accounts' takers: when the
  synthetic book crosses them (the market moved through the price), and at random while they
  sit at or inside the best level.

Balances: BUY orders need available USDC for cost plus the taker fee at the limit; SELL orders
need the shares. Resting orders reserve both. At the window's end resting orders are
cancelled; at resolution every share pays 1 (winner) or 0 and the positions are closed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import random
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sim.books import fair_up, up_levels
from sim.context import SimContext
from sim.markets import Market

log = logging.getLogger("sim.exchange")

U = 1_000_000
FEE_RATE = 0.07
FEE_RATE_BPS = "700"
REFILL_S = 30.0
MIN_SIZE = 5                 # shares, for resting (GTC/GTD) orders
MIN_MARKETABLE_USDC = 1.0    # for FOK/FAK buys
CROWD_FILL_TAU_S = 20.0      # mean sim seconds before the crowd hits an order at the top
HEARTBEAT_TIMEOUT_WALL_S = 10.0
GTD_SAFETY_S = 60
DUST_U = 100                 # 0.0001 USDC: what rounding may leave of a budget
MINED_AFTER_S = 2.0
CONFIRMED_AFTER_S = 6.0
MAX_ACCOUNTS = 1000          # L1 auth checks no signature, so anyone can make accounts
MAX_SETTLEMENTS = 200        # kept per account (admin /accounts shows them)


def fee_u(shares_u: int, cents: int) -> int:
    p = cents / 100
    return round(shares_u * FEE_RATE * p * (1 - p))


def fmt_u(x: int) -> str:
    """Micro-units -> decimal string without trailing zeros ("12.5", "3")."""
    sign = "-" if x < 0 else ""
    whole, frac = divmod(abs(int(x)), U)
    return f"{sign}{whole}" + (f".{frac:06d}".rstrip("0") if frac else "")


def fmt_c(cents: int) -> str:
    return f"{cents / 100:.2f}"


class AccountLimit(Exception):
    """MAX_ACCOUNTS accounts exist and none can be evicted."""


class OrderError(Exception):
    """Rejected order: 400 {"error": msg}."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.msg, self.status = msg, status


@dataclass
class Account:
    address: str
    api_key: str
    secret: str
    passphrase: str
    balance_u: int
    positions: dict[str, int] = field(default_factory=dict)
    settlements: deque[dict[str, Any]] = field(
        default_factory=lambda: deque(maxlen=MAX_SETTLEMENTS))
    heartbeat_at: float | None = None          # monotonic time of the last heartbeat
    # True once it placed an order or sent a heartbeat. Until then the account holds nothing
    # that its deterministic credentials cannot rebuild, so it may be evicted.
    active: bool = False

    def creds(self) -> dict[str, str]:
        return {"apiKey": self.api_key, "secret": self.secret, "passphrase": self.passphrase}


@dataclass
class Order:
    id: str
    account: Account
    market: Market
    token: str
    side: str                 # BUY / SELL
    price_c: int
    order_type: str
    maker_amount_u: int
    taker_amount_u: int
    size_u: int               # shares it is for (BUY by dollars: shares at the limit)
    created: float
    expiration: int
    matched_u: int = 0
    status: str = "LIVE"      # LIVE, MATCHED, CANCELED
    trade_ids: list[str] = field(default_factory=list)

    @property
    def remaining_u(self) -> int:
        return max(self.size_u - self.matched_u, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "status": self.status, "owner": self.account.api_key,
            "maker_address": self.account.address, "market": self.market.condition_id,
            "asset_id": self.token, "side": self.side, "original_size": fmt_u(self.size_u),
            "size_matched": fmt_u(self.matched_u), "price": fmt_c(self.price_c),
            "outcome": self.market.outcome_of(self.token), "created_at": int(self.created),
            "expiration": str(self.expiration), "order_type": self.order_type,
            "type": self.order_type,
            "associate_trades": list(self.trade_ids),
        }


class Exchange:
    def __init__(self, ctx: SimContext) -> None:
        self.ctx = ctx
        self.by_address: dict[str, Account] = {}
        self.by_key: dict[str, Account] = {}
        self.orders: dict[str, Order] = {}
        self.live: dict[str, Order] = {}
        self.trades: list[dict[str, Any]] = []
        self.trades_by_id: dict[str, dict[str, Any]] = {}
        self._taken: dict[tuple[str, str, int], tuple[float, float]] = {}
        self._last_price: dict[str, int] = {}
        self._volume: dict[str, float] = {}
        self._rng = random.Random(ctx.config.seed)
        self._seq = 0
        self.max_accounts = MAX_ACCOUNTS
        # Bumped by every change of what ``snapshot`` holds, so the ledger file (sim/ledger.py)
        # is rewritten only when something it keeps changed.
        self.version = 0

    def changed(self) -> None:
        self.version += 1

    # -- accounts ----------------------------------------------------------------------------

    def account_for(self, address: str, nonce: int = 0) -> Account:
        """The account of an address, made on first use with deterministic credentials.

        At most ``max_accounts`` exist: making one more evicts the least recently used account
        that never placed an order nor sent a heartbeat (deriving its key again rebuilds it
        as it was); raises AccountLimit if every account is active."""
        key = address.lower()
        acc = self.by_address.get(key)
        if acc is not None:
            self.touch(acc)
        else:
            if len(self.by_address) >= self.max_accounts:
                self._evict_one()
            d = hashlib.sha256(f"creds:{self.ctx.config.seed}:{key}:{nonce}".encode()).digest()
            acc = Account(
                address=address, api_key=str(uuid.UUID(bytes=d[:16], version=4)),
                secret=base64.urlsafe_b64encode(hashlib.sha256(d + b"s").digest()).decode(),
                passphrase=hashlib.sha256(d + b"p").hexdigest(),
                balance_u=round(self.ctx.config.balance * U))
            self.by_address[key] = acc
            self.by_key[acc.api_key] = acc
            self.changed()
        return acc

    def touch(self, acc: Account) -> None:
        """Mark the account as just used (by_address is kept in least-recent-first order)."""
        key = acc.address.lower()
        if self.by_address.get(key) is acc:
            self.by_address[key] = self.by_address.pop(key)

    def _evict_one(self) -> None:
        for key, acc in self.by_address.items():
            if not acc.active:
                del self.by_address[key]
                self.by_key.pop(acc.api_key, None)
                self.changed()
                return
        log.warning("account limit: %d active accounts, refusing a new one", len(self.by_address))
        raise AccountLimit(f"too many accounts (the simulator keeps {self.max_accounts})")

    def reserved(self, acc: Account) -> tuple[int, dict[str, int]]:
        usdc, shares = 0, {}
        for o in self.live.values():
            if o.account is acc:
                if o.side == "BUY":
                    usdc += o.remaining_u * o.price_c // 100
                else:
                    shares[o.token] = shares.get(o.token, 0) + o.remaining_u
        return usdc, shares

    def accounts_info(self) -> list[dict[str, Any]]:
        out = []
        for acc in self.by_address.values():
            usdc, _ = self.reserved(acc)
            out.append({"address": acc.address, "api_key": acc.api_key,
                        "balance": fmt_u(acc.balance_u), "reserved": fmt_u(usdc),
                        "positions": {t: fmt_u(v) for t, v in acc.positions.items() if v},
                        "settlements": list(acc.settlements),
                        "open_orders": sum(1 for o in self.live.values() if o.account is acc)})
        return out

    # -- persistence (sim/ledger.py) -------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a restarted sim needs to be the same exchange: the accounts (credentials,
        balances, positions, settlements), the orders (lookups, and duplicate refusal of a
        resent order) and the trades. Books' taken liquidity, last prices and volumes are
        left out: they refill and move on within seconds of sim time."""
        reg = self.ctx.markets
        slugs = {o.market.slug for o in self.orders.values()}
        if reg is not None:            # a position outlives its orders only until settlement
            for acc in self.by_address.values():
                slugs.update(m.slug for t in acc.positions
                             if (m := reg.token(t)) is not None)
        return {
            "seq": self._seq,
            "accounts": [{"address": a.address, "api_key": a.api_key, "secret": a.secret,
                          "passphrase": a.passphrase, "balance_u": a.balance_u,
                          "positions": {t: q for t, q in a.positions.items() if q},
                          "settlements": list(a.settlements), "active": a.active}
                         for a in self.by_address.values()],
            "markets": sorted(slugs),
            "orders": [{"id": o.id, "address": o.account.address, "slug": o.market.slug,
                        "token": o.token, "side": o.side, "price_c": o.price_c,
                        "order_type": o.order_type, "maker_amount_u": o.maker_amount_u,
                        "taker_amount_u": o.taker_amount_u, "size_u": o.size_u,
                        "created": o.created, "expiration": o.expiration,
                        "matched_u": o.matched_u, "status": o.status,
                        "trade_ids": o.trade_ids, "live": o.id in self.live}
                       for o in self.orders.values()],
            "trades": self.trades,
        }

    def restore(self, doc: dict[str, Any]) -> None:
        """Rebuild the ledger of ``snapshot`` (raises KeyError/TypeError/ValueError on a bad
        document). Call before serving. The markets it names are materialised now: one
        whose window ended while the sim was down closes and resolves at once, settling the
        positions restored just before, as the dead sim would have."""
        assert not self.by_address and not self.orders, "restore() into a used exchange"
        for a in doc["accounts"]:
            acc = Account(address=str(a["address"]), api_key=str(a["api_key"]),
                          secret=str(a["secret"]), passphrase=str(a["passphrase"]),
                          balance_u=int(a["balance_u"]),
                          positions={str(t): int(q) for t, q in a["positions"].items()},
                          active=bool(a["active"]))
            acc.settlements.extend(a["settlements"])
            self.by_address[acc.address.lower()] = acc
            self.by_key[acc.api_key] = acc
        self._seq = int(doc["seq"])
        reg = self.ctx.markets
        now = self.ctx.clock.now()
        markets: dict[str, Market] = {}
        for slug in doc["markets"]:
            m = reg.get(slug, now) if reg is not None else None
            if m is not None:          # None: forgotten (past retention) while the sim was down
                markets[slug] = m
        for d in doc["orders"]:
            m, acc = markets.get(d["slug"]), self.by_address.get(str(d["address"]).lower())
            if m is None or acc is None:
                continue
            o = Order(str(d["id"]), acc, m, str(d["token"]), str(d["side"]), int(d["price_c"]),
                      str(d["order_type"]), int(d["maker_amount_u"]),
                      int(d["taker_amount_u"]), int(d["size_u"]), float(d["created"]),
                      int(d["expiration"]), int(d["matched_u"]), str(d["status"]),
                      [str(t) for t in d["trade_ids"]])
            self.orders[o.id] = o
            if d["live"]:
                if m.trading_closed:   # its window ended while the sim was down
                    o.status = "CANCELED"
                else:
                    self.live[o.id] = o
        known = {m.condition_id for m in markets.values()}
        for t in doc["trades"]:
            if isinstance(t, dict) and t.get("market") in known:
                self.trades.append(t)
                self.trades_by_id[t["id"]] = t
        self.changed()

    # -- books ---------------------------------------------------------------------------------

    def synthetic(self, m: Market, token: str, now: float
                  ) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """(bids, asks) of the crowd for ``token``, best first, net of recent takes."""
        fair = fair_up(self.ctx.prices, self.ctx.chainlink, m, now)
        ub, ua = up_levels(m, fair, now, self.ctx.config.seed)
        ub = [(c, self._visible(m, "bid", c, s, now)) for c, s in ub]
        ua = [(c, self._visible(m, "ask", c, s, now)) for c, s in ua]
        ub = [(c, s) for c, s in ub if s > 0]
        ua = [(c, s) for c, s in ua if s > 0]
        if token == m.up_token:
            return ub, ua
        return [(100 - c, s) for c, s in ua], [(100 - c, s) for c, s in ub]

    def _visible(self, m: Market, side: str, cents: int, size: float, now: float) -> float:
        got = self._taken.get((m.id, side, cents))
        if got is None:
            return size
        taken, at = got
        left = taken * max(0.0, 1.0 - (now - at) / REFILL_S)
        return round(max(0.0, size - left), 2)

    def _consume(self, m: Market, token: str, book_side: str, cents: int, shares_u: int,
                 now: float) -> None:
        # Everything is kept on the Up book: a Down bid at c is an Up ask at 100 - c.
        if token != m.up_token:
            book_side = "ask" if book_side == "bid" else "bid"
            cents = 100 - cents
        key = (m.id, book_side, cents)
        taken, at = self._taken.get(key, (0.0, now))
        left = taken * max(0.0, 1.0 - (now - at) / REFILL_S)
        self._taken[key] = (left + shares_u / U, now)

    def book(self, m: Market, token: str, now: float) -> dict[str, Any]:
        """The /book reply: crowd levels plus resting orders; best level last on each side."""
        bids, asks = self.synthetic(m, token, now)
        agg_b: dict[int, float] = dict(bids)
        agg_a: dict[int, float] = dict(asks)
        other = m.other(token)
        for o in self.live.values():
            if o.token == token:
                tgt, c = (agg_b if o.side == "BUY" else agg_a), o.price_c
            elif o.token == other:
                tgt, c = (agg_a if o.side == "BUY" else agg_b), 100 - o.price_c
            else:
                continue
            tgt[c] = round(tgt.get(c, 0.0) + o.remaining_u / U, 2)
        book = {
            "market": m.condition_id, "asset_id": token,
            "timestamp": str(int(now * 1000)), "hash": "",
            "bids": [{"price": fmt_c(c), "size": f"{agg_b[c]:g}"} for c in sorted(agg_b)],
            "asks": [{"price": fmt_c(c), "size": f"{agg_a[c]:g}"}
                     for c in sorted(agg_a, reverse=True)],
            "min_order_size": str(MIN_SIZE), "tick_size": "0.01", "neg_risk": False,
            "last_trade_price": fmt_c(self._last_price.get(token, 50)),
        }
        book["hash"] = book_hash(book)
        return book

    def quote(self, m: Market, now: float, token: str | None = None) -> dict[str, Any] | None:
        """Best bid/ask/mid/last of a token (Up by default) as floats; None if no book."""
        if not m.book_exists(now):
            return None
        token = token or m.up_token
        bids, asks = self.synthetic(m, token, now)
        bid = bids[0][0] / 100 if bids else None
        ask = asks[0][0] / 100 if asks else None
        if bid is not None and ask is not None:
            mid = (bid + ask) / 2
        else:                      # a side bought out: the crowd's fair value stands in
            fair = fair_up(self.ctx.prices, self.ctx.chainlink, m, now)
            mid = fair if token == m.up_token else 1 - fair
        return {"bid": bid, "ask": ask, "mid": mid,
                "last": self._last_price.get(token, 50) / 100}

    def volume(self, m: Market) -> float:
        return self._volume.get(m.slug, 0.0)

    # -- orders --------------------------------------------------------------------------------

    def place(self, acc: Account, body: Any) -> dict[str, Any]:
        """Validate, match and book one POST /order body; raises OrderError."""
        now = self.ctx.clock.now()
        order, order_type, post_only = parse_order(body)
        oid = order_id(order)
        if body.get("owner") != acc.api_key:
            raise OrderError("the order owner has to be the owner of the API KEY")
        if order["signer"].lower() != acc.address.lower():
            raise OrderError("the order signer address has to be the address of the API KEY")
        if oid in self.orders:
            raise OrderError(f"order {oid} is invalid. Duplicated.")
        m = self.ctx.markets.token(order["tokenId"]) if self.ctx.markets else None
        if m is None:
            raise OrderError("market not found")
        if not m.accepting_orders(now):
            raise OrderError(f"order {oid} is invalid. The market is not accepting orders.")
        side = order["side"]
        maker_u, taker_u = int(order["makerAmount"]), int(order["takerAmount"])
        price = maker_u / taker_u if side == "BUY" else taker_u / maker_u
        cents = round(price * 100)
        # The price is a ratio of integer base-unit amounts, so a $900 buy at 0.99 comes out
        # as 0.990003: range-check the tick it rounds to (the tick check below bounds the
        # rounding), not the raw float.
        if not 1 <= cents <= 99:
            raise OrderError(f"order {oid} is invalid. Price ({price:.4f}), min: 0.01 - max: 0.99")
        if abs(price * 100 - cents) > 0.01:
            raise OrderError(f"order {oid} is invalid. Price ({price:.4f}) breaks minimum tick "
                             "size rule: 0.01")
        by_dollars = side == "BUY" and order_type in ("FOK", "FAK")
        size_u = taker_u if side == "BUY" else maker_u
        if order_type in ("GTC", "GTD") and size_u < MIN_SIZE * U:
            raise OrderError(f"order {oid} is invalid. Size ({fmt_u(size_u)}) lower than the "
                             f"minimum: {MIN_SIZE}")
        if by_dollars and maker_u < MIN_MARKETABLE_USDC * U:
            raise OrderError(f"order {oid} is invalid. Amount ({fmt_u(maker_u)}) lower than the "
                             f"minimum: {MIN_MARKETABLE_USDC:g}")
        expiration = int(order.get("expiration", 0))
        if order_type == "GTD" and expiration <= now + GTD_SAFETY_S:
            raise OrderError(f"order {oid} is invalid. Expiration must be at least "
                             f"{GTD_SAFETY_S}s in the future (sim time)")
        usdc_res, share_res = self.reserved(acc)
        if side == "BUY":
            need = (maker_u if by_dollars else size_u * cents // 100) + fee_u(size_u, cents)
            if acc.balance_u - usdc_res < need:
                raise OrderError("not enough balance / allowance")
        elif acc.positions.get(order["tokenId"], 0) - share_res.get(order["tokenId"], 0) < size_u:
            raise OrderError("not enough balance / allowance")
        token = order["tokenId"]
        bids, asks = self.synthetic(m, token, now)
        crosses = (bool(asks) and asks[0][0] <= cents) if side == "BUY" else \
            (bool(bids) and bids[0][0] >= cents)
        if post_only and crosses:
            raise OrderError(f"order {oid} is invalid. Post-only order crosses the book.")
        o = Order(oid, acc, m, token, side, cents, order_type, maker_u, taker_u, size_u, now,
                  expiration)
        fills = self._walk(bids, asks, side, cents, maker_u if by_dollars else None, size_u)
        if order_type == "FOK" and not self._complete(fills, side, cents, maker_u, size_u,
                                                      by_dollars):
            raise OrderError("order couldn't be fully filled. FOK orders are fully filled or "
                             "killed.")
        if order_type == "FAK" and not fills:
            raise OrderError("no orders found to match with FAK order. FAK orders are partially "
                             "filled or killed if no match is found.")
        self.orders[oid] = o
        acc.active = True
        self.changed()
        trades = [self._fill(o, c, q, now, taker=True, consume_at=c) for c, q in fills]
        if by_dollars:
            o.size_u = o.matched_u              # a dollar-sized order is for what it bought
        if o.order_type in ("GTC", "GTD") and o.remaining_u > 0:
            self.live[oid] = o
            o.status = "LIVE"
        else:
            o.status = "MATCHED" if o.matched_u > 0 else "CANCELED"
        spent = sum(q * c // 100 for c, q in fills)
        got = sum(q for _, q in fills)
        making, taking = (spent, got) if side == "BUY" else (got, spent)
        return {"success": True, "errorMsg": "", "orderID": oid,
                "status": "matched" if trades else "live",
                "makingAmount": fmt_u(making) if trades else "",
                "takingAmount": fmt_u(taking) if trades else "",
                "transactionsHashes": [t["transaction_hash"] for t in trades],
                "tradeIDs": [t["id"] for t in trades]}

    @staticmethod
    def _walk(bids, asks, side: str, limit_c: int, budget_u: int | None, shares_u: int
              ) -> list[tuple[int, int]]:
        fills: list[tuple[int, int]] = []
        for c, size in (asks if side == "BUY" else bids):
            if (side == "BUY" and c > limit_c) or (side == "SELL" and c < limit_c):
                break
            if budget_u is not None and budget_u <= DUST_U:
                break
            want = budget_u * 100 // c if budget_u is not None else shares_u
            q = min(round(size * U), want)
            if q <= 0:
                break
            fills.append((c, q))
            if budget_u is not None:
                budget_u -= q * c // 100
            else:
                shares_u -= q
        return fills

    @staticmethod
    def _complete(fills, side: str, limit_c: int, maker_u: int, size_u: int,
                  by_dollars: bool) -> bool:
        if by_dollars:
            left = maker_u - sum(q * c // 100 for c, q in fills)
            return left <= DUST_U              # rounding leaves a few micro-dollars unspent
        return sum(q for _, q in fills) >= size_u

    def _fill(self, o: Order, cents: int, q: int, now: float, taker: bool,
              consume_at: int | None = None) -> dict[str, Any]:
        """Book one fill of ``q`` shares at ``cents``: ledger, depletion, trade record.
        ``consume_at``: the crowd level (cents) this fill took, if it took one."""
        acc, m = o.account, o.market
        cost = q * cents // 100
        fee = fee_u(q, cents) if taker else 0
        if o.side == "BUY":
            acc.balance_u -= cost + fee
            acc.positions[o.token] = acc.positions.get(o.token, 0) + q
        else:
            acc.balance_u += cost - fee
            acc.positions[o.token] = acc.positions.get(o.token, 0) - q
        o.matched_u += q
        self.changed()
        if consume_at is not None:      # crowd liquidity that traded is gone for a while
            self._consume(m, o.token, "ask" if o.side == "BUY" else "bid", consume_at, q, now)
        self._last_price[o.token] = cents
        self._last_price[m.other(o.token)] = 100 - cents
        self._volume[m.slug] = self._volume.get(m.slug, 0.0) + cost / U
        self._seq += 1
        tid = str(uuid.UUID(bytes=hashlib.sha256(f"{o.id}:{self._seq}".encode()).digest()[:16],
                            version=4))
        crowd_id = "0x" + hashlib.sha256(f"crowd:{tid}".encode()).hexdigest()
        crowd_addr = "0x" + hashlib.sha256(f"crowd-addr:{m.slug}".encode()).hexdigest()[:40]
        maker = ({"order_id": crowd_id, "owner": "", "maker_address": crowd_addr} if taker else
                 {"order_id": o.id, "owner": acc.api_key, "maker_address": acc.address})
        maker.update({"matched_amount": fmt_u(q), "price": fmt_c(cents),
                      "fee_rate_bps": "0", "asset_id": o.token,
                      "outcome": m.outcome_of(o.token),
                      "side": ("SELL" if o.side == "BUY" else "BUY") if taker else o.side})
        trade = {
            "id": tid, "taker_order_id": o.id if taker else crowd_id,
            "market": m.condition_id, "asset_id": o.token, "side": o.side,
            "size": fmt_u(q), "fee_rate_bps": FEE_RATE_BPS if taker else "0",
            "fee": fmt_u(fee), "price": fmt_c(cents), "status": "MATCHED",
            "match_time": str(int(now)), "last_update": str(int(now)),
            "outcome": m.outcome_of(o.token), "bucket_index": 0, "owner": acc.api_key,
            "maker_address": acc.address, "trader_side": "TAKER" if taker else "MAKER",
            "type": "TAKER" if taker else "MAKER",
            "transaction_hash": "0x" + hashlib.sha256(f"tx:{tid}".encode()).hexdigest(),
            "maker_orders": [maker], "order_id": o.id, "_t": now,
        }
        o.trade_ids.append(tid)
        self.trades.append(trade)
        self.trades_by_id[tid] = trade
        return trade

    def trade_view(self, t: dict[str, Any], now: float) -> dict[str, Any]:
        age = now - t["_t"]
        status = ("CONFIRMED" if age >= CONFIRMED_AFTER_S else
                  "MINED" if age >= MINED_AFTER_S else "MATCHED")
        out = {k: v for k, v in t.items() if not k.startswith("_")}
        out["status"] = status
        return out

    def cancel(self, acc: Account, ids: list[str]) -> dict[str, Any]:
        canceled, not_canceled = [], {}
        for oid in ids:
            o = self.live.get(oid)
            if o is None or o.account is not acc:
                not_canceled[oid] = "order can't be found - already canceled or matched"
                continue
            self._drop(o)
            canceled.append(oid)
        return {"canceled": canceled, "not_canceled": not_canceled}

    def cancel_where(self, acc: Account, market: str | None = None,
                     asset_id: str | None = None) -> dict[str, Any]:
        ids = [o.id for o in self.live.values() if o.account is acc
               and (market is None or o.market.condition_id == market)
               and (asset_id is None or o.token == asset_id)]
        return self.cancel(acc, ids)

    def _drop(self, o: Order) -> None:
        self.live.pop(o.id, None)
        o.status = "CANCELED"
        self.changed()

    def heartbeat(self, acc: Account) -> dict[str, Any]:
        acc.heartbeat_at = time.monotonic()
        if not acc.active:
            acc.active = True
            self.changed()
        return {"heartbeat_id": str(uuid.uuid4()), "error": None}

    # -- market lifecycle hooks ----------------------------------------------------------------

    def on_market_closed(self, m: Market) -> None:
        for o in [o for o in self.live.values() if o.market is m]:
            self._drop(o)
        # A market can close or resolve inside any request that looks it up (Gamma, admin),
        # not only in the market tick: save here, before that request's reply.
        self.ctx.save_ledger()

    def on_market_resolved(self, m: Market) -> None:
        now = self.ctx.clock.now()
        for acc in self.by_address.values():
            for token in m.tokens():
                q = acc.positions.pop(token, 0)
                if q == 0:
                    continue
                win = m.outcome_of(token) == m.outcome
                payout = q if win else 0
                acc.balance_u += payout
                acc.settlements.append({"slug": m.slug, "token": token,
                                        "outcome": m.outcome_of(token), "winner": m.outcome,
                                        "shares": fmt_u(q), "payout": fmt_u(payout),
                                        "time": now})
                self.changed()
        self.ctx.save_ledger()

    def on_market_forgotten(self, m: Market) -> None:
        for oid in [oid for oid, o in self.orders.items() if o.market is m]:
            del self.orders[oid]
        keep = [t for t in self.trades if t["market"] != m.condition_id]
        for t in self.trades:
            if t["market"] == m.condition_id:
                self.trades_by_id.pop(t["id"], None)
        self.trades = keep
        for key in [k for k in self._taken if k[0] == m.id]:
            del self._taken[key]
        self._volume.pop(m.slug, None)
        for token in m.tokens():
            self._last_price.pop(token, None)
        self.changed()

    # -- background ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Fill and expire resting orders; enforce the heartbeat dead-man switch."""
        clock = self.ctx.clock
        period = max(clock.to_wall_seconds(1.0), 0.05)
        last = clock.now()
        while True:
            await asyncio.sleep(period)
            now = clock.now()
            try:
                self.tick(now, now - last)
            except Exception:                       # one bad order must not stop the rest
                log.exception("exchange tick failed")
            self.ctx.save_ledger()                  # crowd fills, dead-man cancels
            last = now

    def tick(self, now: float, dt: float) -> None:
        for o in list(self.live.values()):
            if o.order_type == "GTD" and o.expiration and now >= o.expiration:
                self._drop(o)
                continue
            self._crowd_fill(o, now, dt)
        mono = time.monotonic()
        for acc in self.by_address.values():
            if acc.heartbeat_at is not None and mono - acc.heartbeat_at > HEARTBEAT_TIMEOUT_WALL_S:
                acc.heartbeat_at = None
                self.cancel_where(acc)

    def _crowd_fill(self, o: Order, now: float, dt: float) -> None:
        if not o.market.accepting_orders(now):
            return
        bids, asks = self.synthetic(o.market, o.token, now)
        opp = asks if o.side == "BUY" else bids
        crossed = [(c, s) for c, s in opp
                   if (c <= o.price_c if o.side == "BUY" else c >= o.price_c)]
        for c, size in crossed:                    # the market moved through the order
            q = min(round(size * U), o.remaining_u)
            if q <= 0:
                break
            self._fill(o, o.price_c, q, now, taker=False, consume_at=c)
        if o.remaining_u > 0:
            same = bids if o.side == "BUY" else asks
            at_top = not same or (o.price_c >= same[0][0] if o.side == "BUY"
                                  else o.price_c <= same[0][0])
            if at_top and self._rng.random() < 1 - math.exp(-max(dt, 0.0) / CROWD_FILL_TAU_S):
                q = min(o.remaining_u, round(self._rng.uniform(5, 50) * U))
                self._fill(o, o.price_c, q, now, taker=False)
        if o.remaining_u == 0:
            self.live.pop(o.id, None)
            o.status = "MATCHED"


# -- order payloads -------------------------------------------------------------------------

_ORDER_TYPES = ("GTC", "GTD", "FOK", "FAK")
_HEX_RE = re.compile(r"0x[0-9a-fA-F]*")
_DIGITS_RE = re.compile(r"[0-9]{1,78}")       # ASCII only: str.isdigit() also takes '²'


def _hex(v: Any, n: int | None) -> bool:
    return (isinstance(v, str) and _HEX_RE.fullmatch(v) is not None
            and (n is None or len(v) == n + 2))


def _digits(v: Any) -> bool:
    return isinstance(v, str) and _DIGITS_RE.fullmatch(v) is not None


def parse_order(body: Any) -> tuple[dict[str, Any], str, bool]:
    """Check a POST /order body's shape (a signed V2 order); raises OrderError."""
    bad = OrderError("Invalid order payload")
    if not isinstance(body, dict) or not isinstance(body.get("order"), dict):
        raise bad
    o = body["order"]
    order_type = body.get("orderType", "GTC")
    post_only = body.get("postOnly", False)
    if order_type not in _ORDER_TYPES or not isinstance(post_only, bool):
        raise bad
    if not isinstance(body.get("owner"), str):
        raise bad
    if post_only and order_type in ("FOK", "FAK"):
        raise OrderError("invalid post-only order: post-only is only for GTC and GTD orders")
    salt = o.get("salt")
    ok = (isinstance(salt, int) and not isinstance(salt, bool) and salt >= 0
          and _hex(o.get("maker"), 40) and _hex(o.get("signer"), 40)
          and _digits(o.get("tokenId")) and _digits(o.get("makerAmount"))
          and _digits(o.get("takerAmount")) and o.get("side") in ("BUY", "SELL")
          and _digits(str(o.get("expiration", "0"))) and o.get("signatureType") in (0, 1, 2, 3)
          and _digits(o.get("timestamp")) and _hex(o.get("metadata"), 64)
          and _hex(o.get("builder"), 64) and _hex(o.get("signature"), None)
          and len(o.get("signature", "")) >= 132)
    if not ok or int(o["makerAmount"]) <= 0 or int(o["takerAmount"]) <= 0:
        raise bad
    return o, order_type, post_only


def order_id(order: dict[str, Any]) -> str:
    """Deterministic id: the same signed order always gets the same id (so a resend is a
    duplicate, as on Polymarket, where the id is the order's hash)."""
    keys = ("salt", "maker", "signer", "tokenId", "makerAmount", "takerAmount", "side",
            "signatureType", "timestamp", "metadata", "builder", "expiration", "signature")
    blob = "|".join(str(order.get(k, "")).lower() for k in keys)
    return "0x" + hashlib.sha256(blob.encode()).hexdigest()


def book_hash(book: dict[str, Any]) -> str:
    """SHA-1 of the compact book JSON with an empty hash, the rule py-clob-client-v2 uses to
    check a book summary (``generate_orderbook_summary_hash``)."""
    import json

    payload = {k: book[k] for k in ("market", "asset_id", "timestamp")}
    payload["hash"] = ""
    payload["bids"] = [{"price": b["price"], "size": b["size"]} for b in book["bids"]]
    payload["asks"] = [{"price": a["price"], "size": a["size"]} for a in book["asks"]]
    for k in ("min_order_size", "tick_size", "neg_risk", "last_trade_price"):
        payload[k] = book[k]
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()
