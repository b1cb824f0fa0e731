"""A sim killed (-9) and restarted on the same run directory is the same exchange: the API
credentials a client derived before still work, and balances, positions, orders and trades
are there (sim/ledger.py). Another world (seed, run id) starts empty."""

from __future__ import annotations

import stat

import orjson
import pytest
from eth_account import Account
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import (
    AssetType,
    BalanceAllowanceParams,
    MarketOrderArgs,
    OrderArgs,
    OrderType,
    TradeParams,
)
from py_clob_client_v2.exceptions import PolyApiException

from sim.ledger import LEDGER_FILE
from sim.testing import SimProcess, admin_request, start_sim
from tests.sim.test_clob import best, tradable


def _restart(old: SimProcess, seed: int = 5) -> SimProcess:
    """kill -9, then a new sim on the same run directory continuing the dead one's clock,
    as the supervisor restarts it."""
    now = old.clock.now()
    old.proc.kill()
    old.proc.wait(10)
    return start_sim(old.run_dir, speed=60.0, seed=seed, extra_args=("--start", repr(now)))


def _account(sim: SimProcess) -> dict:
    (acc,) = admin_request(sim.admin, "GET", "/accounts")
    return acc


def test_restarted_sim_keeps_accounts_and_ledger(tmp_path) -> None:
    (tmp_path / "run.json").write_bytes(orjson.dumps({"run_id": "r-ledger"}))
    sims = [start_sim(tmp_path, speed=60.0, seed=5)]
    try:
        c = ClobClient(sims[0].endpoints.clob, 137, key=Account.create().key.hex())
        c.set_api_creds(c.create_or_derive_api_key())
        m = tradable(sims[0], min_left=300)
        _, ask = best(c, m["up"])
        fok = c.create_market_order(MarketOrderArgs(
            token_id=m["up"], amount=5, side="BUY", price=min(round(ask + 0.05, 2), 0.99)))
        filled = c.post_order(fok, OrderType.FOK)
        assert filled["success"] and filled["status"] == "matched", filled
        rest = c.post_order(c.create_order(OrderArgs(token_id=m["down"], price=0.01, size=100,
                                                     side="BUY")), OrderType.GTC)
        assert rest["success"], rest
        before = _account(sims[0])
        ledger = tmp_path / LEDGER_FILE
        assert stat.S_IMODE(ledger.stat().st_mode) == 0o600      # it holds API secrets

        sims.append(_restart(sims[0]))
        c.host = sims[1].endpoints.clob.rstrip("/")      # the old credentials, not re-derived
        after = _account(sims[1])
        assert {k: after[k] for k in ("address", "api_key", "balance", "positions")} == \
            {k: before[k] for k in ("address", "api_key", "balance", "positions")}
        assert c.get_api_keys()["apiKeys"] == [c.creds.api_key]
        bal = c.get_balance_allowance(BalanceAllowanceParams(asset_type=AssetType.COLLATERAL))
        assert int(bal["balance"]) > 0
        assert c.get_order(filled["orderID"])["status"] == "MATCHED"
        assert c.get_order(rest["orderID"])["status"] in ("LIVE", "MATCHED")
        trades = c.get_trades(TradeParams(asset_id=m["up"]))
        assert {t["taker_order_id"] for t in trades} == {filled["orderID"]}
        with pytest.raises(PolyApiException) as e:     # a resend is still a duplicate
            c.post_order(fok, OrderType.FOK)
        assert e.value.status_code == 400 and "Duplicated" in e.value.error_msg["error"]
        again = c.post_order(c.create_market_order(MarketOrderArgs(
            token_id=m["up"], amount=5, side="BUY", price=0.99)), OrderType.FOK)
        assert again["success"], again

        # another run in the same directory is another exchange: the old key is unknown
        (tmp_path / "run.json").write_bytes(orjson.dumps({"run_id": "r-next"}))
        sims.append(_restart(sims[1]))
        c.host = sims[2].endpoints.clob.rstrip("/")
        with pytest.raises(PolyApiException) as e:
            c.get_api_keys()
        assert e.value.status_code == 401
        assert admin_request(sims[2].admin, "GET", "/accounts") == []
    finally:
        for s in sims:
            s.stop()


def test_start_wall_continues_a_clock_exactly(tmp_path) -> None:
    """--start S --start-wall W: the sim's clock is the one that read S at wall time W (a
    restarted sim given the dead one's clock dict runs the very clock the workers hold)."""
    with start_sim(tmp_path, speed=30.0, extra_args=("--start", "1800000000.5",
                                                     "--start-wall", "1700000000.25")) as s:
        assert s.info["clock"] == {"speed": 30.0, "wall_epoch": 1700000000.25,
                                   "sim_epoch": 1800000000.5}
