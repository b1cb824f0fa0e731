"""``<run dir>/reloads.jsonl``: the reload history, one JSON object per line, append-only.

The supervisor appends a reload's record when the reload ends. A probation decided later
(passed, failed, superseded) is appended as ``{"id": <reload id>, "update": {...}}`` instead of
rewriting the file: appending is crash-safe and readers that follow the file by offset (the
API's counters) never see a line change under them. Readers apply updates with
:func:`merged`; readers that match records by command id or epoch skip update lines without
knowing about them (they carry neither).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

FILE_NAME = "reloads.jsonl"


def append(run_dir: Path, line: dict[str, Any]) -> None:
    with open(Path(run_dir) / FILE_NAME, "ab") as f:
        f.write(orjson.dumps(line) + b"\n")


def is_update(doc: dict[str, Any]) -> bool:
    return isinstance(doc.get("update"), dict)


def merged(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records, oldest first, with their later updates applied; update lines dropped
    (an update whose record is not among ``docs`` is dropped too)."""
    out: list[dict[str, Any]] = []
    by_id: dict[Any, dict[str, Any]] = {}
    for doc in docs:
        if is_update(doc):
            if doc.get("id") in by_id:
                by_id[doc["id"]].update(doc["update"])
            continue
        out.append(doc)
        by_id[doc.get("id")] = doc
    return out


def read_tail(run_dir: Path, n: int) -> list[dict[str, Any]]:
    """The last ``n`` records, updates applied; [] without a file. Unparseable lines are
    skipped."""
    try:
        lines = (Path(run_dir) / FILE_NAME).read_bytes().splitlines()
    except OSError:
        return []
    k = 2 * n + 16
    while True:             # widen until n records are in view (update lines are not records)
        recs = merged([d for d in map(_parse, lines[-k:]) if d is not None])
        if len(recs) >= n or k >= len(lines):
            return recs[-n:] if n > 0 else []
        k *= 2


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
