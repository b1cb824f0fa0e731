"""Fault switches, flipped at run time through the admin endpoint (or ``noblink sim-fault``).

Two kinds:
- *states* that stay on until cleared or used up (stall a stream, malformed frames, REST errors,
  order rejects and delays), read by the servers on every frame or request;
- *actions* that happen once, now (drop every WebSocket, send serverShutdown, drop every RTDS
  connection), run by hooks the WebSocket servers register.

The ``ws_*`` switches hit the Binance WebSocket, the ``rtds_*`` ones the RTDS (Chainlink)
socket: ``rtds_stall`` takes RTDS symbols (``btc/usd``) or ``*``. ``unlisted`` takes series
labels (``["btc-5m"]``): Gamma then lists none of that series' markets (a configured series
Polymarket does not run), the CLOB keeps the ones already known.

Every switch is validated before anything changes, so a bad POST leaves the faults as they were.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REST_TARGETS = ("binance_rest", "gamma", "clob")
ACTIONS = ("ws_drop", "ws_shutdown", "rtds_drop")


@dataclass
class Faults:
    ws_stall: set[str] = field(default_factory=set)      # stream names, or "*" for all
    ws_malformed: int = 0                                # next N data frames are malformed
    ws_refuse_until: float = 0.0                         # monotonic; refuse new WS until then
    rest_error: int | None = None                        # HTTP status to return
    rest_error_count: int | None = None                  # None: until cleared
    rest_429: int = 0                                    # next N REST requests get 429
    rest_target: tuple[str, ...] = REST_TARGETS          # which REST servers the above hit
    order_reject: str | None = None                      # reject orders with this message
    order_reject_count: int | None = None                # None: until cleared
    order_delay_s: float = 0.0                           # hold order replies this long (wall)
    rtds_stall: set[str] = field(default_factory=set)    # RTDS symbols, or "*" for all
    rtds_malformed: int = 0                              # next N RTDS data frames are malformed
    rtds_refuse_until: float = 0.0                       # monotonic; refuse new RTDS until then
    unlisted: set[str] = field(default_factory=set)      # series ("btc-5m") Gamma does not list
    _hooks: dict[str, Callable[[Any], None]] = field(default_factory=dict, repr=False)

    def on_action(self, name: str, hook: Callable[[Any], None]) -> None:
        """Register the code that performs a one-shot action (``ws_drop``, ``ws_shutdown``)."""
        self._hooks[name] = hook

    # -- admin side --------------------------------------------------------------------------

    def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        """Validate then apply a POST /faults body; raises ValueError (nothing changed)."""
        if not isinstance(body, dict) or not body:
            raise ValueError("body must be a non-empty JSON object")
        updates: dict[str, Any] = {}
        actions: list[tuple[str, Any]] = []
        for key, val in body.items():
            if key in ACTIONS:
                if val in (None, False):
                    continue
                if key == "ws_shutdown":        # the grace before closing, in wall seconds
                    val = 1.0 if val is True else _seconds(key, val)
                actions.append((key, val))
            elif key in ("ws_stall", "rtds_stall"):
                updates[key] = _stall_set(val, key)
            elif key in ("ws_malformed", "rtds_malformed"):
                updates[key] = _count(key, val)
            elif key in ("ws_refuse_s", "rtds_refuse_s"):
                until = key.replace("_s", "_until")
                updates[until] = time.monotonic() + _seconds(key, val)
            elif key == "unlisted":
                updates[key] = _series_set(val)
            elif key == "rest_error":
                if val is None or val is False:
                    updates[key] = None
                else:
                    code = _count(key, val)
                    if not 400 <= code <= 599:
                        raise ValueError("rest_error must be an HTTP status 400..599")
                    updates[key] = code
            elif key in ("rest_error_count", "order_reject_count"):
                updates[key] = None if val is None else _count(key, val)
            elif key == "rest_429":
                updates[key] = _count(key, val)
            elif key == "rest_target":
                targets = (val,) if isinstance(val, str) else \
                    tuple(val) if isinstance(val, list) else ()
                if not targets or any(t not in REST_TARGETS for t in targets):
                    raise ValueError(f"rest_target must be among {list(REST_TARGETS)}")
                updates[key] = targets
            elif key == "order_reject":
                if val in (None, False, ""):
                    updates[key] = None
                else:
                    updates[key] = val if isinstance(val, str) else "order rejected by sim fault"
            elif key == "order_delay_s":
                updates[key] = _seconds(key, val)
            else:
                raise ValueError(f"unknown fault {key!r}")
        for key, val in updates.items():
            setattr(self, key, val)
        for name, val in actions:
            hook = self._hooks.get(name)
            if hook is not None:
                hook(val)
        return self.snapshot()

    def clear(self) -> None:
        """Switch every fault off."""
        hooks = self._hooks
        fresh = Faults()
        for f in fresh.__dataclass_fields__:
            setattr(self, f, getattr(fresh, f))
        self._hooks = hooks

    def snapshot(self) -> dict[str, Any]:
        refuse = max(0.0, self.ws_refuse_until - time.monotonic())
        rtds_refuse = max(0.0, self.rtds_refuse_until - time.monotonic())
        return {
            "ws_stall": sorted(self.ws_stall), "ws_malformed": self.ws_malformed,
            "ws_refuse_s": round(refuse, 3), "rest_error": self.rest_error,
            "rest_error_count": self.rest_error_count, "rest_429": self.rest_429,
            "rest_target": list(self.rest_target), "order_reject": self.order_reject,
            "order_reject_count": self.order_reject_count, "order_delay_s": self.order_delay_s,
            "rtds_stall": sorted(self.rtds_stall), "rtds_malformed": self.rtds_malformed,
            "rtds_refuse_s": round(rtds_refuse, 3), "unlisted": sorted(self.unlisted),
        }

    # -- server side -------------------------------------------------------------------------

    def stalled(self, stream: str) -> bool:
        return bool(self.ws_stall) and ("*" in self.ws_stall or stream in self.ws_stall)

    def take_malformed(self) -> bool:
        """True if this data frame must be malformed (uses one)."""
        if self.ws_malformed > 0:
            self.ws_malformed -= 1
            return True
        return False

    def ws_refused(self) -> bool:
        return time.monotonic() < self.ws_refuse_until

    def rtds_stalled(self, symbol: str) -> bool:
        return bool(self.rtds_stall) and ("*" in self.rtds_stall or symbol in self.rtds_stall)

    def take_rtds_malformed(self) -> bool:
        """True if this RTDS data frame must be malformed (uses one)."""
        if self.rtds_malformed > 0:
            self.rtds_malformed -= 1
            return True
        return False

    def rtds_refused(self) -> bool:
        return time.monotonic() < self.rtds_refuse_until

    def take_rest_fault(self, target: str) -> int | None:
        """The status this REST request must fail with, if any (uses one)."""
        if target not in self.rest_target:
            return None
        if self.rest_429 > 0:
            self.rest_429 -= 1
            return 429
        if self.rest_error is not None:
            if self.rest_error_count is not None:
                self.rest_error_count -= 1
                if self.rest_error_count <= 0:
                    code = self.rest_error
                    self.rest_error, self.rest_error_count = None, None
                    return code
            return self.rest_error
        return None

    def take_order_reject(self) -> str | None:
        if self.order_reject is None:
            return None
        msg = self.order_reject
        if self.order_reject_count is not None:
            self.order_reject_count -= 1
            if self.order_reject_count <= 0:
                self.order_reject, self.order_reject_count = None, None
        return msg


def _count(key: str, val: Any) -> int:
    if isinstance(val, bool) or not isinstance(val, int) or val < 0:
        raise ValueError(f"{key} must be a non-negative integer")
    return val


def _seconds(key: str, val: Any) -> float:
    if isinstance(val, bool) or not isinstance(val, int | float) or not 0 <= val <= 3600:
        raise ValueError(f"{key} must be a number of seconds in 0..3600")
    return float(val)


def _stall_set(val: Any, key: str = "ws_stall") -> set[str]:
    if val in (None, False, "", []):
        return set()
    if val is True:
        return {"*"}
    items = [val] if isinstance(val, str) else val
    if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items):
        what = "symbol" if key == "rtds_stall" else "stream name"
        raise ValueError(f"{key} must be a {what}, '*', or a list of them")
    return {s.lower() if s != "*" else s for s in items}


def _series_set(val: object) -> set[str]:
    """``["btc-5m", "eth-15m"]``: series labels (asset slug, window)."""
    if not isinstance(val, list) or not all(
            isinstance(v, str) and re.fullmatch(r"[a-z0-9]{1,16}-(5m|15m)", v) for v in val):
        raise ValueError("unlisted must be a list of series labels like \"btc-5m\"")
    return set(val)
