"""Cross-process wake-up by SIGUSR1 between sleeping uvloop loops: the floor under a hand-over.

Run with ``python -m bench.wakeup [--iterations 300]`` (prints a table and the JSON), or call
:func:`measure` (bench/reload.py does, and puts the result under ``wakeup`` in reload.json).
docs/benchmarks.md ("Reload") has the numbers. The method:

- A ring of K processes (forked; each runs ``uvloop.run`` and
  ``loop.add_signal_handler(SIGUSR1, event.set)``, as the strategy workers do). Process 0 sleeps
  a random 5-50 ms (``asyncio.sleep``, so the vCPUs go idle as they do between reloads), takes
  ``time.perf_counter_ns()``, sends SIGUSR1 to process 1 and waits on its event; every other
  process waits on its event and, as soon as it is woken, sends SIGUSR1 to the next one. The
  last one wakes process 0, which takes the time again: one round trip of K wake-ups.
- K = 2 (A -> B -> A) gives the one-way wake-up estimate ``hop_us`` = round trip / 2.
  K = 3 (A -> B -> C -> A) is the hand-over's chain (supervisor -> old worker -> standby ->
  supervisor) with no work in it: ``chain3_ms``. The hand-over does that work besides, so
  with the same wake-up costs it cannot be faster than the chain.
- The control: K = 2 with no pause between pings (``hop_back_to_back_us``). Both processes
  still block between pings, but only for one round trip, so neither vCPU stays idle long.
- The pipes to the children carry only the setup (pids) and the result, never a wake-up.
  The first ``WARMUP`` round trips are left out. A ping not answered within ``PING_TIMEOUT_S``
  is counted in ``timeouts`` and left out. Percentiles are nearest-rank (with 300 samples
  p99 is the 297th smallest value, not the largest).
- The processes are not pinned (the bot's are not either); the scheduler places them.
  Children are stopped with SIGTERM, then SIGKILL after a grace, also when the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import orjson
import uvloop

CTX = mp.get_context("fork")     # the children inherit the imports: quick to start
ITERATIONS = 300
WARMUP = 5
PAUSE_MS = (5.0, 50.0)           # random pause before each ping (vCPUs go idle)
PING_TIMEOUT_S = 1.0             # a ping not answered by then counts as a timeout
READY_TIMEOUT_S = 10.0           # child started -> handlers installed, pid reported
STOP_GRACE_S = 2.0               # SIGTERM -> SIGKILL


class WakeupError(Exception):
    """The measurement could not run (a child did not start, died, or did not finish)."""


def nearest_rank(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least ``p``% of the values at
    or below it (p in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(s)))
    return s[rank - 1]


def _summary(values: Sequence[float], ps: Sequence[float], digits: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in ps:
        v = nearest_rank(values, p)
        out[f"p{p:g}"] = None if v is None else round(v, digits)
    out["max"] = round(max(values), digits) if values else None
    out["n"] = len(values)
    return out


# --- the children ------------------------------------------------------------------------

async def _node(conn: Connection, role: int, iterations: int, pause_ms: tuple[float, float],
                seed: int) -> None:
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()
    stopping: list[bool] = []

    def on_term() -> None:               # only enqueue: the loop does the work
        stopping.append(True)
        wake.set()

    loop.add_signal_handler(signal.SIGUSR1, wake.set)
    loop.add_signal_handler(signal.SIGTERM, on_term)
    conn.send(("ready", os.getpid()))
    next_pid = conn.recv()               # setup only: blocking is fine, nothing signals yet
    conn.send(("armed", None))
    if role:                             # a relay: woken, wake the next one at once
        while True:
            await wake.wait()
            wake.clear()
            if stopping:
                return
            os.kill(next_pid, signal.SIGUSR1)
    conn.recv()                          # "go": every relay is armed
    rng = random.Random(seed)
    timed_out: list[bool] = []

    def on_timeout() -> None:
        timed_out.append(True)
        wake.set()

    rtts: list[int] = []
    timeouts = 0
    for i in range(WARMUP + iterations):
        if pause_ms[1] > 0:
            await asyncio.sleep(rng.uniform(*pause_ms) / 1000)
        if stopping:
            return
        wake.clear()
        timed_out.clear()
        guard = loop.call_later(PING_TIMEOUT_S, on_timeout)
        t0 = time.perf_counter_ns()
        os.kill(next_pid, signal.SIGUSR1)
        await wake.wait()
        t1 = time.perf_counter_ns()
        guard.cancel()
        if timed_out:
            timeouts += 1
        elif i >= WARMUP:
            rtts.append(t1 - t0)
    conn.send(("done", (rtts, timeouts)))


def _child(conn: Connection, role: int, iterations: int, pause_ms: tuple[float, float],
           seed: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # ^C: the parent cleans up
    try:
        uvloop.run(_node(conn, role, iterations, pause_ms, seed))
    except (EOFError, BrokenPipeError):              # the parent went away
        pass
    finally:
        conn.close()


# --- the parent --------------------------------------------------------------------------

def _expect(conn: Connection, what: str, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise WakeupError(f"no {what!r} from a child within {timeout:.0f}s")
    try:
        tag, value = conn.recv()
    except EOFError:
        raise WakeupError(f"a child exited before {what!r}") from None
    if tag != what:
        raise WakeupError(f"expected {what!r} from a child, got {tag!r}")
    return value


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


def ring(k: int, iterations: int, pause_ms: tuple[float, float],
         seed: int = 1) -> tuple[list[int], int]:
    """One ring of ``k`` processes; (round trips in ns, timeouts). Raises WakeupError."""
    if k < 2 or iterations < 1:
        raise ValueError("a ring needs k >= 2 processes and iterations >= 1")
    procs: list[Any] = []
    conns: list[Connection] = []
    try:
        for role in range(k):
            mine, theirs = CTX.Pipe()
            p = CTX.Process(target=_child, args=(theirs, role, iterations, pause_ms, seed),
                            name=f"wakeup-{k}-{role}", daemon=True)
            p.start()
            theirs.close()
            procs.append(p)
            conns.append(mine)
        pids = [_expect(c, "ready", READY_TIMEOUT_S) for c in conns]
        for i, c in enumerate(conns):
            c.send(pids[(i + 1) % k])
        for c in conns:
            _expect(c, "armed", READY_TIMEOUT_S)
        conns[0].send("go")
        per_ping_s = pause_ms[1] / 1000 + 0.005
        rtts, timeouts = _expect(conns[0], "done",
                                 (WARMUP + iterations) * per_ping_s + 10.0
                                 + PING_TIMEOUT_S * 3)
        return rtts, timeouts
    finally:
        _stop(procs)
        for c in conns:
            c.close()


def measure(iterations: int = ITERATIONS, pause_ms: tuple[float, float] = PAUSE_MS,
            seed: int = 1, back_to_back: bool = True) -> dict[str, Any]:
    """The 2-process hop, the 3-process chain (and the back-to-back control), as a dict:
    ``hop_us`` (one way = round trip / 2), ``chain3_ms`` (the whole A -> B -> C -> A),
    ``hop_back_to_back_us``, ``timeouts``, the settings and the seconds it took."""
    t0 = time.monotonic()
    load = [round(x, 2) for x in os.getloadavg()]
    rtt2, to2 = ring(2, iterations, pause_ms, seed)
    rtt3, to3 = ring(3, iterations, pause_ms, seed + 1)
    res: dict[str, Any] = {
        "hop_us": _summary([r / 2 / 1000 for r in rtt2], (50, 90, 99), 1),
        "chain3_ms": _summary([r / 1e6 for r in rtt3], (50, 90, 99), 3),
    }
    timeouts = {"hop": to2, "chain3": to3}
    if back_to_back:
        rtt_b, to_b = ring(2, iterations, (0.0, 0.0), seed + 2)
        res["hop_back_to_back_us"] = _summary([r / 2 / 1000 for r in rtt_b], (50, 90, 99), 1)
        timeouts["hop_back_to_back"] = to_b
    res.update(timeouts=timeouts, iterations=iterations, pause_ms=list(pause_ms),
               cpus=len(os.sched_getaffinity(0)), loadavg_at_start=load,
               seconds=round(time.monotonic() - t0, 1))
    return res


def table(res: dict[str, Any]) -> str:
    rows = [("wake-up (SIGUSR1 -> uvloop)", "n", "p50", "p90", "p99", "max")]
    for key, label, unit in (("hop_us", "one hop, 5-50 ms idle (RTT/2)", "us"),
                             ("chain3_ms", "3-hop chain A->B->C->A", "ms"),
                             ("hop_back_to_back_us", "one hop, back to back (RTT/2)", "us")):
        s = res.get(key)
        if s is None:
            continue
        digits = 1 if unit == "us" else 3
        rows.append((f"{label} [{unit}]", str(s["n"]),
                     *("-" if s[k] is None else f"{s[k]:.{digits}f}"
                       for k in ("p50", "p90", "p99", "max"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True))))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    t = res["timeouts"]
    lines.append(f"timeouts {', '.join(f'{k} {v}' for k, v in t.items())}; "
                 f"{res['cpus']} CPUs, load {res['loadavg_at_start'][0]}, "
                 f"{res['seconds']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wakeup",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--iterations", type=int, default=ITERATIONS, help="round trips per ring")
    ap.add_argument("--pause-ms", type=float, nargs=2, default=PAUSE_MS,
                    metavar=("MIN", "MAX"), help="random pause before each ping")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-back-to-back", action="store_true",
                    help="skip the control without pauses")
    args = ap.parse_args(argv)
    if args.iterations < 1 or not 0 <= args.pause_ms[0] <= args.pause_ms[1]:
        ap.error("--iterations must be >= 1 and 0 <= MIN <= MAX")
    try:
        res = measure(args.iterations, tuple(args.pause_ms), args.seed,
                      back_to_back=not args.no_back_to_back)
    except WakeupError as e:
        print(f"bench.wakeup: {e}", file=sys.stderr)
        return 1
    print(table(res))
    print(orjson.dumps(res).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
