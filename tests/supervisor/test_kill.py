"""The kill switch and params on a real bot (sim, speed 60), through the CLI: `noblink kill`
is acknowledged once the position worker cancelled at the venue and journaled it, nothing
trades until `noblink resume`, and `noblink params set` reloads the running version with new
params."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request

import orjson
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import OrderArgs

from core.clock import Clock
from core.config import Endpoints
from core.markets import market_slug
from position_worker.credentials import Credentials
from position_worker.reasons import RejectReason
from sim.testing import order_log, read_sim_info
from state.control import ControlBlock
from state.run import RunPaths
from tests.supervisor.botctl import Bot
from tests.waiting import wait_for

# the test waits mostly for the strategy to trade (late in a window): at 60x a window is 5 s
BOT_SPEED = 60


def cli(bot: Bot, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor.cli", *args, "--run-dir",
                           str(bot.run_dir)], capture_output=True, text=True, timeout=timeout)


def flags(bot: Bot) -> tuple[bool, bool, bool]:
    paths, _ = RunPaths.load(bot.run_dir)
    cb = ControlBlock.attach(paths.seg("control"), readonly=True)
    try:
        return cb.paused, cb.killed, cb.kill_confirmed
    finally:
        cb.close()


def journal(bot: Bot, sql: str, *args: object) -> list[sqlite3.Row]:
    con = sqlite3.connect(f"file:{bot.run_dir / 'journal.sqlite'}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        return list(con.execute(sql, args))
    finally:
        con.close()


def intents_after(bot: Bot, ts_ns: int) -> list[sqlite3.Row]:
    return journal(bot, "SELECT accepted, reject_reason FROM intents WHERE received_ns > ? "
                   "ORDER BY id", ts_ns)


def gamma_market(gamma: str, slug: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{gamma}/markets/slug/{slug}", timeout=10) as r:
            m = orjson.loads(r.read())
    except urllib.error.HTTPError:
        return None
    return m if m.get("acceptingOrders") else None


def rest_an_order(bot: Bot) -> tuple[ClobClient, str, Endpoints]:
    """A GTC bid at 0.01 on the bot's own sim account (the position worker only sends FOK
    orders, which never rest): something for the kill to cancel."""
    info = read_sim_info(bot.run_dir)
    ep, clock = Endpoints.from_sim_info(info), Clock.from_dict(info["clock"])
    c = ClobClient(ep.clob, 137, key=Credentials.sim_throwaway(bot.run_id).private_key)
    c.set_api_creds(c.create_or_derive_api_key())
    start = int(clock.now()) // 900 * 900 + 900        # the next 15m window: listed, open
    slug = market_slug("btc", 900, start)
    m = wait_for(lambda: gamma_market(ep.gamma, slug), 30, f"market {slug}")
    token = orjson.loads(m["clobTokenIds"])[0]
    r = c.create_and_post_order(OrderArgs(token_id=token, price=0.01, size=10, side="BUY"))
    assert r["status"] == "live", r
    return c, r["orderID"], ep


def test_kill_resume_and_params_through_the_cli(bot: Bot) -> None:
    first = bot.wait_active()
    wait_for(lambda: journal(bot, "SELECT 1 FROM intents WHERE accepted = 1"), 90,
             "a first accepted intent (the bot trades)", bot.tail)
    client, resting, ep = rest_an_order(bot)
    since = max((e["id"] for e in order_log(ep.admin)), default=0)

    # kill: acknowledged once the position worker confirmed; paused, killed, kill_done
    r = cli(bot, "kill")
    assert r.returncode == 0 and r.stdout.startswith("kill: ok"), r.stdout + r.stderr
    assert bot.status()["paused"] is True
    assert flags(bot) == (True, True, True)
    ack = next(a for a in reversed(bot.status()["commands"]) if a["cmd"] == "kill")
    assert ack["result"] == "ok" and ack["error"] is None
    (ev,) = journal(bot, "SELECT ts_ns, body FROM events WHERE kind = 'kill'")
    body = orjson.loads(ev["body"])
    assert body["executor"] == "clob"
    # at the venue: one cancel-all, and nothing of ours rests any more
    cancels = [e for e in order_log(ep.admin, since) if e["path"] == "/cancel-all"]
    assert [(e["method"], e["status"]) for e in cancels] == [("DELETE", 200)], cancels
    assert client.get_open_orders() == []
    if client.get_order(resting)["status"] == "CANCELED":    # not filled by the sim first
        assert body["canceled"] == 1
    # nothing is accepted while killed: intents after the cancel are refused (PAUSED)
    paused = int(RejectReason.PAUSED)
    wait_for(lambda: [r for r in intents_after(bot, ev["ts_ns"])
                      if r["reject_reason"] == paused], 90, "an intent refused as PAUSED",
             bot.tail)
    assert [tuple(r) for r in intents_after(bot, ev["ts_ns"]) if r["accepted"]] == []

    # resume: the flags are cleared and the bot trades again
    r = cli(bot, "resume")
    assert r.returncode == 0 and "resume: ok" in r.stdout, r.stdout + r.stderr
    assert flags(bot) == (False, False, False) and bot.status()["paused"] is False
    resumed_ns = journal(bot, "SELECT max(received_ns) AS t FROM intents")[0]["t"]
    wait_for(lambda: [r for r in intents_after(bot, resumed_ns) if r["accepted"]], 120,
             "an accepted intent after resume", bot.tail)

    # params set: a reload of the same version with {"x": 1}
    r = cli(bot, "params", "set", '{"x": 1}', "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    rec = orjson.loads(r.stdout)
    assert rec["result"] == "ok" and rec["params"] == {"x": 1}, rec
    assert rec["sha256"] == first["strategy"]["sha256"]
    assert rec["to_epoch"] == rec["from_epoch"] + 1
    r = cli(bot, "params", "get", "--json")
    assert r.returncode == 0 and orjson.loads(r.stdout) == {"x": 1}, r.stderr

    # the read-only queries against the running bot
    r = cli(bot, "positions", "--json")
    assert r.returncode == 0, r.stderr
    assert set(orjson.loads(r.stdout)) == {"open", "settled", "totals"}
    r = cli(bot, "logs", "position", "-n", "50")
    assert r.returncode == 0 and "kill switch carried out" in r.stdout, r.stdout[-2000:]

    r = cli(bot, "stop")
    assert r.returncode == 0, r.stderr
    assert bot.proc.wait(120) == 0, bot.tail()
