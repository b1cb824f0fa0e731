"""The alternatives to a hot reload that restart a process: the whole bot, or the strategy alone.

Used by bench/run_all.py, in the same run as the reload measurement.

- ``cold_restart``: the bot that ran the reloads gets SIGTERM (an ordered stop: the strategy
  saves its snapshot, every segment is removed), then the same command starts it again in
  the same run dir (``noblink run --speed 60 --run-dir DIR``). From the Popen on, the bench
  polls the new run's control block every ``POLL_S`` (read-only: the same words status.json
  is built from, without its 0.25 s write period) and notes when each step of the ordered
  start was reached: run.json of the new supervisor, the feed RUNNING (windows backfilled
  over REST), the position worker RUNNING, a strategy epoch active, and the first
  evaluation (a lane's ``evaluated`` > 0 with the feed RUNNING). ``first_eval_ms`` is start
  command -> first evaluation; that first tick may be one published while the strategy
  started (a new worker evaluates every tick still in the ring, oldest first), so
  ``first_live_eval_ms`` says when it had evaluated the newest one. The market does not
  stop meanwhile: ``missed_ticks`` is the number of 5 s scanner ticks that elapse in market
  time over the whole downtime (SIGTERM to the old bot -> first evaluation of the new one),
  wall seconds x speed / 5 s. (The new run numbers its ticks from 1 again, so they cannot
  be counted from tick numbers.)
- ``kill_strategy``: kill -9 of the active strategy worker of a running bot. The supervisor
  restarts it as an unplanned reload (after its restart backoff, 0.5 s the first time):
  spawn, import, verify, restore of the newest snapshot. ``first_eval_ms`` is kill -> the
  successor's first evaluation; ``missed_ticks`` counts the ticks the scanner published in
  that time (control block tick counter at the kill and at the first evaluation): no
  strategy evaluated them on time, so none of them could trade. The successor does evaluate
  them afterwards, late, from the tick ring (``record_missed_ticks``, from its reload
  record, says whether any was never evaluated at all; ``first_live_eval_ms`` is when it
  had caught up with the newest tick). The kill comes once the strategy has kept up with
  the ticks for ``STEADY_S`` (right after a start it is still evaluating the ticks
  published while it started).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from bench.reload import TICK_MARKET_S, BenchError, Bot
from state.control import ControlBlock, WorkerSlot
from state.layout import N_LANES
from state.run import RunPaths
from supervisor.workers import RestartPolicy

POLL_S = 0.005
START_TIMEOUT_S = 90.0
RESTART_TIMEOUT_S = 30.0
STEADY_S = 2.0
FEED_READY = (3, 4)          # FeedState RUNNING, DEGRADED: windows backfilled
POSITION_READY = (3,)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def attach_control(run_dir: Path, run_id: str) -> ControlBlock:
    return ControlBlock.attach(RunPaths(run_dir, run_id).seg("control"), readonly=True)


def caught_up(cb: ControlBlock) -> bool:
    """The active strategy has evaluated the newest published tick."""
    hit = first_evaluation(cb)
    return hit is not None and int(cb.lanes[hit[0]]["tick"]) >= cb.tick()[0]


def wait_steady(bot: Bot, seconds: float, timeout: float = 30.0) -> None:
    """Until the active strategy has stayed within one tick of the newest for ``seconds``."""
    assert bot.run_id is not None
    cb = attach_control(bot.run_dir, bot.run_id)
    try:
        since = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bot.check_alive()
            now = time.monotonic()
            hit = first_evaluation(cb)
            if hit is not None and cb.tick()[0] - int(cb.lanes[hit[0]]["tick"]) <= 1:
                since = since or now
                if now - since >= seconds:
                    return
            else:
                since = None
            time.sleep(0.02)
        raise BenchError(f"the strategy did not keep up with the ticks within {timeout:.0f}s")
    finally:
        cb.close()


def first_evaluation(cb: ControlBlock) -> tuple[int, int] | None:
    """(lane, epoch) of the active strategy once it has evaluated a tick, else None."""
    active = cb.active_epoch
    if not active:
        return None
    for lane in range(N_LANES):
        w = cb.worker(WorkerSlot.strategy(lane))
        if w["epoch"] == active and int(cb.lanes[lane]["evaluated"]) > 0:
            return lane, active
    return None


def restarted(bot: Bot) -> Bot:
    """The same command in the same run dir, not started yet."""
    return Bot(bot.speed, run_dir=bot.run_dir, extra_args=bot.extra_args,
               out_name="supervisor-restarted.out")


def cold_restart(bot: Bot, new: Bot, say: Callable[[str], None]) -> dict[str, Any]:
    """Stop ``bot``, start ``new`` (``restarted(bot)``) and time it; ``new`` keeps running
    (the caller stops it)."""
    t_stop = time.monotonic()
    old_cleanup = bot.stop()
    stop_ms = (time.monotonic() - t_stop) * 1000
    if old_cleanup.stop != "sigterm" or old_cleanup.exit_code != 0:
        say(f"warning: the old bot stopped by {old_cleanup.stop}, exit {old_cleanup.exit_code}")
    new.start()
    t0 = new.started_mono
    marks: dict[str, float] = {}
    cb: ControlBlock | None = None
    assert new.proc is not None
    try:
        deadline = t0 + START_TIMEOUT_S
        while "first_eval" not in marks:
            now = time.monotonic()
            if now > deadline:
                raise BenchError(f"cold restart: no evaluation within {START_TIMEOUT_S:.0f}s "
                                 f"(reached: {sorted(marks)})")
            new.check_alive()
            if new.run_id is None:
                run = _read_json(new.run_dir / "run.json")
                if run and int(run.get("pid", 0)) == new.proc.pid:
                    new.run_id = str(run["run_id"])
                    marks["run_json"] = now
            if new.run_id is not None and cb is None:
                with contextlib.suppress(Exception):   # not created yet
                    cb = attach_control(new.run_dir, new.run_id)
            if cb is not None:
                feed = cb.worker(WorkerSlot.FEED)
                if feed["pid"] and feed["state"] in FEED_READY:
                    marks.setdefault("feed_running", now)
                pos = cb.worker(WorkerSlot.POSITION)
                if pos["pid"] and pos["state"] in POSITION_READY:
                    marks.setdefault("position_running", now)
                if cb.active_epoch:
                    marks.setdefault("strategy_active", now)
                if "feed_running" in marks and first_evaluation(cb) is not None:
                    marks["first_eval"] = now
            time.sleep(POLL_S)
        # The first evaluation may be of a tick published while the strategy started (the
        # worker evaluates every tick still in the ring, oldest first): note when it has
        # caught up with the newest one too.
        assert cb is not None
        while time.monotonic() < deadline and not caught_up(cb):
            time.sleep(POLL_S)
        if caught_up(cb):
            marks["caught_up"] = time.monotonic()
    finally:
        if cb is not None:
            cb.close()
    first_eval_ms = (marks["first_eval"] - t0) * 1000
    downtime_ms = stop_ms + first_eval_ms
    res = {
        "first_eval_ms": round(first_eval_ms, 1),
        "missed_ticks": int(downtime_ms / 1000 * bot.speed / TICK_MARKET_S),
        "stop_ms": round(stop_ms, 1),
        "downtime_ms": round(downtime_ms, 1),
        "milestones_ms": {k: round((v - t0) * 1000, 1) for k, v in sorted(
            marks.items(), key=lambda kv: kv[1])},
        "first_live_eval_ms": round((marks["caught_up"] - t0) * 1000, 1)
        if "caught_up" in marks else None,
        "old_bot_stop": old_cleanup.stop, "old_bot_exit": old_cleanup.exit_code,
        "old_bot_leftover_segments": list(old_cleanup.leftover_segments),
        "speed": bot.speed,
        "method": "SIGTERM to the running bot, then `noblink run --speed S --run-dir <same>`; "
                  "control block polled every 5 ms from the Popen; missed_ticks = (stop + "
                  "start) wall s x speed / 5 s",
    }
    return res


def kill_strategy(bot: Bot, say: Callable[[str], None]) -> dict[str, Any]:
    """kill -9 the active strategy worker (once it has kept up with the ticks for
    ``STEADY_S``); time until its successor evaluates."""
    assert bot.run_id is not None
    wait_steady(bot, STEADY_S)
    cb = attach_control(bot.run_dir, bot.run_id)
    try:
        active = cb.active_epoch
        victim = next((cb.worker(WorkerSlot.strategy(ln)) for ln in range(N_LANES)
                       if cb.worker(WorkerSlot.strategy(ln))["epoch"] == active), None)
        if not active or victim is None or not victim["pid"]:
            raise BenchError("kill -9: no active strategy worker to kill")
        tick0 = cb.tick()[0]
        t0 = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        found = None
        while found is None:
            if time.monotonic() - t0 > RESTART_TIMEOUT_S:
                raise BenchError(f"kill -9: no successor evaluated within "
                                 f"{RESTART_TIMEOUT_S:.0f}s")
            bot.check_alive()
            hit = first_evaluation(cb)
            if hit is not None and hit[1] > active:
                found = hit
                break
            time.sleep(POLL_S)
        t1 = time.monotonic()
        tick1 = cb.tick()[0]
        lane_rec = cb.lane(found[0])
        while time.monotonic() - t0 < RESTART_TIMEOUT_S and not caught_up(cb):
            time.sleep(POLL_S)
        t2 = time.monotonic() if caught_up(cb) else None
    finally:
        cb.close()
    rec = _crash_record(bot, found[1], timeout=5.0)
    first_eval_ms = (t1 - t0) * 1000
    return {
        "first_eval_ms": round(first_eval_ms, 1),
        "missed_ticks": int(tick1 - tick0),
        "missed_ticks_by_time": int(first_eval_ms / 1000 * bot.speed / TICK_MARKET_S),
        "first_live_eval_ms": None if t2 is None else round((t2 - t0) * 1000, 1),
        "tick_at_kill": int(tick0),
        "killed": {"pid": victim["pid"], "epoch": active, "lane": victim["lane"]},
        "successor": {"epoch": found[1], "lane": found[0],
                      "first_tick": int(lane_rec["active_tick"])},
        "restart_backoff_ms": RestartPolicy().backoff_min * 1000,
        "record_missed_ticks": rec.get("missed_ticks") if rec else None,
        "record_phases_ms": rec.get("phases_ms") if rec else None,
        "record_trigger": rec.get("trigger") if rec else None,
        "method": "kill -9 of the active strategy worker; the supervisor's crash restart "
                  "(backoff, spawn, verify, restore of the newest snapshot); control block "
                  "polled every 5 ms; missed_ticks = ticks published from the kill to the "
                  "successor's first evaluation",
    }


def _crash_record(bot: Bot, epoch: int, timeout: float) -> dict[str, Any] | None:
    """The reload record (reloads.jsonl) that made ``epoch`` active."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            for ln in reversed((bot.run_dir / "reloads.jsonl").read_bytes().splitlines()):
                with contextlib.suppress(orjson.JSONDecodeError):
                    rec = orjson.loads(ln)
                    if isinstance(rec, dict) and rec.get("to_epoch") == epoch:
                        return rec
        time.sleep(0.05)
    return None
