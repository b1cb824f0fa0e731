"""The market scanner against scripted Gamma and CLOB servers."""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator

import orjson
import pytest

from core.clock import ManualClock
from core.errors import InputError
from core.markets import N_SLOTS, SLOTS, parse_slug
from feed_worker.config import FeedConfig
from feed_worker.http import Response
from feed_worker.scanner import Scanner, parse_book, parse_gamma_market
from feed_worker.stats import FeedStats
from state.layout import MARKET_DT, TICK_DT, SeriesStatus, SlotStatus
from state.ring import RingReader, RingWriter
from state.table import TableReader, TableWriter

from .fakes import FakeHttp

T0 = 1_699_999_200          # a 15-minute boundary (seconds)
BID = [{"price": "0.40", "size": "10"}, {"price": "0.45", "size": "20"}]    # best last
ASK = [{"price": "0.60", "size": "5"}, {"price": "0.55", "size": "7"}]


def token(slug: str, outcome: str) -> str:
    return str(abs(hash((slug, outcome))) % 10**18).rjust(20, "7") + ("1" if outcome == "Up"
                                                                       else "2")


class Polymarket:
    """Gamma /markets/slug and CLOB /book(s). Markets exist up to ``listed_until`` (start)."""

    def __init__(self, clock: ManualClock, *, books_post: bool = True,
                 strict_batch: bool = False) -> None:
        self.clock = clock
        self.listed_until = 10**12
        self.gamma_fail: set[str] = set()      # assets whose Gamma lookups answer 500
        self.no_book: set[str] = set()         # tokens without a book
        self.books_post = books_post
        self.strict_batch = strict_batch       # like the CLOB: one missing book fails all
        self.throttle: dict[str, list[Response]] = {"gamma": [], "clob": []}  # answered first
        self.bad_price: dict[str, str] = {}    # token -> the price its best bid shows

    def __call__(self, method: str, url: str, arg) -> Response:
        host = "gamma" if "/markets/slug/" in url else "clob"
        if self.throttle[host]:
            return self.throttle[host].pop(0)
        if "/markets/slug/" in url:
            slug = url.rsplit("/", 1)[1]
            asset, window_s, start = parse_slug(slug)
            if asset in self.gamma_fail:
                return Response(500, b"boom")
            if start > self.listed_until:
                return Response(404, b'{"error":"not found"}')
            # Down first for eth: the scanner must find Up by name, not assume it comes first
            outs = ["Down", "Up"] if asset == "eth" else ["Up", "Down"]
            end = start + window_s
            from datetime import UTC, datetime
            m = {"slug": slug, "conditionId": f"0x{abs(hash(slug)):x}",
                 "outcomes": orjson.dumps(outs).decode(),
                 "clobTokenIds": orjson.dumps([token(slug, o) for o in outs]).decode(),
                 "endDate": datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z"),
                 "acceptingOrders": True, "closed": False}
            return Response(200, orjson.dumps(m))
        if url.endswith("/books"):
            if not self.books_post:
                return Response(404, b"404 page not found")
            if self.strict_batch and any(b["token_id"] in self.no_book for b in arg):
                return Response(404, b'{"error":"No orderbook exists for the requested token id"}')
            return Response(200, orjson.dumps([self.book(b["token_id"]) for b in arg
                                               if b["token_id"] not in self.no_book]))
        if url.endswith("/book"):
            t = arg["token_id"]
            if t in self.no_book:
                return Response(404, b'{"error":"No orderbook exists for the requested token id"}')
            return Response(200, orjson.dumps(self.book(t)))
        return Response(404, b"")

    def book(self, t: str) -> dict:
        bids = BID
        if t in self.bad_price:
            bids = [*BID[:-1], {"price": self.bad_price[t], "size": "20"}]
        return {"market": "0x1", "asset_id": t, "bids": bids, "asks": ASK, "tick_size": "0.01"}


@pytest.fixture
def segs(run_paths) -> Iterator[tuple[TableWriter, RingWriter]]:
    markets = TableWriter(run_paths.seg("markets"), MARKET_DT, len(SLOTS), name="markets")
    ticks = RingWriter(run_paths.seg("ticks"), TICK_DT, 1024, name="ticks")
    yield markets, ticks
    for s in (markets, ticks):
        s.unlink()
        s.close()


