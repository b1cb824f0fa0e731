"""A universe from --config runs end to end against the sim: the slot count follows it, the
strategy evaluates those slots, a configured series the sim does not list shows NOT_LISTED in
status.json, and the run dir then refuses another universe."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import orjson

from core.universe import load_file
from sim import testing as sim_testing
from tests.supervisor.botctl import Bot, ticks_of
from tests.waiting import wait_for

CONFIG = """
[[assets]]
slug = "sol"
windows = ["5m", "15m"]
candles = "binance:SOLUSDT"

[[assets]]
slug = "hype"
windows = ["5m"]
candles = "reference"
"""


def test_a_two_asset_universe_runs_and_an_unlisted_series_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "two.toml"
    cfg.write_text(CONFIG)
    bot = Bot(tmp_path, args=("--no-api", "--config", str(cfg)))
    try:
        bot.wait_active()
        st = bot.wait_ticks(2)
        assert [s["label"] for s in st["slots"]] == ["sol-5m", "sol-15m", "hype-5m"]
        assert {s["series"] for s in st["slots"]} == {"LISTED"}
        # the children were given the run's universe, recorded in run.json too
        uf = bot.run_dir / "universe.json"
        assert stat.S_IMODE(uf.stat().st_mode) == 0o600
        assert load_file(uf) == load_file(cfg)
        run = orjson.loads((bot.run_dir / "run.json").read_bytes())
        assert run["universe"] == load_file(cfg).to_dict()
        # Polymarket stops listing a configured series: status says so, not an empty slot
        admin = sim_testing.read_sim_info(bot.run_dir)["admin"]
        sim_testing.set_fault(admin, unlisted=["hype-5m"])

        def hype_unlisted() -> dict | None:
            s = {x["label"]: x for x in bot.status().get("slots", [])}
            h = s.get("hype-5m", {})
            return s if h.get("series") == "NOT_LISTED" and h.get("status") == "NOT_LISTED" \
                else None

        slots = wait_for(hype_unlisted, 60, "hype-5m NOT_LISTED in status.json", bot.tail)
        assert slots["sol-5m"]["series"] == slots["sol-15m"]["series"] == "LISTED"
        assert bot.stop() == 0
        assert len(ticks_of(bot.final_state())) >= 2       # the strategy evaluated ticks
    finally:
        bot.kill_everything()
    assert not bot.leftovers(), "segments left behind"
    # the same run dir with the default universe is refused, saying why
    out = subprocess.run([sys.executable, "-m", "supervisor.cli", "run", "--no-api",
                          "--run-dir", str(bot.run_dir)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "the universe changed (assets sol 5m/15m, hype 5m (reference candles)" in (
        out.stdout + out.stderr)


def test_an_eight_asset_universe_runs_end_to_end(tmp_path: Path) -> None:
    """More assets than the default: the default seven and link, 16 slots, every one
    listed, scanned and evaluated."""
    cfg = tmp_path / "eight.toml"
    default = (Path(__file__).resolve().parents[2] / "noblink.toml").read_text()
    cfg.write_text(default + '\n[[assets]]\nslug = "link"\ncandles = "binance:LINKUSDT"\n')
    bot = Bot(tmp_path, args=("--no-api", "--config", str(cfg)))
    try:
        bot.wait_active()
        st = bot.wait_ticks(2)
        labels = [s["label"] for s in st["slots"]]
        assert len(labels) == 16 and labels[-2:] == ["link-5m", "link-15m"]
        assert {s["series"] for s in st["slots"]} == {"LISTED"}
        assert bot.stop() == 0
        assert len(ticks_of(bot.final_state())) >= 2
    finally:
        bot.kill_everything()
    assert not bot.leftovers(), "segments left behind"
