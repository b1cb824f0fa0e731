"""``noblink sim`` (run the simulator) and ``noblink sim-fault`` (flip its fault switches)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import urllib.error
from pathlib import Path
from typing import Any

import orjson

from core.logs import setup_logging
from core.markets import ASSETS
from sim.assets import check_universe
from sim.context import SimConfig
from state.run import default_run_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noblink sim",
                                description="Embedded Binance + Polymarket simulator.")
    p.add_argument("--speed", type=float, default=1.0,
                   help="sim seconds per wall second (60: a 5-minute window in 5 s)")
    p.add_argument("--seed", type=int, default=1, help="seed of the price paths")
    p.add_argument("--port-base", type=int, default=0,
                   help="binance_ws=P, binance_rest=P+1, gamma=P+2, clob=P+3, admin=P+4, "
                        "rtds=P+5; 0 picks free ports")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="where sim.json goes (default: $NOBLINK_RUN_DIR, else "
                   "$XDG_STATE_HOME/noblink, else ~/.local/state/noblink)")
    p.add_argument("--start", type=float, default=None,
                   help="sim time at start, unix seconds (default: now); fixes every price "
                        "together with --seed")
    p.add_argument("--start-wall", type=float, default=None,
                   help="wall time (unix s) at which the sim time is --start (default: the "
                        "sim's start); a restarted sim given the dead one's clock continues "
                        "it exactly")
    p.add_argument("--weight-limit", type=int, default=6000,
                   help="Binance REST weight budget per sim minute")
    p.add_argument("--ping-interval", type=float, default=None,
                   help="WebSocket ping period, wall seconds (default 20 sim s, >= 0.25)")
    p.add_argument("--pong-timeout", type=float, default=None,
                   help="disconnect after this long without a pong, wall seconds "
                        "(default 60 sim s, >= 5)")
    p.add_argument("--balance", type=float, default=1000.0,
                   help="starting USDC balance of every CLOB account")
    p.add_argument("--resolve-lag", type=float, default=5.0,
                   help="sim seconds between a window's end and its market's resolution")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str]) -> int:
    """Run the simulator until SIGTERM or SIGINT; prints one JSON line with its endpoints."""
    args = _parser().parse_args(argv)
    try:
        cfg = SimConfig(speed=args.speed, seed=args.seed, port_base=args.port_base,
                        run_dir=args.run_dir or default_run_dir(), start=args.start,
                        start_wall=args.start_wall,
                        weight_limit=args.weight_limit, ping_interval_s=args.ping_interval,
                        pong_timeout_s=args.pong_timeout, balance=args.balance,
                        resolve_lag_s=args.resolve_lag)
        check_universe(ASSETS)        # the markets it lists are the universe's slots
    except ValueError as e:
        print(f"noblink sim: {e}", file=sys.stderr)
        return 2
    setup_logging("sim", level=args.log_level, run_dir=cfg.run_dir)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # uvloop is optional; asyncio's loop works the same
        pass
    try:
        return asyncio.run(_serve(cfg))
    except OSError as e:
        print(f"noblink sim: cannot start: {e}", file=sys.stderr)
        return 1


async def _serve(cfg: SimConfig) -> int:
    from sim.app import SimApp

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)     # the handler only sets the event
    app = SimApp(cfg)
    try:
        info = await app.start()
        sys.stdout.write(orjson.dumps(info).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await app.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


# -- sim-fault ------------------------------------------------------------------------------

FAULT_USAGE = """usage: noblink sim-fault [--admin URL | --run-dir DIR] NAME [VALUE]
       noblink sim-fault [--admin URL | --run-dir DIR] clear | show | log

NAME VALUE examples:
  ws_drop                      drop every WebSocket now
  ws_shutdown [GRACE_S]        send serverShutdown, close after GRACE_S (default 1)
  ws_stall btcusdt@kline_1m    stall one stream ('*' = all; '' = none)
  ws_malformed 5               next 5 data frames are malformed
  ws_refuse_s 10               refuse new WebSockets for 10 s
  rest_error 503 [COUNT]       REST answers 503 (for COUNT requests, default until cleared)
  rest_429 2                   next 2 REST requests get 429
  rtds_drop                    drop every RTDS (Chainlink) connection now
  rtds_stall btc/usd           stall one RTDS symbol ('*' = all; '' = none)
  rtds_malformed 5             next 5 RTDS data frames are malformed
  rtds_refuse_s 10             refuse new RTDS connections for 10 s
  rest_target clob             limit REST faults to binance_rest|gamma|clob
  order_reject "reason"        reject orders with this message
  order_delay_s 2.0            hold order replies for 2 s
VALUE is parsed as JSON when it can be (5, 2.0, true, null), else taken as a string."""


def _value(text: str | None) -> Any:
    if text is None:
        return True
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def fault_main(argv: list[str]) -> int:
    """Flip one fault switch (or clear / show them) on a running sim."""
    from sim.testing import admin_request, read_sim_info

    p = argparse.ArgumentParser(prog="noblink sim-fault", usage=FAULT_USAGE, add_help=False)
    p.add_argument("--admin", default=None)
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("words", nargs="*")
    args = p.parse_args(argv)
    if args.help or not args.words:
        print(FAULT_USAGE)
        return 0 if args.help else 2
    admin = args.admin
    if admin is None:
        try:
            admin = read_sim_info(args.run_dir or default_run_dir())["admin"]
        except (OSError, ValueError, KeyError) as e:
            print(f"noblink sim-fault: no running sim found: {e}", file=sys.stderr)
            return 1
    name, rest = args.words[0], args.words[1:]
    try:
        if name == "clear":
            out = admin_request(admin, "DELETE", "/faults")
        elif name == "show":
            out = admin_request(admin, "GET", "/faults")
        elif name == "log":
            out = admin_request(admin, "GET", "/orders/log")
        else:
            body: dict[str, Any] = {name: _value(rest[0] if rest else None)}
            if name == "rest_error" and len(rest) > 1:
                body["rest_error_count"] = _value(rest[1])
            out = admin_request(admin, "POST", "/faults", body)
    except urllib.error.HTTPError as e:
        print(f"noblink sim-fault: {e.code} {e.read().decode(errors='replace')}",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"noblink sim-fault: cannot reach {admin}: {e}", file=sys.stderr)
        return 1
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
    return 0
