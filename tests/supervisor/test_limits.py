"""A strategy that leaks memory is killed at the limit and, in its probation, reverted: the
previous version trades on, and the feed and the position worker never notice."""

from __future__ import annotations

from pathlib import Path

from tests.supervisor.botctl import Bot, strategy_source
from tests.waiting import wait_for

# fine in verification (one tick); from its second tick on it keeps 40 MB a tick
LEAKY = strategy_source("leaky", extra="""
        self.hoard = []
""").replace("    def evaluate(self, view):\n", """    def evaluate(self, view):
        first = self.__dict__.setdefault("first_tick", view.tick)
        if view.tick > first and view.slot == 0:     # not in verification (one tick)
            self.hoard.append(b"x" * (40 << 20))
""", 1)


def test_a_leaking_strategy_is_killed_at_the_limit_and_reverted(tmp_path: Path) -> None:
    bot = Bot(tmp_path, args=("--no-api", "--strategy-rss-limit", "250"))
    try:
        bot.wait_active()
        before = bot.wait_ticks(2)["active_epoch"]
        _, rec = bot.deploy(LEAKY, "leaky")
        assert rec["result"] == "ok", (rec.get("error"), rec.get("phase"))
        revert = wait_for(lambda: next((r for r in bot.status()["reloads"]
                                        if r["trigger"] == "probation"), None), 120,
                          "the revert of the leaking version", bot.tail)
        assert revert["result"] == "reverted" and revert["to_epoch"] > before, revert
        leaky = next(r for r in bot.status()["reloads"] if r["id"] == rec["id"])
        assert leaky["probation"] == "failed: the new worker died during probation", leaky
        log = (bot.run_dir / "logs" / "supervisor.jsonl").read_text()
        assert "over the 250 MB limit: killing it" in log
        st = bot.wait_ticks(2)
        assert {w: st["workers"][w]["restarts"] for w in ("feed", "position")} == {
            "feed": 0, "position": 0}
        assert bot.stop() == 0
    finally:
        bot.kill_everything()
    assert not bot.leftovers(), "segments left behind"


def test_a_slow_crash_loop_gives_up_too(run_paths, control) -> None:
    """A strategy that dies every ~27 s (a hang past the heartbeat timeout, say) never
    trips 5 restarts in 60 s; 10 in 15 minutes gives up as well, so it does not cycle
    forever."""
    from state.run import SNAPSHOT_CAPACITY
    from state.snapshot import SnapshotRegion
    from supervisor.deploys import Deployment
    from supervisor.lanes import LaneConfig, Lanes

    snap = SnapshotRegion.create(run_paths.seg("snapshot"), SNAPSHOT_CAPACITY)
    try:
        lanes = Lanes(LaneConfig(run_dir=run_paths.run_dir, mode="sim", stake=5.0), control,
                      snap, lambda: 1, lambda: None)
        now = [1000.0]
        lanes._now = lambda: now[0]
        requested = []
        lanes.request = requested.append              # type: ignore[method-assign]
        lanes.current = Deployment("s.py", "ab" * 32, run_paths.run_dir / "s.py")
        for _ in range(12):
            lanes._restart_if_down()                  # schedules the restart (backoff)
            now[0] += 15.0
            lanes._restart_if_down()                  # starts it
            now[0] += 12.0                            # ... which dies 27 s after the last
            if lanes.failed_for_good is not None:
                break
        assert len(requested) == 10, len(requested)
        assert lanes.failed_for_good == "10 restarts in 900s"
    finally:
        snap.close()
        snap.unlink()
