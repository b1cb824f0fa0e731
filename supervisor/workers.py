"""One managed child process: how to start it, its lifecycle, its restart budget.

Children are fresh interpreters started as ``python -m <package> ...`` (visible as such in
``ps``), each with its own log file, in their own session (a terminal's Ctrl-C reaches only
the supervisor, which stops them in order), and with PR_SET_PDEATHSIG so that a supervisor
killed with -9 does not leave orphans trading on their own.

Restart policy (Erlang's intensity/period): at most ``intensity`` restarts within ``period``
seconds, with exponential backoff between them. Past that the worker is FAILED and the
supervisor escalates. Exit codes 2 (usage), 3 (operator needed) and 4 (broken code; gunicorn's
APP_LOAD_ERROR) mean restarting cannot help, so the worker goes straight to FAILED
(core/proc.py).
"""

from __future__ import annotations

import collections
import ctypes
import enum
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.fsm import StateMachine
from core.proc import NO_RESTART_EXITS

log = logging.getLogger("supervisor.workers")

_PR_SET_PDEATHSIG = 1
# Loaded here, once: loading a library in the forked child (preexec_fn) is not safe.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:      # pragma: no cover - not glibc
    _LIBC = None


def _die_with_parent(parent_pid: int) -> None:  # pragma: no cover - child, before exec
    """Arm PR_SET_PDEATHSIG (SIGTERM when ``parent_pid`` dies), then make sure it still lives.

    Runs in the forked child before exec (``preexec_fn``), so it only makes syscalls: no
    logging, no locks. ``parent_pid`` is the supervisor's pid, taken before the fork.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    # The death signal only covers a parent that dies *after* the prctl. If the supervisor
    # died between the fork and the prctl, we were already reparented (to init or a
    # subreaper) and no signal will ever come: exit now rather than run as an orphan.
    if os.getppid() != parent_pid:
        os._exit(1)


# Credential variables (position_worker/credentials.py): passed to the position worker only.
SECRET_ENV = frozenset({"NOBLINK_PK", "NOBLINK_CLOB_API_KEY", "NOBLINK_CLOB_SECRET",
                        "NOBLINK_CLOB_PASSPHRASE"})


class ChildState(enum.IntEnum):
    IDLE = 0
    STARTING = 1      # spawned, not yet registered in the control block
    RUNNING = 2
    STOPPING = 3      # TERM sent
    EXITED = 4        # exited; may be restarted
    BACKOFF = 5       # waiting before a restart
    FAILED = 6        # restart budget exhausted or code broken: escalate


_C = ChildState
CHILD_TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    _C.IDLE: frozenset({_C.STARTING}),
    _C.STARTING: frozenset({_C.RUNNING, _C.STOPPING, _C.EXITED}),
    _C.RUNNING: frozenset({_C.STOPPING, _C.EXITED}),
    _C.STOPPING: frozenset({_C.EXITED}),
    _C.EXITED: frozenset({_C.BACKOFF, _C.FAILED, _C.STARTING, _C.IDLE}),
    _C.BACKOFF: frozenset({_C.STARTING, _C.IDLE}),
    _C.FAILED: frozenset({_C.IDLE}),
}


@dataclass
class RestartPolicy:
    intensity: int = 5            # restarts allowed ...
    period: float = 60.0          # ... within this many seconds
    backoff_min: float = 0.5
    backoff_max: float = 10.0


@dataclass
class ChildSpec:
    name: str                                   # "feed", "position", "strategy", "sim"
    argv: Callable[[], list[str]]               # built at each start (epoch, lane may change)
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    heartbeat_timeout: float = 15.0             # wall seconds without a heartbeat = hung
    stop_grace: float = 10.0                    # TERM -> KILL after this many seconds
    secrets: bool = False                       # gets the wallet's credentials (SECRET_ENV)


class Child:
    """A running (or restartable) child process."""

    def __init__(self, spec: ChildSpec, log_dir: Path,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.log_dir = log_dir
        self._now = now
        self.proc: subprocess.Popen[bytes] | None = None
        self.fsm = StateMachine(f"child {spec.name}", ChildState.IDLE, CHILD_TRANSITIONS)
        self.restarts: collections.deque[float] = collections.deque()
        self.restart_count = 0
        self.started_at = 0.0
        self.stop_sent_at = 0.0
        self.next_start_at = 0.0
        self.last_exit: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    @property
    def state(self) -> ChildState:
        return self.fsm.state

    def start(self) -> None:
        """Spawn the process (its output goes to <log_dir>/<name>.log)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = self.spec.argv()
        parent_pid = os.getpid()     # before the fork: the child checks it after the prctl
        with open(self.log_dir / f"{self.spec.name}.log", "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=functools.partial(_die_with_parent, parent_pid),
                # Own session: a Ctrl-C in the operator's terminal reaches the supervisor
                # only, which then stops the children in order (strategy first).
                start_new_session=True,
                env={**self._environ(), "PYTHONUNBUFFERED": "1",
                     # everything goes to logs/<role>.jsonl (rotated); this file gets warnings
                     "NOBLINK_STREAM_LOG_LEVEL": "WARNING"})
        self.started_at = self._now()
        self.fsm.to(ChildState.STARTING, f"pid {self.proc.pid}: {' '.join(argv)}")

    def _environ(self) -> dict[str, str]:
        """Our environment, without the wallet's secrets unless this child needs them (only
        the position worker, the one exchange client, does: a hot-loaded strategy, the
        network-facing API or the feed have no business reading a private key)."""
        if self.spec.secrets:
            return dict(os.environ)
        return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}

    def poll(self) -> int | None:
        """Reap: the exit code if the process ended since the last poll, else None."""
        if self.proc is None or self.state in (ChildState.EXITED, ChildState.BACKOFF,
                                               ChildState.FAILED, ChildState.IDLE):
            return None
        code = self.proc.poll()
        if code is None:
            return None
        self.last_exit = code
        self.fsm.to(ChildState.EXITED, f"exit code {code}")
        return code

    def terminate(self) -> None:
        """Ask the child to stop (SIGTERM); :meth:`enforce_stop` escalates to SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.state in (ChildState.STARTING, ChildState.RUNNING):
            self.fsm.to(ChildState.STOPPING, "SIGTERM")
        self.stop_sent_at = self._now()
        self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            log.warning("%s pid %d: SIGKILL", self.spec.name, self.proc.pid)
            self.proc.kill()

    def enforce_stop(self) -> None:
        """SIGKILL a child that ignored SIGTERM for longer than its grace period."""
        if (self.state == ChildState.STOPPING and self.proc is not None
                and self.proc.poll() is None
                and self._now() - self.stop_sent_at > self.spec.stop_grace):
            self.kill()

    def plan_restart(self) -> bool:
        """After an exit: schedule a restart (True) or give up (False, FAILED)."""
        now = self._now()
        p = self.spec.policy
        if self.last_exit in NO_RESTART_EXITS:
            self.fsm.to(ChildState.FAILED, f"exit code {self.last_exit}: restarting cannot "
                        "help (usage, operator needed, or broken code)")
            return False
        while self.restarts and now - self.restarts[0] > p.period:
            self.restarts.popleft()
        if len(self.restarts) >= p.intensity:
            self.fsm.to(ChildState.FAILED,
                        f"{len(self.restarts)} restarts in {p.period:.0f}s: giving up")
            return False
        delay = min(p.backoff_max, p.backoff_min * (2 ** len(self.restarts)))
        self.restarts.append(now)
        self.restart_count += 1
        self.next_start_at = now + delay
        self.fsm.to(ChildState.BACKOFF, f"restart #{self.restart_count} in {delay:.1f}s")
        return True

    def due(self) -> bool:
        return self.state == ChildState.BACKOFF and self._now() >= self.next_start_at

    def wait(self, timeout: float) -> bool:
        """Block until the process exits (True) or ``timeout`` passes (False)."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
