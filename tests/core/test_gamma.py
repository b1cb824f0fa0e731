"""core.gamma: the one Gamma market parser (resolution, tokens, tick and minimum size)."""

from __future__ import annotations

import orjson
import pytest

from core.errors import InputError
from core.gamma import parse_market


def parse_resolution(doc: dict):
    return parse_market(doc).resolution()


def market(**kw: object) -> dict:
    doc = {"slug": "btc-updown-5m-300", "closed": True, "outcomes": '["Up", "Down"]',
           "outcomePrices": '["1", "0"]'}
    doc.update(kw)
    return doc


def test_resolved_up_and_down_pair_by_position() -> None:
    r = parse_resolution(market())
    assert r is not None and r.payouts == {"up": 1, "down": 0} and r.winner == "up"
    r = parse_resolution(market(outcomes='["Down", "Up"]', outcomePrices='["1", "0"]'))
    assert r is not None and r.winner == "down" and r.payouts["up"] == 0


def test_not_resolved_yet() -> None:
    assert parse_resolution(market(closed=False)) is None
    assert parse_resolution(market(outcomePrices='["0.62", "0.38"]')) is None


def test_split_needs_a_resolved_status() -> None:
    assert parse_resolution(market(outcomePrices='["0.5", "0.5"]')) is None
    r = parse_resolution(market(outcomePrices='["0.5", "0.5"]', umaResolutionStatus="resolved"))
    assert r is not None and r.payouts == {"up": 0.5, "down": 0.5}


@pytest.mark.parametrize("bad", [
    {"outcomes": "not json"}, {"outcomePrices": '["1"]'}, {"outcomePrices": '["x", "y"]'},
    {"outcomes": "{}"},
])
def test_malformed_is_an_input_error(bad: dict) -> None:
    with pytest.raises(InputError):
        parse_resolution(market(**bad))


def test_closed_must_be_a_real_true() -> None:
    """``"false"`` (a string) is truthy: it must not count as closed."""
    for closed in ("false", "true", 1, "1", None):
        assert parse_resolution(market(closed=closed)) is None, closed


@pytest.mark.parametrize("prices", ['["1.5", "-0.5"]', '["NaN", "0.5"]', '["Infinity", "0"]',
                                    '["-0", "1.0000001"]'])
def test_prices_must_be_finite_and_within_0_1(prices: str) -> None:
    with pytest.raises(InputError):
        parse_resolution(market(outcomePrices=prices, umaResolutionStatus="resolved"))


def test_tokens_pair_by_name_and_booleans_must_be_real() -> None:
    m = parse_market(market(closed=False, outcomes='["Down", "Up"]', clobTokenIds='["2", "1"]',
                            acceptingOrders="false", endDate="2023-11-14T22:05:00Z"))
    assert m.up_down_tokens() == ("1", "2")
    assert not m.accepting and not m.closed and m.end_ts == 1699999500
    with pytest.raises(InputError, match="not Up/Down"):
        parse_market(market(outcomes='["Yes", "No"]', clobTokenIds='["1", "2"]')
                     ).up_down_tokens()


def test_tick_and_minimum_size_come_from_the_market() -> None:
    m = parse_market(market(orderPriceMinTickSize=0.001, orderMinSize="5"))
    assert (m.tick_size, m.min_size) == (0.001, 5.0)
    assert (parse_market(market()).tick_size, parse_market(market()).min_size) == (None, None)
    for bad in ({"orderPriceMinTickSize": "x"}, {"orderMinSize": -1}, {"orderMinSize": "nan"}):
        with pytest.raises(InputError):
            parse_market(market(**bad))


def test_a_one_element_list_is_the_market_and_junk_is_an_input_error() -> None:
    assert parse_market(orjson.dumps([market()])).slug == "btc-updown-5m-300"
    for junk in (b"not json", b"[]", b"[1, 2]", b"42", orjson.dumps([market(), market()])):
        with pytest.raises(InputError):
            parse_market(junk)
