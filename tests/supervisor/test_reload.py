"""Hot reload against the real processes and the sim: every tick once, fenced, rolled back."""

from __future__ import annotations

import collections
import signal
from pathlib import Path

from sim import testing as sim_testing
from state.intents import IntentWriter
from state.run import RunPaths
from tests.supervisor.botctl import (
    BROKEN,
    Bot,
    gaps_and_duplicates,
    strategy_source,
    ticks_of,
)
from tests.waiting import wait_for

STALE_EPOCH = 0      # position_worker.reasons.RejectReason.STALE_EPOCH


def _still_trading(bot: Bot, epoch: int) -> None:
    """The worker of ``epoch`` is active and evaluates new ticks."""
    before = bot.lane_of_active()["evaluated"]
    s = bot.wait_ticks(2)
    assert s["active_epoch"] == epoch
    wait_for(lambda: bot.lane_of_active()["evaluated"] > before, 30,
             "the old worker evaluating", bot.tail)


def test_twenty_reloads_keep_every_tick_and_roll_back_every_broken_file(bot: Bot) -> None:
    from position_worker.reasons import RejectReason

    assert RejectReason.STALE_EPOCH == STALE_EPOCH
    bot.wait_active()
    bot.wait_ticks(3)
    sim_admin = sim_testing.read_sim_info(bot.run_dir)["admin"]
    broken = iter(BROKEN.items())
    shas: list[str] = []
    records = []
    plan = ["good", "bad", "good", "bad", "schema2", "bad", "good2", "bad", "good2", "bad",
            "good2", "bad", "good2", "bad", "previous", "to", "params", "sighup", "schema1",
            "good"]
    for i, step in enumerate(plan):
        epoch = bot.status()["active_epoch"]
        if step == "bad":
            kind, source = next(broken)
            extra = {"timeout": 3.0} if kind == "hanging import" else {}
            ack, rec = bot.deploy(source, f"bad{i}", **extra)
            assert ack["result"] == "rolled_back", (kind, ack, bot.tail())
            assert rec["result"] == "rolled_back" and rec["error"], rec
            assert bot.wait_active()["active_epoch"] == epoch, kind
            _still_trading(bot, epoch)
            continue
        if step == "previous":
            ack, rec = bot.reload({"previous": True})
            assert rec["sha256"] == shas[-2]
        elif step == "to":
            ack, rec = bot.reload({"to": shas[-2][:10]})
            assert rec["sha256"] == shas[-2]
        elif step == "params":
            ack, rec = bot.reload({"params": {"x": i}})
            assert rec["params"] == {"x": i}
        elif step == "sighup":
            (bot.tmp / f"good{i}.py").write_text(strategy_source(f"v{i}", schema=2))
            n = len(bot.status()["reloads"])
            ack, rec = bot.reload({"strategy": str(bot.tmp / f"good{i}.py")})
            (bot.tmp / f"good{i}.py").write_text(strategy_source(f"v{i}h", schema=2))
            bot.proc.send_signal(signal.SIGHUP)
            rec = wait_for(lambda n=n: len(bot.status()["reloads"]) >= n + 2
                           and bot.status()["reloads"][-1], 60, "the SIGHUP reload", bot.tail)
            assert rec["trigger"] == "sighup"
            records.append(rec)
            shas.append(rec["sha256"])
            bot.wait_active()
            continue
        else:
            schema = {"schema2": 2, "good2": 2, "schema1": 1}.get(step, 1)
            ack, rec = bot.deploy(strategy_source(f"v{i}", schema=schema), f"good{i}")
        assert ack["result"] == "ok", (step, ack, bot.tail())
        assert rec["result"] == "ok" and rec["to_epoch"] > epoch, rec
        records.append(rec)
        shas.append(rec["sha256"])
        s = bot.wait_active()
        assert s["active_epoch"] == rec["to_epoch"]
        bot.wait_ticks(1)

    # fencing: a retired worker's epoch and a standby's epoch are refused
    paths, _ = RunPaths.load(bot.run_dir)
    last = records[-1]
    zombie = IntentWriter(paths, last["from_lane"], last["from_epoch"])
    try:
        zombie_seq = zombie.submit(0, 1_700_000_100, "btc-updown-5m-1700000100", 0, 5.0, 0.5,
                                   "zombie")
    finally:
        zombie.close()
    shadow_file = bot.tmp / "shadow.py"
    shadow_file.write_text(strategy_source("shadow").replace(
        "        self.calls += 1\n", "        return Decision('Down', 0.5, 'shadow')\n"))
    from supervisor.control_file import append_command, wait_for_ack
    cid = append_command(bot.run_dir / "control.json", "reload",
                         {"strategy": str(shadow_file), "shadow": 30, "dry_run": True})
    live = wait_for(lambda: (bot.status()["strategy"].get("reload_in_progress") or {}).get(
        "phase") == "SHADOW" and bot.status()["strategy"]["reload_in_progress"], 60,
        "the shadow phase", bot.tail)
    standby = IntentWriter(paths, live["to_lane"], live["to_epoch"])
    try:
        standby.submit(1, 1_700_000_100, "btc-updown-15m-1700000100", 0, 5.0, 0.5, "early")
    finally:
        standby.close()
    ack = wait_for_ack(bot.run_dir / "status.json", cid, 120)
    assert ack is not None and ack["result"] == "ok", bot.tail()
    dry = next(r for r in reversed(bot.status()["reloads"]) if r["command_id"] == cid)
    assert dry["result"] == "dry_run" and dry["shadow"]["compared"] >= 1
    assert dry["shadow"]["diffs"] and {"tick", "slot", "old", "new"} <= set(
        dry["shadow"]["diffs"][0])
    assert bot.status()["active_epoch"] == last["to_epoch"]    # a dry run never promotes
    bot.wait_ticks(2)
    order_log = sim_testing.order_log(sim_admin)

    assert bot.stop() == 0, bot.tail()
    for rec in records:
        assert rec["missed_ticks"] == 0 and rec["duplicate_ticks"] == 0, rec
        assert rec["handoff_ms"] is not None and rec["first_tick_new"] == \
            rec["last_tick_old"] + 1, rec
    state = bot.final_state()
    ticks = ticks_of(state)
    gaps, dups = gaps_and_duplicates(ticks)
    assert not gaps and not dups, (gaps, dups, ticks[:5], ticks[-5:])
    assert len(ticks) > 60
    # the state is continuous: it went through every good version, in order, and the schema
    # changes (1 -> 2 -> 1) were migrated both ways
    assert state["history"][0] == "v0" and len(state["history"]) >= 12
    assert "seen_ticks" not in state and "ticks" in state

    intents = bot.journal_intents()
    accepted = [r["epoch"] for r in intents if r["accepted"]]
    assert accepted == sorted(accepted), "accepted intents are epoch-monotone"
    z = [r for r in intents if r["lane"] == last["from_lane"] and r["seq"] == zombie_seq]
    assert z and not z[0]["accepted"] and z[0]["reject_reason"] == STALE_EPOCH, z
    early = [r for r in intents if r["epoch"] == live["to_epoch"]]
    assert early and all(not r["accepted"] and r["reject_reason"] == STALE_EPOCH
                         for r in early), early
    posts = collections.Counter(
        str(e["body"]["order"].get("metadata")) for e in order_log
        if e.get("method") == "POST" and e.get("path") == "/order"
        and isinstance(e.get("body"), dict) and isinstance(e["body"].get("order"), dict))
    assert all(n == 1 for n in posts.values()), "one order per (slot, window)"
    assert len({(o["slot"], o["window_start"]) for o in bot.journal_orders()}) == \
        len(bot.journal_orders())


