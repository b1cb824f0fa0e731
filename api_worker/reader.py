"""Read-only access to the files the supervisor writes: status.json, run.json, reloads.jsonl.

The supervisor replaces status.json and run.json atomically (tmp + rename), so a reader sees
the old version or the new one. :class:`JsonFile` parses a file only when its stat key
(inode, size, mtime) changed, and numbers each new version, so the SSE stream, the ack
waiters and /metrics share one parse. reloads.jsonl only grows: :class:`ReloadLog` counts it
incrementally and finds old records the status document no longer holds.

These classes are used from the event loop and from /metrics' worker thread, hence the locks.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from supervisor.reloadlog import is_update, merged

MAX_JSON_BYTES = 16 << 20


@dataclass(frozen=True)
class Snapshot:
    """One version of a JSON object file: its number, the document, compact JSON bytes."""

    version: int
    doc: dict[str, Any]
    data: bytes


class JsonFile:
    """A JSON object file another process replaces atomically; re-parsed only on change."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._snap: Snapshot | None = None
        self._version = 0

    def load(self) -> Snapshot | None:
        """The current version; None if the file is missing (or has never parsed)."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                self._key, self._snap = None, None
                return None
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if key == self._key:
                return self._snap
            try:
                with open(self.path, "rb") as f:
                    raw = f.read(MAX_JSON_BYTES + 1)
                doc = orjson.loads(raw) if len(raw) <= MAX_JSON_BYTES else None
            except (OSError, ValueError):
                return self._snap           # mid-replace or hand-edited: try again next time
            self._key = key
            if not isinstance(doc, dict):
                self._snap = None
                return None
            self._version += 1
            self._snap = Snapshot(self._version, doc, orjson.dumps(doc))
            return self._snap

    def doc(self) -> dict[str, Any] | None:
        snap = self.load()
        return snap.doc if snap is not None else None


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        rec = orjson.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def matches(rec: dict[str, Any], rid: str) -> bool:
    """Is ``rec`` the reload with id ``rid``, or the one command ``rid`` asked for?"""
    return rec.get("id") == rid or rec.get("command_id") == rid


class ReloadLog:
    """``<run dir>/reloads.jsonl``: one reload record per line, appended by the supervisor."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ino = -1
        self._offset = 0
        self._counts: Counter[str] = Counter()

    def counts(self) -> Counter[str] | None:
        """Records by result, read incrementally; None if there is no file."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if st.st_ino != self._ino or st.st_size < self._offset:
                        self._ino, self._offset, self._counts = st.st_ino, 0, Counter()
                    f.seek(self._offset)
                    chunk = f.read(st.st_size - self._offset)
            except OSError:
                return None
            end = chunk.rfind(b"\n") + 1        # a line still being written waits
            for line in chunk[:end].splitlines():
                rec = _parse_line(line)
                if rec is not None and not is_update(rec):
                    self._counts[str(rec.get("result"))] += 1
            self._offset += end
            return Counter(self._counts)

    def find(self, rid: str) -> dict[str, Any] | None:
        """The newest record with this reload id or command id (reads the whole file: only
        for ids the status document no longer holds)."""
        try:
            with open(self.path, "rb") as f:
                recs = [r for r in map(_parse_line, f) if r is not None]
        except OSError:
            return None
        return next((r for r in reversed(merged(recs)) if matches(r, rid)), None)

    def tail(self, n: int, block: int = 64 << 10) -> list[dict[str, Any]] | None:
        """The last ``n`` records, oldest first; None if there is no file."""
        try:
            with open(self.path, "rb") as f:
                end = os.fstat(f.fileno()).st_size
                pos, data = end, b""
                # update lines are not records: read on until n records (or the start)
                while pos > 0 and data.count(b"\n") - data.count(b'"update"') <= n:
                    step = min(block, pos)
                    pos -= step
                    f.seek(pos)
                    data = f.read(step) + data
        except OSError:
            return None
        lines = data.splitlines()
        if pos > 0:
            lines = lines[1:]                   # the first one may be cut
        recs = merged([r for r in map(_parse_line, lines) if r is not None])
        return recs[-n:] if n > 0 else []
