from __future__ import annotations

import pytest

from position_worker.executors.base import OrderRequest, OrderStatus
from position_worker.executors.paper import PaperExecutor
from position_worker.journal import OrderRow
from position_worker.markets import MarketsView
from state.layout import Outcome
from state.run import RunPaths
from tests.position_worker.fakes import MarketTable, down_token, up_token

WS = 1_700_000_100


def req(outcome: int = Outcome.UP, max_price: float = 0.6, ck: str = "k") -> OrderRequest:
    tok = up_token(0, WS) if outcome == Outcome.UP else down_token(0, WS)
    return OrderRequest(client_key=ck, metadata="0x" + "1" * 64, slot=0, window_start=WS,
                        slug="s", condition_id="c", outcome=outcome, token=tok, stake=5.0,
                        max_price=max_price)


@pytest.fixture
async def paper(run_paths: RunPaths, markets: MarketTable):
    view = MarketsView(run_paths)
    ex = PaperExecutor(view, run_paths.run_dir / "paper.sqlite")
    yield ex
    await ex.close()                    # idempotent (one test closes it itself)
    view.close()


async def test_fills_at_best_ask_with_taker_fee(paper: PaperExecutor,
                                                markets: MarketTable) -> None:
    markets.set(0, WS, down_ask=0.4, size=100)
    res = await paper.place(await paper.prepare(req(Outcome.DOWN)))
    assert res.status == OrderStatus.FILLED
    assert res.shares == pytest.approx(12.5) and res.cost == pytest.approx(5.0)
    assert res.fees == pytest.approx(12.5 * 0.07 * 0.4 * 0.6)


async def test_rejects_above_max_price_or_thin_book(paper: PaperExecutor,
                                                    markets: MarketTable) -> None:
    markets.set(0, WS, up_ask=0.65)
    res = await paper.place(await paper.prepare(req(ck="a")))
    assert res.status == OrderStatus.REJECTED and "no ask" in res.error
    markets.set(0, WS, up_ask=0.5, size=3)
    res = await paper.place(await paper.prepare(req(ck="b")))
    assert res.status == OrderStatus.REJECTED and "FOK" in res.error


async def test_lookup_after_crash(paper: PaperExecutor, markets: MarketTable,
                                  run_paths: RunPaths) -> None:
    markets.set(0, WS, up_ask=0.5)
    await paper.place(await paper.prepare(req(ck="z")))
    await paper.close()
    again = PaperExecutor(MarketsView(run_paths), run_paths.run_dir / "paper.sqlite")
    row = OrderRow(client_key="z", idem_key="0:1", intent_row=0, slot=0, window_start=WS,
                   end_ts=WS + 300, slug="s", condition_id="c", outcome=0,
                   token=up_token(0, WS), stake=5, max_price=0.6, epoch=1)
    res = await again.lookup(row)
    assert res.status == OrderStatus.FILLED and res.shares == pytest.approx(10.0)
    row.client_key = "nope"
    assert (await again.lookup(row)).status == OrderStatus.NOT_FOUND
    assert len(await again.trades()) == 1
    again.markets.close()
    await again.close()
