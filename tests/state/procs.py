"""Child-process entry points for the state tests: ``python -m tests.state.procs ROLE JSON``.

They run as separate, unrelated interpreters (not forks of pytest), attach to segments by path
only, and talk to the test over stdin/stdout lines: ``READY``, then one JSON report line.

Every record and row carries a payload derived from its own sequence number and a checksum,
so a reader can tell a torn or misplaced copy from a good one without any other knowledge.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from state.ring import RingReader, RingWriter
from state.table import TableReader, TableWriter

# 128-byte ring record and a 4 KiB table row (a long copy: a wide window for a torn read).
RING_WORDS = 14
ROW_WORDS = 510
RING_DT = np.dtype([("seq", "<u8"), ("payload", "<u8", (RING_WORDS,)), ("check", "<u8")])
ROW_DT = np.dtype([("seq", "<u8"), ("payload", "<u8", (ROW_WORDS,)), ("check", "<u8")])
K1 = np.uint64(0x9E3779B97F4A7C15)
K2 = np.uint64(0xC2B2AE3D27D4EB4F)
STATS_ROWS = 8            # rows 0..7 are hammered; row 8 is the "done" row (seq = total)
DONE_ROW = STATS_ROWS


def payload(seqs: np.ndarray, words: int) -> np.ndarray:
    """(len(seqs), words) u64 derived from each seq (wrapping multiply/xor, no overflow)."""
    s = np.asarray(seqs, dtype=np.uint64).reshape(-1, 1)
    return (s * K1) ^ (np.arange(words, dtype=np.uint64) * K2 + s)


def checksum(seqs: np.ndarray, pay: np.ndarray) -> np.ndarray:
    return np.bitwise_xor.reduce(pay, axis=1) ^ np.asarray(seqs, dtype=np.uint64) ^ K2


def make(dtype: np.dtype, seqs: np.ndarray) -> np.ndarray:
    words = dtype["payload"].shape[0]
    out = np.empty(len(seqs), dtype=dtype)
    out["seq"] = seqs
    out["payload"] = payload(seqs, words)
    out["check"] = checksum(seqs, out["payload"])
    return out


def bad_records(recs: np.ndarray) -> np.ndarray:
    """Indices of records whose payload/checksum do not match their own seq field."""
    if len(recs) == 0:
        return np.empty(0, dtype=np.intp)
    seqs = recs["seq"].astype(np.uint64)
    words = recs.dtype["payload"].shape[0]
    ok = (recs["payload"] == payload(seqs, words)).all(axis=1)
    ok &= recs["check"] == checksum(seqs, recs["payload"])
    return np.flatnonzero(~ok)


def _ready() -> None:
    print("READY", flush=True)


def _report(doc: dict) -> None:
    print(json.dumps(doc), flush=True)


# --- stress writer -----------------------------------------------------------------------

def stress_writer(ring: str, table: str, capacity: int, seconds: float, max_records: int,
                  seed: int) -> None:
    """Publish singles and batches for ``seconds`` and hammer the table rows meanwhile;
    finally store the total in the done row, unlink (owner) and report."""
    rng = np.random.default_rng(seed)
    w = RingWriter(Path(ring), RING_DT, capacity, name="stress")
    t = TableWriter(Path(table), ROW_DT, STATS_ROWS + 1, name="stress")
    _ready()
    sys.stdin.readline()                                   # GO
    versions = np.zeros(STATS_ROWS, dtype=np.uint64)
    singles = batches = table_writes = 0
    deadline = time.monotonic() + seconds
    while w.head() < max_records and time.monotonic() < deadline:
        head = w.head()
        if rng.random() < 0.5:
            rec = make(RING_DT, np.array([head], dtype=np.uint64))[0]
            assert w.publish(rec) == head
            singles += 1
        else:
            n = int(rng.integers(1, 2 * capacity))
            w.publish_many(make(RING_DT, np.arange(head, head + n, dtype=np.uint64)))
            batches += 1
        i = int(rng.integers(0, STATS_ROWS))
        versions[i] += 1
        row = make(ROW_DT, versions[i:i + 1])[0]
        if table_writes % 2:
            t.write(i, row)
        else:
            with t.update(i) as r:                         # in place, field by field
                r["seq"] = row["seq"]
                r["payload"] = row["payload"]
                r["check"] = row["check"]
        table_writes += 1
    total = w.head()
    t.write(DONE_ROW, make(ROW_DT, np.array([total], dtype=np.uint64))[0])
    _report({"total": total, "singles": singles, "batches": batches,
             "table_writes": table_writes})
    sys.stdin.readline()                                   # EXIT: everyone has finished
    w.unlink()
    w.close()
    t.unlink()
    t.close()


# --- stress reader -----------------------------------------------------------------------

class Checker:
    """Verifies every batch a reader accepts, and the bookkeeping of what it lost."""

    def __init__(self, reader: RingReader, table: TableReader) -> None:
        self.r = reader
        self.t = table
        self.expect = reader.cursor          # the seq the next record must have (after lost)
        self.seen = self.lost = self.batches = 0
        self.errors: list[str] = []
        self.row_versions = np.zeros(STATS_ROWS, dtype=np.uint64)
        self.row_reads = 0

    def take(self, max_records: int) -> int:
        b = self.r.poll(max_records)
        if b.first_seq != self.expect + b.lost:
            self.errors.append(f"first_seq {b.first_seq} != {self.expect} + lost {b.lost}")
        seqs = b.records["seq"]
        want = np.arange(b.first_seq, b.first_seq + len(b), dtype=np.uint64)
        if not np.array_equal(seqs, want):
            k = int(np.flatnonzero(seqs != want)[0])
            self.errors.append(f"record {b.first_seq + k} carries seq {int(seqs[k])}")
        bad = bad_records(b.records)
        if len(bad):
            self.errors.append(f"{len(bad)} torn records accepted, first at seq "
                               f"{b.first_seq + int(bad[0])}")
        self.seen += len(b)
        self.lost += b.lost
        self.batches += 1
        self.expect = b.first_seq + len(b)
        return len(b)

    def check_table(self) -> None:
        i = self.row_reads % STATS_ROWS
        row = self.t.read(i)
        self.row_reads += 1
        never_written = row["seq"] == 0 and not row["payload"].any() and row["check"] == 0
        if not never_written and len(bad_records(row.reshape(1))):
            self.errors.append(f"torn table row {i} (version {int(row['seq'])}) accepted")
        if row["seq"] < self.row_versions[i]:
            self.errors.append(f"table row {i} went back from {self.row_versions[i]}")
        self.row_versions[i] = row["seq"]

    def total(self) -> int:
        return int(self.t.read(DONE_ROW)["seq"])      # 0 until the writer has finished

    def done(self) -> bool:
        total = self.total()
        return total > 0 and self.expect >= total

    def report(self, **extra: object) -> dict:
        return {"seen": self.seen, "lost": self.lost, "batches": self.batches,
                "lost_total": self.r.lost_total, "lapped": self.r.lapped_count,
                "end": self.expect, "total": self.total(), "row_reads": self.row_reads,
                "errors": self.errors[:20], **extra}


def stress_reader(ring: str, table: str, mode: str, max_records: int, seconds: float) -> None:
    """mode: "blocking" (wait_blocking), "async" (await wait), "slow" (sleep 2 ms per poll,
    sure to be lapped on a small ring)."""
    r = RingReader(Path(ring), RING_DT, name=f"stress-{mode}", start="oldest")
    t = TableReader(Path(table), ROW_DT)
    c = Checker(r, t)
    _ready()
    deadline = time.monotonic() + seconds

    async def run_async() -> None:
        while not c.done() and time.monotonic() < deadline:
            if c.take(max_records) == 0:
                await r.wait(0.05)
            c.check_table()

    if mode == "async":
        import uvloop
        uvloop.run(run_async())
    else:
        while not c.done() and time.monotonic() < deadline:
            got = c.take(max_records)
            c.check_table()
            if mode == "slow":
                time.sleep(0.002)
            elif got == 0:
                r.wait_blocking(0.05)
    _report(c.report(mode=mode, timed_out=not c.done()))
    r.close()
    t.close()


# --- small helpers for the lifecycle tests ------------------------------------------------

def attach_and_exit(ring: str, table: str, how: str) -> None:
    """Attach like a worker (reader slot and bell too), then leave by ``how``."""
    r = RingReader(Path(ring), RING_DT, name="visitor")
    t = TableReader(Path(table), ROW_DT)
    r.poll()
    t.read(0)
    _report({"index": r.index, "pid": os.getpid()})
    if how == "kill":
        os.kill(os.getpid(), 9)
    elif how == "exit":                  # no close(): the interpreter just ends
        os._exit(0)
    r.close()
    t.close()


def raw_mmap_and_exit(path: str) -> None:
    """Map a segment with nothing but os + mmap (the inspector's way), read it, exit."""
    import mmap
    fd = os.open(path, os.O_RDONLY)
    m = mmap.mmap(fd, os.fstat(fd).st_size, prot=mmap.PROT_READ)
    _report({"magic": m[:8].decode(errors="replace"), "size": len(m)})
    m.close()
    os.close(fd)


def stdlib_attach_and_exit(name: str) -> None:
    """What noblink must never do: attach with multiprocessing.shared_memory (3.11)."""
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(name=name)
    _report({"size": shm.size})
    shm.close()


def create_and_abandon(ring: str) -> None:
    """Create a segment and exit without unlinking it: a run that died."""
    w = RingWriter(Path(ring), RING_DT, 16, name="orphan")
    w.publish(make(RING_DT, np.array([0], dtype=np.uint64))[0])
    _report({"pid": os.getpid()})
    os._exit(0)


def publish_later(ring: str, delay: float, count: int) -> None:
    """Own a ring; after GO, sleep ``delay`` then publish ``count`` records, each carrying
    the monotonic time of its publish in ``check``; unlink on EXIT."""
    w = RingWriter(Path(ring), RING_DT, 64, name="later")
    _ready()
    sys.stdin.readline()                                   # GO
    time.sleep(delay)
    for _ in range(count):
        rec = make(RING_DT, np.array([w.head()], dtype=np.uint64))[0]
        rec["check"] = time.monotonic_ns()
        w.publish(rec)
    _report({"published": count, "head": w.head()})
    sys.stdin.readline()                                   # EXIT
    w.unlink()
    w.close()


def spin_ns(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def echo(ping: str, pong: str, rounds: int, timeout: float, spin_us: float,
         jitter_us: float) -> None:
    """Ping-pong for the wake-up protocol: own ``pong``; for each record that arrives on
    ``ping`` (the test's ring), publish one on ``pong`` after a random busy delay of up to
    ``jitter_us``. With ``spin_us=0`` every wait sleeps on the bell (flag / re-check / ring);
    with a long spin and a small jitter this side answers within microseconds, so its
    publishes sweep across the other side's way to sleep. Reports waits that slept through
    a publish (a lost wake-up: they end only at their timeout)."""
    w = RingWriter(Path(pong), RING_DT, 64, name="pong")
    r = RingReader(Path(ping), RING_DT, name="echo", spin_us=spin_us)
    recs = make(RING_DT, np.arange(rounds, dtype=np.uint64))
    delays = np.random.default_rng().integers(0, int(jitter_us * 1000) + 1, rounds)
    _ready()
    late = 0
    for i in range(rounds):
        while r.lag() == 0:
            t0 = time.monotonic()
            r.wait_blocking(timeout)
            late += time.monotonic() - t0 >= 0.9 * timeout
        r.poll()
        spin_ns(int(delays[i]))
        w.publish(recs[i])
    _report({"rounds": rounds, "late": late})
    sys.stdin.readline()                                   # EXIT
    r.close()
    w.unlink()
    w.close()


ROLES = {f.__name__: f for f in (stress_writer, stress_reader, attach_and_exit,
                                 raw_mmap_and_exit, stdlib_attach_and_exit, create_and_abandon,
                                 publish_later, echo)}

if __name__ == "__main__":
    role, args = sys.argv[1], json.loads(sys.argv[2])
    ROLES[role](**args)
