"""The order log keeps what tells orders apart, with bodies bounded in size."""

from __future__ import annotations

import orjson

from sim.orderlog import MAX_BODY_BYTES, MAX_SUMMARY_BYTES
from tests.sim.inproc import Trader


async def test_small_bodies_are_kept_whole_and_big_ones_reduced(inproc):
    t = await Trader.make(inproc)
    up = inproc.market().up_token
    single = t.limit_buy(up, 2, 5)
    batch = [t.limit_buy(up, 2, 5) for _ in range(15)]
    huge_sig = "0x" + "ab" * 50_000
    junk = {"order": {**t.limit_buy(up, 2, 5)["order"], "signature": huge_sig},
            "owner": t.creds["apiKey"], "pad": "y" * 50_000}
    flood = [t.limit_buy(up, 2, 5) for _ in range(1000)]
    assert (await t.call("POST", "/order", single))[0] == 200
    assert (await t.call("POST", "/orders", batch))[0] == 200
    assert (await inproc.call("clob", "POST", "/order", junk))[0] == 401   # logged before auth
    assert (await inproc.call("clob", "POST", "/order", b"z" * 200_000))[0] == 401
    assert (await inproc.call("clob", "POST", "/orders", flood))[0] == 401
    log = inproc.ctx.order_log.entries()
    assert [(e["path"], e["status"]) for e in log] == [
        ("/order", 200), ("/orders", 200), ("/order", 401), ("/order", 401), ("/orders", 401)]
    assert log[0]["body"] == single
    # A real batch is over the limit, but every field of a signed order is kept.
    assert len(orjson.dumps(batch)) > MAX_BODY_BYTES and log[1]["body"] == batch
    reduced = log[2]["body"]
    assert reduced["order"]["salt"] == junk["order"]["salt"] and "pad" not in reduced
    assert reduced["order"]["signature"].startswith("sha256:")
    assert len(orjson.dumps(reduced)) < MAX_BODY_BYTES
    assert isinstance(log[3]["body"], str) and len(log[3]["body"]) < MAX_BODY_BYTES + 50
    items = log[4]["body"]
    assert items[:-1] == flood[: len(items) - 1] and items[-1].startswith("...(+")
    assert len(orjson.dumps(items)) <= MAX_SUMMARY_BYTES + 100
