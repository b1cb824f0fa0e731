"""Hypothesis sends ~300 garbage requests (methods, paths, headers, bodies, raw bytes) to the
app on a fake run directory: no 500, JSON errors, and the server still answers afterwards.
The supervisor pid in run.json is dead, so a well-formed command is refused (503) before it
is written, and no request waits for an acknowledgement."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from tests.api_worker.conftest import TOKEN, make_app
from tests.api_worker.fakerun import FakeRun
from tests.api_worker.fuzzing import ThreadServer, fuzz, raw_request, send


def test_garbage_never_gets_a_500(tmp_path: Path) -> None:
    run = FakeRun(tmp_path, supervisor_pid=0)
    run.journal()
    run.candles()
    server = ThreadServer(make_app(run))
    try:
        t0 = time.monotonic()
        seen = fuzz(server.port, TOKEN, 300, live=False)
        elapsed = time.monotonic() - t0
        codes = Counter(seen)
        print(sorted(codes.items(), key=str))
        assert len(seen) >= 300 and not [c for c in codes if c[0] == 500]
        # the garbage reached every check of the app, not only aiohttp's parser
        assert {(400, True), (401, True), (403, True), (404, True), (200, True)} <= set(codes)
        assert elapsed < 120, elapsed
        status, _ = send(server.port, raw_request("GET", "/api/status", [], "right", TOKEN,
                                                  b""))
        assert status == 200                                    # still serving
        assert run.control_commands() == []
    finally:
        server.close()
        run.close()