def make(segs, control, clock, pm, first_tick=0) -> tuple[Scanner, FakeHttp, FeedStats]:
    http = FakeHttp(pm)
    stats = FeedStats()
    sc = Scanner(http, "http://gamma", "http://clob", segs[0], segs[1], control, clock, stats,
                 FeedConfig(), first_tick=first_tick)
    return sc, http, stats


def rows(segs) -> list:
    r = TableReader(segs[0].path, MARKET_DT)
    try:
        return list(r.read_all())
    finally:
        r.close()


async def test_fills_all_16_slots_with_market_and_best_levels(segs, control):
    clock = ManualClock(start=T0 + 7)
    pm = Polymarket(clock)
    sc, http, _stats = make(segs, control, clock, pm, first_tick=41)
    reader = RingReader(segs[1].path, TICK_DT, start="oldest")
    try:
        assert await sc.scan_once() == N_SLOTS
        recs = reader.poll().records
    finally:
        reader.close()
    for s, row in zip(SLOTS, rows(segs), strict=True):
        w = T0 // s.window_s * s.window_s
        slug = s.slug(w)
        assert SlotStatus(int(row["status"])) is SlotStatus.OK, s.label
        assert row["slug"].decode() == slug and int(row["window_start"]) == w
        assert int(row["end_ts"]) == w + s.window_s and int(row["accepting"]) == 1
        assert row["up_token"].decode() == token(slug, "Up")
        assert row["down_token"].decode() == token(slug, "Down")
        assert (float(row["up_bid"]), float(row["up_bid_size"])) == (0.45, 20.0)
        assert (float(row["up_ask"]), float(row["up_ask_size"])) == (0.55, 7.0)
        assert (float(row["down_bid"]), float(row["down_ask"])) == (0.45, 0.55)
        assert SlotStatus(int(row["next_status"])) is SlotStatus.OK
        assert int(row["tick"]) == 42
    assert [int(r["tick"]) for r in recs] == [42] and int(recs[0]["slots_ok"]) == N_SLOTS
    assert int(recs[0]["tick_time_ms"]) == (T0 + 7) * 1000
    assert control.tick()[:2] == (42, (T0 + 7) * 1000)
    books = [c for c in http.calls if c[1].endswith("/books")]
    assert len(books) == 1 and len(books[0][2]) == 2 * N_SLOTS   # one batch for every token


async def test_rolls_over_to_the_next_window(segs, control):
    clock = ManualClock(start=T0 + 290)
    sc, _http, _stats = make(segs, control, clock, Polymarket(clock))
    await sc.scan_once()
    before = rows(segs)
    clock.advance(15)                                          # the 5m windows roll over
    await sc.scan_once()
    after = rows(segs)
    for s, b, a in zip(SLOTS, before, after, strict=True):
        if s.window_s == 300:
            assert int(a["window_start"]) == int(b["window_start"]) + 300
            assert a["up_token"] != b["up_token"]
        else:
            assert int(a["window_start"]) == int(b["window_start"])
        assert SlotStatus(int(a["status"])) is SlotStatus.OK
    assert control.tick()[0] == 2


async def test_unlisted_markets_are_reported_not_fatal(segs, control):
    clock = ManualClock(start=T0 + 310)      # 5m windows started at T0+300, 15m at T0
    pm = Polymarket(clock)
    pm.listed_until = T0 + 300               # next windows do not exist yet
    sc, _http, stats = make(segs, control, clock, pm)
    assert await sc.scan_once() == N_SLOTS
    assert all(SlotStatus(int(r["next_status"])) is SlotStatus.NOT_LISTED for r in rows(segs))
    # only the next window is missing: the series are listed
    assert {SeriesStatus(int(r["series"])) for r in rows(segs)} == {SeriesStatus.LISTED}
    pm.listed_until = T0 + 299               # now not even the current 5m ones
    clock.advance(5)
    sc._cache.clear()
    ok = await sc.scan_once()
    st = [SlotStatus(int(r["status"])) for r in rows(segs)]
    assert ok == N_SLOTS // 2 and st.count(SlotStatus.NOT_LISTED) == N_SLOTS // 2
    assert stats.scan_errors == 0
    # neither the current nor the next 5m market exists: those series are not listed
    series = {s.label: SeriesStatus(int(r["series"])) for s, r in zip(SLOTS, rows(segs),
                                                                       strict=True)}
    assert {v for k, v in series.items() if k.endswith("-5m")} == {SeriesStatus.NOT_LISTED}
    assert {v for k, v in series.items() if k.endswith("-15m")} == {SeriesStatus.LISTED}


