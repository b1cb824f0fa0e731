"""Soak (`make soak`, excluded from `make test`): the whole bot at 60x for ten wall minutes,
i.e. ten simulated hours: 120 five-minute windows per asset."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.markets import N_SLOTS
from tests.supervisor.test_run import status
from tests.waiting import wait_for

SOAK_WALL_S = 600


@pytest.mark.slow
@pytest.mark.timeout(SOAK_WALL_S + 300)
def test_ten_simulated_hours_without_a_restart(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with open(tmp_path / "supervisor.log", "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "run", "--speed", "60",
                              "--run-dir", str(run_dir)], stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: (s := status(run_dir)) and len(s["workers"]) == 4 and all(
                w["state"] == "RUNNING" for w in s["workers"].values()), 120, "bot up")
            deadline = time.monotonic() + SOAK_WALL_S
            last_tick = 0
            while time.monotonic() < deadline:
                time.sleep(5)
                s = status(run_dir)
                assert s["tick"] > last_tick, "the tick stalled"
                last_tick = s["tick"]
                assert all(w["restarts"] == 0 for w in s["workers"].values()), s["workers"]
            s = status(run_dir)
            assert s["feed"]["parse_errors"] == 0 and s["feed"]["slots_ok"] == N_SLOTS
            assert s["positions"]["settled"] > 0
            assert s["positions"]["mismatches"] == 0
            p.send_signal(signal.SIGTERM)
            assert p.wait(120) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(60)
