"""One-way latency and throughput: the shared-memory ring against multiprocessing.Queue/Pipe.

Run with ``python -m bench.ring`` (or ``make bench-ring``); writes bench/results/ring.json and
prints a table. docs/benchmarks.md describes the method and the numbers; in short:

- Every transport carries the same 96-byte ``KLINE_DT`` record between two processes, placed
  by the scheduler (``--pin`` puts the sender on one CPU and the receiver on the other: better
  on an idle machine, worse on a shared one, where a pinned sender cannot dodge a busy CPU).
- Latency: a *paced* sender sends ``--count`` records at ``--rate`` per second on a fixed
  schedule and stamps each with its *scheduled* send time (``time.monotonic_ns``: one clock
  for every process on Linux). The receiver subtracts the stamp from its own clock once the
  record is in its hands. A send that starts late counts as latency instead of silently
  moving the schedule (no coordinated omission). The first ``--warmup`` records are left out.
  Between sends the sender sleeps (releasing the GIL, as an idle producer would) and spins
  only the last 50 us; the "busy sender" variants spin the whole gap instead.
- Throughput: the writer alone (``publish`` per record, ``publish_many`` in batches), then end
  to end: the sender sends as fast as it can and the receiver counts what arrives, from the
  first record's send time to the last record's arrival.
- Every receiver waits the way the workers do: an asyncio task on uvloop. The shm receiver
  awaits ``RingReader.wait`` (an adaptive spin of at most 50 us, then sleep on its FIFO bell)
  and then polls. The Pipe and Queue receivers get the same event-loop machinery as the
  bell (:class:`FdWaiter`: the fd registered once with ``add_reader``, a callback that
  resolves the future the task awaits), then read: ``recv_bytes`` (then whatever else
  ``poll()`` says is there), or ``get(block=False)`` until Empty (Queue's fd is its reading
  Connection, ``q._reader``, the one ``get`` polls). So the rows differ only in the
  transport. The ``*_blocking`` variants are the receivers without an event loop
  (``wait_blocking``, ``poll``/``recv_bytes``, ``get``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import multiprocessing as mp
import os
import platform
import queue
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import uvloop

from state.layout import KLINE_DT
from state.ring import RingReader, RingWriter
from state.segment import segment_path

RESULTS = Path(__file__).resolve().parent / "results" / "ring.json"
REC_SIZE = KLINE_DT.itemsize
STAMP_OFF = KLINE_DT.fields["recv_ns"][1]
_I64 = struct.Struct("<q")
RING_CAPACITY = 1 << 16
READY_TIMEOUT_S = 10.0
SPIN_MARGIN_NS = 50_000
PR_SET_TIMERSLACK = 29
CTX = mp.get_context("fork")               # children inherit the imports: quick to start
PIN: dict[str, int] = {}                   # role -> CPU, filled in by main() with --pin

Send = Callable[[bytearray], Any]


def _template() -> bytearray:
    rec = np.zeros((), dtype=KLINE_DT)
    rec["symbol_id"], rec["interval_id"], rec["open"], rec["close"] = 1, 0, 97000.5, 97001.25
    return bytearray(rec.tobytes())


def _precise_sleeps() -> None:
    """Ask for 1 us timer slack (default 50 us) so short sleeps end close to on time."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def _wait_until(t_ns: int, busy: bool) -> None:
    # Sleep until shortly before the send time, then busy-wait the rest. Sleeping releases
    # the GIL, which Queue needs: its feeder thread pickles and writes while the sender
    # sleeps. A sender that spins the whole gap (busy=True, a producer busy parsing) starves
    # that thread. The final spin keeps the sender's own wake-up jitter out of the numbers.
    ahead = t_ns - time.monotonic_ns() - SPIN_MARGIN_NS
    if ahead > 0 and not busy:
        time.sleep(ahead / 1e9)
    while time.monotonic_ns() < t_ns:
        pass


def percentiles(lat_ns: np.ndarray, prefix: str = "") -> dict[str, float]:
    us = lat_ns.astype(np.float64) / 1000.0
    p50, p99, p999 = np.percentile(us, [50, 99, 99.9])
    return {f"{prefix}p50_us": round(float(p50), 1), f"{prefix}p99_us": round(float(p99), 1),
            f"{prefix}p999_us": round(float(p999), 1), f"{prefix}max_us": round(float(us.max()), 1),
            f"{prefix}mean_us": round(float(us.mean()), 1)}


