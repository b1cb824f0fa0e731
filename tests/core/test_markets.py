from core.markets import (
    CANDLE_SYMBOLS,
    N_SLOTS,
    SLOTS,
    SYMBOLS,
    UNIVERSE,
    market_slug,
    parse_slug,
)
from core.universe import DEFAULT


def test_default_universe_slots_in_fixed_order() -> None:
    # the tests run with the built-in default: the 7 series that exist x 5m/15m
    assert UNIVERSE == DEFAULT
    assert N_SLOTS == 14 == len(SLOTS)
    assert [s.index for s in SLOTS] == list(range(N_SLOTS))
    assert SLOTS[0].label == "btc-5m" and SLOTS[1].label == "btc-15m"
    assert SLOTS[-1].label == "hype-15m" and SLOTS[-1].symbol == "HYPE/USD"
    assert SLOTS[-1].chainlink == "hype/usd" and SLOTS[-1].asset_index == 6
    # only Binance-sourced symbols are subscribed; candle rows exist for every asset
    assert "HYPE/USD" not in SYMBOLS and len(SYMBOLS) == 6
    assert CANDLE_SYMBOLS[:6] == SYMBOLS and len(CANDLE_SYMBOLS) == 7


def test_slug_round_trip_and_rejects() -> None:
    slug = market_slug("btc", 900, 1777467600)
    assert slug == "btc-updown-15m-1777467600"
    assert parse_slug(slug) == ("btc", 900, 1777467600)
    assert parse_slug("btc-updown-15m-1777467601") is None   # not aligned
    assert parse_slug("will-it-rain") is None
    assert SLOTS[1].window_start(1777467600 + 899.9) == 1777467600
