"""CLI guard rails: live trading needs both --mode live and --live; exit codes carry the
supervisor's restart policy (1 restart, 2 bad usage, 3 needs an operator: core/proc.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from core.proc import EXIT_CRASH, EXIT_OPERATOR, EXIT_USAGE
from state.run import RunPaths

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "position_worker", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_live_mode_needs_the_live_flag(run_paths: RunPaths, control: object) -> None:
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "live"],
            env={"NOBLINK_PK": "0x" + "cd" * 32})
    assert p.returncode == EXIT_OPERATOR
    assert "--live" in p.stderr
    assert "cd" * 32 not in p.stderr


def test_sim_mode_needs_a_sim(run_paths: RunPaths, control: object) -> None:
    p = run(["--run-dir", str(run_paths.run_dir)])
    # the sim may still be starting: a restart may find it, so this is not "do not restart"
    assert p.returncode == EXIT_CRASH and "sim.json" in p.stderr


def test_usage_errors_exit_2(run_paths: RunPaths, control: object, tmp_path) -> None:
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "paper", "--live"])
    assert p.returncode == EXIT_USAGE and "--live is only meaningful" in p.stderr
    p = run(["--run-dir", str(tmp_path / "nowhere")])
    assert p.returncode == EXIT_USAGE and "run.json" in p.stderr
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "nonsense"])
    assert p.returncode == EXIT_USAGE


def test_a_missing_control_block_is_worth_a_restart(run_paths: RunPaths) -> None:
    """The supervisor creates the control block before starting us; without it (the
    supervisor is restarting) exit 1, not "needs an operator"."""
    run_paths.write_run_json(mode="test")          # a run dir, but no control block
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "paper"])
    assert p.returncode == EXIT_CRASH, p.stderr


def test_live_without_credentials_is_refused(run_paths: RunPaths, control: object) -> None:
    env = {k: "" for k in ("NOBLINK_PK", "NOBLINK_CLOB_API_KEY")}
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "live", "--live"], env=env)
    assert p.returncode == EXIT_OPERATOR and "private key" in p.stderr


def test_crash_points_are_refused_in_live_mode(run_paths: RunPaths, control: object) -> None:
    key = "0x" + "cd" * 32
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "live", "--live",
             "--crash-at", "after_send"], env={"NOBLINK_PK": key})
    assert p.returncode == EXIT_USAGE and "crash points" in p.stderr
    assert "cd" * 32 not in p.stderr
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "live", "--live"],
            env={"NOBLINK_PK": key, "NOBLINK_POSITION_CRASH_AT": "after_journal"})
    assert p.returncode == EXIT_USAGE and "crash points" in p.stderr


def test_malformed_private_key_exits_3_without_echo(run_paths: RunPaths,
                                                    control: object) -> None:
    key = "0x" + "cd" * 31 + "zz"                       # loaded, then refused
    p = run(["--run-dir", str(run_paths.run_dir), "--mode", "live", "--live"],
            env={"NOBLINK_PK": key})
    assert p.returncode == EXIT_OPERATOR and "malformed" in p.stderr
    assert "cd" * 31 not in p.stderr and "cd" * 8 not in p.stderr


async def test_an_operator_error_in_a_loop_stops_the_worker(tmp_path) -> None:
    """A loop must not end quietly while the worker keeps reporting RUNNING."""
    import asyncio

    from core.errors import OperatorError
    from position_worker.main import Worker, parse_args
    w = Worker(parse_args(["--run-dir", str(tmp_path)]))
    calls = 0

    async def body() -> None:
        nonlocal calls
        calls += 1
        raise OperatorError("allowance revoked")
    w._loop("reconcile", 0.01, body)
    await asyncio.wait_for(w.stop.wait(), 30.0)
    await asyncio.gather(*w._tasks)
    assert calls == 1 and isinstance(w._fatal, OperatorError)
