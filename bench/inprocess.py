"""The seed's approach, measured: ``importlib.reload`` of the strategy inside the trading loop.

Run alone with ``python -m bench.inprocess`` (prints the JSON), or call :func:`measure`;
bench/run_all.py calls :func:`run_isolated` (the same in a fresh interpreter) with the tick
views it recorded from the bot. In short:

- One uvloop loop, as a worker runs, with three jobs: a **feed** consumer (a forked process
  writes 16-byte records ``(seq, send time)`` on a stream socketpair at ``FEED_RATE`` per
  second, sleeping between sends; the loop reads them with ``add_reader``), a **tick** task
  that evaluates every slot of a tick view with the module's ``Strategy`` every ``TICK_S``
  (83 ms: a tick at 60x), and a **monitor**, a ``call_later`` chain every 1 ms that notes
  when the loop actually ran it.
- The strategy is strategies/momentum.py copied into a temporary package, with what a real
  strategy adds at import time: it imports numpy and builds a lookup table
  (``TABLE_ROWS`` x 2001 fair-probability grid) and defines a helper function. Two versions
  alternate (each reload changes the source, so it is recompiled, as after an edit); version
  A also has two module-level names that B no longer defines.
- ``RELOADS`` times, every ``GAP_S``: the file is rewritten (outside the measured span), then
  ``importlib.reload(module)`` runs inside a coroutine, on the loop, as the seed did it.
- ``loop_blocked_ms``: the longest gap between two monitor callbacks that spans a reload,
  minus the 1 ms period (the loop could run nothing else meanwhile); ``reload_call_ms`` the
  reload call alone. ``feed_msgs_delayed``: feed records sent while a reload ran (they sat in
  the socket until it returned); ``feed_delay_ms`` the longest wait of one. Both are the
  worst over the reloads; the same quantities with no reload in the window (``baseline``)
  show what the loop does otherwise.
- ``stale_references``, probed after the first A -> B reload: the strategy instance the loop
  holds (created before) is not an instance of the new ``module.Strategy``; a bound
  ``evaluate`` taken before runs the old code; a ``Strategy`` name imported before (``from
  module import Strategy``) is the old class; a helper function taken before is the old
  function; and the names A defined and B does not are still in the module. Each one that
  holds counts 1.
- The same reloads of momentum.py without the table (``plain``) give the floor: compile and
  run the module body. ``page_faults_per_reload`` (minor faults, getrusage) shows how much
  fresh memory each reload touched.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib
import itertools
import multiprocessing as mp
import os
import pickle
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop

from bench.wakeup import nearest_rank
from strategy_worker.api import Book, SlotView

ROOT = Path(__file__).resolve().parent.parent
MOMENTUM = ROOT / "strategies" / "momentum.py"
FEED_RATE = 1000.0
TICK_S = 5.0 / 60.0
MONITOR_S = 0.001
RELOADS = 20
GAP_S = 0.4
WARMUP_S = 1.0
TABLE_ROWS = 900                 # seconds left 1..900 x 2001 moves
REC = struct.Struct("<qq")       # seq, send time (time.monotonic_ns)
CTX = mp.get_context("fork")
PKG = "noblink_bench_inproc"

IMPORT_COST = '''

# --- bench.inprocess: what a real strategy adds at import time -----------------------------
import numpy as _np

_MOVES = _np.linspace(-0.02, 0.02, 2001)
_SECS = _np.arange(1, {rows} + 1, dtype=float)
# fair probability of "Up" by (seconds left, move from the open): a lookup table
FAIR_UP = 0.5 * (1.0 + _np.tanh(_MOVES[None, :] / (0.0008 * _np.sqrt(_SECS[:, None] / 60.0))))


def fair_up(seconds_left: float, move: float) -> float:
    i = min(max(int(seconds_left), 1), {rows}) - 1
    j = int(round((min(max(move, -0.02), 0.02) + 0.02) / 0.00002))
    return float(FAIR_UP[i, j])
'''
HELPER = '''

def fair_up(seconds_left: float, move: float) -> float:
    return 0.5 + max(-0.5, min(0.5, move * 100))
'''
LEGACY = '''
LEGACY_MIN_MOVE = 0.001


def _legacy_confirm(moves: list) -> bool:
    return len(moves) >= 3
'''
LEGACY_NAMES = ("LEGACY_MIN_MOVE", "_legacy_confirm")


def _sources(table: bool) -> dict[str, str]:
    base = MOMENTUM.read_text()
    cost = IMPORT_COST.format(rows=TABLE_ROWS) if table else HELPER
    return {"A": base + cost + LEGACY + "\n# version A\n", "B": base + cost + "\n# version B\n"}


def synthetic_views(n: int = 16) -> list[SlotView]:
    """Tick views when none were recorded (standalone run): 16 slots, 30 closed 1m candles."""
    from state.layout import KLINE_DT

    now = 1_800_000_000.0
    start = int(now // 300 * 300)
    c = np.zeros(30, dtype=KLINE_DT)
    c["open_time"] = (start - 25 * 60 + np.arange(30) * 60) * 1000
    c["close_time"] = c["open_time"] + 59_999
    c["open"] = c["close"] = 100.0 + np.arange(30) * 0.05
    book = Book(0.5, 0.52, 100.0, 100.0)
    return [SlotView(tick=1, now=now, slot=i, label=f"s{i}", asset="btc", window_s=300,
                     window_start=start, end_ts=start + 300, slug=f"s{i}", accepting=True,
                     up=book, down=book, candles={"1m": c, "5m": c[:0], "15m": c[:0]})
            for i in range(n)]


# --- the feed, in its own process -------------------------------------------------------------

def _feed_sender(sock: socket.socket, rate: float, seconds: float, ready: Connection) -> None:
    period = 1e9 / rate
    ready.send(os.getpid())
    ready.recv()                                    # go
    t0 = time.monotonic_ns()
    seq = 0
    end = t0 + int(seconds * 1e9)
    with contextlib.suppress(OSError):
        while True:
            due = t0 + int(seq * period)
            if due > end:
                break
            now = time.monotonic_ns()
            if due > now:
                time.sleep((due - now) / 1e9)
            sock.sendall(REC.pack(seq, time.monotonic_ns()))
            seq += 1
    sock.close()


# --- the loop under test -----------------------------------------------------------------------

class Loop:
    def __init__(self, sock: socket.socket, module: Any, views: list[list[SlotView]]) -> None:
        self.sock = sock
        self.module = module
        self.views = views
        self.instance = module.Strategy({})
        self.monitor: list[int] = []               # monotonic ns of each monitor callback
        self.recv: list[tuple[int, int]] = []      # (send ns, receive ns) per feed record
        self.reloads: list[tuple[int, int]] = []   # (start ns, end ns) of each reload call
        self.faults: list[int] = []                # minor page faults during each reload
        self.evaluations = 0
        self.eval_errors = 0
        self._buf = b""
        self.eof = asyncio.Event()

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        now = time.monotonic_ns()
        if not data:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.eof.set()
            return
        buf = self._buf + data
        n = len(buf) // REC.size
        for i in range(n):
            _, sent = REC.unpack_from(buf, i * REC.size)
            self.recv.append((sent, now))
        self._buf = buf[n * REC.size:]

    def on_monitor(self) -> None:
        self.monitor.append(time.monotonic_ns())
        if not self.eof.is_set():
            asyncio.get_running_loop().call_later(MONITOR_S, self.on_monitor)

    async def ticks(self) -> None:
        i = 0
        while not self.eof.is_set():
            for v in self.views[i % len(self.views)]:
                try:
                    self.instance.evaluate(v)
                    self.evaluations += 1
                except Exception:
                    self.eval_errors += 1
            i += 1
            await asyncio.sleep(TICK_S)

    def reload(self) -> None:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.monotonic_ns()
        importlib.reload(self.module)
        self.reloads.append((t0, time.monotonic_ns()))
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)


def _probe_before(loop: Loop) -> dict[str, Any]:
    m = loop.module
    return {"instance": loop.instance, "bound": loop.instance.evaluate, "cls": m.Strategy,
            "helper": m.fair_up}


def _defined_names(source: str) -> set[str]:
    """The module-level names a source defines (top-level assignments, defs, classes,
    imports), without running it."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _probe_after(before: dict[str, Any], module: Any, new_names: set[str]) -> dict[str, Any]:
    probes = {
        "instance_not_new_class": type(before["instance"]) is not module.Strategy,
        "bound_method_old_code": before["bound"].__func__ is not module.Strategy.evaluate,
        "imported_class_old": before["cls"] is not module.Strategy,
        "helper_function_old": before["helper"] is not module.fair_up,
    }
    lingering = [n for n in LEGACY_NAMES if hasattr(module, n) and n not in new_names]
    count = sum(probes.values()) + len(lingering)
    return {"count": count, "probes": probes, "lingering_names": lingering}


