"""A double-buffered (A/B) blob for the strategy's own state.

The strategy worker commits its state (signal history) here every cycle; its successor, or
its own restart after a crash, reads it back. A reader always gets the newest *complete*
generation, even when the writer was killed mid-write.

Byte layout (after the 64-byte segment header):

    off          size      field
    64           8         capacity    u64: bytes per buffer
    72           56        reserved
    128          64        meta[0]     SNAPSHOT_META_DT: generation, length, crc32,
    192          64        meta[1]                       schema_version, written_ns, epoch
    256          capacity  buffer[0]
    256+capacity capacity  buffer[1]

Writing generation g goes to the buffer that does NOT hold the newest generation, in this
order: meta.generation = 0 (invalidates it), payload, length/crc/schema/epoch, and
generation = g last. A writer killed at any point leaves that buffer invalid (generation 0 or
a CRC mismatch), and the other buffer still holds generation g-1. A reader copies meta and
payload, re-reads the generation, and checks the CRC, so a concurrent write is detected too.

Reading distinguishes two failures, because they call for opposite reactions:
- SnapshotEmptyError: no snapshot was ever committed (both generations 0); the strategy
  starts with empty state.
- SnapshotCorruptError (an OperatorError): some buffer carries a nonzero generation, yet none
  validates (CRC mismatch, or a length beyond the capacity) even after retries. Starting
  empty here and committing would overwrite the last good copy, so the caller must stop.
:meth:`SnapshotRegion.read_generation` restores one exact generation (the hot-reload
handoff); it raises SnapshotEmptyError when that generation has been overwritten.
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import SegmentMismatchError, SnapshotCorruptError, SnapshotEmptyError
from state.layout import HEADER_SIZE, SNAPSHOT_META_DT, SegmentKind, layout_hash
from state.segment import Segment

_OFF_CAP = HEADER_SIZE
_OFF_META = 128
_OFF_DATA = 256
SNAPSHOT_HASH = layout_hash("snapshot", SNAPSHOT_META_DT)
# A buffer that fails validation may just be in the middle of a concurrent write; only a
# failure that persists this many attempts is corruption.
READ_RETRIES = 100


@dataclass(frozen=True)
class Snapshot:
    generation: int
    schema_version: int
    epoch: int
    written_ns: int
    data: bytes


class SnapshotRegion:
    """Create with :meth:`create` (owner: the supervisor), or :meth:`attach` (strategy)."""

    _seg: Segment | None = None

    def __init__(self, seg: Segment) -> None:
        self._seg = seg
        (cap,) = struct.unpack_from("<Q", seg.buf, _OFF_CAP)
        if _OFF_DATA + 2 * cap != seg.size:
            seg.close()
            raise SegmentMismatchError(f"{seg.path}: capacity {cap} does not fit {seg.size} B")
        self.capacity = int(cap)
        self._meta = np.frombuffer(seg.buf, dtype=SNAPSHOT_META_DT, count=2, offset=_OFF_META)

    @classmethod
    def create(cls, path: Path, capacity: int, *, name: str = "snapshot") -> SnapshotRegion:
        seg, adopted = Segment.create_or_adopt(
            Path(path), SegmentKind.SNAPSHOT, SNAPSHOT_HASH,
            _OFF_DATA - HEADER_SIZE + 2 * capacity, name=name,
            init=lambda buf: struct.pack_into("<Q", buf, _OFF_CAP, capacity))
        region = cls(seg)
        region.adopted = adopted
        return region

    @classmethod
    def attach(cls, path: Path, *, readonly: bool = False) -> SnapshotRegion:
        return cls(Segment.attach(Path(path), SegmentKind.SNAPSHOT, SNAPSHOT_HASH,
                                  readonly=readonly))

    @property
    def path(self) -> Path:
        assert self._seg is not None
        return self._seg.path

    def _data_off(self, b: int) -> int:
        return _OFF_DATA + b * self.capacity

    def write(self, data: bytes, *, schema_version: int, epoch: int = 0) -> int:
        """Commit ``data`` as the next generation; returns the generation number."""
        if len(data) > self.capacity:
            raise ValueError(f"snapshot of {len(data)} B exceeds capacity {self.capacity} B")
        assert self._seg is not None
        g0, g1 = int(self._meta[0]["generation"]), int(self._meta[1]["generation"])
        target = 1 if g0 >= g1 else 0           # overwrite the older (or invalid) buffer
        gen = max(g0, g1) + 1
        m = self._meta[target]
        m["generation"] = 0
        off = self._data_off(target)
        self._seg.buf[off:off + len(data)] = data
        m["length"] = len(data)
        m["crc32"] = zlib.crc32(data)
        m["schema_version"] = schema_version
        m["written_ns"] = time.time_ns()
        m["epoch"] = epoch
        m["generation"] = gen
        return gen

    def read(self) -> Snapshot:
        """The newest complete generation.

        Raises SnapshotEmptyError when no generation was ever committed, and
        SnapshotCorruptError when one was but no buffer validates after READ_RETRIES tries.
        """
        reasons: list[str] = []
        for _ in range(READ_RETRIES):
            order = sorted((0, 1), key=lambda b: int(self._meta[b]["generation"]), reverse=True)
            reasons = []
            for b in order:
                got = self._check_buffer(b)
                if isinstance(got, Snapshot):
                    return got
                reasons.append(got)
            if all(int(self._meta[b]["generation"]) == 0 for b in (0, 1)):
                raise SnapshotEmptyError(f"{self.path}: no complete snapshot "
                                         f"(no generation was ever committed)")
        raise SnapshotCorruptError(f"{self.path}: a snapshot exists but no buffer holds a "
                                   f"complete generation ({'; '.join(reasons)})")

    def read_generation(self, generation: int) -> Snapshot:
        """Exactly ``generation`` (the hot-reload handoff restores what the old worker wrote).

        Raises SnapshotEmptyError when neither buffer holds it (any more), and
        SnapshotCorruptError when a buffer holds it but it does not validate.
        """
        if generation < 1:
            raise ValueError(f"generation {generation} is not a committed generation (>= 1)")
        reason = ""
        for _ in range(READ_RETRIES):
            held = [b for b in (0, 1) if int(self._meta[b]["generation"]) == generation]
            if not held:
                g0, g1 = (int(self._meta[b]["generation"]) for b in (0, 1))
                raise SnapshotEmptyError(f"{self.path}: generation {generation} is not held "
                                         f"any more (buffers hold {g0} and {g1})")
            got = self._check_buffer(held[0])
            if isinstance(got, Snapshot):
                return got
            reason = got
        raise SnapshotCorruptError(f"{self.path}: generation {generation} does not validate "
                                   f"({reason})")

    def _check_buffer(self, b: int) -> Snapshot | str:
        """Buffer ``b``'s generation, or why it holds none (for the error message)."""
        assert self._seg is not None
        meta = self._meta[b].copy()
        gen, length = int(meta["generation"]), int(meta["length"])
        where = f"buffer {'AB'[b]} generation {gen}"
        if gen == 0:
            return f"{where}: invalid (never written, or a write did not finish)"
        if length > self.capacity:
            return f"{where}: bad length {length} > capacity {self.capacity}"
        off = self._data_off(b)
        data = bytes(self._seg.buf[off:off + length])
        if int(self._meta[b]["generation"]) != gen:
            return f"{where}: overwritten while being read"
        crc = zlib.crc32(data)
        if crc != int(meta["crc32"]):
            return f"{where}: crc mismatch ({crc:08x} != {int(meta['crc32']):08x})"
        return Snapshot(gen, int(meta["schema_version"]), int(meta["epoch"]),
                        int(meta["written_ns"]), data)

    def _read_buffer(self, b: int) -> Snapshot | None:
        got = self._check_buffer(b)
        return got if isinstance(got, Snapshot) else None

    def status(self) -> dict:
        """Generation, size and CRC state of both buffers (for the inspector)."""
        out = []
        for b in (0, 1):
            meta = self._meta[b].copy()
            snap = self._read_buffer(b)
            out.append({"buffer": "AB"[b], "generation": int(meta["generation"]),
                        "length": int(meta["length"]),
                        "schema_version": int(meta["schema_version"]),
                        "epoch": int(meta["epoch"]), "written_ns": int(meta["written_ns"]),
                        "crc_ok": snap is not None})
        return {"capacity": self.capacity, "buffers": out}

    def close(self) -> None:
        """Idempotent."""
        self._meta = None  # type: ignore[assignment]
        if self._seg is not None:
            self._seg.close()

    def unlink(self) -> None:
        if self._seg is not None:
            self._seg.unlink()