async def test_one_failing_slot_does_not_stop_the_others(segs, control):
    clock = ManualClock(start=T0 + 10)
    pm = Polymarket(clock)
    sc, _http, stats = make(segs, control, clock, pm)
    await sc.scan_once()
    good = rows(segs)
    pm.gamma_fail = {"sol"}
    pm.no_book = {token(SLOTS[0].slug(T0), "Down")}          # btc 5m: no book for Down
    clock.advance(5)
    sc._cache.clear()                                         # force fresh Gamma reads
    assert await sc.scan_once() == N_SLOTS - 3
    after = rows(segs)
    for s, g, a in zip(SLOTS, good, after, strict=True):
        st = SlotStatus(int(a["status"]))
        if s.asset == "sol":
            assert st is SlotStatus.ERROR
            assert a["up_token"] == g["up_token"] and float(a["up_bid"]) == 0.45  # kept
        elif s.index == 0:
            assert st is SlotStatus.NO_BOOK and float(a["up_bid"]) == 0.45
        else:
            assert st is SlotStatus.OK
    assert stats.scan_errors >= 2


async def test_falls_back_to_one_book_request_per_token(segs, control):
    clock = ManualClock(start=T0 + 10)
    sc, http, _stats = make(segs, control, clock, Polymarket(clock, books_post=False))
    assert await sc.scan_once() == N_SLOTS
    assert await sc.scan_once() == N_SLOTS
    posts = [c for c in http.calls if c[0] == "POST"]
    gets = [c for c in http.calls if c[1].endswith("/book")]
    assert len(posts) == 1 and len(gets) == 4 * N_SLOTS


async def test_a_failed_refresh_of_a_known_market_keeps_it(segs, control):
    clock = ManualClock(start=T0 + 10)
    pm = Polymarket(clock)
    sc, _http, stats = make(segs, control, clock, pm)
    assert await sc.scan_once() == N_SLOTS
    pm.gamma_fail = {"btc"}
    clock.advance(10)                       # past the refresh interval: Gamma is re-read
    assert await sc.scan_once() == N_SLOTS       # tokens and end are immutable: still OK
    assert stats.scan_errors >= 2           # but the failed refreshes are counted


async def test_a_batch_refused_for_one_fresh_market_falls_back_for_that_tick(segs, control):
    clock = ManualClock(start=T0 + 10)
    pm = Polymarket(clock, strict_batch=True)
    pm.no_book = {token(SLOTS[3].slug(T0), "Up")}
    sc, http, stats = make(segs, control, clock, pm)
    assert await sc.scan_once() == N_SLOTS - 1
    assert SlotStatus(int(rows(segs)[3]["status"])) is SlotStatus.NO_BOOK
    pm.no_book = set()
    http.calls.clear()
    assert await sc.scan_once() == N_SLOTS
    assert [c[0] for c in http.calls if "/book" in c[1]] == ["POST"]     # batch again
    assert stats.scan_errors == 0


