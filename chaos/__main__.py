"""`python -m chaos [--only NAME] [--runs N] [--speed S] [--seed N] [--soak-s S] [--keep]`
(`make chaos`: every scenario but soak; `make chaos-soak`: the soak).

Runs the scenarios (chaos/scenarios.py), prints scenario / runs / survived / lost /
duplicates (and missed ticks), writes the same data to bench/results/chaos.json and exits
1 on any loss or duplicate, 2 if a check failed without a loss, 0 otherwise.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import orjson

from chaos.scenarios import DEFAULT, SCENARIOS, Options, Row, run

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "chaos.json"
COLUMNS = ("scenario", "runs", "survived", "lost", "duplicates", "missed")


def table(rows: list[Row]) -> str:
    data = [[str(r.to_json()[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(d[i]) for d in data)) for i, c in enumerate(COLUMNS)]
    line = "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(COLUMNS, widths, strict=True)))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                      for i, (v, w) in enumerate(zip(d, widths, strict=True))) for d in data]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m chaos", description="kill -9, faults, "
                                 "broken code and hostile input against a real bot on the sim")
    ap.add_argument("--only", choices=sorted(SCENARIOS), action="append",
                    help="run only this scenario (repeatable; default: all but soak)")
    ap.add_argument("--runs", type=int, default=None,
                    help="faults per scenario (default: each its own: 30 strategy kills, "
                         "10 feed kills, 4+4+4 position kills, 3 supervisor kills, 50 "
                         "reloads in the storm, 5 while reconnecting)")
    ap.add_argument("--speed", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=None, help="default: from the clock")
    ap.add_argument("--soak-s", type=float, default=600.0,
                    help="soak: wall seconds of trading (default 600)")
    ap.add_argument("--reload-every-s", type=float, default=30.0,
                    help="soak: a reload this often (default 30 s)")
    ap.add_argument("--keep", action="store_true", help="keep every run dir (else: only "
                    "those of scenarios with findings)")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int(time.time()) % 100_000
    opts = Options(speed=a.speed, seed=seed, runs=a.runs, soak_s=a.soak_s,
                   reload_every_s=a.reload_every_s)
    rng = random.Random(seed)
    print(f"chaos: seed {seed}, speed {a.speed}", flush=True)
    rows = []
    for name in a.only or list(DEFAULT):
        print(f"-- {name} ...", flush=True)
        row = run(name, opts, rng, keep=a.keep)
        rows.append(row)
        for event in row.events:
            print(f"   {event}", flush=True)
        for note in row.notes:
            print(f"   {note}", flush=True)
        f = row.findings
        for label, items in (("LOST", f.lost_orders), ("DUPLICATE", f.duplicate_orders),
                             ("DUPLICATE TICK", f.duplicate_ticks), ("PROBLEM", f.problems)):
            for item in items:
                print(f"   {label}: {item}", flush=True)
        print(f"   {row.runs} runs, {row.survived} survived, {row.seconds:.0f}s; checked: "
              + ", ".join(f"{k} {v}" for k, v in f.stats.items()), flush=True)
    print()
    print(table(rows))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(orjson.dumps(
        {"seed": seed, "speed": a.speed, "runs": a.runs, "rows": [r.to_json() for r in rows]},
        option=orjson.OPT_INDENT_2))
    print(f"\n{RESULTS}")
    if any(r.lost for r in rows):
        return 1
    if any(r.survived < r.runs or not r.findings.ok for r in rows):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
