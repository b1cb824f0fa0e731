"""The `noblink` command: one entry point, a subcommand per concern.

    noblink run [--mode sim|paper|live] [--live] [--speed N] [--run-dir DIR] ...
    noblink reload [--strategy FILE | --previous | --to SHA] [--params JSON] [--shadow N]
                   [--dry-run] [--timeout S] [--json] [--run-dir DIR]
    noblink pause | resume | stop [--run-dir DIR]
    noblink status [--json] [--run-dir DIR]
    noblink sim [--speed N] [--seed S] [--port-base P] [--run-dir DIR]
    noblink sim-fault ...
    noblink inspect [--run-dir DIR] [--json] [--watch]
    noblink clean           remove segments left by dead runs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(argv: list[str]) -> int:
    from core.proc import setup_logging
    from state.run import default_run_dir
    from supervisor.arbiter import Supervisor, SupervisorConfig

    ap = argparse.ArgumentParser(prog="noblink run", description="Run the whole bot.")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--mode", choices=("sim", "paper", "live"), default="sim")
    ap.add_argument("--live", action="store_true", help="required with --mode live")
    ap.add_argument("--speed", type=float, default=1.0, help="sim clock speed (sim mode)")
    ap.add_argument("--seed", type=int, default=1, help="sim price seed (sim mode)")
    ap.add_argument("--strategy", type=Path, default=None, help="strategy file")
    ap.add_argument("--params", default="{}", help="strategy params (JSON object)")
    ap.add_argument("--stake", type=float, default=5.0)
    args = ap.parse_args(argv)
    if args.mode == "live" and not args.live:
        print("noblink run: --mode live trades real money and needs --live as well",
              file=sys.stderr)
        return 2
    setup_logging()
    cfg = SupervisorConfig(run_dir=args.run_dir or default_run_dir(), mode=args.mode,
                           live=args.live, speed=args.speed, seed=args.seed,
                           strategy=args.strategy, params=args.params, stake=args.stake)
    return Supervisor(cfg).run()


def _clean(argv: list[str]) -> int:
    from state.run import RunPaths
    from state.segment import SHM_DIR, scan_segments

    ap = argparse.ArgumentParser(prog="noblink clean",
                                 description="Remove segments of dead runs.")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args(argv)
    runs: dict[str, list] = {}
    for info in scan_segments():
        runs.setdefault(info.run_id, []).append(info)
    removed = 0
    for run_id, infos in runs.items():
        if any(i.creator_alive for i in infos):
            continue                     # some owner of that run still lives: not stale
        if args.dry_run:
            for i in infos:
                print(f"would remove {i.path}")
            continue
        for p in RunPaths(Path("."), run_id, SHM_DIR).remove_segments():
            print(f"removed {p}")
            removed += 1
    print(f"{removed} stale files removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return _run(rest)
    if cmd == "sim":
        from sim.cli import main as sim_main
        return sim_main(rest)
    if cmd == "sim-fault":
        from sim.cli import fault_main
        return fault_main(rest)
    if cmd == "inspect":
        from state.inspect import main as inspect_main
        return inspect_main(rest)
    if cmd == "clean":
        return _clean(rest)
    if cmd == "reload":
        from supervisor.ctl import reload_main
        return reload_main(rest)
    if cmd in ("pause", "resume", "stop"):
        from supervisor.ctl import simple_main
        return simple_main(cmd, rest)
    if cmd == "status":
        from supervisor.ctl import status_main
        return status_main(rest)
    print(f"noblink: unknown command {cmd!r} (try --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
