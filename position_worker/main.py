"""``python -m position_worker --run-dir DIR [--mode sim|paper|live] [--live] ...``

Start-up, in order: take the run dir's position lock (a second worker on the same run dir
exits 3); attach the control block and register; create/adopt the intent rings and the
positions/posstats tables; open the journal; rebuild shared memory from the journal; start
the executor (retrying while the venue is unreachable); recover (resume unsent orders, look up
unacknowledged ones, reconcile); then run. Shut-down is the mirror image, and lets in-flight
orders reach a journaled reply first.

Loops while running: intake (both intent lanes, decisions serialised), settlement, lookups +
reconciliation, and the heartbeat (every 0.25 s wall, also during start-up and recovery).
The heartbeat also watches the control block's flags: a kill switch set by the supervisor
(and not yet carried out) starts ``Engine.kill`` in its own task once the worker is RUNNING;
a failed attempt is retried a second later.
An ``OperatorError`` inside a loop stops the whole worker (exit 3) instead of silently ending
that loop while the worker still reports RUNNING.

Exit codes (core/proc.py; the supervisor restarts only after 1 or a signal): 0 clean stop;
1 a failure a restart may fix (anything unexpected, a missing sim.json or control block);
2 bad arguments or configuration (argparse's own errors, no run.json, flags that contradict
each other); 3 needs an operator (run dir locked by another worker, ``--mode live`` without
``--live``, missing or refused credentials, a segment layout mismatch or full /dev/shm).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from core.clock import Clock
from core.config import Endpoints
from core.errors import (
    NoblinkError,
    OperatorError,
    RetryableError,
    SegmentMissingError,
)
from core.logs import setup_logging
from core.proc import (
    EXIT_CRASH,
    EXIT_OPERATOR,
    EXIT_USAGE,
    install_stop_signals,
    run_async,
)
from core.risklimits import add_flags as add_risk_flags
from position_worker.credentials import Credentials, load_live
from position_worker.engine import Engine, EngineConfig
from position_worker.executors.base import Executor
from position_worker.faults import CRASH_POINTS, CrashPoints
from position_worker.gamma import GammaClient
from position_worker.intents import IntentSource
from position_worker.journal import Journal
from position_worker.lifecycle import WorkerState, lifecycle
from position_worker.markets import MarketsView
from position_worker.positions import PositionStore
from position_worker.risk import RiskConfig
from state.control import ControlBlock, WorkerSlot
from state.layout import WorkerRole
from state.run import RunPaths
from state.runlock import RoleLock

log = logging.getLogger("position_worker")


def configure_logging(level: str | None, run_dir: Path | None = None) -> None:
    """stderr plus <run dir>/logs/position.jsonl, secrets masked; the HTTP/2 libraries that
    print request headers at DEBUG stay at WARNING (core/logs.py)."""
    setup_logging("position", level=level, run_dir=run_dir)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="position_worker", description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("--mode", choices=("sim", "paper", "live"), default="sim")
    ap.add_argument("--live", action="store_true",
                    help="required, with --mode live, to trade real money")
    ap.add_argument("--secret-file", type=Path, default=None,
                    help="live credentials (JSON, mode 0600); default: the environment")
    ap.add_argument("--stake", type=float, default=RiskConfig.stake)
    # the operator's limits (noblink run --max-open ..., or [risk] in noblink.toml), checked
    # by the same code that checked them there
    add_risk_flags(ap, {"max_open": RiskConfig.max_open,
                        "max_exposure": RiskConfig.max_exposure,
                        "daily_loss_limit": RiskConfig.daily_loss_limit,
                        "max_book_age": RiskConfig.max_book_age_s})
    ap.add_argument("--min-order-size", type=float, default=RiskConfig.min_order_size)
    ap.add_argument("--lookup-grace", type=float, default=EngineConfig.lookup_grace_s,
                    help="clock seconds after a window's end before an unseen order fails")
    ap.add_argument("--settle-every", type=float, default=1.0, help="wall seconds")
    ap.add_argument("--reconcile-every", type=float, default=15.0,
                    help="wall seconds between reconciliation passes (recent: the last hour)")
    ap.add_argument("--reconcile-full-every", type=float, default=600.0,
                    help="wall seconds between full passes (the last two days: late fills "
                         "of failed orders); start-up always runs one")
    ap.add_argument("--crash-at", choices=CRASH_POINTS,
                    default=os.environ.get("NOBLINK_POSITION_CRASH_AT") or None,
                    help=argparse.SUPPRESS)     # tests only: SIGKILL self at that point
    ap.add_argument("--unlink-on-exit", action="store_true",
                    help="remove this worker's segments on a clean, final stop")
    ap.add_argument("--log-level", default=None)
    return ap.parse_args(argv)


class UsageError(NoblinkError):
    """Bad arguments or configuration: exit 2 (restarting with the same ones cannot help)."""


@dataclass
class Venue:
    endpoints: Endpoints
    clock: Clock
    creds: Credentials | None


def resolve_venue(args: argparse.Namespace, paths: RunPaths) -> Venue:
    """Endpoints, clock and credentials for the mode. Refuses live without --live."""
    if args.mode == "live":
        # Credentials first: every refusal below then happens with the secrets in memory,
        # which is what the "no secret in the output" tests need to exercise.
        creds = load_live(args.secret_file)
        if not args.live:
            raise OperatorError("--mode live trades real money and needs --live as well")
        if args.crash_at:
            raise UsageError("crash points (--crash-at / NOBLINK_POSITION_CRASH_AT) are for "
                                "tests and are refused in live mode")
        return Venue(Endpoints.production(), Clock.real(), creds)
    if args.live:
        raise UsageError("--live is only meaningful with --mode live")
    if paths.sim_json.exists():
        # sim, or paper trading on the sim's data: the sim's endpoints and its clock
        info = orjson.loads(paths.sim_json.read_bytes())
        return Venue(Endpoints.from_sim_info(info), Clock.from_dict(info["clock"]),
                     Credentials.sim_throwaway(paths.run_id) if args.mode == "sim" else None)
    if args.mode == "sim":
        # the sim may still be starting (or restarting): a restart of ours may find it
        raise RetryableError(f"--mode sim needs {paths.sim_json} (start the sim first)")
    return Venue(Endpoints.production(), Clock.real(), None)


def build_executor(args: argparse.Namespace, venue: Venue, markets: MarketsView,
                   paths: RunPaths) -> Executor:
    if args.mode == "paper":
        from position_worker.executors.paper import PaperExecutor
        return PaperExecutor(markets, paths.run_dir / "paper_venue.sqlite")
    from position_worker.executors.clob import ClobExecutor
    assert venue.creds is not None
    return ClobExecutor(venue.endpoints.clob, venue.creds)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.life = lifecycle()
        self.stop = asyncio.Event()
        self._stack = contextlib.ExitStack()
        self._tasks: list[asyncio.Task[None]] = []
        self._clean = False          # set only after an orderly stop: may unlink then
        self._fatal: OperatorError | None = None     # a loop needs an operator: stop
        self._kill_task: asyncio.Task[None] | None = None
        self._kill_retry_at = 0.0                     # time.monotonic() of the next attempt
        self._full_at = 0.0            # time.monotonic() of the next full reconciliation

    async def _wait_stop(self, wall_s: float) -> bool:
        """Sleep ``wall_s`` or until stop; True when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), wall_s)
        return self.stop.is_set()

    def _loop(self, name: str, every_s: float, body: Callable[[], Awaitable[object]]) -> None:
        async def run() -> None:
            while not await self._wait_stop(every_s):
                try:
                    await body()
                except RetryableError as e:
                    log.warning("%s: %s", name, e)
                except OperatorError as e:
                    # never let a loop end quietly while the worker says RUNNING
                    log.error("%s needs an operator: %s; stopping the worker", name, e)
                    self._fatal = e
                    self.stop.set()
                    return
                except Exception:
                    log.exception("%s failed; continuing", name)
        self._tasks.append(asyncio.ensure_future(run()))

    async def _heartbeat(self) -> None:
        while True:
            self.control.heartbeat(WorkerSlot.POSITION, self.clock.monotonic_ns(),
                                   state=int(self.life.state))
            if self.life.state == WorkerState.RUNNING:
                self.engine.flush_status()
                self._check_kill()
            if await self._wait_stop(0.25):
                return

    def _check_kill(self) -> None:
        """Start carrying out the kill switch when it is due and no attempt is running."""
        if self._kill_task is not None and not self._kill_task.done():
            return
        if self.stop.is_set() or not self.engine.kill_due() \
                or time.monotonic() < self._kill_retry_at:
            return
        log.warning("kill switch set: cancelling every open order at the venue")
        self._kill_task = asyncio.ensure_future(self._kill())
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(self._kill_task)        # cancelled with the loops on stop

    async def _kill(self) -> None:
        try:
            await self.engine.kill()
        except RetryableError as e:
            log.error("kill switch not carried out yet: %s; retrying in 1s", e)
            self._kill_retry_at = time.monotonic() + 1.0
        except Exception:
            log.exception("kill switch not carried out yet; retrying in 1s")
            self._kill_retry_at = time.monotonic() + 1.0

    async def run(self) -> int:
        args = self.args
        install_stop_signals(self.stop)
        try:
            paths, _doc = RunPaths.load(args.run_dir)
        except (OSError, ValueError, KeyError) as e:
            raise UsageError(f"{args.run_dir} is not a run dir (run.json: {e!r})") from None
        # before anything that a second worker could disturb: the control slot, the rings,
        # the journal. Held until the process exits.
        lock = RoleLock(paths.run_dir, "position").acquire()
        self._stack.callback(lock.release)
        try:
            venue = resolve_venue(args, paths)
            self.clock = venue.clock
            self.control = ControlBlock.attach(paths.seg("control"))
            self._stack.callback(self.control.close)
            self.control.register(WorkerSlot.POSITION, WorkerRole.POSITION,
                                  state=int(self.life.state), label=f"position-{args.mode}",
                                  now_ns=self.clock.monotonic_ns())
        except BaseException:
            self._stack.close()
            raise
        hb = asyncio.ensure_future(self._heartbeat())
        try:
            return await self._run(paths, venue)
        except BaseException:
            if self.life.state not in (WorkerState.STOPPED, WorkerState.FAILED):
                self.life.to(WorkerState.FAILED, "error")
            raise
        finally:
            self.stop.set()
            await asyncio.gather(hb, return_exceptions=True)
            self.control.heartbeat(WorkerSlot.POSITION, self.clock.monotonic_ns(),
                                   state=int(self.life.state))
            self._stack.close()

    async def _run(self, paths: RunPaths, venue: Venue) -> int:
        args = self.args
        unlink = args.unlink_on_exit
        source = IntentSource(paths)
        self._stack.callback(lambda: source.close(unlink=unlink and self._clean))
        store = PositionStore(paths)
        self._stack.callback(lambda: store.close(unlink=unlink and self._clean))
        journal = Journal(paths.journal)
        self._stack.callback(journal.close)
        markets = MarketsView(paths)
        self._stack.callback(markets.close)
        executor = build_executor(args, venue, markets, paths)
        gamma = GammaClient(venue.endpoints.gamma)
        risk = RiskConfig(stake=args.stake, max_open=args.max_open,
                          max_exposure=args.max_exposure,
                          daily_loss_limit=args.daily_loss_limit,
                          min_order_size=args.min_order_size, max_book_age_s=args.max_book_age)
        self.engine = engine = Engine(
            journal=journal, store=store, executor=executor, markets=markets, gamma=gamma,
            control=self.control, clock=self.clock,
            cfg=EngineConfig(risk=risk, lookup_grace_s=args.lookup_grace),
            crash=CrashPoints(args.crash_at))
        try:
            self.life.to(WorkerState.RECOVERING)
            engine.load()
            self._resume_lanes(source, journal, engine)
            self._publish_decided(source)
            if not await self._start_executor(executor):
                return self._stopped()
            await engine.recover()                # ends with a full reconciliation
            self._full_at = time.monotonic() + args.reconcile_full_every
            self.life.to(WorkerState.RUNNING, f"mode {args.mode}, {executor.name} executor")
            self._loop("settle", args.settle_every, engine.settle_due)
            self._loop("reconcile", args.reconcile_every, self._reconcile)
            self._loop("lookups", max(0.5, min(args.reconcile_every, 2.0)),
                       engine.resolve_pending)
            await self._intake(source, engine)
            self.life.to(WorkerState.STOPPING, "stop requested")
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await engine.drain(10.0)
            if self._fatal is not None:
                raise self._fatal
            self._clean = True
            return self._stopped()
        finally:
            for t in self._tasks:
                t.cancel()
            await executor.close()
            await gamma.close()

    def _stopped(self) -> int:
        if self.life.state != WorkerState.STOPPING:
            self.life.to(WorkerState.STOPPING)
        self.life.to(WorkerState.STOPPED)
        return 0

    async def _reconcile(self) -> None:
        await self.engine.resolve_pending()
        now = time.monotonic()
        full = now >= self._full_at
        await self.engine.reconcile(full=full)
        if full:
            self._full_at = now + self.args.reconcile_full_every

    def _resume_lanes(self, source: IntentSource, journal: Journal, engine: Engine) -> None:
        """Start each lane after the last intent journaled from that very ring.

        An adopted ring (it survived us) with no cursor at all in the journal means the
        journal is new (or was replaced) while the rings are not: nothing says which of their
        intents were handled, so only new ones are read. A ring created just now is read from
        its start."""
        for lane in source.readers:
            ring_id = source.identity(lane)
            engine.ring_ids[lane] = ring_id
            saved = journal.lane_cursor(lane)
            if saved is not None and saved[0] == ring_id:
                source.resume(lane, saved[1])
                log.info("lane %d: resuming at seq %d", lane, source.readers[lane].cursor)
            elif saved is None and source.adopted(lane):
                source.skip_to_head(lane)
                log.warning("lane %d: adopted ring but no cursor in the journal; skipping to "
                            "seq %d (older intents are not replayed)", lane,
                            source.readers[lane].cursor)

    def _publish_decided(self, source: IntentSource) -> None:
        """Tell the supervisor where intake stands on each lane: everything before the
        reader's cursor is decided (journaled) or was lost to a lapped ring and will never
        be. Called at start-up (a restart may resume anywhere) and after each batch, so
        lost intents, which ``decide`` never sees, do not hold a hot reload back."""
        for lane, r in source.readers.items():
            self.control.set_decided(lane, r.cursor)

    async def _start_executor(self, executor: Executor) -> bool:
        delay = 0.5
        while not self.stop.is_set():
            try:
                await executor.start()
                return True
            except RetryableError as e:
                log.warning("executor not ready: %s (retrying in %.1fs)", e, delay)
            except OSError as e:
                log.warning("executor not ready: %s (retrying in %.1fs)", e, delay)
            if await self._wait_stop(delay):
                break
            delay = min(delay * 2, 10.0)
        return False

    async def _intake(self, source: IntentSource, engine: Engine) -> None:
        lost = 0
        while not self.stop.is_set():
            await source.wait(0.25)
            intents = source.poll()
            if intents:
                for order in engine.decide_all(intents):      # one commit for the batch
                    if order is not None:
                        engine.launch(order)
            self._publish_decided(source)
            if source.lost() != lost:
                log.error("intent rings lapped: %d intents lost", source.lost() - lost)
                lost = source.lost()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, args.run_dir)
    try:
        return run_async(Worker(args).run)
    except UsageError as e:
        log.error("position worker: %s", e)
        return EXIT_USAGE
    except SegmentMissingError as e:
        # the supervisor creates the control block before it starts us: it may be restarting
        log.error("position worker failed: %s", e)
        return EXIT_CRASH
    except OperatorError as e:
        log.error("position worker needs an operator: %s", e)
        return EXIT_OPERATOR
    except NoblinkError as e:
        log.error("position worker failed: %s", e)
        return EXIT_CRASH
    except Exception:
        log.exception("position worker crashed")
        return EXIT_CRASH