# --- transports (built in the parent, used by forked children) -------------------------

class ShmTransport:
    name = "shm"

    def __init__(self, run_tag: str, *, spin_us: float = 50.0, blocking: bool = False) -> None:
        self.path = segment_path(run_tag, "benchring")
        self.spin_us = spin_us
        self.blocking = blocking
        self.writer = RingWriter(self.path, KLINE_DT, RING_CAPACITY, name="benchring")

    def sender(self) -> Send:
        return self.writer.publish

    def close(self) -> None:
        self.writer.unlink()
        self.writer.close()


class QueueTransport:
    name = "queue"

    def __init__(self, *, blocking: bool = False) -> None:
        self.blocking = blocking
        self.q = CTX.Queue()

    def sender(self) -> Send:
        put = self.q.put
        return lambda buf: put(bytes(buf))     # Queue pickles later, in its feeder thread

    def close(self) -> None:
        self.q.close()


class PipeTransport:
    name = "pipe"

    def __init__(self, *, blocking: bool = False) -> None:
        self.blocking = blocking
        self.rx, self.tx = CTX.Pipe(duplex=False)

    def sender(self) -> Send:
        return self.tx.send_bytes

    def close(self) -> None:
        self.rx.close()
        self.tx.close()


# --- receivers (child processes): report send stamps and arrival times -----------------

def _shm_receive(tr: ShmTransport, n: int, ready: Any, out: Connection) -> None:
    stamps = np.zeros(n, dtype=np.int64)
    arrivals = np.zeros(n, dtype=np.int64)
    reader = RingReader(tr.path, KLINE_DT, name="bench", start="newest", spin_us=tr.spin_us)
    got = lost = 0

    def take() -> None:
        nonlocal got, lost
        batch = reader.poll(4096)
        now = time.monotonic_ns()
        k = min(len(batch), n - got)
        stamps[got:got + k] = batch.records["recv_ns"][:k]
        arrivals[got:got + k] = now
        got += k
        lost += batch.lost

    async def run_async() -> None:
        ready.set()
        while got + lost < n and await reader.wait(5.0):
            take()

    try:
        if tr.blocking:
            ready.set()
            while got + lost < n and reader.wait_blocking(5.0):
                take()
        else:
            uvloop.run(run_async())
        out.send({"stamps": stamps[:got], "arrivals": arrivals[:got], "lost": lost})
    finally:
        reader.close()


