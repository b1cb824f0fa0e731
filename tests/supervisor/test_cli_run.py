"""`noblink run`'s arguments: the secret file reaches the position worker only."""

from __future__ import annotations

from pathlib import Path

from supervisor.cli import run_config, run_parser


def test_a_secret_file_is_handed_to_the_position_worker_only(tmp_path: Path) -> None:
    secret = tmp_path / "live.json"
    cfg = run_config(run_parser().parse_args(["--run-dir", str(tmp_path), "--mode", "paper",
                                              "--secret-file", str(secret)]))
    assert cfg.extra == {"position": ["--secret-file", str(secret.resolve())]}
    assert run_config(run_parser().parse_args(["--run-dir", str(tmp_path)])).extra == {}
