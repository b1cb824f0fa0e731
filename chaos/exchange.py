"""Checks of the bot's state against the sim's ("the exchange"), and resource measurements.

- windows: every candle window in shared memory (the feed's ``windows`` table) is gap-free
  and equal, candle by candle, to the sim's Binance REST ``/api/v3/klines``;
- ledger: the journal's positions and money equal the sim's CLOB ledger (admin
  ``/accounts``): per token, the shares the sim holds or has settled equal the shares of
  the journal's FILLED and SETTLED orders; the sim's balance equals its starting balance
  minus what the journal paid (cost + fees) plus what the sim paid out; each SETTLED order's
  payout equals the sim's settlement of that token, and its pnl is payout - cost - fees;
- resources: RSS, open fds per process and /dev/shm entries of the run, to compare before
  and after a scenario.

Both checks hold only within one simulated world: a restarted sim is a new exchange (fresh
accounts, and a price history drawn from its own start), so after one they are skipped.
"""

from __future__ import annotations

import collections
import itertools
import os
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import psutil

from chaos.checks import Findings, poll
from core.errors import NoblinkError
from core.markets import INTERVAL_MS, SYMBOLS
from feed_worker.windows import N_ROWS, row_label
from sim import testing as sim_testing
from sim.context import SimConfig
from sim.exchange import MAX_SETTLEMENTS
from state.layout import WINDOW_CAPACITY, WINDOW_ROW_DT
from state.run import RunPaths
from state.segment import SHM_DIR
from state.table import TableReader
from tests.supervisor.botctl import Bot

SIM_BALANCE = float(SimConfig.balance)     # the bot starts its sim without --balance
MONEY_EPS = 1e-4               # USDC: the journal keeps floats, the sim micro-units
LEDGER_DEADLINE_S = 30.0       # a fill or a settlement reaches the journal after the sim


def _windows(bot: Bot) -> list[tuple[str, str, list[dict]]]:
    """(symbol, interval, closed candles oldest first) of every non-empty window row."""
    reader = TableReader(RunPaths(bot.run_dir, bot.run_id, SHM_DIR).seg("windows"),
                         WINDOW_ROW_DT)
    try:
        out = []
        for i in range(N_ROWS):
            row = reader.read(i, patience_s=2.0)
            n = min(int(row["count"]), WINDOW_CAPACITY)
            if not n:
                continue
            sym, iv = row_label(i).rsplit("/", 1)
            out.append((sym, iv, [{k: c[k].item() for k in ("open_time", "open", "high", "low",
                                                            "close", "volume", "trades")}
                                  for c in row["candles"][:n]]))
        return out
    finally:
        reader.close()


def _rest_klines(rest: str, symbol: str, interval: str, start_ms: int) -> dict[int, list]:
    q = urllib.parse.urlencode({"symbol": symbol, "interval": interval,
                                "startTime": start_ms, "limit": 1000})
    with urllib.request.urlopen(f"{rest}/api/v3/klines?{q}", timeout=10) as r:
        return {int(k[0]): k for k in orjson.loads(r.read())}


def check_windows(bot: Bot) -> Findings:
    """Every window gap-free and equal to the sim's REST klines (open time, OHLCV, trades)."""
    f = Findings()
    try:
        rest = sim_testing.read_sim_info(bot.run_dir)["binance_rest"]
        windows = _windows(bot)
    except (OSError, KeyError, ValueError, NoblinkError) as e:
        f.problems.append(f"windows unreadable: {e!r}")
        return f
    candles = 0
    for sym, iv, rows in windows:
        step = INTERVAL_MS[iv]
        gaps = [(a["open_time"], b["open_time"]) for a, b in itertools.pairwise(rows)
                if b["open_time"] != a["open_time"] + step]
        if gaps:
            f.problems.append(f"window {sym}/{iv}: {len(gaps)} gap(s), first {gaps[0]}")
        candles += len(rows)
        if sym not in SYMBOLS:
            continue                       # candles built from a reference price: no REST
        try:
            ref = _rest_klines(rest, sym, iv, rows[0]["open_time"])
        except OSError as e:
            f.problems.append(f"REST klines {sym}/{iv} unreadable: {e!r}")
            continue
        bad = []
        for c in rows:
            k = ref.get(c["open_time"])
            want = None if k is None else (float(k[1]), float(k[2]), float(k[3]), float(k[4]),
                                            float(k[5]), int(k[8]))
            got = (c["open"], c["high"], c["low"], c["close"], c["volume"], c["trades"])
            if want != got:
                bad.append((c["open_time"], got, want))
        if bad:
            f.problems.append(f"window {sym}/{iv}: {len(bad)} of {len(rows)} candles differ "
                              f"from the sim's REST klines, first {bad[0]}")
    f.stats.update(windows_checked=len(windows), candles_checked=candles)
    if not windows:
        f.problems.append("no candle window in shared memory")
    return f


