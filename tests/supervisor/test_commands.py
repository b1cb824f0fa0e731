"""The file contract end to end: every command by file and by CLI, two in one file, bad input
that loses nothing, probation reverting a strategy that fails after its flip."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from core.markets import N_SLOTS
from supervisor import reloadlog
from tests.supervisor.botctl import Bot, strategy_source
from tests.waiting import wait_for

# Passes verification (the dry run evaluates each slot once: calls <= 16), then raises on
# every evaluation after the flip (a fresh instance restored at the handoff: calls restart
# at 0, and the second tick pushes them past 16).
FLAKY = strategy_source("flaky").replace(
    "        self.calls += 1\n",
    "        self.calls += 1\n"
    "        if self.calls > 16:\n"
    "            raise RuntimeError('fails in production only')\n")


def cli(bot: Bot, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args, "--run-dir",
                           str(bot.run_dir)], capture_output=True, text=True, timeout=timeout)


def acks(bot: Bot) -> list[dict]:
    return bot.status().get("commands", [])


def write_control(bot: Bot, data: bytes) -> None:
    path = bot.run_dir / "control.json"
    tmp = bot.run_dir / ".control.json.test"
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def test_every_command_by_file_and_cli_and_bad_input(bot: Bot) -> None:
    bot.wait_active()

    # by CLI
    r = cli(bot, "pause")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    assert bot.status()["paused"] is True
    # the run directory is private: 0700, and every file in it 0600
    assert oct((bot.run_dir).stat().st_mode & 0o777) == "0o700"
    files = [p for p in bot.run_dir.rglob("*") if p.is_file()]
    assert {"status.json", "journal.sqlite", "run.json", "commands.json", "control.json",
            "strategy0.log"} <= {p.name for p in files}
    assert [p.name for p in files if p.stat().st_mode & 0o077] == []
    r = cli(bot, "resume")
    assert r.returncode == 0, r.stderr
    assert bot.status()["paused"] is False
    good = bot.tmp / "good.py"
    good.write_text(strategy_source("cli-good"))
    r = cli(bot, "reload", "--strategy", str(good))
    assert r.returncode == 0 and "epoch" in r.stdout, r.stdout + r.stderr
    bad = bot.tmp / "bad.py"
    bad.write_text("import no_such_module_for_cli\n")
    r = cli(bot, "reload", "--strategy", str(bad))
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr, r.stdout + r.stderr
    r = cli(bot, "reload", "--strategy", str(bot.tmp / "missing.py"))
    assert r.returncode == 1 and "cannot read" in r.stderr, r.stderr
    r = cli(bot, "status", "--json")
    doc = orjson.loads(r.stdout)
    for key in ("mode", "epoch", "tick", "workers", "slots", "positions", "reloads",
                "commands", "feed"):
        assert key in doc, key
    assert len(doc["slots"]) == N_SLOTS
    w = doc["workers"]["feed"]
    assert {"pid", "state", "restarts", "rss_mb", "cpu_pct", "heartbeat_age_ms"} <= set(w)
    r = cli(bot, "status")
    assert r.returncode == 0 and "btc-5m" in r.stdout and "strategy" in r.stdout

    # two commands in one file: both run, in order
    write_control(bot, orjson.dumps({"commands": [
        {"id": "two-1", "cmd": "pause"}, {"id": "two-2", "cmd": "resume"}]}))
    wait_for(lambda: {a["id"]: a["result"] for a in acks(bot)}.get("two-2") == "ok", 30,
             "both commands", bot.tail)
    ids = [a["id"] for a in acks(bot)]
    assert ids.index("two-1") < ids.index("two-2")
    assert bot.status()["paused"] is False

    # bad input: an error in status, nothing lost, the bot keeps trading, and a valid
    # command written after the junk still runs
    epoch = bot.status()["active_epoch"]
    n = len(acks(bot))
    write_control(bot, b"\x00\xff\xfe{{{ not json")
    wait_for(lambda: len(acks(bot)) > n, 30, "the junk's error", bot.tail)
    junk = acks(bot)[-1]
    assert junk["id"] is None and junk["result"] == "error" and "JSON" in junk["error"]
    write_control(bot, orjson.dumps({"commands": [
        {"id": "u1", "cmd": "launch-missiles"},
        {"id": "t1", "cmd": "pause", "args": {"now": True}},
        {"cmd": "pause"},
        {"id": "ok-after-junk", "cmd": "pause"}]}))
    wait_for(lambda: any(a["id"] == "ok-after-junk" and a["result"] == "ok"
                         for a in acks(bot)), 30, "the valid command after junk", bot.tail)
    by_id = {a["id"]: a for a in acks(bot)}
    assert by_id["u1"]["result"] == "error" and "unknown command" in by_id["u1"]["error"]
    assert by_id["t1"]["result"] == "error" and "unknown arg" in by_id["t1"]["error"]
    assert bot.status()["paused"] is True
    link = bot.tmp / "evil.json"
    link.write_bytes(orjson.dumps({"commands": [{"id": "via-link", "cmd": "stop"}]}))
    (bot.run_dir / "control.json").unlink()
    (bot.run_dir / "control.json").symlink_to(link)
    wait_for(lambda: any("symlink" in (a.get("error") or "") for a in acks(bot)), 30,
             "the symlink refused", bot.tail)
    assert "via-link" not in {a["id"] for a in acks(bot)}
    (bot.run_dir / "control.json").unlink()
    bot.command("resume")
    assert bot.status()["active_epoch"] == epoch
    bot.wait_ticks(2)

    # probation: fine in verification, raising after the flip -> the previous version
    before = bot.status()["active_epoch"]
    _, rec = bot.deploy(FLAKY, "flaky")
    assert rec["result"] == "ok", rec
    revert = wait_for(lambda: next((r for r in bot.status()["reloads"]
                                    if r["trigger"] == "probation"), None), 90,
                      "the probation revert", bot.tail)
    assert revert["result"] == "reverted" and revert["from_epoch"] == rec["to_epoch"], revert
    flaky = next(r for r in bot.status()["reloads"] if r["id"] == rec["id"])
    assert flaky["probation"].startswith("failed"), flaky
    on_disk = next(r for r in reloadlog.read_tail(bot.run_dir, 50) if r["id"] == rec["id"])
    assert on_disk["probation"] == flaky["probation"]          # reloads.jsonl says so too
    assert revert["sha256"] != rec["sha256"] and revert["to_epoch"] > before

    # stop by CLI: acknowledged, then a clean exit
    r = cli(bot, "stop")
    assert r.returncode == 0, r.stderr
    assert bot.proc.wait(120) == 0, bot.tail()


def test_a_second_supervisor_on_the_same_run_dir_is_refused(bot: Bot) -> None:
    s = bot.wait_active()
    r = subprocess.run([sys.executable, "-m", "supervisor.cli", "run", "--no-api",
                        "--run-dir", str(bot.run_dir)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "another noblink supervisor" in r.stderr, r.stderr[-2000:]
    bot.wait_ticks(2)                       # the first one never noticed
    assert bot.status()["run_id"] == s["run_id"] and bot.active()
    assert bot.stop() == 0, bot.tail()
