"""CLOB executor: py-clob-client-v2, against the simulator's CLOB or production.

The client is synchronous (httpx), so every call runs on this executor's own thread pool
(``POOL_THREADS`` threads, not the loop's shared default pool, so sixteen slow sends plus
lookups never queue behind each other); the event loop never waits on the network.

Order shape: a market BUY, fill-or-kill, ``amount`` = the stake in dollars and ``price`` =
the intent's max price. The signed order then says "pay $stake for at least stake/max_price
shares": the exchange walks the book up to max_price and either fills all of it or kills it,
so a partial position can never exist. The order's bytes32 ``metadata`` carries a hash of the
idempotency key, so the order itself names the (slot, window) it belongs to.

Finding an order after a crash: its id is the EIP-712 hash of the signed order, which is
computed here before sending and journaled with the request. ``lookup`` asks
``/data/order/{id}`` and, because this worker places at most one order per token (one per
slot and window, and each window has its own tokens), it also treats any of the account's
BUY trades on the order's token as that order's fills.

The kill switch: ``cancel_all`` is the client's ``cancel_all`` (``DELETE /cancel-all``, every
open order of the account); this worker's own orders are FOK and never rest, but a delayed
order, or one placed by hand on the same account, may.

``retry_on_error`` stays False: the client would otherwise re-POST an order after a
transient error, which is exactly the duplicate this worker exists to prevent.

Reply policy (``_place_sync`` / ``_from_reply``): status ``matched`` is a fill (its fills are
taken from the reply's amounts, marked provisional; the engine journals them and then asks the
venue for the trades, which replace them), ``live``/``delayed`` an acknowledgement, even when
the ``success`` field is missing. ``success: false`` together with one of those statuses, a
reply that is not an object, or one with neither a status nor an error is uncertain (looked
up, never re-sent). An explicit error, a 4xx, or another status (``unmatched``: the FOK was
killed) is a rejection, which the engine confirms with a lookup before it is final.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import (
    ApiCreds,
    MarketOrderArgsV2,
    OrderType,
    TradeParams,
)
from py_clob_client_v2.config import get_contract_config
from py_clob_client_v2.exceptions import PolyApiException, PolyException
from py_clob_client_v2.order_utils import ExchangeOrderBuilderV2
from py_clob_client_v2.order_utils.model.order_data_v2 import order_to_json_v2

from core.errors import OperatorError, RetryableError
from core.proc import truncate
from position_worker.credentials import Credentials
from position_worker.executors.base import (
    TAKER_FEE_RATE,
    Executor,
    OrderRequest,
    OrderResult,
    OrderStatus,
    Prepared,
    PrepareError,
    SendUncertain,
    taker_fee,
)
from position_worker.executors.cache import BoundedCache
from position_worker.journal import Fill, OrderRow

log = logging.getLogger(__name__)
POLYGON = 137
POOL_THREADS = 16         # >= the most orders in flight at once (16 slots) + lookups
# the client's per-token caches (name-mangled ``ClobClient.__<name>``), keyed by token id
TOKEN_CACHES = ("__tick_sizes", "__neg_risk", "__fee_rates", "__fee_infos",
                "__token_condition_map")
_R = TypeVar("_R")


class _Client(ClobClient):
    """The stock client, minus the post-order wait for settlement transaction hashes
    (up to 30 s of polling per order); reconciliation reads trades on its own schedule.
    Its per-token caches are bounded (executors/cache.py): unbounded, they grew with every
    window's new tokens for the life of the process."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in TOKEN_CACHES:
            attr = f"_ClobClient{name}"
            if isinstance(getattr(self, attr, None), dict):
                setattr(self, attr, BoundedCache())
            else:
                log.warning("py-clob-client-v2 has no cache %s: left as it is", name)

    def token_cache_sizes(self) -> dict[str, int]:
        """How many tokens each per-token cache holds (tests and diagnostics)."""
        return {name: len(getattr(self, f"_ClobClient{name}", ())) for name in TOKEN_CACHES}

    def _resolve_transactions_hashes(self, response: Any) -> Any:
        return response


def _f(x: Any, default: float = 0.0) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def normalise_trade(t: dict) -> dict:
    """The fields reconciliation compares, from a /data/trades record."""
    return {"id": str(t.get("id", "")), "order_id": str(t.get("taker_order_id", "")),
            "asset_id": str(t.get("asset_id", "")), "side": str(t.get("side", "")).upper(),
            "price": _f(t.get("price")), "size": _f(t.get("size")),
            "status": str(t.get("status", "")).upper(),
            "trader_side": str(t.get("trader_side", "")).upper(),
            "fee": t.get("fee"), "fee_rate_bps": t.get("fee_rate_bps")}


