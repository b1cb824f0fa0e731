"""Every order request the CLOB received, in arrival order, so tests can spot duplicates.

Entries are appended before any fault or validation runs: a request that was rejected, delayed
or hit by an injected 5xx is still a request the exchange saw.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

MAX_ENTRIES = 100_000


class OrderLog:
    def __init__(self, maxlen: int = MAX_ENTRIES) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._seq = 0

    def record(self, sim_time: float, method: str, path: str, body: Any) -> dict[str, Any]:
        """Append one request; returns the entry so the handler can add its outcome."""
        self._seq += 1
        entry = {"id": self._seq, "time": sim_time, "wall_time": time.time(), "path": path,
                 "method": method, "body": body, "status": None}
        self._entries.append(entry)
        return entry

    def entries(self, since_id: int = 0) -> list[dict[str, Any]]:
        return [e for e in self._entries if e["id"] > since_id]

    def clear(self) -> None:
        self._entries.clear()
