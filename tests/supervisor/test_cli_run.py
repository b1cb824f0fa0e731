"""`noblink run`'s arguments: the secret file reaches the position worker only."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.cli import run_config, run_parser


def test_a_secret_file_is_handed_to_the_position_worker_only(tmp_path: Path) -> None:
    secret = tmp_path / "live.json"
    cfg = run_config(run_parser().parse_args(["--run-dir", str(tmp_path), "--mode", "paper",
                                              "--secret-file", str(secret)]))
    assert cfg.extra == {"position": ["--secret-file", str(secret.resolve())]}
    assert run_config(run_parser().parse_args(["--run-dir", str(tmp_path)])).extra == {}


def test_restart_intensity_and_memory_limit_flags(tmp_path: Path) -> None:
    cfg = run_config(run_parser().parse_args(["--run-dir", str(tmp_path), "--restart-intensity",
                                              "50/60", "--strategy-rss-limit", "512"]))
    assert (cfg.restart.intensity, cfg.restart.period) == (50, 60.0)
    assert cfg.strategy_rss_limit_mb == 512
    default = run_config(run_parser().parse_args(["--run-dir", str(tmp_path)]))
    assert (default.restart.intensity, default.restart.period) == (5, 60.0)
    for bad in ("5", "x/60", "0/60", "5/0", "5/-1"):
        with pytest.raises(SystemExit):
            run_parser().parse_args(["--restart-intensity", bad])
