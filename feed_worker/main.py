"""``python -m feed_worker --run-dir DIR [--mode sim|paper|live]``: the long-lived feed.

Start-up, in order (shut-down is the mirror):
1. read run.json (run id) and, in sim mode, sim.json (endpoints and clock);
2. create or adopt the feed segments; reset torn rows; recover the windows; rebuild the
   reference candles in progress from refring;
3. attach the control block (created by the supervisor), register in the FEED slot;
4. open the HTTP client; start the REST backfill (every row), the Binance stream, the RTDS
   (Chainlink reference) stream, the market scanner and the heartbeat.
Stop (SIGTERM/SIGINT) cancels the tasks, flushes the counters, marks the slot STOPPED and
closes the segments. They are unlinked only with ``--unlink-on-exit`` (a final stop): a
crashed or restarted feed must find them and adopt them.

Exit codes: 0 clean stop (also a stop signal while waiting for sim.json), 1 a task failed
(restart me), 2 bad configuration, 3 another feed holds this run's lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from pathlib import Path

from core.clock import Clock, ClockLike
from core.config import Endpoints, Mode, load_json
from core.errors import OperatorError
from core.logs import setup_logging
from core.markets import CANDLE_SYMBOLS, KLINE_INTERVALS, REFERENCE_CANDLE_IDS, SYMBOLS
from core.proc import install_stop_signals, run_async
from feed_worker.backfill import Backfiller, BinanceRest, sleep_wall
from feed_worker.binance_ws import BinanceStream
from feed_worker.config import FeedConfig
from feed_worker.http import AiohttpTransport
from feed_worker.klines import SYMBOL_ID
from feed_worker.lifecycle import FEED_TRANSITIONS, ConnState, FeedState, StateMachine
from feed_worker.publish import KlinePublisher
from feed_worker.refcandles import ReferenceCandles, refring_records
from feed_worker.reference import ReferencePublisher
from feed_worker.rtds import RtdsStream
from feed_worker.scanner import Scanner
from feed_worker.segments import FeedSegments
from feed_worker.stats import FeedStats
from feed_worker.windows import RollingWindows, row_index
from state.control import ControlBlock, WorkerSlot
from state.layout import WorkerRole
from state.run import RunPaths, default_run_dir
from state.runlock import RunDirLocked

log = logging.getLogger("feed_worker")

SIM_JSON_WAIT_S = 30.0
STATUS_LOG_WALL_S = 30.0


class FeedWorker:
    """The feed process's components, wired together. ``start`` then ``run``; ``close``."""

    def __init__(self, paths: RunPaths, cfg: FeedConfig, endpoints: Endpoints,
                 clock: ClockLike, *, scanner: bool = True) -> None:
        self.paths = paths
        self.cfg = cfg
        self.endpoints = endpoints
        self.clock = clock
        self.with_scanner = scanner
        self.sm: StateMachine[FeedState] = StateMachine(
            "feed", FeedState.STARTING, FEED_TRANSITIONS, self._on_state)
        self.segs: FeedSegments | None = None
        self.control: ControlBlock | None = None
        self.http = AiohttpTransport(cfg.http_timeout_wall_s)
        self.stats = FeedStats()
        self.rows = sorted(row_index(SYMBOL_ID[s], KLINE_INTERVALS.index(i))
                           for s in cfg.symbols for i in cfg.intervals)
        self._started = False

    def _on_state(self, _old: FeedState, new: FeedState) -> None:
        self.stats.state = int(new)
        if self.control is not None:
            self.control.heartbeat(WorkerSlot.FEED, self.clock.monotonic_ns(), int(new))

    # -- start-up -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Acquire segments, control slot and HTTP client; build the components."""
        assert not self._started, "FeedWorker.start() called twice"
        self._started = True
        self.segs = segs = FeedSegments.open(self.paths)
        log.info("segments: %s", ", ".join(f"{k}={'adopted' if v else 'created'}"
                                           for k, v in segs.adopted.items()))
        self.stats = FeedStats.load(segs.stats, self.cfg.latency_reservoir)
        self.stats.starts += 1
        self.stats.connected = 0
        self.stats.state = int(self.sm.state)
        self.windows = RollingWindows(segs.windows, mono_ns=self.clock.monotonic_ns)
        reset = self.windows.recover(now_ms=self.clock.now_ms())
        have = sum(self.windows.count(r) for r in self.rows)
        log.info("windows: %d candles recovered from shared memory, %d rows reset",
                 have, len(reset))
        try:
            self.control = ControlBlock.attach(self.paths.seg("control"))
        except OperatorError as e:
            log.warning("no control block (%s): running without registration", e)
        first_tick = self.stats.tick
        if self.control is not None:
            first_tick = max(first_tick, self.control.tick()[0])
            self.control.register(WorkerSlot.FEED, WorkerRole.FEED, state=int(self.sm.state),
                                  label="feed", now_ns=self.clock.monotonic_ns())
        await self.http.start()
        self.rest = BinanceRest(self.http, self.endpoints.binance_rest, self.clock, self.stats,
                                self.cfg)
        self.backfill = Backfiller(self.rest, self.windows, self.clock, self.stats, self.cfg,
                                   self.rows)
        self.publisher = KlinePublisher(segs.klines, self.windows, self.stats, self.rows,
                                        self.backfill.request, self.clock.monotonic_ns)
        self.stream = BinanceStream(self.endpoints.binance_ws, self.cfg, self.publisher.handle,
                                    self.clock, self.stats,
                                    on_connect=lambda why: self.backfill.request_all(why),
                                    on_state=self._on_conn_state)
        self.refcandles = ReferenceCandles(segs.klines, self.windows, REFERENCE_CANDLE_IDS,
                                           self.cfg.intervals)
        self._resume_reference_candles()
        self.reference = ReferencePublisher(
            segs.refring, segs.reference, self.stats, self.cfg.rtds_symbols, self.cfg.slots,
            self.clock.monotonic_ns, self.cfg.ref_stale_ms(self.clock.speed),
            on_observation=self.refcandles.observe)
        self._restore_prices_to_beat()
        self.rtds = RtdsStream(self.endpoints.rtds, self.cfg.rtds_symbols, self.cfg,
                               self.reference.handle, self.clock, self.stats,
                               on_disconnect=self.reference.on_disconnect)
        self.scanner = Scanner(self.http, self.endpoints.gamma, self.endpoints.clob,
                               segs.markets, segs.ticks, self.control, self.clock, self.stats,
                               self.cfg, first_tick=first_tick,
                               reference=self.reference if self.cfg.rtds else None)
        self.stats.flush(segs.stats)

    def _resume_reference_candles(self) -> None:
        """Reference-sourced candles have no history endpoint: a restarted feed rebuilds the
        candle in progress (and anything its rows lack) from the observations in refring."""
        if not REFERENCE_CANDLE_IDS:
            return
        assert self.segs is not None
        used = self.refcandles.resume(refring_records(self.segs.refring.path),
                                      self.clock.now_ms())
        log.info("reference candles (%s): %d observations replayed from refring",
                 ", ".join(CANDLE_SYMBOLS[i] for i in REFERENCE_CANDLE_IDS), used)

    def _restore_prices_to_beat(self) -> None:
        """A restarted feed keeps the prices to beat its predecessor published (it may have
        missed the window start itself)."""
        assert self.segs is not None
        for slot in self.cfg.slots:
            row = self.segs.markets.read(slot.index)
            aid = self.reference.asset_of.get(slot.chainlink)
            if aid is not None and int(row["window_s"]) == slot.window_s:
                self.reference.ptb.restore(aid, slot.window_s, int(row["window_start"]),
                                           float(row["price_to_beat"]), int(row["ptb_ms"]))

    def _on_conn_state(self, s: ConnState) -> None:
        if self.sm.state is FeedState.RUNNING and s in (ConnState.STALLED, ConnState.CLOSED):
            self.sm.to(FeedState.DEGRADED, f"stream {s.name.lower()}")
        elif self.sm.state is FeedState.DEGRADED and s is ConnState.STREAMING:
            self.sm.to(FeedState.RUNNING, "stream back")

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run every task until ``stop`` is set (0) or one of them fails (1)."""
        self.sm.to(FeedState.BACKFILLING, "start")
        self.backfill.request_all("start")
        tasks = {asyncio.create_task(self.backfill.run(), name="backfill"),
                 asyncio.create_task(self.stream.run(stop), name="binance-ws"),
                 asyncio.create_task(self._heartbeat(stop), name="heartbeat")}
        if self.with_scanner:
            tasks.add(asyncio.create_task(self.scanner.run(stop), name="scanner"))
        if self.cfg.rtds and self.endpoints.rtds:
            tasks.add(asyncio.create_task(self.rtds.run(stop), name="rtds"))
        elif self.cfg.rtds:
            log.warning("no RTDS endpoint: running without the reference price")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        rc = 0
        try:
            done, _ = await asyncio.wait(tasks | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not stopper and not t.cancelled() and t.exception() is not None:
                    log.error("task %s failed", t.get_name(), exc_info=t.exception())
                    rc = 1
                elif t is not stopper and not stop.is_set():
                    log.error("task %s ended unexpectedly", t.get_name())
                    rc = 1
        finally:
            if rc:
                self.sm.to(FeedState.FAILED, "task failed")
            self.sm.to(FeedState.STOPPING, "stop" if not rc else "failure")
            stop.set()
            for t in (*tasks, stopper):
                t.cancel()
            await asyncio.gather(*tasks, stopper, return_exceptions=True)
        return rc

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        assert self.segs is not None
        last_status = time.monotonic()
        while not stop.is_set():
            if self.sm.state is FeedState.BACKFILLING and self.backfill.initial_done.is_set():
                self.sm.to(FeedState.RUNNING if self.stats.connected else FeedState.DEGRADED,
                           "windows filled")
            self.beat()
            if time.monotonic() - last_status >= STATUS_LOG_WALL_S:
                last_status = time.monotonic()
                d = self.stats.as_dict()
                log.info("status: %s", " ".join(f"{k}={v:.1f}" if isinstance(v, float)
                                                else f"{k}={v}" for k, v in d.items()))
            await sleep_wall(self.clock, self.cfg.heartbeat_wall_s)

    def beat(self) -> None:
        """Publish liveness and counters."""
        assert self.segs is not None
        self.stats.state = int(self.sm.state)
        self.stats.flush(self.segs.stats)
        if self.control is not None:
            self.control.heartbeat(WorkerSlot.FEED, self.clock.monotonic_ns(),
                                   int(self.sm.state))

    # -- shut-down ------------------------------------------------------------------------------

    async def close(self, *, unlink: bool = False) -> None:
        """Mirror of start: HTTP client, counters, control slot, segments. Idempotent."""
        await self.http.close()
        if self.sm.can(FeedState.STOPPED):
            self.sm.to(FeedState.STOPPED, "closed")
        if self.segs is not None:
            self.stats.connected = 0
            self.beat()
            if unlink:
                log.info("unlinking the feed segments (final stop)")
                self.segs.unlink()
            self.segs.close()
            self.segs = None
        if self.control is not None:
            self.control.close()
            self.control = None


# -- command line -----------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m feed_worker", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=None,
                   help="run directory with run.json (default $NOBLINK_RUN_DIR or /tmp/...)")
    p.add_argument("--mode", choices=("sim", "paper", "live"), default="sim",
                   help="sim: endpoints and clock from sim.json; paper/live: production")
    p.add_argument("--unlink-on-exit", action="store_true",
                   help="remove the feed's segments on a clean stop (final shutdown)")
    p.add_argument("--symbols", default=",".join(SYMBOLS))
    p.add_argument("--intervals", default=",".join(KLINE_INTERVALS))
    p.add_argument("--no-scanner", action="store_true", help="candles only")
    p.add_argument("--no-rtds", action="store_true",
                   help="no reference price (Chainlink via RTDS): slots are never tradeable")
    p.add_argument("--stall-floor-s", type=float, default=None,
                   help="never call a stream stalled before this many wall seconds (1.0)")
    p.add_argument("--rotate-after-s", type=float, default=None,
                   help="rotate the WebSocket after this many clock seconds (23 h)")
    p.add_argument("--scan-interval-s", type=float, default=None,
                   help="scanner period, clock seconds (5)")
    p.add_argument("--closed-margin-s", type=float, default=None,
                   help="a REST candle counts as closed only this many clock seconds after "
                        "its end on Binance's clock (2)")
    p.add_argument("--log-level", default=None)
    return p


def config_from_args(args: argparse.Namespace) -> FeedConfig:
    kw: dict = {"symbols": tuple(s.strip().upper() for s in args.symbols.split(",") if s.strip()),
                "intervals": tuple(s.strip() for s in args.intervals.split(",") if s.strip())}
    if args.stall_floor_s is not None:
        kw["stall_floor_wall_s"] = args.stall_floor_s
    if args.rotate_after_s is not None:
        kw["rotate_after_s"] = args.rotate_after_s
    if args.scan_interval_s is not None:
        kw["scan_interval_s"] = args.scan_interval_s
    if args.closed_margin_s is not None:
        kw["closed_margin_s"] = args.closed_margin_s
    if args.no_rtds:
        kw["rtds"] = False
    return FeedConfig(**kw)


async def resolve_endpoints(mode: Mode, paths: RunPaths, stop: asyncio.Event,
                            wait_s: float = SIM_JSON_WAIT_S) -> tuple[Endpoints, Clock] | None:
    """Production endpoints and real time, or the sim's (waiting for sim.json to appear).
    None when ``stop`` was set while waiting."""
    if mode != "sim":
        return Endpoints.production(), Clock.real()
    deadline = time.monotonic() + wait_s
    logged = False
    while True:
        try:
            info = load_json(str(paths.sim_json))
            return Endpoints.from_sim_info(info), Clock.from_dict(info["clock"])
        except (FileNotFoundError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise OperatorError(f"no usable {paths.sim_json} after {wait_s:.0f} s: "
                                    "is the sim running?") from None
            if not logged:
                log.info("waiting up to %.0f s for %s", wait_s, paths.sim_json)
                logged = True
        # polling for the file the sim writes atomically; a stop signal ends the wait
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
        if stop.is_set():
            return None


async def amain(args: argparse.Namespace) -> int:
    run_dir = args.run_dir or default_run_dir()
    # Handlers first: a stop signal during the sim.json wait must end the process cleanly.
    stop = asyncio.Event()
    install_stop_signals(stop)
    try:
        cfg = config_from_args(args)
        paths, _doc = RunPaths.load(run_dir)
        resolved = await resolve_endpoints(args.mode, paths, stop)
    except (ValueError, FileNotFoundError, OperatorError) as e:
        log.error("cannot start: %s", e)
        return 2
    if resolved is None:
        log.info("feed: stopped before start-up; exit 0")
        return 0
    endpoints, clock = resolved
    log.info("feed: run %s, mode %s, clock speed %g, binance %s", paths.run_id, args.mode,
             clock.speed, endpoints.binance_ws)
    worker = FeedWorker(paths, cfg, endpoints, clock, scanner=not args.no_scanner)
    rc = 1
    try:
        await worker.start()
        rc = await worker.run(stop)
    except RunDirLocked as e:
        log.error("%s", e)
        rc = 3
    except OperatorError as e:
        log.error("cannot run: %s", e)
        rc = 2
    finally:
        with contextlib.suppress(Exception):
            await worker.close(unlink=args.unlink_on_exit and rc == 0)
    log.info("feed: exit %d", rc)
    return rc


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging("feed", level=args.log_level, run_dir=args.run_dir or default_run_dir())
    return run_async(lambda: amain(args))
