"""`noblink run` end to end: the real supervisor runs sim, feed, position and strategy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from state.segment import SHM_DIR
from tests.waiting import wait_for


def status(run_dir: Path) -> dict | None:
    try:
        return orjson.loads((run_dir / "status.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


@pytest.fixture
def bot(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    run_dir = tmp_path / "run"
    log = tmp_path / "supervisor.log"
    with open(log, "wb") as out:              # a file, not a pipe: it can never fill up
        p = subprocess.Popen([sys.executable, "-m", "supervisor.cli", "run", "--speed", "60",
                              "--run-dir", str(run_dir)], stdout=out, stderr=subprocess.STDOUT)
    p.log = log  # type: ignore[attr-defined]
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


def all_running(run_dir: Path) -> dict | None:
    """Status once sim, feed, position and the active strategy worker all run."""
    s = status(run_dir)
    if not s or s.get("active_epoch", 0) == 0:
        return None
    lane = (s.get("strategy") or {}).get("active_lane")
    if lane is None:
        return None
    names = ("sim", "feed", "position", f"strategy{lane}")
    ok = all(s["workers"].get(n, {}).get("state") == "RUNNING" for n in names)
    return s if ok else None


def test_make_run_brings_up_the_whole_bot_and_stops_cleanly(bot) -> None:
    p, run_dir = bot
    # a SIGHUP during the ordered start neither cuts it short nor is lost: it becomes a
    # reload once the first strategy is up (the handlers are installed before run.json)
    wait_for(lambda: (run_dir / "run.json").exists(), 60, "the supervisor's set-up")
    p.send_signal(signal.SIGHUP)

    wait_for(lambda: all_running(run_dir), 120, "every worker RUNNING")
    t0 = status(run_dir)["tick"]
    wait_for(lambda: status(run_dir)["tick"] >= t0 + 2, 60, "the tick to advance")
    s = status(run_dir)
    assert s["mode"] == "sim" and s["feed"]["messages"] > 0
    s = wait_for(lambda: len((status(run_dir) or {}).get("reloads", [])) >= 2 and not
                 status(run_dir)["strategy"]["reload_in_progress"] and status(run_dir), 60,
                 "the start-up SIGHUP's reload")
    assert [(r["trigger"], r["result"]) for r in s["reloads"]] == [("start", "ok"),
                                                                   ("sighup", "ok")]
    assert s["active_epoch"] == 2
    long_lived = {n: s["workers"][n]["pid"] for n in ("sim", "feed", "position")}
    p.send_signal(signal.SIGHUP)                 # systemd's ExecReload: reload the file
    s = wait_for(lambda: len((status(run_dir) or {}).get("reloads", [])) >= 3
                 and status(run_dir)["reloads"][-1]["result"] and status(run_dir), 60,
                 "the SIGHUP reload")
    assert s["reloads"][-1]["trigger"] == "sighup" and s["reloads"][-1]["result"] == "ok"
    assert s["active_epoch"] == 3
    assert s["reloads"][-1]["missed_ticks"] == 0 and s["reloads"][-1]["duplicate_ticks"] == 0
    t1 = s["tick"]
    wait_for(lambda: status(run_dir)["tick"] >= t1 + 2, 60, "ticks after SIGHUP")
    assert p.poll() is None
    s = status(run_dir)
    assert {n: s["workers"][n]["pid"] for n in long_lived} == long_lived   # not touched
    pids = [w["pid"] for w in s["workers"].values() if w["pid"]]
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=120) == 0, p.log.read_text()[-3000:]
    final = status(run_dir)["workers"]             # written after the ordered shutdown
    exits = {n: w["last_exit"] for n, w in final.items() if w["state"] != "EMPTY"}
    assert exits == dict.fromkeys(exits, 0)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_killed_workers_are_restarted_and_pick_up_their_state(bot) -> None:
    p, run_dir = bot

    def running(name: str, restarts: int = 0) -> dict | None:
        s = all_running(run_dir)
        if not s:
            return None
        w = s["workers"].get(name)
        return s if w and w["state"] == "RUNNING" and w["restarts"] >= restarts else None

    s = wait_for(lambda: all_running(run_dir), 120, "every worker RUNNING")
    feed_pid = s["workers"]["feed"]["pid"]
    strategy_pid = s["workers"]["strategy0"]["pid"]

    os.kill(feed_pid, signal.SIGKILL)
    s = wait_for(lambda: running("feed", restarts=1), 120, "feed restarted")
    assert s["workers"]["feed"]["pid"] != feed_pid
    assert s["feed"]["starts"] >= 2            # the same feedstats row: segments adopted
    t0 = s["tick"]
    wait_for(lambda: status(run_dir)["tick"] > t0, 60, "ticks after the feed restart")

    os.kill(strategy_pid, signal.SIGKILL)
    s = wait_for(lambda: (status(run_dir) or {}).get("reloads", [{}])[-1].get("trigger")
                 == "crash" and all_running(run_dir), 120, "strategy restarted")
    assert s["active_epoch"] == 2                # a new incarnation, a new fencing epoch
    crash = s["reloads"][-1]
    assert crash["trigger"] == "crash" and crash["result"] == "ok"
    gen = crash["drained"] or {}
    log = (run_dir / "logs" / "strategy0.jsonl").read_text()
    assert "verified: restored generation" in log   # its state came back from the snapshot
    assert not gen                                # nothing to drain: the worker was dead
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 0, p.log.read_text()[-3000:]


def test_supervisor_killed_then_restarted_adopts_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "supervisor.cli", "run", "--speed", "60",
            "--run-dir", str(run_dir)]
    procs = []

    try:
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(first)
        s1 = wait_for(lambda: all_running(run_dir), 120, "first run up")
        run_id = orjson.loads((run_dir / "run.json").read_bytes())["run_id"]
        wait_for(lambda: status(run_dir)["tick"] >= s1["tick"] + 2, 60, "ticks")
        tick_before = status(run_dir)["tick"]
        children = [w["pid"] for w in s1["workers"].values() if w["pid"]]
        first.kill()                                   # the supervisor crashes
        first.wait(30)

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(lambda: all(gone(p) for p in children), 60, "children to follow (PDEATHSIG)")
        assert list(SHM_DIR.glob(f"noblink-{run_id}-*")), "state must survive the crash"
        (run_dir / "status.json").unlink()

        second = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(second)
        s2 = wait_for(lambda: all_running(run_dir), 120, "second run up")
        assert orjson.loads((run_dir / "run.json").read_bytes())["run_id"] == run_id
        assert s2["active_epoch"] == 2                 # epochs keep growing across the crash
        assert s2["tick"] >= tick_before               # the tick counter was adopted
        assert s2["feed"]["starts"] >= 2               # the feed adopted its segments
        second.send_signal(signal.SIGTERM)
        assert second.wait(120) == 0
        assert not list(SHM_DIR.glob(f"noblink-{run_id}-*"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(60)
        doc = orjson.loads((run_dir / "run.json").read_bytes()) if (run_dir / "run.json").exists() \
            else {}
        for f in SHM_DIR.glob(f"noblink-{doc.get('run_id', 'none')}-*"):
            f.unlink()
