"""supervisor-kill: kill -9 the supervisor while the strategy trades, then warm-start it.

Each round deploys the other of two versions (so the strategy's ``history`` grows by one
entry per round), lets it trade, and kills the supervisor with -9. Its children must follow
it (PR_SET_PDEATHSIG: the strategy leaves a final snapshot), the segments stay, and a new
`noblink run` on the same run directory adopts the run: same run id, a larger epoch, the
strategy's state from shared memory, the position worker's from its journal.

The sim is a child too, so each round also restarts the simulated exchange: a new one with
an empty order log. The dead sim's log is read right after the kill (the sim outlives the
supervisor by the moment its SIGTERM takes) and kept in ``row.earlier_orders``.
"""

from __future__ import annotations

import random
import subprocess
import time

from chaos import checks
from chaos.row import (
    ACK_DEADLINE_S,
    FAULT_GAP_S,
    START_DEADLINE_S,
    Options,
    Row,
    strategy_source,
)
from sim import testing as sim_testing
from tests.supervisor.botctl import Bot

ORPHAN_DEADLINE_S = 20.0


def _last_log(admin: str, seen: list[dict]) -> list[dict]:
    """The dying sim's order log: fetched until the sim stops answering."""
    deadline = time.monotonic() + ORPHAN_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            seen = sim_testing.order_log(admin, since=0)
        except OSError:
            return seen
        time.sleep(0.01)
    return seen


def warm_start(bot: Bot) -> None:
    """`noblink run` again on the same run directory, as systemd restarts it: the same
    arguments but ``--strategy`` (which would start that file instead of the version that
    was active last)."""
    args = list(bot.proc.args)                  # type: ignore[arg-type]
    if "--strategy" in args:
        i = args.index("--strategy")
        del args[i:i + 2]
    with open(bot.log, "ab") as out:
        bot.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def supervisor_kill(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                    rng: random.Random) -> None:
    files = [bot.tmp / "sk-a.py", bot.tmp / "sk-b.py"]
    for i, f in enumerate(files):
        f.write_text(strategy_source(f"sk-{'ab'[i]}"))
    run_id = bot.run_id
    deployed: list[str] = []
    for i in range(opts.runs or 3):
        ack = bot.command("reload", {"strategy": str(files[i % 2])}, ACK_DEADLINE_S)
        if ack.get("result") == "ok":
            deployed.append(f"sk-{'ab'[i % 2]}")
        else:
            row.notes.append(f"round {i + 1}: reload {ack.get('result')}: {ack.get('error')}")
        bot.wait_ticks(2)
        time.sleep(rng.uniform(*FAULT_GAP_S))
        epoch = bot.status().get("active_epoch", 0)
        pids |= checks.worker_pids(bot) | {bot.proc.pid}
        before = checks.worker_pids(bot) | {bot.proc.pid}
        log = sim_testing.order_log(admin)
        checks.kill9(bot.proc.pid)
        bot.proc.wait(30)
        row.earlier_orders.extend(_last_log(admin, log))
        row.sim_restarts += 1
        left = checks.poll(lambda b=before: not checks.alive_pids(b, bot.run_dir),
                           ORPHAN_DEADLINE_S)
        what = f"kill {i + 1} (supervisor, epoch {epoch})"
        if left is None:
            row.findings.problems.append(
                f"{what}: orphans {checks.alive_pids(before, bot.run_dir)} "
                f"{ORPHAN_DEADLINE_S:.0f}s after the supervisor died")
        if not bot.leftovers():
            row.findings.problems.append(f"{what}: the segments went with the supervisor "
                                         "(nothing to adopt)")
        warm_start(bot)
        up = checks.poll(lambda: bot.status().get("pid") == bot.proc.pid
                         and checks.one_active(bot), START_DEADLINE_S)
        if up is None:
            row.findings.problems.append(f"{what}: the warm start never became active")
            row.notes.append(bot.tail(1500))
            return
        admin = checks.sim_admin(bot)
        if up.get("run_id") != run_id or up.get("active_epoch", 0) <= epoch:
            row.findings.problems.append(
                f"{what}: not adopted (run {up.get('run_id')} vs {run_id}, epoch "
                f"{up.get('active_epoch')} vs {epoch})")
        row.after_fault(bot, admin, what, pids)
    row.findings.stats["versions_deployed"] = len(deployed)
    row.expect_history = ["chaos-a", *deployed]


def check_history(history: list[str], expected: list[str]) -> list[str]:
    """The strategy's version history (one entry per version change) must be exactly the
    versions that became active, in order: an entry lost means state was lost."""
    want = [v for i, v in enumerate(expected) if i == 0 or expected[i - 1] != v]
    return [] if history == want else [f"strategy history {history} != deployed {want}"]
