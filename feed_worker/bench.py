"""Feed latency bench: ``python -m feed_worker.bench [--seconds 10] [--speed 60]``.

Starts a simulator and a real feed worker process on a throw-away run, lets it stream for
``--seconds`` after its windows are filled, and reads what the feed itself measured:
receive-to-publish latency per kline update (``recv_ns`` stamped when the WebSocket library
hands the frame over, to the record being in the ring and, for a closed candle, in its
window), p50/p99 over the last 8192 updates. Writes ``bench/results/feed.json``::

    {"feed": {"p50_us": ..., "p99_us": ..., "messages": ..., "msgs_per_s": ..., ...},
     "meta": {...}}

``run_bench()`` is the same as a function, for a bench suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from feed_worker.lifecycle import FeedState
from feed_worker.segments import NAMES
from state.control import ControlBlock
from state.layout import FEED_STATS_DT
from state.run import RunPaths, new_run_id
from state.table import TableReader

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "feed.json"


def _stats(paths: RunPaths) -> dict[str, Any]:
    t = TableReader(paths.seg("feedstats"), FEED_STATS_DT)
    try:
        row = t.read(0)
    finally:
        t.close()
    return {k: row[k].item() for k in FEED_STATS_DT.names if not k.startswith("_")}


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: timed out waiting for {what}")
        time.sleep(0.1)            # polling interval of the readiness condition


def run_bench(seconds: float = 10.0, speed: float = 60.0, scanner: bool = True
              ) -> dict[str, Any]:
    """Run sim + feed for ``seconds`` of steady streaming; return the result document."""
    from sim.testing import start_sim

    with tempfile.TemporaryDirectory(prefix="noblink-feedbench-") as tmp:
        paths = RunPaths(Path(tmp), "fb" + new_run_id())
        cb = ControlBlock.create(paths.seg("control"), paths.run_id)
        paths.write_run_json(mode="bench")
        sim = start_sim(paths.run_dir, speed=speed, seed=11)
        log = open(paths.run_dir / "feed.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "feed_worker", "--run-dir", str(paths.run_dir),
               "--unlink-on-exit", *(() if scanner else ("--no-scanner",))]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)))
        try:
            _wait(lambda: paths.seg("feedstats").exists()
                  and _stats(paths)["state"] == FeedState.RUNNING,
                  30, "the feed to be RUNNING")
            s0 = _stats(paths)
            t0 = time.monotonic()
            time.sleep(seconds)    # the measured span
            s1 = _stats(paths)
            span = time.monotonic() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            sim.stop()
            for n in NAMES:
                p = paths.seg(n)
                if p.exists():
                    p.unlink()
            cb.unlink()
            cb.close()
    msgs = s1["messages"] - s0["messages"]
    return {
        "feed": {
            "p50_us": round(s1["latency_p50_us"], 2),
            "p99_us": round(s1["latency_p99_us"], 2),
            "messages": msgs,
            "msgs_per_s": round(msgs / span, 1),
            "ticks": s1["tick"] - s0["tick"],
            "ticks_per_s": round((s1["tick"] - s0["tick"]) / span, 2),
            "reconnects": s1["reconnects"] - s0["reconnects"],
            "parse_errors": s1["parse_errors"],
            "slots_ok": s1["slots_ok"],
            "duration_s": round(span, 2),
            "speed": speed,
            "scanner": scanner,
            "window": "last 8192 updates, receive -> published in shared memory",
        },
        "meta": {"when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "platform": platform.platform()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m feed_worker.bench", description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--speed", type=float, default=60.0)
    ap.add_argument("--no-scanner", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    res = run_bench(args.seconds, args.speed, scanner=not args.no_scanner)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    f = res["feed"]
    print(f"feed: p50 {f['p50_us']} us, p99 {f['p99_us']} us over {f['messages']} updates "
          f"({f['msgs_per_s']}/s), {f['ticks_per_s']} ticks/s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