def _ledger_problems(bot: Bot, admin: str) -> tuple[list[str], dict[str, int]]:
    accounts = [a for a in sim_testing.admin_request(admin, "GET", "/accounts")
                if a.get("positions") or a.get("settlements")
                or abs(float(a["balance"]) - SIM_BALANCE) > MONEY_EPS]
    orders = [o for o in bot.journal_orders() if o["state"] in ("FILLED", "SETTLED")]
    stats = {"ledger_accounts": len(accounts), "ledger_orders": len(orders)}
    if not accounts:
        return ([f"the journal has {len(orders)} filled orders, the sim no trading account"]
                if orders else []), stats
    if len(accounts) > 1:
        return [f"{len(accounts)} sim accounts traded (expected the bot's one)"], stats
    acc = accounts[0]
    problems = []
    held = collections.Counter({t: float(v) for t, v in acc["positions"].items()})
    paid: collections.Counter[str] = collections.Counter()
    for s in acc["settlements"]:
        held[s["token"]] += float(s["shares"])
        paid[s["token"]] += float(s["payout"])
    journal: collections.Counter[str] = collections.Counter()
    for o in orders:
        journal[o["token"]] += o["shares"]
    # the sim keeps an account's last MAX_SETTLEMENTS settlements: past that, a token the
    # journal settled and the sim no longer lists cannot be compared (its payout is taken
    # from the journal for the balance)
    truncated = len(acc["settlements"]) >= MAX_SETTLEMENTS
    forgotten = {o["token"] for o in orders if o["state"] == "SETTLED"} - set(held) \
        if truncated else set()
    stats["ledger_forgotten_tokens"] = len(forgotten)
    for token in (set(held) | set(journal)) - forgotten:
        if abs(held[token] - journal[token]) > MONEY_EPS:
            problems.append(f"token …{token[-8:]}: sim {held[token]:.6f} shares, journal "
                            f"{journal[token]:.6f}")
    spent = sum(o["cost"] + o["fees"] for o in orders)
    paid_out = sum(paid.values()) + sum(o["payout"] for o in orders if o["token"] in forgotten)
    want = SIM_BALANCE - spent + paid_out
    if abs(float(acc["balance"]) - want) > MONEY_EPS * max(1, len(orders)):
        problems.append(f"sim balance {acc['balance']} != {SIM_BALANCE} - journal cost+fees "
                        f"{spent:.6f} + payouts {paid_out:.6f} = {want:.6f}")
    settled: collections.Counter[str] = collections.Counter()
    for o in orders:
        if o["state"] == "SETTLED":
            settled[o["token"]] += o["payout"]
            if abs(o["pnl"] - (o["payout"] - o["cost"] - o["fees"])) > MONEY_EPS:
                problems.append(f"journal {o['client_key']}: pnl {o['pnl']} != payout - cost "
                                "- fees")
    for token, payout in settled.items():
        if token not in forgotten and abs(paid.get(token, 0.0) - payout) > MONEY_EPS:
            problems.append(f"token …{token[-8:]}: journal payout {payout:.6f}, sim "
                            f"{paid.get(token, 0.0):.6f}")
    stats["ledger_settled"] = sum(1 for o in orders if o["state"] == "SETTLED")
    return problems, stats