async def _run(sock: socket.socket, go: Connection, module: Any, path: Path,
               sources: dict[str, str], views: list[list[SlotView]], reloads: int) -> dict:
    loop = Loop(sock, module, views)
    ev = asyncio.get_running_loop()
    ev.add_reader(sock.fileno(), loop.on_readable)
    go.send("go")
    loop.on_monitor()
    ticker = asyncio.ensure_future(loop.ticks())
    stale: dict[str, Any] = {}
    await asyncio.sleep(WARMUP_S)
    names = ["B", "A"]
    defined = {k: _defined_names(v) for k, v in sources.items()}
    for i in range(reloads):
        name = names[i % 2]
        path.write_text(sources[name])             # an edit, outside the measured span
        await asyncio.sleep(GAP_S / 2)
        before = _probe_before(loop) if i == 0 else None
        loop.reload()                              # blocks the loop: the seed's reload
        if before is not None:
            stale = _probe_after(before, loop.module, defined[name])
        await asyncio.sleep(GAP_S / 2)
    await loop.eof.wait()
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    return {"loop": loop, "stale": stale}


def _gaps(monitor: list[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(monitor))


def _analyse(loop: Loop, reload_spans: list[tuple[int, int]]) -> dict[str, Any]:
    gaps = _gaps(loop.monitor)
    blocked, delayed, delay_ms, call_ms = [], [], [], []
    for a, b in reload_spans:
        g = max((y - x for x, y in gaps if x <= b and y >= a), default=0)
        blocked.append(max(0.0, g / 1e6 - MONITOR_S * 1000))
        sent = [(s, r) for s, r in loop.recv if a <= s <= b]
        delayed.append(len(sent))
        delay_ms.append(max(((r - s) / 1e6 for s, r in sent), default=0.0))
        call_ms.append((b - a) / 1e6)
    # the baseline: gaps and feed waits away from any reload (more than 50 ms from one)
    margin = 50_000_000
    t_first = loop.monitor[0] + int(WARMUP_S / 2 * 1e9)

    def quiet(t: int) -> bool:
        return t > t_first and all(t < a - margin or t > b + margin for a, b in reload_spans)

    base_gaps = [(y - x) / 1e6 - MONITOR_S * 1000 for x, y in gaps if quiet(x)]
    base_feed = [(r - s) / 1e6 for s, r in loop.recv if quiet(s)]
    return {
        "loop_blocked_ms": round(max(blocked), 2),
        "loop_blocked_ms_p50": round(nearest_rank(blocked, 50) or 0, 2),
        "feed_msgs_delayed": max(delayed),
        "feed_delay_ms": round(max(delay_ms), 2),
        "reload_call_ms": {"p50": round(nearest_rank(call_ms, 50) or 0, 2),
                           "max": round(max(call_ms), 2)},
        "loop_blocked_ms_per_reload": [round(x, 2) for x in blocked],
        "feed_msgs_delayed_per_reload": delayed,
        "baseline": {"loop_gap_ms_p99": round(nearest_rank(base_gaps, 99) or 0, 3),
                     "loop_gap_ms_max": round(max(base_gaps, default=0), 3),
                     "feed_delay_ms_p99": round(nearest_rank(base_feed, 99) or 0, 3),
                     "feed_delay_ms_max": round(max(base_feed, default=0), 3)},
        "page_faults_per_reload": loop.faults,
        "feed_msgs": len(loop.recv), "evaluations": loop.evaluations,
        "eval_errors": loop.eval_errors,
    }


def _one(views: list[list[SlotView]], table: bool, reloads: int) -> dict[str, Any]:
    sources = _sources(table)
    tmp = Path(tempfile.mkdtemp(prefix="noblink-bench-inproc-"))
    pkg = tmp / PKG
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    path = pkg / "strategy.py"
    path.write_text(sources["A"])
    sys.path.insert(0, str(tmp))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent, child = CTX.Pipe()
    seconds = WARMUP_S + reloads * GAP_S + 0.5
    proc = CTX.Process(target=_feed_sender, args=(b, FEED_RATE, seconds, child), daemon=True)
    try:
        t0 = time.perf_counter()
        module = importlib.import_module(f"{PKG}.strategy")
        import_ms = (time.perf_counter() - t0) * 1000
        proc.start()
        b.close()
        if not parent.poll(10):
            raise RuntimeError("the feed sender did not start")
        parent.recv()
        a.setblocking(False)
        out = uvloop.run(_run(a, parent, module, path, sources, views, reloads))
        res = _analyse(out["loop"], out["loop"].reloads)
        res["first_import_ms"] = round(import_ms, 2)
        res["stale_references"] = out["stale"].get("count")
        res["stale_detail"] = out["stale"]
        return res
    finally:
        a.close()
        with contextlib.suppress(OSError):
            b.close()
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
            del sys.modules[name]
        with contextlib.suppress(ValueError):
            sys.path.remove(str(tmp))
        shutil.rmtree(tmp, ignore_errors=True)


def measure(views: list[list[SlotView]] | None = None, reloads: int = RELOADS) -> dict[str, Any]:
    """The table version (the keys) and the plain one (``plain``), one after the other."""
    views = views or [synthetic_views()]
    res = _one(views, table=True, reloads=reloads)
    plain = _one(views, table=False, reloads=reloads)
    res["plain"] = {k: plain[k] for k in ("loop_blocked_ms", "loop_blocked_ms_p50",
                                          "feed_msgs_delayed",
                                          "feed_delay_ms", "reload_call_ms",
                                          "first_import_ms", "stale_references")}
    res["params"] = {"feed_rate_per_s": FEED_RATE, "tick_s": round(TICK_S, 4),
                     "monitor_ms": MONITOR_S * 1000, "reloads": reloads,
                     "table": f"{TABLE_ROWS} x 2001 float64", "views": len(views)}
    return res


def run_isolated(views: list[list[SlotView]] | None, reloads: int = RELOADS,
                 timeout: float = 180.0) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter (``python -m bench.inprocess``): the loop under
    test then has a heap like a small bot's, not the bench's (whose recorded views and
    results would make every garbage collection during a reload slower)."""
    with tempfile.TemporaryDirectory(prefix="noblink-bench-inproc-") as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, "-m", "bench.inprocess", "--reloads", str(reloads),
               "--out", str(out)]
        if views:
            vf = Path(tmp) / "views.pickle"
            vf.write_bytes(pickle.dumps(views, protocol=pickle.HIGHEST_PROTOCOL))
            cmd += ["--views", str(vf)]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=timeout, check=False)
        if p.returncode != 0:
            raise RuntimeError(f"bench.inprocess exited {p.returncode}: "
                               f"{p.stderr.decode(errors='replace')[-2000:]}")
        return orjson.loads(out.read_bytes())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.inprocess",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--reloads", type=int, default=RELOADS)
    ap.add_argument("--views", type=Path, default=None,
                    help="a pickle of tick views (list of lists of SlotView) to evaluate")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    views = pickle.loads(args.views.read_bytes()) if args.views else None
    data = orjson.dumps(measure(views, reloads=args.reloads), option=orjson.OPT_INDENT_2)
    if args.out:
        args.out.write_bytes(data + b"\n")
    else:
        print(data.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
