"""`noblink run` end to end: the real supervisor runs sim, feed, position and strategy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from state.segment import SHM_DIR


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def status(run_dir: Path) -> dict | None:
    try:
        return orjson.loads((run_dir / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    run_dir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "run", "--speed", "60",
                          "--run-dir", str(run_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    yield p, run_dir
    if p.poll() is None:
        p.kill()
    p.wait(60)
    doc = orjson.loads((run_dir / "run.json").read_bytes()) if (run_dir / "run.json").exists() \
        else {}
    leftovers = list(SHM_DIR.glob(f"noblink-{doc.get('run_id', 'none')}-*"))
    for f in leftovers:
        f.unlink()
    assert not leftovers, f"segments left behind: {leftovers}"


def test_make_run_brings_up_the_whole_bot_and_stops_cleanly(bot) -> None:
    p, run_dir = bot

    def all_running() -> bool:
        s = status(run_dir)
        return bool(s) and all(w["state"] == "RUNNING" for w in s["workers"].values()) \
            and len(s["workers"]) == 4

    wait_for(all_running, 120, "every worker RUNNING")
    t0 = status(run_dir)["tick"]
    wait_for(lambda: status(run_dir)["tick"] >= t0 + 2, 60, "the tick to advance")
    s = status(run_dir)
    assert s["active_epoch"] == 1 and s["mode"] == "sim"
    assert s["feed"]["messages"] > 0
    pids = [w["pid"] for w in s["workers"].values()]
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out.decode()[-3000:]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
