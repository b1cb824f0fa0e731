"""broken-strategies: deploy every broken kind; the running strategy must survive each.

- botctl's BROKEN (syntax, import, raising ``__init__``/``evaluate``/``migrate``, a
  ``get_state`` that does not serialise, a hanging import): the verification refuses them,
  the reload is ``rolled_back`` and the previous version trades on, untouched;
- raising after the flip (passes the verification, then raises on every evaluation): the
  probation reverts it (``reverted``);
- leaking memory after the flip (keeps 8 MiB more on every evaluation, up to a cap so the
  machine survives the experiment) and blocking the event loop after the flip
  (``time.sleep`` in ``evaluate``, longer than the heartbeat timeout): the supervisor must
  stop them (worker restarted or version reverted) within ``WATCH_S``.

Each bad version records every tick before it misbehaves, so the strategy's tick history
stays checkable (gap-free) across the whole scenario. Whatever the outcome, the good
version is active again before the next kind (`reload --previous` when the supervisor did
nothing), and a missing reaction is a finding.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from pathlib import Path

from chaos import checks
from chaos.checks import Findings
from chaos.row import ACK_DEADLINE_S, Options, Row, strategy_source
from tests.supervisor.botctl import BROKEN, Bot

VERIFY_TIMEOUT_S = 10.0        # reload --timeout: the hanging import is killed after it
AFTER_FLIP_CALLS = 64          # evaluations (4 ticks of 16 slots) before misbehaving
WATCH_S = 45.0                 # heartbeat timeout (15 s) + TERM grace (10 s) + restart
LEAK_CHUNK = 8 << 20
LEAK_CAP = 1536 << 20          # stop growing here: the experiment must not take the VM down
BLOCK_S = 20.0                 # > heartbeat_timeout (15 s)


def _after_flip(version: str, misbehave: str, module: str = "") -> str:
    """botctl's strategy that records the tick, then (after AFTER_FLIP_CALLS) misbehaves."""
    return strategy_source(version, module=module).replace(
        "        if view.accepting and",
        f"        if self.calls > {AFTER_FLIP_CALLS}:\n{misbehave}        if view.accepting and",
        1)


LIVE_BROKEN: dict[str, str] = {
    "raising after the flip": _after_flip(
        "late-raise", "            raise RuntimeError('raises once trading')\n"),
    "leaking memory": _after_flip(
        "leak", "            if sum(map(len, LEAK)) < " + str(LEAK_CAP) + ":\n"
        "                LEAK.append(b'x' * " + str(LEAK_CHUNK) + ")\n",
        module="LEAK = []"),
    "blocking evaluate": _after_flip("block", f"            time.sleep({BLOCK_S})\n"),
}


SMALL = ("syntax error", "get_state not serialisable")     # opts.small: the test's sample
SMALL_LIVE = ("raising after the flip",)


def _active_version(bot: Bot) -> tuple[int, str]:
    s = bot.status()
    return s.get("active_epoch") or 0, (s.get("strategy") or {}).get("sha256") or ""


def _strategy_rss(bot: Bot) -> float:
    s = bot.status()
    lane = (s.get("strategy") or {}).get("active_lane")
    return ((s.get("workers") or {}).get(f"strategy{lane}") or {}).get("rss_mb") or 0.0


def broken_strategies(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
                      rng: random.Random) -> None:
    good = bot.tmp / "good.py"
    good.write_text(strategy_source("chaos-a"))
    history = ["chaos-a"]
    kinds = {k: BROKEN[k] for k in SMALL} if opts.small else BROKEN
    live = {k: LIVE_BROKEN[k] for k in SMALL_LIVE} if opts.small else LIVE_BROKEN
    for kind, source in kinds.items():
        pids |= checks.worker_pids(bot)
        epoch, sha = _active_version(bot)
        path = bot.tmp / f"broken-{len(history)}.py"
        path.write_text(source)
        ack = bot.command("reload", {"strategy": str(path), "timeout": VERIFY_TIMEOUT_S},
                          ACK_DEADLINE_S)
        f = Findings()
        if ack.get("result") != "rolled_back":
            f.problems.append(f"{kind}: reload {ack.get('result')}, not rolled_back")
        if _active_version(bot) != (epoch, sha):
            f.problems.append(f"{kind}: the active version changed ({epoch} -> "
                              f"{_active_version(bot)[0]})")
        row.after_fault(bot, admin, f"{kind} -> {ack.get('result')}: "
                        f"{str(ack.get('error'))[-80:]!r}", pids, extra=lambda f=f: f)
    for kind, source in live.items():
        f, outcome = _live(bot, kind, source, good, row)
        for v in outcome:
            if v != history[-1]:
                history.append(v)
        pids |= checks.worker_pids(bot)
        row.after_fault(bot, admin, kind, pids, extra=lambda f=f: f)
    row.expect_history = history
    row.gap_free = True


def _live(bot: Bot, kind: str, source: str, good: Path, row: Row
          ) -> tuple[Findings, list[str]]:
    """Deploy a version that misbehaves once trading; wait for the supervisor to act."""
    f = Findings()
    version = re.search(r"^VERSION = '(.+)'$", source, re.M).group(1)  # type: ignore[union-attr]
    path = bot.tmp / f"{version}.py"
    path.write_text(source)
    ack = bot.command("reload", {"strategy": str(path)}, ACK_DEADLINE_S)
    if ack.get("result") != "ok":
        f.problems.append(f"{kind}: reload {ack.get('result')} ({ack.get('error')}): it "
                          "should pass the verification")
        return f, []
    epoch = bot.status().get("active_epoch") or 0
    t0 = time.monotonic()
    peak = [0.0]

    def acted() -> str | None:
        s = bot.status()
        peak[0] = max(peak[0], _strategy_rss(bot))
        recs = [r for r in checks.reload_records(bot) if (r.get("from_epoch") or 0) >= epoch]
        for r in recs:
            if r.get("trigger") in ("probation", "crash") and r.get("result") in ("ok",
                                                                                  "reverted"):
                return f"{r.get('trigger')} -> {r.get('result')}"
        if (s.get("active_epoch") or 0) not in (0, epoch):
            return f"active epoch {epoch} -> {s.get('active_epoch')}"
        return None

    how = checks.poll(acted, WATCH_S, interval=0.25)
    took = time.monotonic() - t0
    row.measures.setdefault("live_broken", {})[kind] = {
        "reaction": how, "seconds": round(took, 1), "peak_rss_mb": peak[0]}
    if how is None:
        f.problems.append(f"{kind}: the supervisor did nothing in {WATCH_S:.0f}s (strategy "
                          f"RSS peaked at {peak[0]:.0f} MiB); reverted by hand")
    else:
        row.notes.append(f"{kind}: {how} after {took:.1f}s (strategy RSS peak "
                         f"{peak[0]:.0f} MiB)")
    # whatever happened: the good version active again (a crash restart of the bad one,
    # or no reaction at all, leaves the bad one in place)
    if (bot.status().get("strategy") or {}).get("sha256") != _sha(good):
        ack = bot.command("reload", {"strategy": str(good)}, ACK_DEADLINE_S)
        if ack.get("result") != "ok":
            f.problems.append(f"{kind}: could not go back to the good version: "
                              f"{ack.get('result')} ({ack.get('error')})")
    return f, [version, "chaos-a"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
