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
    256   64*MAX_READERS  reader slots     READER_DT: pid, cursor, lapped, lost, name
    256+64*MAX_READERS    data             capacity x stride

Each data slot is ``[seq u64][record]``. To write record number ``s`` into slot ``s % cap``
the producer stores ``seq = 2s+1`` (in progress), the record, then ``seq = 2s+2``
(published), then ``head = s+1``. A reader that wants record ``s`` reads ``seq`` before and
after copying and keeps the copy only if both equal ``2s+2``; a larger value means it was
overtaken (lapped). This is a per-slot seqlock; it relies on x86-64's store order (TSO),
and on 8-byte aligned stores being atomic, both true for the numpy/memoryview stores used.

Readers keep their cursor in their own process. They also publish it in their reader slot,
so the memory inspector can show each reader's lag; nothing reads it for correctness.

Wake-up: a reader that has nothing to read spins briefly, then raises its ``waiting`` flag
and blocks on its own named FIFO (a "bell" next to the segment). After publishing, the
producer checks the 16 flag bytes and writes one byte to the bells of waiting readers only,
so a producer with no sleepers pays one 16-byte compare per record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import SegmentError, SegmentMismatchError
from state.layout import HEADER_SIZE, SegmentKind, layout_hash
from state.segment import Segment, pid_alive
from state.wakeup import Bell, Ringer

MAX_READERS = 16
_OFF_CAP = HEADER_SIZE
_OFF_HEAD = 128
_OFF_WAITING = 192
_OFF_READERS = 256
_DATA_OFF = _OFF_READERS + 64 * MAX_READERS
_NO_WAITERS = bytes(MAX_READERS)

READER_DT = np.dtype({
    "names": ["pid", "active", "cursor", "lapped", "lost", "name"],
    "formats": ["<u4", "u1", "<u8", "<u8", "<u8", "S24"],
    "offsets": [0, 4, 8, 16, 24, 32],
    "itemsize": 64,
})