async def test_ticks_follow_the_clock_grid(segs, control):
    clock = ManualClock(start=T0 + 1)
    sc, _http, _stats = make(segs, control, clock, Polymarket(clock))
    stop = asyncio.Event()
    task = asyncio.create_task(sc.run(stop))
    times = []
    for _ in range(400):
        for _ in range(10):
            await asyncio.sleep(0)
        if control.tick()[0] and (not times or times[-1] != control.tick()[1]):
            times.append(control.tick()[1])
        if len(times) >= 4:
            break
        clock.advance(0.25)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert times[0] == (T0 + 1) * 1000                        # first scan at once
    assert [t % 5000 for t in times[1:]] == [0, 0, 0]          # then on the 5 s grid
    assert [b - a for a, b in itertools.pairwise(times[1:])] == [5000, 5000]


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf", "1e400", "1.5", "-0.1"])
@pytest.mark.parametrize("books_post", [True, False])
async def test_one_bad_book_spoils_its_token_only(segs, control, bad, books_post):
    clock = ManualClock(start=T0 + 10)
    pm = Polymarket(clock, books_post=books_post)
    pm.bad_price = {token(SLOTS[2].slug(T0), "Up"): bad}
    sc, _http, stats = make(segs, control, clock, pm)
    assert await sc.scan_once() == N_SLOTS - 1                          # the tick went through
    st = [SlotStatus(int(r["status"])) for r in rows(segs)]
    assert st[2] is SlotStatus.ERROR and st.count(SlotStatus.OK) == N_SLOTS - 1
    assert stats.parse_errors == 1 and control.tick()[0] == 1


def test_non_finite_levels_are_refused():
    for p in ("nan", "inf", "-inf"):
        with pytest.raises(InputError):
            parse_book({"bids": [{"price": p, "size": "1"}], "asks": []})
        with pytest.raises(InputError):
            parse_book({"bids": [], "asks": [{"price": "0.5", "size": p}]})


@pytest.mark.parametrize("host", ["gamma", "clob"])
async def test_a_429_closes_that_host_for_retry_after(segs, control, host):
    clock = ManualClock(start=T0 + 10)
    pm = Polymarket(clock)
    sc, http, stats = make(segs, control, clock, pm)
    assert await sc.scan_once() == N_SLOTS
    good = rows(segs)
    pm.throttle[host] = [Response(429, b'{"error":"Too Many Requests"}', {"Retry-After": "3"})]
    sc._cache.clear()                                          # force Gamma reads
    clock.advance(5)
    http.calls.clear()
    assert await sc.scan_once() < N_SLOTS
    first = len(http.calls)
    for _ in range(2):                                         # 2 s later: still closed
        clock.advance(1)
        await sc.scan_once()
    to_host = [c for c in http.calls[first:] if ("/markets/" in c[1]) == (host == "gamma")]
    assert to_host == [] and stats.rate_limited == 1
    after = rows(segs)
    for g, a in zip(good, after, strict=True):                 # last good data kept
        assert a["up_token"] == g["up_token"] and float(a["up_bid"]) == 0.45
    clock.advance(1.5)                                         # Retry-After is over
    assert await sc.scan_once() == N_SLOTS


async def test_a_429_without_retry_after_uses_the_default(segs, control):
    clock = ManualClock(start=T0 + 10)
    pm = Polymarket(clock)
    sc, _http, _stats = make(segs, control, clock, pm)
    pm.throttle["clob"] = [Response(429, b"slow down", {"Retry-After": "Wed, 21 Oct 2015"})]
    await sc.scan_once()
    assert sc.held("clob")
    clock.advance(4.9)
    assert sc.held("clob")
    clock.advance(0.2)                                         # 5 s default
    assert not sc.held("clob") and await sc.scan_once() == N_SLOTS


def test_gamma_parsing_pairs_outcomes_by_name():
    m = {"slug": "btc-updown-5m-1699999200", "conditionId": "0xabc",
         "outcomes": '["Down", "Up"]', "clobTokenIds": '["222", "111"]',
         "endDate": "2023-11-14T22:05:00Z", "acceptingOrders": False}
    info = parse_gamma_market(orjson.dumps(m), m["slug"], 0)
    assert (info.up_token, info.down_token) == ("111", "222")
    assert info.end_ts == 1699999500 and not info.accepting


def test_best_levels_are_the_last_entries_and_order_does_not_matter():
    q = parse_book({"bids": BID, "asks": ASK})
    assert (q.bid, q.bid_size, q.ask, q.ask_size) == (0.45, 20.0, 0.55, 7.0)
    r = parse_book({"bids": BID[::-1], "asks": ASK[::-1]})
    assert r == q
    empty = parse_book({"bids": [], "asks": []})
    assert math.isnan(empty.bid) and empty.bid_size == 0.0
    with pytest.raises(InputError):
        parse_book({"bids": [{"price": "x", "size": "1"}], "asks": []})
