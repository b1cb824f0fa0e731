"""The worker's report file: what the supervisor (and the operator) reads about one incarnation.

``<run dir>/reports/e<epoch>.json``, rewritten atomically on every lifecycle change that
matters to a reload: READY (with the verification timings), FAILED (with the error and the
traceback's last lines), and after a shadow run (the decisions that differed). The control
block carries the fast signals (state byte, lane acknowledgements); this file carries the
words.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any

from core.config import write_json_atomic

TRACEBACK_LINES = 8


def report_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "reports" / f"e{epoch}.json"


def traceback_tail(e: BaseException, lines: int = TRACEBACK_LINES) -> list[str]:
    """The last lines of ``e``'s traceback (its cause's when it wraps one: a StrategyError
    raised around the strategy's own exception should show the strategy's frames)."""
    root = e.__cause__ or e
    text = "".join(traceback.format_exception(type(root), root, root.__traceback__))
    return [ln for ln in text.rstrip().splitlines() if ln.strip()][-lines:]


class Report:
    def __init__(self, run_dir: Path, epoch: int, **fields: Any) -> None:
        self.path = report_path(run_dir, epoch)
        self.doc: dict[str, Any] = {"epoch": epoch, **fields}

    def update(self, **fields: Any) -> None:
        self.doc.update(fields, updated_at=time.time())
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.path, self.doc)

    def failed(self, e: BaseException, phase: str) -> None:
        self.update(state="FAILED", phase=phase, error=f"{type(e).__name__}: {e}",
                    traceback=traceback_tail(e))


def read_report(run_dir: Path, epoch: int) -> dict[str, Any]:
    """The report of ``epoch`` (empty when missing or unreadable: it is informative only)."""
    import orjson

    try:
        return orjson.loads(report_path(run_dir, epoch).read_bytes())
    except (OSError, ValueError):
        return {}
