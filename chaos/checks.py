"""What must hold after each fault (live, against the bot and the sim) and after the clean stop.

Every check returns findings instead of raising: a chaos run reports everything it saw.

- live: exactly one active epoch and its worker ACTIVE, within a deadline;
- orders: at most one POST /order per (slot, window) at the sim (key: the signed order's
  ``metadata``), the journal's orders unique per (slot, window_start), and the two agree (an
  order the exchange has but the journal does not, or one the journal says the exchange
  acknowledged but the exchange never received, or that it marks FAILED although the sim
  answered its POST 2xx, is *lost*);
- final (after a clean stop): accepted intents are epoch-monotone (fencing), the strategy's
  recorded ticks have no duplicate (gaps are reported as *missed*: a crash of the strategy
  may miss ticks), every successful reload that
  is not a crash restart has ``missed_ticks == 0`` and ``duplicate_ticks == 0``, no worker
  seen during the run is still alive, no /dev/shm/noblink-<run id>-* is left.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import orjson

from position_worker.keys import order_metadata
from sim import testing as sim_testing
from supervisor.reloadlog import merged
from tests.supervisor.botctl import Bot, gaps_and_duplicates, ticks_of

T = TypeVar("T")

ACTIVE_DEADLINE_S = 45.0      # backoff (up to 8 s after four crashes) + spawn + verify
# the journal says the exchange has these (a SENDING/UNKNOWN order may never have arrived)
EXCHANGE_CONFIRMED = frozenset({"ACKED", "FILLED", "REJECTED", "SETTLED"})


@dataclass
class Findings:
    lost_orders: list[str] = field(default_factory=list)
    duplicate_orders: list[str] = field(default_factory=list)
    duplicate_ticks: list[int] = field(default_factory=list)
    missed_ticks: list[tuple[int, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)    # every other failed check
    stats: dict[str, int] = field(default_factory=dict)   # what was checked (non-vacuous)

    @property
    def ok(self) -> bool:
        return not (self.lost_orders or self.duplicate_orders or self.duplicate_ticks
                    or self.problems)

    def merge(self, other: Findings) -> None:
        # order findings are cumulative snapshots of the whole run: keep each once
        for name in ("lost_orders", "duplicate_orders", "problems"):
            mine = getattr(self, name)
            mine.extend(x for x in getattr(other, name) if x not in mine)
        if any(k.startswith("orders_") for k in other.stats):     # a newer journal view
            self.stats = {k: v for k, v in self.stats.items() if not k.startswith("orders_")}
        self.stats.update(other.stats)
        self.duplicate_ticks.extend(other.duplicate_ticks)
        self.missed_ticks.extend(other.missed_ticks)


def poll(cond: Callable[[], T], timeout: float, interval: float = 0.02) -> T | None:
    """``cond()`` once truthy, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            return None
        time.sleep(interval)


def one_active(bot: Bot) -> dict | None:
    """Status when exactly one lane is active, it carries the active epoch, its worker is
    ACTIVE and no reload is in flight or queued."""
    s = bot.status()
    st = s.get("strategy") or {}
    epoch = s.get("active_epoch") or 0
    if not epoch or st.get("reload_in_progress") or st.get("queued_reloads"):
        return None
    active = [lane for lane in (st.get("lanes") or {}).values() if lane.get("active")]
    if len(active) != 1 or active[0].get("epoch") != epoch or active[0].get("state") != "ACTIVE":
        return None
    return s


def check_live(bot: Bot, deadline: float = ACTIVE_DEADLINE_S, killed: int = 0) -> Findings:
    """One active epoch with an ACTIVE worker that evaluates a new tick, within ``deadline``;
    first, status.json must show that the ``killed`` pid is gone (else it is stale)."""
    f = Findings()
    if killed and poll(lambda: killed not in worker_pids(bot), deadline) is None:
        f.problems.append(f"status still shows the killed pid {killed} after {deadline:.0f}s")
        return f
    s = poll(lambda: one_active(bot), deadline)
    if s is None:
        st = bot.status().get("strategy") or {}
        f.problems.append(f"no single ACTIVE strategy within {deadline:.0f}s "
                          f"(active_epoch={bot.status().get('active_epoch')}, "
                          f"failed={st.get('failed')}, "
                          f"reload={st.get('reload_in_progress')})")
        return f
    lane = str(s["strategy"]["active_lane"])
    before = s["strategy"]["lanes"][lane]["evaluated"]
    if poll(lambda: ((bot.status().get("strategy") or {}).get("lanes") or {}).get(lane, {})
            .get("evaluated", 0) > before, deadline) is None:
        f.problems.append(f"the active worker (lane {lane}) evaluated nothing in {deadline:.0f}s")
    return f


