"""The process: --listen and the loopback rule, api.json, the token file, a clean stop."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import orjson
import pytest

from api_worker.logs import RateLimit
from api_worker.main import is_loopback, main, parse_listen, read_api_info
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_parse_listen_and_loopback() -> None:
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ("nohost", ":80", "h:x", "h:70000"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("example.com")


def test_non_loopback_needs_allow_remote(tmp_path: Path, capsys) -> None:
    assert main(["--run-dir", str(tmp_path / "run"), "--listen", "0.0.0.0:0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()              # refused before touching anything
    assert main(["--run-dir", str(tmp_path / "run"), "--listen", "nonsense"]) == 2


def test_process_writes_api_json_serves_and_stops_cleanly(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "api_worker", "--run-dir", str(run_dir),
                                 "--listen", "0.0.0.0:0", "--allow-remote"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        info = wait_for(lambda: read_api_info(run_dir), 30, "api.json", log.read_text)
        assert info["pid"] == proc.pid and info["remote"] is True
        assert info["public_read"] is False
        token_file = Path(info["token_file"])
        assert token_file == run_dir / "api.token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(run_dir / "api.json").st_mode) == 0o600
        assert "WARNING" in log.read_text() or "warning" in log.read_text().lower()
        port = info["url"].rsplit(":", 1)[1]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={
            "Authorization": f"Bearer {token_file.read_text().strip()}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 503                      # authorised; no bot in that dir
        assert "error" in orjson.loads(e.value.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not (run_dir / "api.json").exists()
        assert token_file.exists()                      # kept for the next start
        logs = log.read_text() + (run_dir / "logs" / "api.jsonl").read_text()
        assert token_file.read_text().strip() not in logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_bad_requests_are_rate_limited_to_one_line() -> None:
    f = RateLimit(every_s=3600)

    def rec() -> logging.LogRecord:
        try:
            raise ValueError("Unexpected start char in url")
        except ValueError:
            return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                                     "Error handling request from %s", ("1.2.3.4",),
                                     sys.exc_info())
    first = rec()
    assert f.filter(first) and first.exc_info is None and first.levelname == "WARNING"
    assert first.getMessage() == ("Error handling request from 1.2.3.4: ValueError: "
                                  "Unexpected start char in url")
    assert not any(f.filter(rec()) for _ in range(5))
    f._next = 0                                         # the window is over
    later = rec()
    assert f.filter(later) and "(+5 similar in the last 3600 s)" in later.getMessage()