def check_ledger(bot: Bot, admin: str, deadline: float = LEDGER_DEADLINE_S) -> Findings:
    """The journal's positions and money against the sim's ledger; retried until they agree
    or ``deadline`` (a fill or settlement is booked at the sim first)."""
    f = Findings()
    last: list[tuple[list[str], dict[str, int]]] = []

    def agree() -> bool:
        try:
            last[:] = [_ledger_problems(bot, admin)]
        except Exception as e:       # sqlite3.Error, OSError: report what we saw
            last[:] = [([f"ledger unreadable: {e!r}"], {})]
        return not last[0][0]

    poll(agree, deadline, interval=0.5)
    problems, stats = last[0]
    f.problems.extend(f"ledger: {p}" for p in problems)
    f.stats.update(stats)
    return f


# -- resources ------------------------------------------------------------------------------

def run_entries(bot: Bot) -> list[str]:
    """This run's /dev/shm entries (segments and wake-up FIFOs)."""
    return sorted(p.name for p in bot.leftovers())


def resources(bot: Bot) -> dict:
    """RSS (MiB) and open fds per process of the run (the supervisor and every child in
    status.json), the totals, and the run's /dev/shm entries."""
    procs: dict[str, int] = {"supervisor": bot.proc.pid}
    procs.update({n: w.get("pid") or 0 for n, w in (bot.status().get("workers") or {}).items()})
    out: dict = {"rss_mb": {}, "fds": {}, "pids": {}}
    for name, pid in procs.items():
        if not pid:
            continue
        try:
            p = psutil.Process(pid)
            out["rss_mb"][name] = round(p.memory_info().rss / 2**20, 1)
            out["fds"][name] = len(os.listdir(f"/proc/{pid}/fd"))
            out["pids"][name] = pid
        except (psutil.Error, OSError):
            continue
    out["rss_mb_total"] = round(sum(out["rss_mb"].values()), 1)
    out["fds_total"] = sum(out["fds"].values())
    entries = run_entries(bot)
    out["shm_entries"] = len(entries)
    out["shm_bells"] = sum(".bell" in e for e in entries)
    return out


FD_GROWTH_LIMIT = 32           # per process that lived through the whole scenario


def compare_resources(before: dict, after: dict) -> tuple[Findings, dict]:
    """Growth between two :func:`resources` snapshots: a problem when a process that lived
    through the scenario (same pid) holds ``FD_GROWTH_LIMIT`` more fds, or the run has more
    segments in /dev/shm. Wake-up FIFOs (``<ring>.bell<i>``) are not: there is one per
    reader slot, left by a killed reader for the next one in that slot (state/ring.py), so
    they are bounded by the slots, whatever the number of faults; their growth is reported."""
    f = Findings()
    growth: dict = {"rss_mb_total": round(after["rss_mb_total"] - before["rss_mb_total"], 1),
                    "fds_total": after["fds_total"] - before["fds_total"],
                    "shm_entries": after["shm_entries"] - before["shm_entries"],
                    "rss_mb": {}, "fds": {}}
    for name, pid in after["pids"].items():
        if before["pids"].get(name) != pid:
            continue                       # restarted: not comparable
        growth["rss_mb"][name] = round(after["rss_mb"][name] - before["rss_mb"][name], 1)
        growth["fds"][name] = after["fds"][name] - before["fds"][name]
        if growth["fds"][name] > FD_GROWTH_LIMIT:
            f.problems.append(f"{name} (pid {pid}) fds grew {before['fds'][name]} -> "
                              f"{after['fds'][name]}")
    segments = [r["shm_entries"] - r.get("shm_bells", 0) for r in (before, after)]
    if segments[1] > segments[0]:
        f.problems.append(f"/dev/shm segments of the run grew {segments[0]} -> {segments[1]}")
    return f, growth


def shm_names(path: Path = SHM_DIR) -> set[str]:
    return {p.name for p in path.glob("noblink-*")}
