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
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import SegmentMismatchError, SnapshotEmptyError
from state.layout import HEADER_SIZE, SNAPSHOT_META_DT, SegmentKind, layout_hash
from state.segment import Segment

_OFF_CAP = HEADER_SIZE
_OFF_META = 128
_OFF_DATA = 256
SNAPSHOT_HASH = layout_hash("snapshot", SNAPSHOT_META_DT)


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
        seg, adopted = Segment.create_or_adopt(Path(path), SegmentKind.SNAPSHOT, SNAPSHOT_HASH,
                                               _OFF_DATA - HEADER_SIZE + 2 * capacity,
                                               name=name)
        if not adopted:
            struct.pack_into("<Q", seg.buf, _OFF_CAP, capacity)
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
        """The newest complete generation. Raises SnapshotEmptyError when there is none."""
        for _ in range(100):
            order = sorted((0, 1), key=lambda b: int(self._meta[b]["generation"]), reverse=True)
            for b in order:
                snap = self._read_buffer(b)
                if snap is not None:
                    return snap
            if all(int(self._meta[b]["generation"]) == 0 for b in (0, 1)):
                break
        raise SnapshotEmptyError(f"{self.path}: no complete snapshot")

    def _read_buffer(self, b: int) -> Snapshot | None:
        assert self._seg is not None
        meta = self._meta[b].copy()
        gen, length = int(meta["generation"]), int(meta["length"])
        if gen == 0 or length > self.capacity:
            return None
        off = self._data_off(b)
        data = bytes(self._seg.buf[off:off + length])
        if int(self._meta[b]["generation"]) != gen or zlib.crc32(data) != int(meta["crc32"]):
            return None
        return Snapshot(gen, int(meta["schema_version"]), int(meta["epoch"]),
                        int(meta["written_ns"]), data)

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
