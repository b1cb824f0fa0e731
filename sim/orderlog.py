"""Every order request the CLOB received, in arrival order, so tests can spot duplicates.

Entries are appended before any fault or validation runs: a request that was rejected, delayed
or hit by an injected 5xx is still a request the exchange saw.

Bodies are logged before auth, so their size is bounded (see :func:`loggable_body`): a body up
to MAX_BODY_BYTES is kept as it came; a larger one is reduced to the fields that tell orders
apart, so a flood of 1 MiB bodies cannot fill memory.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from typing import Any

import orjson

MAX_ENTRIES = 100_000
MAX_BODY_BYTES = 4096        # bodies up to this size are logged whole (a signed order ~1 KB)
MAX_SUMMARY_BYTES = 16_384   # a reduced body stays under this (15 reduced orders fit)
MAX_STR = 132                # longer strings become "sha256:<hex>" (a V2 signature is 132)
TOP_FIELDS = ("owner", "orderType", "postOnly", "deferExec", "orderID", "market", "asset_id")
ORDER_FIELDS = ("salt", "maker", "signer", "taker", "tokenId", "makerAmount", "takerAmount",
                "side", "expiration", "nonce", "feeRateBps", "signatureType", "timestamp",
                "metadata", "builder", "signature")


def _small(v: Any) -> Any:
    """A scalar as is; a long string or any container as its sha256 (still comparable)."""
    if v is None or isinstance(v, bool | int | float) or (isinstance(v, str)
                                                          and len(v) <= MAX_STR):
        return v
    blob = v.encode(errors="replace") if isinstance(v, str) else orjson.dumps(v)
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _reduce(item: Any) -> Any:
    if not isinstance(item, dict):
        return _small(item)
    out = {k: _small(item[k]) for k in TOP_FIELDS if k in item}
    order = item.get("order")
    if isinstance(order, dict):
        out["order"] = {k: _small(order[k]) for k in ORDER_FIELDS if k in order}
    elif "order" in item:
        out["order"] = _small(order)
    return out


def loggable_body(parsed: Any, raw: bytes) -> Any:
    """What the log keeps of a body: the parsed JSON (or, if it is not JSON, its text) when it
    is at most MAX_BODY_BYTES; else the order fields of each item (at most MAX_SUMMARY_BYTES
    of them, a list ending with a "...(+N more items)" string if cut), or the text's start."""
    if len(raw) <= MAX_BODY_BYTES:
        return raw.decode(errors="replace") if isinstance(parsed, ValueError) else parsed
    if isinstance(parsed, dict):
        return _reduce(parsed)
    if isinstance(parsed, list):
        out: list[Any] = []
        size = 0
        for item in parsed:
            r = _reduce(item)
            size += len(orjson.dumps(r)) + 1
            if size > MAX_SUMMARY_BYTES:
                out.append(f"...(+{len(parsed) - len(out)} more items)")
                break
            out.append(r)
        return out
    head = raw[:MAX_BODY_BYTES].decode(errors="replace")
    return f"{head}...(+{len(raw) - MAX_BODY_BYTES} bytes)"


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
