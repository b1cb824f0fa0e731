"""No credential ever reaches the log (stderr or logs/position.jsonl), even at DEBUG (hpack/h2
print every header they encode)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_KEY = "fake-api-key-6b1d0c2e"
PASSPHRASE = "fake-passphrase-93af11"
SECRET = "ZmFrZS1zZWNyZXQtZm9yLXRlc3Rz"          # base64, as the HMAC needs

# In a child process: the worker's logging set-up at DEBUG, then the exact path a live order
# takes out of the client: L2 headers built by py-clob-client-v2, sent over HTTP/2 (httpx ->
# httpcore -> h2 -> hpack) to a socket that accepts and hangs up.
CHILD = textwrap.dedent(f"""
    import logging, socket, sys, threading
    import httpx
    from py_clob_client_v2.clob_types import ApiCreds, RequestArgs
    from py_clob_client_v2.headers.headers import create_level_2_headers
    from py_clob_client_v2.signer import Signer
    from pathlib import Path
    from position_worker.main import configure_logging

    configure_logging("DEBUG", Path(sys.argv[1]))
    logging.getLogger("position_worker").debug("debug logging is on")
    srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
    def serve():
        while True:
            c, _ = srv.accept(); c.recv(65536); c.close()
    threading.Thread(target=serve, daemon=True).start()
    signer = Signer("0x" + "11" * 32, 137)
    creds = ApiCreds({API_KEY!r}, {SECRET!r}, {PASSPHRASE!r})
    headers = create_level_2_headers(signer, creds, RequestArgs(method="GET",
                                                                request_path="/data/trades"))
    with httpx.Client(http1=False, http2=True) as client:
        try:
            client.get(f"http://127.0.0.1:{{srv.getsockname()[1]}}/data/trades",
                       headers=headers)
        except httpx.HTTPError as e:
            logging.getLogger("position_worker").debug("request ended: %s", type(e).__name__)
    print("SIG=" + headers["POLY_SIGNATURE"])
""")


def test_debug_logging_never_shows_api_credentials(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    p = subprocess.run([sys.executable, "-c", CHILD, str(run_dir)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr
    jsonl = (run_dir / "logs" / "position.jsonl").read_text()
    for out in (p.stderr, jsonl):
        assert "debug logging is on" in out                 # DEBUG really was on
    lines = [orjson.loads(x) for x in jsonl.splitlines()]
    assert {x["role"] for x in lines} == {"position"}
    sig = p.stdout.strip().removeprefix("SIG=")
    assert sig and sig in p.stdout
    for secret in (API_KEY, PASSPHRASE, SECRET, sig):
        assert secret not in p.stderr, f"{secret[:12]}... leaked into the log"
        assert secret not in jsonl, f"{secret[:12]}... leaked into position.jsonl"