def check_workers_running(bot: Bot, names: tuple[str, ...] = ("feed", "position")) -> Findings:
    f = Findings()
    for name in names:
        if poll(lambda name=name: (bot.status().get("workers") or {}).get(name, {})
                .get("state") == "RUNNING", ACTIVE_DEADLINE_S) is None:
            f.problems.append(f"worker {name} not RUNNING within {ACTIVE_DEADLINE_S:.0f}s")
    return f


def sim_admin(bot: Bot) -> str:
    return sim_testing.read_sim_info(bot.run_dir)["admin"]


def order_posts(log: list[dict]) -> collections.Counter[str]:
    """POST /order count per signed order ``metadata`` (one per (slot, window))."""
    return collections.Counter(
        str(e["body"]["order"].get("metadata")) for e in log
        if e.get("method") == "POST" and e.get("path") == "/order"
        and isinstance(e.get("body"), dict) and isinstance(e["body"].get("order"), dict))


def accepted_posts(log: list[dict]) -> set[str]:
    """``metadata`` of the POST /order requests the sim answered 2xx (it took the order)."""
    return {str(e["body"]["order"].get("metadata")) for e in log
            if e.get("method") == "POST" and e.get("path") == "/order"
            and isinstance(e.get("body"), dict) and isinstance(e["body"].get("order"), dict)
            and 200 <= (e.get("status") or 0) < 300}


def check_orders(bot: Bot, admin: str, earlier: list[dict] | None = None) -> Findings:
    """The sim's order log against the journal, for the whole run so far (``earlier``: the
    logs of sims restarted during the run)."""
    f = Findings()
    try:
        log = [*(earlier or []), *sim_testing.order_log(admin)]
        posts, taken = order_posts(log), accepted_posts(log)
    except OSError as e:
        f.problems.append(f"sim order log unreadable: {e}")
        return f
    try:
        orders = bot.journal_orders()
    except Exception as e:       # sqlite3.Error (locked, not yet created): report, go on
        f.problems.append(f"journal unreadable: {e!r}")
        return f
    f.stats.update(sim_order_posts=sum(posts.values()), journal_orders=len(orders))
    for state, n in collections.Counter(o["state"] for o in orders).items():
        f.stats[f"orders_{state}"] = n
    f.duplicate_orders.extend(f"sim: {n} x POST /order metadata={m[:18]}…"
                              for m, n in posts.items() if n > 1)
    per_window = collections.Counter((o["slot"], o["window_start"]) for o in orders)
    f.duplicate_orders.extend(f"journal: {n} orders for (slot, window_start)={k}"
                              for k, n in per_window.items() if n > 1)
    known = {order_metadata(o["slot"], o["window_start"]): o for o in orders}
    f.lost_orders.extend(f"sim has an order the journal does not: metadata={m[:18]}…"
                         for m in posts if m not in known)
    f.lost_orders.extend(
        f"journal {o['state']} (slot {o['slot']}, window {o['window_start']}) never POSTed "
        "to the sim" for m, o in known.items()
        if o["state"] in EXCHANGE_CONFIRMED and m not in posts)
    # FAILED means "never placed": the sim answering 2xx means it did take it
    f.lost_orders.extend(
        f"journal FAILED (slot {o['slot']}, window {o['window_start']}: {o['error']}) but "
        "the sim answered its POST /order 2xx" for m, o in known.items()
        if o["state"] == "FAILED" and m in taken)
    return f


IN_FLIGHT = frozenset({"SENDING", "UNKNOWN"})
RESOLVE_DEADLINE_S = 30.0


def in_flight(bot: Bot) -> set[str]:
    """Client keys of the journal's orders in flight (SENDING, UNKNOWN)."""
    return {o["client_key"] for o in bot.journal_orders() if o["state"] in IN_FLIGHT}


def check_in_flight_resolved(bot: Bot, admin: str, keys: set[str] | None = None,
                             deadline: float = RESOLVE_DEADLINE_S) -> Findings:
    """Every order the journal has in flight (SENDING, UNKNOWN; default: now) leaves that
    state within ``deadline``: the position worker looked it up. One the sim has but the
    journal still does not know the fate of is lost (a position nobody tracks)."""
    f = Findings()

    def stuck(keys: set[str]) -> list[dict]:
        return [o for o in bot.journal_orders() if o["client_key"] in keys
                and o["state"] in IN_FLIGHT]

    try:
        keys = in_flight(bot) if keys is None else keys
        if not keys or poll(lambda: not stuck(keys), deadline, interval=0.2) is not None:
            return f
        left = stuck(keys)
        posts = order_posts(sim_testing.order_log(admin))
    except Exception as e:       # sqlite3.Error, OSError: report, go on
        f.problems.append(f"in-flight check failed: {e!r}")
        return f
    for o in left:
        what = (f"journal {o['state']} for {deadline:.0f}s (slot {o['slot']}, window "
                f"{o['window_start']}, client_key {o['client_key']})")
        if order_metadata(o["slot"], o["window_start"]) in posts:
            f.lost_orders.append(f"{what}, but the sim has the order")
        else:
            f.problems.append(f"{what}, never reached the sim")
    return f


