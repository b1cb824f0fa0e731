"""Fixed-capacity record tables with a per-row seqlock.

Used for the candle windows (a row per symbol x interval), the 16-slot market table, the
positions and the one-row counter blocks. One process writes a table; any number read it.

Byte layout (after the 64-byte segment header):

    off   size          field
    64    8             nrows      u64
    72    8             row_size   u64 (the row dtype's itemsize)
    80    8             stride     u64 (8 + row_size, rounded up to a 64-byte cache line)
    88    40            reserved
    128   nrows*stride  rows       each ``[seq u64][row]``

A row's ``seq`` is even when the row is stable and odd while it is being written. A writer
bumps it to odd, writes, bumps it to even. A reader copies the row between two reads of
``seq`` and keeps the copy only if both reads are equal and even, otherwise it retries.
Rows are cache-line aligned so that writing one row never disturbs a reader of another.

A writer killed mid-row leaves an odd ``seq`` behind. Its successor adopts the segment and
gets the list of torn rows from :meth:`TableWriter.torn_rows`, to rebuild them; readers see
such a row as unavailable (``TornRowError``) instead of reading garbage.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.errors import RetryableError, SegmentMismatchError
from state.layout import CACHE_LINE, HEADER_SIZE, SegmentKind, layout_hash
from state.segment import Segment

_OFF_META = HEADER_SIZE
_OFF_ROWS = 128


class TornRowError(RetryableError):
    """A row stayed mid-write past the reader's patience (its writer probably died)."""


def _stride(row_size: int) -> int:
    return (8 + row_size + CACHE_LINE - 1) // CACHE_LINE * CACHE_LINE


def table_hash(dtype: np.dtype) -> int:
    return layout_hash("table", dtype)


class _TableBase:
    _seg: Segment | None = None

    def _bind(self, seg: Segment, dtype: np.dtype) -> None:
        self._seg = seg
        self.dtype = np.dtype(dtype)
        nrows, rsize, stride = struct.unpack_from("<QQQ", seg.buf, _OFF_META)
        if rsize != self.dtype.itemsize or stride != _stride(rsize):
            seg.close()
            raise SegmentMismatchError(
                f"{seg.path}: table row size {rsize}/stride {stride} does not match this "
                f"code's row size {self.dtype.itemsize}")
        self.nrows = int(nrows)
        row_dt = np.dtype({"names": ["seq", "row"], "formats": ["<u8", self.dtype],
                           "offsets": [0, 8], "itemsize": int(stride)})
        self._rows = np.frombuffer(seg.buf, dtype=row_dt, count=self.nrows, offset=_OFF_ROWS)
        self._seqs = self._rows["seq"]
        self._data = self._rows["row"]

    @property
    def path(self) -> Path:
        assert self._seg is not None
        return self._seg.path

    def read(self, i: int, *, patience_s: float = 0.5) -> np.void:
        """A consistent copy of row ``i``; retries while the writer is mid-row."""
        seqs, data = self._seqs, self._data
        deadline = 0.0
        spins = 0
        while True:
            s1 = int(seqs[i])
            if not s1 & 1:
                row = data[i].copy()
                if int(seqs[i]) == s1:
                    return row
            spins += 1
            if spins > 64:                 # the writer is slow or dead: back off, then give up
                now = time.monotonic()
                if not deadline:
                    deadline = now + patience_s
                elif now > deadline:
                    raise TornRowError(f"{self.path}: row {i} stayed mid-write for "
                                       f"{patience_s}s (writer dead?)")
                time.sleep(0.0005)

    def read_all(self) -> np.ndarray:
        """Every row, each one consistent (rows are not consistent with each other)."""
        out = np.empty(self.nrows, dtype=self.dtype)
        for i in range(self.nrows):
            out[i] = self.read(i)
        return out

    def version(self, i: int) -> int:
        """The row's seq: changes on every write, so readers can skip unchanged rows."""
        return int(self._seqs[i])

    def close(self) -> None:
        """Release the views, then the mapping. Idempotent."""
        self._rows = self._seqs = self._data = None  # type: ignore[assignment]
        if self._seg is not None:
            self._seg.close()


class TableWriter(_TableBase):
    """The one writer of a table. Creates or adopts the segment, and unlinks it."""

    def __init__(self, path: Path, dtype: np.dtype, nrows: int, *, name: str = "") -> None:
        dtype = np.dtype(dtype)
        stride = _stride(dtype.itemsize)
        size = _OFF_ROWS - HEADER_SIZE + nrows * stride
        seg, self.adopted = Segment.create_or_adopt(
            Path(path), SegmentKind.TABLE, table_hash(dtype), size, name=name,
            init=lambda buf: struct.pack_into("<QQQ", buf, _OFF_META, nrows,
                                              dtype.itemsize, stride))
        self._bind(seg, dtype)
        if self.nrows != nrows:
            self.close()
            raise SegmentMismatchError(f"{path}: {self.nrows} rows (segment) != {nrows}")

    def torn_rows(self) -> list[int]:
        """Rows a dead predecessor left mid-write (odd seq)."""
        return [i for i in range(self.nrows) if int(self._seqs[i]) & 1]

    def reset_row(self, i: int) -> None:
        """Zero a (torn) row and make it stable again."""
        s = int(self._seqs[i])
        self._seqs[i] = s | 1
        self._data[i] = np.zeros((), dtype=self.dtype)
        self._seqs[i] = (s | 1) + 1

    def write(self, i: int, row: np.void | np.ndarray) -> None:
        """Replace row ``i`` as one atomic-to-readers update."""
        # `| 1`, not `+ 1`: on a torn row (odd seq, left by a killed predecessor) `+ 1` would
        # make seq even *during* the write and odd after it, the exact opposite of the rule.
        busy = int(self._seqs[i]) | 1
        self._seqs[i] = busy
        self._data[i] = row
        self._seqs[i] = busy + 1

    @contextmanager
    def update(self, i: int) -> Iterator[np.void]:
        """Edit row ``i`` in place; readers see either all of the edit or none of it."""
        busy = int(self._seqs[i]) | 1         # odd while editing, even torn row or not
        self._seqs[i] = busy
        try:
            yield self._data[i]
        finally:
            self._seqs[i] = busy + 1

    def unlink(self) -> None:
        if self._seg is not None:
            self._seg.unlink()


class TableReader(_TableBase):
    """A reader. ``readonly=True`` maps the segment PROT_READ (the memory inspector)."""

    def __init__(self, path: Path, dtype: np.dtype, *, readonly: bool = True) -> None:
        seg = Segment.attach(Path(path), SegmentKind.TABLE, table_hash(np.dtype(dtype)),
                             readonly=readonly)
        self._bind(seg, dtype)
