"""The CLOB client's per-token caches stay bounded however many windows' tokens pass.

py-clob-client-v2 caches each token's market parameters in dicts it never prunes; every
window has new tokens, so in a 24/7 worker they grew with every order (a soak's position
worker kept ~1.2 KiB per order in them). ``_Client`` bounds them; a dropped entry is fetched
again when its token is used, with the same value.
"""

from __future__ import annotations

from typing import Any

import pytest

from position_worker.credentials import Credentials
from position_worker.executors.cache import TOKEN_CACHE_SIZE, BoundedCache
from position_worker.executors.clob import POLYGON, TOKEN_CACHES, _Client


class FakeVenue:
    """Answers the client's market-info GETs: condition ``c<i>`` has tokens ``<i>0``, ``<i>1``,
    tick size 0.01 (odd i) or 0.001 (even i), neg risk when i % 3 == 0; fee rate 0."""

    def __init__(self) -> None:
        self.gets: list[str] = []

    def get(self, url: str, headers: Any = None, params: Any = None) -> dict:
        self.gets.append(url)
        if "/clob-markets/" in url:
            i = int(url.rsplit("/c", 1)[1])
            return {"t": [{"t": f"{i}0"}, {"t": f"{i}1"}], "mts": tick(i), "nr": i % 3 == 0,
                    "fd": {"r": 0.07, "e": 1.0}}
        if url.endswith("/fee-rate"):
            return {"base_fee": 0}
        if url.endswith("/tick-size"):
            return {"minimum_tick_size": tick(int(params["token_id"][:-1]))}
        if url.endswith("/neg-risk"):
            return {"neg_risk": int(params["token_id"][:-1]) % 3 == 0}
        if "/markets-by-token/" in url:
            token = url.rsplit("/", 1)[1]
            return {"condition_id": f"c{token[:-1]}"}
        raise AssertionError(f"unexpected GET {url}")


def tick(i: int) -> str:
    return "0.01" if i % 2 else "0.001"


@pytest.fixture
def client() -> tuple[_Client, FakeVenue]:
    c = _Client("http://127.0.0.1:9", POLYGON,
                key=Credentials.sim_throwaway("cache-test").private_key)
    venue = FakeVenue()
    c._get = venue.get  # type: ignore[method-assign]
    return c, venue


def test_every_token_cache_is_bounded(client: tuple[_Client, FakeVenue]) -> None:
    c, venue = client
    windows = 3 * TOKEN_CACHE_SIZE
    for i in range(windows):
        c.get_clob_market_info(f"c{i}")
        c.get_fee_rate_bps(f"{i}0")
    sizes = {name: len(getattr(c, f"_ClobClient{name}")) for name in TOKEN_CACHES}
    assert max(sizes.values()) <= TOKEN_CACHE_SIZE, sizes
    assert c.token_cache_sizes() == sizes
    # the newest window's tokens are all there: no GET to read them
    newest = windows - 1
    gets = len(venue.gets)
    assert c.get_tick_size(f"{newest}0") == tick(newest)
    assert c.get_neg_risk(f"{newest}1") == (newest % 3 == 0)
    assert c.get_fee_exponent(f"{newest}0") == 1.0
    assert len(venue.gets) == gets


def test_a_forgotten_token_is_fetched_again(client: tuple[_Client, FakeVenue]) -> None:
    c, venue = client
    for i in range(2 * TOKEN_CACHE_SIZE):
        c.get_clob_market_info(f"c{i}")
    venue.gets.clear()
    assert c.get_tick_size("10") == tick(1)            # window 1: long forgotten
    assert c.get_neg_risk("31") is True                # window 3 (3 % 3 == 0)
    assert c.get_fee_exponent("50") == 1.0
    assert venue.gets, "forgotten entries must come from the venue again"
    assert max(c.token_cache_sizes().values()) <= TOKEN_CACHE_SIZE


def test_bounded_cache_forgets_the_oldest_first() -> None:
    cache = BoundedCache(3)
    for k in "abcd":
        cache[k] = k.upper()
    assert list(cache) == ["b", "c", "d"]
    cache["b"] = "B2"                                   # rewriting a key evicts nothing
    assert dict(cache) == {"b": "B2", "c": "C", "d": "D"}
    with pytest.raises(ValueError):
        BoundedCache(0)
