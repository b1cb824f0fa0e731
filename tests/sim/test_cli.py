"""``noblink sim`` on its own: the JSON line, sim.json, fixed ports, clean stops; and
``noblink sim-fault``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sim.cli import fault_main
from sim.testing import admin_request

ROOT = Path(__file__).resolve().parents[2]
KEYS = {"binance_ws", "binance_rest", "gamma", "clob", "admin", "clock", "pid", "seed"}


def spawn(args: list[str], run_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "supervisor.cli", "sim", *args,
                             "--run-dir", str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)


def free_base() -> int:
    """A port P with P..P+5 all free right now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        socks = []
        try:
            for i in range(6):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    pytest.skip("no block of 6 free ports")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_noblink_sim_runs_alone_and_stops_cleanly(tmp_path, sig):
    base = free_base()
    proc = spawn(["--speed", "60", "--port-base", str(base)], tmp_path)
    try:
        line = proc.stdout.readline()            # the first line is the endpoint JSON
        info = json.loads(line)
        assert set(info) >= KEYS
        assert info["binance_ws"] == f"ws://127.0.0.1:{base}"
        assert [info[k] for k in ("binance_rest", "gamma", "clob", "admin")] == [
            f"http://127.0.0.1:{base + i}" for i in range(1, 5)]
        assert info["rtds"] == f"ws://127.0.0.1:{base + 5}"
        assert info["pid"] == proc.pid and info["clock"]["speed"] == 60.0
        assert json.loads((tmp_path / "sim.json").read_text()) == info
        assert admin_request(info["admin"], "GET", "/health")["ok"] is True
        with urllib.request.urlopen(f"{info['clob']}/time", timeout=5) as r:
            assert abs(json.loads(r.read()) - time.time()) < 3600
        proc.send_signal(sig)
        assert proc.wait(15) == 0
        assert not (tmp_path / "sim.json").exists()
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_arguments_exit_nonzero(tmp_path):
    proc = spawn(["--speed", "0"], tmp_path)
    assert proc.wait(15) == 2
    with socket.socket() as taken:                    # a port base already in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = spawn(["--port-base", str(taken.getsockname()[1])], tmp_path)
        try:
            assert proc.wait(15) == 1
            assert b"cannot start" in proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_sim_fault_cli(sim, capsys):
    assert fault_main(["--admin", sim.admin, "ws_malformed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["ws_malformed"] == 3
    assert fault_main(["--run-dir", str(sim.run_dir), "rest_error", "503", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rest_error"] == 503 and out["rest_error_count"] == 2
    assert fault_main(["--admin", sim.admin, "ws_stall", "btcusdt@kline_1m"]) == 0
    assert json.loads(capsys.readouterr().out)["ws_stall"] == ["btcusdt@kline_1m"]
    assert fault_main(["--admin", sim.admin, "show"]) == 0
    capsys.readouterr()
    assert fault_main(["--admin", sim.admin, "clear"]) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["ws_malformed"] == 0 and cleared["rest_error"] is None
    assert fault_main(["--admin", sim.admin, "no_such_fault"]) == 1
    assert fault_main(["--run-dir", "/nonexistent/dir", "clear"]) == 1
