"""Helpers for the state tests: unrelated child interpreters that speak in lines, and a
condition wait with a deadline (tests never sleep a fixed time and hope)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class Child:
    """``python -m tests.state.procs ROLE JSON`` with line-based stdin/stdout."""

    def __init__(self, role: str, tmp: Path, **kwargs: object) -> None:
        self.role = role
        self.stderr_path = tmp / f"{role}-{time.monotonic_ns()}.stderr"
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.state.procs", role, json.dumps(kwargs)],
                cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def line(self, timeout: float = 20.0) -> str:
        """The next stdout line; fails the test (with the child's stderr) on timeout/EOF."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"{self.role}: no output within {timeout}s\n{self.stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(5)
                    pytest.fail(f"{self.role} exited ({self.proc.returncode}) early\n"
                                f"{self.stderr()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def expect_ready(self, timeout: float = 20.0) -> None:
        got = self.line(timeout)
        assert got == "READY", f"{self.role}: expected READY, got {got!r}\n{self.stderr()}"

    def report(self, timeout: float = 20.0) -> dict:
        return json.loads(self.line(timeout))

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.role} did not exit within {timeout}s\n{self.stderr()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.002) -> bool:
    """Poll ``cond`` until true or ``timeout``; deterministic waits, never bare sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
