"""``python -m strategy_worker``: load a strategy file, verify it, serve one epoch on one lane.

Started by the supervisor as a standby (``--notify-pid`` set: it waits for the handoff). Run
alone (tests, tools) with ``--auto-handoff`` it takes the newest snapshot itself and trades
once the control block's active epoch is its own.

Exit codes (core/proc.py): 0 retired or stopped, 4 the strategy is broken (load, verify,
handoff, a commit that cannot be written), 3 an operator is needed (an unreadable snapshot,
a layout mismatch), 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from pathlib import Path

import orjson

from core.clock import Clock
from core.config import load_json
from core.errors import NoblinkError, OperatorError, StrategyError
from core.proc import (
    EXIT_BROKEN_CODE,
    EXIT_CRASH,
    EXIT_OPERATOR,
    install_stop_signals,
    run_async,
    setup_logging,
)
from state.run import RunPaths
from strategy_worker.lifecycle import StrategyState
from strategy_worker.loader import load_strategy
from strategy_worker.report import Report
from strategy_worker.worker import StrategyWorker, sha256_of

log = logging.getLogger("strategy_worker")

DEFAULT_STRATEGY = Path(__file__).resolve().parent.parent / "strategies" / "momentum.py"
EXIT_STRATEGY_ERROR = EXIT_BROKEN_CODE   # the strategy did not load: restarting cannot help


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m strategy_worker")
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--strategy", type=Path, default=DEFAULT_STRATEGY)
    ap.add_argument("--params", default="{}", help="JSON object passed to Strategy(params)")
    ap.add_argument("--epoch", type=int, required=True)
    ap.add_argument("--lane", type=int, choices=(0, 1), default=0)
    ap.add_argument("--stake", type=float, default=5.0)
    ap.add_argument("--mode", choices=("sim", "paper", "live"), default="sim")
    ap.add_argument("--sha256", default="", help="the deployed file's hash (for reports)")
    ap.add_argument("--notify-pid", type=int, default=0,
                    help="wake this pid (the supervisor) with SIGUSR1 on every report")
    ap.add_argument("--auto-handoff", action="store_true",
                    help="take the newest snapshot without waiting for a handoff command")
    return ap.parse_args(argv)


def _exit_code(e: BaseException) -> int:
    if isinstance(e, StrategyError):
        return EXIT_STRATEGY_ERROR
    if isinstance(e, OperatorError):
        return EXIT_OPERATOR
    return EXIT_CRASH


async def _amain(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    paths, _ = RunPaths.load(args.run_dir)
    report = Report(paths.run_dir, args.epoch, lane=args.lane, pid=os.getpid(),
                    strategy=str(args.strategy), sha256=args.sha256)
    clock = (Clock.from_dict(load_json(str(paths.sim_json))["clock"]) if args.mode == "sim"
             else Clock.real())
    try:
        params = orjson.loads(args.params)
        if not isinstance(params, dict):
            raise StrategyError(f"--params must be a JSON object, got {type(params).__name__}")
        strategy = load_strategy(args.strategy, params)
    except (StrategyError, orjson.JSONDecodeError) as e:
        log.error("strategy rejected: %s", e)
        report.failed(e, "load")
        return EXIT_STRATEGY_ERROR
    load_ms = (time.perf_counter() - t0) * 1000
    stop = asyncio.Event()
    install_stop_signals(stop)
    worker = StrategyWorker(paths, clock, strategy, epoch=args.epoch, lane=args.lane,
                            stake=args.stake, sha256=args.sha256 or sha256_of(args.strategy),
                            notify_pid=args.notify_pid, auto_handoff=args.auto_handoff)
    worker.report.doc["load_ms"] = load_ms
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, worker.wake.set)
    try:
        await worker.run(stop)
    except Exception as e:       # every failure is reported and named, then mapped to a code
        if not isinstance(e, NoblinkError):
            log.exception("strategy worker crashed")
        else:
            log.error("strategy failed (%s): %s", worker.state.name, e)
        worker.report.failed(e, worker.state.name.lower())
        if worker.fsm.can(StrategyState.FAILED):
            worker.fsm.to(StrategyState.FAILED, str(e)[:200])
        return _exit_code(e)
    finally:
        worker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    setup_logging(role=f"strategy{args.lane}", run_dir=args.run_dir, epoch=args.epoch)
    log.info("strategy worker pid %d: %s epoch %d lane %d", os.getpid(), args.strategy.name,
             args.epoch, args.lane)
    return run_async(lambda: _amain(args))
