"""sim-faults: one of each fault the sim's admin endpoint offers (sim/faults.py);
sim-restart: kill -9 the sim worker (the supervisor restarts it with the clock continued).

After each the bot must keep running and recover: the feed reconnects (status ``feed``:
``connected``, ``reconnects``, ``stale_episodes``, ``parse_errors``, ``rest_errors``,
``rate_limited`` move as the fault says), a new tick is evaluated, and the order checks
hold. Every fault is cleared before the next one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from chaos import checks
from chaos.checks import Findings
from chaos.row import Options, Row, strategy_source
from sim import testing as sim_testing
from tests.supervisor.botctl import Bot

FAULT_DEADLINE_S = 60.0
REFUSE_S = 3.0                 # reload-reconnect: wall seconds the sim refuses new WebSockets


def _feed(bot: Bot) -> dict:
    return bot.status().get("feed") or {}


def _moved(bot: Bot, counter: str, before: int, what: str) -> Findings:
    """``feed[counter]`` went past ``before``, then the feed is connected and fresh."""
    f = Findings()
    if checks.poll(lambda: (_feed(bot).get(counter) or 0) > before, FAULT_DEADLINE_S) is None:
        f.problems.append(f"{what}: feed {counter} stayed {before} for {FAULT_DEADLINE_S:.0f}s")
    f.merge(_recovered(bot, what))
    return f


def _recovered(bot: Bot, what: str) -> Findings:
    f = Findings()
    ok = checks.poll(lambda: (fd := _feed(bot)).get("connected")
                     and (fd.get("last_msg_age_ms") or 1e9) < 5000, FAULT_DEADLINE_S)
    if ok is None:
        f.problems.append(f"{what}: feed not connected and fresh within "
                          f"{FAULT_DEADLINE_S:.0f}s ({_feed(bot)})")
    return f


def _order_status_seen(admin: str, since: int, pred: Callable[[dict], bool]) -> bool:
    return any(pred(e) for e in sim_testing.order_log(admin, since=since)
               if e.get("method") == "POST" and e.get("path") == "/order")


def _last_id(admin: str) -> int:
    log = sim_testing.order_log(admin)
    return max((int(e.get("id") or 0) for e in log), default=0)


def sim_faults(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
               rng: random.Random) -> None:
    def fault(what: str, switches: dict, check: Callable[[], Findings]) -> None:
        pids.update(checks.worker_pids(bot))
        sim_testing.set_fault(admin, **switches)
        try:
            found = check()
        finally:
            sim_testing.clear_faults(admin)
        row.after_fault(bot, admin, what, pids, extra=lambda: found)

    def counted(what: str, switches: dict, counter: str) -> None:
        before = _feed(bot).get(counter) or 0
        fault(what, switches, lambda: _moved(bot, counter, before, what))

    counted("ws_drop", {"ws_drop": True}, "reconnects")
    counted("ws_stall *", {"ws_stall": "*"}, "stale_episodes")
    counted("ws_malformed 20", {"ws_malformed": 20}, "parse_errors")
    # REST faults hit the next requests of every REST server; a ws_drop makes the feed
    # backfill over REST at once, so the errors land on the feed's own requests too
    fault("rest_error 503 x5", {"rest_error": 503, "rest_error_count": 5, "ws_drop": True},
          lambda: _rest_used(bot, admin, "rest_error_count"))
    fault("rest_429 x5", {"rest_429": 5, "ws_drop": True},
          lambda: _rest_used(bot, admin, "rest_429"))
    since = _last_id(admin)
    fault("order_reject x2", {"order_reject": "chaos: rejected", "order_reject_count": 2},
          lambda s=since: _orders_hit(admin, s, lambda e: (e.get("status") or 0) >= 400,
                                      "order_reject"))
    since = _last_id(admin)
    fault("order_delay_s 3", {"order_delay_s": 3.0},
          lambda s=since: _orders_hit(admin, s, lambda e: True, "order_delay_s"))


def sim_restart_scenario(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                         rng: random.Random) -> None:
    for _ in range(opts.runs or 1):
        admin = sim_restart(bot, row, admin, pids)


def _rest_used(bot: Bot, admin: str, switch: str) -> Findings:
    """The REST fault is used up (each failed request took one), then the feed is fine."""
    f = Findings()
    if checks.poll(lambda: not sim_testing.admin_request(admin, "GET", "/faults").get(switch),
                   FAULT_DEADLINE_S) is None:
        f.problems.append(f"{switch}: not used up in {FAULT_DEADLINE_S:.0f}s (nobody asked "
                          "the REST servers?)")
    f.merge(_recovered(bot, switch))
    return f


def _orders_hit(admin: str, since: int, pred: Callable[[dict], bool], what: str) -> Findings:
    f = Findings()
    if checks.poll(lambda: _order_status_seen(admin, since, pred), FAULT_DEADLINE_S * 2,
                   interval=0.1) is None:
        f.problems.append(f"{what}: no order reached the sim in {FAULT_DEADLINE_S * 2:.0f}s")
    return f


def _next_order_taken(admin: str) -> Findings:
    """The first order the new sim receives is taken (2xx) or refused on its merits, not
    for authentication: the bot's API key must work with the restarted exchange."""
    f = Findings()
    first = checks.poll(lambda: next((e for e in sim_testing.order_log(admin)
                                      if e.get("method") == "POST"
                                      and e.get("path") == "/order"), None),
                        FAULT_DEADLINE_S * 2, interval=0.1)
    if first is None:
        f.problems.append("sim restart: no order reached the new sim in "
                          f"{FAULT_DEADLINE_S * 2:.0f}s")
    elif first.get("status") in (401, 403):
        f.problems.append(f"sim restart: the new sim refused the bot's orders with "
                          f"{first.get('status')} (the position worker kept credentials "
                          "the restarted exchange does not know)")
    return f


