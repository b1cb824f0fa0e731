"""The real feed worker process against the real simulator (speed 60: a minute per second).

Each test runs ``python -m feed_worker`` on a fresh run (its own segments) against one sim
shared by the module, and checks shared memory the way a strategy would read it.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from core.markets import (
    CANDLE_SYMBOLS,
    CHAINLINK_SYMBOLS,
    INTERVAL_MS,
    KLINE_INTERVALS,
    REFERENCE_CANDLE_IDS,
    SLOTS,
    SYMBOLS,
)
from feed_worker.lifecycle import FeedState
from feed_worker.segments import NAMES
from sim.testing import SimProcess, clear_faults, set_fault, start_sim
from state.control import ControlBlock, WorkerSlot
from state.layout import (
    FEED_STATS_DT,
    KLINE_DT,
    MARKET_DT,
    REF_DT,
    REF_ROW_DT,
    TICK_DT,
    WINDOW_ROW_DT,
    RefStatus,
    SlotStatus,
)
from state.ring import RingReader
from state.run import TICK_RING_CAPACITY, RunPaths
from state.table import TableReader

ROOT = Path(__file__).resolve().parents[2]
SPEED = 60.0
DEADLINE = 30.0                   # wall seconds; generous for a busy 2-core machine
BINANCE_ROWS = len(SYMBOLS) * len(KLINE_INTERVALS)   # candle rows backfilled from Binance REST
REF_ROWS = [sid * 3 + i for sid in REFERENCE_CANDLE_IDS for i in range(3)]   # built from RTDS


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    s = start_sim(tmp_path_factory.mktemp("feedsim"), speed=SPEED, seed=3)
    try:
        yield s
    finally:
        s.stop()


class Feed:
    """One run's feed worker process(es), and readers of what it publishes."""

    def __init__(self, paths: RunPaths, sim: SimProcess) -> None:
        self.paths = paths
        self.sim = sim
        self.proc: subprocess.Popen | None = None
        self.n = 0

    def start(self, *args: str) -> None:
        self.n += 1
        log = open(self.paths.run_dir / f"feed{self.n}.log", "wb")   # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feed_worker", "--run-dir", str(self.paths.run_dir),
             "--unlink-on-exit", *args], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            env=env)
        log.close()

    def log(self, n: int | None = None) -> str:
        return (self.paths.run_dir / f"feed{n or self.n}.log").read_text(errors="replace")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -9

    # -- shared memory, read like a strategy would ---------------------------------------

    def _table(self, name, dt) -> np.ndarray:
        # The feed creates a segment (file, size) before it writes its header; a look that
        # lands in between sees an all-zero header. Wait for the header (deadline), never
        # for a real mismatch.
        path = self.paths.seg(name)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and path.exists():
            with open(path, "rb") as f:
                if any(f.read(8)):              # the magic is there
                    break
            time.sleep(0.01)
        t = TableReader(path, dt)
        try:
            return t.read_all()
        finally:
            t.close()

    def stats(self) -> dict:
        if not self.paths.seg("feedstats").exists():
            return {}
        row = self._table("feedstats", FEED_STATS_DT)[0]
        return {k: row[k].item() for k in FEED_STATS_DT.names if not k.startswith("_")}

    def windows(self) -> np.ndarray:
        return self._table("windows", WINDOW_ROW_DT)

    def markets(self) -> np.ndarray:
        return self._table("markets", MARKET_DT)

    def window_problems(self, min_count: int = 500, lag: int = 2,
                        ref_exact: bool = True) -> list[str]:
        """Why the windows are not (yet) full, gap-free, closed-only and up to date.

        A reference-sourced row (HYPE) has no history: it starts empty and fills as the feed
        runs, so it needs only one 1m candle; its candles must be the sim's Chainlink series'
        (exactly, or with ``ref_exact=False`` also partial or flat where the feed was down).
        """
        if not self.paths.seg("windows").exists():
            return ["no windows segment"]
        now_ms = self.sim.clock.now_ms()
        out = []
        for r, row in enumerate(self.windows()):
            sym, iv_name = CANDLE_SYMBOLS[r // 3], KLINE_INTERVALS[r % 3]
            ref = r in REF_ROWS
            iv = INTERVAL_MS[iv_name]
            n = int(row["count"])
            c = row["candles"][:n]
            latest = now_ms // iv * iv - iv
            need = (1 if iv_name == "1m" else 0) if ref else min_count
            before = len(out)
            if n < need:
                out.append(f"{sym}/{iv_name}: {n} candles")
                continue
            if n == 0:
                continue
            if not (c["closed"] == 1).all():
                out.append(f"{sym}/{iv_name}: holds a forming candle")
            if not (np.diff(c["open_time"]) == iv).all():
                out.append(f"{sym}/{iv_name}: gap or duplicate")
            last = int(row["last_open_time"])
            if last != int(c["open_time"][-1]):
                out.append(f"{sym}/{iv_name}: last_open_time disagrees")
            if last > latest:
                out.append(f"{sym}/{iv_name}: candle {last} presented closed before its end")
            if last < latest - lag * iv:
                out.append(f"{sym}/{iv_name}: {(latest - last) // iv} candles behind")
            if ref and len(out) == before:
                out += reference_candle_problems(self.sim, r, c, partial_ok=not ref_exact)
        return out


_SERIES: dict[tuple[str, str], dict[int, float]] = {}     # (sim, asset) -> {ts_ms: value}


def reference_series(sim: SimProcess, asset: str, lo: int, hi: int) -> dict[int, float]:
    """The sim's Chainlink series over [lo, hi] (seconds), cached: it never changes."""
    cache = _SERIES.setdefault((sim.admin, asset), {})
    missing = [t for t in range(lo, hi + 1) if t * 1000 not in cache]
    while missing:
        a, b = missing[0], min(missing[-1], missing[0] + 3599)
        cache.update(sim_reference(sim, asset, a, b))
        missing = [t for t in missing if t > b]
    return cache


def reference_candle_problems(sim: SimProcess, r: int, c: np.ndarray,
                              partial_ok: bool = False) -> list[str]:
    """Reference-sourced candles against candles computed from the sim's series: a full
    candle (one observation per sim second) equal to it; with ``partial_ok``, one that missed
    observations within the interval's values, and a flat one (trades 0) at the previous
    close."""
    sid, iv_name = divmod(r, 3)
    iv = INTERVAL_MS[KLINE_INTERVALS[iv_name]]
    name = f"{CANDLE_SYMBOLS[sid]}/{KLINE_INTERVALS[iv_name]}"
    c = c[-(3600_000 // iv):]                      # the admin serves an hour at a time
    if len(c) == 0:
        return []
    lo, hi = int(c["open_time"][0]) // 1000, (int(c["open_time"][-1]) + iv) // 1000 - 1
    series = reference_series(sim, CHAINLINK_SYMBOLS[sid].split("/")[0], lo, hi)
    out = []
    for i, k in enumerate(c):
        t = int(k["open_time"])
        vals = [series[s * 1000] for s in range(t // 1000, (t + iv) // 1000)]
        got = (float(k["open"]), float(k["high"]), float(k["low"]), float(k["close"]))
        n = int(k["trades"])
        if n == len(vals):
            if got != (vals[0], max(vals), min(vals), vals[-1]):
                out.append(f"{name} {t}: {got} is not the series' "
                           f"{(vals[0], max(vals), min(vals), vals[-1])}")
        elif not partial_ok:
            out.append(f"{name} {t}: {n} observations of {len(vals)}")
        elif n == 0:
            if i and got != (float(c["close"][i - 1]),) * 4:
                out.append(f"{name} {t}: flat candle {got} not at the previous close")
        elif not (got[0] in vals and got[3] in vals and got[1] <= max(vals)
                  and got[2] >= min(vals)):
            out.append(f"{name} {t}: partial candle {got} outside the series")
        if k["volume"] != 0:
            out.append(f"{name} {t}: volume {k['volume']}")
    return out


def wait_for(cond: Callable[[], object], what: str, timeout: float = DEADLINE,
             feed: Feed | None = None) -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            extra = (f"\nwindow problems: {feed.window_problems(ref_exact=False)}\nfeed log:\n"
                     f"{feed.log()[-3000:]}") if feed else ""
            raise AssertionError(f"timed out waiting for {what}{extra}")
        time.sleep(0.05)           # polling interval of the condition above


@pytest.fixture
def feed(run_paths: RunPaths, control: ControlBlock, sim: SimProcess) -> Iterator[Feed]:
    clear_faults(sim.admin)
    shutil.copy(sim.run_dir / "sim.json", run_paths.sim_json)
    f = Feed(run_paths, sim)
    try:
        yield f
    finally:
        clear_faults(sim.admin)
        running = f.proc is not None and f.proc.poll() is None
        rc = f.stop() if running else 0
        for name in NAMES:                       # only if a test left a killed feed behind
            p = run_paths.seg(name)
            if p.exists():
                p.unlink()
        for p in run_paths.shm_dir.glob(f"noblink-{run_paths.run_id}-*.bell*"):
            p.unlink()
        assert rc == 0, f"feed exited with {rc}:\n{f.log()[-3000:]}"


def filled(feed: Feed, ref_exact: bool = True) -> bool:
    return not feed.window_problems(ref_exact=ref_exact)


def sim_klines(sim: SimProcess, symbol: str, interval: str, start: int, limit: int) -> list:
    url = (f"{sim.endpoints.binance_rest}/api/v3/klines?symbol={symbol}&interval={interval}"
           f"&startTime={start}&limit={limit}")
    with urllib.request.urlopen(url, timeout=10) as r:
        return orjson.loads(r.read())


# -- tests --------------------------------------------------------------------------------------

def test_windows_fill_and_match_the_exchange(feed: Feed, control: ControlBlock):
    feed.start("--no-scanner")
    wait_for(lambda: filled(feed), "windows filled", feed=feed)
    st = wait_for(lambda: feed.stats().get("state") == FeedState.RUNNING and feed.stats(),
                  "feed RUNNING", feed=feed)
    assert st["backfilled"] >= BINANCE_ROWS * 500 and st["parse_errors"] == 0
    w = control.worker(WorkerSlot.FEED)
    assert w["alive"] and w["pid"] == feed.proc.pid and w["role"] == "feed"
    # a second feed on the same run refuses to adopt segments a live feed owns
    twin = subprocess.run([sys.executable, "-m", "feed_worker", "--run-dir",
                           str(feed.paths.run_dir), "--no-scanner"], cwd=ROOT, timeout=60,
                          capture_output=True, text=True, env=dict(os.environ,
                                                                   PYTHONPATH=str(ROOT)))
    assert twin.returncode == 3 and "is a feed running" in twin.stderr
    hb = w["heartbeat_ns"]
    wait_for(lambda: control.worker(WorkerSlot.FEED)["heartbeat_ns"] > hb, "a heartbeat")
    # what the windows hold is what the exchange says those candles closed at
    row = feed.windows()[0]                                      # BTCUSDT 1m
    c = row["candles"][:int(row["count"])]
    truth = sim_klines(feed.sim, "BTCUSDT", "1m", int(c["open_time"][-100]), 100)
    assert [t[0] for t in truth] == list(c["open_time"][-100:])
    assert np.allclose([float(t[4]) for t in truth], c["close"][-100:])
    assert np.allclose([float(t[5]) for t in truth], c["volume"][-100:])
    # and it keeps up, a few candles later, from the stream
    before = int(row["last_open_time"])
    wait_for(lambda: int(feed.windows()[0]["last_open_time"]) >= before + 3 * 60_000,
             "three more closed 1m candles")
    assert filled(feed), feed.window_problems()
    s = feed.stats()
    assert s["messages"] > 100 and math.isfinite(s["latency_p99_us"])


def test_scanner_fills_all_16_slots_and_rolls_over(feed: Feed, control: ControlBlock):
    feed.start()

    def all_ok():
        if not feed.paths.seg("markets").exists():
            return False
        m = feed.markets()
        return [m] if all(SlotStatus(int(r["status"])) is SlotStatus.OK for r in m) else None
    m = wait_for(all_ok, f"{len(SLOTS)} slots OK", feed=feed)[0]
    now = feed.sim.clock.now()
    for s, r in zip(SLOTS, m, strict=True):
        w = int(r["window_start"])
        assert w in (s.window_start(now), s.window_start(now) - s.window_s)   # just scanned
        assert r["slug"].decode() == s.slug(w)
        assert r["up_token"] and r["down_token"] and r["up_token"] != r["down_token"]
        assert 0 < r["up_bid"] < r["up_ask"] < 1 and 0 < r["down_bid"] < r["down_ask"] < 1
        assert r["up_bid_size"] > 0 and r["down_ask_size"] > 0
        assert int(r["end_ts"]) == w + s.window_s
        assert r["tick_size"] == 0.01 and r["min_size"] == 5.0     # the market's own (Gamma)
    first = {s.index: int(r["window_start"]) for s, r in zip(SLOTS, m, strict=True)}
    t1 = control.tick()[0]

    def rolled():
        m = feed.markets()
        return all(int(m[s.index]["window_start"]) > first[s.index] and
                   SlotStatus(int(m[s.index]["status"])) is SlotStatus.OK
                   for s in SLOTS if s.window_s == 300)
    wait_for(rolled, "5m slots rolled over to the next window (5 s wall)", feed=feed)
    # a tick every 5 sim s = 83 ms wall: ten more ticks come within a second or so
    t2 = wait_for(lambda: control.tick()[0] > t1 + 10 and control.tick()[0], "ten ticks")
    r = RingReader(feed.paths.seg("ticks"), TICK_DT, readonly=True, start="oldest")
    try:
        recs = r.poll().records
    finally:
        r.close()
    assert len(recs) and int(recs["tick"][-1]) >= t2 - 1
    assert (np.diff(recs["tick"].astype(np.int64)) == 1).all()
    wait_for(lambda: feed.stats()["slots_ok"] == len(SLOTS), "every slot OK", feed=feed)


def test_gap_free_after_ws_drop_and_refused_reconnects(feed: Feed):
    feed.start("--no-scanner")
    wait_for(lambda: filled(feed), "windows filled", feed=feed)
    before = feed.stats()
    # drop every connection and refuse new ones for 3 s: 3 minutes of candles are missed
    set_fault(feed.sim.admin, ws_refuse_s=3.0, ws_drop=True)
    wait_for(lambda: feed.stats()["reconnects"] > before["reconnects"], "a reconnect")
    wait_for(lambda: feed.stats()["connected"] == 1 and feed.stats()["reconnects"] >=
             before["reconnects"] + 2, "connected again after refusals", feed=feed)
    wait_for(lambda: filled(feed), "windows complete again", feed=feed)
    wait_for(lambda: feed.stats()["gaps_filled"] > before["gaps_filled"], "gaps counted")
    assert filled(feed), feed.window_problems()


def test_gap_free_after_a_stall(feed: Feed):
    feed.start("--no-scanner")
    wait_for(lambda: filled(feed), "windows filled", feed=feed)
    before = feed.stats()
    # One stream goes quiet while the others flow: only the long per-stream limit applies
    # (90 s of clock for a 1m stream = 1.5 s wall), not the connection's (4 s / 1 s wall).
    t0 = time.monotonic()
    set_fault(feed.sim.admin, ws_stall="ethusdt@kline_1m")
    # the log line names this episode; the episode counter alone could be a spurious one
    wait_for(lambda: "on ethusdt@kline_1m (the connection is alive)" in feed.log(),
             "a stale episode on ethusdt@kline_1m", feed=feed)
    took = time.monotonic() - t0
    assert took >= 1.3, took         # 1.5 s less the sim's 0.1 s update period, and slack
    # the stats row is published on its own period, after the log line
    wait_for(lambda: feed.stats()["stale_episodes"] > before["stale_episodes"],
             "the episode counted", feed=feed)
    # Then all of them: the connection hears nothing at all, a connection-level stall.
    mid = feed.stats()
    set_fault(feed.sim.admin, ws_stall="*")
    wait_for(lambda: "no message at all on the connection" in feed.log(),
             "a connection-level stall", feed=feed)
    quiet_from = feed.sim.clock.now_ms()    # let 2.5 sim minutes pass in silence
    wait_for(lambda: feed.sim.clock.now_ms() >= quiet_from + 150_000, "2.5 silent sim minutes")
    clear_faults(feed.sim.admin)
    wait_for(lambda: filled(feed) and feed.stats()["connected"] == 1, "recovered", feed=feed)
    after = wait_for(lambda: feed.stats()["gaps_filled"] > before["gaps_filled"] and
                     feed.stats(), "gaps counted", feed=feed)
    assert after["stale_episodes"] > mid["stale_episodes"]
    assert after["gaps_filled"] > before["gaps_filled"]
    assert after["reconnects"] > before["reconnects"]
    assert filled(feed), feed.window_problems()


def test_kill_9_and_restart_adopts_the_windows(feed: Feed, control: ControlBlock):
    feed.start()
    wait_for(lambda: filled(feed), "windows filled", feed=feed)
    wait_for(lambda: feed.stats().get("backfilled", 0) >= BINANCE_ROWS * 512
             and control.tick()[0] > 5,
             "initial backfill and a few ticks")
    before = feed.stats()
    had = feed.windows()["count"] > 0          # a reference row may still be empty
    oldest = feed.windows()["candles"][:, 0]["open_time"].copy()
    sim_t0 = feed.sim.clock.now_ms()
    feed.kill9()
    assert not control.worker(WorkerSlot.FEED)["alive"]
    # 3 sim minutes go by with no feed at all, and the windows are visibly behind
    wait_for(lambda: feed.sim.clock.now_ms() >= sim_t0 + 180_000 and feed.window_problems(lag=1),
             "the windows to fall behind while the feed is dead")
    tick_at_death = control.tick()[0]
    feed.start()
    # the reference candles missed observations while no feed ran: partial or flat there
    wait_for(lambda: filled(feed, ref_exact=False), "windows complete after the restart",
             feed=feed)
    log = feed.log()
    assert "windows=adopted" in log and "rows reset" in log
    assert "observations replayed from refring" in log
    # counters reach shared memory with the next heartbeat (0.25 s)
    after = wait_for(lambda: feed.stats()["gaps_filled"] > before["gaps_filled"] and
                     feed.stats(), "counters of the new process", feed=feed)
    assert after["starts"] == before["starts"] + 1 == 2
    # adopted, not refetched: only the candles missed while dead came over REST
    refetched = after["backfilled"] - before["backfilled"]
    assert 0 < refetched < BINANCE_ROWS * 50, refetched
    assert after["gaps_filled"] > before["gaps_filled"]
    now_oldest = feed.windows()["candles"][:, 0]["open_time"]
    elapsed_ms = feed.sim.clock.now_ms() - sim_t0
    iv = np.array([INTERVAL_MS[KLINE_INTERVALS[r % 3]] for r in range(len(CANDLE_SYMBOLS) * 3)])
    shift = ((now_oldest - oldest) // iv)[had]
    # the same history, slid forward by no more than the candles that closed meanwhile (the
    # sim time that passed, however long a loaded machine took), not refetched from scratch
    assert (shift >= 0).all() and (shift <= elapsed_ms // iv[had] + 2).all(), (shift, elapsed_ms)
    assert control.worker(WorkerSlot.FEED)["pid"] == feed.proc.pid
    # the strategy tick continues where it was, it does not start over
    wait_for(lambda: control.tick()[0] > tick_at_death + 3, "ticks after the restart")
    r = RingReader(feed.paths.seg("ticks"), TICK_DT, readonly=True, start="oldest")
    try:
        ticks = r.poll().records["tick"].astype(np.int64)
    finally:
        r.close()
    # from tick 1, unless the ring has wrapped meanwhile (256 ticks: ~21 s at 60x)
    assert (np.diff(ticks) == 1).all(), ticks
    assert int(ticks[0]) == 1 or len(ticks) == TICK_RING_CAPACITY, ticks[:5]
    assert int(ticks[0]) <= tick_at_death < int(ticks[-1]), (ticks[:5], tick_at_death)


def test_rest_429_is_honoured_and_the_backfill_completes(feed: Feed):
    set_fault(feed.sim.admin, rest_429=6, rest_target="binance_rest")
    t0 = time.monotonic()
    feed.start("--no-scanner")
    wait_for(lambda: filled(feed), "windows filled despite 429s", feed=feed)
    took = time.monotonic() - t0
    st = wait_for(lambda: feed.stats()["backfilled"] >= BINANCE_ROWS * 500 and feed.stats(),
                  "counters flushed", feed=feed)
    assert st["rate_limited"] >= 1
    assert took >= 0.9             # the sim's Retry-After is >= 1 s and was waited out
    assert "Retry-After" in feed.log()


def test_malformed_frames_rotation_and_server_shutdown(feed: Feed):
    feed.start("--no-scanner", "--rotate-after-s", "120")     # 2 sim minutes = 2 s wall
    wait_for(lambda: filled(feed), "windows filled", feed=feed)
    wait_for(lambda: feed.stats()["rotations"] >= 1, "an age rotation", feed=feed)
    assert feed.stats()["reconnects"] == 0 and filled(feed), feed.window_problems()
    before = feed.stats()
    set_fault(feed.sim.admin, ws_malformed=30)
    wait_for(lambda: feed.stats()["parse_errors"] >= before["parse_errors"] + 30,
             "malformed frames counted", feed=feed)
    set_fault(feed.sim.admin, ws_shutdown=True)
    wait_for(lambda: "serverShutdown received" in feed.log(), "serverShutdown", feed=feed)
    wait_for(lambda: feed.stats()["rotations"] > before["rotations"], "a rotation", feed=feed)
    wait_for(lambda: filled(feed), "windows complete", feed=feed)
    assert feed.proc.poll() is None
    assert "dropped malformed frame" in feed.log()


# -- the reference price (Chainlink via RTDS) ------------------------------------------------

def sim_reference(sim: SimProcess, asset: str, lo: int, hi: int) -> dict[int, float]:
    with urllib.request.urlopen(f"{sim.admin}/reference/{asset}?from={lo}&to={hi}",
                                timeout=10) as r:
        return {x["ts_ms"]: x["value"] for x in orjson.loads(r.read())}


def reference_rows(feed: Feed) -> np.ndarray:
    return feed._table("reference", REF_ROW_DT)


def test_reference_and_price_to_beat_follow_the_sims_chainlink_series(feed: Feed):
    feed.start()
    wait_for(lambda: feed.paths.seg("reference").exists()
             and (reference_rows(feed)["obs_ms"] > 0).all(), "every asset's reference",
             feed=feed)
    rows = reference_rows(feed)
    for aid, sym in enumerate(CHAINLINK_SYMBOLS):
        row = rows[aid]
        obs = int(row["obs_ms"])
        truth = sim_reference(feed.sim, sym.split("/")[0], obs // 1000, obs // 1000)
        assert truth[obs] == float(row["value"]), sym
    # the price to beat of a window the feed saw start equals the sim's series at the start
    first = {s.index: int(r["window_start"]) for s, r in zip(SLOTS, feed.markets(), strict=True)}

    def priced():
        m = feed.markets()
        return [m] if all(int(m[s.index]["window_start"]) > first[s.index]
                          and math.isfinite(m[s.index]["price_to_beat"])
                          for s in SLOTS if s.window_s == 300) else None
    m = wait_for(priced, "5m slots priced in their next window", feed=feed)[0]
    for s in (s for s in SLOTS if s.window_s == 300):
        r = m[s.index]
        w = int(r["window_start"])
        truth = sim_reference(feed.sim, s.asset, w, w)
        assert float(r["price_to_beat"]) == truth[w * 1000], s.label
        assert int(r["ptb_ms"]) == w * 1000
        assert RefStatus(int(r["ref_status"])) is RefStatus.OK
        assert int(r["ref_ms"]) >= w * 1000 and math.isfinite(r["ref_price"])
    # the next window can open a few seconds after the start: wait for enough updates rather
    # than assume them (a CI run had 42 when the 5m slots were already priced)
    st = wait_for(lambda: (s := feed.stats()).get("rtds_updates", 0) > 100 and s,
                  "a hundred RTDS updates", feed=feed)
    assert st["rtds_connected"] == 1 and st["rtds_parse_errors"] == 0
    assert st["rtds_latency_p50_us"] > 0
    ring = RingReader(feed.paths.seg("refring"), REF_DT, readonly=True, start="oldest")
    try:
        recs = ring.poll().records
    finally:
        ring.close()
    btc = recs[recs["asset_id"] == 0]["obs_ms"]
    assert len(btc) > 10 and (np.diff(btc) == 1000).all(), "no observation lost or repeated"


def test_reference_candles_are_the_sims_chainlink_series(feed: Feed):
    """HYPE has no Binance market: its 1m/5m candles are built from the RTDS stream and are
    the candles of the sim's own Chainlink series, published like Binance's."""
    sid = REFERENCE_CANDLE_IDS[0]
    assert CANDLE_SYMBOLS[sid] == "HYPE/USD"
    r1, r5 = REF_ROWS[0], REF_ROWS[1]
    feed.start("--no-scanner")

    def counts() -> tuple[int, int]:
        w = feed.windows()
        return int(w[r1]["count"]), int(w[r5]["count"])
    wait_for(lambda: feed.paths.seg("windows").exists() and counts()[0] >= 6
             and counts()[1] >= 1, "six HYPE 1m candles and a 5m one", feed=feed)
    w = feed.windows()
    one = w[r1]["candles"][:int(w[r1]["count"])]
    five = w[r5]["candles"][:int(w[r5]["count"])]
    assert (one["trades"] == 60).all() and (five["trades"] == 300).all()
    assert (one["symbol_id"] == sid).all() and (one["interval_id"] == 0).all()
    assert reference_candle_problems(feed.sim, r1, one) == []
    assert reference_candle_problems(feed.sim, r5, five) == []
    # the Binance rows fill on their own schedule: six HYPE candles do not imply it
    wait_for(lambda: filled(feed), "windows filled", feed=feed)
    # the klines ring carries them too, forming updates and closed candles, like Binance's
    ring = RingReader(feed.paths.seg("klines"), KLINE_DT, readonly=True, start="oldest")
    try:
        recs = ring.poll(1 << 16).records
    finally:
        ring.close()
    mine = recs[(recs["symbol_id"] == sid) & (recs["interval_id"] == 0)]
    closed = mine[mine["closed"] == 1]
    assert set(one["open_time"]) <= set(closed["open_time"])
    assert (mine["closed"] == 0).sum() > len(closed)


def test_rtds_drop_malformed_and_stall_are_survived(feed: Feed):
    feed.start("--no-scanner")
    wait_for(lambda: feed.stats().get("rtds_connected") == 1
             and feed.stats()["rtds_updates"] > 50, "RTDS streaming", feed=feed)
    before = feed.stats()
    set_fault(feed.sim.admin, rtds_malformed=3)
    wait_for(lambda: feed.stats()["rtds_parse_errors"] == before["rtds_parse_errors"] + 3,
             "three malformed frames counted", feed=feed)
    set_fault(feed.sim.admin, rtds_drop=True, rtds_refuse_s=1.0)
    wait_for(lambda: feed.stats()["rtds_reconnects"] > before["rtds_reconnects"], "a reconnect")
    n = feed.stats()["rtds_updates"]
    wait_for(lambda: feed.stats()["rtds_connected"] == 1
             and feed.stats()["rtds_updates"] > n + 50, "data again after the drop", feed=feed)
    set_fault(feed.sim.admin, rtds_stall="eth/usd")        # one symbol silent: a stall
    wait_for(lambda: feed.stats()["rtds_stale_episodes"] > before["rtds_stale_episodes"],
             "a stale episode (judged by data, not pongs)", feed=feed)
    clear_faults(feed.sim.admin)
    m = feed.stats()["rtds_updates"]
    wait_for(lambda: feed.stats()["rtds_connected"] == 1
             and feed.stats()["rtds_updates"] > m + 50, "streaming again", feed=feed)


def test_a_stalled_reference_marks_only_its_slots_stale(feed: Feed):
    feed.start("--stall-floor-s", "30")      # keep the connection: watch the staleness only

    def status_of(asset: str) -> set[RefStatus]:
        m = feed.markets()
        return {RefStatus(int(m[s.index]["ref_status"])) for s in SLOTS if s.asset == asset}
    wait_for(lambda: feed.paths.seg("markets").exists()
             and status_of("btc") == {RefStatus.OK}, "btc reference OK", feed=feed)
    set_fault(feed.sim.admin, rtds_stall="btc/usd")
    # both at once: a feed that fell behind on a loaded machine turns every asset stale
    # for a moment, which alone would satisfy a wait for btc
    wait_for(lambda: status_of("btc") == {RefStatus.STALE} and status_of("eth") == {RefStatus.OK},
             "btc slots STALE while eth stays OK", feed=feed)
    clear_faults(feed.sim.admin)
    wait_for(lambda: status_of("btc") == {RefStatus.OK}, "btc fresh again", feed=feed)
