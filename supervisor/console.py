"""The operator's view of `noblink run`: one live status line on a terminal.

On a terminal the last line of the screen is the bot's status, redrawn every second; a log
line clears it, prints, and the status comes back under it. Elsewhere (systemd, a pipe, a
file) the same summary is logged as a plain line once a minute.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("supervisor")
_CLEAR = "\r\x1b[K"


def summary(doc: dict[str, Any]) -> str:
    """tick, epoch and sha, slots OK, positions, win rate, PnL, the last reload."""
    st = doc.get("strategy") or {}
    pos = doc.get("positions") or {}
    slots = doc.get("slots") or []
    ok = sum(1 for s in slots if s.get("status") == "OK")
    wr = pos.get("win_rate_100")
    parts = [f"tick {doc.get('tick')}",
             f"epoch {doc.get('active_epoch')} {str(st.get('sha256') or '-')[:8]}",
             f"slots {ok}/{len(slots)}",
             f"open {pos.get('open', '-')} settled {pos.get('settled', '-')}",
             f"win {wr * 100:.0f}%" if isinstance(wr, int | float) and pos.get("settled")
             else "win -",
             f"pnl {pos.get('pnl', 0.0):+.2f}" if pos else "pnl -"]
    if doc.get("paused"):
        parts.append("PAUSED")
    live = st.get("reload_in_progress")
    reloads = doc.get("reloads") or []
    if live:
        parts.append(f"reloading ({live.get('phase')})")
    elif reloads:
        r = reloads[-1]
        parts.append(f"last reload {r.get('result')} "
                     f"{'' if r.get('handoff_ms') is None else str(r['handoff_ms']) + ' ms'}")
    if st.get("failed"):
        parts.append("STRATEGY DOWN")
    return " | ".join(parts)


class Console:
    """Draws the status line (terminal) or logs it (otherwise)."""

    def __init__(self, stream: TextIO | None = None, *, log_every_s: float = 60.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.line = ""
        self.log_every_s = log_every_s
        self._next = 0.0
        if self.tty:
            for h in logging.getLogger().handlers:
                if isinstance(h, logging.StreamHandler) and h.stream is self.stream:
                    h.emit = self._wrap(h.emit)         # type: ignore[method-assign]

    def _wrap(self, emit: Any) -> Any:
        def emit_under_status(record: logging.LogRecord) -> None:
            if self.line:
                self.stream.write(_CLEAR)
            emit(record)
            if self.line:
                self.stream.write(self.line)
                self.stream.flush()
        return emit_under_status

    def update(self, doc: dict[str, Any], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.tty:
            if now < self._next:
                return
            self._next = now + 1.0
            self.line = summary(doc)[: 200]
            self.stream.write(_CLEAR + self.line)
            self.stream.flush()
        elif now >= self._next:
            self._next = now + self.log_every_s
            log.info("status: %s", summary(doc))

    def close(self) -> None:
        if self.tty and self.line:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self.line = ""