def sim_restart(bot: Bot, row: Row, admin: str, pids: set[int]) -> str:
    """kill -9 the sim worker; wait for the supervisor's restart; returns the new admin URL."""
    pids.update(checks.worker_pids(bot))
    old = (bot.status().get("workers") or {}).get("sim", {}).get("pid") or 0
    reconnects = _feed(bot).get("reconnects") or 0
    log = sim_testing.order_log(admin)
    checks.kill9(old)
    row.earlier_orders.extend(log)      # the dead sim answers nothing more
    row.sim_restarts += 1
    f = Findings()
    if checks.poll(lambda: (w := (bot.status().get("workers") or {}).get("sim", {}))
                   .get("pid") not in (0, old) and w.get("state") == "RUNNING",
                   checks.ACTIVE_DEADLINE_S) is None:
        f.problems.append(f"sim (pid {old}) not restarted within {checks.ACTIVE_DEADLINE_S}s")
        row.after_fault(bot, admin, f"kill sim (pid {old})", pids, killed=old,
                        extra=lambda: f)
        return admin
    admin = checks.sim_admin(bot)
    f.merge(_moved(bot, "reconnects", reconnects, "sim restart"))
    f.merge(_next_order_taken(admin))
    row.after_fault(bot, admin, f"kill -9 sim (pid {old})", pids, killed=old,
                    extra=lambda: f)
    return admin


def reload_reconnect(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                     rng: random.Random) -> None:
    """Reloads while the feed is reconnecting: drop every WebSocket and refuse new ones for
    a few seconds, reload once the feed says it is disconnected; the reload must complete
    tick-exact like any other, and the feed must come back."""
    files = [bot.tmp / "rr-a.py", bot.tmp / "rr-b.py"]
    files[0].write_text(strategy_source("rr-a"))
    files[1].write_text(strategy_source("rr-b"))
    for i in range(opts.runs or 5):
        pids.update(checks.worker_pids(bot))
        f = Findings()
        sim_testing.set_fault(admin, ws_refuse_s=REFUSE_S, ws_drop=True)
        try:
            if checks.poll(lambda: not _feed(bot).get("connected"), FAULT_DEADLINE_S,
                           interval=0.01) is None:
                f.problems.append(f"reload {i + 1}: the feed never showed disconnected")
            ack = bot.command("reload", {"strategy": str(files[i % 2])}, FAULT_DEADLINE_S * 2)
            down = not _feed(bot).get("connected")
        finally:
            sim_testing.clear_faults(admin)
        rec = next((r for r in reversed(checks.reload_records(bot))
                    if r.get("command_id") == ack.get("id")), None)
        f.merge(checks.check_reloads([rec] if rec else []))
        if ack.get("result") != "ok" or rec is None:
            f.problems.append(f"reload {i + 1}: {ack.get('result')} ({ack.get('error')})")
        f.merge(_recovered(bot, f"reload {i + 1}"))
        row.after_fault(bot, admin, f"reload {i + 1} while reconnecting -> "
                        f"{ack.get('result')} (feed {'still down' if down else 'back'} at "
                        f"the ack)", pids, extra=lambda f=f: f)