class FdWaiter:
    """Wait for a readable fd the way ``Bell.wait`` waits for its FIFO (state/wakeup.py), so
    that Queue and Pipe get the same event-loop machinery as the ring: the fd is registered
    with the loop once (``add_reader``), its callback resolves a future that the receiving
    task awaits, and the task then reads. (Adding and removing the reader per wait costs
    uvloop several syscalls, one of them on the wake-up path.) The receiving task yields
    only in :meth:`wait`, so a callback with no waiter cannot spin the loop here."""

    _waiter: asyncio.Future[bool] | None = None

    def __init__(self, fd: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.fd = fd
        self.loop.add_reader(fd, self._on_readable)

    def _on_readable(self) -> None:
        fut = self._waiter
        if fut is not None and not fut.done():
            fut.set_result(True)

    async def wait(self, timeout: float) -> bool:
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._waiter = fut
        timer = self.loop.call_later(timeout, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self.loop.remove_reader(self.fd)


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def _queue_receive(tr: QueueTransport, n: int, ready: Any, out: Connection) -> None:
    stamps = np.zeros(n, dtype=np.int64)
    arrivals = np.zeros(n, dtype=np.int64)
    get, unpack, mono = tr.q.get, _I64.unpack_from, time.monotonic_ns
    got = 0

    async def run_async() -> None:
        # Queue has no public fd; its reading end is a Connection (q._reader), which is
        # what get() itself polls. Wake on it, then take what get() can hand over.
        nonlocal got
        waiter = FdWaiter(tr.q._reader.fileno())     # type: ignore[attr-defined]
        ready.set()
        while got < n and await waiter.wait(5.0):
            with contextlib.suppress(queue.Empty):
                while got < n:
                    b = get(block=False)
                    arrivals[got] = mono()
                    stamps[got] = unpack(b, STAMP_OFF)[0]
                    got += 1
        waiter.close()

    if tr.blocking:
        ready.set()
        with contextlib.suppress(queue.Empty):    # after a silence: report the rest
            while got < n:
                b = get(timeout=5.0)
                arrivals[got] = mono()
                stamps[got] = unpack(b, STAMP_OFF)[0]
                got += 1
    else:
        uvloop.run(run_async())
    out.send({"stamps": stamps[:got], "arrivals": arrivals[:got], "lost": n - got})


def _pipe_receive(tr: PipeTransport, n: int, ready: Any, out: Connection) -> None:
    stamps = np.zeros(n, dtype=np.int64)
    arrivals = np.zeros(n, dtype=np.int64)
    recv, unpack, mono, poll = tr.rx.recv_bytes, _I64.unpack_from, time.monotonic_ns, tr.rx.poll
    got = 0

    async def run_async() -> None:
        nonlocal got
        waiter = FdWaiter(tr.rx.fileno())
        ready.set()
        while got < n and await waiter.wait(5.0):
            b = recv()
            arrivals[got] = mono()
            stamps[got] = unpack(b, STAMP_OFF)[0]
            got += 1
            while got < n and poll():          # drain what else came (throughput), like
                b = recv()                     # the ring's poll(); stamped as it is read
                arrivals[got] = mono()
                stamps[got] = unpack(b, STAMP_OFF)[0]
                got += 1
        waiter.close()

    if tr.blocking:
        ready.set()
        while got < n and poll(5.0):
            b = recv()
            arrivals[got] = mono()
            stamps[got] = unpack(b, STAMP_OFF)[0]
            got += 1
    else:
        uvloop.run(run_async())
    out.send({"stamps": stamps[:got], "arrivals": arrivals[:got], "lost": n - got})


RECEIVERS = {ShmTransport: _shm_receive, QueueTransport: _queue_receive,
             PipeTransport: _pipe_receive}


# --- senders (child processes) ---------------------------------------------------------

def _paced_send(tr: Any, n: int, rate: float, busy: bool, ready: Any, out: Connection) -> None:
    send = tr.sender()
    buf = _template()
    period = int(1e9 / rate)
    lag = np.zeros(n, dtype=np.int64)
    _precise_sleeps()
    if not ready.wait(READY_TIMEOUT_S):
        out.send({"error": "receiver never became ready"})
        return
    t0 = time.monotonic_ns() + 20_000_000
    for i in range(n):
        due = t0 + i * period
        _wait_until(due, busy)
        lag[i] = time.monotonic_ns() - due
        _I64.pack_into(buf, STAMP_OFF, due)           # the *scheduled* time: no omission
        send(buf)
    out.send({"lag": lag})


def _blast_send(tr: Any, n: int, ready: Any, out: Connection) -> None:
    send = tr.sender()
    buf = _template()
    if not ready.wait(READY_TIMEOUT_S):
        out.send({"error": "receiver never became ready"})
        return
    time.sleep(0.02)
    pack, mono = _I64.pack_into, time.monotonic_ns
    t0 = mono()
    for _ in range(n):
        pack(buf, STAMP_OFF, mono())
        send(buf)
    out.send({"send_s": (mono() - t0) / 1e9})


def _blast_send_batches(tr: ShmTransport, n: int, batch: int, ready: Any,
                        out: Connection) -> None:
    arr = np.frombuffer(bytes(_template()) * batch, dtype=KLINE_DT).copy()
    publish_many, mono = tr.writer.publish_many, time.monotonic_ns
    if not ready.wait(READY_TIMEOUT_S):
        out.send({"error": "receiver never became ready"})
        return
    time.sleep(0.02)
    t0 = mono()
    for _ in range(n // batch):
        arr["recv_ns"] = mono()
        publish_many(arr)
    out.send({"send_s": (mono() - t0) / 1e9})


def _pinned(role: str, target: Callable[..., None]) -> Callable[..., None]:
    def run(*args: Any) -> None:
        if role in PIN:
            os.sched_setaffinity(0, {PIN[role]})
        target(*args)
    return run


def _run_pair(tr: Any, n: int, sender: Callable[..., None], *args: Any) -> tuple[dict, dict]:
    """Fork a receiver and a sender for transport ``tr``; return their reports."""
    ready = CTX.Event()
    rx_out, rx_in = CTX.Pipe(duplex=False)
    sx_out, sx_in = CTX.Pipe(duplex=False)
    receiver = CTX.Process(target=_pinned("rx", RECEIVERS[type(tr)]),
                           args=(tr, n, ready, rx_in), name=f"{tr.name}-rx")
    sender_p = CTX.Process(target=_pinned("tx", sender), args=(tr, n, *args, ready, sx_in),
                           name=f"{tr.name}-tx")
    receiver.start()
    sender_p.start()
    try:
        # Read results before join: a child blocks on a full pipe until they are read.
        sent = sx_out.recv() if sx_out.poll(120) else {"error": "sender timed out"}
        got = rx_out.recv() if rx_out.poll(120) else {"error": "receiver timed out"}
    finally:
        for p in (sender_p, receiver):
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    if "error" in sent or "error" in got:
        raise RuntimeError(f"{tr.name}: {sent.get('error') or got.get('error')}")
    return sent, got


# --- measurements ----------------------------------------------------------------------

def measure_latency(tr: Any, n: int, rate: float, warmup: int,
                    busy: bool = False) -> dict[str, Any]:
    sent, got = _run_pair(tr, n, _paced_send, rate, busy)
    lat = got["arrivals"] - got["stamps"]
    res: dict[str, Any] = percentiles(lat[warmup:])
    res.update({"samples": len(lat[warmup:]), "rate_per_s": rate, "sent": n,
                "received": len(lat), "lost": int(got["lost"]), "warmup_excluded": warmup,
                "busy_sender": busy})
    # How late the sender itself started each send (part of the latency above, not the
    # transport's doing: a busy CPU or a paused vCPU shows up here), and the latency from
    # the actual send (the transport alone; every record arrives, in order, so they pair up).
    res.update(percentiles(sent["lag"][warmup:], "sender_late_"))
    if len(lat) == n:
        res.update(percentiles((lat - sent["lag"])[warmup:], "from_send_"))
    return res


def measure_e2e(tr: Any, n: int, batch: int = 0) -> dict[str, Any]:
    if batch:
        sent, got = _run_pair(tr, n, _blast_send_batches, batch)
        n = n // batch * batch
    else:
        sent, got = _run_pair(tr, n, _blast_send)
    stamps, arrivals = got["stamps"], got["arrivals"]
    received = len(stamps)
    span_ns = int(arrivals[-1] - stamps[0]) if received else 0
    key = "e2e_batch" if batch else "e2e"
    return {f"{key}_msgs_per_s": round(received / (span_ns / 1e9)) if span_ns else 0,
            f"{key}_sent": n, f"{key}_received": received, f"{key}_lost": int(got["lost"]),
            f"{key}_sender_msgs_per_s": round(n / sent["send_s"])}


def measure_writer(tr: ShmTransport, n: int, batch: int) -> dict[str, Any]:
    """The producer alone, in this process: what one publish costs (no reader attached)."""
    buf = _template()
    publish = tr.writer.publish
    for _ in range(10_000):                    # warm the pages and the code path
        publish(buf)
    t0 = time.perf_counter_ns()
    for _ in range(n):
        publish(buf)
    single = n / ((time.perf_counter_ns() - t0) / 1e9)
    rec = np.frombuffer(bytes(buf), dtype=KLINE_DT)[0]
    t0 = time.perf_counter_ns()
    for _ in range(n // 4):
        publish(rec)
    void = (n // 4) / ((time.perf_counter_ns() - t0) / 1e9)
    arr = np.frombuffer(bytes(buf) * batch, dtype=KLINE_DT)
    rounds = max(1, n // batch)
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        tr.writer.publish_many(arr)
    many = rounds * batch / ((time.perf_counter_ns() - t0) / 1e9)
    return {"writer_publish_per_s": round(single), "writer_publish_void_per_s": round(void),
            "writer_publish_many_per_s": round(many), "publish_many_batch": batch,
            "writer_records": n}


def machine_info() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version(), "numpy": np.__version__,
            "uvloop": uvloop.__version__, "loadavg_at_start": list(os.getloadavg())}


def _with(make: Callable[[], Any], step: Callable[[Any], dict]) -> dict[str, Any]:
    # A fresh transport for every measurement: a forked sender advances the ring, not the
    # parent's copy of the writer, so a writer object is never reused after a child published.
    tr = make()
    try:
        return step(tr)
    finally:
        tr.close()


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each percentile's median over the runs; the runs' own p50/p99/p99.9 are kept too."""
    out: dict[str, Any] = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            med = float(np.median([r[k] for r in runs]))
            out[k] = round(med, 1) if isinstance(v, float) else round(med)
    out["runs"] = [{k: r[k] for k in ("p50_us", "p99_us", "p999_us")} for r in runs]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    tag = f"bench{os.getpid()}"
    lat = (args.count, args.rate, args.warmup)
    results: dict[str, Any] = {"meta": machine_info()}
    results["meta"].update({"record_bytes": REC_SIZE, "latency_count": args.count,
                            "latency_rate_per_s": args.rate, "latency_repeats": args.repeat,
                            "ring_capacity": RING_CAPACITY, "pinned": dict(PIN),
                            "receivers": "uvloop tasks: shm RingReader.wait + poll; pipe and "
                                         "queue FdWaiter + recv_bytes / get(block=False)"})
    makers: dict[str, Callable[[], Any]] = {"shm": lambda: ShmTransport(tag),
                                            "queue": QueueTransport, "pipe": PipeTransport}
    # Latency: the transports take turns, run after run, so that a noisy moment on the
    # machine does not fall on one of them only; each percentile is the median of the runs.
    # Each round starts with the next transport, so none always runs first or last.
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in makers}
    keys = list(makers)
    for i in range(args.repeat):
        for key in keys[i % 3:] + keys[:i % 3]:
            runs[key].append(_with(makers[key], lambda tr: measure_latency(tr, *lat)))
    for key in makers:
        results[key] = _median_of(runs[key])
    shm = results["shm"]
    shm.update(_with(makers["shm"], lambda tr: measure_writer(tr, args.writer_count,
                                                              args.batch)))
    shm.update(_with(makers["shm"], lambda tr: measure_e2e(tr, args.e2e_count)))
    shm.update(_with(makers["shm"], lambda tr: measure_e2e(tr, args.e2e_count * 4,
                                                           args.batch)))
    for key in ("queue", "pipe"):
        results[key].update(_with(makers[key], lambda tr: measure_e2e(tr,
                                                                      args.e2e_count_slow)))
    for key in makers:
        results[key]["msgs_per_s"] = results[key]["e2e_msgs_per_s"]
    variants: dict[str, Any] = {}
    if not args.quick:
        busy_lat = (args.count // 2, args.rate, args.warmup)
        variants["shm_wait_blocking"] = _with(lambda: ShmTransport(tag, blocking=True),
                                              lambda tr: measure_latency(tr, *lat))
        variants["pipe_blocking"] = _with(lambda: PipeTransport(blocking=True),
                                          lambda tr: measure_latency(tr, *lat))
        variants["shm_spin_0"] = _with(lambda: ShmTransport(tag, spin_us=0.0),
                                       lambda tr: measure_latency(tr, *lat))
        variants["shm_spin_200us"] = _with(lambda: ShmTransport(tag, spin_us=200.0),
                                           lambda tr: measure_latency(tr, *lat))
        variants["shm_busy_sender"] = _with(makers["shm"], lambda tr: measure_latency(
            tr, *busy_lat, busy=True))
        variants["queue_busy_sender"] = _with(QueueTransport, lambda tr: measure_latency(
            tr, *busy_lat, busy=True))
    results["variants"] = variants
    s, q = results["shm"], results["queue"]
    results["ratios"] = {
        "queue_over_shm_p99": round(q["p99_us"] / s["p99_us"], 2),
        "pipe_over_shm_p99": round(results["pipe"]["p99_us"] / s["p99_us"], 2),
        "shm_over_queue_msgs_per_s": round(s["msgs_per_s"] / q["msgs_per_s"], 2),
        "shm_over_pipe_msgs_per_s": round(s["msgs_per_s"] / results["pipe"]["msgs_per_s"], 2),
        "shm_writer_over_queue_msgs_per_s": round(s["writer_publish_per_s"] / q["msgs_per_s"],
                                                  2),
    }
    if "queue_busy_sender" in variants:
        results["ratios"]["queue_over_shm_p99_busy_sender"] = round(
            variants["queue_busy_sender"]["p99_us"] / variants["shm_busy_sender"]["p99_us"], 2)
    p = results["pipe"]
    results["ratios"]["pipe_over_shm_p50"] = round(p["p50_us"] / s["p50_us"], 2)
    results["targets"] = {
        "shm_p50_le_pipe_p50": s["p50_us"] <= p["p50_us"],
        "shm_p99_le_pipe_p99": s["p99_us"] <= p["p99_us"],
        "shm_p50_le_25us": s["p50_us"] <= 25.0,
        "shm_p99_le_100us": s["p99_us"] <= 100.0,
        "writer_ge_1M_per_s": s["writer_publish_per_s"] >= 1_000_000,
        "ge_5x_queue_p99": results["ratios"]["queue_over_shm_p99"] >= 5.0,
        "ge_5x_queue_throughput": results["ratios"]["shm_over_queue_msgs_per_s"] >= 5.0,
    }
    return results


def table(results: dict[str, Any]) -> str:
    rows = [("transport", "p50 us", "p99 us", "p99.9 us", "max us", "sender late p99.9",
             "e2e msg/s", "lost")]
    named = [(k, results[k]) for k in ("shm", "queue", "pipe")]
    named += list(results.get("variants", {}).items())
    for key, r in named:
        e2e = r.get("e2e_msgs_per_s")
        rows.append((key, f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}", f"{r['p999_us']:.1f}",
                     f"{r['max_us']:.0f}", f"{r['sender_late_p999_us']:.1f}",
                     f"{e2e:,.0f}" if e2e else "-", str(r["lost"] + r.get("e2e_lost", 0))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    s = results["shm"]
    lines += ["",
              f"shm writer alone: publish(bytes) {s['writer_publish_per_s']:,} rec/s, "
              f"publish(np.void) {s['writer_publish_void_per_s']:,} rec/s, "
              f"publish_many({s['publish_many_batch']}) {s['writer_publish_many_per_s']:,} "
              f"rec/s",
              f"shm end to end with publish_many({s['publish_many_batch']}): "
              f"{s['e2e_batch_msgs_per_s']:,} rec/s, lost {s['e2e_batch_lost']}",
              "ratios: " + ", ".join(f"{k}={v}" for k, v in results["ratios"].items()),
              "targets: " + ", ".join(f"{k}={'ok' if v else 'MISSED'}"
                                      for k, v in results["targets"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ring", description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10_000,
                    help="paced records per transport and run")
    ap.add_argument("--rate", type=float, default=10_000.0, help="paced records per second")
    ap.add_argument("--warmup", type=int, default=1_000, help="paced records left out")
    ap.add_argument("--repeat", type=int, default=5,
                    help="latency runs per transport (median of each percentile)")
    ap.add_argument("--writer-count", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=256, help="publish_many batch size")
    ap.add_argument("--e2e-count", type=int, default=1_000_000, help="shm end-to-end records")
    ap.add_argument("--e2e-count-slow", type=int, default=200_000,
                    help="Queue/Pipe end-to-end records")
    ap.add_argument("--quick", action="store_true", help="skip the variants")
    ap.add_argument("--pin", action="store_true",
                    help="pin the sender to the first CPU and the receiver to the second")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin and len(cpus) >= 2:
        PIN.update(tx=cpus[0], rx=cpus[1])
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {os.getloadavg()[0]:.2f}: other processes compete for "
              "the CPUs and will show up in the tails (and in the medians, if they are busy)",
              file=sys.stderr)
    t0 = time.monotonic()
    results = run(args)
    results["meta"]["bench_seconds"] = round(time.monotonic() - t0, 1)
    results["meta"]["loadavg_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print(table(results))
    print(f"\nwrote {args.out} in {results['meta']['bench_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
