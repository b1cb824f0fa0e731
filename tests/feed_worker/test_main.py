"""The process entry point: stopping cleanly even before the sim is there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from feed_worker.main import SIM_JSON_WAIT_S
from state.run import RunPaths

ROOT = Path(__file__).resolve().parents[2]


def test_sigterm_while_waiting_for_sim_json_stops_cleanly_and_promptly(run_paths: RunPaths):
    run_paths.write_run_json(mode="test")                    # but no sim.json (yet)
    log_path = run_paths.run_dir / "feed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "feed_worker", "--run-dir",
                                 str(run_paths.run_dir)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        deadline = time.monotonic() + 30
        while b"waiting up to" not in log_path.read_bytes():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the feed never said it was waiting"
            time.sleep(0.05)          # polling interval of the condition above
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(10)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, log_path.read_text()                     # not killed by the signal (-15)
    # promptly: well inside the 30 s wait it would otherwise sit out (not a latency number)
    assert took < SIM_JSON_WAIT_S / 2, took