class ClobExecutor(Executor):
    name = "clob"

    def __init__(self, host: str, creds: Credentials, *, chain_id: int = POLYGON,
                 fee_rate: float = TAKER_FEE_RATE) -> None:
        self.host = host
        self._creds = creds
        self.chain_id = chain_id
        self.fee_rate = fee_rate
        self._client: _Client | None = None
        self._version = 2
        self.address = ""
        self._pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="clob")

    async def _call(self, fn: Callable[..., _R], *args: Any) -> _R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    async def close(self) -> None:
        """Idempotent. A call still running in the pool finishes on its own thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the client and make sure it holds L2 (API key) credentials."""
        await self._call(self._start_sync)

    def _start_sync(self) -> None:
        c = self._creds
        api = (ApiCreds(c.api_key, c.api_secret, c.api_passphrase) if c.has_api_creds
               else None)
        try:
            client = _Client(self.host, self.chain_id, key=c.private_key, creds=api,
                             signature_type=c.signature_type, funder=c.funder or None)
        except (ValueError, TypeError) as e:
            # the signer's message may quote the key: name the type only
            raise OperatorError(f"the private key was refused by the signer "
                                f"({type(e).__name__})") from None
        if api is None:
            try:
                client.set_api_creds(client.create_or_derive_api_key())
            except PolyException as e:
                raise RetryableError(f"cannot derive an API key from {self.host}: "
                                     f"{_err(e)}") from None
        self._version = client.get_version()
        self.address = client.get_address()
        self._client = client
        log.info("clob executor ready: host=%s address=%s version=%s", self.host,
                 self.address, self._version)

    @property
    def client(self) -> _Client:
        if self._client is None:
            raise RuntimeError("clob executor used before start()")   # a bug: exit 1
        return self._client

    # -- orders -------------------------------------------------------------------------------

    async def prepare(self, req: OrderRequest) -> Prepared:
        return await self._call(self._prepare_sync, req)

    def _prepare_sync(self, req: OrderRequest) -> Prepared:
        args = MarketOrderArgsV2(token_id=req.token, amount=req.stake, side="BUY",
                                 price=req.max_price, order_type=OrderType.FOK,
                                 metadata=req.metadata)
        try:
            signed = self.client.create_market_order(args)
            neg_risk = self.client.get_neg_risk(req.token)
        except (PolyException, ValueError) as e:
            raise PrepareError(f"cannot build the order: {_err(e)}") from None
        cfg = get_contract_config(self.chain_id)
        exchange = cfg.neg_risk_exchange_v2 if neg_risk else cfg.exchange_v2
        builder = ExchangeOrderBuilderV2(exchange, self.chain_id, self.client.signer,
                                         domain_version=str(self._version))
        order_hash = builder.build_order_hash(builder.build_order_typed_data(signed))
        payload = order_to_json_v2(signed, self.client.creds.api_key, OrderType.FOK)
        payload["owner"] = "<api key>"       # the journal keeps the order, not the key
        return Prepared(req, order_hash, payload, native=signed)

    async def place(self, p: Prepared) -> OrderResult:
        return await self._call(self._place_sync, p)

    def _place_sync(self, p: Prepared) -> OrderResult:
        try:
            resp = self.client.post_order(p.native, OrderType.FOK)
        except PolyApiException as e:
            if e.status_code is None or e.status_code >= 500 or e.status_code == 429:
                # Network error, timeout, or a server failure: the exchange may have it.
                raise SendUncertain(f"post /order: {_err(e)}") from None
            return OrderResult(OrderStatus.REJECTED, p.order_id, error=_err(e),
                               raw={"status_code": e.status_code, "error": e.error_msg})
        except Exception as e:                      # anything else mid-request: uncertain
            raise SendUncertain(f"post /order: {type(e).__name__}: {e}") from None
        return self._from_reply(p, resp)

    def _from_reply(self, p: Prepared, resp: Any) -> OrderResult:
        """The POST /order reply, classified (see the module doc). No network call here: the
        reply is journaled first, the venue's trades are fetched after."""
        if not isinstance(resp, dict):
            raise SendUncertain(f"unexpected reply {truncate(str(resp))}")
        order_id = str(resp.get("orderID") or p.order_id)
        status = str(resp.get("status") or "").lower()
        success = resp.get("success")
        if status in ("matched", "live", "delayed"):
            if success is False:
                raise SendUncertain(f"contradictory reply (success false, status {status}): "
                                    f"{truncate(str(resp))}")
            if status == "matched":
                # provisional fills from the amounts; FILLED without them becomes ACKED and
                # the lookups find the trades
                return OrderResult(OrderStatus.FILLED, order_id,
                                   self._fills_from_amounts(order_id, resp), raw=resp)
            return OrderResult(OrderStatus.ACKED, order_id, raw=resp)
        error = resp.get("errorMsg") or resp.get("error")
        if success is False or error:
            return OrderResult(OrderStatus.REJECTED, order_id,
                               error=str(error or "rejected")[:500], raw=resp)
        if status:
            return OrderResult(OrderStatus.REJECTED, order_id, error=f"status {status!r}",
                               raw=resp)
        raise SendUncertain(f"reply without status or error: {truncate(str(resp))}")

    def _fills_from_amounts(self, order_id: str, resp: dict) -> list[Fill]:
        """BUY: makingAmount = dollars paid, takingAmount = shares received."""
        cost, shares = _f(resp.get("makingAmount")), _f(resp.get("takingAmount"))
        if cost > 1e5 or shares > 1e5:              # base units (6 decimals), not decimals
            cost, shares = cost / 1e6, shares / 1e6
        if shares <= 0:
            return []
        price = cost / shares
        return [Fill(f"{order_id}:reply", price, shares, taker_fee(shares, price,
                                                                   self.fee_rate))]

    def _fee(self, t: dict) -> float:
        """The fee the venue reports for the fill, else size x rate x p x (1 - p) with the
        trade's fee rate (or the crypto markets' 0.07)."""
        if t.get("fee") not in (None, ""):
            return _f(t["fee"])
        bps = t.get("fee_rate_bps")
        rate = _f(bps) / 1e4 if bps not in (None, "") else self.fee_rate
        return taker_fee(t["size"], t["price"], rate)

    def _fills_for(self, token: str, order_id: str = "") -> tuple[list[Fill], set[str]]:
        """Our taker BUY fills on ``token`` and the order ids they name: those of
        ``order_id`` when the venue's trades name it, else all of them (at most one order
        of ours exists per token, see the module doc)."""
        try:
            raw = self.client.get_trades(TradeParams(asset_id=token))
        except PolyException as e:
            raise RetryableError(f"trades lookup: {_err(e)}") from None
        ours = [t for t in map(normalise_trade, _records(raw, "trades"))
                if t["asset_id"] == token and t["side"] == "BUY" and t["status"] != "FAILED"
                and t["trader_side"] != "MAKER"]
        if order_id and any(t["order_id"] == order_id for t in ours):
            ours = [t for t in ours if t["order_id"] == order_id]
        fills = [Fill(t["id"], t["price"], t["size"], self._fee(t)) for t in ours]
        return fills, {t["order_id"] for t in ours if t["order_id"]}

    async def lookup(self, o: OrderRow) -> OrderResult:
        return await self._call(self._lookup_sync, o)

    def _lookup_sync(self, o: OrderRow) -> OrderResult:
        fills, ids = self._fills_for(o.token, o.order_id)
        if fills:
            # The venue's id for the order: the one its trades name (a venue may not use the
            # EIP-712 hash we computed before sending).
            oid = next(iter(ids)) if len(ids) == 1 else o.order_id
            if len(ids) > 1:
                log.error("order %s: trades on its token name %d orders: %s", o.client_key,
                          len(ids), sorted(ids))
            return OrderResult(OrderStatus.FILLED, oid, fills)
        order = None
        if o.order_id:
            try:
                order = self.client.get_order(o.order_id)
            except PolyApiException as e:
                if e.status_code is None or e.status_code >= 500 or e.status_code == 429:
                    raise RetryableError(f"get order: {_err(e)}") from None
                order = None                           # 4xx: unknown id
        if isinstance(order, dict) and order:
            st = str(order.get("status", "")).upper()
            if st in ("LIVE", "DELAYED", "MATCHED"):
                # MATCHED without visible trades yet: not final, look again later
                return OrderResult(OrderStatus.ACKED, o.order_id, raw=order)
            return OrderResult(OrderStatus.REJECTED, o.order_id, error=f"status {st}",
                               raw=order)
        return OrderResult(OrderStatus.NOT_FOUND, o.order_id)

    async def open_orders(self) -> list[dict]:
        return await self._call(self.client.get_open_orders)

    async def cancel_all(self) -> int:
        return await self._call(self._cancel_all_sync)

    def _cancel_all_sync(self) -> int:
        """``DELETE /cancel-all`` (the client's ``cancel_all``): every open order of the
        account. The reply lists ``canceled`` ids and ``not_canceled`` {id: reason} (an order
        matched meanwhile); anything else is retried."""
        try:
            resp = self.client.cancel_all()
        except PolyException as e:
            raise RetryableError(f"cancel-all: {_err(e)}") from None
        canceled = resp.get("canceled") if isinstance(resp, dict) else None
        if not isinstance(canceled, list):
            raise RetryableError(f"cancel-all: unexpected reply {truncate(str(resp))}")
        refused = resp.get("not_canceled") or {}
        if refused:
            log.warning("cancel-all: %d order(s) not canceled: %s", len(refused),
                        truncate(str(refused)))
        log.warning("cancel-all: %d order(s) canceled", len(canceled))
        return len(canceled)

    async def trades(self, after: int | None = None) -> list[dict]:
        params = TradeParams(after=after) if after else None
        raw = await self._call(self.client.get_trades, params)
        return [normalise_trade(t) for t in _records(raw, "trades")]


def _records(raw: Any, what: str) -> list[dict]:
    """The dict records of a venue listing; anything else is dropped and logged."""
    if not isinstance(raw, list):
        log.warning("%s: expected a list, got %s", what, truncate(str(raw)))
        return []
    good = [t for t in raw if isinstance(t, dict)]
    if len(good) != len(raw):
        log.warning("%s: %d malformed record(s) dropped", what, len(raw) - len(good))
    return good


def _err(e: BaseException) -> str:
    if isinstance(e, PolyApiException):
        return truncate(f"{e.status_code}: {e.error_msg}")
    if isinstance(e, PolyException):
        return truncate(str(e.msg))
    return truncate(f"{type(e).__name__}: {e}")
