"""kill -9 during a reload, in each phase, and SIGTERM to the supervisor mid-reload: one
active strategy (or a clean stop), nothing lost, nothing left behind."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from supervisor.control_file import append_command, wait_for_ack
from tests.supervisor.botctl import Bot, gaps_and_duplicates, strategy_source, ticks_of
from tests.waiting import wait_for

SLOW_VERIFY = strategy_source("slow-verify", extra=(
    "    def self_test(self):\n"
    "        time.sleep(4.0)\n"
    "        return True\n"))
# set_state runs once in verification (restore of the live snapshot) and once in the handoff:
# the second call is slow, so the reload sits in HANDOFF long enough to be caught there
SLOW_HANDOFF = strategy_source("slow-handoff", module="CALLS = [0]").replace(
    "    def set_state(self, state):\n",
    "    def set_state(self, state):\n"
    "        CALLS[0] += 1\n"
    "        if CALLS[0] == 2:\n"
    "            time.sleep(4.0)\n")


def slow_drain(flag: Path) -> str:
    """Active as usual; once ``flag`` exists, every commit (get_state) takes 3 s, so a
    drain request finds it mid-cycle or mid-drain, and the test, which sees the phase
    through status.json (up to 0.25 s old) on a loaded machine, still kills in DRAIN."""
    return strategy_source("slow-drain", module="import os").replace(
        "    def get_state(self):\n",
        f"    def get_state(self):\n        if os.path.exists({str(flag)!r}):\n"
        "            time.sleep(3.0)\n")


def _in_phase(bot: Bot, phase: str) -> dict | None:
    r = bot.status().get("strategy", {}).get("reload_in_progress") or {}
    return r if r.get("phase") == phase else None


def _kill_in_phase(bot: Bot, source: str, name: str, phase: str, lane_of: str,
                   **args: object) -> dict:
    """Deploy ``source``, SIGKILL the standby (``lane_of="to"``) or the old worker
    (``"from"``) once the reload is in ``phase``; returns the finished reload's record."""
    path = bot.tmp / f"{name}.py"
    path.write_text(source)
    cid = append_command(bot.run_dir / "control.json", "reload",
                         {"strategy": str(path), **args})
    live = wait_for(lambda: _in_phase(bot, phase), 60, f"phase {phase}", bot.tail)
    lane = live[f"{lane_of}_lane"]
    pid = bot.status()["strategy"]["lanes"][str(lane)]["pid"]
    assert pid, live
    os.kill(pid, signal.SIGKILL)
    ack = wait_for_ack(bot.run_dir / "status.json", cid, 90)
    assert ack is not None, bot.tail()
    return next(r for r in reversed(bot.status()["reloads"]) if r["command_id"] == cid)


def test_kill_minus_nine_in_each_phase_then_sigterm_mid_reload(bot: Bot) -> None:
    s = bot.wait_active()
    bot.wait_ticks(2)
    epoch = s["active_epoch"]

    rec = _kill_in_phase(bot, SLOW_VERIFY, "slowverify", "SPAWN", "to")
    assert rec["result"] == "rolled_back" and "exited with code -9" in rec["error"], rec
    assert bot.wait_active()["active_epoch"] == epoch

    rec = _kill_in_phase(bot, strategy_source("shadowed"), "shadowed", "SHADOW", "to",
                         shadow=60)
    assert rec["result"] == "rolled_back", rec
    assert bot.wait_active()["active_epoch"] == epoch

    rec = _kill_in_phase(bot, SLOW_HANDOFF, "slowhandoff", "HANDOFF", "to")
    assert rec["result"] == "rolled_back" and rec["drained"], rec   # drained, then resumed
    s = bot.wait_active()
    assert s["active_epoch"] == epoch
    lane = s["strategy"]["lanes"][str(s["strategy"]["active_lane"])]
    assert lane["fence"] is None                # the resumed worker's lane is open again
    bot.wait_ticks(2)

    flag = bot.tmp / "slow.flag"
    _, rec = bot.deploy(slow_drain(flag), "slowdrain")
    assert rec["result"] == "ok", rec
    epoch = rec["to_epoch"]
    bot.wait_active()
    flag.touch()
    # the standby dies while the old worker drains: rolled back, the old worker trades on
    rec = _kill_in_phase(bot, strategy_source("lost-standby"), "loststandby", "DRAIN", "to")
    assert rec["result"] == "rolled_back", rec
    s = wait_for(lambda: bot.active() if bot.lane_of_active()["fence"] is None else None,
                 60, "the old worker resumed", bot.tail)
    assert s["active_epoch"] == epoch
    before = bot.lane_of_active()["evaluated"]
    wait_for(lambda: bot.lane_of_active()["evaluated"] > before, 60, "it evaluates again",
             bot.tail)
    rec = _kill_in_phase(bot, strategy_source("after-drain"), "afterdrain", "DRAIN", "from")
    flag.unlink()
    # the old worker died mid-drain: the verified standby took the newest snapshot
    assert rec["result"] == "ok" and rec["to_epoch"] > epoch, rec
    s = bot.wait_active()
    assert s["active_epoch"] == rec["to_epoch"]
    bot.wait_ticks(3)

    # SIGTERM to the supervisor while a standby verifies: a clean, ordered stop
    path = bot.tmp / "slowverify2.py"
    path.write_text(SLOW_VERIFY)
    append_command(bot.run_dir / "control.json", "reload", {"strategy": str(path)})
    wait_for(lambda: _in_phase(bot, "SPAWN"), 60, "a reload in flight", bot.tail)
    pids = [w["pid"] for w in bot.status()["workers"].values() if w["pid"]]
    assert bot.stop(signal.SIGTERM) == 0, bot.tail()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not bot.leftovers()
    ticks = ticks_of(bot.final_state())
    gaps, dups = gaps_and_duplicates(ticks)
    assert not dups, dups
    assert not gaps, gaps
