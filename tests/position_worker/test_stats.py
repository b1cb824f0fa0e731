"""Status counters: kept incrementally (no journal scans per intent), equal to a full recount."""

from __future__ import annotations

import dataclasses

import pytest

from core.markets import SLOTS
from position_worker.stats import compute, read_posstats
from state.layout import POSITION_STATS_DT, Outcome
from state.table import TableReader
from tests.position_worker.test_engine import T0, Rig, intent, rig  # noqa: F401


def same(a: object, b: object) -> None:
    da, db = a.as_dict(), b.as_dict()  # type: ignore[attr-defined]
    for k in da:
        if isinstance(da[k], float):
            assert da[k] == pytest.approx(db[k]), k
        else:
            assert da[k] == db[k], k


async def test_counters_equal_a_full_recount(rig: Rig) -> None:  # noqa: F811
    eng = rig.restart(daily_loss_limit=1e9, max_open=3)
    rig.venue.price = 0.5
    outcomes = ["up"] * 4 + ["down"] * 3 + ["up"]
    for i, w in enumerate(outcomes):
        ws = T0 + 300 * i
        rig.clock.advance(ws + 10 - rig.clock.now())
        rig.markets.set(0, ws)
        o = eng.decide(intent(ws=ws, seq=3 * i))
        eng.decide(intent(ws=ws, seq=3 * i + 1))                    # duplicate
        eng.decide(intent(ws=ws, seq=3 * i + 2, epoch=1))          # stale epoch
        await eng.execute(o)
        rig.clock.advance(300)
        rig.gamma.resolved[o.slug] = w
        assert await eng.settle_due() == 1
    ws = SLOTS[1].window_start(rig.clock.now())
    rig.markets.set(1, ws)
    await eng.execute(eng.decide(intent(slot=1, ws=ws, seq=99)))      # one still open
    rig.venue.mode = "reject"
    rig.markets.set(2, SLOTS[2].window_start(rig.clock.now()))
    await eng.execute(eng.decide(intent(slot=2, ws=SLOTS[2].window_start(rig.clock.now()),
                                        seq=100, outcome=Outcome.DOWN)))
    eng.mismatch("x", "test", "a mismatch")
    kept = eng.stats()
    same(kept, compute(rig.journal, list(eng.book.values())))
    assert kept.settled == 8 and kept.streak == 1 and kept.open_positions == 1
    assert kept.rejected == {"DUPLICATE": 8, "STALE_EPOCH": 8} and kept.mismatches == 1
    # and a restart seeds the same numbers
    same(rig.restart().stats(), kept)


async def test_publishing_never_scans_the_journal(rig: Rig) -> None:  # noqa: F811
    """Review finding: stats were recomputed from the whole journal on every intent (351 ms
    at a million intent rows). A decision that publishes must not count or sum anything."""
    rig.markets.set(0, T0)
    rig.engine.decide(intent())
    rig.engine._published_ns = -(1 << 62)          # due: the decision below publishes
    statements: list[str] = []
    rig.journal.db.set_trace_callback(statements.append)
    try:
        rig.engine.decide(intent(seq=1, epoch=1))  # a stale-epoch rejection
    finally:
        rig.journal.db.set_trace_callback(None)
    scans = [s for s in statements if "COUNT(" in s.upper() or "SUM(" in s.upper()]
    assert scans == []
    rig.journal.db.set_trace_callback(statements.append)
    statements.clear()
    try:
        rig.engine.publish(force=True)
        rig.engine.stats()
    finally:
        rig.journal.db.set_trace_callback(None)
    assert statements == []                         # publishing runs no SQL at all
    t = TableReader(rig.paths.seg("posstats"), POSITION_STATS_DT)
    try:
        assert read_posstats(t.read(0))["rejected"] == {"STALE_EPOCH": 1}   # it did publish
    finally:
        t.close()


async def test_publishing_is_coalesced(rig: Rig) -> None:  # noqa: F811
    rig.markets.set(0, T0)
    rig.engine.cfg = dataclasses.replace(rig.engine.cfg, publish_every_s=3600.0)  # no timing
    rig.engine.publish(force=True)
    writes = 0
    real = rig.store.publish

    def counted(s: object) -> None:
        nonlocal writes
        writes += 1
        real(s)  # type: ignore[arg-type]
    rig.store.publish = counted  # type: ignore[method-assign]
    for i in range(20):
        rig.engine.decide(intent(seq=i, epoch=1))                   # 20 rejections at once
    assert writes == 0
    rig.engine.flush_status()                                       # the heartbeat's job
    assert writes == 1
    rig.engine.flush_status()
    assert writes == 1                                              # nothing new: no write
