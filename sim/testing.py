"""Run a simulator in a subprocess from tests: ``with start_sim(tmp_path) as sim: ...``.

``start_sim`` launches ``python -m sim --port-base 0 ...``, waits (polling, up to ~20 s) for
sim.json carrying the child's pid, and returns a :class:`SimProcess`. The sim's stdout and
stderr go to ``<run_dir>/sim.log``. The sync helpers talk to the admin API with urllib, so they
work from any test, async or not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from core.clock import Clock
from core.config import Endpoints

START_DEADLINE_S = 20.0
STOP_GRACE_S = 10.0


def read_sim_info(run_dir: Path | str) -> dict[str, Any]:
    return orjson.loads((Path(run_dir) / "sim.json").read_bytes())


class SimProcess:
    """A running sim subprocess. ``stop()`` is idempotent; also a context manager."""

    def __init__(self, proc: subprocess.Popen[bytes], run_dir: Path, info: dict[str, Any]
                 ) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.info = info
        self.endpoints = Endpoints.from_sim_info(info)
        self.clock = Clock.from_dict(info["clock"])
        self.admin: str = info["admin"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.run_dir / "sim.log"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM, wait up to ``grace`` s, then SIGKILL. Returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_sim(run_dir: Path | str, speed: float = 60.0, seed: int = 1,
              extra_args: tuple[str, ...] | list[str] = ()) -> SimProcess:
    """Launch a sim on free ports and wait until it has published sim.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sim", "--speed", str(speed), "--seed", str(seed),
           "--port-base", "0", "--run-dir", str(run_dir), *extra_args]
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    with open(run_dir / "sim.log", "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                cwd=str(root))
    deadline = time.monotonic() + START_DEADLINE_S
    try:
        while True:
            info = _try_info(run_dir)
            if info is not None and info.get("pid") == proc.pid:
                return SimProcess(proc, run_dir, info)
            if proc.poll() is not None:
                raise RuntimeError(f"sim exited with {proc.returncode} before publishing "
                                   f"sim.json:\n{_tail(run_dir / 'sim.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sim did not publish sim.json within {START_DEADLINE_S}s:"
                                   f"\n{_tail(run_dir / 'sim.log')}")
            time.sleep(0.05)   # polling interval of the readiness condition above
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def _try_info(run_dir: Path) -> dict[str, Any] | None:
    try:
        return read_sim_info(run_dir)
    except (OSError, ValueError):
        return None


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return "(no log)"


# -- admin helpers (sync) -------------------------------------------------------------------

def admin_request(admin_url: str, method: str, path: str, body: Any = None,
                  timeout: float = 10.0) -> Any:
    data = None if body is None else orjson.dumps(body)
    req = urllib.request.Request(admin_url.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return orjson.loads(resp.read())


def set_fault(admin_url: str, **kw: Any) -> dict[str, Any]:
    """``set_fault(sim.admin, ws_stall="*")``; returns the fault switches now in force."""
    return admin_request(admin_url, "POST", "/faults", kw)


def clear_faults(admin_url: str) -> dict[str, Any]:
    return admin_request(admin_url, "DELETE", "/faults")


def order_log(admin_url: str, since: int = 0) -> list[dict[str, Any]]:
    """Every order request the sim received (POST/DELETE /order, /orders, cancels...)."""
    return admin_request(admin_url, "GET", f"/orders/log?since={since}")


def resolution(admin_url: str, slug: str) -> dict[str, Any]:
    return admin_request(admin_url, "GET", f"/markets/{slug}/resolution")


def health(admin_url: str) -> dict[str, Any]:
    return admin_request(admin_url, "GET", "/health")
