"""soak: trade for ``opts.soak_s`` wall seconds with a reload every ``opts.reload_every_s``
(alternating two versions), sampling RSS (per process and total), open fds and the run's
/dev/shm entries; the growth goes to the row's notes and ``measures`` (chaos.json).

Not in `make chaos` (it takes its own ten minutes): `make chaos-soak`. The long-lived
processes (sim, feed, position, supervisor) keep their pids for the whole run, so their
growth is a leak candidate; the strategy's pid changes with every reload.
"""

from __future__ import annotations

import random
import time

from chaos import checks, exchange
from chaos.row import ACK_DEADLINE_S, Options, Row, strategy_source
from tests.supervisor.botctl import Bot

SAMPLES = 10                   # resource samples over the run (besides start and end)


def soak(bot: Bot, row: Row, admin: str, pids: set[int], opts: Options,
         rng: random.Random) -> None:
    files = [bot.tmp / "soak-a.py", bot.tmp / "soak-b.py"]
    files[0].write_text(strategy_source("soak-a"))
    files[1].write_text(strategy_source("soak-b"))
    start = exchange.resources(bot)
    samples = [{"t": 0.0, **_brief(start)}]
    t0 = time.monotonic()
    next_sample = opts.soak_s / SAMPLES
    i = 0
    while (now := time.monotonic() - t0) < opts.soak_s:
        time.sleep(max(0.0, min(opts.reload_every_s - now % opts.reload_every_s,
                                opts.soak_s - now)))
        if time.monotonic() - t0 >= opts.soak_s:
            break
        pids |= checks.worker_pids(bot)
        ack = bot.command("reload", {"strategy": str(files[i % 2])}, ACK_DEADLINE_S)
        rec = next((r for r in reversed(checks.reload_records(bot))
                    if r.get("command_id") == ack.get("id")), None)
        f = checks.check_reloads([rec] if rec else [])
        if ack.get("result") != "ok" or rec is None:
            f.problems.append(f"reload {i + 1}: {ack.get('result')} ({ack.get('error')})")
        row.after_fault(bot, admin, f"reload {i + 1} -> {ack.get('result')}", pids,
                        extra=lambda f=f: f)
        i += 1
        if time.monotonic() - t0 >= next_sample:
            samples.append({"t": round(time.monotonic() - t0, 1),
                            **_brief(exchange.resources(bot))})
            next_sample += opts.soak_s / SAMPLES
    end = exchange.resources(bot)
    samples.append({"t": round(time.monotonic() - t0, 1), **_brief(end)})
    found, growth = exchange.compare_resources(start, end)
    row.measures.update(soak_s=opts.soak_s, reloads=i, samples=samples,
                        soak_growth=growth)
    row.notes.append(
        f"soak {opts.soak_s:.0f}s, {i} reloads: RSS total {start['rss_mb_total']} -> "
        f"{end['rss_mb_total']} MiB, long-lived " + ", ".join(
            f"{n} {start['rss_mb'][n]}->{end['rss_mb'][n]} MiB/{start['fds'][n]}->"
            f"{end['fds'][n]} fds" for n in growth["rss_mb"])
        + f"; /dev/shm entries {start['shm_entries']} -> {end['shm_entries']}")
    row.findings.merge(found)


def _brief(r: dict) -> dict:
    return {"rss_mb_total": r["rss_mb_total"], "fds_total": r["fds_total"],
            "shm_entries": r["shm_entries"], "rss_mb": r["rss_mb"], "fds": r["fds"]}
