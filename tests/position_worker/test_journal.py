from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from position_worker.intents import Intent
from position_worker.journal import (
    Fill,
    Journal,
    JournalError,
    OrderConflict,
    OrderRow,
    OrderState,
)
from position_worker.reasons import RejectReason


def order(ck: str = "k1", idem: str = "0:100") -> OrderRow:
    return OrderRow(client_key=ck, idem_key=idem, intent_row=1, slot=0, window_start=100,
                    end_ts=400, slug="btc-updown-5m-100", condition_id="c", outcome=0,
                    token="t", stake=5.0, max_price=0.6, epoch=1)


def test_wal_and_full_sync(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert j.db.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
    j.close()
    j.close()                                                          # idempotent


def test_idempotency_key_is_unique_in_the_database(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    with j.transaction():
        j.insert_order(order("k1", "0:100"))
    with pytest.raises(sqlite3.IntegrityError), j.transaction():
        j.insert_order(order("k2", "0:100"))
    assert [o.client_key for o in j.orders()] == ["k1"]
    j.close()


def test_transitions_are_checked(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    o = order()
    with j.transaction():
        j.insert_order(o)
    with pytest.raises(JournalError):
        j.update_order(o, OrderState.SETTLED)            # NEW -> SETTLED skips the exchange
    j.update_order(o, OrderState.SENDING, order_id="0xabc", request='{"x":1}')
    j.update_order(o, OrderState.FILLED, shares=10.0, cost=5.0, fees=0.1)
    assert o.avg_price == pytest.approx(0.5)
    j.record_settlement(o, winner="up", payout=10.0, settled_ts=400.0, win=True)
    assert o.state == OrderState.SETTLED and o.pnl == pytest.approx(4.9)
    with pytest.raises(JournalError):
        j.update_order(o, OrderState.FILLED)
    j.close()


def test_survives_reopen_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    j = Journal(path)
    it = Intent(lane=1, seq=5, epoch=2, intent_id=5, created_ns=1, slot=3, outcome=1,
                window_start=900, slug="s", stake=5.0, max_price=0.5, reason="r")
    with j.transaction():
        j.record_intent(it, accepted=False, reject=RejectReason.PAUSED, detail="paused")
        j.set_lane_cursor(1, 42, 6)
    with pytest.raises(RuntimeError), j.transaction():
        j.record_intent(it, accepted=False, reject=RejectReason.PAUSED)
        raise RuntimeError("boom")
    j.close()
    j = Journal(path)
    assert j.intent_count() == 1
    assert j.rejections() == {int(RejectReason.PAUSED): 1}
    assert j.lane_cursor(1) == (42, 6) and j.lane_cursor(0) is None
    j.close()


def test_fills_are_deduplicated_by_trade_id(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    assert j.record_fills("k", [Fill("t1", 0.5, 10, 0.1)]) == 1
    assert j.record_fills("k", [Fill("t1", 0.5, 10, 0.1), Fill("t2", 0.6, 1, 0)]) == 1
    assert [f.trade_id for f in j.fills("k")] == ["t1", "t2"]
    j.close()


def test_state_changes_are_compare_and_set(tmp_path: Path) -> None:
    """A stale copy (or a second writer) can never move a row another writer moved."""
    a, b = Journal(tmp_path / "j.sqlite"), Journal(tmp_path / "j.sqlite")
    try:
        oa = order()
        with a.transaction():
            a.insert_order(oa)
        ob = b.order("k1")
        assert ob is not None
        with a.transaction():
            a.update_order(oa, OrderState.SENDING, order_id="0xa")
        with pytest.raises(OrderConflict), b.transaction():
            b.update_order(ob, OrderState.SENDING, order_id="0xb")
        assert ob.state == OrderState.NEW and ob.order_id == ""      # memory untouched
        row = a.order("k1")
        assert row is not None and row.state == OrderState.SENDING and row.order_id == "0xa"
        # two writes to one order in one transaction chain on the staged state
        with a.transaction():
            a.update_order(oa, OrderState.UNKNOWN)
            a.update_order(oa, OrderState.FILLED, shares=1.0)
        assert oa.state == OrderState.FILLED and a.order("k1").state == OrderState.FILLED
    finally:
        a.close()
        b.close()


class _FailingCommit:
    """The connection, except that COMMIT fails (disk full, I/O error)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT":
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)


def test_memory_changes_only_after_commit(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    o = order()
    with j.transaction():
        j.insert_order(o)
    real = j._db
    j._db = _FailingCommit(real)  # type: ignore[assignment]
    with pytest.raises(sqlite3.OperationalError), j.transaction():
        j.update_order(o, OrderState.SENDING, order_id="0xabc")
    j._db = real
    assert o.state == OrderState.NEW and o.order_id == ""      # memory equals the journal
    assert j.order("k1").state == OrderState.NEW
    with j.transaction():                                      # and the next BEGIN works
        j.update_order(o, OrderState.SENDING, order_id="0xabc")
    assert o.state == OrderState.SENDING
    with pytest.raises(RuntimeError), j.transaction():         # a body error: same
        j.update_order(o, OrderState.UNKNOWN)
        raise RuntimeError("boom")
    assert o.state == OrderState.SENDING
    j.close()


def test_daily_pnl_query_uses_an_index(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite")
    seen: list[str] = []
    j.db.set_trace_callback(seen.append)
    j.realized_since(0.0)                       # the statement the risk check runs per intent
    j.db.set_trace_callback(None)
    (sql,) = seen
    plan = " ".join(str(tuple(r)) for r in j.db.execute("EXPLAIN QUERY PLAN " + sql))
    assert "settlements_ts" in plan, plan
    j.close()
