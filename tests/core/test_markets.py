from core.markets import N_SLOTS, SLOTS, market_slug, parse_slug


def test_sixteen_slots_in_fixed_order() -> None:
    assert N_SLOTS == 16 == len(SLOTS)
    assert [s.index for s in SLOTS] == list(range(16))
    assert SLOTS[0].label == "btc-5m" and SLOTS[1].label == "btc-15m"


def test_slug_round_trip_and_rejects() -> None:
    slug = market_slug("btc", 900, 1777467600)
    assert slug == "btc-updown-15m-1777467600"
    assert parse_slug(slug) == ("btc", 900, 1777467600)
    assert parse_slug("btc-updown-15m-1777467601") is None   # not aligned
    assert parse_slug("will-it-rain") is None
    assert SLOTS[1].window_start(1777467600 + 899.9) == 1777467600
