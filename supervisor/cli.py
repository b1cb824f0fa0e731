"""The `noblink` command: one entry point, a subcommand per concern.

    noblink run [--config noblink.toml] [--assets btc,eth] [--mode sim|paper|live] [--live]
                [--speed N] [--run-dir DIR] ...
    noblink reload [--strategy FILE | --previous | --to SHA] [--params JSON] [--shadow N]
                   [--dry-run] [--timeout S] [--json] [--run-dir DIR]
    noblink params get [--json] [--run-dir DIR]
    noblink params set JSON [--json] [--run-dir DIR]
    noblink pause | resume | kill | stop [--json] [--timeout S] [--run-dir DIR]
    noblink status [--json] [--run-dir DIR]
    noblink positions [--json] [--limit N] [--run-dir DIR]
    noblink logs [NAME] [-f|--follow] [-n N] [--run-dir DIR]
    noblink sim [--speed N] [--seed S] [--port-base P] [--run-dir DIR]
    noblink sim-fault ...
    noblink inspect [--run-dir DIR] [--json] [--watch]
    noblink clean           remove segments left by dead runs

`params set` reloads the current strategy version with new params (verified like any reload).
`kill` pauses and cancels every open order at the venue, acknowledged once the position worker
confirms; `resume` clears pause and kill. `positions` reads the journal (open orders, recent
settled ones with PnL), `logs` the workers' logs in <run dir>/logs/ (all of them, each line
prefixed by its name, unless NAME is given; --follow until Ctrl-C).

Exit codes of the commands and queries against a bot: 0 ok, 1 refused, rolled back or failed
(the reason on stderr), 2 bad usage, 3 no bot answered (docs/commands.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import NoblinkError
from core.risklimits import RiskLimitsError, resolve, worker_args
from core.risklimits import add_flags as add_risk_flags
from core.risklimits import load_file as load_risk_file

if TYPE_CHECKING:
    from supervisor.arbiter import SupervisorConfig


def run_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="noblink run", description="Run the whole bot.")
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--config", type=Path, default=None,
                    help="the universe (noblink.toml: assets, windows, Chainlink symbol, "
                    "candle source; default: btc eth sol xrp doge bnb hype x 5m/15m)")
    ap.add_argument("--assets", default=None, metavar="SLUG,...",
                    help="trade only these assets of the universe (e.g. btc,eth)")
    ap.add_argument("--mode", choices=("sim", "paper", "live"), default="sim")
    ap.add_argument("--live", action="store_true", help="required with --mode live")
    ap.add_argument("--speed", type=float, default=1.0, help="sim clock speed (sim mode)")
    ap.add_argument("--seed", type=int, default=1, help="sim price seed (sim mode)")
    ap.add_argument("--strategy", type=Path, default=None,
                    help="strategy file (default: the version active last in this run "
                    "directory, else strategies/momentum.py)")
    ap.add_argument("--params", default=None,
                    help="strategy params (JSON object; default: those of the version "
                    "that starts)")
    ap.add_argument("--stake", type=float, default=5.0)
    ap.add_argument("--secret-file", type=Path, default=None, metavar="FILE",
                    help="wallet and CLOB credentials (paper/live): a JSON file of this user, "
                    "mode 0600, handed to the position worker only (else the NOBLINK_* "
                    "environment variables)")
    ap.add_argument("--api", default="127.0.0.1:8787", metavar="HOST:PORT",
                    help="the HTTP API and dashboard (default 127.0.0.1:8787; port 0: any "
                    "free port); a non-loopback host needs --api-allow-remote")
    ap.add_argument("--api-allow-remote", action="store_true",
                    help="allow --api on a non-loopback address (then say so in the log)")
    ap.add_argument("--api-public-read", action="store_true",
                    help="GET routes without the token (mutating ones always need it)")
    ap.add_argument("--no-api", action="store_true", help="run without the HTTP API")
    ap.add_argument("--restart-intensity", type=_intensity, default=(5, 60.0),
                    metavar="N/SECONDS", help="give up on a worker restarted N times within "
                    "SECONDS (default 5/60; a dead feed or position worker then stops the bot)")
    ap.add_argument("--strategy-rss-limit", type=float, default=1024.0, metavar="MB",
                    help="kill a strategy worker over this resident size (default 1024)")
    # risk limits: [risk] in --config, a flag wins; unset: the position worker's defaults
    # (docs/position_worker.md, Risk)
    add_risk_flags(ap.add_argument_group(
        "risk limits (a flag wins over [risk] in --config; unset: the position worker's "
        "defaults)"))
    return ap


def _intensity(text: str) -> tuple[int, float]:
    try:
        n, _, secs = text.partition("/")
        out = int(n), float(secs)
    except ValueError:
        out = (0, 0.0)
    if out[0] < 1 or not 0 < out[1] <= 86_400:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N/SECONDS, e.g. 5/60")
    return out


def _run(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    if args.mode == "live" and not args.live:
        print("noblink run: --mode live trades real money and needs --live as well",
              file=sys.stderr)
        return 2
    # ORDER MATTERS: the universe sizes the slots and every shared-memory layout when
    # core.markets is imported, so it is installed before anything imports the bot's modules
    # (the supervisor, the state layer). The supervisor then hands it to every child through
    # <run dir>/universe.json and $NOBLINK_UNIVERSE.
    from core.universe import UniverseError, current, install, load_file
    try:
        universe = load_file(args.config) if args.config is not None else current()
        if args.assets is not None:
            universe = universe.select([a.strip() for a in args.assets.split(",") if a.strip()])
        risk = resolve(load_risk_file(args.config) if args.config is not None else {}, args)
    except (UniverseError, RiskLimitsError) as e:
        print(f"noblink run: {e}", file=sys.stderr)
        return 2
    install(universe)

    from core.proc import setup_logging
    from state.run import default_run_dir
    from supervisor.arbiter import Supervisor

    setup_logging(role="supervisor", run_dir=args.run_dir or default_run_dir())
    return Supervisor(run_config(args, risk)).run()


def run_config(args: argparse.Namespace,
               risk: dict[str, int | float] | None = None) -> SupervisorConfig:
    """`noblink run`'s arguments (and the resolved risk limits) as the supervisor's
    configuration."""
    from state.run import default_run_dir
    from supervisor.arbiter import SupervisorConfig
    from supervisor.workers import RestartPolicy

    # the position worker's own flags: its secrets (to it only) and the risk limits
    position = ([] if args.secret_file is None
                else ["--secret-file", str(args.secret_file.resolve())])
    position += worker_args(risk if risk is not None else resolve({}, args))
    return SupervisorConfig(run_dir=args.run_dir or default_run_dir(), mode=args.mode,
                           live=args.live, speed=args.speed, seed=args.seed,
                           strategy=args.strategy, params=args.params, stake=args.stake,
                           api=None if args.no_api else args.api,
                           api_allow_remote=args.api_allow_remote,
                           api_public_read=args.api_public_read,
                           restart=RestartPolicy(intensity=args.restart_intensity[0],
                                                 period=args.restart_intensity[1]),
                           strategy_rss_limit_mb=args.strategy_rss_limit,
                           extra={"position": position} if position else {})


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


def _universe_of_run_dir(argv: list[str]) -> None:
    """A command against a running bot (status, inspect, ...) reads its segments with the
    run's universe: install <run dir>/universe.json before anything imports core.markets
    (a universe given in $NOBLINK_UNIVERSE wins). An in-process caller (a test) that already
    imported core.markets keeps its own universe."""
    from core.config import default_run_dir
    from core.universe import ENV, UNIVERSE_FILE, install, load_file
    if os.environ.get(ENV) or "core.markets" in sys.modules:
        return
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--run-dir", type=Path, default=None)
    known, _ = ap.parse_known_args(argv)
    f = (known.run_dir or default_run_dir()) / UNIVERSE_FILE
    if f.is_file():
        install(load_file(f))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in ("run", "sim", "clean"):
        try:
            _universe_of_run_dir(rest)
        except NoblinkError as e:
            print(f"noblink {cmd}: {e}", file=sys.stderr)
            return 2
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
    if cmd in ("pause", "resume", "stop", "kill"):
        from supervisor.ctl import simple_main
        return simple_main(cmd, rest)
    if cmd == "params":
        from supervisor.ctl import params_main
        return params_main(rest)
    if cmd == "status":
        from supervisor.ctl import status_main
        return status_main(rest)
    if cmd == "positions":
        from supervisor.ctl import positions_main
        return positions_main(rest)
    if cmd == "logs":
        from supervisor.ctl import logs_main
        return logs_main(rest)
    print(f"noblink: unknown command {cmd!r} (try --help)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
