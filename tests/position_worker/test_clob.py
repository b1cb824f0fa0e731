"""ClobExecutor's reply and error policy, against a scripted client (no network).

The policy decides between "rejected" (no position, final after a lookup), "uncertain" (look
it up, never re-send) and "filled/acked": getting it wrong either loses a position or sends a
second order.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from py_clob_client_v2.exceptions import PolyApiException

from core.errors import RetryableError
from position_worker.credentials import Credentials
from position_worker.executors.base import (
    OrderRequest,
    OrderStatus,
    Prepared,
    SendUncertain,
)
from position_worker.executors.clob import ClobExecutor
from position_worker.journal import OrderRow

TOKEN = "1234567"


class FakeClient:
    def __init__(self) -> None:
        self.reply: Any = None
        self.trades: Any = []
        self.order: Any = None
        self.cancel_reply: Any = {"canceled": [], "not_canceled": {}}
        self.trade_calls = 0

    def post_order(self, native: Any, order_type: Any) -> Any:
        if isinstance(self.reply, BaseException):
            raise self.reply
        return self.reply

    def get_trades(self, params: Any = None) -> Any:
        self.trade_calls += 1
        if isinstance(self.trades, BaseException):
            raise self.trades
        return self.trades

    def get_order(self, order_id: str) -> Any:
        if isinstance(self.order, BaseException):
            raise self.order
        return self.order

    def cancel_all(self) -> Any:
        if isinstance(self.cancel_reply, BaseException):
            raise self.cancel_reply
        return self.cancel_reply


def api_error(status: int | None) -> PolyApiException:
    if status is None:
        return PolyApiException(error_msg="Request exception!")
    return PolyApiException(httpx.Response(status, json={"error": f"http {status}"}))


@pytest.fixture
async def clob():
    ex = ClobExecutor("http://127.0.0.1:9", Credentials.sim_throwaway("clob-test"))
    fake = FakeClient()
    ex._client = fake  # type: ignore[assignment]
    yield ex, fake
    await ex.close()
    await ex.close()                                  # idempotent


def prepared() -> Prepared:
    req = OrderRequest(client_key="ck", metadata="0x" + "1" * 64, slot=0, window_start=900,
                       slug="s", condition_id="c", outcome=0, token=TOKEN, stake=5.0,
                       max_price=0.6)
    return Prepared(req, "0xhash", {}, native=object())


def row(order_id: str = "0xhash") -> OrderRow:
    return OrderRow(client_key="ck", idem_key="0:900", intent_row=1, slot=0, window_start=900,
                    end_ts=1200, slug="s", condition_id="c", outcome=0, token=TOKEN, stake=5.0,
                    max_price=0.6, epoch=1, order_id=order_id)


MATCHED = {"orderID": "0xvenue", "status": "matched", "makingAmount": "5",
           "takingAmount": "10"}


@pytest.mark.parametrize(("reply", "status"), [
    ({**MATCHED, "success": True}, OrderStatus.FILLED),
    (MATCHED, OrderStatus.FILLED),                              # no success field: not a no
    ({**MATCHED, "success": True, "errorMsg": "informational"}, OrderStatus.FILLED),
    ({"success": True, "status": "live", "orderID": "0xv"}, OrderStatus.ACKED),
    ({"status": "delayed", "orderID": "0xv"}, OrderStatus.ACKED),
    ({"success": False, "errorMsg": "not enough balance"}, OrderStatus.REJECTED),
    ({"success": True, "status": "unmatched"}, OrderStatus.REJECTED),   # FOK killed
    ({"error": "invalid order"}, OrderStatus.REJECTED),
])
async def test_replies(clob, reply: dict, status: OrderStatus) -> None:
    ex, fake = clob
    fake.reply = reply
    res = await ex.place(prepared())
    assert res.status == status
    assert fake.trade_calls == 0              # the reply is journaled before any trade fetch
    if status == OrderStatus.FILLED:
        assert res.order_id == "0xvenue"
        (f,) = res.fills
        assert f.provisional and f.size == 10.0 and f.price == pytest.approx(0.5)
        assert f.fee == pytest.approx(10 * 0.07 * 0.25)
    if status == OrderStatus.REJECTED:
        assert res.order_id == "0xhash" and res.error


async def test_amounts_in_base_units(clob) -> None:
    ex, fake = clob
    fake.reply = {**MATCHED, "makingAmount": "5000000", "takingAmount": "10000000"}
    res = await ex.place(prepared())
    assert res.shares == pytest.approx(10.0) and res.cost == pytest.approx(5.0)


@pytest.mark.parametrize("reply", [
    None, "junk", ["a"], {}, {"success": True},
    {**MATCHED, "success": False},                               # contradictory
])
async def test_uncertain_replies_are_looked_up_not_rejected(clob, reply: Any) -> None:
    ex, fake = clob
    fake.reply = reply
    with pytest.raises(SendUncertain):
        await ex.place(prepared())


@pytest.mark.parametrize(("status", "uncertain"), [
    (None, True), (500, True), (502, True), (429, True), (400, False), (401, False),
    (404, False),
])
async def test_http_errors(clob, status: int | None, uncertain: bool) -> None:
    ex, fake = clob
    fake.reply = api_error(status)
    if uncertain:
        with pytest.raises(SendUncertain):
            await ex.place(prepared())
    else:
        res = await ex.place(prepared())
        assert res.status == OrderStatus.REJECTED and res.order_id == "0xhash"
        assert str(status) in res.error


async def test_own_thread_pool(clob) -> None:
    ex, _fake = clob
    assert ex._pool._max_workers >= 16        # sixteen slow sends never queue lookups


async def test_transport_errors_are_uncertain(clob) -> None:
    ex, fake = clob
    fake.reply = httpx.ReadTimeout("timed out")
    with pytest.raises(SendUncertain):
        await ex.place(prepared())


def trade(**kw: Any) -> dict:
    t = {"id": "t1", "taker_order_id": "0xvenue", "asset_id": TOKEN, "side": "BUY",
         "price": "0.5", "size": "10", "status": "MATCHED", "trader_side": "TAKER",
         "fee_rate_bps": "700"}
    t.update(kw)
    return t


async def test_lookup_finds_our_taker_fills(clob) -> None:
    ex, fake = clob
    fake.trades = ["junk", None, trade(), trade(id="t2", trader_side="MAKER"),
                   trade(id="t3", side="SELL"), trade(id="t4", asset_id="other"),
                   trade(id="t5", status="FAILED")]
    res = await ex.lookup(row())
    assert res.status == OrderStatus.FILLED and res.order_id == "0xvenue"
    assert [f.trade_id for f in res.fills] == ["t1"]
    assert not res.fills[0].provisional
    assert res.fills[0].fee == pytest.approx(10 * 0.07 * 0.25)


@pytest.mark.parametrize(("order", "status"), [
    ({"status": "LIVE"}, OrderStatus.ACKED),
    ({"status": "MATCHED"}, OrderStatus.ACKED),          # no trades visible yet: not final
    ({"status": "CANCELED"}, OrderStatus.REJECTED),
    (None, OrderStatus.NOT_FOUND),
    ("junk", OrderStatus.NOT_FOUND),
    (api_error(404), OrderStatus.NOT_FOUND),
    (api_error(400), OrderStatus.NOT_FOUND),
])
async def test_lookup_by_order_id(clob, order: Any, status: OrderStatus) -> None:
    ex, fake = clob
    fake.order = order
    assert (await ex.lookup(row())).status == status


@pytest.mark.parametrize("err", [api_error(None), api_error(500), api_error(429)])
async def test_lookup_errors_are_retryable(clob, err: PolyApiException) -> None:
    ex, fake = clob
    fake.order = err
    with pytest.raises(RetryableError):
        await ex.lookup(row())
    fake.order, fake.trades = None, err
    with pytest.raises(RetryableError):
        await ex.lookup(row())


async def test_malformed_trade_listing(clob) -> None:
    ex, fake = clob
    fake.trades = {"not": "a list"}
    assert await ex.trades(after=1) == []
    fake.trades = [trade(), 7]
    assert [t["id"] for t in await ex.trades(after=1)] == ["t1"]


# -- cancel-all (the kill switch) -------------------------------------------------------------

@pytest.mark.parametrize(("reply", "n"), [
    ({"canceled": ["0xa", "0xb"], "not_canceled": {}}, 2),
    ({"canceled": [], "not_canceled": {"0xc": "order can't be found - already matched"}}, 0),
    ({"canceled": ["0xa"]}, 1),
])
async def test_cancel_all_counts_the_canceled(clob, reply: dict, n: int) -> None:
    ex, fake = clob
    fake.cancel_reply = reply
    assert await ex.cancel_all() == n


@pytest.mark.parametrize("reply", [
    None, "junk", ["0xa"], {}, {"canceled": "0xa"},
    api_error(None), api_error(500), api_error(401),
])
async def test_cancel_all_failures_are_retryable(clob, reply: Any) -> None:
    """Anything but a listing of what was canceled leaves the kill unconfirmed (retried)."""
    ex, fake = clob
    fake.cancel_reply = reply
    with pytest.raises(RetryableError):
        await ex.cancel_all()


async def test_cancel_all_against_the_sim_cancels_only_our_resting_orders(tmp_path) -> None:
    """The real client against the in-process sim (its clock stands still, so resting orders
    stay resting): DELETE /cancel-all cancels every open order of our account, and no one
    else's."""
    from position_worker.executors.paper import PaperExecutor
    from tests.sim.inproc import Trader, inproc_sim

    async with inproc_sim(tmp_path / "sim") as sim:
        ex = ClobExecutor(sim.url["clob"], Credentials.sim_throwaway("cancel-all-test"))
        try:
            await ex.start()
            us = await Trader.at(sim.http, sim.url["clob"], ex.address)
            other = await Trader.make(sim, 77)
            m = sim.market("btc")
            for t, token in ((us, m.up_token), (us, m.down_token), (other, m.up_token)):
                status, r = await t.call("POST", "/order", t.limit_buy(token, 5, 10))
                assert status == 200 and r["status"] == "live", r
            assert len(await ex.open_orders()) == 2
            assert await ex.cancel_all() == 2
            assert await ex.open_orders() == []
            assert await ex.cancel_all() == 0                   # nothing left: still fine
            status, theirs = await other.call("GET", "/data/orders")
            assert status == 200 and len(theirs["data"]) == 1, theirs
        finally:
            await ex.close()
    paper = PaperExecutor(None, tmp_path / "paper.sqlite")      # type: ignore[arg-type]
    assert await paper.cancel_all() == 0                         # nothing rests on paper
    await paper.close()