_U64 = struct.Struct("<Q")


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
        self._slot_dt = np.dtype({"names": ["seq", "rec"], "formats": ["<u8", self.dtype],
                                  "offsets": [0, 8], "itemsize": self.stride})
        self._slots = np.frombuffer(buf, dtype=self._slot_dt, count=self.capacity,
                                    offset=_DATA_OFF)
        self._readers = np.frombuffer(buf, dtype=READER_DT, count=MAX_READERS,
                                      offset=_OFF_READERS)
        self._buf = buf

    @property
    def path(self) -> Path:
        assert self._seg is not None
        return self._seg.path

    def head(self) -> int:
        return _U64.unpack_from(self._buf, _OFF_HEAD)[0]

    def readers(self) -> list[dict]:
        out = []
        for i, r in enumerate(self._readers):
            if r["active"]:
                out.append({"index": i, "pid": int(r["pid"]), "cursor": int(r["cursor"]),
                            "lapped": int(r["lapped"]), "lost": int(r["lost"]),
                            "name": bytes(r["name"]).rstrip(b"\0").decode(errors="replace"),
                            "alive": pid_alive(int(r["pid"]))})
        return out

    def close(self) -> None:
        """Release the views, then the mapping. Idempotent."""
        self._slots = self._readers = None  # type: ignore[assignment]
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
        seg, self.adopted = Segment.create_or_adopt(Path(path), SegmentKind.RING,
                                                    ring_hash(dtype), size, name=name)
        if not self.adopted:
            struct.pack_into("<QQQ", seg.buf, _OFF_CAP, capacity, dtype.itemsize, stride)
        self._bind(seg, dtype)
        self._seq = self.head()
        # An adopted ring continues at its published head. A producer killed mid-write left
        # that slot "in progress" (odd seq) and never advanced head, so no reader wants it;
        # the next publish simply overwrites it.
        self._ringer = Ringer()
        self._bells = [bell_path(self.path, i) for i in range(MAX_READERS)]

    def publish(self, record: np.void | np.ndarray | bytes) -> int:
        """Append one record; returns its sequence number. Never blocks."""
        s = self._seq
        off = _DATA_OFF + (s & self.mask) * self.stride
        buf = self._buf
        data = record if isinstance(record, bytes | bytearray | memoryview) else record.tobytes()
        _U64.pack_into(buf, off, 2 * s + 1)
        buf[off + 8: off + 8 + len(data)] = data
        _U64.pack_into(buf, off, 2 * s + 2)
        self._seq = s + 1
        _U64.pack_into(buf, _OFF_HEAD, s + 1)
        if buf[_OFF_WAITING:_OFF_WAITING + MAX_READERS] != _NO_WAITERS:
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
        seqs = np.arange(s0, s0 + n, dtype=np.uint64)
        idx = (seqs & np.uint64(self.mask)).astype(np.intp)
        slots = self._slots
        slots["seq"][idx] = 2 * seqs + 1
        slots["rec"][idx] = records
        slots["seq"][idx] = 2 * seqs + 2
        self._seq = s0 + n
        _U64.pack_into(self._buf, _OFF_HEAD, self._seq)
        if self._buf[_OFF_WAITING:_OFF_WAITING + MAX_READERS] != _NO_WAITERS:
            self._ring_bells()
        return self._seq

    def _ring_bells(self) -> None:
        waiting = self._buf[_OFF_WAITING:_OFF_WAITING + MAX_READERS]
        for i in range(MAX_READERS):
            if waiting[i]:
                self._ringer.ring(self._bells[i])

    def close(self) -> None:
        self._ringer.close()
        super().close()

    def unlink(self) -> None:
        """Remove the segment and any bells left by readers that died."""
        if self._seg is None:
            return
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
        self.lost_total = 0
        self.lapped_count = 0
        self.index = -1
        self._bell: Bell | None = None
        head = self.head()
        if start == "newest":
            self.cursor = head
        elif start == "oldest":
            self.cursor = max(0, head - self.capacity + 1)
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
        finally:
            fcntl.flock(self._seg._fd, fcntl.LOCK_UN)
        self._bell = Bell(bell_path(self.path, i))

    def _set_waiting(self, flag: int) -> None:
        self._buf[_OFF_WAITING + self.index] = flag

    # -- reading ------------------------------------------------------------------------

    def lag(self) -> int:
        return self.head() - self.cursor

    def poll(self, max_records: int = 4096) -> ReadBatch:
        """Copy out every record published since the cursor (up to ``max_records``)."""
        lost = 0
        while True:
            head = self.head()
            oldest = head - self.capacity
            if self.cursor < oldest:                       # lapped before we even looked
                lost += oldest - self.cursor
                self.cursor = oldest
            n = min(head - self.cursor, max_records)
            if n <= 0:
                return self._done(np.empty(0, dtype=self.dtype), lost, self.cursor)
            seqs = np.arange(self.cursor, self.cursor + n, dtype=np.uint64)
            idx = (seqs & np.uint64(self.mask)).astype(np.intp)
            expected = 2 * seqs + 2
            before = self._slots["seq"][idx]
            records = self._slots["rec"][idx]              # fancy indexing: a copy
            after = self._slots["seq"][idx]
            ok = (before == expected) & (after == expected)
            good = int(n if ok.all() else np.argmin(ok))   # length of the valid prefix
            if good > 0:
                first = self.cursor
                self.cursor += good
                return self._done(records[:good], lost, first)
            # The very first slot failed. A newer seq there means the producer is already
            # overwriting it: that record is lost to lapping, skip it and look again.
            if int(after[0]) > int(expected[0]) or int(before[0]) > int(expected[0]):
                lost += 1
                self.cursor += 1
                continue
            return self._done(np.empty(0, dtype=self.dtype), lost, self.cursor)

    def _done(self, records: np.ndarray, lost: int, first: int) -> ReadBatch:
        if lost:
            self.lost_total += lost
            self.lapped_count += 1
        if self.index >= 0:
            r = self._readers[self.index]
            r["cursor"] = self.cursor
            if lost:
                r["lost"] = self.lost_total
                r["lapped"] = self.lapped_count
        return ReadBatch(records, lost, first)

    def _spin(self) -> bool:
        deadline = time.perf_counter_ns() + self.spin_ns
        while time.perf_counter_ns() < deadline:
            if self.head() > self.cursor:
                return True
        return False

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait until there is something to read. True if there is, False on timeout.

        Spins for ``spin_us`` first (cheap when data is about to arrive), then sleeps on the
        bell so an idle reader costs no CPU on a 2-core machine.
        """
        if self.head() > self.cursor or self._spin():
            return True
        bell = self._need_bell()
        self._set_waiting(1)
        try:
            if self.head() > self.cursor:      # published between the spin and the flag
                return True
            await bell.wait(timeout)
            return self.head() > self.cursor
        finally:
            self._set_waiting(0)

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """The same as :meth:`wait` for threads and plain loops."""
        if self.head() > self.cursor or self._spin():
            return True
        bell = self._need_bell()
        self._set_waiting(1)
        try:
            if self.head() > self.cursor:
                return True
            bell.wait_blocking(timeout)
            return self.head() > self.cursor
        finally:
            self._set_waiting(0)

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

