"""Single-producer, many-consumer, overwriting broadcast ring of fixed-size records.

The producer never waits for readers: a slow reader is lapped, learns how many records it
lost, and never sees a torn record.

Byte layout (after the 64-byte segment header):

    off   size            field
    64    8               capacity         u64, a power of two
    72    8               record_size      u64 (the record dtype's itemsize)
    80    8               stride           u64 (8 + record_size rounded up to 8)
    88    40              reserved
    128   8               head             u64: records published so far (next seq to write)
    136   56              reserved         (head has the cache line to itself: hot)
    192   16              waiting          u8 x MAX_READERS: reader i is blocked on its bell
    208   48              reserved
    256   64*MAX_READERS  reader slots     READER_DT: pid, active, cursor, lapped, lost, name
    256+64*MAX_READERS    data             capacity x stride

Each data slot is ``[seq u64][record]``. To write record number ``s`` into slot ``s % cap``
the producer stores ``seq = 2s+1`` (in progress), the record, then ``seq = 2s+2``
(published), then ``head = s+1``. A reader that wants record ``s < head`` copies it, then
re-reads ``seq`` and keeps the copy only if it still equals ``2s+2``; a larger value means it
was overtaken (lapped). (A seq check *before* the copy adds nothing: ``head`` was read first,
and the producer stored ``2s+2`` before it stored ``head``.) This is a per-slot seqlock. It
relies on x86-64's store order (TSO), and on 8-byte aligned loads and stores being atomic,
so ``seq`` and ``head`` are only ever accessed as whole u64 words, through a
``memoryview.cast("Q")`` or a numpy u64 view (one ``mov``), never with ``struct``: it packs
and unpacks them a byte at a time, so a reader could see half of an update (head 0x1ff while
it moves from 0xff to 0x100).

Because one producer writes records in seq order and stores ``seq = 2s+1`` before any byte
of a record, a reader that copied records ``[c, c+n)`` (all below the ``head`` it read
first) only has to re-read the *first* slot's seq after the copy: if it still says ``2c+2``,
the producer has not begun to overwrite any of them. Only when it does not does the reader
check every slot, keep the intact newest ones and count the overwritten ones as lost.

Readers keep their cursor in their own process. They also publish it in their reader slot,
so the memory inspector can show each reader's lag; nothing reads it for correctness.

Wake-up: a reader that has nothing to read spins briefly (only while records have been
coming within the spin budget: an adaptive spin, see ``RingReader.__init__``), then raises its
``waiting`` flag and blocks on its own named FIFO (a "bell" next to the segment). After
publishing, the producer checks the 16 flag bytes (two u64 words) and writes one byte to the
bells of waiting readers only, so a producer with no sleepers pays two word loads per record.
"Store my flag (head), then load the other side's head (flag)" is Dekker's pattern, which TSO
does *not* order by itself (a store may wait in the store buffer past a later load), so both
sides put a full barrier between the two (see ``_fence``); without it both could miss each
other and the reader would sleep through a publish. A wake-up without new data (a late byte
from an earlier ring) is not a timeout: the reader goes back to sleep for the rest of its
timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import SegmentError, SegmentMismatchError
from state.layout import HEADER_SIZE, SegmentKind, layout_hash
from state.segment import Segment, pid_alive
from state.strings import decode_nul
from state.wakeup import Bell, Ringer

MAX_READERS = 16
_OFF_CAP = HEADER_SIZE
_OFF_HEAD = 128
_OFF_WAITING = 192
_OFF_READERS = 256
_DATA_OFF = _OFF_READERS + 64 * MAX_READERS
_HEAD_Q = _OFF_HEAD // 8                  # word index of head in the u64 view
_WAIT_Q = _OFF_WAITING // 8               # the 16 waiting flags as two u64 words

# A full memory barrier from Python: a lock's try-acquire and release are locked
# read-modify-write instructions (sem_trywait / sem_post), which x86 never reorders with
# other loads and stores. Non-blocking, so it cannot deadlock (e.g. in a forked child).
_fence_lock = threading.Lock()
_fence_acquire = _fence_lock.acquire
_fence_release = _fence_lock.release


def _fence() -> None:
    if _fence_acquire(False):
        _fence_release()


READER_DT = np.dtype({
    "names": ["pid", "active", "cursor", "lapped", "lost", "name"],
    "formats": ["<u4", "u1", "<u8", "<u8", "<u8", "S24"],
    "offsets": [0, 4, 8, 16, 24, 32],
    "itemsize": 64,
})

_BYTES = (bytes, bytearray, memoryview)


def _stride(record_size: int) -> int:
    return 8 + (record_size + 7) // 8 * 8


def ring_hash(dtype: np.dtype) -> int:
    return layout_hash("ring", dtype, MAX_READERS, READER_DT)


def bell_path(segment_path: Path, reader_index: int) -> Path:
    return Path(f"{segment_path}.bell{reader_index}")


@dataclass
class ReadBatch:
    """Records read in order, and how many were lost to lapping before them."""

    records: np.ndarray
    lost: int
    first_seq: int

    def __len__(self) -> int:
        return len(self.records)


class _RingBase:
    _seg: Segment | None = None

    def _bind(self, seg: Segment, dtype: np.dtype) -> None:
        self._seg = seg
        self.dtype = np.dtype(dtype)
        buf = seg.buf
        cap, rsize, stride = struct.unpack_from("<QQQ", buf, _OFF_CAP)
        if rsize != self.dtype.itemsize or stride != _stride(rsize) or cap & (cap - 1):
            seg.close()
            raise SegmentMismatchError(
                f"{seg.path}: ring record size {rsize}/stride {stride}/capacity {cap} does not "
                f"match this code's record size {self.dtype.itemsize}")
        self.capacity = int(cap)
        self.mask = self.capacity - 1
        self.stride = int(stride)
        self.record_size = int(rsize)
        self._slot_dt = np.dtype({"names": ["seq", "rec"], "formats": ["<u8", self.dtype],
                                  "offsets": [0, 8], "itemsize": self.stride})
        self._slots = np.frombuffer(buf, dtype=self._slot_dt, count=self.capacity,
                                    offset=_DATA_OFF)
        self._readers = np.frombuffer(buf, dtype=READER_DT, count=MAX_READERS,
                                      offset=_OFF_READERS)
        self._seqs = self._slots["seq"]
        self._recs = self._slots["rec"]
        self._q = buf.cast("Q")                # u64 words: atomic head and seq access
        self._buf = buf
        self._empty = np.empty(0, dtype=self.dtype)

    @property
    def path(self) -> Path:
        assert self._seg is not None
        return self._seg.path

    def head(self) -> int:
        return self._q[_HEAD_Q]

    def readers(self) -> list[dict]:
        out = []
        for i, r in enumerate(self._readers):
            if r["active"]:
                out.append({"index": i, "pid": int(r["pid"]), "cursor": int(r["cursor"]),
                            "lapped": int(r["lapped"]), "lost": int(r["lost"]),
                            "name": decode_nul(r["name"]),
                            "alive": pid_alive(int(r["pid"]))})
        return out

    def close(self) -> None:
        """Release the views, then the mapping. Idempotent."""
        self._slots = self._readers = self._seqs = self._recs = None  # type: ignore[assignment]
        q = getattr(self, "_q", None)
        if q is not None:
            q.release()
            self._q = None  # type: ignore[assignment]
        self._buf = None  # type: ignore[assignment]
        if self._seg is not None:
            self._seg.close()


class RingWriter(_RingBase):
    """The one producer. Owns (creates, adopts, unlinks) the segment."""

    def __init__(self, path: Path, dtype: np.dtype, capacity: int, *, name: str = "") -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"ring capacity must be a power of two, got {capacity}")
        dtype = np.dtype(dtype)
        stride = _stride(dtype.itemsize)
        size = _DATA_OFF - HEADER_SIZE + capacity * stride
        seg, self.adopted = Segment.create_or_adopt(
            Path(path), SegmentKind.RING, ring_hash(dtype), size, name=name,
            init=lambda buf: struct.pack_into("<QQQ", buf, _OFF_CAP, capacity,
                                              dtype.itemsize, stride))
        self._bind(seg, dtype)
        self._seq = self.head()
        # An adopted ring continues at its published head. A producer killed mid-write left
        # that slot "in progress" (odd seq) and never advanced head, so no reader wants it;
        # the next publish simply overwrites it.
        self._ringer = Ringer([bell_path(self.path, i) for i in range(MAX_READERS)])

    @classmethod
    def attach_producer(cls, path: Path, dtype: np.dtype) -> RingWriter:
        """Become the producer of a ring that another process owns (created, unlinks).

        Used where the consumer owns the segment, e.g. the position worker's intent rings,
        which strategy workers write. Attaches (never creates, never unlinks: ``unlink``
        refuses) and continues at the published head. The one-producer rule still holds:
        the owner hands each lane to exactly one producer at a time.
        """
        self = cls.__new__(cls)
        seg = Segment.attach(Path(path), SegmentKind.RING, ring_hash(np.dtype(dtype)))
        self.adopted = True
        self._bind(seg, dtype)
        self._seq = self.head()
        self._ringer = Ringer([bell_path(self.path, i) for i in range(MAX_READERS)])
        return self

    def publish(self, record: np.void | np.ndarray | bytes) -> int:
        """Append one record; returns its sequence number. Never blocks."""
        s = self._seq
        off = _DATA_OFF + (s & self.mask) * self.stride
        data = record if isinstance(record, _BYTES) else record.tobytes()
        if len(data) != self.record_size:      # refuse before touching the slot
            raise ValueError(f"record of {len(data)} B, this ring holds {self.record_size} B")
        q = self._q
        w = off >> 3
        q[w] = 2 * s + 1
        self._buf[off + 8: off + 8 + self.record_size] = data
        q[w] = 2 * s + 2
        self._seq = s + 1
        q[_HEAD_Q] = s + 1
        if _fence_acquire(False):              # _fence(), inlined: this is the hot path
            _fence_release()
        if q[_WAIT_Q] or q[_WAIT_Q + 1]:
            self._ring_bells()
        return s

    def publish_many(self, records: np.ndarray) -> int:
        """Append a batch with vectorised stores; returns the seq after the batch."""
        n = len(records)
        if n == 0:
            return self._seq
        if n > self.capacity:            # only the newest `capacity` could survive anyway
            self._seq += n - self.capacity
            records = records[-self.capacity:]
            n = self.capacity
        s0 = self._seq
        i0 = s0 & self.mask
        if i0 + n <= self.capacity:            # contiguous slots: slices, no index arrays
            seqs, recs = self._seqs[i0:i0 + n], self._recs[i0:i0 + n]
            seq0 = 2 * s0
            seqs[:] = np.arange(seq0 + 1, seq0 + 2 * n, 2, dtype=np.uint64)
            recs[:] = records
            seqs[:] = np.arange(seq0 + 2, seq0 + 2 * n + 1, 2, dtype=np.uint64)
        else:
            seqn = np.arange(s0, s0 + n, dtype=np.uint64)
            idx = (seqn & np.uint64(self.mask)).astype(np.intp)
            self._seqs[idx] = 2 * seqn + 1
            self._recs[idx] = records
            self._seqs[idx] = 2 * seqn + 2
        self._seq = s0 + n
        self._q[_HEAD_Q] = self._seq
        _fence()
        if self._q[_WAIT_Q] or self._q[_WAIT_Q + 1]:
            self._ring_bells()
        return self._seq

    def _ring_bells(self) -> None:
        # This is on the wake-up path: find the raised flags (0/1 bytes) in C, not with a
        # Python loop over all 16.
        flags = self._buf[_OFF_WAITING:_OFF_WAITING + MAX_READERS].tobytes()
        ring = self._ringer.ring
        i = flags.find(1)
        while i >= 0:
            ring(i)
            i = flags.find(1, i + 1)

    def close(self) -> None:
        self._ringer.close()
        super().close()

    def unlink(self) -> None:
        """Remove the segment and any bells left by readers that died. Owner only."""
        if self._seg is None:
            return
        if not self._seg.owner:
            raise SegmentError(f"{self._seg.path}: an attached producer may not unlink the ring")
        for i in range(MAX_READERS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(bell_path(self._seg.path, i))
        self._seg.unlink()


class RingReader(_RingBase):
    """One consumer with its own cursor. Attach read-only for inspection (no bell, no slot)."""

    def __init__(self, path: Path, dtype: np.dtype, *, name: str = "", start: str = "newest",
                 readonly: bool = False, spin_us: float = 50.0) -> None:
        seg = Segment.attach(Path(path), SegmentKind.RING, ring_hash(np.dtype(dtype)),
                             readonly=readonly)
        self._bind(seg, dtype)
        self.readonly = readonly
        self.spin_ns = int(spin_us * 1000)
        # Adaptive spin. After a sleep that ended with data, the next wait spins only if
        # that data came within the spin budget of the wait's start (a spin would have
        # caught it). A stream with gaps longer than the budget (an idle bot; 10 k
        # records/s against 50 us) never spins, a burst turns the spin back on, and a
        # burst's end costs at most one failed spin.
        self._spin_next = self.spin_ns > 0
        # Waits started so far. A wait lowers its flag on the way out only if no later wait
        # has begun: a cancelled wait whose task ends late must not lower a newer wait's
        # flag (the producer would then ring nobody: a lost wake-up).
        self._waits = 0
        self._flag_off = _OFF_WAITING
        self.lost_total = 0
        self.lapped_count = 0
        self.index = -1
        self._bell: Bell | None = None
        head = self.head()
        if start == "newest":
            self.cursor = head
        elif start == "oldest":                # every record still in the ring
            self.cursor = max(0, head - self.capacity)
        else:
            raise ValueError(f"start must be 'newest' or 'oldest', got {start!r}")
        if not readonly:
            self._register(name)

    # -- registration -------------------------------------------------------------------

    def _register(self, name: str) -> None:
        assert self._seg is not None
        # flock on the segment's fd serialises slot claims between reader processes.
        fcntl.flock(self._seg._fd, fcntl.LOCK_EX)
        try:
            free = [i for i, r in enumerate(self._readers)
                    if not r["active"] or not pid_alive(int(r["pid"]))]
            if not free:
                raise SegmentError(f"{self.path}: all {MAX_READERS} reader slots are taken")
            i = free[0]
            self._readers[i] = (os.getpid(), 1, self.cursor, 0, 0, name.encode()[:24])
            self.index = i
            self._flag_off = _OFF_WAITING + i
            self._slot_q = (_OFF_READERS + 64 * i) >> 3      # word index of the slot
            # A reader killed while asleep left its flag up; the slot is ours now.
            self._buf[_OFF_WAITING + i] = 0
        finally:
            fcntl.flock(self._seg._fd, fcntl.LOCK_UN)
        self._bell = Bell(bell_path(self.path, i))

    def _set_waiting(self, flag: int) -> None:
        self._buf[self._flag_off] = flag

    # -- reading ------------------------------------------------------------------------

    def lag(self) -> int:
        return self.head() - self.cursor

    def poll(self, max_records: int = 4096) -> ReadBatch:
        """Copy out every record published since the cursor (up to ``max_records``).

        ``records`` is this batch's own copy (a strided view of it: every slot's seq is
        skipped); ``first_seq`` is the seq of ``records[0]``; ``lost`` counts the records
        the producer overwrote before this reader could copy them.
        """
        # The usual case first, in as few Python steps as it takes (this is the last step
        # of every wake-up): not lapped, no wrap, and record c still intact after the copy.
        c = self.cursor
        q = self._q
        n = q[_HEAD_Q] - c
        i0 = c & self.mask
        if 0 < n <= max_records and i0 + n <= self.capacity:
            stride = self.stride
            lo = _DATA_OFF + i0 * stride
            raw = bytearray(self._buf[lo:lo + n * stride])
            if q[lo >> 3] == 2 * c + 2:
                self.cursor = c + n
                if self.index >= 0:                    # for the inspector only
                    q[self._slot_q + 1] = c + n
                return ReadBatch(np.ndarray((n,), self.dtype, raw, 8, (stride,)), 0, c)
        elif n == 0:
            return ReadBatch(self._empty, 0, c)
        return self._poll_slow(max_records)

    def _poll_slow(self, max_records: int) -> ReadBatch:
        lost = 0
        q, cap, stride, buf = self._q, self.capacity, self.stride, self._buf
        while True:
            c = self.cursor
            head = q[_HEAD_Q]
            if c < head - cap:                         # lapped before we even looked
                lost += head - cap - c
                c = self.cursor = head - cap
            n = min(head - c, max_records)
            if n <= 0:
                return self._done(self._empty, lost, c)
            i0 = c & self.mask
            k = min(n, cap - i0)                       # slots before the wrap point
            lo = _DATA_OFF + i0 * stride
            raw = bytearray(buf[lo:lo + k * stride])   # one memcpy (two at the wrap)
            if k < n:
                raw += buf[_DATA_OFF:_DATA_OFF + (n - k) * stride]
            # Only now re-read seqs (x86 keeps loads in order): if record c's slot is still
            # intact, the producer has not started on any later one either.
            if q[lo >> 3] == 2 * c + 2:
                skip = 0
            else:
                seqs = np.arange(c, c + n, dtype=np.uint64)
                live = self._seqs[(seqs & np.uint64(self.mask)).astype(np.intp)]
                bad = np.flatnonzero(live != 2 * seqs + 2)
                skip = int(bad[-1]) + 1 if len(bad) else 0   # overwritten ones come first
                lost += skip
                if skip == n:                          # all gone: look at head again
                    self.cursor = c + n
                    continue
            self.cursor = c + n
            records = np.ndarray((n - skip,), dtype=self.dtype, buffer=raw,
                                 offset=skip * stride + 8, strides=(stride,))
            return self._done(records, lost, c + skip)

    def _done(self, records: np.ndarray, lost: int, first: int) -> ReadBatch:
        if lost:
            self.lost_total += lost
            self.lapped_count += 1
        if self.index >= 0:                            # for the inspector only
            q, w = self._q, self._slot_q             # READER_DT words: cursor, lapped, lost
            q[w + 1] = self.cursor
            if lost:
                q[w + 2] = self.lapped_count
                q[w + 3] = self.lost_total
        return ReadBatch(records, lost, first)

    def _spin(self, t0_ns: int) -> bool:
        q, c = self._q, self.cursor
        deadline = t0_ns + self.spin_ns
        while time.perf_counter_ns() < deadline:
            if q[_HEAD_Q] > c:
                return True
        return False

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until there is something to read. True if there is, False on timeout.

        Spins up to ``spin_us`` first, but only while records come close together (cheap
        when data is about to arrive), else sleeps on the bell at once, so an idle reader
        costs no CPU on a 2-core machine. One wait at a time per reader.
        """
        q = self._q
        if q[_HEAD_Q] > self.cursor:
            return True
        t0 = time.perf_counter_ns()
        if self._spin_next and self._spin(t0):
            return True
        bell = self._need_bell()
        deadline = self._deadline(timeout)
        self._waits = me = self._waits + 1
        self._set_waiting(1)
        try:
            while True:
                bell.drain()                   # old rings; a new one comes after this
                _fence()                       # the flag is visible before head is read
                if q[_HEAD_Q] > self.cursor:   # (also: published since the spin)
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._spin_next = False
                    return False
                await bell.wait(remaining)
                if q[_HEAD_Q] > self.cursor:   # the usual wake-up: no syscall on this path
                    self._spin_next = time.perf_counter_ns() - t0 <= self.spin_ns
                    return True
        finally:
            if self._waits == me:              # (see _waits in __init__)
                self._buf[self._flag_off] = 0

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """The same as :meth:`wait` for threads and plain loops."""
        q = self._q
        if q[_HEAD_Q] > self.cursor:
            return True
        t0 = time.perf_counter_ns()
        if self._spin_next and self._spin(t0):
            return True
        bell = self._need_bell()
        deadline = self._deadline(timeout)
        self._waits = me = self._waits + 1
        self._set_waiting(1)
        try:
            while True:
                bell.drain()
                _fence()
                if q[_HEAD_Q] > self.cursor:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._spin_next = False
                    return False
                bell.wait_blocking(remaining)
                if q[_HEAD_Q] > self.cursor:
                    self._spin_next = time.perf_counter_ns() - t0 <= self.spin_ns
                    return True
        finally:
            if self._waits == me:
                self._buf[self._flag_off] = 0

    def _need_bell(self) -> Bell:
        if self._bell is None:
            raise SegmentError("a read-only reader has no bell; poll instead")
        return self._bell

    def close(self) -> None:
        """Give back the reader slot and the bell. Idempotent."""
        if self._bell is not None:
            self._bell.close()
            self._bell = None
        if self.index >= 0 and self._readers is not None:
            with contextlib.suppress(Exception):
                self._set_waiting(0)
                self._readers[self.index]["active"] = 0
            self.index = -1
        super().close()


def is_bell(name: str) -> bool:
    return ".bell" in name

