"""Footprint of an idle bot at 1x: memory, CPU, file descriptors, shared memory.

Used by bench/run_all.py. A fresh bot (``noblink run --speed 1``, its own temporary run
dir, the HTTP API on a free port as a normal run has it) starts; once a strategy is ACTIVE
and the tick moves, the bench waits ``SETTLE_S`` and then, with psutil over the
supervisor and its whole process tree (each process named by its ``-m`` module, the
strategy workers by lane):

- ``idle_cpu_pct.<process>``: user + system CPU time over ``seconds`` of wall time, in % of
  one core (``cpu_times()`` at both ends; the bench sleeps meanwhile);
- ``rss_mb.<process>`` and ``rss_mb_total`` (the bot's processes; the simulator stands in for
  the internet and is reported apart, ``rss_mb_sim``); RSS counts shared pages in every
  process that maps them (the interpreter's shared libraries, the shared-memory segments it
  touched), so ``pss_mb_total`` (proportional set size, shared pages split between their
  users) is given beside it;
- ``fds.<process>``: open file descriptors;
- ``shm_bytes``: the size of the run's /dev/shm segments (and their bells), which
  ``posix_fallocate`` allocated in full.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psutil

from bench.reload import BenchError, Bot
from state.segment import PREFIX, SHM_DIR

SETTLE_S = 5.0
START_TIMEOUT_S = 90.0
NOT_WORKERS = ("sim",)           # not part of a production bot


def _name(p: psutil.Process, root_pid: int) -> str:
    if p.pid == root_pid:
        return "supervisor"
    cmd = p.cmdline()
    mod = cmd[cmd.index("-m") + 1] if "-m" in cmd[:-1] else (cmd[0] if cmd else "?")
    name = {"feed_worker": "feed", "position_worker": "position", "api_worker": "api",
            "strategy_worker": "strategy"}.get(mod, mod)
    if name == "strategy" and "--lane" in cmd[:-1]:
        name += cmd[cmd.index("--lane") + 1]
    return name


def _tree(root: psutil.Process) -> dict[str, psutil.Process]:
    out: dict[str, psutil.Process] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            name = _name(p, root.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        while name in out:
            name += "+"
        out[name] = p
    return out


def measure(bot: Bot, seconds: float, say: Callable[[str], None],
            settle_s: float = SETTLE_S) -> dict[str, Any]:
    """Start ``bot`` (a ``Bot(1.0, ...)``, not started yet) and measure it. The caller stops
    it."""
    bot.start()
    st = bot.wait_ready(START_TIMEOUT_S)
    say(f"  1x bot ready in {time.monotonic() - bot.started_mono:.1f}s (run {bot.run_id}, "
        f"tick {st.get('tick')}); settling {settle_s:.0f}s, then {seconds:.0f}s idle")
    time.sleep(settle_s)
    assert bot.proc is not None
    root = psutil.Process(bot.proc.pid)
    procs = _tree(root)
    t0 = time.monotonic()
    cpu0 = {n: p.cpu_times() for n, p in procs.items()}
    time.sleep(seconds)
    wall = time.monotonic() - t0
    res: dict[str, Any] = {"idle_cpu_pct": {}, "rss_mb": {}, "pss_mb": {}, "fds": {},
                           "threads": {}}
    gone = []
    for n, p in procs.items():
        try:
            with p.oneshot():
                c1 = p.cpu_times()
                full = p.memory_full_info()
                fds = p.num_fds()
                threads = p.num_threads()
        except psutil.NoSuchProcess:
            gone.append(n)
            continue
        c0 = cpu0[n]
        res["idle_cpu_pct"][n] = round((c1.user + c1.system - c0.user - c0.system)
                                       / wall * 100, 2)
        res["rss_mb"][n] = round(full.rss / 2**20, 1)
        res["pss_mb"][n] = round(full.pss / 2**20, 1)
        res["fds"][n] = fds
        res["threads"][n] = threads
    now = _tree(root)
    if gone or set(now) != set(procs):
        raise BenchError(f"footprint: the process tree changed while measuring "
                         f"(gone: {gone}, before: {sorted(procs)}, after: {sorted(now)})")
    bot_procs = [n for n in res["rss_mb"] if n not in NOT_WORKERS]
    res["rss_mb_total"] = round(sum(res["rss_mb"][n] for n in bot_procs), 1)
    res["pss_mb_total"] = round(sum(res["pss_mb"][n] for n in bot_procs), 1)
    res["rss_mb_sim"] = res["rss_mb"].get("sim")
    res["rss_mb_total_with_sim"] = round(sum(res["rss_mb"].values()), 1)
    segs = sorted(SHM_DIR.glob(f"{PREFIX}{bot.run_id}-*"))
    res["shm_bytes"] = sum(s.stat().st_size for s in segs)
    res["shm_allocated_bytes"] = sum(s.stat().st_blocks * 512 for s in segs)
    res["shm_segments"] = {s.name.removeprefix(f"{PREFIX}{bot.run_id}-"): s.stat().st_size
                           for s in segs}
    res["seconds"] = round(wall, 1)
    res["speed"] = 1
    res["worker_processes"] = bot_procs
    return res