def test_a_broken_strategy_at_start_leaves_feed_and_positions_up_until_a_good_reload(
        tmp_path: Path) -> None:
    bot = Bot(tmp_path, strategy="import no_such_module_at_start\n")
    try:
        s = wait_for(lambda: (bot.status().get("strategy") or {}).get("failed") and bot.status(),
                     120, "the strategy given up", bot.tail)
        assert "ModuleNotFoundError" in s["strategy"]["failed"]
        assert s["active_epoch"] == 0 and bot.proc.poll() is None
        assert [r["trigger"] for r in s["reloads"]] == ["start"]    # exit 4: not retried
        assert s["workers"]["feed"]["state"] == "RUNNING"
        assert s["workers"]["position"]["state"] == "RUNNING"
        bot.wait_ticks(2)                                           # the feed goes on
        _, rec = bot.deploy(strategy_source("fixed"), "fixed")
        assert rec["result"] == "ok" and rec["trigger"] == "command", rec
        assert bot.wait_active()["strategy"]["failed"] is None
        assert bot.stop() == 0, bot.tail()
    finally:
        bot.kill_everything()
    assert not bot.leftovers()


def test_a_restarted_bot_starts_from_the_saved_state_and_evaluates_at_once(
        tmp_path: Path) -> None:
    """A clean stop saves the strategy state; the next run (a new run id, its ticks counted
    from 1 again) restores it and evaluates its very first ticks."""
    first = Bot(tmp_path)
    try:
        first.wait_active()
        first.wait_ticks(20)
        assert first.stop() == 0, first.tail()
        saved = ticks_of(first.final_state())
        assert len(saved) >= 20
    finally:
        first.kill_everything()
    assert not first.leftovers()
    second = Bot(tmp_path)
    try:
        s = second.wait_active()
        assert s["reloads"][-1]["trigger"] == "start"
        before = second.lane_of_active()["evaluated"]
        wait_for(lambda: second.lane_of_active()["evaluated"] >= before + 2, 30,
                 "evaluations right after the restart", second.tail)
        assert second.stop() == 0, second.tail()
        state = second.final_state()
        assert state["history"][0] == "v0"
        ticks = ticks_of(state)
        assert ticks[:len(saved)] == saved          # the first run's history came back
        assert len(ticks) > len(saved)               # and the second run added to it,
        # from its own first ticks on: at most the tick it was seen active at (how long it
        # took to start does not matter)
        assert ticks[len(saved)] <= s["tick"] + 1, (ticks[len(saved)], s["tick"])
    finally:
        second.kill_everything()
    assert not second.leftovers()


def test_a_restart_without_strategy_continues_with_the_last_deployed_version(
        tmp_path: Path) -> None:
    """An operator's reloads survive a restart: `noblink run` without --strategy starts the
    version that was active last in that run directory (with its params)."""
    first = Bot(tmp_path)
    try:
        first.wait_active()
        _, rec = first.deploy(strategy_source("deployed"), "deployed", params={"k": 1})
        assert rec["result"] == "ok", rec
        assert first.stop() == 0, first.tail()
    finally:
        first.kill_everything()
    second = Bot(tmp_path, explicit=False)
    try:
        s = second.wait_active()
        assert s["strategy"]["sha256"] == rec["sha256"]
        assert s["strategy"]["params"] == {"k": 1}
        assert s["reloads"][-1]["trigger"] == "start"
        assert second.stop() == 0, second.tail()
    finally:
        second.kill_everything()
    assert not second.leftovers()
