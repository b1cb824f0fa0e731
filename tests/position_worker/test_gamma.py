from __future__ import annotations

import pytest

from core.errors import InputError
from position_worker.gamma import parse_resolution


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
