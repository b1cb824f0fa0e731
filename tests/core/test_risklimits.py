"""Risk limits: [risk] in noblink.toml and the flags of `noblink run` (a flag wins), checked
by one function that also checks the position worker's own flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.risklimits import RiskLimitsError, load_file, parse, resolve, worker_args
from core.universe import load_file as load_universe
from position_worker.main import parse_args as position_args
from supervisor.cli import run_config, run_parser

ROOT = Path(__file__).resolve().parents[2]
ASSET = "[[assets]]\nslug = 'btc'\ncandles = 'binance:BTCUSDT'\n"


def test_the_shipped_file_sets_none_and_a_risk_table_is_not_universe(tmp_path: Path) -> None:
    assert load_file(ROOT / "noblink.toml") == {}
    f = tmp_path / "noblink.toml"
    f.write_text(ASSET + "[risk]\nmax_open = 4\ndaily_loss_limit = 20\n")
    assert load_file(f) == {"max_open": 4, "daily_loss_limit": 20.0}
    assert isinstance(load_file(f)["daily_loss_limit"], float)
    # the universe reads the same file and ignores [risk]: limits are not a layout
    assert load_universe(f).fingerprint == load_universe(
        _write(tmp_path / "plain.toml", ASSET)).fingerprint


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


@pytest.mark.parametrize("table, words", [
    ("max_open = 2.5", "max_open = 2.5: expected a whole number > 0"),
    ("max_open = 0", "max_open = 0: expected a whole number > 0"),
    ("max_open = true", "max_open = True"),
    ("daily_loss_limit = -5", "daily_loss_limit = -5.0: expected a number > 0"),
    ("daily_loss_limit = nan", "daily_loss_limit = nan"),
    ("max_exposure = inf", "max_exposure = inf"),
    ("max_book_age = '20'", "max_book_age = '20'"),
    ("stake = 5", "unknown key(s) stake"),
])
def test_bad_limits_name_the_file_and_the_key(tmp_path: Path, table: str, words: str) -> None:
    f = _write(tmp_path / "bad.toml", ASSET + "[risk]\n" + table + "\n")
    with pytest.raises(RiskLimitsError) as e:
        load_file(f)
    assert str(f) in str(e.value) and words in str(e.value)
    with pytest.raises(RiskLimitsError, match=r"\[risk\] must be a table"):
        parse({"risk": 5}, "x.toml")


def test_a_flag_wins_over_the_file_and_reaches_the_position_worker(tmp_path: Path) -> None:
    f = _write(tmp_path / "noblink.toml",
               ASSET + "[risk]\nmax_open = 4\ndaily_loss_limit = 20.0\n")
    args = run_parser().parse_args(["--run-dir", str(tmp_path), "--config", str(f),
                                    "--daily-loss-limit", "7.5", "--max-book-age", "30"])
    limits = resolve(load_file(f), args)
    assert limits == {"max_open": 4, "daily_loss_limit": 7.5, "max_book_age": 30.0}
    cfg = run_config(args, limits)
    flags = cfg.extra["position"]
    # ... as the worker's own flags, which its own parser reads back to the same values
    got = position_args(["--run-dir", str(tmp_path), *flags])
    assert (got.max_open, got.daily_loss_limit, got.max_book_age) == (4, 7.5, 30.0)
    assert got.max_exposure == position_args(["--run-dir", "x"]).max_exposure  # its default
    # flags without a file, and nothing at all (the worker's defaults, no flags passed)
    assert run_config(run_parser().parse_args(["--max-open", "3"])).extra == {
        "position": ["--max-open", "3"]}
    assert worker_args({}) == [] and run_config(run_parser().parse_args([])).extra == {}


@pytest.mark.parametrize("argv", [["--max-open", "0"], ["--max-open", "2.5"],
                                  ["--daily-loss-limit", "-1"], ["--max-exposure", "nan"],
                                  ["--max-book-age", "soon"]])
def test_bad_flags_are_refused_by_both_parsers(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        run_parser().parse_args(argv)
    with pytest.raises(SystemExit):
        position_args(["--run-dir", "x", *argv])
    assert argv[0] in capsys.readouterr().err
