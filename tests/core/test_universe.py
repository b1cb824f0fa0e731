"""The universe config: parsing, validation errors that name the file and the key, the
example file, and the child-process resolution through $NOBLINK_UNIVERSE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.universe import DEFAULT, ENV, UniverseError, load_file, parse, write_resolved

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_file_is_the_default() -> None:
    assert load_file(ROOT / "noblink.toml") == DEFAULT
    assert [a.slug for a in DEFAULT.assets] == ["btc", "eth", "sol", "xrp", "doge", "bnb",
                                                "hype"]
    hype = DEFAULT.assets[-1]
    assert hype.binance_symbol is None and hype.candle_symbol == "HYPE/USD"


def test_a_resolved_file_round_trips(tmp_path: Path) -> None:
    u = parse({"assets": [{"slug": "eth", "windows": ["15m"], "candles": "binance:ETHUSDT"},
                          {"slug": "hype", "candles": "reference"}]}, "x")
    write_resolved(tmp_path / "universe.json", u)
    assert (tmp_path / "universe.json").stat().st_mode & 0o777 == 0o600
    back = load_file(tmp_path / "universe.json")
    assert back == u and back.assets[0].windows == (900,)
    assert back.assets[1].windows == (300, 900) and back.assets[1].chainlink == "hype/usd"
    assert back.fingerprint == u.fingerprint != DEFAULT.fingerprint


@pytest.mark.parametrize(("text", "where"), [
    ("[[assets]]\nslug = 'btc'\ncandles = 'binance:BTCUSDT'\ncolour = 1\n", "colour"),
    ("[[assets]]\nslug = 'btc'\ncandles = 'kraken:XBT'\n", "candles"),
    ("[[assets]]\nslug = 'btc'\n", "candles"),
    ("[[assets]]\nslug = 'BTC!'\ncandles = 'reference'\n", "slug"),
    ("[[assets]]\nslug = 'btc'\nwindows = ['1h']\ncandles = 'reference'\n", "windows"),
    ("[[assets]]\nslug = 'btc'\nchainlink = 'BTC'\ncandles = 'reference'\n", "chainlink"),
    ("speed = 2\n[[assets]]\nslug = 'btc'\ncandles = 'reference'\n", "speed"),
    ("[[assets]]\nslug = 'btc'\ncandles = 'reference'\n"
     "[[assets]]\nslug = 'btc'\ncandles = 'reference'\n", "twice"),
    ("assets = []\n", "non-empty"),
    ("[[assets]\n", "TOML"),
])
def test_bad_files_name_the_file_and_the_key(tmp_path: Path, text: str, where: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UniverseError) as e:
        load_file(f)
    assert str(f) in str(e.value) and where in str(e.value)


def test_select_keeps_the_universe_order() -> None:
    assert [a.slug for a in DEFAULT.select(["hype", "btc"]).assets] == ["btc", "hype"]
    with pytest.raises(UniverseError, match="ada"):
        DEFAULT.select(["ada"])


def test_a_process_sizes_its_layouts_from_the_env_universe(tmp_path: Path) -> None:
    f = tmp_path / "universe.json"
    write_resolved(f, parse({"assets": [{"slug": "sol", "candles": "binance:SOLUSDT"},
                                        {"slug": "hype", "windows": ["5m"],
                                         "candles": "reference"}]}, "x"))
    code = ("from core.markets import N_SLOTS, SLOTS, SYMBOLS, CANDLE_SYMBOLS\n"
            "from state.layout import TICK_DT\n"
            "print(N_SLOTS, [s.label for s in SLOTS], SYMBOLS, CANDLE_SYMBOLS,"
            " TICK_DT['markets'].shape)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, ENV: str(f)}, timeout=60, check=True)
    assert out.stdout.split("\n")[0] == (
        "3 ['sol-5m', 'sol-15m', 'hype-5m'] ('SOLUSDT',) ('SOLUSDT', 'HYPE/USD') (3,)")
