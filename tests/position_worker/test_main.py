"""CLI guard rails: live trading needs both --mode live and --live."""

from __future__ import annotations

import os
import subprocess
import sys

from state.run import RunPaths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "position_worker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_live_mode_needs_the_live_flag(run_paths: RunPaths, control: object) -> None:
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "live"],
            env={"NOBLINK_PK": "0x" + "cd" * 32})
    assert p.returncode == 3
    assert "--live" in p.stderr
    assert "cd" * 32 not in p.stderr


def test_sim_mode_needs_a_sim(run_paths: RunPaths, control: object) -> None:
    p = run(["--run-dir", str(run_paths.run_dir)])
    assert p.returncode == 3 and "sim.json" in p.stderr


def test_live_without_credentials_is_refused(run_paths: RunPaths, control: object) -> None:
    env = {k: "" for k in ("NOBLINK_PK", "NOBLINK_CLOB_API_KEY")}
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "live", "--live"], env=env)
    assert p.returncode == 3 and "private key" in p.stderr