def _alive(pid: int, run_dir: Path) -> bool:
    """``pid`` runs and is one of this run's processes (its argv names the run dir)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(run_dir).encode() in cmdline


def worker_pids(bot: Bot) -> set[int]:
    return {w.get("pid") or 0 for w in (bot.status().get("workers") or {}).values()} - {0}


def reload_records(bot: Bot) -> list[dict]:
    """Every reload record, with its probation updates applied (an update line is not a
    reload: counted as one, it showed up as ``reloads_None``)."""
    path = bot.run_dir / "reloads.jsonl"
    try:
        return merged([orjson.loads(line) for line in path.read_bytes().splitlines()
                       if line.strip()])
    except FileNotFoundError:
        return bot.status().get("reloads") or []


def check_reloads(records: list[dict]) -> Findings:
    """A reload that succeeded and is not a crash restart misses and repeats no tick."""
    f = Findings()
    for r in records:
        if r.get("result") != "ok" or r.get("trigger") in ("start", "crash"):
            continue
        if r.get("missed_ticks") or r.get("duplicate_ticks"):
            f.problems.append(
                f"reload {r.get('id')} ({r.get('trigger')}, epoch {r.get('from_epoch')}->"
                f"{r.get('to_epoch')}): missed_ticks={r.get('missed_ticks')} "
                f"duplicate_ticks={r.get('duplicate_ticks')} "
                f"(last_tick_old={r.get('last_tick_old')}, "
                f"first_tick_new={r.get('first_tick_new')})")
    return f


def check_fencing(bot: Bot) -> Findings:
    """The position worker accepted intents in epoch order: once a newer epoch traded, no
    older (retired, killed) epoch's intent was accepted."""
    f = Findings()
    try:
        accepted = [r["epoch"] for r in bot.journal_intents() if r["accepted"]]
    except Exception as e:       # sqlite3.Error: report, go on
        f.problems.append(f"journal intents unreadable: {e!r}")
        return f
    f.stats["intents_accepted"] = len(accepted)
    late = [(a, b) for a, b in itertools.pairwise(accepted) if b < a]
    if late:
        f.problems.append(f"accepted intents not epoch-monotone: {late[:5]}")
    return f


def check_after_stop(bot: Bot, code: int, pids: set[int]) -> Findings:
    """After the clean stop: exit 0, no orphan, no segment, ticks unique, reloads exact."""
    f = Findings()
    if code != 0:
        f.problems.append(f"`noblink run` exited {code} on SIGTERM")
    if poll(lambda: not [p for p in pids if _alive(p, bot.run_dir)], 10.0) is None:
        f.problems.append("orphan processes after stop: "
                          f"{sorted(p for p in pids if _alive(p, bot.run_dir))}")
    left = bot.leftovers()
    if left:
        f.problems.append(f"segments left in /dev/shm: {[p.name for p in left]}")
    try:
        ticks = ticks_of(bot.final_state())
    except (OSError, ValueError, KeyError) as e:
        f.problems.append(f"no final strategy state (snapshot.json): {e!r}")
        ticks = []
    else:
        if not ticks:
            f.problems.append("the strategy recorded no tick")
    gaps, dups = gaps_and_duplicates(ticks)
    records = reload_records(bot)
    f.stats.update(ticks_recorded=len(ticks), reloads=len(records),
                   crash_restarts=sum(r.get("trigger") == "crash" for r in records),
                   pids_watched=len(pids))
    for r in records:
        key = f"reloads_{r.get('result')}"
        f.stats[key] = f.stats.get(key, 0) + 1
    f.duplicate_ticks.extend(dups)
    f.missed_ticks.extend(gaps)
    f.merge(check_reloads(records))
    f.merge(check_fencing(bot))
    return f


def alive_pids(pids: set[int], run_dir: Path) -> list[int]:
    return sorted(p for p in pids if _alive(p, run_dir))


def kill9(pid: int) -> bool:
    try:
        os.kill(pid, 9)
        return True
    except ProcessLookupError:
        return False
