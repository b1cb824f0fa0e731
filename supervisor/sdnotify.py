"""sd_notify(3) for the supervisor, with the standard library only.

systemd (``Type=notify``) passes the path of a datagram socket in ``$NOTIFY_SOCKET``; the
service sends newline-separated ``KEY=VALUE`` assignments to it:

    READY=1              start-up finished (the first strategy is active); also "reload done"
    RELOADING=1          a reload began; with MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>, which
                         systemd >= 253 wants (Type=notify-reload) and older ones ignore;
                         READY=1 ends it
    STATUS=<one line>    shown by `systemctl status`
    STOPPING=1           shut-down began
    WATCHDOG=1           keep-alive; with WatchdogSec=, systemd SIGABRTs a service that
                         stays silent longer (the watchdog starts after READY=1)

A path starting with "@" is in the abstract namespace (the "@" becomes a NUL byte). Without
``$NOTIFY_SOCKET`` (a terminal, a test, Docker) every call is a no-op. Sending never raises
into the caller: the supervisor's loop must not stop trading because the service manager is
gone, so the first failure is logged at WARNING and later ones at DEBUG. The socket is
non-blocking: a receiver that does not read cannot stall the loop (the datagram is dropped;
a dropped WATCHDOG=1 is retried on the next call).

``$WATCHDOG_USEC`` / ``$WATCHDOG_PID`` follow sd_watchdog_enabled(3): the watchdog concerns
this process only if WATCHDOG_PID is unset or is our pid (children inherit the environment,
and a child must never keep its dead parent's watchdog happy). :meth:`Notifier.watchdog` may
be called on every loop turn: it sends at most once per WatchdogSec/4.

The environment is read once, at construction; the clock (``time.monotonic`` on Linux is
CLOCK_MONOTONIC, the clock MONOTONIC_USEC must use) and ``getpid`` are injectable for tests.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("supervisor.sdnotify")

_STATUS_MAX = 512          # a status is one line for `systemctl status`, not a log


def _address(raw: str) -> str | bytes | None:
    """The sendto() address for a $NOTIFY_SOCKET value; None when unsupported."""
    if raw.startswith("/"):
        return raw
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    return None                # "vsock:..." and anything else: not for a local bot


class Notifier:
    """Talks to the service manager over $NOTIFY_SOCKET; every method is safe to call."""

    _sock: socket.socket | None = None      # class defaults: close() is always safe

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 getpid: Callable[[], int] = os.getpid) -> None:
        env = os.environ if environ is None else environ
        self._monotonic = monotonic
        self._getpid = getpid
        self._raw = env.get("NOTIFY_SOCKET", "")
        self._addr = _address(self._raw) if self._raw else None
        self._warned = False
        self._last_status: str | None = None
        self._last_watchdog: float | None = None
        self._watchdog_s = _watchdog_seconds(env.get("WATCHDOG_USEC", ""))
        self._watchdog_pid = _int_or_none(env.get("WATCHDOG_PID", ""))
        if self._raw and self._addr is None:
            self._warn("unsupported NOTIFY_SOCKET %r: systemd notifications are off", self._raw)

    # -- what the supervisor says -----------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to talk to."""
        return self._addr is not None

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up (or a reload) is complete."""
        return self._send_with_status("READY=1", status)

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC; end it with :meth:`ready`."""
        usec = int(self._monotonic() * 1_000_000)
        return self._send_with_status(f"RELOADING=1\nMONOTONIC_USEC={usec}", status)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the ordered shut-down began."""
        return self._send_with_status("STOPPING=1", status)

    def status(self, text: str) -> bool:
        """STATUS=<text>, one line. An unchanged text is not sent again (True)."""
        line = _one_line(text)
        if line == self._last_status:
            return True
        sent = self.notify(f"STATUS={line}")
        if sent:
            self._last_status = line
        return sent

    def watchdog_interval(self) -> float | None:
        """WatchdogSec in seconds if the watchdog concerns this process, else None."""
        if self._watchdog_s is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != self._getpid():
            return None
        return self._watchdog_s

    def watchdog(self) -> bool:
        """WATCHDOG=1, at most once per WatchdogSec/4; call it as often as you like.

        True when a keep-alive was sent now, False otherwise (not due, no watchdog, not our
        pid, or the send failed: then the next call tries again)."""
        interval = self.watchdog_interval()
        if interval is None or not self.enabled:
            return False
        now = self._monotonic()
        if self._last_watchdog is not None and now - self._last_watchdog < interval / 4:
            return False
        if not self.notify("WATCHDOG=1"):
            return False
        self._last_watchdog = now
        return True

    # -- the wire ---------------------------------------------------------------------------

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram. True if sent; never raises."""
        if self._addr is None:
            return False
        msg = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.setblocking(False)     # never stall the supervisor's loop
            self._sock.sendto(msg, self._addr)
        except OSError as e:
            self._warn("cannot notify the service manager at %s (%s); going on without it",
                       self._raw, e)
            return False
        return True

    def close(self) -> None:
        """Close the socket (idempotent); a later send opens a new one."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _send_with_status(self, head: str, status: str | None) -> bool:
        if status is None:
            return self.notify(head)
        line = _one_line(status)
        sent = self.notify(head, f"STATUS={line}")
        if sent:
            self._last_status = line
        return sent

    def _warn(self, fmt: str, *args: object) -> None:
        if self._warned:
            log.debug(fmt, *args)
            return
        self._warned = True
        log.warning(fmt, *args)


def _one_line(text: str) -> str:
    """An assignment ends at a newline: fold the text into one bounded line."""
    return " ".join(str(text).split())[:_STATUS_MAX]


def _int_or_none(raw: str) -> int | None:
    try:
        v = int(raw)
    except ValueError:
        return None
    return v if v > 0 else None


def _watchdog_seconds(raw: str) -> float | None:
    usec = _int_or_none(raw)
    return None if usec is None else usec / 1_000_000
